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


def token_for(client, broker, name, audience):
    """A token saying it is ``name`` (signed in with its secret), for the peer ``audience`` only."""
    own = client.post(broker.url + "/login", json={"name": name, "secret": SECRETS[name]}).json()["token"]
    answer = client.post(broker.url + "/tokens", json={"audience": audience}, headers={"Authorization": f"Bearer {own}"})
    assert answer.status_code == 200, answer.text
    return answer.json()["token"]


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


def test_no_peer_may_take_the_brokers_own_name(lab, me, signer):
    """The broker's name is the audience of its own tokens: a peer called "broker" would be handed tokens
    (by callers asking /tokens for "broker") that the broker itself accepts."""
    open_broker = lab.serve(create("broker", signer=signer), name="open-broker")  # any other name gets in
    for path in ("/register", "/login"):
        taken = me.post(open_broker.url + path, json={"name": "broker", "kind": "worker", "url": "http://127.0.0.1:9",
                                                      "secret": "mine now"})
        assert taken.status_code == 403 and "broker's own name" in taken.json()["error"], taken.text
    assert names(me, open_broker) == []
    own = register(me, open_broker, "alice", secret="a").json()["token"]
    for_itself = me.post(open_broker.url + "/tokens", json={"audience": "broker"},
                         headers={"Authorization": f"Bearer {own}"})
    assert for_itself.status_code == 403 and "/register or /login" in for_itself.json()["error"]
    assert me.post(open_broker.url + "/tokens", json={"audience": "bob"},
                   headers={"Authorization": f"Bearer {own}"}).status_code == 200
    hub = lab.serve(create("broker", name="hub", signer=signer), name="hub")  # the rule follows the broker's name
    assert register(me, hub, "hub", secret="x").status_code == 403
    assert register(me, hub, "broker", secret="x").status_code == 201
    with pytest.raises(ValueError, match="secrets must not name the broker itself"):
        create("broker", secrets={"broker": "s", "alice": "a"})


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


def picks(client, broker, jobs, kind="worker"):
    return [allocate(client, broker, kind).json()["peer"]["name"] for _ in range(jobs)]


def test_without_counting_its_own_jobs_least_loaded_herds_onto_one_peer(lab, me, signer):
    """Between two reports every job goes to the peer that reported least: herd behaviour."""
    herd = lab.serve(create("broker", signer=signer, count_allocations=False), name="herd")
    for name, load in (("a", 1), ("b", 0), ("c", 2)):
        register(me, herd, name, load=load, secret="s")
    assert picks(me, herd, 6) == ["b"] * 6
    counted = lab.serve(create("broker", signer=signer), name="counted")
    for name, load in (("a", 1), ("b", 0), ("c", 2)):
        register(me, counted, name, load=load, secret="s")
    assert picks(me, counted, 6) == ["b", "a", "b", "a", "b", "c"]


def test_two_choices_takes_the_lighter_of_two_random_peers(lab, me, signer):
    two = lab.serve(create("broker", signer=signer, policy="two-choices", count_allocations=False, seed=4),
                    name="two")
    for name, load in (("a", 0), ("b", 5), ("c", 9)):
        register(me, two, name, load=load, secret="s")
    chosen = picks(me, two, 60)
    assert "c" not in chosen  # the busiest is the heavier of every pair it is in
    assert chosen.count("a") > chosen.count("b") > 0  # b wins only when drawn with c
    again = lab.serve(create("broker", signer=signer, policy="two-choices", count_allocations=False, seed=4),
                      name="two-again")
    for name, load in (("a", 0), ("b", 5), ("c", 9)):
        register(me, again, name, load=load, secret="s")
    assert picks(me, again, 60) == chosen  # seeded: the same draws


def test_two_choices_spreads_jobs_that_stale_reports_would_herd(lab, me, signer):
    """Eight peers report the same load; 16 jobs arrive before the next report."""
    spread = {}
    for policy in ("least-loaded", "two-choices", "random"):
        broker = lab.serve(create("broker", signer=signer, policy=policy, count_allocations=False), name=policy)
        for i in range(8):
            register(me, broker, f"p{i}", load=3, secret="s")
        spread[policy] = len(set(picks(me, broker, 16)))
    assert spread["least-loaded"] == 1
    assert spread["two-choices"] >= 5 and spread["random"] >= 5


