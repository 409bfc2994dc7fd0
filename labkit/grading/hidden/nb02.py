"""Hidden tests for notebook 02 (peer-to-peer): q2.1 merge, q2.2 join_mesh."""

import concurrent.futures
import random

import requests

from labkit.apps.peer import create_app
from labkit.apps.peer import network_dial
from labkit.grading.check import Fail, Question, _AnswerRaised, show
from labkit.net import Network

# -- q2.1: the merge step of anti-entropy ----------------------------------------------

#: Gossip rounds the mesh test allows before it calls the replicas stuck (a correct
#: merge converges in about 4 to 8 with 6 peers and 20% of messages lost).
MAX_ROUNDS = 25
#: Seconds a peer waits for another's answer in the checks (a lost message costs this).
PEER_TIMEOUT = 0.25

q21 = Question(
    "q2.1", "merge", params=("mine", "theirs"),
    hint=("for every key, keep the entry whose (clock, peer) pair is larger, and keep the keys only one side "
          "has: (entry['clock'], entry['peer']) > (other['clock'], other['peer'])"),
)

_OLDER = ("compare the entries' clocks: for each key keep the one with the larger clock, "
          "whichever side it came from")
_TIE = ("when two entries have the same clock, the larger peer name wins, on every peer: compare "
        "(clock, peer) pairs, so all replicas make the same choice")
_MISSING = "start from a copy of mine and add every key of theirs that mine lacks, as well as the newer entries"


def _expected(writes: list[dict]) -> dict:
    """The entry each key ends with under last-writer-wins: the write with the largest (clock, peer)."""
    winners: dict[str, dict] = {}
    for write in writes:
        key, entry = write["key"], {k: write[k] for k in ("value", "clock", "peer")}
        if key not in winners or (entry["clock"], entry["peer"]) > (winners[key]["clock"], winners[key]["peer"]):
            winners[key] = entry
    return winners


def _describe(entry: dict) -> str:
    return f"{show(entry['value'])} (clock {entry['clock']}, written by {entry['peer']})"


class _Mesh:
    """Peers that use the answer's merge, each reaching the others through links of one network."""

    def __init__(self, run, names, merge):
        self.run = run
        self.network = Network(seed=0 if run.seed is None else run.seed, trace=run.trace)
        run.on_close(self.network.close)
        self.apps, self.servers = {}, {}
        for name in names:
            dial = network_dial(self.network, name)
            app = create_app(peer_name=name, dial=dial, seed=run.seed or 0, timeout=PEER_TIMEOUT,
                             merge=merge, trace=run.trace)
            server = run.serve(app, name)
            app.peer.address = server.url
            run.on_close(app.peer.close)
            self.apps[name], self.servers[name] = app, server
        self.client = run.client("check")
        self.writes: list[dict] = []

    def join_all(self):
        names = list(self.servers)
        first = self.servers[names[0]].url
        for name in names[1:]:
            self.apps[name].peer.join([first], timeout=2.0)

    def lose(self, drop: float):
        """Make every link between the peers lose this fraction of messages."""
        for name, app in self.apps.items():
            for other, server in self.servers.items():
                if other != name:
                    app.peer.dial(server.url)  # opens the link now
        for link in self.network.links.values():
            link.drop = drop

    def write(self, name, key, value):
        body = self.client.put(f"{self.servers[name].url}/kv/{key}", json={"value": value}, timeout=5).json()
        self.writes.append(body)

    def round(self, names=None):
        """Every peer (or those named) starts one exchange, all at the same time."""
        names = list(self.servers) if names is None else names
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            list(pool.map(lambda n: self.apps[n].peer.gossip_round(), names))
        self.raise_merge_errors()

    def raise_merge_errors(self):
        for name, app in self.apps.items():
            errors = app.peer.merge_errors
            if errors:
                error = errors[0]
                if type(error).__name__ == "MergeError":
                    raise Fail(f"peer {name}: {error}", "return the merged replica: a dict {key: entry}")
                raise _AnswerRaised(error)

    def converged(self) -> bool:
        return len({app.peer.digest() for app in self.apps.values()}) == 1

    def judge(self, situation: str, order=None):
        """Fail unless every replica holds exactly the last-writer-wins winners."""
        expected = _expected(self.writes)
        for name in order or list(self.apps):
            held = self.apps[name].peer.state()
            for key in sorted(set(expected) | set(held)):
                want, got = expected.get(key), held.get(key)
                if want == got:
                    continue
                if got is None:
                    raise Fail(f"{situation}, peer {name} has no entry for {key!r}; "
                               f"the newest write is {_describe(want)}", _MISSING)
                if want is None:
                    raise Fail(f"{situation}, peer {name} holds {key!r}, which nobody wrote", _MISSING)
                if want["clock"] == got["clock"] and want["peer"] != got["peer"]:
                    raise Fail(f"{situation}, peer {name} holds {key!r} = {_describe(got)}; "
                               f"two writes tie at clock {want['clock']}, and the tie goes to the larger "
                               f"peer name: {_describe(want)}", _TIE)
                raise Fail(f"{situation}, peer {name} holds {key!r} = {_describe(got)}, an older write; "
                           f"the newest is {_describe(want)}", _OLDER)


