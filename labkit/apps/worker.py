"""A worker for notebook 03: a peer that registers with the broker and does small jobs.

    GET  /          {"name", "kind", "jobs": n}
    GET  /hello     {"name", "kind"}: who answers at this address
    POST /jobs      {"numbers": [int, ...]} with "Authorization: Bearer TOKEN" (a token the broker
                    signed for this worker: its audience is the worker's name) -> {"by": this worker,
                    "for": the token's owner, "sum": ...}; 401 without a valid token
    GET  /stats     {"jobs": n} jobs done so far

The worker checks tokens itself, with the broker's public key: it fetches the broker's
key set (``/.well-known/jwks.json``) on first need, and again only when a token names a
key it has not seen, so signed-in callers keep working while the broker is away. It
accepts only tokens whose audience (``aud``) is its own name: a token alice got for bob
is refused by carol, so bob cannot replay it there. The key set comes over plain HTTP
from whatever answers at the broker's address, and the worker believes every fetch: each
one replaces the keys it had (nothing is pinned), and anyone can make it fetch again, at
most every ``keys_refetch_s`` seconds (default 30), by sending a token that names an unknown key id.

Being a peer of the broker (registering, sending heartbeats with its load, leaving) is
:class:`Member`'s job; :func:`start` serves a worker and makes it a member in one call::

    bob = worker.start("bob", broker.url, "bob-secret", load=2)   # doctest: +SKIP
    bob.load = 5            # reported at the next heartbeat
    bob.token_for("carol")  # a token that carol (and only carol) accepts from bob
    bob.stop()              # leaves the broker, stops heartbeats and the server

As its own process: ``LABKIT_PEER_NAME=bob LABKIT_PEER_SECRET=s LABKIT_BROKER_URL=http://A:5001
LABKIT_PEER_URL=http://B:5002 python -m labkit serve worker --host 0.0.0.0 --port 5002``
registers at the broker and sends heartbeats until the process ends.
"""

from __future__ import annotations

import os
import threading
import time

import jwt
import requests
from flask import Blueprint, abort, request

from .. import server as _server
from ..client import Client
from ..errors import Invalid, KeysUnavailable
from . import kit, tokens
from .broker import audience_of, wrong_audience

MAX_NUMBERS = 1000


class WorkerState:
    """A worker's state: its name and kind, the broker's keys, its job count, and its membership (if any)."""

    def __init__(self, name: str, kind: str, broker_url: str | None, timeout_s: float, trace,
                 keys_refetch_s: float = 30.0):
        self.name, self.kind = kit.name(name, "a worker's name"), kit.name(kind, "kind")
        self.client = Client(name, timeout=kit.positive(timeout_s, "timeout_s", 60), trace=trace)
        self.broker_url = broker_url.rstrip("/") if broker_url else None
        refetch_s = kit.positive(keys_refetch_s, "keys_refetch_s", 10**7)
        self.keys = (tokens.KeySet(self.broker_url + "/.well-known/jwks.json", self.client, refetch_s=refetch_s)
                     if broker_url else None)
        self.jobs = 0
        self.member: Member | None = None
        self._lock = threading.Lock()

    def caller(self, token: str | None) -> str:
        """Who a valid token says signed in, or the refusal (401; 503 without the broker's keys)."""
        if token is None:
            abort(401, 'send a token from the broker in an "Authorization: Bearer TOKEN" header')
        if self.keys is None:
            abort(503, "this worker knows no broker, so it trusts no token")
        try:
            return tokens.verify(token, self.keys, audience=self.name)["sub"]
        except KeysUnavailable:
            abort(503, "this worker does not have the broker's public key yet, so it trusts no token; "
                       "try again when the broker is reachable")
        except jwt.InvalidTokenError as error:
            if wrong_audience(error):
                abort(401, f"this token is for {audience_of(token)}, not for {self.name!r}: ask the broker for a "
                           f"token for {self.name!r} (POST /tokens)")
            abort(401, f"the token is not valid ({error}); sign in at the broker again")

    def did_a_job(self) -> int:
        with self._lock:
            self.jobs += 1
            return self.jobs

    def close(self) -> None:
        if self.member is not None:
            self.member.stop(leave=False)
        self.client.close()


routes = Blueprint("worker", __name__)


@routes.get("/")
def index():
    state = kit.state()
    return {"name": state.name, "kind": state.kind, "jobs": state.jobs}


@routes.get("/hello")
def hello():
    state = kit.state()
    return {"name": state.name, "kind": state.kind}


@routes.get("/stats")
def stats():
    return {"jobs": kit.state().jobs}


