"""A broker for notebook 03: who is there, who gets the job, and who is who.

    GET    /                      {"service": "broker", "peers": n}
    POST   /register              {"name", "kind", "url", "secret", "load"?} -> 201 {"token", "ttl_s"}
    POST   /heartbeat             {"name", "load"} with "Authorization: Bearer TOKEN" -> {"ok": true};
                                  404 once the broker has forgotten the peer (register again)
    GET    /peers?kind=K          {"peers": [{"name", "kind", "url", "load"}, ...]} the live ones, by name
    GET    /peers/NAME            one live peer, or 404
    DELETE /peers/NAME            with that peer's token: leave at once
    POST   /allocate              {"kind"} -> {"peer": {...}} the least-loaded live peer of that kind
    POST   /login                 {"name", "secret"} -> {"token", "expires_in"}       (central sign-in)
    GET    /.well-known/jwks.json the public key peers check tokens with (a JSON Web Key Set)
    ANY    /relay/NAME/PATH       the broker forwards the request to peer NAME and returns its answer
    GET    /stats                 {"requests": {what: count}, "total": n} what the broker has handled

The broker's jobs, each a Blueprint of its own:

- *identification*: peers register (name, kind, address) and send heartbeats; a peer
  whose last heartbeat is older than ``ttl_s`` seconds is forgotten;
- *allocation*: ``/allocate`` picks the live peer of a kind with the least load (the load
  it last reported, plus the jobs allocated to it since), ties broken by name;
- *sign-in*: a peer proves who it is once, with the secret the broker was started with,
  and gets a token signed with the broker's private key (RS256). Other peers check the
  token with the public key (fetched once from the key set) without asking the broker;
- *relay*: a caller that cannot reach a peer directly sends through the broker.

Options of :func:`create_app`: ``secrets`` ({name: secret}; None lets any name in and fixes
its secret at its first sign-in), ``ttl_s``, ``token_ttl_s``, ``clock`` (seconds; a
ManualClock for tests that must not sleep), ``timeout_s`` (of a relayed call), ``trace``
(where the broker's relayed calls are recorded), ``signer`` (a tokens.Signer to sign with).

Expiry is lazy: the broker looks at heartbeat ages whenever it answers, so it needs no
background thread.
"""

from __future__ import annotations

import collections
import threading
import time

import jwt
from flask import Blueprint, abort, request

from ..client import Client
from ..errors import Invalid
from . import kit, tokens

MAX_LOAD = 1_000_000
#: request headers the broker passes on when it relays (the rest are its own business)
RELAYED_HEADERS = ("Authorization", "Content-Type", "Accept")


class Broker:
    """The broker's state: live peers, secrets, its signer, its relay client and request counts."""

    def __init__(self, name: str, *, secrets: dict | None, ttl_s: float, token_ttl_s: float, clock, timeout_s: float,
                 signer: tokens.Signer | None, trace):
        if secrets is not None and not all(isinstance(k, str) and isinstance(v, str) and v
                                           for k, v in secrets.items()):
            raise Invalid("secrets maps each peer name (a string) to its secret (a non-empty string)")
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

    def sign_in(self, name: str, secret: str) -> str:
        """A token for ``name`` if ``secret`` is its secret (an open broker learns it now), else 401."""
        with self.lock:
            if name not in self.secrets and not self.open_door:
                abort(401, f"the broker knows no peer named {name!r}; use a name it was started with")
            if self.secrets.setdefault(name, secret) != secret:
                abort(401, f"wrong secret for {name!r}; send the secret the broker was given for it")
        now = int(time.time())
        return self.signer.sign({"sub": name, "iss": self.name, "iat": now, "exp": now + int(self.token_ttl_s)})

    def signed_in_as(self) -> str:
        """Who the request's token says it is, or 401."""
        token = tokens.bearer(request.headers)
        if token is None:
            abort(401, 'send your token in an "Authorization: Bearer TOKEN" header')
        try:
            key = self.signer.secret if self.signer.public_key is None else self.signer.public_key
            return tokens.verify(token, key, algorithm=self.signer.algorithm)["sub"]
        except jwt.InvalidTokenError as error:
            abort(401, f"the token is not valid ({error}); sign in again")

    def close(self) -> None:
        self.client.close()


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
    kind, state = kit.name(kit.body('{"kind": "worker"}').get("kind"), "kind"), kit.state()
    with state.lock:
        candidates = [p for p in state.live().values() if p["kind"] == kind]
        if not candidates:
            abort(404, f"no live peer of kind {kind!r}; GET /peers lists those there are")
        chosen = min(candidates, key=lambda p: (p["load"] + p["pending"], p["name"]))
        chosen["pending"] += 1  # until its next heartbeat tells the truth
        return {"peer": state.public(chosen)}


# -- sign-in --------------------------------------------------------------------------------------------

sign_in = Blueprint("sign_in", __name__)


@sign_in.post("/login")
def login():
    body, state = kit.body('{"name": "alice", "secret": "..."}'), kit.state()
    token = state.sign_in(kit.name(body.get("name"), "name"), kit.text(body.get("secret"), "secret", limit=200))
    return {"token": token, "expires_in": int(state.token_ttl_s)}


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
               clock=time.monotonic, timeout_s: float = 5.0, signer: tokens.Signer | None = None, trace=None):
    """A broker called ``name`` (see the module docstring for the options)."""
    state = Broker(name, secrets=secrets, ttl_s=ttl_s, token_ttl_s=token_ttl_s, clock=clock, timeout_s=timeout_s,
                   signer=signer, trace=trace)
    return kit.make_app(name, state, broker, identification, allocation, sign_in, relay)
