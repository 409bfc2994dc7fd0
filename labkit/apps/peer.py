"""A peer for notebook 02: server and client at once, holding a replica of a key-value store.

Every peer is the same program. It serves the endpoints below, and it calls other
peers with its own :class:`labkit.Client` (named after the peer, so diagrams show
peer-to-peer arrows). There is no central data: each peer keeps a full replica and
anti-entropy (gossip) brings the replicas together.

    GET  /                    {"name", "address", "members": [names], "suspected": [names], "keys": n,
                              "clock": n}
    GET  /kv                  {"data": {key: value}}: this replica, without the bookkeeping
    GET  /kv/<key>            {"key", "value", "clock", "peer", "version", "conflicts"}, or 404
    PUT  /kv/<key>            {"value": any JSON} -> the stored entry; a local write, never waits
                              for the network (409 once this peer's clock is at MAX_CLOCK)
    GET  /state               {"entries": {key: entry}, "clock": n}
    GET  /digest              {"digest": sha-256 of the entries, "keys": n}: equal replicas,
                              equal digests
    GET  /members             {"members": {name: address}, "suspected": [names]} (this peer not
                              included; suspected members are not in "members")
    POST /join                {"name", "address"}: a newcomer joins through this peer;
                              answers {"members": {...}} including this peer
    POST /bootstrap           {"peers": [address, ...], "timeout_s": s, "address": url}: join the
                              mesh through the first of these that answers; "address" (the
                              URL others reach this peer at) is needed once if not served
                              by serve_peer; "timeout_s" is optional
    POST /gossip              {"name", "address", "members", "entries", "heartbeats"}: one push-pull
                              exchange; this peer merges what it got and answers {"members",
                              "heartbeats", "entries"} with its merged replica ("heartbeats" is
                              optional: {name: count})
    POST /gossip/round        this peer starts one exchange with a member picked at random;
                              answers {"partner": name or null, "ok": bool, "error": ""}
    POST /gossip/auto         {"every_s": seconds, or 0 to stop}: gossip in a background thread

An entry is one write and what it knew: ``{"value", "clock", "peer", "version",
"conflicts"}``, and ``"signature"`` when its writer signs (below). ``peer`` wrote it;
``clock`` is a Lamport clock (one above the largest the writer had seen, so it beats
every write the writer knew of); ``version`` is a version vector, {peer: the writer's
clock at its latest write this value descends from}: of two writes, one *happened
before* the other exactly when its version is below the other's, and when neither is
below, they were concurrent: neither writer had seen the other's.
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

Who is still there (failure detection, off unless asked for): each peer counts a
*heartbeat*, one more at every exchange it starts, and exchanges carry the heartbeats
each side knows, the larger winning (van Renesse, Minsky and Hayden, "A gossip-style
failure detection service", Middleware 1998). A member whose heartbeat has not grown
for ``suspect_after_rounds`` of this peer's rounds is *suspected*: it is still tried as
a partner (it may be slow, or cut off), but no longer passed on to others; after
``remove_after_rounds`` it is *removed*, and a stale list that still names it does not
bring it back (only a larger heartbeat, or the member itself calling, does). A peer
that hears a heartbeat of its own larger than its count jumps past it, so a restarted
peer is not taken for its dead former self; but only by up to ``MAX_HEARTBEAT_JUMP``
(a claim further above its count is ignored), and never past ``MAX_CLOCK``, so that one
forged heartbeat cannot push a peer's count out of the range every message must keep to.

Who wrote what (signatures, off unless asked for): a peer made with ``signing_key`` (an
Ed25519 private key) signs each write it makes over (key, value, clock, peer, version);
a peer made with ``authors`` ({name: Ed25519 public key}) merges only the writes whose
``peer`` is a listed author and whose signature that author's key verifies, and counts
the others in ``rejected``. A signature proves who wrote an entry, not that its clock or
value is honest.

What signatures do not cover: only entries are signed. The rest of an exchange, the
sender's ``name`` and ``address``, its ``members`` and its ``heartbeats``, is taken on the
sender's word, even with ``authors`` set. So a caller can claim another member's name
with its own address (the exchange counts as first-hand, and this peer then sends that
member's exchanges to the caller), report false heartbeats of others, or fill the
member list up to ``MAX_MEMBERS`` so that newcomers are no longer added; and a peer that
relays signed entries can still drop, withhold or serve stale ones. Closing these needs
the exchange itself authenticated (each message signed by a key the receiver knows
belongs to its ``name``, or mutual TLS); these peers do not do it.

The background gossip thread (a daemon) ends on ``POST /gossip/auto {"every_s": 0}``,
``Peer.stop_gossip()``, or once labkit's server for this peer stops.
"""

