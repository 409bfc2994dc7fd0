"""The sign-in service for notebook 06: it checks passwords and issues signed tokens.

    POST /login                  {"username", "password", "audience"?} ->
                                 {"token", "token_type": "Bearer", "expires_in"};
                                 401 wrong username or password (the same answer for both);
                                 429 with Retry-After after too many failures (Retry-After: 1
                                 while attempts already being checked fill the limit); the
                                 audience "auth" is this service itself (for POST /users)
    POST /users                  an administrator's token (role "admin", audience "auth") and
                                 {"username", "password"} -> 201 {"username", "roles": ["reader"]}
                                 (a password of 15 to 256 characters, NIST SP 800-63B rev. 4's
                                 minimum for a password that is the only factor; no check against
                                 lists of breached passwords);
                                 401 without a valid token, 403 without the role, both before the
                                 name is looked at (so nobody else can learn which names exist);
                                 409 (to the administrator only) if the name is taken
    GET  /.well-known/jwks.json  {"keys": [...]}: the public key that verifies its tokens, as a
                                 JSON Web Key Set (no keys when it signs with a shared secret, HS256)

A token is a JWT with the claims ``sub`` (who), ``roles`` (what they may do),
``aud`` (which service it is for), ``iss`` (who issued it), ``iat`` and ``exp``
(when it was issued and when it stops being valid). Other services verify it
with the public key alone: they never call this service for each request.

Passwords are stored as Argon2id hashes (argon2-cffi): salted, slow, and
memory-hard, with the cost and salt written into each stored hash. Argon2 won
the Password Hashing Competition; Argon2id, its hybrid variant (RFC 9106), is the
first choice of OWASP's password storage guide; ``check_needs_rehash`` lets the cost rise later without a reset.
The cost is tunable (``time_cost``, ``memory_kib``, ``parallelism``) so tests can
run fast (:data:`FAST_HASHING`); the default is the secure RFC 9106 profile.

Failed sign-ins are limited per user name and per client address. Each attempt
*reserves* its place under the limiter's lock before the slow password check
(and gives it back if the password was right): reading the count before the
check and writing it after would be a check-then-act race (notebook 08), and
parallel guesses would all pass.

The signing key (or secret) is made when the app is created (or given, as
``signer=``, so that replicas share one), kept only in memory, and never written
anywhere: restart the service and every token it issued stops verifying.
Signing and key sets: :mod:`labkit.apps.tokens`.
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

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
import jwt
from flask import Blueprint, abort, request

from ..errors import Invalid
from . import kit, tokens
from .tokens import Signer

#: Hashing settings for tests and demos that need speed, not safety.
FAST_HASHING = {"time_cost": 1, "memory_kib": 64, "parallelism": 1}

#: The shortest password ``POST /users`` accepts: NIST SP 800-63B revision 4 (2025) asks for at least
#: 15 characters when the password is the only factor (8 when it is one factor of several).
MIN_PASSWORD = 15

#: The users a new service knows: name -> (password, roles). Demo passwords, never real ones.
DEMO_USERS = {
    "alice": ("correct horse battery", ["reader", "writer"]),
    "bob": ("bob's long password", ["reader"]),
    "carol": ("carol is the admin", ["reader", "writer", "admin"]),
}


class Users:
    """Users, their roles and their password hashes; thread-safe."""

    def __init__(self, hasher: PasswordHasher):
        self.hasher = hasher
        self._hashes: dict[str, str] = {}
        self._roles: dict[str, list[str]] = {}
        self._lock = threading.Lock()
        # Unknown names are checked against this, so they cost as long as known ones.
        self._dummy = hasher.hash(secrets.token_hex(16))
        self.verifications = 0  # how many passwords were checked (the slow hash), for tests and lessons

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
            self.verifications += 1
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
    """Counts failed sign-ins per key; after ``max_failures`` the key waits ``lockout_s`` seconds.

    An attempt first reserves its place (:meth:`reserve`, atomically, under the lock) and
    afterwards reports :meth:`failed` or :meth:`succeeded`. Attempts still being
    checked count as failures until they report, so no more than ``max_failures``
    passwords are ever checked for one key before it is locked, however many
    guesses arrive at once.
    """

    def __init__(self, clock=time.time):
        self.clock = clock
        self._failures: dict[tuple, int] = {}
        self._pending: dict[tuple, int] = {}
        self._until: dict[tuple, float] = {}
        self._lock = threading.Lock()

    def retry_after(self, keys) -> float:
        """Seconds until all of ``keys`` may try again (0: now)."""
        now = self.clock()
        with self._lock:
            return max([self._until.get(key, now) - now for key in keys] + [0.0])

    def reserve(self, limits: dict) -> float:
        """Reserve one attempt for every key of ``limits`` (key -> max_failures): 0 if reserved,
        else the seconds to wait (nothing is reserved then)."""
        now = self.clock()
        with self._lock:
            wait = max([self._until.get(key, now) - now for key in limits] + [0.0])
            if wait <= 0:  # attempts in flight count as failures until they report
                busy = [key for key, most in limits.items()
                        if self._failures.get(key, 0) + self._pending.get(key, 0) >= most]
                if not busy:
                    for key in limits:
                        self._pending[key] = self._pending.get(key, 0) + 1
                    return 0.0
                wait = 1.0  # the attempts in flight will have reported by then
            return wait

    def _release(self, key: tuple) -> None:
        left = self._pending.get(key, 0) - 1
        if left > 0:
            self._pending[key] = left
        else:
            self._pending.pop(key, None)

    def failed(self, key: tuple, max_failures: int, lockout_s: float) -> None:
        """A reserved attempt for ``key`` failed (or, unreserved, count one failure)."""
        with self._lock:
            self._release(key)
            count = self._failures.get(key, 0) + 1
            if count >= max_failures:
                self._until[key] = self.clock() + lockout_s
                count = 0
            self._failures[key] = count

    def succeeded(self, key: tuple, *, clear: bool = True) -> None:
        """A reserved attempt for ``key`` succeeded; ``clear`` forgets its earlier failures too."""
        with self._lock:
            self._release(key)
            if clear:
                self._failures.pop(key, None)
                self._until.pop(key, None)


class SignIn:
    """The sign-in service's state: its signer, its users, its limiter, and the rules of issuing."""

    def __init__(self, *, signer: Signer, users: Users, audiences, token_ttl_s: float, max_failures: int,
                 max_client_failures: int, lockout_s: float, clock, own_audience: str = "auth",
                 reserve_attempts: bool = True):
        self.audiences = tuple(audiences)
        if not self.audiences or not all(isinstance(a, str) and a for a in self.audiences):
            raise Invalid(f"audiences must be non-empty strings, not {self.audiences!r}")
        self.signer, self.users, self.clock = signer, users, clock
        self.own_audience = own_audience
        self.reserve_attempts = kit.flag(reserve_attempts, "reserve_attempts")
        self.token_ttl_s = kit.positive(token_ttl_s, "token_ttl_s", 10**7)
        self.max_failures = kit.whole(max_failures, "max_failures", 1, 10**6)
        self.max_client_failures = kit.whole(max_client_failures, "max_client_failures", 1, 10**6)
        self.lockout_s = kit.number(lockout_s, "lockout_s", 0, 10**7, unit="seconds")
        self.limiter = Limiter(clock)

    def issue(self, username: str, roles: list[str], audience: str) -> str:
        """The token of a user who just signed in: sub, roles, aud, iss, iat, exp."""
        now = int(self.clock())
        return self.signer.sign({"sub": username, "roles": list(roles), "aud": audience, "iss": self.signer.issuer,
                                 "iat": now, "exp": now + int(self.token_ttl_s)})

    def log_in(self, username: str, password: str, audience: str, address: str) -> str:
        """A token, or the refusal: 429 while locked out, 401 for a wrong name or password."""
        keys = [("user", username), ("client", address)]
        # Reserve the attempt before the slow check, atomically: checking the count here and
        # counting the failure after the hash would let parallel guesses all pass (check-then-act).
        if self.reserve_attempts:
            wait = self.limiter.reserve({keys[0]: self.max_failures, keys[1]: self.max_client_failures})
        else:  # the broken way, for the lesson: read now, count the failure after the slow hash
            wait = self.limiter.retry_after(keys)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            kit.refuse(429, f"too many failed sign-ins for {username!r} or from this address; try again in "
                            f"{seconds} s", **{"Retry-After": str(seconds)})
        try:
            roles = self.users.check(username, password)
        except BaseException:
            self.limiter.failed(keys[0], self.max_failures, self.lockout_s)
            self.limiter.failed(keys[1], self.max_client_failures, self.lockout_s)
            raise
        if roles is None:
            self.limiter.failed(keys[0], self.max_failures, self.lockout_s)
            self.limiter.failed(keys[1], self.max_client_failures, self.lockout_s)
            kit.refuse(401, "wrong username or password",
                       **{"WWW-Authenticate": f'Bearer realm="{self.signer.issuer}"'})
        self.limiter.succeeded(keys[0])
        self.limiter.succeeded(keys[1], clear=False)
        return self.issue(username, roles, audience)

    def administrator(self, headers) -> str:
        """The name of the administrator whose token ``headers`` carry, or the refusal (401, 403).

        The token must be one this service signed for itself (audience ``own_audience``), whose
        ``roles`` is a list of strings (else 401, as for any token that does not check out)."""
        challenge = f'Bearer realm="{self.signer.issuer}"'
        token = tokens.bearer(headers)
        if token is None:
            kit.refuse(401, f"creating users needs an administrator's token: sign in with audience "
                            f"{self.own_audience!r} and send Authorization: Bearer <token>",
                       **{"WWW-Authenticate": challenge})
        try:
            claims = tokens.verify(token, self.signer.verifying_key, algorithm=self.signer.algorithm,
                                   audience=self.own_audience, issuer=self.signer.issuer,
                                   require=("sub", "roles", "aud", "iss", "exp"))
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            kit.refuse(401, f"invalid token: {exc}", **{"WWW-Authenticate": challenge + ', error="invalid_token"'})
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            kit.refuse(401, "invalid token: its roles claim is not a list of strings",
                       **{"WWW-Authenticate": challenge + ', error="invalid_token"'})
        if "admin" not in roles:
            kit.refuse(403, f"{kit.short(claims['sub'])} may not create users: it needs the role 'admin'",
                       **{"WWW-Authenticate": challenge + ', error="insufficient_scope"'})
        return claims["sub"]


