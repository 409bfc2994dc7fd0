"""The broker and its workers, against real sockets: identification, allocation, sign-in, relay.

Time is a clock the test moves (``clock=``), so the time-to-live is tested without sleeping.
"""

from __future__ import annotations

import json
import threading
import time

import jwt
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.apps import create, tokens, worker
from labkit.apps.auth import FAST_HASHING
from labkit.apps.kit import ManualClock

import malformed

SECRETS = {"alice": "alice-secret", "bob": "bob-secret", "carol": "carol-secret"}
JWKS = "/.well-known/jwks.json"


@pytest.fixture(scope="module")
def signer():
    # One RSA key for the module: generating one takes a while.
    return tokens.Signer("RS256", issuer="broker")


@pytest.fixture
def clock():
    return ManualClock(start=1000.0)


@pytest.fixture
def broker(lab, clock, signer):
    app = create("broker", secrets=SECRETS, ttl_s=30, clock=clock, trace=lab.trace, signer=signer)
    return lab.serve(app, name="broker")


@pytest.fixture
def me(lab):
    return lab.client("me", timeout=5)


def register(client, broker, name, *, url="http://127.0.0.1:9", kind="worker", load=0, secret=None):
    return client.post(broker.url + "/register", json={
        "name": name, "kind": kind, "url": url, "load": load, "secret": secret or SECRETS[name]})


def beat(client, broker, name, token, load=0):
    return client.post(broker.url + "/heartbeat", json={"name": name, "load": load},
                       headers={"Authorization": f"Bearer {token}"})


def names(client, broker, **params):
    return [p["name"] for p in client.get(broker.url + "/peers", params=params).json()["peers"]]


# -- identification -------------------------------------------------------------------------------


def test_register_list_and_look_up(broker, me):
    assert register(me, broker, "bob", kind="printer", url="http://10.0.0.2:5002/").status_code == 201
    assert register(me, broker, "alice", load=3).status_code == 201
    assert names(me, broker) == ["alice", "bob"]
    assert names(me, broker, kind="printer") == ["bob"]
    assert me.get(broker.url + "/peers/bob").json() == {"name": "bob", "kind": "printer",
                                                        "url": "http://10.0.0.2:5002", "load": 0}
    missing = me.get(broker.url + "/peers/dave")
    assert missing.status_code == 404 and "dave" in missing.json()["error"]


def test_registering_again_moves_the_peer(broker, me):
    register(me, broker, "alice", url="http://127.0.0.1:1111")
    register(me, broker, "alice", url="http://127.0.0.1:2222")
    assert me.get(broker.url + "/peers/alice").json()["url"] == "http://127.0.0.1:2222"
    assert names(me, broker) == ["alice"]


def test_a_wrong_secret_or_unknown_name_is_refused(broker, me):
    assert register(me, broker, "alice", secret="guess").status_code == 401
    assert register(me, broker, "mallory", secret="x").status_code == 401
    assert me.post(broker.url + "/login", json={"name": "bob", "secret": "nope"}).status_code == 401
    assert names(me, broker) == []


def test_an_open_broker_fixes_each_secret_at_first_sign_in(lab, me, signer):
    open_broker = lab.serve(create("broker", signer=signer), name="open-broker")
    assert me.post(open_broker.url + "/login", json={"name": "zoe", "secret": "first"}).status_code == 200
    assert me.post(open_broker.url + "/login", json={"name": "zoe", "secret": "second"}).status_code == 401
    assert me.post(open_broker.url + "/login", json={"name": "zoe", "secret": "first"}).status_code == 200


def test_a_silent_peer_is_forgotten_after_the_ttl(broker, me, clock):
    token_a = register(me, broker, "alice").json()["token"]
    register(me, broker, "bob")
    clock.advance(20)
    assert beat(me, broker, "alice", token_a).status_code == 200
    clock.advance(20)  # bob silent for 40 s, alice for 20 s
    assert names(me, broker) == ["alice"]
    assert me.get(broker.url + "/peers/bob").status_code == 404
    clock.advance(31)
    assert names(me, broker) == []
    forgotten = beat(me, broker, "alice", token_a)
    assert forgotten.status_code == 404 and "register again" in forgotten.json()["error"]


