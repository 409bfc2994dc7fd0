"""Signed tokens (JWTs): issued by the broker (notebook 03) and the sign-in service (notebook 06),
checked by every service that trusts them.

    signer = Signer("EdDSA", issuer="labkit-auth")
    token = signer.sign({"sub": "alice", "exp": ...})
    signer.jwks()                                   # served at /.well-known/jwks.json
    keys = KeySet(AUTH + "/.well-known/jwks.json", client)
    claims = verify(token, keys, audience="notes", issuer="labkit-auth")

A signer publishes its public keys as a JSON Web Key Set (RFC 7517), each with a key
id (``kid``) that every token it signs names in its header. A verifier fetches that set
once and checks tokens locally. When a token names a key id it has not seen (the signer
rotated its key), it fetches the set again, at most once every ``refetch_s`` seconds,
so a flood of made-up ids cannot make it hammer the signer; after a fetch that failed
it tries again at most once every ``retry_s`` seconds, so the flood cannot hammer a
signer that is down or failing either.

PyJWT's ``PyJWKClient`` does the same job; :class:`KeySet` is written here because the
lesson is what it does, because it fetches with a :class:`labkit.Client` (so the fetch
is on the trace and can go through a Link), and because ``PyJWKClient`` holds its lock
while it fetches, so one slow signer stalls every request that needs a key.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
import time

import jwt
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ..client import describe
from ..errors import Invalid, KeysUnavailable

ALGORITHMS = ("EdDSA", "RS256", "HS256")


class Signer:
    """A signing key and the tokens it signs; ``jwks()`` is what verifiers need.

    EdDSA (Ed25519) and RS256 sign with a private key and publish the public one;
    HS256 signs and verifies with one shared ``secret``, which must then be handed to
    every verifier and is never published (``jwks()`` has no keys).
    """

    def __init__(self, algorithm: str = "EdDSA", *, issuer: str):
        if algorithm not in ALGORITHMS:
            raise Invalid(f"algorithm must be one of {', '.join(ALGORITHMS)}, not {algorithm!r}")
        self.algorithm, self.issuer = algorithm, issuer
        self.secret: str | None = None
        self.public_key = None
        self._retired: list[tuple[str, object]] = []  # (kid, public key) of keys rotated out, newest first
        self._lock = threading.Lock()  # a token's key and kid change together
        self._make_key()

    def _make_key(self) -> None:
        if self.algorithm == "HS256":
            self._signing_key = self.secret = secrets.token_hex(32)  # 256 random bits
            self.kid = hashlib.sha256(self.secret.encode()).hexdigest()[:12]
            return
        self._signing_key = (ed25519.Ed25519PrivateKey.generate() if self.algorithm == "EdDSA"
                             else rsa.generate_private_key(public_exponent=65537, key_size=2048))
        self.public_key = self._signing_key.public_key()
        der = self.public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.kid = hashlib.sha256(der).hexdigest()[:12]

    @property
    def verifying_key(self):
        """What checks this signer's tokens: the public key, or with HS256 the shared secret."""
        return self.secret if self.public_key is None else self.public_key

    def rotate(self, keep: int = 1) -> None:
        """Sign with a new key from now on; the key set keeps publishing the ``keep`` previous
        public keys, so tokens they signed still verify until they expire (not with HS256)."""
        if self.public_key is None:
            raise Invalid("an HS256 secret cannot be rotated by publishing: hand every verifier the new secret")
        with self._lock:
            self._retired = ([(self.kid, self.public_key)] + self._retired)[:max(0, keep)]
            self._make_key()

    @property
    def public_pem(self) -> str | None:
        """The public key in PEM form (None with HS256)."""
        if self.public_key is None:
            return None
        return self.public_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    def sign(self, claims: dict, headers: dict | None = None) -> str:
        """A token holding exactly ``claims``, signed with this key; its header names the key id."""
        with self._lock:
            key, kid = self._signing_key, self.kid
        return jwt.encode(claims, key, algorithm=self.algorithm, headers={"kid": kid, **(headers or {})})

    def jwks(self) -> dict:
        """The public keys as a JSON Web Key Set: ``{"keys": [...]}`` (empty with HS256)."""
        if self.public_key is None:
            return {"keys": []}
        found = []
        with self._lock:
            published = [(self.kid, self.public_key)] + self._retired
        for kid, public in published:
            key = json.loads(jwt.algorithms.get_default_algorithms()[self.algorithm].to_jwk(public))
            key.pop("key_ops", None)  # RFC 7517 4.3: "use" and "key_ops" should not be used together
            found.append({**key, "kid": kid, "alg": self.algorithm, "use": "sig"})
        return {"keys": found}


