"""A peer for notebook 02: server and client at once, holding a replica of a key-value store.

Every peer is the same program. It serves the endpoints below, and it calls other
peers with its own :class:`labkit.Client` (named after the peer, so diagrams show
peer-to-peer arrows). There is no central data: each peer keeps a full replica and
anti-entropy (gossip) brings the replicas together.

    GET  /                    {"name", "address", "members": [names], "keys": n, "clock": n}
    GET  /kv                  {"data": {key: value}}: this replica, without the bookkeeping
    GET  /kv/<key>            {"key", "value", "clock", "peer", "version", "conflicts"}, or 404
    PUT  /kv/<key>            {"value": any JSON} -> the stored entry; a local write, never waits
                              for the network
    GET  /state               {"entries": {key: entry}, "clock": n}
    GET  /digest              {"digest": sha-256 of the entries, "keys": n}: equal replicas,
                              equal digests
    GET  /members             {"members": {name: address}} (this peer not included)
    POST /join                {"name", "address"}: a newcomer joins through this peer;
                              answers {"members": {...}} including this peer
    POST /bootstrap           {"peers": [address, ...], "timeout_s": s, "address": url}: join the
                              mesh through the first of these that answers; "address" (the
                              URL others reach this peer at) is needed once if not served
                              by serve_peer; "timeout_s" is optional
    POST /gossip              {"name", "address", "members", "entries"}: one push-pull exchange;
                              this peer merges what it got and answers {"members", "entries"}
                              with its merged replica
    POST /gossip/round        this peer starts one exchange with a member picked at random;
                              answers {"partner": name or null, "ok": bool, "error": ""}
    POST /gossip/auto         {"every_s": seconds, or 0 to stop}: gossip in a background thread

An entry is one write and what it knew: ``{"value", "clock", "peer", "version",
"conflicts"}``. ``peer`` wrote it; ``clock`` is a Lamport clock (one above the largest
the writer had seen, so it beats every write the writer knew of); ``version`` is a
version vector, {peer: the writer's clock at its latest write this value descends
from}: of two writes, one *happened before* the other exactly when its version is
below the other's, and when neither is below, they were concurrent: nobody saw both.
``conflicts`` holds concurrent writes a merge kept beside the entry (a list of entries
without conflicts of their own); a new local write has seen them all and clears them.

The merge is the peer's policy, plugged in with ``create_app(merge=...)``. The
default, :func:`last_writer_wins`, keeps of two entries the one with the larger
(clock, peer) pair: every replica that saw the same writes holds the same entries,
whatever the order of the exchanges, and concurrent writes are silently lost.
A merge that keeps them instead (in ``conflicts``, for a person to choose) is
notebook 02's exercise.

How peers reach each other: ``members`` maps names to *addresses* (the URLs the peers
are served at). A peer never calls an address itself: it asks ``dial(address)`` for the
URL to use. By default ``dial`` returns the address unchanged (peers on real machines).
In a notebook, :func:`network_dial` makes ``dial`` open a :class:`labkit.Link` of a
:class:`labkit.Network` for each (this peer, that peer) pair on first use, so latency,
drops and ``network.partition(...)`` apply to every peer-to-peer message.
:func:`serve_peer` does it all: create, serve, tell the peer its own address.

The background gossip thread (a daemon) ends on ``POST /gossip/auto {"every_s": 0}``,
``Peer.stop_gossip()``, or once labkit's server for this peer stops.
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
from flask import Blueprint, abort

from ..client import Client, describe
from ..errors import Invalid, MergeError
from ..tracing import name_for
from . import kit

log = logging.getLogger("labkit")

MAX_KEY = 100            # characters in a key
MAX_ENTRIES = 2000       # entries a gossip message may carry
MAX_MEMBERS = 200        # members a peer keeps
MAX_CONFLICTS = 20       # concurrent writes an entry may carry
MAX_BODY_BYTES = 512 * 1024
MAX_EVERY_S = 60.0
MAX_CLOCK = 2**53 - 1
WRITE = ("value", "clock", "peer", "version")


def last_writer_wins(mine: dict, theirs: dict) -> dict:
    """Key by key, the entry with the larger (clock, peer) pair; concurrent writes are lost."""
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
                parts = urlsplit(address)
                host, port = parts.hostname or "", parts.port or 80
                old = network.links.get((me, name_for(host, port)))
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
    network's links. ``options`` go to :func:`create_app` (seed, timeout_s, merge).
    """
    from ..server import serve

    if network is not None:
        options.setdefault("dial", network_dial(network, name))
        trace = network.trace if trace is None else trace
    app = create_app(name=name, trace=trace, **options)
    server = serve(app, name=name, trace=trace)
    app.extensions["labkit"].address = server.url
    return server


