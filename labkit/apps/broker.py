"""A broker for notebook 03: who is there, who gets the job, and who is who.

    GET    /                      {"service": "broker", "peers": n}
    POST   /register              {"name", "kind", "url", "secret", "load"?} -> 201 {"token", "ttl_s"};
                                  403 for the broker's own name (also at /login)
    POST   /heartbeat             {"name", "load"} with "Authorization: Bearer TOKEN" -> {"ok": true};
                                  404 once the broker has forgotten the peer (register again)
    GET    /peers?kind=K          {"peers": [{"name", "kind", "url", "load"}, ...]} the live ones, by name
    GET    /peers/NAME            one live peer, or 404
    DELETE /peers/NAME            with that peer's token: leave at once
    POST   /allocate              {"kind"} -> {"peer": {...}} a live peer of that kind, chosen by the policy
    POST   /login                 {"name", "secret"} -> {"token", "expires_in"}       (central sign-in)
    POST   /tokens                {"audience": "bob"} with the broker's token -> {"token", "expires_in",
                                  "audience"}: a token that only the peer called "bob" accepts (403 for
                                  the broker's own name: its tokens come from /register and /login)
    GET    /.well-known/jwks.json the public key peers check tokens with (a JSON Web Key Set)
    ANY    /relay/NAME/PATH       the broker forwards the request to peer NAME and returns its answer;
                                  403 for a loopback or link-local peer address when the broker listens
                                  beyond this machine (see relay)
    GET    /stats                 {"requests": {what: count}, "total": n} what the broker has handled

The broker's jobs, each a Blueprint of its own:

- *identification*: peers register (name, kind, address) and send heartbeats; a peer
  whose last heartbeat is older than ``ttl_s`` seconds is forgotten;
- *allocation*: ``/allocate`` picks a live peer of a kind by its load estimate (the load it
  last reported, plus the jobs allocated to it since, unless ``count_allocations`` is
  False). The ``policy`` says how: "least-loaded" (the lowest estimate, ties broken by
  name), "two-choices" (the lower of two peers drawn at random) or "random";
- *sign-in*: a peer proves who it is once, with the secret the broker was started with,
  and gets a token for the broker (its audience, ``aud``, is the broker's name), signed
  with the broker's private key (RS256). For each peer it calls it exchanges that token
  for one whose audience is that peer (``/tokens``); the peer checks it with the public
  key (fetched once from the key set) without asking the broker, and refuses a token
  meant for anyone else, so a peer cannot replay a caller's token to a third peer. The
  broker's own name is its audience, so no peer may register or sign in under it, and
  ``/tokens`` hands out no token for it (a peer called "broker" would otherwise be given
  tokens the broker itself accepts);
- *relay*: the broker forwards a request to a peer and returns its answer (the broker
  must reach the peer: it opens the connection). Anyone who can register can make the
  broker call any address, so a broker that listens beyond its own machine refuses to
  relay to loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0) and link-local addresses
  (169.254.0.0/16, where clouds serve instance metadata, and fe80::/10): those would
  open the broker host's local services, or its cloud credentials, to the network.
  ``relay_local`` (True or False) overrides that rule. Host names are resolved when the
  relay is asked for; a name that resolves differently a moment later (DNS rebinding)
  slips past, and so does the broker host's own network address: a relay that must be
  safe forwards only to an allow-list of networks.

Options of :func:`create_app`: ``secrets`` ({name: secret}; None lets any name in and fixes
its secret at its first sign-in), ``ttl_s``, ``token_ttl_s``, ``clock`` (seconds; a
ManualClock for tests that must not sleep), ``timeout_s`` (of a relayed call), ``trace``
(where the broker's relayed calls are recorded), ``signer`` (a tokens.Signer to sign with),
``policy`` and ``count_allocations`` (see allocation), ``seed`` (of the policy's random draws),
``relay_local`` (see relay: None decides by the address the broker listens on).

Expiry is lazy: the broker looks at heartbeat ages whenever it answers, so it needs no
background thread.
"""

from __future__ import annotations

import collections
import ipaddress
import random
import socket
import threading
import time
from urllib.parse import urlsplit

import jwt
from flask import Blueprint, abort, request

from ..client import Client
from ..errors import Invalid
from . import kit, tokens

MAX_LOAD = 1_000_000
#: How /allocate chooses among the live peers of a kind (the ``policy`` option).
POLICIES = ("least-loaded", "two-choices", "random")
#: request headers the broker passes on when it relays (the rest are its own business)
RELAYED_HEADERS = ("Authorization", "Content-Type", "Accept")