_SAMPLE_MINE = {"city": {"value": "Oslo", "clock": 1, "peer": "a"},
                "colour": {"value": "red", "clock": 2, "peer": "a"}}
_SAMPLE_THEIRS = {"colour": {"value": "blue", "clock": 3, "peer": "b"},
                  "size": {"value": "small", "clock": 1, "peer": "b"}}


@q21.test("one call of merge(mine, theirs)")
def _(run):
    call = run.call(dict(_SAMPLE_MINE), dict(_SAMPLE_THEIRS))
    if not isinstance(call.value, dict):
        raise Fail(f"merge returned {show(call.value)}, not a dict {{key: entry}}",
                   "build a new dict and return it")


@q21.test("two peers, one push-pull exchange, no faults")
def _(run):
    mesh = _Mesh(run, ["a·check", "b·check"], run_answer(run))
    mesh.join_all()
    a, b = mesh.apps
    for key, value in (("city", "Oslo"), ("colour", "red"), ("shape", "circle")):
        mesh.write(a, key, value)                       # clocks 1, 2, 3 on a
    for key, value in (("shape", "square"), ("colour", "blue"), ("size", "small"), ("city", "Lima")):
        mesh.write(b, key, value)                       # clocks 1, 2, 3, 4 on b
    mesh.round([a])                                     # a pushes to b, b answers with its merged replica
    mesh.judge(f"after {a} sent its replica to {b} and merged {b}'s answer", order=[b, a])


@q21.test("6 peers, 20% of messages dropped, writes while they gossip", seeds=(1, 2))
def _(run):
    names = [f"{n}·check" for n in "abcdef"]
    mesh = _Mesh(run, names, run_answer(run))
    mesh.join_all()
    mesh.lose(0.2)
    rng = random.Random(run.seed)
    for name in names:
        mesh.write(name, f"note-{name[0]}", f"hello from {name[0]}")
        mesh.write(name, "leader", name[0])             # six concurrent writes, equal clocks
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


def run_answer(run):
    """The answer under test (the peers call it directly, in their own threads)."""
    return run._answer


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


def _bootstrap_mesh(run):
    """Three peers that know each other; the newcomer must reach one of them through links."""
    names = [f"{n}·check" for n in ("p", "q", "r")]
    apps, servers = {}, {}
    for name in names:
        app = create_app(peer_name=name, seed=1, trace=run.trace)
        servers[name] = run.serve(app, name)
        app.peer.address = servers[name].url
        run.on_close(app.peer.close)
        apps[name] = app
    for name in names:
        apps[name].peer.learn({other: servers[other].url for other in names})
    return names, apps, servers


def _judge_join(call, apps, servers, live: str, newcomer: str):
    expected = {n: a for n, a in apps[live].peer.membership(with_me=True).items() if n != newcomer}
    if call.seconds > JOIN_WITHIN_S:
        raise Fail(f"it took more than {JOIN_WITHIN_S:g} s to join", _TIMEOUT)
    if isinstance(call.value, requests.Response):
        raise Fail(f"it returned the response object {show(call.value)}, not the members it holds",
                   'return response.json()["members"]')
    if newcomer not in apps[live].peer.members:
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
