"""The payment processor of notebooks 04 and 07 (labkit.apps.payment), against real sockets.

Its faults are seeded and counted: the same seed gives the same failures, an error
answer charges nothing, a late answer charges before it answers, and /stats counts
every request that met the faults. Its idempotency keys follow the IETF
Idempotency-Key draft: one charge per key, the first answer replayed (a decline
included), 422 for the same key with another amount, 409 while the first request
with the key is still being processed, keys scoped per caller and forgotten after
``key_ttl_s``.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.apps import create, kit, payment

import malformed

#: The fault settings of a new processor.
DEFAULTS = {setting: default for setting, (default, _) in payment.RULES.items()}


def _payment(lab, **options):
    """A payment app, served; its state (a Processor) and its server. Late answers are woken when it stops."""
    app = create("payment", **options)
    server = lab.serve(app, name="payment")
    return app.extensions["labkit"], server


def _charge(client, url, amount=500, key=None, **kwargs):
    headers = {"Idempotency-Key": key} if key else {}
    return client.post(url + "/charges", json={"amount_cents": amount}, headers=headers, **kwargs)


def _wait_until(condition, within_s: float = 10.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {within_s} s"
        time.sleep(0.01)


def test_a_healthy_charge(lab):
    processor, server = _payment(lab)
    client = lab.client(timeout=5)
    first, second = _charge(client, server.url, 500), _charge(client, server.url, 250)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json() == {"reference": "pay-0001", "amount_cents": 500, "status": "succeeded"}
    assert second.json()["reference"] == "pay-0002"
    assert "Idempotent-Replayed" not in first.headers
    stats = client.get(server.url + "/stats").json()
    assert (stats["requests"], stats["charges"], stats["charged_cents"], stats["declined"]) == (2, 2, 750, 0)
    assert stats["statuses"] == {"201": 2}
    assert set(stats) == {"requests", "statuses", "charges", "charged_cents", "declined", "replayed",
                          "max_in_flight", "bucket_s", "load"}
    assert processor.charges["pay-0001"] == first.json() and processor.requests == 2


def test_a_charge_can_be_read_back(lab):
    processor, server = _payment(lab)
    client = lab.client(timeout=5)
    made = _charge(client, server.url, 700).json()
    first = client.get(server.url + f"/charges/{made['reference']}")
    again = client.get(server.url + f"/charges/{made['reference']}")
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() == made  # a read, safe to repeat: it charges nothing
    missing = client.get(server.url + "/charges/pay-9999")
    assert missing.status_code == 404 and "pay-9999" in missing.json()["error"]
    assert processor.stats()["charges"] == 1


def test_fees_are_a_stable_read_that_meets_the_faults(lab):
    processor, server = _payment(lab)
    client = lab.client(timeout=5)
    first = client.get(server.url + "/fees", params={"amount_cents": 1000})
    assert first.status_code == 200 and first.json() == {"amount_cents": 1000, "fee_cents": 59}  # 2.9% + 30
    assert client.get(server.url + "/fees", params={"amount_cents": 1000}).json() == first.json()
    for query in ({}, {"amount_cents": "ten"}, {"amount_cents": 0}, {"amount_cents": payment.MAX_AMOUNT_CENTS + 1}):
        refused = client.get(server.url + "/fees", params=query)
        assert refused.status_code == 400 and "amount_cents" in refused.json()["error"], query
    assert processor.stats()["charges"] == 0  # a read charges nothing
    client.put(server.url + "/faults", json={"error_rate": 1.0}).raise_for_status()
    assert client.get(server.url + "/fees", params={"amount_cents": 1000}).status_code == 503


def test_an_idempotency_key_charges_once(lab):
    processor, server = _payment(lab)
    client = lab.client(timeout=5)
    first = _charge(client, server.url, 500, key="order-1")
    again = _charge(client, server.url, 500, key="order-1")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    new = _charge(client, server.url, 500, key="order-2")
    assert new.json()["reference"] != first.json()["reference"]
    stats = client.get(server.url + "/stats").json()
    assert (stats["charges"], stats["charged_cents"], stats["replayed"]) == (2, 1000, 1)


def test_the_same_key_with_another_amount_is_refused_with_422(lab):
    processor, server = _payment(lab)
    client = lab.client(timeout=5)
    first = _charge(client, server.url, 500, key="order-1")
    other = _charge(client, server.url, 900, key="order-1")
    assert other.status_code == 422 and "order-1" in other.json()["error"] and "500 cents" in other.json()["error"]
    assert "Idempotent-Replayed" not in other.headers
    assert processor.stats()["charges"] == 1 and processor.stats()["charged_cents"] == 500
    assert _charge(client, server.url, 500, key="order-1").json() == first.json()  # the key still means the first


def test_the_same_key_while_the_first_is_still_processed_gets_409_then_the_first_answer(lab):
    processor, server = _payment(lab, work_ms=1500)
    first, lock = {}, threading.Lock()

    def pay():
        with labkit.Client("shop", timeout=10, trace=lab.trace) as client:
            answer = _charge(client, server.url, 500, key="slow-order")
        with lock:
            first["answer"] = answer

    thread = threading.Thread(target=pay)
    thread.start()
    try:
        _wait_until(lambda: processor.stats()["requests"] == 1, what="the first request's arrival")
        with labkit.Client("shop", timeout=10, trace=lab.trace) as twin:  # the same caller, another connection
            started = time.monotonic()
            busy = _charge(twin, server.url, 500, key="slow-order")
            took = time.monotonic() - started
            assert busy.status_code == 409 and "still being processed" in busy.json()["error"]
            assert took < 1.0, "a 409 is answered at once, not after the first request's work"
            assert "Idempotent-Replayed" not in busy.headers
            other = _charge(twin, server.url, 900, key="slow-order")  # another amount is wrong at once
            assert other.status_code == 422
            assert processor.stats()["charges"] == 0  # the first is still working
    finally:
        thread.join(10)
    assert not thread.is_alive()
    with lock:
        done = first["answer"]
    assert done.status_code == 201 and "Idempotent-Replayed" not in done.headers
    with labkit.Client("shop", timeout=5, trace=lab.trace) as client:
        replay = _charge(client, server.url, 500, key="slow-order")
    assert replay.status_code == 201 and replay.json() == done.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    stats = processor.stats()
    assert (stats["charges"], stats["replayed"]) == (1, 1)
    assert stats["statuses"] == {"201": 2, "409": 1, "422": 1}


def test_idempotency_keys_are_scoped_per_caller(lab):
    processor, server = _payment(lab)
    alice, bob = lab.client("alice", timeout=5), lab.client("bob", timeout=5)
    for_alice = _charge(alice, server.url, 500, key="order-1")
    for_bob = _charge(bob, server.url, 500, key="order-1")
    assert for_alice.status_code == for_bob.status_code == 201
    assert for_alice.json()["reference"] != for_bob.json()["reference"]
    assert "Idempotent-Replayed" not in for_bob.headers
    bob_other = _charge(bob, server.url, 800, key="order-2")
    alice_other = _charge(alice, server.url, 300, key="order-2")  # not 422: bob's key is not alice's
    assert bob_other.status_code == alice_other.status_code == 201
    again = _charge(alice, server.url, 500, key="order-1")
    assert again.headers["Idempotent-Replayed"] == "true" and again.json() == for_alice.json()
    assert processor.stats()["charges"] == 4 and processor.stats()["charged_cents"] == 2100


def test_keys_are_forgotten_after_key_ttl_s(lab):
    processor, server = _payment(lab, key_ttl_s=1.0)
    client = lab.client(timeout=5)
    first = _charge(client, server.url, 500, key="order-1")
    replay = _charge(client, server.url, 500, key="order-1")
    assert replay.headers["Idempotent-Replayed"] == "true" and replay.json() == first.json()
    time.sleep(1.1)
    later = _charge(client, server.url, 900, key="order-1")  # forgotten: another amount is a new charge, not 422
    assert later.status_code == 201 and "Idempotent-Replayed" not in later.headers
    assert later.json()["reference"] != first.json()["reference"]
    assert processor.stats()["charges"] == 2


def test_keys_are_forgotten_exactly_key_ttl_s_after_their_first_use(lab):
    """On a ManualClock: remembered until key_ttl_s after the first use (a replay does not extend it), then not."""
    clock = kit.ManualClock()
    processor = payment.Processor(seed=0, bucket_s=0.1, key_ttl_s=60, clock=clock)
    server = lab.serve(kit.make_app("payment", processor, payment.routes, kit.faults), name="payment")
    client = lab.client(timeout=5)
    first = _charge(client, server.url, 500, key="k")
    clock.advance(59.5)
    assert _charge(client, server.url, 500, key="k").headers["Idempotent-Replayed"] == "true"
    assert _charge(client, server.url, 900, key="k").status_code == 422
    clock.advance(0.5)
    fresh = _charge(client, server.url, 900, key="k")
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers
    assert fresh.json()["reference"] != first.json()["reference"]
    clock.advance(59.5)
    assert _charge(client, server.url, 900, key="k").json() == fresh.json()  # the new use is remembered anew
    assert processor.stats()["charges"] == 2
    with pytest.raises(ValueError, match="forward only"):
        clock.advance(-1)


def test_a_decline_is_final_for_its_key(lab):
    processor, server = _payment(lab, decline_rate=1.0)
    client = lab.client(timeout=5)
    declined = _charge(client, server.url, 500, key="d")
    assert declined.status_code == 402 and "declined" in declined.json()["error"]
    assert "new Idempotency-Key" in declined.json()["error"]
    client.put(server.url + "/faults", json={"decline_rate": 0.0}).raise_for_status()
    again = _charge(client, server.url, 500, key="d")  # a late twin must not turn the decline into a charge
    assert again.status_code == 402 and again.json() == declined.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    new = _charge(client, server.url, 500, key="d2")
    assert new.status_code == 201
    stats = processor.stats()
    assert (stats["charges"], stats["declined"], stats["replayed"]) == (1, 1, 1)
    assert stats["statuses"] == {"201": 1, "402": 2}


def test_without_a_key_every_request_is_a_new_charge(lab):
    processor, server = _payment(lab)
    client = lab.client(timeout=5)
    references = {_charge(client, server.url, 500).json()["reference"] for _ in range(3)}
    assert len(references) == 3 and processor.stats()["charges"] == 3


def test_the_same_seed_gives_the_same_failures(lab):
    client = lab.client(timeout=5)
    runs = []
    for seed in (3, 3, 4):
        app = create("payment", seed=seed, error_rate=0.3)
        with labkit.serve(app, name=f"payment-{len(runs)}", trace=lab.trace) as server:
            runs.append([_charge(client, server.url).status_code for _ in range(40)])
    assert runs[0] == runs[1] != runs[2]
    assert set(runs[0]) == {201, 503}
    assert 4 <= runs[0].count(503) <= 24


def test_the_same_seed_gives_the_same_declines(lab):
    client = lab.client(timeout=5)
    runs = []
    for seed in (5, 5, 6):
        app = create("payment", seed=seed, decline_rate=0.5)
        with labkit.serve(app, name=f"payment-{len(runs)}", trace=lab.trace) as server:
            runs.append([_charge(client, server.url).status_code for _ in range(30)])
    assert runs[0] == runs[1] != runs[2]
    assert set(runs[0]) == {201, 402}


def test_an_error_answer_charges_nothing(lab):
    processor, server = _payment(lab, error_rate=1.0, error_status=500)
    client = lab.client(timeout=5)
    failed = _charge(client, server.url, key="k")
    assert failed.status_code == 500 and "failed while handling" in failed.json()["error"]
    assert processor.stats()["charges"] == 0
    client.put(server.url + "/faults", json={"error_rate": 0.0}).raise_for_status()
    assert _charge(client, server.url, key="k").status_code == 201  # the failed request did not take the key
    assert _charge(client, server.url, key="k").headers["Idempotent-Replayed"] == "true"
    assert processor.stats()["charges"] == 1


def test_a_late_answer_charges_first_and_a_retry_with_the_key_replays_it(lab):
    processor, server = _payment(lab, late_rate=1.0, late_ms=30_000)
    client = lab.client(timeout=5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        _charge(client, server.url, key="late", timeout=(2, 0.3))
    assert processor.stats()["charges"] == 1  # the work was done; only the answer was late
    client.put(server.url + "/faults", json={"late_rate": 0.0}).raise_for_status()
    retry = _charge(client, server.url, key="late")
    assert retry.status_code == 201 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == processor.charges["pay-0001"]
    assert processor.stats()["charges"] == 1


def test_late_ms_is_how_late_the_answer_comes(lab):
    processor, server = _payment(lab, late_rate=1.0, late_ms=1000)
    client = lab.client(timeout=5)
    started = time.monotonic()
    answer = _charge(client, server.url)
    assert answer.status_code == 201 and time.monotonic() - started >= 1.0
    client.put(server.url + "/faults", json={"late_rate": 0.0}).raise_for_status()
    started = time.monotonic()
    assert _charge(client, server.url).status_code == 201 and time.monotonic() - started < 1.0


def test_a_lost_answer_through_a_link_charges_without_telling(lab):
    processor, server = _payment(lab)
    link = lab.link(server, drop=(0.0, 1.0))
    client = lab.client(timeout=(2, 0.3))
    with pytest.raises(requests.exceptions.ReadTimeout):
        _charge(client, link.url)
    assert processor.stats()["charges"] == 1


def test_a_recovering_service_answers_503_for_its_first_requests(lab):
    processor, server = _payment(lab, recover_requests=3)
    client = lab.client(timeout=5)
    statuses = [_charge(client, server.url).status_code for _ in range(5)]
    assert statuses == [503, 503, 503, 201, 201]
    client.put(server.url + "/faults", json={"recover_s": 3600}).raise_for_status()
    answer = _charge(client, server.url)
    assert answer.status_code == 503 and "recovering" in answer.json()["error"]
    assert processor.stats()["charges"] == 2


def test_recovering_starts_again_when_the_faults_change(lab):
    processor, server = _payment(lab, recover_s=1.0)
    client = lab.client(timeout=5)
    assert _charge(client, server.url).status_code == 503
    time.sleep(1.1)
    assert _charge(client, server.url).status_code == 201
    client.put(server.url + "/faults", json={"decline_rate": 0.0}).raise_for_status()  # any change restarts it
    answer = _charge(client, server.url, key="r")
    assert answer.status_code == 503 and "recovering" in answer.json()["error"]
    time.sleep(1.1)
    assert _charge(client, server.url, key="r").status_code == 201  # the 503 did not take the key
    client.put(server.url + "/faults", json={"recover_s": 0, "recover_requests": 2}).raise_for_status()
    assert [_charge(client, server.url).status_code for _ in range(3)] == [503, 503, 201]
    client.put(server.url + "/faults", json={"error_rate": 0.0}).raise_for_status()  # counts from the change
    assert [_charge(client, server.url).status_code for _ in range(3)] == [503, 503, 201]
    assert processor.stats()["charges"] == 4


def test_retry_after_s_puts_the_pause_it_asks_for_on_503_and_429_answers(lab):
    processor, server = _payment(lab, recover_requests=1, retry_after_s=1)
    client = lab.client(timeout=5)
    first, second = _charge(client, server.url), _charge(client, server.url)
    assert (first.status_code, first.headers.get("Retry-After")) == (503, "1")
    assert second.status_code == 201 and "Retry-After" not in second.headers
    client.put(server.url + "/faults", json={"recover_requests": 0, "error_rate": 1.0, "error_status": 429,
                                         "retry_after_s": 2}).raise_for_status()
    limited = _charge(client, server.url)
    assert (limited.status_code, limited.headers.get("Retry-After")) == (429, "2")
    client.put(server.url + "/faults", json={"error_status": 500}).raise_for_status()
    assert "Retry-After" not in _charge(client, server.url).headers  # a 500 asks for no pause
    client.put(server.url + "/faults", json={"error_status": 503, "retry_after_s": None}).raise_for_status()
    assert "Retry-After" not in _charge(client, server.url).headers  # none by default
    assert processor.stats()["charges"] == 1


def test_over_capacity_requests_are_turned_away(lab):
    processor, server = _payment(lab, capacity=2, work_ms=400)
    statuses, lock = [], threading.Lock()
    go = threading.Barrier(6)

    def one(number):
        with labkit.Client(f"c{number}", timeout=10, trace=lab.trace) as client:
            go.wait()
            status = _charge(client, server.url).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    stats = processor.stats()
    assert len(statuses) == 6 and set(statuses) <= {201, 503}
    assert 1 <= statuses.count(201) and statuses.count(503) >= 1
    assert stats["max_in_flight"] <= 2
    assert stats["charges"] == statuses.count(201)  # a request turned away charged nothing


def test_stats_count_the_load_but_not_themselves(lab):
    processor, server = _payment(lab, bucket_s=60)
    client = lab.client(timeout=5)
    reference = _charge(client, server.url).json()["reference"]
    for _ in range(2):
        client.get(server.url + f"/charges/{reference}")
    client.get(server.url + "/charges/pay-0404")
    client.get(server.url + "/fees", params={"amount_cents": 100})
    # A malformed request is refused before it meets the faults, but it is a request the service received.
    assert _charge(client, server.url, amount=0).status_code == 400
    client.get(server.url + "/faults")
    for _ in range(2):
        stats = client.get(server.url + "/stats").json()
    assert stats["requests"] == 6 and stats["load"] == [6] and stats["bucket_s"] == 60
    assert stats["statuses"] == {"200": 3, "201": 1, "400": 1, "404": 1}


def test_the_fault_settings_can_be_read_and_changed_live(lab):
    processor, server = _payment(lab)
    client = lab.client(timeout=5)
    assert client.get(server.url + "/faults").json() == DEFAULTS
    assert DEFAULTS == {"decline_rate": 0.0, "error_rate": 0.0, "error_status": 503, "work_ms": 0.0,
                        "late_rate": 0.0, "late_ms": 2000.0, "recover_s": 0.0, "recover_requests": 0,
                        "capacity": None, "retry_after_s": None}
    settings_now = client.put(server.url + "/faults", json={"error_rate": 1, "capacity": None}).json()
    assert settings_now == {**DEFAULTS, "error_rate": 1.0}
    assert client.get(server.url + "/faults").json() == settings_now == processor.faults.snapshot()
    assert _charge(client, server.url).status_code == 503
    assert client.put(server.url + "/faults", json={"error_rate": 0, "capacity": 3}).json()["capacity"] == 3
    assert _charge(client, server.url).status_code == 201


@pytest.mark.parametrize("body", [{"error_rate": 2}, {"error_rate": True}, {"capacity": 0}, {"error_status": 404},
                                  {"late_ms": -1}, {"recover_requests": 1.5}, {"nope": 1}, [1], "x",
                                  {"error_rate": 0.5, "work_ms": "fast"}, {"self": 1}, {"decline_rate": -0.1},
                                  {"late_rate": 1.5}, {"work_ms": 60_001}, {"recover_s": float("inf")},
                                  {"retry_after_s": 0.5}, {"retry_after_s": -1}, {"error_status": 502},
                                  {"decline_rate": 1.0, "slow_ms": 10}])
def test_wrong_fault_settings_are_refused_and_change_nothing(lab, body):
    processor, server = _payment(lab, recover_s=0.0)
    client = lab.client(timeout=5)
    before = client.get(server.url + "/faults").json()
    answer = client.put(server.url + "/faults", data=json.dumps(body),
                        headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]
    assert client.get(server.url + "/faults").json() == before


@pytest.mark.parametrize("options", [{"error_rate": -0.1}, {"bucket_s": 0}, {"speed": 3}, {"capacity": True},
                                     {"key_ttl_s": 0}, {"decline_rate": 2}, {"slow_rate": 0.5}, {"late_ms": -1},
                                     {"error_status": 502}])
def test_create_app_refuses_wrong_options(options):
    with pytest.raises(ValueError):
        create("payment", **options)


def test_the_flaky_service_is_gone():
    """The old ``flaky`` service was merged into payment."""
    assert "payment" in labkit.apps.SERVICES and "flaky" not in labkit.apps.SERVICES
    with pytest.raises(ValueError, match="no reference service 'flaky'"):
        create("flaky")


# -- malformed input ------------------------------------------------------------------------

ENDPOINTS = [("POST", "/charges"), ("GET", "/charges/{id}"), ("GET", "/fees"), ("PUT", "/faults"),
             ("GET", "/stats"), ("GET", "/faults"), ("DELETE", "/charges"), ("GET", "/charges"), ("GET", "/{id}")]
NAMES = ["amount_cents", "decline_rate", "error_rate", "capacity", "late_ms", "recover_s", "error_status",
         "work_ms"]
bodies = malformed.bodies(NAMES)
# Header values that requests can send: no control characters, no leading space.
keys = st.none() | (st.text(st.characters(blacklist_categories=("Cc",)), max_size=300)
                    | st.sampled_from(["", "a b", "k" * 256, "order-1", "é"])).map(str.lstrip)


@pytest.fixture(scope="module")
def service():
    app = create("payment", seed=1)
    with labkit.serve(app, name="payment·malformed", trace=labkit.Trace()) as server, \
            requests.Session() as session:
        session.trust_env = False
        yield app.extensions["labkit"], server, session


def _state(server, session):
    stats = session.get(server.url + "/stats", timeout=10).json()
    return (stats["charges"], stats["charged_cents"], stats["declined"],
            session.get(server.url + "/faults", timeout=10).json())


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(service, data):
    processor, server, session = service
    processor.faults.configure(**DEFAULTS)  # undo what an accepted PUT /faults changed
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