def test_heartbeats_need_the_peers_own_token(broker, me):
    token_a = register(me, broker, "alice").json()["token"]
    register(me, broker, "bob")
    assert beat(me, broker, "bob", token_a).status_code == 403
    assert me.post(broker.url + "/heartbeat", json={"name": "bob", "load": 1}).status_code == 401
    assert beat(me, broker, "bob", token_a[:-4] + "AAAA").status_code == 401
    assert me.delete(broker.url + "/peers/bob", headers={"Authorization": f"Bearer {token_a}"}).status_code == 403
    assert me.delete(broker.url + "/peers/alice", headers={"Authorization": f"Bearer {token_a}"}).status_code == 200
    assert names(me, broker) == ["bob"]


# -- allocation -----------------------------------------------------------------------------------


def allocate(client, broker, kind="worker"):
    return client.post(broker.url + "/allocate", json={"kind": kind})


def test_allocate_picks_the_least_loaded_live_peer(broker, me, clock):
    register(me, broker, "alice", load=5)
    token_b = register(me, broker, "bob", load=1).json()["token"]
    register(me, broker, "carol", load=0, kind="printer")
    picks = [allocate(me, broker).json()["peer"]["name"] for _ in range(6)]
    # bob 1, 2, 3, 4, then ties with alice at 5 go by name: alice, then bob again
    assert picks == ["bob", "bob", "bob", "bob", "alice", "bob"]
    beat(me, broker, "bob", token_b, load=9)  # the truth replaces the estimate
    assert allocate(me, broker).json()["peer"]["name"] == "alice"
    clock.advance(40)  # everyone silent past the ttl
    gone = allocate(me, broker)
    assert gone.status_code == 404 and "worker" in gone.json()["error"]


def test_allocate_never_picks_a_dead_peer(broker, me, clock):
    register(me, broker, "alice", load=0)
    clock.advance(25)
    token_b = register(me, broker, "bob", load=50).json()["token"]
    clock.advance(10)  # alice (idle but silent) expired; bob is busy but alive
    assert allocate(me, broker).json()["peer"]["name"] == "bob"
    assert beat(me, broker, "bob", token_b, load=50).status_code == 200


# -- sign-in ----------------------------------------------------------------------------------------