def _field(body: dict, field: str, low: int, high: int) -> str | None:
    value = body.get(field)
    return value if isinstance(value, str) and low <= len(value) <= high else None


routes = Blueprint("auth", __name__)


@routes.post("/login")
def login():
    body = kit.body('{"username": "alice", "password": "..."}')
    username, password = _field(body, "username", 1, 64), _field(body, "password", 1, 256)
    if username is None or password is None:
        raise Invalid('send JSON {"username": "...", "password": "..."} with two non-empty strings '
                      "(at most 64 and 256 characters)")
    state = kit.state()
    audience = body.get("audience", state.audiences[0])
    if audience not in state.audiences and audience != state.own_audience:
        raise Invalid(f"audience {kit.short(audience)} is not a service this sign-in issues tokens for; "
                      f"send one of {list(state.audiences) + [state.own_audience]}")
    token = state.log_in(username, password, audience, request.remote_addr)
    return {"token": token, "token_type": "Bearer", "expires_in": int(state.token_ttl_s)}


@routes.post("/users")
def register():
    kit.state().administrator(request.headers)  # 401 or 403 before the name is even read
    body = kit.body('{"username": "dave", "password": "..."}')
    username, password = _field(body, "username", 1, 64), _field(body, "password", MIN_PASSWORD, 256)
    if username is None or password is None or not username.isidentifier():
        raise Invalid('send JSON {"username": "...", "password": "..."}: a name of letters, digits and _ '
                      f"(at most 64), and a password of {MIN_PASSWORD} to 256 characters")
    if not kit.state().users.add(username, password, ["reader"]):
        abort(409, f"the name {username!r} is taken; choose another")
    return {"username": username, "roles": ["reader"]}, 201