class KeySet:
    """A signer's public keys, fetched from its JWKS ``url`` with ``client``; thread-safe.

    :meth:`find` answers from what it has; a key id it does not know makes it fetch the
    set: at once the first time, then at most once every ``refetch_s`` seconds after a
    fetch that worked, and at most once every ``retry_s`` seconds (default: 1, or
    ``refetch_s`` if that is less) after one that failed; in between, an unknown id
    gets None after a fetch that worked and KeysUnavailable after one that failed,
    without a fetch. One thread fetches while the others wait for its result; no
    lock is held during the fetch.
    """

    def __init__(self, url: str, client, *, refetch_s: float = 30.0, clock=time.monotonic,
                 retry_s: float | None = None):
        self.url, self.client, self.refetch_s, self.clock = url, client, refetch_s, clock
        self.retry_s = min(1.0, refetch_s) if retry_s is None else retry_s
        self.fetches = 0   # how many times the set was fetched
        self.failures = 0  # how many fetches failed
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._failed_at: float | None = None  # when the last fetch failed, if it did (None after one that worked)
        self._failure = ""
        self._fetching = False
        self._changed = threading.Condition()

    def find(self, kid):
        """The key with id ``kid``, or None if the signer has none by that id.

        Raises KeysUnavailable when a fetch was needed and failed; keys fetched before
        are kept.
        """
        with self._changed:
            while self._fetching and kid not in self._keys:
                self._changed.wait()
            if kid in self._keys:
                return self._keys[kid]
            now = self.clock()
            if self._failed_at is not None and now - self._failed_at < self.retry_s:
                raise KeysUnavailable(f"cannot fetch the key set at {self.url}: the last try failed "
                                      f"{now - self._failed_at:.1f} s ago ({self._failure}); the next may "
                                      f"start {self.retry_s:g} s after it")
            if self._failed_at is None and self._fetched_at is not None and now - self._fetched_at < self.refetch_s:
                return None
            self._fetching = True
        keys = None
        try:
            keys = self._fetch()
        except KeysUnavailable as error:
            with self._changed:
                self._failed_at, self._failure = self.clock(), describe(error.__cause__ or error)
                self.failures += 1
            raise
        finally:
            with self._changed:
                self._fetching = False
                if keys is not None:
                    self._keys, self._fetched_at, self._failed_at = keys, self.clock(), None
                self._changed.notify_all()
        return keys.get(kid)

    def _fetch(self) -> dict:
        try:
            answer = self.client.get(self.url)
            answer.raise_for_status()
            body = answer.json()
            if not isinstance(body, dict):  # PyJWKSet.from_dict would raise AttributeError
                raise ValueError(f"the answer is not a JSON object but {type(body).__name__}")
            found = jwt.PyJWKSet.from_dict(body)
        except (requests.exceptions.RequestException, ValueError, jwt.PyJWTError) as error:
            raise KeysUnavailable(f"cannot fetch the key set at {self.url}: {describe(error)}") from error
        self.fetches += 1
        return {key.key_id: key for key in found.keys if key.key_id}


def verify(token: str, keys, *, algorithm: str | None = None, audience: str | None = None,
           issuer: str | None = None, leeway_s: float = 0, require=("sub", "exp")) -> dict:
    """The claims of ``token`` if it verifies; ``jwt.InvalidTokenError`` saying why if it does not.

    ``keys`` is a :class:`KeySet` (the key is the one the token's ``kid`` names) or the
    key itself (a shared HS256 secret, a public key). The algorithm is pinned before
    the signature is checked: ``algorithm``, or else the one the key set lists for
    that key; the token's own ``alg`` header never chooses it.
    """
    if isinstance(keys, KeySet):
        kid = jwt.get_unverified_header(token).get("kid")
        found = keys.find(kid) if isinstance(kid, str) else None
        if found is None:
            raise jwt.InvalidTokenError("the signer has no key with its kid")
        key, algorithm = found.key, algorithm or found.algorithm_name
    else:
        key = keys
    return jwt.decode(token, key, algorithms=[algorithm], audience=audience, issuer=issuer, leeway=leeway_s,
                      options={"require": list(require)})


def bearer(headers) -> str | None:
    """The token of an "Authorization: Bearer TOKEN" header, or None."""
    scheme, _, token = headers.get("Authorization", "").strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def pem(jwk: dict) -> str:
    """The PEM form of a public key given as a JSON Web Key (one entry of a key set's ``keys``)."""
    key = jwt.PyJWK(jwk).key
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
