"""Hidden tests for notebook 02 (peer-to-peer): q2.1 merge (keeping concurrent writes), q2.2 join_mesh."""

import concurrent.futures
import copy
import random

import flask
import requests

from labkit.apps.peer import create_app, network_dial
from labkit.errors import MergeError
from labkit.grading.authoring import AnswerRaised, Fail, Question, is_a, show
from labkit.net import Network

# -- q2.1: a merge that keeps concurrent writes ------------------------------------------

#: Gossip rounds the mesh test allows before it calls the replicas stuck (a correct
#: merge converges in about 4 to 8 with 6 peers and 20% of messages lost).
MAX_ROUNDS = 25
#: Seconds a peer waits for another's answer in the checks (a lost message costs this).
PEER_TIMEOUT = 0.25
WRITE = ("value", "clock", "peer", "version")

q21 = Question(
    "q2.1", "merge", params=("mine", "theirs"),
    hint=("for every key, gather the writes of both sides (each entry and its conflicts), drop every write "
          "whose version is below another's, keep one of each version, make the one with the largest "
          "(clock, peer) the entry and the others, sorted by (clock, peer), its conflicts"),
)

_DOMINATED = ("a write whose version is below another's (no larger at any peer, smaller at one) was seen by "
              "the other's writer and replaced: drop it; keep only writes that nobody has seen replaced")
_CONCURRENT = ("when neither version is below the other, the writes were concurrent: keep both, the one with "
               "the larger (clock, peer) as the entry and the other in its conflicts")
_SHAPE = ('each entry is {"value", "clock", "peer", "version", "conflicts"}, and each conflict the same '
          'without "conflicts"; sort the conflicts by (clock, peer)')
_MISSING = "keep every key of both sides"
_ONCE = "the same version is the same write, seen on both sides: keep one copy of each version"


def _below(v1: dict, v2: dict) -> bool:
    """True when version v1 happened before v2."""
    return v1 != v2 and all(count <= v2.get(peer, 0) for peer, count in v1.items())


def _entry(writes: list[dict]) -> dict:
    """The entry that keeps the concurrent ``writes`` of one key (each a dict of WRITE)."""
    kept = []
    for write in writes:
        if not any(_below(write["version"], other["version"]) for other in writes) and write not in kept:
            kept.append(write)
    kept.sort(key=lambda w: (w["clock"], w["peer"]))
    return {**kept[-1], "conflicts": kept[:-1]}


def _expected(writes: list[dict]) -> dict:
    """What every replica holds once it has seen ``writes`` (the entries PUT answered)."""
    by_key: dict[str, list] = {}
    for write in writes:
        by_key.setdefault(write["key"], []).append({k: write[k] for k in WRITE})
    return {key: _entry(found) for key, found in by_key.items()}


def _describe(entry: dict) -> str:
    values = [show(w["value"]) for w in (*entry.get("conflicts", []), entry)]
    return " and ".join(values) if len(values) > 1 else values[0]


def _judge(replica, expected: dict, situation: str) -> None:
    if not isinstance(replica, dict):
        raise Fail(f"{situation}, merge returned {show(replica)}, not a dict {{key: entry}}",
                   "build a new dict and return it")
    for key in sorted(set(expected) | set(replica)):
        want, got = expected.get(key), replica.get(key)
        if want == got:
            continue
        if got is None:
            raise Fail(f"{situation}, there is no entry for {key!r}; it should hold {_describe(want)}", _MISSING)
        if want is None:
            raise Fail(f"{situation}, there is an entry for {key!r}, which nobody wrote", _MISSING)
        if not isinstance(got, dict) or set(got) != {*WRITE, "conflicts"}:
            raise Fail(f"{situation}, the entry of {key!r} is {show(got)}", _SHAPE)
        versions = [repr(sorted(w.get("version", {}).items())) for w in (got, *got.get("conflicts", []))
                    if isinstance(w, dict)]
        if len(versions) != len(set(versions)):
            raise Fail(f"{situation}, {key!r} holds the same write more than once: {_describe(got)}", _ONCE)
        values = sorted(map(repr, (w.get("value") for w in (got, *got.get("conflicts", [])))))
        wanted = sorted(repr(w["value"]) for w in (want, *want["conflicts"]))
        if len(values) < len(wanted):
            raise Fail(f"{situation}, {key!r} holds {_describe(got)}; it should keep the concurrent writes "
                       f"{_describe(want)}", _CONCURRENT)
        if set(values) - set(wanted):
            raise Fail(f"{situation}, {key!r} holds {_describe(got)}; it should hold only {_describe(want)}: "
                       f"the others were replaced by later writes", _DOMINATED)
        raise Fail(f"{situation}, the entry of {key!r} is {show(got)}; expected {show(want)}", _SHAPE)