class Broker:
    """The broker's state: live peers, secrets, its signer, its relay client and request counts."""

    def __init__(self, name: str, *, secrets: dict | None, ttl_s: float, token_ttl_s: float, clock, timeout_s: float,
                 signer: tokens.Signer | None, trace, policy: str = "least-loaded", count_allocations: bool = True,
                 seed: int | None = 0, relay_local: bool | None = None):
        if secrets is not None and not all(isinstance(k, str) and isinstance(v, str) and v
                                           for k, v in secrets.items()):
            raise Invalid("secrets maps each peer name (a string) to its secret (a non-empty string)")
        if secrets is not None and name in secrets:
            raise Invalid(f"secrets must not name the broker itself ({name!r}): its name is the audience "
                          f"of its own tokens, so no peer may take it")
        if relay_local is not None and not isinstance(relay_local, bool):
            raise Invalid(f"relay_local must be true, false or None (decide by the listening address), "
                          f"not {kit.short(relay_local)}")
        self.relay_local = relay_local
        if policy not in POLICIES:
            raise Invalid(f"policy must be one of {', '.join(POLICIES)}, not {kit.short(policy)}")
        self.policy, self.count_allocations = policy, kit.flag(count_allocations, "count_allocations")
        self.rng = random.Random(seed)
        self.name = name
        self.ttl_s = kit.positive(ttl_s, "ttl_s", 10**7)
        self.token_ttl_s = kit.positive(token_ttl_s, "token_ttl_s", 10**7)
        self.clock = clock
        self.secrets, self.open_door = dict(secrets or {}), secrets is None
        self.signer = signer or tokens.Signer("RS256", issuer=name)
        self.peers: dict[str, dict] = {}  # name -> {"name", "kind", "url", "load", "pending", "seen"}
        self.counts: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        self.client = Client(name, timeout=kit.positive(timeout_s, "timeout_s", 60), trace=trace)

    def live(self) -> dict[str, dict]:
        """Forget peers whose last heartbeat is too old; the rest. Call with the lock held."""
        now = self.clock()
        for name in [n for n, p in self.peers.items() if now - p["seen"] > self.ttl_s]:
            del self.peers[name]
        return self.peers

    def find(self, name: str) -> dict:
        """The live peer ``name``, or 404. Call with the lock held."""
        peer = self.live().get(name)
        if peer is None:
            abort(404, f"no live peer named {name!r}; GET /peers lists those there are")
        return peer

    @staticmethod
    def public(peer: dict) -> dict:
        return {k: peer[k] for k in ("name", "kind", "url", "load")}

    def estimate(self, peer: dict) -> int:
        """The load the broker believes ``peer`` has: its last report, plus the jobs sent to it since (if counted)."""
        return peer["load"] + (peer["pending"] if self.count_allocations else 0)

    def allocate(self, kind: str) -> dict:
        """The live peer of ``kind`` the policy chooses (its estimate goes up by one), or 404."""
        with self.lock:
            candidates = sorted((p for p in self.live().values() if p["kind"] == kind), key=lambda p: p["name"])
            if not candidates:
                abort(404, f"no live peer of kind {kind!r}; GET /peers lists those there are")
            if self.policy == "random":
                chosen = self.rng.choice(candidates)
            else:
                if self.policy == "two-choices":
                    candidates = self.rng.sample(candidates, min(2, len(candidates)))
                chosen = min(candidates, key=lambda p: (self.estimate(p), p["name"]))
            chosen["pending"] += 1  # until its next heartbeat tells the truth
            return self.public(chosen)

    def sign_in(self, name: str, secret: str) -> str:
        """A token for the broker itself if ``secret`` is ``name``'s secret (an open broker learns it now), else 401."""
        if name == self.name:
            abort(403, f"{name!r} is the broker's own name (the audience of its own tokens); "
                       f"a peer must use another")
        with self.lock:
            if name not in self.secrets and not self.open_door:
                abort(401, f"the broker knows no peer named {name!r}; use a name it was started with")
            if self.secrets.setdefault(name, secret) != secret:
                abort(401, f"wrong secret for {name!r}; send the secret the broker was given for it")
        return self.issue(name, self.name)[0]

    def issue(self, name: str, audience: str, expires: int | None = None) -> tuple[str, int]:
        """A token saying it is ``name``, valid only at ``audience``, for token_ttl_s (never beyond
        ``expires``), and the seconds it is valid for."""
        now = int(time.time())
        until = now + int(self.token_ttl_s) if expires is None else min(now + int(self.token_ttl_s), expires)
        return self.signer.sign({"sub": name, "aud": audience, "iss": self.name, "iat": now, "exp": until}), until - now

    def signed_in(self) -> dict:
        """The claims of the request's token, which must be one for this broker, or 401."""
        token = tokens.bearer(request.headers)
        if token is None:
            abort(401, 'send your token in an "Authorization: Bearer TOKEN" header')
        try:
            key = self.signer.secret if self.signer.public_key is None else self.signer.public_key
            return tokens.verify(token, key, algorithm=self.signer.algorithm, audience=self.name)
        except jwt.InvalidTokenError as error:
            if wrong_audience(error):
                abort(401, f"this token is for {audience_of(token)}, not for the broker {self.name!r}; "
                           f"send the token you got from /register or /login")
            abort(401, f"the token is not valid ({error}); sign in again")

    def signed_in_as(self) -> str:
        """Who the request's token says it is, or 401."""
        return self.signed_in()["sub"]

    def may_relay_to(self, url: str) -> bool:
        """Whether the relay may call ``url``: always if ``relay_local`` says so, or if the broker
        listens on loopback only; otherwise only if its host is not loopback, unspecified or link-local."""
        if self.relay_local is not None:
            return self.relay_local or not _local_host(urlsplit(url).hostname)
        listening = request.environ.get("SERVER_NAME", "").strip("[]")  # the address it is bound to
        on_loopback = listening.lower() == "localhost" or (_is_ip(listening)
                                                            and ipaddress.ip_address(listening).is_loopback)
        return on_loopback or not _local_host(urlsplit(url).hostname)

    def close(self) -> None:
        self.client.close()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _local_address(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%")[0])  # an IPv6 zone ("%eth0") is not part of the address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified


def _local_host(host: str | None) -> bool:
    """Whether ``host`` (an address or a name) is, or resolves to, a loopback, unspecified or link-local address."""
    if not host:
        return False
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return _local_address(host)
    except ValueError:
        pass  # a name, not an address
    try:
        found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False  # it does not resolve: the relayed call fails on its own (502)
    return any(_local_address(info[4][0]) for info in found)


def wrong_audience(error: jwt.InvalidTokenError) -> bool:
    """Whether a token was refused for naming another audience, or none."""
    return isinstance(error, jwt.InvalidAudienceError) or (
        isinstance(error, jwt.MissingRequiredClaimError) and error.claim == "aud")


def audience_of(token: str) -> str:
    """Whom a token says it is for, in words (read without checking it: only to say why it was refused)."""
    try:
        audience = jwt.decode(token, options={"verify_signature": False}).get("aud")
    except jwt.InvalidTokenError:
        return "no one this broker can read"
    return "no one (it names no audience)" if audience is None else kit.short(audience)


def _load(body: dict, default=None) -> int:
    return kit.whole(body.get("load", default), "load", 0, MAX_LOAD)


# -- identification ---------------------------------------------------------------------------------

identification = Blueprint("identification", __name__)


@identification.post("/register")
def register():
    body = kit.body('{"name": "bob", "kind": "worker", "url": "http://127.0.0.1:5002", "secret": "..."}')
    name = kit.name(body.get("name"), "name")
    kind, url = kit.name(body.get("kind"), "kind"), kit.url(body.get("url"), "url", path=True)
    load = _load(body, 0)
    state = kit.state()
    token = state.sign_in(name, kit.text(body.get("secret"), "secret", limit=200))
    with state.lock:
        state.live()
        state.peers[name] = {"name": name, "kind": kind, "url": url, "load": load, "pending": 0, "seen": state.clock()}
    return {"token": token, "ttl_s": state.ttl_s}, 201


@identification.post("/heartbeat")
def heartbeat():
    body = kit.body('{"name": "bob", "load": 2}')
    name, load = kit.name(body.get("name"), "name"), _load(body)
    state = kit.state()
    if state.signed_in_as() != name:
        abort(403, f"your token is not {name!r}'s; send heartbeats only for yourself")
    with state.lock:
        peer = state.live().get(name)
        if peer is None:
            abort(404, f"the broker has forgotten {name!r} (no heartbeat for {state.ttl_s:g} s); register again")
        peer.update(load=load, pending=0, seen=state.clock())
    return {"ok": True}


@identification.get("/peers")
def list_peers():
    kind, state = request.args.get("kind"), kit.state()
    with state.lock:
        found = [state.public(p) for p in state.live().values() if kind is None or p["kind"] == kind]
    return {"peers": sorted(found, key=lambda p: p["name"])}


@identification.get("/peers/<name>")
def look_up(name):
    state = kit.state()
    with state.lock:
        return state.public(state.find(name))


@identification.delete("/peers/<name>")
def leave(name):
    state = kit.state()
    if state.signed_in_as() != name:
        abort(403, f"only {name!r} itself may leave; send its own token")
    with state.lock:
        state.find(name)
        del state.peers[name]
    return {"ok": True}


# -- allocation ---------------------------------------------------------------------------------------

allocation = Blueprint("allocation", __name__)


@allocation.post("/allocate")
def allocate():
    kind = kit.name(kit.body('{"kind": "worker"}').get("kind"), "kind")
    return {"peer": kit.state().allocate(kind)}


# -- sign-in --------------------------------------------------------------------------------------------

sign_in = Blueprint("sign_in", __name__)


@sign_in.post("/login")
def login():
    body, state = kit.body('{"name": "alice", "secret": "..."}'), kit.state()
    token = state.sign_in(kit.name(body.get("name"), "name"), kit.text(body.get("secret"), "secret", limit=200))
    return {"token": token, "expires_in": int(state.token_ttl_s)}


@sign_in.post("/tokens")
def token_for_a_peer():
    body, state = kit.body('{"audience": "bob"}'), kit.state()
    audience = kit.name(body.get("audience"), "audience")
    claims = state.signed_in()
    if audience == state.name:
        abort(403, f"{audience!r} is the broker itself: its own tokens come from /register or /login, "
                   f"not from /tokens")
    token, seconds = state.issue(claims["sub"], audience, expires=claims["exp"])  # it never outlives the one shown
    return {"token": token, "expires_in": max(0, seconds), "audience": audience}


@sign_in.get("/.well-known/jwks.json")
def jwks():
    return kit.state().signer.jwks()


# -- relay -------------------------------------------------------------------------------------------------

relay = Blueprint("relay", __name__)
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH"]


@relay.route("/relay/<name>/", defaults={"rest": ""}, methods=_METHODS, endpoint="relay")  # counted as "relay"
@relay.route("/relay/<name>/<path:rest>", methods=_METHODS, endpoint="relay")
def forward(name, rest):
    state = kit.state()
    with state.lock:
        url = state.find(name)["url"]
    if not state.may_relay_to(url):
        abort(403, f"peer {name!r} is registered at a loopback or link-local address, and this broker listens "
                   f"beyond its own machine: relaying there would open the broker's host to anyone who registers")
    query = request.query_string.decode("latin-1")
    headers = {h: request.headers[h] for h in RELAYED_HEADERS if h in request.headers}
    return kit.forward(state.client, request.method, f"{url}/{rest}" + (f"?{query}" if query else ""),
                       service=f"peer {name!r}", data=request.get_data(), headers=headers)


# -- the broker itself -------------------------------------------------------------------------------------

broker = Blueprint("broker", __name__)


@broker.before_app_request
def count():
    state = kit.state()
    endpoint = request.url_rule.endpoint.rpartition(".")[2] if request.url_rule is not None else "unknown"
    with state.lock:
        state.counts[endpoint] += 1


@broker.get("/")
def index():
    state = kit.state()
    with state.lock:
        return {"service": "broker", "peers": len(state.live())}


@broker.get("/stats")
def stats():
    state = kit.state()
    with state.lock:
        by_job = dict(sorted(state.counts.items()))
    return {"requests": by_job, "total": sum(by_job.values())}


def create_app(*, name: str = "broker", secrets: dict | None = None, ttl_s: float = 30.0, token_ttl_s: float = 600.0,
               clock=time.monotonic, timeout_s: float = 5.0, signer: tokens.Signer | None = None, trace=None,
               policy: str = "least-loaded", count_allocations: bool = True, seed: int | None = 0,
               relay_local: bool | None = None):
    """A broker called ``name`` (see the module docstring for the options)."""
    state = Broker(name, secrets=secrets, ttl_s=ttl_s, token_ttl_s=token_ttl_s, clock=clock, timeout_s=timeout_s,
                   signer=signer, trace=trace, policy=policy, count_allocations=count_allocations, seed=seed,
                   relay_local=relay_local)
    return kit.make_app(name, state, broker, identification, allocation, sign_in, relay)
