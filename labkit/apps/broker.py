"""A broker for notebook 03: who is there, who gets the job, and who is who.

    GET    /                      {"service": "broker", "peers": n}
    GET    /key                   {"algorithm": "RS256", "public_key": PEM}: peers check tokens with it
    POST   /login                 {"name", "secret"} -> {"token", "expires_in"}       (central sign-in)
    POST   /register              {"name", "kind", "url", "secret", "load"?} -> 201 {"token", "ttl_s"}
    POST   /heartbeat             {"name", "load"} with "Authorization: Bearer TOKEN" -> {"ok": true};
                                  404 once the broker has forgotten the peer (register again)
    GET    /peers?kind=K          {"peers": [{"name", "kind", "url", "load"}, ...]} the live ones, by name
    GET    /peers/NAME            one live peer, or 404
    DELETE /peers/NAME            with that peer's token: leave at once
    POST   /allocate              {"kind"} -> {"peer": {...}} the least-loaded live peer of that kind
    ANY    /relay/NAME/PATH       the broker forwards the request to peer NAME and returns its answer
    GET    /stats                 {"requests": {what: count}, "total": n} what the broker has handled

The three jobs of a broker, in one service:

- *identification*: peers register (name, kind, address) and send heartbeats; a peer
  whose last heartbeat is older than ``ttl_s`` seconds is forgotten;
- *allocation*: ``/allocate`` picks the live peer of a kind with the least load (the load
  it last reported, plus the jobs allocated to it since), ties broken by name;
- *sign-in*: a peer proves who it is once, with the secret the broker was started with,
  and gets a token signed with the broker's private key. Other peers check the token with
  the public key (``GET /key``, fetched once) without asking the broker again.

Options of :func:`create_app`: ``secrets`` ({name: secret}; None lets any name in and fixes
its secret at its first sign-in), ``ttl_s``, ``token_ttl_s``, ``clock`` (a function giving
seconds, for tests that must not sleep), ``relay_timeout_s``, ``trace`` (where the broker's
own relayed calls are recorded), ``node`` (the broker's name on diagrams), ``private_key``.

Expiry is lazy: the broker looks at heartbeat ages whenever it answers, so it needs no
background thread.
"""

from __future__ import annotations

import collections
import re
import threading
import time

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask, Response, jsonify, request

from ..client import Client
from ..server import ON_STOP
from ._errors import json_errors

ALGORITHM = "RS256"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAX_LOAD = 1_000_000
#: request headers the broker passes on when it relays (the rest are its own business)
_RELAYED_HEADERS = ("Authorization", "Content-Type", "Accept")


class _Rejected(Exception):
    """A request the broker refuses: ``status`` and a sentence for the caller."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def new_private_key() -> rsa.RSAPrivateKey:
    """A fresh 2048-bit RSA key (what a broker signs its tokens with)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private_key: rsa.RSAPrivateKey) -> str:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def verify(token: str, public_key) -> dict:
    """The claims of a token the broker signed; raises jwt.InvalidTokenError if forged, altered or expired."""
    return jwt.decode(token, public_key, algorithms=[ALGORITHM], options={"require": ["sub", "exp"]})


def bearer(headers) -> str | None:
    """The token of an "Authorization: Bearer TOKEN" header, or None."""
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _body() -> dict:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise _Rejected(400, "send a JSON object as the body, such as {\"name\": \"alice\", ...}")
    return body


def _text(body: dict, field: str, *, pattern=None, limit: int = 200) -> str:
    value = body.get(field)
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _Rejected(400, f"{field} must be a string of 1 to {limit} characters, not {_short(value)}")
    if pattern is not None and not pattern.match(value):
        raise _Rejected(400, f"{field} {_short(value)} may hold only letters, digits, '.', '_' and '-' "
                             f"(up to 64, starting with a letter or digit)")
    return value