def _write(peer: str, clock: int, value, version: dict) -> dict:
    return {"value": value, "clock": clock, "peer": peer, "version": version, "conflicts": []}


#: a wrote colour at clock 2 and b at clock 3 without seeing it (concurrent); b wrote city after seeing a's.
_SAMPLE_MINE = {"colour": _write("a", 2, "red", {"a": 2}), "city": _write("a", 1, "Oslo", {"a": 1})}
_SAMPLE_THEIRS = {"colour": _write("b", 3, "blue", {"b": 3}), "city": _write("b", 4, "Lima", {"a": 1, "b": 4}),
                  "size": _write("b", 1, "small", {"b": 1})}


def _sample_expected() -> dict:
    writes = [{"key": k, **e} for side in (_SAMPLE_MINE, _SAMPLE_THEIRS) for k, e in side.items()]
    return _expected(writes)


@q21.test("one call of merge(mine, theirs): a concurrent write, a replaced one, a new key")
def _(run):
    call = run.call(copy.deepcopy(_SAMPLE_MINE), copy.deepcopy(_SAMPLE_THEIRS))
    _judge(call.value, _sample_expected(), "merging a's replica with b's")


@q21.test("the same result whichever side is mine, and merging twice changes nothing")
def _(run):
    expected = _sample_expected()
    swapped = run.call(copy.deepcopy(_SAMPLE_THEIRS), copy.deepcopy(_SAMPLE_MINE)).value
    _judge(swapped, expected, "merging b's replica with a's (the sides swapped)")
    again = run.call(copy.deepcopy(expected), copy.deepcopy(_SAMPLE_THEIRS)).value
    _judge(again, expected, "merging the merged replica with b's once more")
    itself = run.call(copy.deepcopy(expected), copy.deepcopy(expected)).value
    _judge(itself, expected, "merging a replica with itself")


class _Mesh:
    """Peers that use the answer's merge, each reaching the others through links of one network."""

    def __init__(self, run, names, merge):
        self.run = run
        self.network = Network(seed=0 if run.seed is None else run.seed, trace=run.trace)
        run.on_close(self.network.close)
        self.peers, self.servers = {}, {}
        for name in names:
            app = create_app(name=name, dial=network_dial(self.network, name), seed=run.seed or 0,
                             timeout_s=PEER_TIMEOUT, merge=merge, trace=run.trace)
            server = run.serve(app, name)
            peer = app.extensions["labkit"]
            peer.address = server.url
            run.on_close(peer.close)
            self.peers[name], self.servers[name] = peer, server
        self.client = run.client("check")
        self.writes: list[dict] = []

    def join_all(self):
        names = list(self.servers)
        first = self.servers[names[0]].url
        for name in names[1:]:
            self.peers[name].join([first], timeout_s=2.0)

    def lose(self, drop: float):
        """Make every link between the peers lose this fraction of messages."""
        for name, peer in self.peers.items():
            for other, server in self.servers.items():
                if other != name:
                    peer.dial(server.url)  # opens the link now
        for link in self.network.links.values():
            link.drop = drop

    def write(self, name, key, value):
        body = self.client.put(f"{self.servers[name].url}/kv/{key}", json={"value": value}, timeout=5).json()
        self.writes.append(body)

    def round(self, names=None):
        """Every peer (or those named) starts one exchange, all at the same time."""
        names = list(self.servers) if names is None else names
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: self.peers[n].gossip_round(), names))
        for name, peer in self.peers.items():
            if peer.merge_errors:
                error = peer.merge_errors[0]
                if isinstance(error, MergeError):
                    raise Fail(f"peer {name}: {error}", _SHAPE)
                raise AnswerRaised(error)

    def converged(self) -> bool:
        return len({peer.digest() for peer in self.peers.values()}) == 1

    def judge(self, situation: str, order=None):
        expected = _expected(self.writes)
        for name in order or list(self.peers):
            _judge(self.peers[name].state(), expected, f"{situation}, on peer {name}")


