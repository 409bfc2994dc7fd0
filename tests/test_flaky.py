"""The flaky payment service of notebook 07, against real sockets.

Its faults are seeded and counted: the same seed gives the same failures, an error
answer charges nothing, a slow answer charges before it answers, an Idempotency-Key
charges once, and /stats counts every request the service received.
"""

from __future__ import annotations

import threading

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.apps import create, flaky

import malformed


def _flaky(lab, **options):
    """A flaky app, served; its slow answers are woken before the server stops."""
    app = create("flaky", **options)
    server = lab.serve(app, name="flaky")
    return app, server


def _charge(client, url, amount=500, key=None, **kwargs):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(url + "/charge", json={"amount": amount}, headers=headers, **kwargs)


def test_a_healthy_charge(lab):
    app, server = _flaky(lab)
    client = lab.client(timeout=5)
    first, second = _charge(client, server.url, 500), _charge(client, server.url, 250)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json() == {"charge_id": "ch_00001", "amount": 500, "status": "succeeded"}
    assert second.json()["charge_id"] == "ch_00002"
    stats = client.get(server.url + "/stats").json()
    assert (stats["requests"], stats["charges"], stats["charged"]) == (2, 2, 750)
    assert stats["statuses"] == {"201": 2}


def test_an_idempotency_key_charges_once(lab):
    app, server = _flaky(lab)
    client = lab.client(timeout=5)
    first = _charge(client, server.url, 500, key="order-1")
    again = _charge(client, server.url, 500, key="order-1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    other = _charge(client, server.url, 900, key="order-1")
    assert other.status_code == 422 and "order-1" in other.json()["error"]
    new = _charge(client, server.url, 500, key="order-2")
    assert new.json()["charge_id"] != first.json()["charge_id"]
    stats = client.get(server.url + "/stats").json()
    assert (stats["charges"], stats["charged"], stats["replayed"]) == (2, 1000, 1)


def test_the_same_seed_gives_the_same_failures(lab):
    client = lab.client(timeout=5)
    runs = []
    for seed in (3, 3, 4):
        app = create("flaky", seed=seed, error_rate=0.3)
        with labkit.serve(app, name=f"flaky-{len(runs)}", trace=lab.trace) as server:
            runs.append([_charge(client, server.url).status_code for _ in range(40)])
    assert runs[0] == runs[1] != runs[2]
    assert set(runs[0]) == {201, 503}
    assert 4 <= runs[0].count(503) <= 24


def test_an_error_answer_charges_nothing(lab):
    app, server = _flaky(lab, error_rate=1.0, error_status=500)
    client = lab.client(timeout=5)
    failed = _charge(client, server.url, key="k")
    assert failed.status_code == 500 and "error" in failed.json()
    assert app.config["flaky"].stats()["charges"] == 0
    client.put(server.url + "/faults", json={"error_rate": 0.0}).raise_for_status()
    assert _charge(client, server.url, key="k").status_code == 201
    assert _charge(client, server.url, key="k").headers["Idempotent-Replayed"] == "true"
    assert app.config["flaky"].stats()["charges"] == 1


def test_a_slow_answer_charges_first_and_answers_late(lab):
    app, server = _flaky(lab, slow_rate=1.0, slow_ms=30_000)
    client = lab.client(timeout=5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        _charge(client, server.url, key="slow", timeout=(2, 0.3))
    assert app.config["flaky"].stats()["charges"] == 1  # the work was done; only the answer was late
    app.config["flaky"].configure(slow_rate=0.0)
    retry = _charge(client, server.url, key="slow")
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert app.config["flaky"].stats()["charges"] == 1


def test_a_lost_answer_through_a_link_charges_without_telling(lab):
    app, server = _flaky(lab)
    link = lab.link(server, drop=(0.0, 1.0))
    client = lab.client(timeout=(2, 0.3))
    with pytest.raises(requests.exceptions.ReadTimeout):
        _charge(client, link.url)
    assert app.config["flaky"].stats()["charges"] == 1


def test_a_recovering_service_answers_503_for_its_first_requests(lab):
    app, server = _flaky(lab, recover_requests=3)
    client = lab.client(timeout=5)
    statuses = [_charge(client, server.url).status_code for _ in range(5)]
    assert statuses == [503, 503, 503, 201, 201]
    client.put(server.url + "/faults", json={"recover_s": 3600}).raise_for_status()
    answer = _charge(client, server.url)
    assert answer.status_code == 503 and "recovering" in answer.json()["error"]


def test_over_capacity_requests_are_turned_away(lab):
    app, server = _flaky(lab, capacity=2, work_ms=400)
    statuses, lock = [], threading.Lock()
    go = threading.Barrier(6)

    def one(number):
        with labkit.Client(f"c{number}", timeout=10, trace=lab.trace) as client:
            go.wait()
            status = client.get(server.url + "/price", params={"item": "tea"}).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stats = app.config["flaky"].stats()
    assert len(statuses) == 6 and set(statuses) <= {200, 503}
    assert 1 <= statuses.count(200) and statuses.count(503) >= 1
    assert stats["max_in_flight"] <= 2


def test_stats_count_the_load_but_not_themselves(lab):
    app, server = _flaky(lab, bucket_s=60)
    client = lab.client(timeout=5)
    for _ in range(3):
        client.get(server.url + "/price", params={"item": "coffee"})
    _charge(client, server.url, amount=0)  # refused, but still load
    client.get(server.url + "/faults")
    for _ in range(2):
        stats = client.get(server.url + "/stats").json()
    assert stats["requests"] == 4 and stats["load"] == [4] and stats["bucket_s"] == 60
    assert stats["statuses"] == {"200": 3, "400": 1}


def test_price_is_a_stable_read(lab):
    app, server = _flaky(lab)
    client = lab.client(timeout=5)
    first = client.get(server.url + "/price", params={"item": "tea"}).json()
    assert first == client.get(server.url + "/price", params={"item": "tea"}).json()
    assert first["item"] == "tea" and 100 <= first["price"] < 1000


@pytest.mark.parametrize("body", [{"error_rate": 2}, {"error_rate": True}, {"capacity": 0}, {"error_status": 404},
                                  {"slow_ms": -1}, {"recover_requests": 1.5}, {"nope": 1}, [1], "x",
                                  {"error_rate": 0.5, "work_ms": "fast"}, {"self": 1}])
def test_wrong_fault_settings_are_refused_and_change_nothing(lab, body):
    app, server = _flaky(lab)
    client = lab.client(timeout=5)
    before = client.get(server.url + "/faults").json()
    answer = client.put(server.url + "/faults", json=body)
    assert answer.status_code == 400 and answer.json()["error"]
    assert client.get(server.url + "/faults").json() == before


def test_fault_settings_change_live(lab):
    app, server = _flaky(lab)
    client = lab.client(timeout=5)
    settings_now = client.put(server.url + "/faults", json={"error_rate": 1, "capacity": None}).json()
    assert settings_now["error_rate"] == 1.0 and settings_now["capacity"] is None
    assert _charge(client, server.url).status_code == 503


@pytest.mark.parametrize("options", [{"error_rate": -0.1}, {"bucket_s": 0}, {"speed": 3}, {"capacity": True}])
def test_create_app_refuses_wrong_options(options):
    with pytest.raises(ValueError):
        create("flaky", **options)


# -- malformed input ------------------------------------------------------------------------

ENDPOINTS = [("POST", "/charge"), ("GET", "/price"), ("PUT", "/faults"), ("GET", "/stats"), ("GET", "/faults"),
             ("DELETE", "/charge"), ("GET", "/{id}")]
NAMES = ["amount", "item", "error_rate", "capacity", "slow_ms", "recover_s", "error_status"]
bodies = malformed.bodies(NAMES)
# Header values that requests can send: no control characters, no leading space.
keys = st.none() | (st.text(st.characters(blacklist_categories=("Cc",)), max_size=300)
                    | st.sampled_from(["", "a b", "k" * 256, "order-1", "é"])).map(str.lstrip)


@pytest.fixture(scope="module")
def service():
    app = create("flaky", seed=1)
    with labkit.serve(app, name="flaky·malformed", trace=labkit.Trace()) as server, requests.Session() as session:
        session.trust_env = False
        yield app, server, session


def _state(server, session):
    stats = session.get(server.url + "/stats", timeout=10).json()
    return stats["charges"], stats["charged"], session.get(server.url + "/faults", timeout=10).json()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(service, data):
    app, server, session = service
    app.config["flaky"].configure(**flaky.DEFAULTS)  # undo what an accepted PUT /faults changed
    method, template = data.draw(st.sampled_from(ENDPOINTS), label="endpoint")
    path = template.replace("{id}", requests.utils.quote(data.draw(st.text(min_size=1, max_size=20), label="id"),
                                                         safe=""))
    body = data.draw(bodies, label="body")
    key = data.draw(keys, label="key")
    headers = {"Content-Type": body[0]} if body else {}
    if key is not None:
        headers["Idempotency-Key"] = key.encode("utf-8", "replace").decode("latin-1")
    query = data.draw(st.dictionaries(st.sampled_from(NAMES), st.text(max_size=120), max_size=3), label="query")
    before = _state(server, session)
    response = session.request(method, server.url + path, params=query, data=body[1] if body else None,
                               headers=headers, timeout=10)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:200])
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/json", (method, path, response.text[:200])
        error = response.json()["error"]
        assert isinstance(error, str) and error
        assert _state(server, session) == before
