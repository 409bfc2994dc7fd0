"""Hidden tests for notebook 03 (broker): q3.1 call_peer, a caller that survives a broker outage."""

import requests

from labkit.apps import create
from labkit.apps.tokens import Signer
from labkit.grading.authoring import Fail, Question, show

#: One signing key for every check's broker: making an RSA key takes a while.
_SIGNER = Signer("RS256", issuer="broker·check")

#: With the broker silent, an uncached look-up must give up within this many seconds (the answer aims at 1 s).
GIVE_UP_S = 3.0
#: Generous: a correct answer's whole check takes a few seconds.
TIME_LIMIT_S = 10.0

q31 = Question(
    "q3.1", "call_peer", params=("client", "broker_url", "peer", "path", "cache"),
    hint=("keep each peer's address in cache after one look-up (GET broker_url + '/peers/' + peer); "
          "when the cached address fails, look it up again once; return None when neither works"),
    hang_hint="give every request a timeout (timeout=1), and look a peer up again at most once per call",
    time_limit=TIME_LIMIT_S,
)

_HANDLE_BROKER = ("the broker can fail too: catch requests.exceptions.RequestException around the look-up "
                  "and return None when it fails and the peer is not in the cache")
_USE_CACHE = ("look a peer up only when it is not in cache yet: cache[peer] = the url the broker gave, "
              "and use it on the next calls")
_REFRESH = ("when the cached address refuses the connection, the peer may have moved: forget it "
            "(cache.pop(peer)), ask the broker again, store the new address, and call that")
_ERROR_STATUS = ("an error status (4xx or 5xx) is the peer's own answer: return None (answer.ok is False), "
                 "and keep its address, which works")


def _hello(name: str) -> dict:
    return {"name": name, "kind": "worker"}


def _setup(run, *names):
    """A broker behind a link, and one worker per name registered at it (in-process, outside the trace)."""
    broker_app = create("broker", name="broker·check", ttl_s=600.0, signer=_SIGNER)
    broker = run.serve(broker_app, "broker·check")
    link = run.link(broker)
    peers = {name: _serve_peer(run, broker_app, name, f"{name}·check") for name in names}
    return broker_app, broker, link, peers


def _serve_peer(run, broker_app, name: str, server_name: str):
    server = run.serve(create("worker", name=name), server_name)
    _register(broker_app, name, server.url)
    return server


def _register(broker_app, name: str, url: str) -> None:
    answer = broker_app.test_client().post("/register", json={
        "name": name, "kind": "worker", "url": url, "secret": f"{name}-secret"})
    if answer.status_code != 201:  # the check's own mistake: say so loudly
        raise RuntimeError(f"registering {name} at the test broker failed: {answer.get_json()}")


def _expect(call, name: str, situation: str, hint: str = "") -> None:
    if call.value != _hello(name):
        raise Fail(f"{situation}, call_peer(..., {name!r}, '/hello', cache) returned {show(call.value)}; "
                   f"{name} answers {show(_hello(name))}", hint)


def _lookups(call, broker) -> int:
    return len(call.receives(broker, path=None))


@q31.test("two peers, ten calls: each looked up once")
def _(run):
    _, broker, link, _ = _setup(run, "alice", "bob")
    client, cache = run.client(), {}
    asked = 0
    for number in range(10):
        name = ("alice", "bob")[number % 2]
        call = run.call(client, link.url, name, "/hello", cache)
        _expect(call, name, f"on call {number + 1}", "return the peer's answer: client.get(url + path).json()")
        asked += _lookups(call, broker)
    if asked > 2:
        raise Fail(f"it asked the broker {asked} times for 10 calls to 2 peers; once per peer is enough", _USE_CACHE)


@q31.test("the broker goes down (connection refused)",
          raise_hints={requests.exceptions.ConnectionError: _HANDLE_BROKER})
def _(run):
    _, broker, link, _ = _setup(run, "alice", "bob")
    client, cache = run.client(), {}
    _expect(run.call(client, link.url, "alice", "/hello", cache), "alice", "with the broker up")
    link.down = True
    for _ in range(3):
        _expect(run.call(client, link.url, "alice", "/hello", cache), "alice",
                "with the broker down, for a peer you had looked up before", _USE_CACHE)
    call = run.call(client, link.url, "bob", "/hello", cache)
    if call.value is not None:
        raise Fail(f"with the broker down, for a peer never looked up it returned {show(call.value)}; "
                   f"expected None", _HANDLE_BROKER)


@q31.test("the broker never answers (messages dropped)",
          raise_hints={requests.exceptions.Timeout: _HANDLE_BROKER})