@q21.test("two peers write at once; one exchange keeps both; a later write replaces both")
def _(run):
    mesh = _Mesh(run, ["a·check", "b·check"], run.answer)
    mesh.join_all()
    a, b = mesh.peers
    mesh.write(a, "colour", "red")
    mesh.write(b, "colour", "blue")                   # concurrent: neither saw the other
    mesh.write(a, "city", "Oslo")
    mesh.round([a])                                   # a pushes to b, b answers with its merged replica
    mesh.judge(f"after {a} sent its replica to {b} and merged {b}'s answer", order=[b, a])
    mesh.write(b, "colour", "green")                  # b has seen both: green replaces them
    mesh.round([b])
    mesh.judge(f"after {b} wrote again and sent its replica to {a}", order=[a, b])


@q21.test("6 peers, 20% of messages dropped, concurrent writes while they gossip", seeds=(1, 2))
def _(run):
    names = [f"{n}·check" for n in "abcdef"]
    mesh = _Mesh(run, names, run.answer)
    mesh.join_all()
    mesh.lose(0.2)
    rng = random.Random(run.seed)
    for name in names:
        mesh.write(name, f"note-{name[0]}", f"hello from {name[0]}")
        mesh.write(name, "leader", name[0])             # six concurrent writes
    for number in range(1, MAX_ROUNDS + 1):
        if number <= 2:                                 # more writes while gossip goes on
            for _ in range(3):
                mesh.write(rng.choice(names), rng.choice(["colour", "size", "city"]), rng.randint(1, 99))
        mesh.round()
        if number > 2 and mesh.converged():
            break
    else:
        mesh.judge(f"after {MAX_ROUNDS} rounds of gossip")
        raise Fail(f"after {MAX_ROUNDS} rounds of gossip the replicas still differ", q21.hint)
    mesh.judge("once the replicas agreed")


# -- q2.2: joining through a list of bootstrap peers -------------------------------------

#: Seconds join_mesh may take when two of three bootstrap peers fail (it aims at about 1 s).
JOIN_WITHIN_S = 3.0

q22 = Question(
    "q2.2", "join_mesh", params=("client", "name", "address", "bootstrap"),
    hint=('try each bootstrap address in turn: client.post(url + "/join", json={"name": name, "address": address}, '
          'timeout=0.5); on requests.exceptions.RequestException go on to the next; return the "members" of the '
          "first answer, or None if none answered"),
    hang_hint="give every call a short timeout (timeout=0.5) and stop after the last bootstrap address",
)

_CATCH_ALL = ("a dead peer refuses the connection (ConnectionError) and a silent one makes the call time out "
              "(Timeout): catch requests.exceptions.RequestException, which covers both, and try the next address")
_TIMEOUT = "pass timeout=0.5 to client.post, or a silent bootstrap peer holds you for the client's default 5 s"
_NOT_A_PEER = ('an answer with a success status whose JSON holds no "members" is no peer\'s: catch KeyError and '
               "TypeError (and ValueError) too, beside requests.exceptions.RequestException, and try the next address")