@routes.get("/.well-known/jwks.json")
def jwks():
    return kit.state().signer.jwks()


def create_app(*, name: str = "auth", users: dict | None = None, algorithm: str = "EdDSA",
               issuer: str = "labkit-auth", audiences=("notes", "billing"), token_ttl_s: float = 600,
               time_cost: int = 3, memory_kib: int = 65536, parallelism: int = 4, max_failures: int = 5,
               max_client_failures: int = 50, lockout_s: float = 60, clock=time.time, signer: Signer | None = None,
               reserve_attempts: bool = True):
    """A sign-in service.

    ``users``: name -> (password, roles) (default :data:`DEMO_USERS`); ``algorithm``:
    "EdDSA" (Ed25519), "RS256" or "HS256" (a shared secret); ``audiences``: the
    services it issues tokens for (the first is the default); ``token_ttl_s``: how long
    a token stays valid. ``time_cost``, ``memory_kib``, ``parallelism``: the Argon2id
    cost (``**FAST_HASHING`` for tests). After ``max_failures`` wrong passwords for one
    user, or ``max_client_failures`` from one address, sign-ins wait ``lockout_s``
    seconds (429). ``clock()`` gives the time in seconds (a ManualClock for tests).
    ``signer``: the key to sign with (default: a new one); give every replica of one
    sign-in service the same signer (in production: the same key from a secret store),
    or tokens from one replica fail at services that fetched another's key set.
    Tokens for the audience "auth" (the service itself) let an admin create users.
    ``reserve_attempts=False`` builds the broken limiter that checks the count before the
    slow hash and counts the failure after it, so parallel guesses all pass (for the lesson).
    """
    store = Users(PasswordHasher(time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism))
    for user, (password, roles) in (DEMO_USERS if users is None else users).items():
        store.add(user, password, roles)
    if signer is None:
        signer = Signer(algorithm, issuer=issuer)
    state = SignIn(signer=signer, users=store, audiences=audiences, clock=clock,
                   token_ttl_s=token_ttl_s, max_failures=max_failures, max_client_failures=max_client_failures,
                   lockout_s=lockout_s, reserve_attempts=reserve_attempts)
    return kit.make_app(name, state, routes)


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