def _(run):
    _, broker, link, _ = _setup(run, "alice", "bob")
    client, cache = run.client(), {}
    _expect(run.call(client, link.url, "alice", "/hello", cache), "alice", "with the broker up")
    link.drop = 1.0
    _expect(run.call(client, link.url, "alice", "/hello", cache), "alice",
            "with the broker silent, for a peer you had looked up before", _USE_CACHE)
    call = run.call(client, link.url, "bob", "/hello", cache)
    if call.seconds > GIVE_UP_S:
        raise Fail(f"with the broker silent, a look-up of a new peer took more than {GIVE_UP_S:g} s to give up",
                   "pass timeout=1 to the look-up, or the client waits its default 5 s")
    if call.value is not None:
        raise Fail(f"with the broker silent, for a peer never looked up it returned {show(call.value)}; "
                   f"expected None", _HANDLE_BROKER)


@q31.test("a peer moved to a new address", raise_hints={requests.exceptions.ConnectionError: _REFRESH})
def _(run):
    broker_app, broker, link, peers = _setup(run, "alice", "bob")
    client, cache = run.client(), {}
    _expect(run.call(client, link.url, "alice", "/hello", cache), "alice", "before the move")
    peers["alice"].stop()
    moved = _serve_peer(run, broker_app, "alice", "alice·moved")
    call = run.call(client, link.url, "alice", "/hello", cache)
    if call.value is None:
        raise Fail("alice moved to a new address (and told the broker), but it returned None", _REFRESH)
    _expect(call, "alice", "after alice moved", _REFRESH)
    if not call.receives(moved):
        raise Fail("the answer did not come from alice's new address", _REFRESH)
    asked = 0
    for _ in range(3):
        call = run.call(client, link.url, "alice", "/hello", cache)
        _expect(call, "alice", "after alice moved", _REFRESH)
        asked += _lookups(call, broker)
    if asked:
        raise Fail(f"after finding alice's new address it asked the broker again {asked} times in 3 calls; "
                   f"the new address belongs in the cache", "store the fresh address: cache[peer] = new url")


@q31.test("a peer that is gone (the broker still lists it)",
          raise_hints={requests.exceptions.ConnectionError: _REFRESH})
def _(run):
    _, broker, link, peers = _setup(run, "alice")
    client, cache = run.client(), {}
    _expect(run.call(client, link.url, "alice", "/hello", cache), "alice", "before alice went away")
    peers["alice"].stop()
    call = run.call(client, link.url, "alice", "/hello", cache)
    if call.value is not None:
        raise Fail(f"alice is gone, yet it returned {show(call.value)}; expected None",
                   "return None when the peer cannot be reached at the address the broker gives")
    asked = _lookups(call, broker)
    if asked > 2:
        raise Fail(f"for a peer that is gone it asked the broker {asked} times in one call; once is enough",
                   "look the peer up again at most once per call")


@q31.test("a peer the broker does not know")
def _(run):
    _, broker, link, _ = _setup(run, "alice")
    call = run.call(run.client(), link.url, "dave", "/hello", {})
    if call.value is not None:
        raise Fail(f"the broker answered 404 (no peer named 'dave'), yet it returned {show(call.value)}; "
                   f"expected None", "check the broker's status: a 404 means there is no such peer, so return None")


@q31.test("the peer answers with an error status")
def _(run):
    broker_app, broker, link, _ = _setup(run)
    alice = run.serve(create("worker", name="alice"), "alice·check")
    in_front = run.link(alice)  # the link answers 503 in alice's place when told to
    _register(broker_app, "alice", in_front.url)
    client, cache = run.client(), {}
    _expect(run.call(client, link.url, "alice", "/hello", cache), "alice", "before the errors")
    in_front.error_status, in_front.error_rate = 503, 1.0
    call = run.call(client, link.url, "alice", "/hello", cache)
    if call.value is not None:
        raise Fail(f"alice answered 503 (Service Unavailable), yet it returned {show(call.value)}; expected None",
                   _ERROR_STATUS)
    if _lookups(call, broker):
        raise Fail("alice answered 503: she was reached at her address, yet it asked the broker again", _ERROR_STATUS)
    in_front.error_rate = 0.0
    call = run.call(client, link.url, "alice", "/no-such-page", cache)
    if call.value is not None:
        raise Fail(f"alice answered 404 (no such page), yet it returned {show(call.value)}; expected None",
                   _ERROR_STATUS)
    call = run.call(client, link.url, "alice", "/hello", cache)
    _expect(call, "alice", "after alice's errors ended")
    if _lookups(call, broker):
        raise Fail("after alice's error answers it asked the broker for her address again; her address worked "
                   "all along, so it belongs in the cache still", _ERROR_STATUS)
