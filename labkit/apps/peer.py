"""A peer for notebook 02: server and client at once, holding a replica of a key-value store.

Every peer is the same program. It serves the endpoints below, and it calls other
peers with its own :class:`labkit.Client` (named after the peer, so diagrams show
peer-to-peer arrows). There is no central data: each peer keeps a full replica and
anti-entropy (gossip) brings the replicas together.

    GET  /                    {"name", "address", "members": [names], "keys": n, "clock": n}
    GET  /kv                  {"data": {key: value}}: this replica, without the bookkeeping
    GET  /kv/<key>            {"key", "value", "clock", "peer"}, or 404
    PUT  /kv/<key>            {"value": any JSON} -> the stored entry; a local write, never waits
                              for the network (the replica's Lamport clock ticks once)
    GET  /state               {"entries": {key: {"value", "clock", "peer"}}, "clock": n}
    GET  /digest              {"digest": sha-256 of the entries, "keys": n}: equal replicas,
                              equal digests
    GET  /members             {"members": {name: address}} (this peer not included)
    POST /join                {"name", "address"}: a newcomer joins through this peer;
                              answers {"members": {...}} including this peer
    POST /bootstrap           {"peers": [address, ...], "timeout": s, "address": url}: join the
                              mesh through the first of these that answers; "address" (the
                              URL others reach this peer at) is needed once if not served
                              by serve_peer; "timeout" is optional
    POST /gossip              {"name", "address", "members", "entries"}: one push-pull exchange;
                              this peer merges what it got and answers {"members", "entries"}
                              with its merged replica
    POST /gossip/round        this peer starts one exchange with a member picked at random;
                              answers {"partner": name or null, "ok": bool, "error": ""}
    POST /gossip/auto         {"every": seconds, or 0 to stop}: gossip in a background thread

How peers reach each other: ``members`` maps names to *addresses* (the URLs the peers
are served at). A peer never calls an address itself: it asks ``dial(address)`` for the
URL to use. By default ``dial`` returns the address unchanged (peers on real machines).
In a notebook, :func:`network_dial` makes ``dial`` open a :class:`labkit.Link` of a
:class:`labkit.Network` for each (this peer, that peer) pair on first use, so latency,
drops and ``network.partition(...)`` apply to every peer-to-peer message.
:func:`serve_peer` does it all: create, serve, tell the peer its own address.

The merge: an entry is {"value", "clock", "peer"}; of two entries for one key the
one with the larger (clock, peer) pair wins (last writer wins, ties broken by peer
name), so every replica that has seen the same writes holds the same entries,
whatever the order of the exchanges. ``create_app(merge=...)`` plugs in another merge
(the exercise of notebook 02 does). A local write takes a clock one above the
largest the peer has seen (a Lamport clock), so it beats every write the peer knew of.

The background gossip thread (a daemon) ends on ``POST /gossip/auto {"every": 0}``,
``app.peer.stop_gossip()``, or by itself once labkit's server for this peer stops.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import random
import socket
import threading
from urllib.parse import urlsplit

import requests
from flask import Flask, jsonify, request

from ..client import Client, describe
from ..server import ON_STOP
from ..trace import name_for as _name_for
from ._errors import json_errors

log = logging.getLogger("labkit")

MAX_KEY = 100            # characters in a key or a peer name
MAX_ENTRIES = 2000       # entries a gossip message may carry
MAX_MEMBERS = 200        # members a peer keeps
MAX_BODY = 512 * 1024    # bytes of a request body
MAX_EVERY_S = 60.0


def merge(mine: dict, theirs: dict) -> dict:
    """Last writer wins, key by key: keep the entry with the larger (clock, peer)."""
    merged = dict(mine)
    for key, entry in theirs.items():
        if key not in merged or (entry["clock"], entry["peer"]) > (merged[key]["clock"], merged[key]["peer"]):
            merged[key] = entry
    return merged


def network_dial(network, me: str, **link_settings):
    """A ``dial`` for peer ``me``: the URL of a link of ``network`` from ``me`` to an address.

    Links are made on first use (with ``link_settings``, such as ``drop=0.2``) and kept;
    if the peer at that address was replaced by another server with the same name, the
    old link is closed and a new one made.
    """
    lock = threading.Lock()
    links: dict[str, object] = {}

    def dial(address: str) -> str:
        with lock:
            link = links.get(address)
            if link is None or link.closed:
                host, port = _host_port(address)
                old = network.links.get((me, _name_for(host, port)))
                if old is not None and not old.closed and old.target == (host, port):
                    link = old  # made beforehand, perhaps with faults of its own
                else:
                    if old is not None:
                        old.close()  # to an earlier server of the same name
                    link = network.link(me, address, **link_settings)
                links[address] = link
            return link.url

    return dial


def serve_peer(name: str, *, network=None, trace=None, **options):
    """Create peer ``name``, serve it, and tell it its address; return the labkit Server.

    With a ``network``, every call this peer makes to another goes through that
    network's links. ``options`` go to :func:`create_app` (seed, timeout, merge).
    """
    from ..server import serve

    if network is not None:
        options.setdefault("dial", network_dial(network, name))
        trace = network.trace if trace is None else trace
    app = create_app(peer_name=name, trace=trace, **options)
    server = serve(app, name=name, trace=trace)
    app.peer.address = server.url
    return server


def _host_port(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    return parts.hostname or "", parts.port or 80


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_name(name, what: str = "name") -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_KEY:
        return f"{what} must be a non-empty string of at most {MAX_KEY} characters, not {_short(name)}"
    return ""


def _check_address(address, what: str = "address") -> str:
    if not isinstance(address, str) or len(address) > 300:
        return f"{what} must be a URL such as http://127.0.0.1:5001, not {_short(address)}"
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None:
        return f"{what} must be a URL such as http://127.0.0.1:5001, with a host and a port, not {_short(address)}"
    return ""


def _check_entry(key, entry) -> str:
    if problem := _check_name(key, "a key"):
        return problem
    if not isinstance(entry, dict) or set(entry) != {"value", "clock", "peer"}:
        return f'the entry of {key!r} must be {{"value": ..., "clock": n, "peer": name}}, not {_short(entry)}'
    if not _is_int(entry["clock"]) or not 0 <= entry["clock"] < 2**53:
        return f"the clock of {key!r} must be a whole number from 0, not {_short(entry['clock'])}"
    if problem := _check_name(entry["peer"], f"the peer of {key!r}"):
        return problem
    return ""


def _check_members(members) -> str:
    if not isinstance(members, dict) or len(members) > MAX_MEMBERS:
        return f'members must be an object {{name: address}} of at most {MAX_MEMBERS}, not {_short(members)}'
    for name, address in members.items():
        if problem := _check_name(name, "a member's name") or _check_address(address, f"the address of {name!r}"):
            return problem
    return ""


def _check_entries(entries) -> str:
    if not isinstance(entries, dict) or len(entries) > MAX_ENTRIES:
        return f"entries must be an object {{key: entry}} of at most {MAX_ENTRIES}, not {_short(entries)}"
    for key, entry in entries.items():
        if problem := _check_entry(key, entry):
            return problem
    return ""


def _short(value, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class MergeError(Exception):
    """The merge function raised, or returned something that is not a replica."""


class Peer:
    """The state of one peer: its replica, clock, members, and the client it calls others with."""

    def __init__(self, name: str, *, dial=None, seed=0, timeout: float = 0.5, merge=merge, trace=None):
        self.name = name
        self.address = ""              # set once served (serve_peer does it)
        self.dial = dial or (lambda address: address)
        self.timeout = timeout
        self.merge = merge
        self.entries: dict[str, dict] = {}
        self.clock = 0
        self.members: dict[str, str] = {}
        self.merge_errors: list[BaseException] = []   # what a plugged-in merge did wrong
        self.rounds = 0
        self._rng = random.Random(f"{seed}:{name}")
        self._lock = threading.RLock()
        self.client = Client(name, timeout=timeout, trace=trace)
        self._gossip: threading.Thread | None = None
        self._stop_gossip = threading.Event()

    # -- local state ---------------------------------------------------------------

    def write(self, key: str, value) -> dict:
        with self._lock:
            self.clock += 1
            entry = self.entries[key] = {"value": value, "clock": self.clock, "peer": self.name}
            return dict(entry)

    def state(self) -> dict:
        with self._lock:
            return copy.deepcopy(self.entries)

    def digest(self) -> str:
        with self._lock:
            text = json.dumps(self.entries, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def learn(self, members: dict, *, first_hand: bool = False) -> None:
        """Add the members this peer did not know (never itself).

        A known member's address changes only ``first_hand``, when that member itself
        says where it is now (it joined or gossiped with us): second-hand lists may be stale.
        """
        with self._lock:
            for name, address in members.items():
                if name == self.name:
                    continue
                if name in self.members:
                    if first_hand:
                        self.members[name] = address
                elif len(self.members) < MAX_MEMBERS:
                    self.members[name] = address

    def membership(self, *, with_me: bool = False) -> dict:
        with self._lock:
            members = dict(self.members)
        if with_me and self.address:
            members[self.name] = self.address
        return members

    def absorb(self, theirs: dict) -> None:
        """Merge ``theirs`` into this replica with the merge function; raise MergeError if it misbehaves."""
        with self._lock:
            try:
                merged = self.merge(copy.deepcopy(self.entries), copy.deepcopy(theirs))
            except Exception as error:
                self.merge_errors.append(error)
                raise MergeError(f"the merge function raised {type(error).__name__}: {error}") from error
            problem = _check_entries(merged) if isinstance(merged, dict) else (
                f"the merge function returned {_short(merged)}, not a dict {{key: entry}}")
            if problem:
                self.merge_errors.append(MergeError(problem))
                raise MergeError(problem)
            self.entries = copy.deepcopy(merged)
            self.clock = max([self.clock] + [e["clock"] for e in self.entries.values()])

    # -- talking to other peers ---------------------------------------------------------

    def _message(self) -> dict:
        return {"name": self.name, "address": self.address, "members": self.membership(), "entries": self.state()}

    def gossip_round(self) -> dict:
        """One push-pull exchange with a member picked at random."""
        with self._lock:
            names = sorted(self.members)
            if not names:
                return {"partner": None, "ok": False, "error": "no members known"}
            partner = self._rng.choice(names)
            address = self.members[partner]
            self.rounds += 1
        try:
            response = self.client.post(self.dial(address) + "/gossip", json=self._message())
            response.raise_for_status()
            body = response.json()
            if _check_members(body.get("members")) or _check_entries(body.get("entries")):
                return {"partner": partner, "ok": False, "error": "a malformed answer"}
        except requests.exceptions.RequestException as exc:
            return {"partner": partner, "ok": False, "error": describe(exc)}
        except ValueError:
            return {"partner": partner, "ok": False, "error": "a malformed answer"}
        except Exception as exc:  # a dial that failed (the network closed): the exchange failed
            log.debug("peer %s could not dial %s", self.name, address, exc_info=True)
            return {"partner": partner, "ok": False, "error": type(exc).__name__}
        self.learn(body["members"])
        try:
            self.absorb(body["entries"])
        except MergeError as exc:
            return {"partner": partner, "ok": False, "error": str(exc)}
        return {"partner": partner, "ok": True, "error": ""}

    def join(self, bootstrap: list, timeout: float | None = None) -> str | None:
        """Join through the first bootstrap address that answers; return it (None if none did)."""
        for address in bootstrap:
            try:
                response = self.client.post(self.dial(address) + "/join", timeout=timeout or self.timeout,
                                            json={"name": self.name, "address": self.address})
                response.raise_for_status()
                members = response.json().get("members")
            except requests.exceptions.RequestException:
                continue
            except Exception:  # a malformed answer, or a dial that failed
                log.debug("peer %s could not join through %s", self.name, address, exc_info=True)
                continue
            if not _check_members(members):
                self.learn(members)
                return address
        return None

    # -- gossip in the background -----------------------------------------------------

    def gossip_every(self, seconds: float) -> None:
        """Gossip every ``seconds`` in a daemon thread (0 stops it)."""
        self.stop_gossip()
        if seconds > 0:
            self._stop_gossip = threading.Event()
            self._gossip = threading.Thread(target=self._gossip_loop, args=(seconds, self._stop_gossip),
                                            name=f"labkit-gossip-{self.name}", daemon=True)
            self._gossip.start()

    def _gossip_loop(self, seconds: float, stop: threading.Event) -> None:
        while not stop.wait(seconds):
            try:
                self.gossip_round()
            except Exception:
                log.debug("a gossip round of %s failed", self.name, exc_info=True)

    def close(self) -> None:
        """Stop gossiping and close this peer's client (its kept-alive connections)."""
        self.stop_gossip()
        self.client.close()

    def stop_gossip(self) -> None:
        self._stop_gossip.set()
        thread, self._gossip = self._gossip, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout * 4 + 1)

    @property
    def gossiping(self) -> bool:
        return self._gossip is not None and self._gossip.is_alive()


