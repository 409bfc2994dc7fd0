"""The registry and instance services of notebook 05, against real sockets.

The registry runs on a ManualClock, so every lease runs out exactly when a test moves
time; one test uses the real clock with a generous bound that only catches a hang.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.apps import create
from labkit.apps.instance import Instance
from labkit.apps.kit import ManualClock
from labkit.apps.registry import MAX_TTL_S, Registry

import malformed


@pytest.fixture
def clock():
    return ManualClock()


@pytest.fixture
def registry(lab, clock):
    app = create("registry", clock=clock)
    assert isinstance(app.extensions["labkit"], Registry) and app.extensions["labkit"].clock is clock
    return lab.serve(app, name="registry")


@pytest.fixture
def ops(lab):
    return lab.client("ops", timeout=5)


def _register(ops, registry, instance_id, url="http://127.0.0.1:5001", ttl_s=1.0, service="inventory"):
    return ops.post(f"{registry.url}/services/{service}/instances",
                    json={"id": instance_id, "url": url, "ttl_s": ttl_s})


def _listed(ops, registry, service="inventory"):
    return [i["id"] for i in ops.get(f"{registry.url}/services/{service}").json()["instances"]]


# -- registry -----------------------------------------------------------------------------


def test_register_list_and_the_lease_runs_out(ops, registry, clock):
    answer = _register(ops, registry, "inv-2", ttl_s=1.0)
    assert answer.status_code == 201
    assert answer.json() == {"service": "inventory", "id": "inv-2", "url": "http://127.0.0.1:5001",
                             "ttl_s": 1.0, "expires_in_s": 1.0}
    assert _register(ops, registry, "inv-1", ttl_s=2.0).status_code == 201
    assert _listed(ops, registry) == ["inv-1", "inv-2"]  # sorted by id
    clock.advance(0.999)
    assert _listed(ops, registry) == ["inv-1", "inv-2"]
    clock.advance(0.001)
    assert _listed(ops, registry) == ["inv-1"]  # a lease ends at exactly ttl
    clock.advance(1.0)
    assert _listed(ops, registry) == []
    assert ops.get(f"{registry.url}/stats").json() == {
        "registered": 2, "renewed": 0, "deregistered": 0, "expired": 2, "live": 0, "refused": 0}


def test_a_heartbeat_renews_the_lease(ops, registry, clock):
    _register(ops, registry, "inv-1", ttl_s=1.0)
    _register(ops, registry, "inv-2", ttl_s=1.0)
    clock.advance(0.6)
    answer = ops.put(f"{registry.url}/services/inventory/instances/inv-1/heartbeat")
    assert answer.status_code == 200 and answer.json()["expires_in_s"] == 1.0
    clock.advance(0.6)
    assert _listed(ops, registry) == ["inv-1"]
    clock.advance(0.4)
    assert _listed(ops, registry) == []


def test_a_heartbeat_may_change_the_ttl(ops, registry, clock):
    _register(ops, registry, "inv-1", ttl_s=1.0)
    answer = ops.put(f"{registry.url}/services/inventory/instances/inv-1/heartbeat", json={"ttl_s": 5})
    assert answer.json()["ttl_s"] == 5.0
    clock.advance(4.5)
    assert _listed(ops, registry) == ["inv-1"]


def test_a_forgotten_instance_must_register_again(ops, registry, clock):
    _register(ops, registry, "inv-1", ttl_s=1.0)
    clock.advance(1.5)
    answer = ops.put(f"{registry.url}/services/inventory/instances/inv-1/heartbeat")
    assert answer.status_code == 404 and "register it again" in answer.json()["error"]
    assert _register(ops, registry, "inv-1", ttl_s=1.0).status_code == 201
    assert _listed(ops, registry) == ["inv-1"]


def test_registering_again_replaces_the_address(ops, registry, clock):
    _register(ops, registry, "inv-1", url="http://127.0.0.1:5001", ttl_s=1.0)
    clock.advance(0.5)
    answer = _register(ops, registry, "inv-1", url="http://127.0.0.1:5002/", ttl_s=1.0)
    assert answer.status_code == 200
    instances = ops.get(f"{registry.url}/services/inventory").json()["instances"]
    assert instances == [{"id": "inv-1", "url": "http://127.0.0.1:5002", "ttl_s": 1.0, "expires_in_s": 1.0}]


def test_deregister(ops, registry):
    _register(ops, registry, "inv-1")
    _register(ops, registry, "inv-2")
    answer = ops.delete(f"{registry.url}/services/inventory/instances/inv-1")
    assert answer.status_code == 200 and answer.json() == {"service": "inventory", "deregistered": "inv-1"}
    assert _listed(ops, registry) == ["inv-2"]
    assert ops.delete(f"{registry.url}/services/inventory/instances/inv-1").status_code == 404
    assert ops.get(f"{registry.url}/stats").json()["deregistered"] == 1


def test_services_are_kept_apart(ops, registry):
    _register(ops, registry, "a", service="inventory")
    _register(ops, registry, "a", service="payments")
    _register(ops, registry, "b", service="payments")
    assert ops.get(f"{registry.url}/services").json() == {"services": {"inventory": 1, "payments": 2}}
    ops.delete(f"{registry.url}/services/payments/instances/a")
    assert _listed(ops, registry, "inventory") == ["a"]
    assert _listed(ops, registry, "nothing-here") == []  # no instances yet is an answer, not an error


def test_the_real_clock_forgets_too(lab, ops):
    registry = lab.serve(create("registry"), name="registry-real-clock")
    _register(ops, registry, "inv-1", ttl_s=0.2)
    deadline = time.monotonic() + 10  # only catches a lease that never ends
    while _listed(ops, registry) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _listed(ops, registry) == []


def test_concurrent_registrations_are_all_kept(lab, registry):
    def register_some(n):
        with labkit.Client(f"agent-{n}", timeout=5, trace=lab.trace) as client:
            for k in range(10):
                _register(client, registry, f"i{n}-{k}", ttl_s=60).raise_for_status()

    threads = [threading.Thread(target=register_some, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    with labkit.Client("ops", timeout=5, trace=lab.trace) as ops:
        assert len(_listed(ops, registry)) == 80
        assert ops.get(f"{registry.url}/stats").json()["registered"] == 80


def test_the_default_lease_is_the_registry_s_ttl_s(lab, ops, clock):
    registry = lab.serve(create("registry", ttl_s=3, clock=clock), name="registry-3s")
    answer = ops.post(f"{registry.url}/services/inventory/instances",
                      json={"id": "inv-1", "url": "http://127.0.0.1:5001"})
    assert answer.status_code == 201 and (answer.json()["ttl_s"], answer.json()["expires_in_s"]) == (3.0, 3.0)
    clock.advance(2.5)
    assert ops.put(f"{registry.url}/services/inventory/instances/inv-1/heartbeat",
                   json={"ttl_s": None}).json()["expires_in_s"] == 3.0    # null keeps the lease's ttl_s
    clock.advance(2.999)
    assert _listed(ops, registry) == ["inv-1"]
    clock.advance(0.001)
    assert _listed(ops, registry) == []


@pytest.mark.parametrize("ttl_s", [0, -1, True, "10", MAX_TTL_S + 1, float("nan")])
def test_a_bad_default_ttl_s_is_refused(ttl_s):
    with pytest.raises(labkit.Invalid, match="ttl_s"):
        create("registry", ttl_s=ttl_s)


@pytest.mark.parametrize("body, words", [
    ({"url": "http://127.0.0.1:5001"}, "the instance id must be 1 to 64 letters"),
    ({"id": "bad id!", "url": "http://127.0.0.1:5001"}, "the instance id must be 1 to 64 letters"),
    ({"id": "a" * 65, "url": "http://127.0.0.1:5001"}, "the instance id must be 1 to 64 letters"),
    ({"id": "a", "url": "ftp://127.0.0.1:5001"}, "url must be"),
    ({"id": "a", "url": "http://127.0.0.1"}, "url must be"),
    ({"id": "a", "url": "http://127.0.0.1:99999"}, "url must be"),
    ({"id": "a", "url": "http://127.0.0.1:5001/path"}, "url must be"),
    ({"id": "a", "url": "http://127.0.0.1:5001", "ttl_s": True}, "ttl_s must be"),
    ({"id": "a", "url": "http://127.0.0.1:5001", "ttl_s": 0}, "ttl_s must be"),
    ({"id": "a", "url": "http://127.0.0.1:5001", "ttl_s": MAX_TTL_S + 1}, "ttl_s must be"),
    ({"id": "a", "url": "http://127.0.0.1:5001", "ttl_s": "10"}, "ttl_s must be"),
    (["a"], "send a JSON object"),
])
def test_a_bad_registration_is_named(ops, registry, body, words):
    answer = ops.post(f"{registry.url}/services/inventory/instances", json=body)
    assert answer.status_code == 400 and words in answer.json()["error"]
    assert ops.get(f"{registry.url}/stats").json()["registered"] == 0


def test_a_bad_service_name_is_named(ops, registry):
    for path in ("/services/bad%20name/instances", "/services/-a/instances"):
        answer = ops.post(registry.url + path, json={"id": "a", "url": "http://127.0.0.1:5001"})
        assert answer.status_code == 400 and "the service must be" in answer.json()["error"]
    assert ops.get(f"{registry.url}/stats").json()["registered"] == 0
    assert _register(ops, registry, "a", service="a" * 64).status_code == 201
    assert _register(ops, registry, "a", service="a" * 65).status_code == 400


# -- who may register: keys per service -------------------------------------------------------

KEY, OTHER_KEY = "inventory-key-1", "payment-key-22"


@pytest.fixture
def guarded(lab, clock):
    return lab.serve(create("registry", clock=clock, keys={"inventory": KEY, "payment": OTHER_KEY}),
                     name="guarded-registry")


def _as(key):
    return {"Authorization": f"Bearer {key}"}


def test_an_open_registry_lets_anyone_replace_an_instance(ops, registry):
    """The hijack the keys prevent: a stranger re-registers inv-1 at its own address and takes its traffic."""
    _register(ops, registry, "inv-1", url="http://127.0.0.1:5001")
    stranger = ops.post(f"{registry.url}/services/inventory/instances",
                        json={"id": "inv-1", "url": "http://127.0.0.1:6666", "ttl_s": 1.0})
    assert stranger.status_code == 200
    assert [i["url"] for i in ops.get(f"{registry.url}/services/inventory").json()["instances"]] == [
        "http://127.0.0.1:6666"]


def test_a_guarded_service_needs_its_key_to_register_renew_and_deregister(ops, guarded):
    base = f"{guarded.url}/services/inventory/instances"
    body = {"id": "inv-1", "url": "http://127.0.0.1:5001", "ttl_s": 1.0}
    assert ops.post(base, json=body, headers=_as(KEY)).status_code == 201
    for method, url, extra in (("post", base, {"json": {**body, "url": "http://127.0.0.1:6666"}}),
                               ("put", f"{base}/inv-1/heartbeat", {}), ("delete", f"{base}/inv-1", {})):
        without = getattr(ops, method)(url, **extra)
        assert without.status_code == 401 and "Bearer" in without.headers["WWW-Authenticate"]
        assert "needs its key" in without.json()["error"]
        wrong = getattr(ops, method)(url, headers=_as("not-the-key-at-all"), **extra)
        assert wrong.status_code == 401 and "knows no such key" in wrong.json()["error"]
        other = getattr(ops, method)(url, headers=_as(OTHER_KEY), **extra)
        assert other.status_code == 403 and "another service" in other.json()["error"]
    listed = ops.get(f"{guarded.url}/services/inventory").json()["instances"]  # lookups stay open
    assert [(i["id"], i["url"]) for i in listed] == [("inv-1", "http://127.0.0.1:5001")]
    assert ops.put(f"{base}/inv-1/heartbeat", headers=_as(KEY)).status_code == 200
    assert ops.delete(f"{base}/inv-1", headers=_as(KEY)).status_code == 200
    stats = ops.get(f"{guarded.url}/stats").json()
    assert (stats["registered"], stats["renewed"], stats["deregistered"], stats["refused"]) == (1, 1, 1, 9)


def test_services_without_a_key_stay_open(ops, guarded):
    assert _register(ops, guarded, "a-1", service="open-service").status_code == 201


def test_a_closed_registry_refuses_services_without_a_key(lab, ops, clock):
    closed = lab.serve(create("registry", clock=clock, keys={"inventory": KEY}, closed=True), name="closed-registry")
    base = f"{closed.url}/services/open-service/instances"
    refused = ops.post(base, json={"id": "a-1", "url": "http://127.0.0.1:5001", "ttl_s": 1.0}, headers=_as(KEY))
    assert refused.status_code == 403 and "closed" in refused.json()["error"]
    assert ops.put(f"{base}/a-1/heartbeat").status_code == 403
    assert ops.delete(f"{base}/a-1").status_code == 403
    assert ops.get(f"{closed.url}/services/open-service").json()["instances"] == []
    inventory = f"{closed.url}/services/inventory/instances"
    body = {"id": "inv-1", "url": "http://127.0.0.1:5001", "ttl_s": 1.0}
    assert ops.post(inventory, json=body).status_code == 401
    assert ops.post(inventory, json=body, headers=_as(KEY)).status_code == 201
    assert ops.get(f"{closed.url}/stats").json()["refused"] == 4


@pytest.mark.parametrize("closed", [1, "yes", None])
def test_closed_must_be_a_boolean(closed):
    with pytest.raises(ValueError):
        create("registry", closed=closed)


@pytest.mark.parametrize("keys", ["k3y-k3y-k3y", {"inventory": "short"}, {"bad name": "long-enough-key"},
                                  {"inventory": 12345678}])
def test_bad_keys_are_refused(keys):
    with pytest.raises(ValueError):
        create("registry", keys=keys)


def test_the_manual_clock_moves_forward_only():
    clock = ManualClock(2)
    clock.advance(0.5)
    assert clock() == 2.5
    for bad in (-1, True, "1", float("nan")):
        with pytest.raises(ValueError):
            clock.advance(bad)
    assert clock() == 2.5
    assert ManualClock()() == 0.0


# -- instance -----------------------------------------------------------------------------


@pytest.fixture
def instance(lab):
    app = create("instance", name="inv-7")
    assert isinstance(app.extensions["labkit"], Instance)
    return lab.serve(app, name="inv-7")


DEFAULT_FAULTS = {"work_ms": 0.0, "healthy": True}


def test_an_instance_says_who_it_is_and_counts(ops, instance):
    assert ops.get(instance.url + "/whoami").json() == {"instance": "inv-7", "served": 1}
    assert ops.get(instance.url + "/whoami").json() == {"instance": "inv-7", "served": 2}
    assert ops.get(instance.url + "/health").json() == {"status": "ok", "instance": "inv-7"}


def test_an_instance_shows_its_faults(ops, instance):
    answer = ops.get(instance.url + "/faults")
    assert answer.status_code == 200 and answer.json() == DEFAULT_FAULTS


def test_an_unhealthy_instance_answers_503(ops, instance):
    answer = ops.put(instance.url + "/faults", json={"healthy": False})
    assert answer.json() == {"work_ms": 0.0, "healthy": False}
    assert ops.get(instance.url + "/faults").json() == {"work_ms": 0.0, "healthy": False}
    for path in ("/whoami", "/health"):
        sick = ops.get(instance.url + path)
        assert sick.status_code == 503 and "inv-7" in sick.json()["error"]
    ops.put(instance.url + "/faults", json={"healthy": True}).raise_for_status()
    assert ops.get(instance.url + "/whoami").json() == {"instance": "inv-7", "served": 1}  # 503s were not served


def test_a_slow_instance_misses_a_short_timeout(ops, instance):
    answer = ops.put(instance.url + "/faults", json={"work_ms": 600})
    assert answer.json() == {"work_ms": 600.0, "healthy": True}
    with pytest.raises(requests.exceptions.ReadTimeout):
        ops.get(instance.url + "/health", timeout=0.1)
    assert ops.get(instance.url + "/faults").json()["work_ms"] == 600
    ops.put(instance.url + "/faults", json={"work_ms": 0}).raise_for_status()


def test_both_faults_change_at_once_and_an_empty_change_changes_nothing(ops, instance):
    answer = ops.put(instance.url + "/faults", json={"work_ms": 12.5, "healthy": False})
    assert answer.status_code == 200 and answer.json() == {"work_ms": 12.5, "healthy": False}
    answer = ops.put(instance.url + "/faults", json={})
    assert answer.status_code == 200 and answer.json() == {"work_ms": 12.5, "healthy": False}
    assert ops.get(instance.url + "/faults").json() == {"work_ms": 12.5, "healthy": False}


@pytest.mark.parametrize("body", [{"work_ms": -1}, {"work_ms": 10_001}, {"work_ms": True}, {"work_ms": "10"},
                                  {"work_ms": None}, {"work_ms": [5]}, {"healthy": "no"}, {"healthy": 0},
                                  {"healthy": None}, {"work_ms": 50, "healthy": "no"},
                                  {"work_ms": -1, "healthy": False}, [1], "x"])
def test_a_bad_fault_value_is_400_and_changes_nothing(ops, instance, body):
    answer = ops.put(instance.url + "/faults", json=body)
    assert answer.status_code == 400 and answer.json()["error"]
    assert ops.get(instance.url + "/faults").json() == DEFAULT_FAULTS


@pytest.mark.parametrize("raw", [b'{"work_ms": NaN}', b'{"work_ms": Infinity}', b'{"work_ms": 1e400}'])
def test_a_number_that_is_not_finite_is_400(ops, instance, raw):
    answer = ops.put(instance.url + "/faults", data=raw, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "work_ms" in answer.json()["error"]
    assert ops.get(instance.url + "/faults").json() == DEFAULT_FAULTS


@pytest.mark.parametrize("body", [{"colour": "red"}, {"slow_ms": 100}, {"work_ms": 50, "Healthy": False}])
def test_an_unknown_fault_setting_is_400_and_changes_nothing(ops, instance, body):
    answer = ops.put(instance.url + "/faults", json=body)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "not a fault setting" in error and "work_ms" in error and "healthy" in error  # it lists the real ones
    assert ops.get(instance.url + "/faults").json() == DEFAULT_FAULTS


def test_the_old_admin_page_is_gone(ops, instance):
    assert ops.get(instance.url + "/admin").status_code == 404
    assert ops.put(instance.url + "/admin", json={"healthy": False}).status_code == 404
    assert ops.get(instance.url + "/faults").json() == DEFAULT_FAULTS


def test_faults_may_be_set_when_the_instance_is_made(lab, ops):
    server = lab.serve(create("instance", name="inv-8", work_ms=5, healthy=False), name="inv-8")
    assert ops.get(server.url + "/faults").json() == {"work_ms": 5.0, "healthy": False}
    assert ops.get(server.url + "/health").status_code == 503


@pytest.mark.parametrize("options", [{"name": ""}, {"name": 3}, {"name": "bad name"}, {"work_ms": -5},
                                     {"work_ms": True}, {"healthy": "yes"}, {"slow_ms": 5}])
def test_bad_options_are_refused(options):
    with pytest.raises(ValueError):
        create("instance", **options)


# -- malformed input: a JSON 4xx, and nothing changes -----------------------------------------

PARAMS = ["id", "url", "ttl_s", "work_ms", "healthy", "service"]
bodies = malformed.bodies(PARAMS, ["inv-1", "http://127.0.0.1:5001", "http://x:1/"])
ids = malformed.path_ids(["inventory", "inv-1", "x" * 65, "-a", "é"])

REGISTRY_ENDPOINTS = [("POST", "/services/{a}/instances"), ("PUT", "/services/{a}/instances/{b}/heartbeat"),
                      ("DELETE", "/services/{a}/instances/{b}"), ("GET", "/services/{a}"), ("GET", "/services"),
                      ("GET", "/stats"), ("PATCH", "/services"), ("GET", "/{a}")]
INSTANCE_ENDPOINTS = [("GET", "/whoami"), ("GET", "/health"), ("GET", "/faults"), ("PUT", "/faults"),
                      ("POST", "/whoami"), ("GET", "/{a}")]


@pytest.fixture(scope="module")
def session():
    with requests.Session() as s:
        s.trust_env = False
        yield s


@pytest.fixture(scope="module")
def malformed_registry(session):
    with labkit.serve(create("registry", clock=ManualClock()), name="registry·malformed",
                      trace=labkit.Trace()) as server:
        session.post(server.url + "/services/inventory/instances",
                     json={"id": "inv-1", "url": "http://127.0.0.1:5001", "ttl_s": 60}, timeout=10).raise_for_status()
        yield server


@pytest.fixture(scope="module")
def malformed_instance():
    with labkit.serve(create("instance", name="inv-1"), name="instance·malformed", trace=labkit.Trace()) as server:
        yield server


def _send(session, server, endpoints, data):
    method, template = data.draw(st.sampled_from(endpoints), label="endpoint")
    path = template.format(a=requests.utils.quote(data.draw(ids, label="a"), safe=""),
                           b=requests.utils.quote(data.draw(ids, label="b"), safe=""))
    body = data.draw(bodies, label="body")
    query = data.draw(st.dictionaries(st.sampled_from(PARAMS) | st.text(min_size=1, max_size=8),
                                      st.text(max_size=20), max_size=3), label="query")
    return session.request(method, server.url + path, params=query, data=body[1] if body else None,
                           headers={"Content-Type": body[0]} if body else {}, timeout=10)


def _judge(answer, state_before, state_after):
    assert answer.status_code < 500, (answer.status_code, answer.text[:200])
    if answer.status_code >= 400:
        assert answer.headers["Content-Type"] == "application/json", answer.text[:200]
        error = answer.json()["error"]
        assert isinstance(error, str) and error
        assert state_after == state_before


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_registry_answers_malformed_input_with_a_json_4xx(session, malformed_registry, data):
    def state():
        return [session.get(malformed_registry.url + path, timeout=10).json()
                for path in ("/services", "/services/inventory", "/stats")]

    before = state()
    answer = _send(session, malformed_registry, REGISTRY_ENDPOINTS, data)
    _judge(answer, before, state())


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_an_instance_answers_malformed_input_with_a_json_4xx(session, malformed_instance, data):
    url = malformed_instance.url
    session.put(url + "/faults", json={"work_ms": 0, "healthy": True}, timeout=10).raise_for_status()
    before = session.get(url + "/faults", timeout=10).json()
    answer = _send(session, malformed_instance, INSTANCE_ENDPOINTS, data)
    after = session.get(url + "/faults", timeout=10).json()
    if after["work_ms"]:  # a valid setting was accepted: no more waiting in later examples
        session.put(url + "/faults", json={"work_ms": 0}, timeout=10).raise_for_status()
    _judge(answer, before, after)