from __future__ import annotations

import collections
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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
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
MAX_CLOCK = 2**53 - 1    # the largest whole number all JSON readers agree on (RFC 8259)
MAX_ROUNDS = 10_000      # suspect_after_rounds and remove_after_rounds
MAX_HEARTBEAT_JUMP = 1_000_000  # how far above its own count a peer believes a heartbeat of its own
WRITE = ("value", "clock", "peer", "version")
SIGNATURE = "signature"  # an Ed25519 signature, 128 hex digits


def last_writer_wins(mine: dict, theirs: dict) -> dict:
    """Key by key, the entry with the larger (clock, peer) pair; concurrent writes are lost."""
    merged = dict(mine)
    for key, entry in theirs.items():
        if key not in merged or (entry["clock"], entry["peer"]) > (merged[key]["clock"], merged[key]["peer"]):
            merged[key] = entry
    return merged


def _copy(value):
    """A deep copy of JSON data (a JSON round trip, faster than copy.deepcopy on such data)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):  # not JSON (a value written from Python): copy it anyway
        return copy.deepcopy(value)


# -- signatures --------------------------------------------------------------------------------


def signed_bytes(key: str, write: dict) -> bytes:
    """What a signature covers: the key and the write's value, clock, peer and version, as canonical JSON."""
    return json.dumps([key, *(write[field] for field in WRITE)], sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def sign(key: str, write: dict, private_key: Ed25519PrivateKey) -> str:
    """The hex Ed25519 signature of ``write`` (an entry or a conflict) of ``key`` by ``private_key``."""
    return private_key.sign(signed_bytes(key, write)).hex()


def verified(key: str, write: dict, authors: dict) -> str:
    """An empty string if the write of ``key`` is signed by its peer's key in ``authors``; else why not."""
    public_key = authors.get(write["peer"])
    if public_key is None:
        return "unknown author"
    if SIGNATURE not in write:
        return "no signature"
    try:
        public_key.verify(bytes.fromhex(write[SIGNATURE]), signed_bytes(key, write))
    except (InvalidSignature, ValueError):
        return "bad signature"
    return ""


# -- reaching other peers ------------------------------------------------------------------------


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
    network's links. ``options`` go to :func:`create_app` (seed, timeout_s, merge,
    suspect_after_rounds, remove_after_rounds, signing_key, authors). The server's
    ``peer`` is the peer's state (a :class:`Peer`), for code in the same process.
    """
    from ..server import serve

    if network is not None:
        options.setdefault("dial", network_dial(network, name))
        trace = network.trace if trace is None else trace
    app = create_app(name=name, trace=trace, **options)
    server = serve(app, name=name, trace=trace)
    server.peer = app.extensions["labkit"]
    server.peer.address = server.url
    return server


# -- what a valid message holds ------------------------------------------------------------------


def _write(key, entry, *, conflicts: bool) -> None:
    fields = set(WRITE) | ({"conflicts"} if conflicts else set())
    name = kit.short(key)
    if not isinstance(entry, dict) or not fields <= set(entry) <= fields | {SIGNATURE}:
        raise Invalid(f"the entry of {name} must have exactly the fields {sorted(fields)} "
                      f"(and perhaps {SIGNATURE!r}), not {kit.short(entry)}")
    kit.whole(entry["clock"], f"the clock of {name}", 0, MAX_CLOCK)
    kit.text(entry["peer"], f"the peer of {name}")
    version = entry["version"]
    if not isinstance(version, dict) or not 1 <= len(version) <= MAX_MEMBERS:
        raise Invalid(f"the version of {name} must be an object {{peer: clock}}, not {kit.short(version)}")
    for peer, clock in version.items():
        kit.text(peer, f"a peer in the version of {name}")
        if isinstance(clock, bool) or not isinstance(clock, int) or not 0 <= clock <= MAX_CLOCK:
            kit.whole(clock, f"the version of {name} at {kit.short(peer)}", 0, MAX_CLOCK)  # says what is wrong
    if SIGNATURE in entry:
        signature = entry[SIGNATURE]
        if not isinstance(signature, str) or len(signature) != 128 or not all(c in "0123456789abcdef"
                                                                              for c in signature):
            raise Invalid(f"the signature of {name} must be 128 lower-case hex digits (an Ed25519 "
                          f"signature), not {kit.short(signature)}")


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


def check_heartbeats(heartbeats) -> dict:
    if not isinstance(heartbeats, dict) or len(heartbeats) > MAX_MEMBERS + 1:
        raise Invalid(f"heartbeats must be an object {{name: count}} of at most {MAX_MEMBERS + 1}, "
                      f"not {kit.short(heartbeats)}")
    for name, count in heartbeats.items():
        kit.text(name, "a name in heartbeats")
        kit.whole(count, f"the heartbeat of {kit.short(name)}", 0, MAX_CLOCK)
    return heartbeats


def _rounds(value, field: str):
    return None if value is None else kit.whole(value, field, 1, MAX_ROUNDS)


# -- the peer ------------------------------------------------------------------------------------


class Peer:
    """The state of one peer: its replica, clock, members, and the client it calls others with.

    ``suspect_after_rounds`` and ``remove_after_rounds`` (None: never) turn failure
    detection on; ``signing_key`` signs this peer's writes and ``authors`` limits the
    writes it takes to those signed by the listed keys (see the module docstring).
    """

    def __init__(self, name: str, *, dial=None, seed=0, timeout_s: float = 0.5, merge=last_writer_wins, trace=None,
                 suspect_after_rounds: int | None = None, remove_after_rounds: int | None = None,
                 signing_key: Ed25519PrivateKey | None = None, authors: dict | None = None):
        self.name = kit.text(name, "a peer's name")
        self.address = ""              # set once served (serve_peer does it)
        self.dial = dial or (lambda address: address)
        self.timeout_s = kit.positive(timeout_s, "timeout_s", 60)
        self.merge = merge
        self.suspect_after_rounds = _rounds(suspect_after_rounds, "suspect_after_rounds")
        self.remove_after_rounds = _rounds(remove_after_rounds, "remove_after_rounds")
        if None not in (self.suspect_after_rounds, self.remove_after_rounds) and \
                self.remove_after_rounds < self.suspect_after_rounds:
            raise Invalid(f"remove_after_rounds ({remove_after_rounds}) must be at least suspect_after_rounds "
                          f"({suspect_after_rounds}): a member is suspected before it is removed")
        if signing_key is not None and not isinstance(signing_key, Ed25519PrivateKey):
            raise Invalid(f"signing_key must be an Ed25519 private key "
                          f"(cryptography's Ed25519PrivateKey.generate()), not {kit.short(signing_key)}")
        if authors is not None and (not isinstance(authors, dict) or not all(
                isinstance(k, Ed25519PublicKey) for k in authors.values())):
            raise Invalid(f"authors must be {{peer name: Ed25519 public key}}, not {kit.short(authors)}")
        self.signing_key, self.authors = signing_key, (None if authors is None else dict(authors))
        self.entries: dict[str, dict] = {}
        self.clock = 0
        self.members: dict[str, str] = {}
        self.heartbeat = 0                 # this peer's own: one more at every exchange it starts
        self.heartbeats: dict[str, int] = {}   # the largest heartbeat heard of each member
        self.removed: dict[str, int] = {}      # members removed as dead: their heartbeat then
        self._heard: dict[str, int] = {}       # member -> this peer's round when its heartbeat last grew
        self.merge_errors: list[BaseException] = []   # what a plugged-in merge did wrong
        self.rejected: collections.Counter = collections.Counter()  # writes refused, by reason
        self.rounds = 0
        self._rng = random.Random(f"{seed}:{name}")
        self.lock = threading.RLock()
        self.client = Client(name, timeout=self.timeout_s, trace=trace)
        self._gossip: threading.Thread | None = None
        self._stop_gossip = threading.Event()

    # -- local state ---------------------------------------------------------------

    def write(self, key: str, value) -> dict:
        """A local write: it has seen the key's entry and its conflicts, and replaces them all.

        Raises Invalid if this peer's clock is already at MAX_CLOCK: no later write could beat
        what it has seen, and none could be sent (PUT answers 409).
        """
        with self.lock:
            if self.clock >= MAX_CLOCK:
                raise Invalid(f"peer {self.name!r} has seen the clock {MAX_CLOCK} (2**53-1), the largest a clock "
                              f"may hold: no write of it could be later than that one, so it cannot write any more")
            self.clock += 1
            seen = self.entries.get(key)
            version: dict[str, int] = {}
            for earlier in ([seen, *seen["conflicts"]] if seen else []):
                for peer, clock in earlier["version"].items():
                    version[peer] = max(version.get(peer, 0), clock)
            version[self.name] = self.clock
            entry = {"value": value, "clock": self.clock, "peer": self.name,
                     "version": dict(sorted(version.items())), "conflicts": []}
            if self.signing_key is not None:
                entry[SIGNATURE] = sign(key, entry, self.signing_key)
            self.entries[key] = entry
            return copy.deepcopy(entry)

    def state(self) -> dict:
        with self.lock:
            return _copy(self.entries)

    def digest(self) -> str:
        with self.lock:
            text = json.dumps(self.entries, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    # -- membership and failure detection -------------------------------------------------

    def learn(self, members: dict, *, first_hand: bool = False, heartbeats: dict | None = None) -> None:
        """Add the members this peer did not know (never itself), and the heartbeats that grew.

        A known member's address changes only ``first_hand``, when that member itself
        says where it is now (it joined or gossiped with us): second-hand lists may be stale.
        (Nothing checks that the caller is that member: see "What signatures do not cover"
        in the module docstring.) A removed member comes back first-hand, or with a
        heartbeat larger than when it was removed. A heartbeat of this peer's own above its
        count moves the count past it, if it is at most ``MAX_HEARTBEAT_JUMP`` above.
        """
        heartbeats = heartbeats or {}
        with self.lock:
            for name, address in members.items():
                if name == self.name:
                    continue
                beat = heartbeats.get(name)
                if name in self.removed:
                    if not first_hand and (beat is None or beat <= self.removed[name]):
                        continue         # a stale list: it died
                    del self.removed[name]
                if name in self.members:
                    if first_hand:
                        self.members[name] = address
                elif len(self.members) < MAX_MEMBERS:
                    self.members[name] = address
                    self._heard[name] = self.rounds
                else:
                    continue
                if first_hand:
                    self._heard[name] = self.rounds
                if beat is not None and beat > self.heartbeats.get(name, -1):
                    self.heartbeats[name] = beat
                    self._heard[name] = self.rounds
            mine = heartbeats.get(self.name)
            if mine is not None and self.heartbeat < mine <= self.heartbeat + MAX_HEARTBEAT_JUMP:
                # others heard a larger one: an earlier life of this name. A claim far above this
                # peer's count is a lie (no earlier life beat that much more), and the count never
                # passes MAX_CLOCK, or every other peer would refuse this peer's messages.
                self.heartbeat = min(mine + 1, MAX_CLOCK)

    def silent_for(self, name: str) -> int:
        """How many of this peer's rounds since member ``name``'s heartbeat last grew (or it called)."""
        with self.lock:
            return self.rounds - self._heard.get(name, self.rounds)

    @property
    def suspected(self) -> list[str]:
        """The members whose heartbeat has not grown for ``suspect_after_rounds`` rounds."""
        if self.suspect_after_rounds is None:
            return []
        with self.lock:
            return sorted(n for n in self.members if self.silent_for(n) >= self.suspect_after_rounds)

    def _forget_the_silent(self) -> None:
        if self.remove_after_rounds is None:
            return
        with self.lock:
            for name in [n for n in self.members if self.silent_for(n) >= self.remove_after_rounds]:
                del self.members[name]
                self._heard.pop(name, None)
                self.removed[name] = self.heartbeats.pop(name, 0)
            while len(self.removed) > MAX_MEMBERS:
                del self.removed[next(iter(self.removed))]

    def membership(self, *, with_me: bool = False) -> dict:
        """The members this peer passes on (the suspected ones left out), and itself ``with_me``."""
        with self.lock:
            suspected = set(self.suspected)
            members = {n: a for n, a in self.members.items() if n not in suspected}
        if with_me and self.address:
            members[self.name] = self.address
        return members

    def _heartbeats(self) -> dict:
        with self.lock:
            passed_on = self.membership()
            return {**{n: b for n, b in self.heartbeats.items() if n in passed_on}, self.name: self.heartbeat}

    # -- merging ------------------------------------------------------------------------------

    def _signed_only(self, theirs: dict) -> dict:
        """``theirs`` without the writes no listed author signed (each counted in ``rejected``)."""
        kept = {}
        for key, entry in theirs.items():
            why = verified(key, entry, self.authors)
            if why:
                self.rejected[why] += 1
                continue
            conflicts = []
            for other in entry["conflicts"]:
                why = verified(key, other, self.authors)
                if why:
                    self.rejected[why] += 1
                else:
                    conflicts.append(other)
            kept[key] = {**entry, "conflicts": conflicts}
        return kept

    def absorb(self, theirs: dict) -> None:
        """Merge ``theirs`` into this replica with the merge function; raise MergeError if it misbehaves."""
        with self.lock:
            if self.authors is not None:
                theirs = self._signed_only(theirs)
            try:
                merged = self.merge(_copy(self.entries), _copy(theirs))
            except Exception as error:
                self.merge_errors.append(error)
                raise MergeError(f"the merge function raised {type(error).__name__}: {error}") from error
            try:
                check_entries(merged)
            except Invalid as problem:
                error = MergeError(f"the merge function returned a replica that is not valid: {problem}")
                self.merge_errors.append(error)
                raise error from None
            self.entries = _copy(merged)
            clocks = [w["clock"] for e in self.entries.values() for w in (e, *e["conflicts"])]
            self.clock = max([self.clock, *clocks])

    # -- talking to other peers ---------------------------------------------------------

    def message(self) -> dict:
        """What this peer sends when it starts an exchange (the body of POST /gossip)."""
        return {"name": self.name, "address": self.address, "members": self.membership(),
                "heartbeats": self._heartbeats(), "entries": self.state()}

    def receive(self, message: dict) -> dict:
        """Take another peer's exchange (POST /gossip) and answer with this peer's merged replica.

        Raises Invalid, before anything changes, if the message is malformed, and
        MergeError if the merge misbehaves.
        """
        name, address = kit.text(message.get("name"), "name"), kit.url(message.get("address"), "address")
        members, entries = check_members(message.get("members")), check_entries(message.get("entries"))
        heartbeats = check_heartbeats(message.get("heartbeats", {}))
        self.learn(members, heartbeats=heartbeats)
        self.learn({name: address}, first_hand=True, heartbeats=heartbeats)
        self.absorb(entries)
        return {"members": self.membership(with_me=True), "heartbeats": self._heartbeats(), "entries": self.state()}

    def _take(self, partner: str, answer) -> None:
        """Merge the answer of ``partner`` to an exchange this peer started."""
        if not isinstance(answer, dict):
            raise Invalid(f"an answer to an exchange is a JSON object, not {kit.short(answer)}")
        members, entries = check_members(answer.get("members")), check_entries(answer.get("entries"))
        heartbeats = check_heartbeats(answer.get("heartbeats", {}))
        self.learn(members, heartbeats=heartbeats)
        with self.lock:
            if partner in self.members:
                self._heard[partner] = self.rounds  # it answered: alive
        self.absorb(entries)

    def _start_round(self):
        """Count one round, forget the long silent, pick a partner: (name, address), or None if none is left."""
        with self.lock:
            if not self.members:
                return None
            self.rounds += 1
            self.heartbeat = min(self.heartbeat + 1, MAX_CLOCK)
            self._forget_the_silent()
            names = sorted(self.members)
            if not names:
                return None
            partner = self._rng.choice(names)
            return partner, self.members[partner]

    def gossip_round(self) -> dict:
        """One push-pull exchange with a member picked at random."""
        picked = self._start_round()
        if picked is None:
            return {"partner": None, "ok": False, "error": "no members known"}
        partner, address = picked
        try:
            response = self.client.post(self.dial(address) + "/gossip", json=self.message())
            response.raise_for_status()
            answer = response.json()
        except requests.exceptions.RequestException as exc:
            return {"partner": partner, "ok": False, "error": describe(exc)}
        except ValueError:
            return {"partner": partner, "ok": False, "error": "a malformed answer"}
        except Exception as exc:  # a dial that failed (the network closed): the exchange failed
            log.debug("peer %s could not dial %s", self.name, address, exc_info=True)
            return {"partner": partner, "ok": False, "error": type(exc).__name__}
        try:
            self._take(partner, answer)
        except MergeError as exc:
            return {"partner": partner, "ok": False, "error": str(exc)}
        except (ValueError, AttributeError):  # Invalid is a ValueError too
            return {"partner": partner, "ok": False, "error": "a malformed answer"}
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


def exchange(peer: Peer, others: dict) -> dict:
    """One round of ``peer`` in this process, without sockets: what :meth:`Peer.gossip_round` does.

    ``peer`` picks a partner as it always does; ``others`` maps names to the :class:`Peer`
    objects that answer (a name not in it is a dead peer: the exchange fails). The
    message and the answer cross as JSON text, as over HTTP. Returns {"partner", "ok",
    "bytes"}: the bytes of JSON sent both ways (HTTP would add its headers).

        >>> peers = {n: Peer(n) for n in "abc"}                     # doctest: +SKIP
        >>> for p in peers.values(): p.learn({n: "http://127.0.0.1:9" for n in peers})
        >>> exchange(peers["a"], peers)
        {'partner': 'c', 'ok': True, 'bytes': 412}
    """
    picked = peer._start_round()
    if picked is None:
        return {"partner": None, "ok": False, "bytes": 0}
    partner = picked[0]
    sent = json.dumps(peer.message())
    other = others.get(partner)
    if other is None:
        return {"partner": partner, "ok": False, "bytes": len(sent.encode())}
    answer = json.dumps(other.receive(json.loads(sent)))
    peer._take(partner, json.loads(answer))
    return {"partner": partner, "ok": True, "bytes": len(sent.encode()) + len(answer.encode())}


routes = Blueprint("peer", __name__)


@routes.get("/")
def index():
    peer = kit.state()
    with peer.lock:
        return {"name": peer.name, "address": peer.address, "members": sorted(peer.members),
                "suspected": peer.suspected, "keys": len(peer.entries), "clock": peer.clock}


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
    try:
        entry = kit.state().write(key, body["value"])
    except Invalid as exc:
        abort(409, str(exc))
    return {"key": key, **entry}


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
    peer = kit.state()
    with peer.lock:
        return {"members": peer.membership(), "suspected": peer.suspected}


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
    try:
        return peer.receive(body)
    except MergeError as exc:
        abort(500, f"this peer's merge function failed: {exc}")


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
               merge=last_writer_wins, trace=None, suspect_after_rounds: int | None = None,
               remove_after_rounds: int | None = None, signing_key: Ed25519PrivateKey | None = None,
               authors: dict | None = None):
    """A peer called ``name``; its state (a :class:`Peer`) is ``app.extensions["labkit"]``.

    The name defaults to $LABKIT_PEER_NAME, else this machine's host name (so peers
    started with ``python -m labkit serve peer`` on different machines differ).
    ``dial(address) -> url`` says how to reach another peer (see the module docstring);
    ``seed`` fixes its random choice of partners; ``timeout_s`` bounds each call it
    makes; ``merge(mine, theirs) -> merged`` merges replicas; ``trace`` records its calls;
    ``suspect_after_rounds`` and ``remove_after_rounds`` turn on failure detection;
    ``signing_key`` and ``authors`` sign writes and check their signatures.
    """
    name = name or os.environ.get("LABKIT_PEER_NAME") or socket.gethostname() or "peer"
    peer = Peer(name, dial=dial, seed=seed, timeout_s=timeout_s, merge=merge, trace=trace,
                suspect_after_rounds=suspect_after_rounds, remove_after_rounds=remove_after_rounds,
                signing_key=signing_key, authors=authors)
    return kit.make_app(name, peer, routes, max_body_bytes=MAX_BODY_BYTES)