def _load(body: dict, default=None) -> int:
    value = body.get("load", default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_LOAD:
        raise _Rejected(400, f"load must be a whole number from 0 to {_MAX_LOAD}, not {_short(value)}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def create_app(*, secrets: dict | None = None, ttl_s: float = 30.0, token_ttl_s: float = 600.0,
               clock=time.monotonic, relay_timeout_s: float = 5.0, trace=None, node: str = "broker",
               private_key=None) -> Flask:
    if secrets is not None and not all(isinstance(k, str) and isinstance(v, str) and v for k, v in secrets.items()):
        raise ValueError("secrets maps each peer name (a string) to its secret (a non-empty string)")
    for option, value in (("ttl_s", ttl_s), ("token_ttl_s", token_ttl_s), ("relay_timeout_s", relay_timeout_s)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{option} must be a positive number of seconds, not {value!r}")
    name = node
    app = json_errors(Flask(name))
    key = private_key if private_key is not None else new_private_key()
    public_key = key.public_key()
    known_secrets = dict(secrets) if secrets is not None else {}
    open_door = secrets is None
    peers: dict[str, dict] = {}  # name -> {"name", "kind", "url", "load", "pending", "seen"}
    counts: collections.Counter = collections.Counter()
    lock = threading.Lock()
    relay_client = Client(name, timeout=relay_timeout_s, trace=trace)
    app.extensions["broker"] = {"public_key": public_key}
    app.extensions[ON_STOP] = [relay_client.close]  # its server closes the relay's kept-alive connections

    def live() -> dict[str, dict]:
        """Forget peers whose last heartbeat is too old; the rest. Call with the lock held."""
        now = clock()
        for peer_name in [n for n, p in peers.items() if now - p["seen"] > ttl_s]:
            del peers[peer_name]
        return peers

    def public(peer: dict) -> dict:
        return {"name": peer["name"], "kind": peer["kind"], "url": peer["url"], "load": peer["load"]}

    def sign_in(body: dict) -> str:
        peer_name = _text(body, "name", pattern=_NAME)
        secret = _text(body, "secret")
        with lock:
            if peer_name not in known_secrets:
                if not open_door:
                    raise _Rejected(401, f"the broker knows no peer named {peer_name!r}; "
                                         f"use a name it was started with")
            elif known_secrets[peer_name] != secret:
                raise _Rejected(401, f"wrong secret for {peer_name!r}; send the secret the broker was given for it")
        return peer_name

    def issue(peer_name: str) -> str:
        now = int(time.time())
        return jwt.encode({"sub": peer_name, "iss": name, "iat": now, "exp": now + int(token_ttl_s)},
                          key, algorithm=ALGORITHM)

    def signed_in_as() -> str:
        token = bearer(request.headers)
        if token is None:
            raise _Rejected(401, 'send your token in an "Authorization: Bearer TOKEN" header')
        try:
            return verify(token, public_key)["sub"]
        except jwt.InvalidTokenError as error:
            raise _Rejected(401, f"the token is not valid ({error}); sign in again") from error

    @app.errorhandler(_Rejected)
    def rejected(error: _Rejected):
        return jsonify(error=error.message), error.status

    @app.before_request
    def count():
        endpoint = request.url_rule.endpoint if request.url_rule is not None else "unknown"
        with lock:
            counts[endpoint] += 1

    @app.get("/")
    def index():
        with lock:
            return jsonify(service="broker", peers=len(live()))

    @app.get("/key")
    def public_key_pem():
        return jsonify(algorithm=ALGORITHM, public_key=public_pem(key))

    @app.post("/login")
    def login():
        body = _body()
        peer_name = sign_in(body)
        with lock:
            known_secrets.setdefault(peer_name, body["secret"])
        return jsonify(token=issue(peer_name), expires_in=int(token_ttl_s))

    @app.post("/register")
    def register():
        body = _body()
        peer_name = sign_in(body)
        kind = _text(body, "kind", pattern=_NAME)
        url = _text(body, "url").rstrip("/")
        if not re.match(r"^https?://[^\s/]+(/[^\s]*)?$", url):
            raise _Rejected(400, f"url must be the peer's address, such as \"http://127.0.0.1:5002\", not {_short(url)}")
        load = _load(body, 0)
        with lock:
            known_secrets.setdefault(peer_name, body["secret"])
            live()
            peers[peer_name] = {"name": peer_name, "kind": kind, "url": url, "load": load,
                                "pending": 0, "seen": clock()}
        return jsonify(token=issue(peer_name), ttl_s=ttl_s), 201

    @app.post("/heartbeat")
    def heartbeat():
        body = _body()
        peer_name = _text(body, "name", pattern=_NAME)
        load = _load(body)
        if signed_in_as() != peer_name:
            raise _Rejected(403, f"your token is not {peer_name!r}'s; send heartbeats only for yourself")
        with lock:
            peer = live().get(peer_name)
            if peer is None:
                raise _Rejected(404, f"the broker has forgotten {peer_name!r} (no heartbeat for {ttl_s:g} s); "
                                     f"register again")
            peer.update(load=load, pending=0, seen=clock())
        return jsonify(ok=True)

    @app.get("/peers")
    def list_peers():
        kind = request.args.get("kind")
        with lock:
            found = [public(p) for p in live().values() if kind is None or p["kind"] == kind]
        return jsonify(peers=sorted(found, key=lambda p: p["name"]))

    @app.get("/peers/<peer_name>")
    def look_up(peer_name):
        with lock:
            peer = live().get(peer_name)
            if peer is None:
                raise _Rejected(404, f"no live peer named {peer_name!r}; GET /peers lists those there are")
            return jsonify(public(peer))

    @app.delete("/peers/<peer_name>")
    def leave(peer_name):
        if signed_in_as() != peer_name:
            raise _Rejected(403, f"only {peer_name!r} itself may leave; send its own token")
        with lock:
            if live().pop(peer_name, None) is None:
                raise _Rejected(404, f"no live peer named {peer_name!r}")
        return jsonify(ok=True)

    @app.post("/allocate")
    def allocate():
        kind = _text(_body(), "kind", pattern=_NAME)
        with lock:
            candidates = [p for p in live().values() if p["kind"] == kind]
            if not candidates:
                raise _Rejected(404, f"no live peer of kind {kind!r}; GET /peers lists those there are")
            chosen = min(candidates, key=lambda p: (p["load"] + p["pending"], p["name"]))
            chosen["pending"] += 1  # until its next heartbeat tells the truth
            return jsonify(peer=public(chosen))

    @app.route("/relay/<peer_name>/", defaults={"rest": ""},
               methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    @app.route("/relay/<peer_name>/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def relay(peer_name, rest):
        with lock:
            peer = live().get(peer_name)
            url = peer["url"] if peer is not None else None
        if url is None:
            raise _Rejected(404, f"no live peer named {peer_name!r} to relay to; GET /peers lists those there are")
        headers = {h: request.headers[h] for h in _RELAYED_HEADERS if h in request.headers}
        try:
            query = request.query_string.decode("latin-1")
            answer = relay_client.request(request.method, f"{url}/{rest}" + (f"?{query}" if query else ""),
                                          data=request.get_data(), headers=headers)
        except requests.exceptions.Timeout:
            return jsonify(error=f"peer {peer_name!r} did not answer the relayed request within "
                                 f"{relay_timeout_s:g} s"), 504
        except requests.exceptions.RequestException:
            return jsonify(error=f"the broker could not reach peer {peer_name!r}"), 502
        return Response(answer.content, status=answer.status_code,
                        content_type=answer.headers.get("Content-Type", "application/json"))

    @app.get("/stats")
    def stats():
        with lock:
            by_job = dict(sorted(counts.items()))
        return jsonify(requests=by_job, total=sum(by_job.values()))

    return app