@routes.post("/jobs")
def jobs():
    state = kit.state()
    caller = state.caller(tokens.bearer(request.headers))
    numbers = kit.body('{"numbers": [1, 2, 3]}').get("numbers")
    if (not isinstance(numbers, list) or len(numbers) > MAX_NUMBERS
            or not all(isinstance(n, int) and not isinstance(n, bool) and abs(n) < 10**15 for n in numbers)):
        raise Invalid(f'send JSON {{"numbers": [1, 2, 3]}}: a list of at most {MAX_NUMBERS} whole numbers '
                      f"(below 10**15 in size)")
    state.did_a_job()
    return {"by": state.name, "sum": sum(numbers), "for": caller}


def create_app(*, name: str | None = None, kind: str | None = None, broker_url: str | None = None,
               timeout_s: float = 2.0, trace=None, keys_refetch_s: float = 30.0):
    """A worker called ``name`` that trusts tokens signed by the broker at ``broker_url``.

    ``keys_refetch_s``: the least time between two fetches of the broker's key set (a token
    with an unknown key id makes it fetch again only that long after the last fetch).

    Unset options come from LABKIT_PEER_NAME, LABKIT_PEER_KIND and LABKIT_BROKER_URL. With
    LABKIT_PEER_URL and LABKIT_PEER_SECRET set too (its own process), it registers at the
    broker and sends heartbeats until its server stops.
    """
    state = WorkerState(name or os.environ.get("LABKIT_PEER_NAME", "worker"),
                        kind or os.environ.get("LABKIT_PEER_KIND", "worker"),
                        broker_url or os.environ.get("LABKIT_BROKER_URL"), timeout_s, trace, keys_refetch_s)
    if state.keys is not None and os.environ.get("LABKIT_PEER_URL") and os.environ.get("LABKIT_PEER_SECRET"):
        state.member = Member(None, state.broker_url, os.environ["LABKIT_PEER_SECRET"],
                              name=state.name, kind=state.kind, url=os.environ["LABKIT_PEER_URL"], heartbeat_s=5.0,
                              trace=trace, must_register=False)
    return kit.make_app(state.name, state, routes)


