"""The sign-in service for notebook 06: it checks passwords and issues signed tokens.

    POST /login                  {"username", "password", "audience"?} ->
                                 {"token", "token_type": "Bearer", "expires_in"};
                                 401 wrong username or password (the same answer for both);
                                 429 with Retry-After after too many failures
    POST /users                  {"username", "password"} -> 201 {"username", "roles": ["reader"]};
                                 409 if the name is taken
    GET  /public-key             {"alg", "kid", "pem"}: the public key that verifies its tokens
                                 (404 when it signs with a shared secret, HS256)
    GET  /.well-known/jwks.json  {"keys": [...]}: the same key as a JSON Web Key Set

A token is a JWT with the claims ``sub`` (who), ``roles`` (what they may do),
``aud`` (which service it is for), ``iss`` (who issued it), ``iat`` and ``exp``
(when it was issued and when it stops being valid). Other services verify it
with the public key alone: they never call this service for each request.

Passwords are stored as Argon2id hashes (argon2-cffi): salted, slow, and
memory-hard, with the cost and salt written into each stored hash. Argon2id won
the Password Hashing Competition and is the first choice of OWASP's password
storage guide; ``check_needs_rehash`` lets the cost rise later without a reset.
The cost is tunable (``time_cost``, ``memory_kib``, ``parallelism``) so tests can
run fast (:data:`FAST_HASHING`); the default is the secure RFC 9106 profile.

The signing key (or secret) is made when the app is created, kept only in
memory, and never written anywhere: restart the service and every token it
issued stops verifying.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import secrets
import threading
import time

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from flask import Flask, jsonify, request

from ._errors import json_errors

#: Hashing settings for tests and demos that need speed, not safety.
FAST_HASHING = {"time_cost": 1, "memory_kib": 64, "parallelism": 1}

#: The users a new service knows: name -> (password, roles). Demo passwords, never real ones.
DEMO_USERS = {
    "alice": ("correct horse battery", ["reader", "writer"]),
    "bob": ("bob's long password", ["reader"]),
    "carol": ("carol is the admin", ["reader", "writer", "admin"]),
}

ALGORITHMS = ("EdDSA", "RS256", "HS256")


class Clock:
    """A clock a test or a notebook moves by hand: ``clock()`` gives seconds, ``advance(s)`` moves it.

        >>> clock = Clock(start=1000.0)
        >>> clock.advance(30); clock()
        1030.0
    """

    def __init__(self, start: float | None = None):
        self._now = time.time() if start is None else float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class Authority:
    """The keys and the rules of issuing: signs claims into tokens.

    ``public_pem`` is what verifiers need (None with HS256, where ``secret`` both
    signs and verifies and must therefore be shared with every verifier).
    """

    def __init__(self, algorithm: str = "EdDSA", issuer: str = "labkit-auth", ttl_s: float = 600,
                 clock=time.time):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        self.algorithm, self.issuer, self.ttl_s, self.clock = algorithm, issuer, ttl_s, clock
        self.secret: str | None = None
        self.public_pem: str | None = None
        if algorithm == "HS256":
            self._signing_key = self.secret = secrets.token_hex(32)  # 256 random bits
            self.kid = hashlib.sha256(self.secret.encode()).hexdigest()[:12]
            return
        if algorithm == "EdDSA":
            self._signing_key = ed25519.Ed25519PrivateKey.generate()
        else:
            self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = self._signing_key.public_key()
        self._public = public
        self.public_pem = public.public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = hashlib.sha256(der).hexdigest()[:12]

    def sign(self, claims: dict, headers: dict | None = None) -> str:
        """A token holding exactly ``claims``, signed with this authority's key."""
        return jwt.encode(claims, self._signing_key, algorithm=self.algorithm,
                          headers={"kid": self.kid, **(headers or {})})

    def issue(self, username: str, roles: list[str], audience: str) -> str:
        """The token of a user who just signed in: sub, roles, aud, iss, iat, exp."""
        now = int(self.clock())
        return self.sign({"sub": username, "roles": list(roles), "aud": audience, "iss": self.issuer,
                          "iat": now, "exp": now + int(self.ttl_s)})

    def jwk(self) -> dict | None:
        """The public key as a JSON Web Key (None with HS256)."""
        if self.public_pem is None:
            return None
        algorithm = jwt.algorithms.get_default_algorithms()[self.algorithm]
        key = json.loads(algorithm.to_jwk(self._public))
        return {**key, "kid": self.kid, "alg": self.algorithm, "use": "sig"}