def test_a_random_broker_picks_every_live_peer_and_only_those(lab, me, signer, clock):
    broker = lab.serve(create("broker", secrets=SECRETS, clock=clock, signer=signer, policy="random", seed=1),
                       name="random")
    for name in ("alice", "bob"):
        register(me, broker, name)
    clock.advance(20)
    register(me, broker, "carol")
    assert set(picks(me, broker, 30)) == {"alice", "bob", "carol"}
    clock.advance(15)  # alice and bob expired
    assert set(picks(me, broker, 10)) == {"carol"}


def test_an_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="policy must be one of least-loaded, two-choices, random"):
        create("broker", policy="round-robin")
    with pytest.raises(ValueError, match="count_allocations must be true or false"):
        create("broker", count_allocations="yes")


# -- sign-in ----------------------------------------------------------------------------------------


def test_tokens_are_signed_by_the_broker_and_checked_with_its_public_key(broker, me, signer):
    token = me.post(broker.url + "/login", json={"name": "carol", "secret": "carol-secret"}).json()["token"]
    (jwk,) = me.get(broker.url + JWKS).json()["keys"]
    assert jwk["kid"] == signer.kid == jwt.get_unverified_header(token)["kid"]
    public = jwt.PyJWK(jwk).key
    assert tokens.pem(jwk) == signer.public_pem
    assert tokens.verify(token, public, algorithm="RS256", audience="broker")["sub"] == "carol"
    assert me.get(broker.url + "/key").status_code == 404  # the key set is the one place
    header, claims, signature = token.split(".")
    forged_claims = jwt.utils.base64url_encode(json.dumps(
        {**jwt.decode(token, options={"verify_signature": False}), "sub": "alice"}).encode()).decode()
    with pytest.raises(jwt.InvalidSignatureError):
        tokens.verify(f"{header}.{forged_claims}.{signature}", public, algorithm="RS256", audience="broker")


