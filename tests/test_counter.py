"""The counter service of notebook 08, against real sockets, on SQLite and PostgreSQL.

The unsafe increment loses updates under concurrency; the lock, the transaction (on
SQLite), the atomic update and the versioned PUT do not; the lock stops protecting
once two replicas share the database, the atomic update does not; a transaction
that reads then writes is not enough on PostgreSQL's READ COMMITTED. Every endpoint
answers malformed input with a JSON 4xx and leaves the counters as they were.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.apps import counter as counter_module
from labkit.apps import create
from labkit.db import Database

import malformed

THREADS, EACH = 10, 8  # 80 increments from 10 threads at once


@pytest.fixture
def db(database_url):
    database = Database(database_url)
    yield database
    database.close()


def _hammer(lab, urls, path, threads=THREADS, each=EACH):
    """``threads`` clients at once, each POSTing ``each`` times to path on urls[i % len(urls)]; the statuses."""
    clients = [lab.client(f"c{n}", timeout=30) for n in range(threads)]
    statuses, start = [], threading.Barrier(threads)

    def work(n):
        start.wait(10)
        for _ in range(each):
            statuses.append(clients[n].post(urls[n % len(urls)] + path).status_code)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    return statuses


def _serve(lab, db, work_ms=5, name="counter"):
    server = lab.serve(create("counter", database=db, work_ms=work_ms), name=name)
    requests.post(server.url + "/counters", json={"name": "hits"}, timeout=10).raise_for_status()
    return server


def _value(server):
    return requests.get(server.url + "/counters/hits", timeout=10).json()["value"]


def test_the_unsafe_increment_loses_updates(lab, db):
    server = _serve(lab, db)
    statuses = _hammer(lab, [server.url], "/counters/hits/increment/unsafe")
    assert statuses == [200] * THREADS * EACH
    assert _value(server) < THREADS * EACH


@pytest.mark.parametrize("how", ["locked", "atomic"])
def test_the_lock_and_the_atomic_update_lose_nothing(lab, db, how):
    server = _serve(lab, db)
    assert _hammer(lab, [server.url], f"/counters/hits/increment/{how}") == [200] * THREADS * EACH
    body = requests.get(server.url + "/counters/hits", timeout=10).json()
    assert body == {"name": "hits", "value": THREADS * EACH, "version": THREADS * EACH}


def test_a_read_then_write_transaction_is_safe_on_sqlite_only(lab, db):
    server = _serve(lab, db)
    _hammer(lab, [server.url], "/counters/hits/increment/transaction")
    if db.engine.dialect.name == "sqlite":  # BEGIN IMMEDIATE: one writing transaction at a time
        assert _value(server) == THREADS * EACH
    else:  # READ COMMITTED: two transactions read the same value, and both write
        assert _value(server) < THREADS * EACH


def test_a_lock_in_each_replica_does_not_protect_the_shared_database(lab, db):
    one = _serve(lab, db, name="counter-1")
    two = lab.serve(create("counter", database=db, work_ms=5), name="counter-2")
    _hammer(lab, [one.url, two.url], "/counters/hits/increment/locked")
    assert _value(one) < THREADS * EACH
    requests.put(one.url + "/counters/hits", json={"value": 0, "version": _version(one)}, timeout=10).raise_for_status()
    _hammer(lab, [one.url, two.url], "/counters/hits/increment/atomic")
    assert _value(one) == _value(two) == THREADS * EACH


def _version(server):
    return requests.get(server.url + "/counters/hits", timeout=10).json()["version"]


def test_put_is_a_compare_and_set(lab, db):
    server = _serve(lab, db)
    url = server.url + "/counters/hits"
    alice, bob = lab.client("alice"), lab.client("bob")
    read_a, read_b = alice.get(url).json(), bob.get(url).json()
    first = alice.put(url, json={"value": read_a["value"] + 1, "version": read_a["version"]})
    second = bob.put(url, json={"value": read_b["value"] + 1, "version": read_b["version"]})
    assert (first.status_code, first.json()) == (200, {"name": "hits", "value": 1, "version": 1})
    assert second.status_code == 409
    assert {k: second.json()[k] for k in ("value", "version")} == {"value": 1, "version": 1}
    assert "out of date" in second.json()["error"]
    assert bob.put(url, json={"value": 2, "version": 1}).json()["value"] == 2


def test_every_versioned_increment_counts(lab, db):
    server = _serve(lab, db, work_ms=0)
    url = server.url + "/counters/hits"
    clients = [lab.client(f"c{n}", timeout=30) for n in range(5)]
    conflicts = []

    def work(client):
        for _ in range(10):
            while True:
                read = client.get(url).json()
                response = client.put(url, json={"value": read["value"] + 1, "version": read["version"]})
                if response.status_code == 200:
                    break
                assert response.status_code == 409
                conflicts.append(1)

    workers = [threading.Thread(target=work, args=(c,)) for c in clients]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert _value(server) == 50


def test_create_and_unknown_counters(lab, db):
    server = _serve(lab, db)
    again = requests.post(server.url + "/counters", json={"name": "hits"}, timeout=10)
    assert again.status_code == 409 and "exists already" in again.json()["error"]
    for method, path in [("GET", "/counters/nope"), ("PUT", "/counters/nope"),
                         ("POST", "/counters/nope/increment/atomic"), ("POST", "/counters/nope/increment/unsafe")]:
        response = requests.request(method, server.url + path, json={"value": 1, "version": 0}, timeout=10)
        assert response.status_code == 404 and "no counter 'nope'" in response.json()["error"]
    listed = requests.get(server.url + "/counters", timeout=10).json()
    assert listed == {"counters": [{"name": "hits", "value": 0, "version": 0}]}


def test_one_thread_per_connection(lab):
    server = lab.serve(create("counter"), name="counter")
    clients = [lab.client(f"c{n}", timeout=10) for n in range(6)]
    threads, start = [], threading.Barrier(6)

    def work(client):
        start.wait(10)
        threads.append(client.get(server.url + "/whoami?work_ms=300").json()["thread"])

    workers = [threading.Thread(target=work, args=(c,)) for c in clients]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(10)
    assert len(threads) == 6 and len(set(threads)) == 6
    # one client, one kept-alive connection: the same thread every time
    assert len({clients[0].get(server.url + "/whoami").json()["thread"] for _ in range(4)}) == 1
    stats = requests.get(server.url + "/stats", timeout=10).json()
    assert stats["max_in_flight"] >= 2 and stats["in_flight"] == 0


@pytest.mark.parametrize("field", ["work_ms", "cpu_ms"])
def test_whoami_refuses_a_bad_work_ms(lab, field):
    server = lab.serve(create("counter", work_ms=0), name="counter")
    client = lab.client("user", timeout=5)
    assert client.get(server.url + f"/whoami?{field}=0").status_code == 200
    for bad in ("-1", "2001", "1.5", "abc", "", "١٢", "9" * 30):
        answer = client.get(server.url + "/whoami", params={field: bad})
        assert answer.status_code == 400 and f"{field} must be" in answer.json()["error"], bad


def test_whoami_computes_for_cpu_ms(lab):
    server = lab.serve(create("counter", work_ms=0), name="counter")
    client = lab.client("user", timeout=5)
    started = time.process_time()
    assert client.get(server.url + "/whoami", params={"cpu_ms": 50}).status_code == 200
    assert time.process_time() - started >= 0.045   # the server's thread burnt this process's CPU


# -- leases and fencing tokens ------------------------------------------------------------------


def test_a_lease_is_one_holder_s_until_it_expires_and_every_grant_has_a_higher_token(lab):
    server = lab.serve(create("counter", work_ms=0), name="locks")
    client = lab.client("user", timeout=5)
    url = server.url + "/leases/report"
    assert client.get(url).status_code == 404
    first = client.post(url, json={"holder": "a", "ttl_ms": 200})
    assert first.status_code == 200 and first.json()["holder"] == "a"
    refused = client.post(url, json={"holder": "b", "ttl_ms": 200})
    assert refused.status_code == 409 and refused.json()["holder"] == "a" and "held by 'a'" in refused.json()["error"]
    renewed = client.post(url, json={"holder": "a", "ttl_ms": 200})   # the holder renews: the same token
    assert renewed.json()["token"] == first.json()["token"]
    assert client.get(url).json()["holder"] == "a"
    time.sleep(0.25)
    assert client.get(url).status_code == 404                        # expired on its own
    second = client.post(url, json={"holder": "b", "ttl_ms": 200})
    assert second.status_code == 200 and second.json()["token"] > first.json()["token"]
    other = client.post(server.url + "/leases/other", json={"holder": "a", "ttl_ms": 200})
    assert other.json()["token"] > second.json()["token"]             # higher than any granted before
    for bad in ({"holder": "a"}, {"holder": "a", "ttl_ms": 0}, {"holder": "a", "ttl_ms": 60_001},
                {"holder": "x y", "ttl_ms": 10}, {"ttl_ms": 10}, {"holder": "a", "ttl_ms": True}):
        answer = client.post(server.url + "/leases/third", json=bad)
        assert answer.status_code == 400, bad
    assert client.get(server.url + "/leases/third").status_code == 404


def test_a_fenced_write_refuses_a_lower_token_and_a_blind_write_does_not(lab, db):
    server = _serve(lab, db)
    url = server.url + "/counters/hits/value"
    client = lab.client("user", timeout=5)
    assert client.put(url, json={"value": 5, "token": 2}).json() == {"name": "hits", "value": 5, "version": 1,
                                                                     "token_seen": 2}
    late = client.put(url, json={"value": 7, "token": 1})
    assert late.status_code == 409 and "token 1 is older than token 2" in late.json()["error"]
    assert _value(server) == 5
    assert client.put(url, json={"value": 6, "token": 2}).status_code == 200   # the same holder writes again
    assert client.put(url, json={"value": 8}).status_code == 200               # a blind write: nothing checks it
    assert _value(server) == 8
    assert client.put(server.url + "/counters/nope/value", json={"value": 1}).status_code == 404
    for bad in ({"value": 1, "token": -1}, {"value": 1, "token": "3"}, {"token": 3}, {"value": 1.5}):
        assert client.put(url, json=bad).status_code == 400, bad
    assert _value(server) == 8


def test_a_paused_lease_holder_writes_late_and_the_fencing_token_stops_it(lab, db):
    store = _serve(lab, db, name="store")
    requests.post(store.url + "/counters", json={"name": "report"}, timeout=10).raise_for_status()
    bob = lab.client("bob", timeout=10)
    with labkit.spawn("labkit.apps.counter:lease_holder", name="holder-a", lease_url=store.url) as holder:
        for fenced in (False, True):
            answer = {}
            job = threading.Thread(target=lambda: answer.update(a=requests.post(
                holder.url + "/job", json={"counter": "report", "value": 1, "ttl_ms": 200, "fenced": fenced,
                                           "until_released": True}, timeout=30)))
            job.start()
            deadline = time.monotonic() + 10
            while bob.get(store.url + "/leases/report").json().get("holder") != "holder-a":
                assert time.monotonic() < deadline, "the holder never took the lease"
                time.sleep(0.002)
            holder.pause()                                  # SIGSTOP while it works, past its lease
            assert requests.get(store.url + "/counters/report", timeout=10).json()["value"] == (0 if not fenced else 1)
            time.sleep(0.4)
            taken = bob.post(store.url + "/leases/report", json={"holder": "bob", "ttl_ms": 300})
            assert taken.status_code == 200
            written = {"value": 2, **({"token": taken.json()["token"]} if fenced else {})}
            assert bob.put(store.url + "/counters/report/value", json=written).status_code == 200
            holder.resume()
            assert requests.post(holder.url + "/release", timeout=10).json() == {"released": True}
            job.join(30)
            late = answer["a"].json()
            assert late["token"] < taken.json()["token"]
            assert late["write_status"] == (409 if fenced else 200)
            assert requests.get(store.url + "/counters/report", timeout=10).json()["value"] == (2 if fenced else 1)
            time.sleep(0.35)                                # bob's lease expires before the next round


def test_counter_names_follow_the_kit_s_rule(lab):
    server = lab.serve(create("counter", work_ms=0), name="counter")
    client = lab.client("user", timeout=5)
    for good in ("a" * 64, "page.views_2-b", "7"):
        assert client.post(server.url + "/counters", json={"name": good}).status_code == 201, good
    before = client.get(server.url + "/counters").json()
    for bad in ("a" * 65, "x y", "-a", ".a", "", "é", 7, None, ["a"]):
        answer = client.post(server.url + "/counters", json={"name": bad})
        assert answer.status_code == 400 and "a counter's name must be" in answer.json()["error"], bad
    assert client.get(server.url + "/counters").json() == before
    assert client.get(server.url + "/counters/" + "a" * 65).status_code == 400


def test_the_state_is_the_counters_and_closes_only_its_own_database(lab, db, database_url):
    shared_one = create("counter", database=db, work_ms=0)
    state = shared_one.extensions["labkit"]
    assert isinstance(state, counter_module.Counters)
    assert state.database is db and state.engine is db.engine
    one = lab.serve(shared_one, name="counter-1")
    two = lab.serve(create("counter", database=db, work_ms=0), name="counter-2")
    requests.post(one.url + "/counters", json={"name": "hits"}, timeout=10).raise_for_status()
    pool = db.engine.pool
    one.stop()                                   # a replica stops: the shared database stays open
    assert db.engine.pool is pool and pool.checkedin() >= 1
    assert requests.post(two.url + "/counters/hits/increment/atomic", timeout=10).json()["value"] == 1
    own_app = create("counter", database=database_url, work_ms=0)
    own_engine = own_app.extensions["labkit"].engine
    own = lab.serve(own_app, name="counter-own")
    assert requests.get(own.url + "/counters/hits", timeout=10).json()["value"] == 1
    own_pool = own_engine.pool
    assert own_pool.checkedin() >= 1
    own.stop()                                   # its own database (made from the URL) is closed; the data stays
    assert own_engine.pool is not own_pool and own_pool.checkedin() == 0   # disposed: every connection closed
    assert _value(two) == 1


def test_a_counter_without_a_database_gets_a_temporary_one_removed_on_stop(lab):
    app = create("counter", work_ms=0)
    database = app.extensions["labkit"].database
    path = database.engine.url.database
    server = lab.serve(app, name="counter")
    requests.post(server.url + "/counters", json={"name": "hits"}, timeout=10).raise_for_status()
    assert os.path.exists(path)
    server.stop()
    assert not os.path.exists(path)


@pytest.mark.parametrize("option, value", [("work_ms", -1), ("work_ms", 1001), ("work_ms", True), ("work_ms", "5"),
                                           ("work_ms", float("nan")), ("name", ""), ("name", 3)])
def test_options_must_be_sensible(option, value, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))   # where a temporary database would go
    with pytest.raises(labkit.Invalid, match="work_ms" if option == "work_ms" else "name"):
        create("counter", **{option: value})
    assert list(tmp_path.iterdir()) == []                     # none was left behind


# -- malformed input ------------------------------------------------------------------------

ENDPOINTS = [("GET", "/counters"), ("POST", "/counters"), ("GET", "/counters/{id}"), ("PUT", "/counters/{id}"),
             ("POST", "/counters/{id}/increment/{how}"), ("GET", "/whoami"), ("GET", "/stats"),
             ("DELETE", "/counters/{id}"), ("PUT", "/counters/{id}/value"), ("POST", "/leases/{id}"),
             ("GET", "/leases/{id}")]
bodies = malformed.bodies(["name", "value", "version", "token", "holder", "ttl_ms"])
ids = malformed.path_ids(["hits", "nope", "HITS", "a" * 64, "a" * 65, "x y", "é", "...", "-a"])
hows = st.sampled_from(["unsafe", "locked", "transaction", "atomic", "fast", "ATOMIC", ""]) | st.text(max_size=8)
queries = st.dictionaries(st.sampled_from(["work_ms", "cpu_ms", "ms", "name", "how"]),
                          st.sampled_from(["", "-1", "1e3", "2001", "9" * 30, "abc", "١٢", "²", "true"]) | st.text(max_size=4), max_size=2)


@pytest.fixture(scope="module")
def malformed_target():
    with labkit.serve(create("counter", work_ms=0), name="counter·malformed", trace=labkit.Trace()) as server, \
            requests.Session() as session:
        session.trust_env = False
        session.post(server.url + "/counters", json={"name": "hits"}, timeout=10).raise_for_status()
        yield server, session


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(malformed_target, data):
    server, session = malformed_target
    method, template = data.draw(st.sampled_from(ENDPOINTS), label="endpoint")
    path = template.replace("{id}", requests.utils.quote(data.draw(ids, label="id"), safe=""))
    path = path.replace("{how}", requests.utils.quote(data.draw(hows, label="how"), safe=""))
    body = data.draw(bodies, label="body")
    before = session.get(server.url + "/counters", timeout=10).json()
    response = session.request(method, server.url + path, params=data.draw(queries, label="query"),
                               data=body[1] if body else None,
                               headers={"Content-Type": body[0]} if body else {}, timeout=10)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:200])
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/json", (method, path, response.text[:200])
        error = response.json()["error"]
        assert isinstance(error, str) and error
        assert session.get(server.url + "/counters", timeout=10).json() == before


def test_the_module_documents_every_way_to_increment():
    for how in counter_module.HOW:
        assert how in counter_module.__doc__