def _not_a_peer():
    """A server that answers POST /join with 200 and a JSON object without "members"."""
    app = flask.Flask("not-a-peer")

    @app.post("/join")
    def join():
        return {"hello": "this is a web site, not a peer"}

    return app


def _bootstrap_mesh(run):
    """Three peers that know each other; the newcomer must reach one of them through links."""
    names = [f"{n}·check" for n in ("p", "q", "r")]
    apps, servers = {}, {}
    for name in names:
        app = create_app(name=name, seed=1, trace=run.trace)
        servers[name] = run.serve(app, name)
        apps[name] = app.extensions["labkit"]
        apps[name].address = servers[name].url
        run.on_close(apps[name].close)
    for name in names:
        apps[name].learn({other: servers[other].url for other in names})
    return names, apps, servers


def _judge_join(call, apps, servers, live: str, newcomer: str):
    expected = {n: a for n, a in apps[live].membership(with_me=True).items() if n != newcomer}
    if call.seconds > JOIN_WITHIN_S:
        raise Fail(f"it took more than {JOIN_WITHIN_S:g} s to join", _TIMEOUT)
    if is_a(call.value, requests.Response):
        raise Fail(f"it returned the response object {show(call.value)}, not the members it holds",
                   'return response.json()["members"]')
    if newcomer not in apps[live].members:
        raise Fail(f"the live bootstrap peer {live} never heard of {newcomer}",
                   'send {"name": name, "address": address} in POST /join to the next address')
    if call.value != expected:
        raise Fail(f"it returned {show(call.value)}; {live} answered with the members {show(sorted(expected))}",
                   'return response.json()["members"]')


@q22.test("the first bootstrap peer answers")
def _(run):
    names, apps, servers = _bootstrap_mesh(run)
    link = run.link(servers[names[0]], latency_ms=20)
    call = run.call(run.client("new·check"), "new·check", "http://127.0.0.1:9/", [link.url])
    _judge_join(call, apps, servers, names[0], "new·check")


@q22.test("the first bootstrap peer is dead, the second silent, the third alive",
          raise_hints={requests.exceptions.ConnectionError: _CATCH_ALL, requests.exceptions.Timeout: _CATCH_ALL})
def _(run):
    names, apps, servers = _bootstrap_mesh(run)
    dead = run.link(servers[names[0]], down=True)
    silent = run.link(servers[names[1]], drop=1.0)
    alive = run.link(servers[names[2]], latency_ms=20)
    call = run.call(run.client("new·check"), "new·check", "http://127.0.0.1:9/", [dead.url, silent.url, alive.url])
    _judge_join(call, apps, servers, names[2], "new·check")


@q22.test("the first bootstrap address answers 200 without members, the second is a live peer",
          raise_hints={KeyError: _NOT_A_PEER, TypeError: _NOT_A_PEER})
def _(run):
    names, apps, servers = _bootstrap_mesh(run)
    stranger = run.serve(_not_a_peer(), "site·check")
    alive = run.link(servers[names[0]], latency_ms=20)
    call = run.call(run.client("new·check"), "new·check", "http://127.0.0.1:9/", [stranger.url, alive.url])
    _judge_join(call, apps, servers, names[0], "new·check")


@q22.test("every bootstrap peer is dead",
          raise_hints={requests.exceptions.ConnectionError: _CATCH_ALL, requests.exceptions.Timeout: _CATCH_ALL})
def _(run):
    names, apps, servers = _bootstrap_mesh(run)
    links = [run.link(servers[name], down=True) for name in names[:2]] + [run.link(servers[names[2]], drop=1.0)]
    call = run.call(run.client("new·check"), "new·check", "http://127.0.0.1:9/", [link.url for link in links])
    if call.seconds > JOIN_WITHIN_S:
        raise Fail(f"it took more than {JOIN_WITHIN_S:g} s to give up", _TIMEOUT)
    if call.value is not None:
        raise Fail(f"no bootstrap peer answered, yet it returned {show(call.value)}; expected None",
                   "return None after the last address failed")