# -- what a valid message holds ------------------------------------------------------------------


def _write(key, entry, *, conflicts: bool) -> None:
    fields = set(WRITE) | ({"conflicts"} if conflicts else set())
    if not isinstance(entry, dict) or set(entry) != fields:
        raise Invalid(f"the entry of {kit.short(key)} must have exactly the fields {sorted(fields)}, "
                      f"not {kit.short(entry)}")
    kit.whole(entry["clock"], f"the clock of {kit.short(key)}", 0, MAX_CLOCK)
    kit.text(entry["peer"], f"the peer of {kit.short(key)}")
    version = entry["version"]
    if not isinstance(version, dict) or not 1 <= len(version) <= MAX_MEMBERS:
        raise Invalid(f"the version of {kit.short(key)} must be an object {{peer: clock}}, not {kit.short(version)}")
    for peer, clock in version.items():
        kit.text(peer, f"a peer in the version of {kit.short(key)}")
        kit.whole(clock, f"the version of {kit.short(key)} at {kit.short(peer)}", 0, MAX_CLOCK)


def check_entries(entries) -> dict:
    """``entries`` if it is a valid replica {key: entry}; Invalid (naming what is wrong) if not."""
    if not isinstance(entries, dict) or len(entries) > MAX_ENTRIES:
        raise Invalid(f"entries must be an object {{key: entry}} of at most {MAX_ENTRIES}, not {kit.short(entries)}")
    for key, entry in entries.items():
        kit.text(key, "a key", limit=MAX_KEY)
        _write(key, entry, conflicts=True)
        if not isinstance(entry["conflicts"], list) or len(entry["conflicts"]) > MAX_CONFLICTS:
            raise Invalid(f"the conflicts of {kit.short(key)} must be a list of at most {MAX_CONFLICTS} entries")
        for other in entry["conflicts"]:
            _write(key, other, conflicts=False)
    return entries


def check_members(members) -> dict:
    if not isinstance(members, dict) or len(members) > MAX_MEMBERS:
        raise Invalid(f"members must be an object {{name: address}} of at most {MAX_MEMBERS}, not {kit.short(members)}")
    for name, address in members.items():
        kit.text(name, "a member's name")
        kit.url(address, f"the address of {kit.short(name)}")
    return members


# -- the peer ------------------------------------------------------------------------------------