def test_tokens_are_signed_by_the_broker_and_checked_with_its_public_key(broker, me, signer):
    token = me.post(broker.url + "/login", json={"name": "carol", "secret": "carol-secret"}).json()["token"]
    (jwk,) = me.get(broker.url + JWKS).json()["keys"]
    assert jwk["kid"] == signer.kid == jwt.get_unverified_header(token)["kid"]
    public = jwt.PyJWK(jwk).key
    assert tokens.pem(jwk) == signer.public_pem
    assert tokens.verify(token, public, algorithm="RS256")["sub"] == "carol"
    assert me.get(broker.url + "/key").status_code == 404  # the key set is the one place
    header, claims, signature = token.split(".")
    forged_claims = jwt.utils.base64url_encode(json.dumps(
        {**jwt.decode(token, options={"verify_signature": False}), "sub": "alice"}).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        tokens.verify(f"{header}.{forged_claims}.{signature}", public, algorithm="RS256")


def test_a_worker_trusts_broker_tokens_without_calling_the_broker(lab, broker, me, signer):
    bob = lab.serve(create("worker", name="bob", broker_url=broker.url, trace=lab.trace), name="bob")
    token = me.post(broker.url + "/login", json={"name": "alice", "secret": "alice-secret"}).json()["token"]
    auth = {"Authorization": f"Bearer {token}"}
    assert lab.trace.filter(kind="receive", node="broker", path=JWKS).events() == []  # not before it needs it
    first = me.post(bob.url + "/jobs", json={"numbers": [1, 2, 3]}, headers=auth)
    assert first.json() == {"by": "bob", "for": "alice", "sum": 6}
    key_requests = lab.trace.filter(kind="receive", node="broker", path=JWKS)
    assert [e.src for e in key_requests] == ["bob"]
    broker.stop()  # the broker is gone: the worker still knows its key
    assert me.post(bob.url + "/jobs", json={"numbers": [4]}, headers=auth).json()["sum"] == 4
    assert me.post(bob.url + "/jobs", json={"numbers": [4]}).status_code == 401
    tampered = me.post(bob.url + "/jobs", json={"numbers": [4]}, headers={"Authorization": f"Bearer {token}x"})
    assert tampered.status_code == 401 and "sign in" in tampered.json()["error"]
    other = tokens.Signer("EdDSA", issuer="broker")  # another key, whatever its kind
    claims = {"sub": "alice", "exp": int(time.time()) + 60}
    for stranger in (other.sign(claims), other.sign(claims, headers={"kid": signer.kid}),
                     jwt.encode(claims, "a guessed secret of 32 bytes or more", algorithm="HS256",
                                headers={"kid": signer.kid})):
        answer = me.post(bob.url + "/jobs", json={"numbers": [4]}, headers={"Authorization": f"Bearer {stranger}"})
        assert answer.status_code == 401, answer.text
    assert me.get(bob.url + "/stats").json() == {"jobs": 2}
    assert len(lab.trace.filter(kind="send", node="bob", path=JWKS)) == 1  # one fetch, all along


def test_an_expired_token_is_refused(lab, signer, me):
    short = lab.serve(create("broker", secrets=SECRETS, token_ttl_s=1, signer=signer), name="short-broker")
    bob = lab.serve(create("worker", name="bob", broker_url=short.url), name="bob")
    expired = signer.sign({"sub": "alice", "exp": int(time.time()) - 5})
    answer = me.post(bob.url + "/jobs", json={"numbers": [1]}, headers={"Authorization": f"Bearer {expired}"})
    assert answer.status_code == 401 and "expired" in answer.json()["error"]
    fresh = me.post(short.url + "/login", json={"name": "alice", "secret": "alice-secret"}).json()
    assert fresh["expires_in"] == 1
    claims = jwt.decode(fresh["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1


def test_a_worker_without_the_brokers_keys_trusts_no_token(lab, me, signer, monkeypatch):
    token = signer.sign({"sub": "alice", "exp": int(time.time()) + 60})
    auth = {"Authorization": f"Bearer {token}"}
    away = lab.serve(create("worker", name="bob", broker_url=f"http://127.0.0.1:{lab.closed_port()}",
                            timeout_s=1), name="bob")
    answer = me.post(away.url + "/jobs", json={"numbers": [1]}, headers=auth)
    assert answer.status_code == 503 and "public key" in answer.json()["error"]
    monkeypatch.delenv("LABKIT_BROKER_URL", raising=False)
    alone = lab.serve(create("worker", name="carol"), name="carol")
    answer = me.post(alone.url + "/jobs", json={"numbers": [1]}, headers=auth)
    assert answer.status_code == 503 and "no broker" in answer.json()["error"]
    assert me.get(away.url + "/stats").json() == me.get(alone.url + "/stats").json() == {"jobs": 0}


def test_a_broker_may_sign_with_any_key_its_peers_can_fetch(lab, me):
    """An Ed25519 broker: its own checks and its workers' pin the algorithm its key set names."""
    ed = lab.serve(create("broker", secrets=SECRETS, signer=tokens.Signer("EdDSA", issuer="ed-broker")),
                   name="ed-broker")
    token = register(me, ed, "alice").json()["token"]
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert beat(me, ed, "alice", token, load=1).status_code == 200
    bob = lab.serve(create("worker", name="bob", broker_url=ed.url), name="bob")
    answer = me.post(bob.url + "/jobs", json={"numbers": [2, 3]}, headers={"Authorization": f"Bearer {token}"})
    assert answer.json() == {"by": "bob", "for": "alice", "sum": 5}
    assert me.delete(ed.url + "/peers/alice", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert names(me, ed) == []


def test_the_broker_and_the_sign_in_service_publish_keys_the_same_way(lab, broker, me, signer):
    auth_app = create("auth", algorithm="RS256", users={}, **FAST_HASHING)
    auth = lab.serve(auth_app, name="auth")
    sets = {}
    for server in (broker, auth):
        answer = me.get(server.url + JWKS)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
        sets[server.name] = answer.json()
    assert [list(s) for s in sets.values()] == [["keys"], ["keys"]]
    (from_broker,), (from_auth,) = sets["broker"]["keys"], sets["auth"]["keys"]
    # RFC 7517 4.3: "use" and "key_ops" should not be used together; the key sets carry "use".
    assert sorted(from_broker) == sorted(from_auth) == ["alg", "e", "kid", "kty", "n", "use"]
    for jwk, its_signer in ((from_broker, signer), (from_auth, auth_app.extensions["labkit"].signer)):
        assert (jwk["kty"], jwk["alg"], jwk["use"], jwk["kid"]) == ("RSA", "RS256", "sig", its_signer.kid)
        assert "key_ops" not in jwk
        assert tokens.pem(jwk) == its_signer.public_pem
    assert from_broker["kid"] != from_auth["kid"]
    # One verifier's code for both: a key set of each verifies that signer's tokens, and only those.
    broker_token = me.post(broker.url + "/login", json={"name": "bob", "secret": "bob-secret"}).json()["token"]
    auth_token = auth_app.extensions["labkit"].issue("bob", ["reader"], "notes")
    broker_keys = tokens.KeySet(broker.url + JWKS, me, refetch_s=30, clock=ManualClock())
    auth_keys = tokens.KeySet(auth.url + JWKS, me, refetch_s=30, clock=ManualClock())
    assert tokens.verify(broker_token, broker_keys, issuer="broker")["sub"] == "bob"
    assert tokens.verify(auth_token, auth_keys, audience="notes", issuer="labkit-auth")["sub"] == "bob"
    with pytest.raises(jwt.InvalidTokenError):
        tokens.verify(auth_token, broker_keys, audience="notes")
    with pytest.raises(jwt.InvalidTokenError):
        tokens.verify(broker_token, auth_keys)


# -- relay ----------------------------------------------------------------------------------------------


def test_relay_forwards_method_query_body_and_token(lab, broker, me):
    bob = lab.serve(create("worker", name="bob", broker_url=broker.url), name="bob")
    register(me, broker, "bob", url=bob.url)
    token = me.post(broker.url + "/login", json={"name": "alice", "secret": "alice-secret"}).json()["token"]
    answer = me.post(broker.url + "/relay/bob/jobs", json={"numbers": [5, 6]},
                     headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200 and answer.json() == {"by": "bob", "for": "alice", "sum": 11}
    assert me.get(broker.url + "/relay/bob/hello?x=1").json() == {"name": "bob", "kind": "worker"}
    assert me.post(broker.url + "/relay/bob/jobs", json={"numbers": [1]}).status_code == 401  # bob's own answer
    # the broker made the calls to bob itself (bob called the broker only for its key set)
    assert [e.src for e in lab.trace.filter(kind="receive") if e.dst == "bob"] == ["broker"] * 3
    assert [e.path for e in lab.trace.filter(kind="receive") if e.src == "bob"] == [JWKS]
    assert me.get(broker.url + "/stats").json()["requests"]["relay"] == 3


def test_relay_to_an_unknown_or_dead_peer(lab, broker, me):
    assert me.get(broker.url + "/relay/dave/hello").status_code == 404
    register(me, broker, "bob", url=f"http://127.0.0.1:{lab.closed_port()}")
    dead = me.get(broker.url + "/relay/bob/hello")
    assert dead.status_code == 502 and "peer 'bob' could not be reached (refused)" in dead.json()["error"]


def test_relay_to_a_peer_that_does_not_answer_in_time(lab, me, signer):
    impatient = lab.serve(create("broker", secrets=SECRETS, timeout_s=0.2, signer=signer), name="impatient")
    slow = lab.serve(lab.app("slow"), name="slow")
    register(me, impatient, "bob", url=slow.url)
    started = time.perf_counter()
    late = me.get(impatient.url + "/relay/bob/sleep?s=0.6")
    assert late.status_code == 504 and "peer 'bob' did not answer in time" in late.json()["error"]
    assert time.perf_counter() - started < 0.6
    assert me.get(impatient.url + "/relay/bob/sleep?s=0").text == "slept"  # in time: bob's own answer


# -- members: registration and heartbeats from a thread -------------------------------------------------


def wait_until(condition, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_a_member_beats_rejoins_after_being_forgotten_and_leaves(lab, broker, me, clock):
    bob = worker.start("bob", broker.url, "bob-secret", load=2, heartbeat_s=0.05, trace=lab.trace)
    lab.callback(bob.stop)
    assert names(me, broker) == ["bob"]
    assert wait_until(lambda: bob.member.heartbeats >= 2)
    bob.load = 7
    assert wait_until(lambda: me.get(broker.url + "/peers/bob").json()["load"] == 7)
    clock.advance(60)  # the broker forgets bob; bob's next heartbeat gets a 404 and registers again
    assert wait_until(lambda: names(me, broker) == ["bob"]
                      and len(lab.trace.filter(kind="receive", node="broker", path="/register")) == 2)
    bob.stop()
    assert names(me, broker) == []
    assert not bob.server.running
    assert not any(t.name == "labkit-heartbeat-bob" for t in threading.enumerate())


def test_a_crashed_member_is_forgotten_only_after_the_ttl(lab, broker, me, clock):
    carol = worker.start("carol", broker.url, "carol-secret", heartbeat_s=0.05, trace=lab.trace)
    carol.stop(leave=False)  # a crash: no goodbye
    assert names(me, broker) == ["carol"]
    clock.advance(31)
    assert names(me, broker) == []


def test_a_member_with_a_wrong_secret_does_not_start(lab, broker):
    with pytest.raises(requests.exceptions.HTTPError):
        worker.start("bob", broker.url, "wrong", trace=lab.trace)
    assert "bob" not in [server.name for server in labkit.running()]


def test_a_worker_started_from_the_environment_registers_itself(lab, broker, me, monkeypatch):
    """What ``python -m labkit serve worker`` does with LABKIT_* variables set."""
    monkeypatch.setenv("LABKIT_PEER_NAME", "alice")
    monkeypatch.setenv("LABKIT_PEER_SECRET", "alice-secret")
    monkeypatch.setenv("LABKIT_BROKER_URL", broker.url)
    monkeypatch.setenv("LABKIT_PEER_URL", "http://10.0.0.7:5002")
    app = worker.create_app()
    member = app.extensions["labkit"].member
    lab.callback(member.stop)
    assert me.get(broker.url + "/peers/alice").json() == {"name": "alice", "kind": "worker",
                                                          "url": "http://10.0.0.7:5002", "load": 0}
    assert lab.serve(app, name="alice-env").url  # and it serves as usual
    member.stop()
    assert names(me, broker) == []


# -- malformed input ---------------------------------------------------------------------------------------

ENDPOINTS = {
    "broker": [("GET", "/"), ("GET", JWKS), ("POST", "/login"), ("POST", "/register"), ("POST", "/heartbeat"),
               ("GET", "/peers"), ("GET", "/peers/{id}"), ("DELETE", "/peers/{id}"), ("POST", "/allocate"),
               ("GET", "/relay/{id}/hello"), ("POST", "/relay/{id}/jobs"), ("GET", "/stats"), ("PUT", "/peers")],
    "worker": [("GET", "/"), ("GET", "/hello"), ("POST", "/jobs"), ("GET", "/stats"), ("DELETE", "/jobs")],
}
FIELDS = ["name", "kind", "url", "secret", "load", "numbers", "token"]
bodies = malformed.bodies(FIELDS, ["alice", "bob", "worker", "alice-secret", "x" * 300])
ids = malformed.path_ids(["alice", "bob", "dave"])
# Header values requests can send: printable ASCII, no whitespace at either end.
authorization = st.one_of(st.none(), st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(str.strip),
                          st.just("Bearer not.a.token"))


@pytest.fixture(scope="module")
def services(signer):
    """A broker with one live peer (bob, a real worker) and alice's valid token; all on one trace."""
    log = labkit.Trace()
    app = create("broker", secrets=SECRETS, ttl_s=3600, signer=signer, trace=log)
    with labkit.serve(app, name="broker·malformed", trace=log) as broker, \
            labkit.serve(create("worker", name="bob", broker_url=broker.url, trace=log),
                         name="bob·malformed", trace=log) as bob, requests.Session() as session:
        session.trust_env = False
        assert register(session, broker, "bob", url=bob.url, load=3).status_code == 201
        token = session.post(broker.url + "/login", json={"name": "alice", "secret": "alice-secret"}).json()["token"]
        yield {"broker": broker, "worker": bob}, session, token


def _state(servers, session):
    return (session.get(servers["broker"].url + "/peers", timeout=10).json(),
            session.get(servers["worker"].url + "/stats", timeout=10).json())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(services, data):
    servers, session, token = services
    service = data.draw(st.sampled_from(sorted(ENDPOINTS)), label="service")
    method, template = data.draw(st.sampled_from(ENDPOINTS[service]), label="endpoint")
    path = template.replace("{id}", requests.utils.quote(data.draw(ids, label="id"), safe=""))
    body = data.draw(bodies, label="body")
    headers = {"Content-Type": body[0]} if body else {}
    auth = data.draw(st.one_of(authorization, st.just(f"Bearer {token}")), label="authorization")
    if auth is not None:
        headers["Authorization"] = auth
    before = _state(servers, session)
    response = session.request(method, servers[service].url + path, data=body[1] if body else None,
                               params=data.draw(st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=10),
                                                                max_size=3), label="query"),
                               headers=headers, timeout=10)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:200])
    assert response.headers["Content-Type"] == "application/json", (method, path, response.text[:200])
    if response.status_code >= 400:
        error = response.json()["error"]
        assert isinstance(error, str) and error
        assert _state(servers, session) == before