def _json_body() -> tuple[dict | None, str]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return None, "send a JSON object"
    return body, ""


def create_app(peer_name: str | None = None, *, dial=None, seed: int = 0, timeout: float = 0.5, merge=merge,
               trace=None) -> Flask:
    """A peer called ``peer_name``; ``app.peer`` is its :class:`Peer`.

    The name defaults to $LABKIT_PEER_NAME, else this machine's host name (so peers
    started with ``python -m labkit serve peer`` on different machines differ).

    ``dial(address) -> url`` says how to reach another peer (see the module docstring);
    ``seed`` fixes its random choice of partners; ``timeout`` bounds each call it makes;
    ``merge(mine, theirs) -> merged`` merges replicas; ``trace`` records its calls.
    """
    name = peer_name or os.environ.get("LABKIT_PEER_NAME") or socket.gethostname() or "peer"
    if problem := _check_name(name):
        raise ValueError(f"a peer's {problem}")
    app = Flask(f"peer-{name}")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    json_errors(app)
    peer = app.peer = Peer(name, dial=dial, seed=seed, timeout=timeout, merge=merge, trace=trace)
    app.extensions[ON_STOP] = [peer.close]  # the server stops the gossip thread and the client

    def bad(message: str, status: int = 400):
        return jsonify(error=message), status

    @app.get("/")
    def index():
        with peer._lock:
            return jsonify(name=peer.name, address=peer.address, members=sorted(peer.members),
                           keys=len(peer.entries), clock=peer.clock)

    @app.get("/kv")
    def read_all():
        with peer._lock:
            return jsonify(data={key: entry["value"] for key, entry in peer.entries.items()})

    @app.get("/kv/<key>")
    def read(key):
        with peer._lock:
            entry = peer.entries.get(key)
            if entry is None:
                return bad(f"no key {key!r} on peer {peer.name!r}: write it first with PUT /kv/{key}", 404)
            return jsonify(key=key, **entry)

    @app.put("/kv/<key>")
    def write(key):
        if problem := _check_name(key, "the key"):
            return bad(problem)
        body, problem = _json_body()
        if problem or "value" not in body:
            return bad('send JSON {"value": ...} (any JSON value)')
        return jsonify(key=key, **peer.write(key, body["value"]))

    @app.get("/state")
    def state():
        with peer._lock:
            return jsonify(entries=peer.state(), clock=peer.clock)

    @app.get("/digest")
    def digest():
        with peer._lock:
            return jsonify(digest=peer.digest(), keys=len(peer.entries))

    @app.get("/members")
    def members():
        return jsonify(members=peer.membership())

    @app.post("/join")
    def join():
        body, problem = _json_body()
        problem = problem or _check_name(body.get("name")) or _check_address(body.get("address"))
        if problem:
            return bad(problem + '; send JSON {"name": "your name", "address": "http://host:port"}')
        if body["name"] == peer.name:
            return bad(f"the name {peer.name!r} is this peer's own; join with another name")
        answer = peer.membership(with_me=True)
        peer.learn({body["name"]: body["address"]}, first_hand=True)
        return jsonify(members=answer)

    @app.post("/bootstrap")
    def bootstrap():
        body, problem = _json_body()
        peers, wait = (body or {}).get("peers"), (body or {}).get("timeout", peer.timeout)
        address = (body or {}).get("address", peer.address or None)
        if problem or not isinstance(peers, list) or not peers or len(peers) > 20 or any(
                _check_address(a) for a in peers):
            return bad('send JSON {"peers": ["http://host:port", ...]} with 1 to 20 addresses')
        if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 < wait <= 10:
            return bad(f"timeout must be a number of seconds above 0 and at most 10, not {_short(wait)}")
        if address is None:
            return bad('this peer does not know its own address yet: add "address": "http://host:port", '
                       "the URL other peers reach it at")
        if problem := _check_address(address):
            return bad(problem)
        peer.address = address
        joined = peer.join(peers, timeout=float(wait))
        return jsonify(joined_via=joined, members=sorted(peer.membership()))

    @app.post("/gossip")
    def gossip():
        body, problem = _json_body()
        if not problem:
            problem = (_check_name(body.get("name")) or _check_address(body.get("address"))
                       or _check_members(body.get("members")) or _check_entries(body.get("entries")))
        if problem:
            return bad(problem + '; send JSON {"name", "address", "members": {...}, "entries": {...}}')
        peer.learn(body["members"])
        peer.learn({body["name"]: body["address"]}, first_hand=True)
        try:
            peer.absorb(body["entries"])
        except MergeError as exc:
            return bad(f"this peer's merge function failed: {exc}", 500)
        return jsonify(members=peer.membership(with_me=True), entries=peer.state())

    @app.post("/gossip/round")
    def gossip_round():
        return jsonify(peer.gossip_round())

    @app.post("/gossip/auto")
    def gossip_auto():
        body, problem = _json_body()
        every = (body or {}).get("every")
        if problem or isinstance(every, bool) or not isinstance(every, (int, float)) or not 0 <= every <= MAX_EVERY_S:
            return bad(f'send JSON {{"every": seconds}} with 0 (stop) to {MAX_EVERY_S:g} seconds')
        peer.gossip_every(float(every))
        return jsonify(every=every, gossiping=peer.gossiping)

    return app