class Peer:
    """The state of one peer: its replica, clock, members, and the client it calls others with."""

    def __init__(self, name: str, *, dial=None, seed=0, timeout_s: float = 0.5, merge=last_writer_wins, trace=None):
        self.name = kit.text(name, "a peer's name")
        self.address = ""              # set once served (serve_peer does it)
        self.dial = dial or (lambda address: address)
        self.timeout_s = kit.positive(timeout_s, "timeout_s", 60)
        self.merge = merge
        self.entries: dict[str, dict] = {}
        self.clock = 0
        self.members: dict[str, str] = {}
        self.merge_errors: list[BaseException] = []   # what a plugged-in merge did wrong
        self.rounds = 0
        self._rng = random.Random(f"{seed}:{name}")
        self.lock = threading.RLock()
        self.client = Client(name, timeout=self.timeout_s, trace=trace)
        self._gossip: threading.Thread | None = None
        self._stop_gossip = threading.Event()

    # -- local state ---------------------------------------------------------------

    def write(self, key: str, value) -> dict:
        """A local write: it has seen the key's entry and its conflicts, and replaces them all."""
        with self.lock:
            self.clock += 1
            seen = self.entries.get(key)
            version: dict[str, int] = {}
            for earlier in ([seen, *seen["conflicts"]] if seen else []):
                for peer, clock in earlier["version"].items():
                    version[peer] = max(version.get(peer, 0), clock)
            version[self.name] = self.clock
            entry = self.entries[key] = {"value": value, "clock": self.clock, "peer": self.name,
                                         "version": dict(sorted(version.items())), "conflicts": []}
            return copy.deepcopy(entry)

    def state(self) -> dict:
        with self.lock:
            return copy.deepcopy(self.entries)

    def digest(self) -> str:
        with self.lock:
            text = json.dumps(self.entries, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def learn(self, members: dict, *, first_hand: bool = False) -> None:
        """Add the members this peer did not know (never itself).

        A known member's address changes only ``first_hand``, when that member itself
        says where it is now (it joined or gossiped with us): second-hand lists may be stale.
        """
        with self.lock:
            for name, address in members.items():
                if name == self.name:
                    continue
                if name in self.members:
                    if first_hand:
                        self.members[name] = address
                elif len(self.members) < MAX_MEMBERS:
                    self.members[name] = address

    def membership(self, *, with_me: bool = False) -> dict:
        with self.lock:
            members = dict(self.members)
        if with_me and self.address:
            members[self.name] = self.address
        return members

    def absorb(self, theirs: dict) -> None:
        """Merge ``theirs`` into this replica with the merge function; raise MergeError if it misbehaves."""
        with self.lock:
            try:
                merged = self.merge(copy.deepcopy(self.entries), copy.deepcopy(theirs))
            except Exception as error:
                self.merge_errors.append(error)
                raise MergeError(f"the merge function raised {type(error).__name__}: {error}") from error
            try:
                check_entries(merged)
            except Invalid as problem:
                error = MergeError(f"the merge function returned a replica that is not valid: {problem}")
                self.merge_errors.append(error)
                raise error from None
            self.entries = copy.deepcopy(merged)
            clocks = [w["clock"] for e in self.entries.values() for w in (e, *e["conflicts"])]
            self.clock = max([self.clock, *clocks])

    # -- talking to other peers ---------------------------------------------------------

    def _message(self) -> dict:
        return {"name": self.name, "address": self.address, "members": self.membership(), "entries": self.state()}

    def gossip_round(self) -> dict:
        """One push-pull exchange with a member picked at random."""
        with self.lock:
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
            members, entries = check_members(body.get("members")), check_entries(body.get("entries"))
        except requests.exceptions.RequestException as exc:
            return {"partner": partner, "ok": False, "error": describe(exc)}
        except (ValueError, AttributeError):  # Invalid is a ValueError too
            return {"partner": partner, "ok": False, "error": "a malformed answer"}
        except Exception as exc:  # a dial that failed (the network closed): the exchange failed
            log.debug("peer %s could not dial %s", self.name, address, exc_info=True)
            return {"partner": partner, "ok": False, "error": type(exc).__name__}
        self.learn(members)
        try:
            self.absorb(entries)
        except MergeError as exc:
            return {"partner": partner, "ok": False, "error": str(exc)}
        return {"partner": partner, "ok": True, "error": ""}

    def join(self, bootstrap: list, timeout_s: float | None = None) -> str | None:
        """Join through the first bootstrap address that answers; return it (None if none did)."""
        for address in bootstrap:
            try:
                response = self.client.post(self.dial(address) + "/join", timeout=timeout_s or self.timeout_s,
                                            json={"name": self.name, "address": self.address})
                response.raise_for_status()
                self.learn(check_members(response.json().get("members")))
                return address
            except requests.exceptions.RequestException:
                continue
            except Exception:  # a malformed answer, or a dial that failed
                log.debug("peer %s could not join through %s", self.name, address, exc_info=True)
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

    def stop_gossip(self) -> None:
        self._stop_gossip.set()
        thread, self._gossip = self._gossip, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self.timeout_s * 4 + 1)

    @property
    def gossiping(self) -> bool:
        return self._gossip is not None and self._gossip.is_alive()

    def close(self) -> None:
        """Stop gossiping and close this peer's client (its kept-alive connections)."""
        self.stop_gossip()
        self.client.close()


routes = Blueprint("peer", __name__)


@routes.get("/")
def index():
    peer = kit.state()
    with peer.lock:
        return {"name": peer.name, "address": peer.address, "members": sorted(peer.members),
                "keys": len(peer.entries), "clock": peer.clock}


@routes.get("/kv")
def read_all():
    peer = kit.state()
    with peer.lock:
        return {"data": {key: entry["value"] for key, entry in peer.entries.items()}}