def test_a_worker_trusts_broker_tokens_without_calling_the_broker(lab, broker, me, signer):
    bob = lab.serve(create("worker", name="bob", broker_url=broker.url, trace=lab.trace), name="bob")
    token = token_for(me, broker, "alice", "bob")
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
    claims = {"sub": "alice", "aud": "bob", "exp": int(time.time()) + 60}
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
    expired = signer.sign({"sub": "alice", "aud": "bob", "exp": int(time.time()) - 5})
    answer = me.post(bob.url + "/jobs", json={"numbers": [1]}, headers={"Authorization": f"Bearer {expired}"})
    assert answer.status_code == 401 and "expired" in answer.json()["error"]
    fresh = me.post(short.url + "/login", json={"name": "alice", "secret": "alice-secret"}).json()
    assert fresh["expires_in"] == 1
    claims = jwt.decode(fresh["token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1


def test_a_token_for_one_peer_cannot_be_replayed_to_another(lab, broker, me, signer):
    """bob receives alice's token for bob; carol, the broker and the token exchange refuse it."""
    bob = lab.serve(create("worker", name="bob", broker_url=broker.url), name="bob")
    carol = lab.serve(create("worker", name="carol", broker_url=broker.url), name="carol")
    for_bob = token_for(me, broker, "alice", "bob")
    assert jwt.decode(for_bob, options={"verify_signature": False})["aud"] == "bob"
    auth = {"Authorization": f"Bearer {for_bob}"}
    assert me.post(bob.url + "/jobs", json={"numbers": [1]}, headers=auth).json()["for"] == "alice"
    replayed = me.post(carol.url + "/jobs", json={"numbers": [1]}, headers=auth)
    assert replayed.status_code == 401
    assert "this token is for 'bob', not for 'carol'" in replayed.json()["error"]
    own = register(me, broker, "alice").json()["token"]  # alice's token for the broker itself
    at_bob = me.post(bob.url + "/jobs", json={"numbers": [1]}, headers={"Authorization": f"Bearer {own}"})
    assert at_bob.status_code == 401 and "for 'broker', not for 'bob'" in at_bob.json()["error"]
    no_audience = signer.sign({"sub": "alice", "exp": int(time.time()) + 60})
    answer = me.post(bob.url + "/jobs", json={"numbers": [1]}, headers={"Authorization": f"Bearer {no_audience}"})
    assert answer.status_code == 401 and "names no audience" in answer.json()["error"]
    no_expiry = signer.sign({"sub": "alice", "aud": "bob"})  # the audience is right: the refusal says what is wrong
    answer = me.post(bob.url + "/jobs", json={"numbers": [1]}, headers={"Authorization": f"Bearer {no_expiry}"})
    assert answer.status_code == 401 and '"exp"' in answer.json()["error"] and "audience" not in answer.json()["error"]
    refused = beat(me, broker, "alice", for_bob)
    assert refused.status_code == 401 and "not for the broker 'broker'" in refused.json()["error"]
    exchanged = me.post(broker.url + "/tokens", json={"audience": "carol"}, headers=auth)
    assert exchanged.status_code == 401  # only a token for the broker buys tokens for peers
    assert me.post(broker.url + "/tokens", json={"audience": "carol"}).status_code == 401
    assert me.get(bob.url + "/stats").json() == {"jobs": 1} and me.get(carol.url + "/stats").json() == {"jobs": 0}


def test_a_token_for_a_peer_never_outlives_the_token_that_bought_it(lab, me, signer):
    brief = lab.serve(create("broker", name="brief", secrets=SECRETS, token_ttl_s=600, signer=signer), name="brief")
    own = signer.sign({"sub": "alice", "aud": "brief", "iss": "brief", "exp": int(time.time()) + 30})
    answer = me.post(brief.url + "/tokens", json={"audience": "bob"}, headers={"Authorization": f"Bearer {own}"})
    assert answer.status_code == 200 and answer.json()["audience"] == "bob"
    claims = jwt.decode(answer.json()["token"], options={"verify_signature": False})
    assert (claims["sub"], claims["aud"], claims["iss"]) == ("alice", "bob", "brief")
    assert claims["exp"] == jwt.decode(own, options={"verify_signature": False})["exp"]
    assert 25 <= answer.json()["expires_in"] <= 30


def test_a_member_keeps_its_tokens_for_peers(lab, broker, me):
    bob = worker.start("bob", broker.url, "bob-secret", heartbeat_s=60, trace=lab.trace)
    lab.callback(bob.stop)
    alice = worker.start("alice", broker.url, "alice-secret", heartbeat_s=60, trace=lab.trace)
    lab.callback(alice.stop)
    first = alice.token_for("bob")
    assert alice.token_for("bob") == first  # kept, not asked for again
    assert len(lab.trace.filter(kind="receive", node="broker", path="/tokens")) == 1
    answer = me.post(bob.url + "/jobs", json={"numbers": [2]}, headers={"Authorization": f"Bearer {first}"})
    assert answer.json() == {"by": "bob", "for": "alice", "sum": 2}
    assert jwt.decode(alice.token_for("carol"), options={"verify_signature": False})["aud"] == "carol"


def test_a_member_renews_its_broker_token_before_peer_tokens_run_short(lab, me, signer):
    """A token for a peer never outlives the broker token that bought it, so the member renews that one first."""
    brief = lab.serve(create("broker", secrets=SECRETS, token_ttl_s=2, signer=signer), name="brief")
    alice = worker.start("alice", brief.url, "alice-secret", heartbeat_s=60, trace=lab.trace)
    lab.callback(alice.stop)
    first = alice.token
    assert alice.token_for("bob") == alice.token_for("bob")
    alice.member.forget_tokens()
    alice.token_for("bob")  # asked for again
    assert len(lab.trace.filter(kind="receive", node="brief", path="/tokens")) == 2
    time.sleep(1.9)  # past nine tenths of the broker token's two seconds
    later = jwt.decode(alice.token_for("bob"), options={"verify_signature": False})
    assert alice.token != first  # it registered again first
    assert later["exp"] - time.time() > 1  # so the new token has its life ahead
    assert [e.status for e in lab.trace.filter(kind="reply", node="brief", path="/tokens")] == [200] * 3
    assert len(lab.trace.filter(kind="receive", node="brief", path="/register")) == 2


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


def test_a_worker_fetches_the_key_set_again_at_most_every_keys_refetch_s():
    from labkit.apps import kit
    from labkit.errors import Invalid
    for options, expected in (({}, 30.0), ({"keys_refetch_s": 3600}, 3600.0)):
        app = create("worker", name="bob", broker_url="http://127.0.0.1:9", **options)
        assert app.extensions[kit.STATE].keys.refetch_s == expected
    with pytest.raises(Invalid):
        create("worker", name="bob", broker_url="http://127.0.0.1:9", keys_refetch_s=0)


def test_a_broker_may_sign_with_any_key_its_peers_can_fetch(lab, me):
    """An Ed25519 broker: its own checks and its workers' pin the algorithm its key set names."""
    ed = lab.serve(create("broker", secrets=SECRETS, signer=tokens.Signer("EdDSA", issuer="ed-broker")),
                   name="ed-broker")
    token = register(me, ed, "alice").json()["token"]
    assert jwt.get_unverified_header(token)["alg"] == "EdDSA"
    assert beat(me, ed, "alice", token, load=1).status_code == 200
    bob = lab.serve(create("worker", name="bob", broker_url=ed.url), name="bob")
    for_bob = me.post(ed.url + "/tokens", json={"audience": "bob"}, headers={"Authorization": f"Bearer {token}"})
    assert jwt.get_unverified_header(for_bob.json()["token"])["alg"] == "EdDSA"
    answer = me.post(bob.url + "/jobs", json={"numbers": [2, 3]},
                     headers={"Authorization": f"Bearer {for_bob.json()['token']}"})
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
    assert tokens.verify(broker_token, broker_keys, issuer="broker", audience="broker")["sub"] == "bob"
    assert tokens.verify(auth_token, auth_keys, audience="notes", issuer="labkit-auth")["sub"] == "bob"
    with pytest.raises(jwt.InvalidTokenError):
        tokens.verify(auth_token, broker_keys, audience="notes")
    with pytest.raises(jwt.InvalidTokenError):
        tokens.verify(broker_token, auth_keys)


# -- relay ----------------------------------------------------------------------------------------------


def test_relay_forwards_method_query_body_and_token(lab, broker, me):
    bob = lab.serve(create("worker", name="bob", broker_url=broker.url), name="bob")
    register(me, broker, "bob", url=bob.url)
    token = token_for(me, broker, "alice", "bob")
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


def test_a_broker_listening_beyond_this_machine_relays_to_no_local_address(lab, me, signer):
    """Anyone may register any URL: an open relay on 0.0.0.0 would forward the network to the broker host's
    loopback services and to the cloud metadata address. One listening on loopback relays there as before."""
    bob = lab.serve(create("worker", name="bob"), name="bob")
    exposed = lab.serve(create("broker", signer=signer, timeout_s=0.3), name="exposed", host="0.0.0.0")
    port = bob.url.rpartition(":")[2]
    for address in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://127.1.2.3:{port}",
                    f"http://0.0.0.0:{port}", f"http://[::1]:{port}", f"http://[::ffff:127.0.0.1]:{port}",
                    "http://169.254.169.254:80", "http://[fe80::1]:80"):
        register(me, exposed, "bob", url=address, secret="s")
        refused = me.get(exposed.url + "/relay/bob/hello")
        assert refused.status_code == 403 and "loopback or link-local" in refused.json()["error"], address
    assert lab.trace.filter(kind="receive", node="bob").events() == []  # bob was never called
    register(me, exposed, "bob", url="http://192.0.2.1:9", secret="s")  # TEST-NET-1: allowed, and unreachable
    assert me.get(exposed.url + "/relay/bob/hello").status_code in (502, 504)
    allowed = lab.serve(create("broker", signer=signer, relay_local=True), name="allowed", host="0.0.0.0")
    register(me, allowed, "bob", url=bob.url, secret="s")
    assert me.get(allowed.url + "/relay/bob/hello").json() == {"name": "bob", "kind": "worker"}
    local = lab.serve(create("broker", signer=signer), name="local")  # 127.0.0.1: every peer here is local too
    register(me, local, "bob", url=f"http://localhost:{port}", secret="s")
    assert me.get(local.url + "/relay/bob/hello").json() == {"name": "bob", "kind": "worker"}
    strict = lab.serve(create("broker", signer=signer, relay_local=False), name="strict")
    register(me, strict, "bob", url=bob.url, secret="s")
    assert me.get(strict.url + "/relay/bob/hello").status_code == 403
    with pytest.raises(ValueError, match="relay_local must be true, false or None"):
        create("broker", relay_local="yes")


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
               ("GET", "/relay/{id}/hello"), ("POST", "/relay/{id}/jobs"), ("GET", "/stats"), ("PUT", "/peers"),
               ("POST", "/tokens")],
    "worker": [("GET", "/"), ("GET", "/hello"), ("POST", "/jobs"), ("GET", "/stats"), ("DELETE", "/jobs")],
}
FIELDS = ["name", "kind", "url", "secret", "load", "numbers", "token", "audience"]
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