class Users:
    """Users, their roles and their password hashes; thread-safe."""

    def __init__(self, hasher: PasswordHasher):
        self.hasher = hasher
        self._hashes: dict[str, str] = {}
        self._roles: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        # Unknown names are checked against this, so they cost as long as known ones.
        self._dummy = hasher.hash(secrets.token_hex(16))

    def add(self, username: str, password: str, roles) -> bool:
        """Add a user; False if the name is taken."""
        stored = self.hasher.hash(password)  # slow: outside the lock
        with self._lock:
            if username in self._hashes:
                return False
            self._hashes[username], self._roles[username] = stored, list(roles)
            return True

    def check(self, username: str, password: str) -> list[str] | None:
        """The user's roles if the password is right, else None (unknown users take as long)."""
        with self._lock:
            stored = self._hashes.get(username)
        try:
            self.hasher.verify(stored or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return None
        if stored is None:
            return None
        if self.hasher.check_needs_rehash(stored):  # the cost was raised since: store the new hash
            with self._lock:
                self._hashes[username] = self.hasher.hash(password)
        with self._lock:
            return list(self._roles[username])

    def stored(self, username: str) -> str:
        """What the service keeps for ``username``: the hash, never the password."""
        with self._lock:
            return self._hashes[username]

    def __len__(self) -> int:
        with self._lock:
            return len(self._hashes)


class Limiter:
    """Counts failed sign-ins per key; after ``max_failures`` the key waits ``lockout_s`` seconds."""

    def __init__(self, clock=time.time):
        self.clock = clock
        self._failures: dict[tuple, int] = {}
        self._until: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys) -> float:
        """Seconds until all of ``keys`` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            return max([self._until.get(key, now) - now for key in keys] + [0.0])

    def failed(self, key: tuple, max_failures: int, lockout_s: float) -> None:
        with self._lock:
            count = self._failures.get(key, 0) + 1
            if count >= max_failures:
                self._until[key] = self.clock() + lockout_s
                count = 0
            self._failures[key] = count

    def succeeded(self, key: tuple) -> None:
        with self._lock:
            self._failures.pop(key, None)
            self._until.pop(key, None)


def _text(body: dict, field: str, *, low: int, high: int) -> str | None:
    value = body.get(field)
    if isinstance(value, str) and low <= len(value) <= high:
        return value
    return None


def create_app(*, users: dict | None = None, algorithm: str = "EdDSA", issuer: str = "labkit-auth",
               audiences=("notes", "billing"), token_ttl_s: float = 600,
               time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4,
               max_failures: int = 5, max_client_failures: int = 50, lockout_s: float = 60,
               clock=time.time) -> Flask:
    """A sign-in service.

    ``users``: name -> (password, roles) (default :data:`DEMO_USERS`); ``algorithm``:
    "EdDSA" (Ed25519), "RS256" or "HS256" (a shared secret); ``audiences``: the
    services it issues tokens for (the first is the default); ``token_ttl_s``:
    how long a token stays valid. ``time_cost``, ``memory_kib``, ``parallelism``:
    the Argon2id cost (``**FAST_HASHING`` for tests). After ``max_failures``
    wrong passwords for one user, or ``max_client_failures`` from one address,
    sign-ins wait ``lockout_s`` seconds (429). ``clock()`` gives the time in
    seconds (:class:`Clock` for tests). The app's ``extensions["auth"]`` holds
    the :class:`Authority`, :class:`Users` and :class:`Limiter`.
    """
    audiences = tuple(audiences)
    if not audiences or not all(isinstance(a, str) and a for a in audiences):
        raise ValueError(f"audiences must be non-empty strings, not {audiences!r}")
    app = json_errors(Flask("auth"))
    authority = Authority(algorithm, issuer, token_ttl_s, clock)
    store = Users(PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism))
    for name, (password, roles) in (DEMO_USERS if users is None else users).items():
        store.add(name, password, roles)
    limiter = Limiter(clock)
    app.extensions["auth"] = {"authority": authority, "users": store, "limiter": limiter}

    def unauthorized(message: str):
        response = jsonify(error=message)
        response.headers["WWW-Authenticate"] = f'Bearer realm="{issuer}"'
        return response, 401

    @app.post("/login")
    def login():
        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        username = _text(body, "username", low=1, high=64)
        password = _text(body, "password", low=1, high=256)
        audience = body.get("audience", audiences[0])
        if username is None or password is None:
            return jsonify(error='send JSON {"username": "...", "password": "..."} with two non-empty strings '
                                 "(at most 64 and 256 characters)"), 400
        if audience not in audiences:
            return jsonify(error=f"audience {audience!r} is not a service this sign-in issues tokens for; "
                                 f"send one of {list(audiences)}"), 400
        keys = [("user", username), ("client", request.remote_addr)]
        wait = limiter.retry_after(keys)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            response = jsonify(error=f"too many failed sign-ins for {username!r} or from this address; "
                                     f"try again in {seconds} s")
            response.headers["Retry-After"] = str(seconds)
            return response, 429
        roles = store.check(username, password)
        if roles is None:
            limiter.failed(keys[0], max_failures, lockout_s)
            limiter.failed(keys[1], max_client_failures, lockout_s)
            return unauthorized("wrong username or password")
        limiter.succeeded(keys[0])
        token = authority.issue(username, roles, audience)
        return jsonify(token=token, token_type="Bearer", expires_in=int(token_ttl_s))

    @app.post("/users")
    def register():
        body = request.get_json(silent=True)
        body = body if isinstance(body, dict) else {}
        username = _text(body, "username", low=1, high=64)
        password = _text(body, "password", low=8, high=256)
        if username is None or password is None or not username.isidentifier():
            return jsonify(error='send JSON {"username": "...", "password": "..."}: a name of letters, digits '
                                 "and _ (at most 64), and a password of 8 to 256 characters"), 400
        if not store.add(username, password, ["reader"]):
            return jsonify(error=f"the name {username!r} is taken; choose another"), 409
        return jsonify(username=username, roles=["reader"]), 201

    @app.get("/public-key")
    def public_key():
        if authority.public_pem is None:
            return jsonify(error="this service signs with a shared secret (HS256): there is no public key, "
                                 "and the secret is never sent over the network"), 404
        return jsonify(alg=authority.algorithm, kid=authority.kid, pem=authority.public_pem)

    @app.get("/.well-known/jwks.json")
    def jwks():
        key = authority.jwk()
        return jsonify(keys=[key] if key else [])

    return app


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    """A token put together by hand, with any header, claims and signature (for attacks).

        >>> forge({"alg": "none", "typ": "JWT"}, {"sub": "mallory"})
        'eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJtYWxsb3J5In0.'
    """
    signing_input = _b64(json.dumps(header, separators=(",", ":")).encode()) + "." + \
        _b64(json.dumps(claims, separators=(",", ":")).encode())
    return signing_input + "." + _b64(signature)


def forge_hs256(header: dict, claims: dict, secret: bytes) -> str:
    """A token signed with HMAC-SHA256 under ``secret`` (the algorithm-confusion attack uses the public key)."""
    unsigned = forge(header, claims).rsplit(".", 1)[0]
    signature = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    return unsigned + "." + _b64(signature)