@routes.get("/kv/<key>")
def read(key):
    peer = kit.state()
    with peer.lock:
        entry = peer.entries.get(key)
        if entry is None:
            abort(404, f"no key {key!r:.100} on peer {peer.name!r}: write it first with PUT /kv/{key:.100}")
        return {"key": key, **copy.deepcopy(entry)}


@routes.put("/kv/<key>")
def write(key):
    kit.text(key, "the key", limit=MAX_KEY)
    body = kit.body('{"value": "any JSON value"}')
    if "value" not in body:
        raise Invalid('send JSON {"value": ...} (any JSON value)')
    return {"key": key, **kit.state().write(key, body["value"])}


@routes.get("/state")
def state():
    peer = kit.state()
    with peer.lock:
        return {"entries": peer.state(), "clock": peer.clock}


@routes.get("/digest")
def digest():
    peer = kit.state()
    with peer.lock:
        return {"digest": peer.digest(), "keys": len(peer.entries)}


@routes.get("/members")
def members():
    return {"members": kit.state().membership()}


@routes.post("/join")
def join():
    body, peer = kit.body('{"name": "your name", "address": "http://host:port"}'), kit.state()
    name, address = kit.text(body.get("name"), "name"), kit.url(body.get("address"), "address")
    if name == peer.name:
        raise Invalid(f"the name {peer.name!r} is this peer's own; join with another name")
    answer = peer.membership(with_me=True)
    peer.learn({name: address}, first_hand=True)
    return {"members": answer}


@routes.post("/bootstrap")
def bootstrap():
    body, peer = kit.body('{"peers": ["http://host:port"]}'), kit.state()
    peers = body.get("peers")
    if not isinstance(peers, list) or not 1 <= len(peers) <= 20:
        raise Invalid('send JSON {"peers": ["http://host:port", ...]} with 1 to 20 addresses')
    peers = [kit.url(address, "each of peers") for address in peers]
    wait_s = kit.positive(body.get("timeout_s", peer.timeout_s), "timeout_s", 10)
    address = body.get("address", peer.address or None)
    if address is None:
        raise Invalid('this peer does not know its own address yet: add "address": "http://host:port", '
                      "the URL other peers reach it at")
    peer.address = kit.url(address, "address")
    joined = peer.join(peers, timeout_s=wait_s)
    return {"joined_via": joined, "members": sorted(peer.membership())}


@routes.post("/gossip")
def gossip():
    body, peer = kit.body('{"name", "address", "members": {...}, "entries": {...}}'), kit.state()
    name, address = kit.text(body.get("name"), "name"), kit.url(body.get("address"), "address")
    members, entries = check_members(body.get("members")), check_entries(body.get("entries"))
    peer.learn(members)
    peer.learn({name: address}, first_hand=True)
    try:
        peer.absorb(entries)
    except MergeError as exc:
        abort(500, f"this peer's merge function failed: {exc}")
    return {"members": peer.membership(with_me=True), "entries": peer.state()}


@routes.post("/gossip/round")
def gossip_round():
    return kit.state().gossip_round()


@routes.post("/gossip/auto")
def gossip_auto():
    every_s = kit.number(kit.body('{"every_s": 0.5}').get("every_s"), "every_s", 0, MAX_EVERY_S, unit="seconds")
    peer = kit.state()
    peer.gossip_every(every_s)
    return {"every_s": every_s, "gossiping": peer.gossiping}


def create_app(*, name: str | None = None, dial=None, seed: int = 0, timeout_s: float = 0.5,
               merge=last_writer_wins, trace=None):
    """A peer called ``name``; its state (a :class:`Peer`) is ``app.extensions["labkit"]``.

    The name defaults to $LABKIT_PEER_NAME, else this machine's host name (so peers
    started with ``python -m labkit serve peer`` on different machines differ).
    ``dial(address) -> url`` says how to reach another peer (see the module docstring);
    ``seed`` fixes its random choice of partners; ``timeout_s`` bounds each call it
    makes; ``merge(mine, theirs) -> merged`` merges replicas; ``trace`` records its calls.
    """
    name = name or os.environ.get("LABKIT_PEER_NAME") or socket.gethostname() or "peer"
    peer = Peer(name, dial=dial, seed=seed, timeout_s=timeout_s, merge=merge, trace=trace)
    return kit.make_app(name, peer, routes, max_body_bytes=MAX_BODY_BYTES)