class Member:
    """A peer's membership of a broker: registers now, then a daemon thread sends heartbeats.

    ``server`` is the peer's labkit server (its URL is registered unless ``url`` is
    given; heartbeats end when it stops). ``load`` is reported at every heartbeat
    and may be changed at any time. If the broker has forgotten the peer (a 404 to a
    heartbeat), the member registers again. Its token for the broker is renewed (by
    registering again, with its secret) once less than a tenth of its life is left, at
    the next heartbeat or :meth:`token_for`, so the tokens it gets for peers have most
    of their life ahead; while the broker is unreachable nothing can be renewed.
    ``stop()`` ends the heartbeats and, with ``leave=True``, tells the broker at once;
    a peer that crashes never does.
    """

    def __init__(self, server, broker_url: str, secret: str, *, name: str | None = None, kind: str = "worker",
                 url: str | None = None, load: int = 0, heartbeat_s: float = 1.0, trace=None,
                 must_register: bool = True):
        self.server, self.broker_url = server, broker_url.rstrip("/")
        self.name = name or server.name
        self.kind, self.secret, self.load, self.heartbeat_s = kind, secret, load, heartbeat_s
        self.url = url or server.url
        self.token: str | None = None  # for the broker itself: heartbeats, leaving, getting tokens for peers
        self._renew_at = float("inf")  # when (time.time()) the broker's token should be renewed
        self.heartbeats = 0  # heartbeats the broker accepted
        self._tokens: dict[str, tuple[str, float]] = {}  # audience -> (token, when it expires)
        self._tokens_lock = threading.Lock()
        self._client = Client(self.name, timeout=max(0.5, min(2.0, heartbeat_s)), trace=trace)
        self._stopping = threading.Event()
        try:
            self._register()
        except requests.exceptions.RequestException:
            if must_register:
                self._client.close()
                raise
        self._thread = threading.Thread(target=self._beat, name=f"labkit-heartbeat-{self.name}", daemon=True)
        self._thread.start()

    def _register(self, client=None) -> None:
        answer = (client or self._client).post(self.broker_url + "/register", json={
            "name": self.name, "kind": self.kind, "url": self.url, "secret": self.secret, "load": self.load})
        answer.raise_for_status()
        token, now = answer.json()["token"], time.time()
        try:  # its own token: read, not checked, to know when to renew it
            claims = jwt.decode(token, options={"verify_signature": False})
            life = float(claims["exp"]) - float(claims["iat"])
        except (jwt.InvalidTokenError, KeyError, TypeError, ValueError):
            life = float("inf")
        self.token, self._renew_at = token, now + 0.9 * life

    def _token_fresh(self) -> bool:
        """Whether the broker's token has more than a tenth of its life left."""
        return self.token is not None and time.time() < self._renew_at

    def forget_tokens(self) -> None:
        """Drop the tokens kept for peers: the next :meth:`token_for` of each asks the broker again."""
        with self._tokens_lock:
            self._tokens.clear()

    def token_for(self, audience: str) -> str:
        """A token saying this is its peer, for the peer called ``audience`` only (POST /tokens at the broker).

        Kept and given again while it has more than a tenth of its life (and at least a second) left.
        """
        with self._tokens_lock:
            token, expires = self._tokens.get(audience, (None, 0.0))
            if token is not None and expires - time.time() > 1.0:
                return token
        with Client(self.name, timeout=2, trace=self._client.trace) as client:
            for attempt in range(2):
                if not self._token_fresh():
                    self._register(client)
                answer = client.post(self.broker_url + "/tokens", json={"audience": audience},
                                     headers={"Authorization": f"Bearer {self.token}"})
                if answer.status_code != 401 or attempt:
                    break
                self.token = None  # the broker's token expired (or the broker was restarted): sign in again
            answer.raise_for_status()
        body = answer.json()
        with self._tokens_lock:
            # reuse it until a tenth of its life is left
            self._tokens[audience] = (body["token"], time.time() + 0.9 * body["expires_in"])
        return body["token"]

    def _beat(self) -> None:
        try:
            while not self._stopping.wait(self.heartbeat_s):
                if self.server is not None and not self.server.running:
                    return  # the peer's server stopped: so does its heartbeat
                try:
                    if not self._token_fresh():  # none yet, or near its expiry: sign in again
                        self._register()
                        continue
                    answer = self._client.post(self.broker_url + "/heartbeat", json={"name": self.name, "load": self.load},
                                               headers={"Authorization": f"Bearer {self.token}"})
                    if answer.status_code in (401, 404):  # forgotten, or the token expired
                        self._register()
                    elif answer.ok:
                        self.heartbeats += 1
                except requests.exceptions.RequestException:
                    pass  # the broker is away; try again at the next beat
        finally:
            self._client.close()

    def stop(self, *, leave: bool = True) -> None:
        """Stop the heartbeats (and wait for their thread); with ``leave``, deregister at once."""
        self._stopping.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)
        if leave and self.token:
            with Client(self.name, timeout=1, trace=self._client.trace) as client:
                try:
                    client.delete(f"{self.broker_url}/peers/{self.name}",
                                  headers={"Authorization": f"Bearer {self.token}"})
                except requests.exceptions.RequestException:
                    pass

    def __enter__(self) -> "Member":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Member {self.name!r} of {self.kind!r}, load {self.load}>"


class Worker:
    """A served worker and its membership: ``name``, ``url``, ``server``, ``member``, ``load``."""

    def __init__(self, server, member: Member):
        self.server, self.member = server, member
        self.name, self.url = server.name, server.url

    @property
    def load(self) -> int:
        return self.member.load

    @load.setter
    def load(self, value: int) -> None:
        self.member.load = value

    @property
    def token(self) -> str | None:
        """The token for the broker (heartbeats, leaving); calls to other peers need :meth:`token_for`."""
        return self.member.token

    def token_for(self, audience: str) -> str:
        """A token the peer called ``audience`` accepts from this worker (see :meth:`Member.token_for`)."""
        return self.member.token_for(audience)

    def stop(self, *, leave: bool = True) -> None:
        """Stop: leave the broker (unless ``leave=False``, a crash), end heartbeats, stop the server."""
        self.member.stop(leave=leave)
        self.server.stop()

    def __enter__(self) -> "Worker":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Worker {self.name!r} {'running' if self.server.running else 'stopped'}>"


def start(name: str, broker_url: str, secret: str, *, kind: str = "worker", load: int = 0,
          heartbeat_s: float = 1.0, trace=None) -> Worker:
    """Serve a worker called ``name`` and register it at the broker; heartbeats every ``heartbeat_s``."""
    app = create_app(name=name, kind=kind, broker_url=broker_url, trace=trace)
    server = _server.serve(app, name=name, trace=trace)
    try:
        member = Member(server, broker_url, secret, name=name, kind=kind, load=load,
                        heartbeat_s=heartbeat_s, trace=trace)
    except BaseException:
        server.stop()
        raise
    return Worker(server, member)
