"""A protected notes service for notebook 06: it trusts the sign-in service's tokens.

    GET    /whoami        any valid token -> {"sub", "roles"}
    GET    /notes         role "reader"   -> {"notes": [{"id", "text", "author"}]}
    POST   /notes         role "writer"   {"text"} -> 201 {"id"}
    DELETE /notes/<id>    role "admin"    -> {"deleted": id}; 404 if there is no such note

Every request needs ``Authorization: Bearer <token>``. The service verifies the token
itself, with the sign-in service's public keys (its JSON Web Key Set, fetched on first
need from ``auth_url`` + "/.well-known/jwks.json", and again when a token names a key
it has not seen) or with a shared secret (HS256): it never asks the sign-in service
about a request.

    401 + WWW-Authenticate: Bearer ...   no token, not a Bearer token, or a token that does not
                                         verify (signature, algorithm, audience, issuer, expiry)
    403 + WWW-Authenticate: Bearer error="insufficient_scope"
                                         a valid token whose roles lack the one needed
    503                                  the sign-in service's keys cannot be fetched

``python -m labkit serve notes`` reads the sign-in service's address from the
LABKIT_AUTH_URL environment variable (default http://127.0.0.1:5001).
"""

from __future__ import annotations

import functools
import os
import threading

import jwt
from flask import Blueprint, abort, g, request

from ..client import Client
from ..errors import Invalid, KeysUnavailable
from . import kit, tokens

#: The claims a token must carry before its roles mean anything.
REQUIRED_CLAIMS = ("sub", "roles", "aud", "iss", "iat", "exp")


def _quoted(text: str) -> str:
    """``text`` safe inside a quoted header parameter."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)[:200]


class Notes:
    """The notes, and how this service checks tokens: its keys, algorithm, audience, issuer and leeway."""

    def __init__(self, name: str, keys, *, algorithm, audience: str, issuer: str, leeway_s: float, client=None):
        self.name, self.keys, self.algorithm = name, keys, algorithm
        self.audience, self.issuer = audience, issuer
        self.leeway_s = kit.number(leeway_s, "leeway_s", 0, 3600, unit="seconds")
        self.client = client
        self.notes: dict[int, dict] = {}
        self.next_id = 1
        self.lock = threading.Lock()

    def refuse(self, status: int, message: str, error: str = "") -> None:
        challenge = f'Bearer realm="{self.name}"'
        if error:
            challenge += f', error="{error}", error_description="{_quoted(message)}"'
        kit.refuse(status, message, **{"WWW-Authenticate": challenge})

    def claims(self, token: str | None) -> dict:
        """The claims of a token that verifies, or the refusal (401, or 503 if the keys are out of reach)."""
        if token is None:
            self.refuse(401, "no token: send the header Authorization: Bearer <token> "
                             "(sign in to the sign-in service to get one)")
        try:
            claims = tokens.verify(token, self.keys, algorithm=self.algorithm, audience=self.audience,
                                   issuer=self.issuer, leeway_s=self.leeway_s, require=REQUIRED_CLAIMS)
        except KeysUnavailable:
            abort(503, "cannot get the sign-in service's public keys; try again later")
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            self.refuse(401, f"invalid token: {exc}", "invalid_token")
        if not isinstance(claims.get("roles"), list):
            self.refuse(401, "invalid token: its roles claim is not a list", "invalid_token")
        return claims

    def close(self) -> None:
        if self.client is not None:
            self.client.close()


def requires(role: str | None):
    """Decorator: the view runs only for a valid token that carries ``role`` (None: any role)."""

    def wrap(view):
        @functools.wraps(view)
        def guarded(*args, **kwargs):
            state = kit.state()
            header = request.headers.get("Authorization")
            if header and tokens.bearer(request.headers) is None:
                state.refuse(401, "the Authorization header must be 'Bearer <token>'", "invalid_request")
            claims = state.claims(tokens.bearer(request.headers))
            if role is not None and role not in claims["roles"]:
                state.refuse(403, f"{claims['sub']!r} may not do this: it needs the role {role!r}",
                             "insufficient_scope")
            g.claims = claims
            return view(*args, **kwargs)

        return guarded

    return wrap


routes = Blueprint("notes", __name__)


@routes.get("/whoami")
@requires(None)
def whoami():
    return {"sub": g.claims["sub"], "roles": g.claims["roles"]}


@routes.get("/notes")
@requires("reader")
def list_notes():
    state = kit.state()
    with state.lock:
        return {"notes": [state.notes[i] for i in sorted(state.notes)]}


@routes.post("/notes")
@requires("writer")
def add_note():
    text = kit.text(kit.body('{"text": "..."}').get("text"), "text", limit=1000)
    state = kit.state()
    with state.lock:
        note = {"id": state.next_id, "text": text, "author": g.claims["sub"]}
        state.notes[note["id"]] = note
        state.next_id += 1
    return {"id": note["id"]}, 201


@routes.delete("/notes/<int:note_id>")
@requires("admin")
def delete_note(note_id: int):
    state = kit.state()
    with state.lock:
        if state.notes.pop(note_id, None) is None:
            abort(404, f"there is no note {note_id}; GET /notes lists them")
    return {"deleted": note_id}


def create_app(*, name: str = "notes", auth_url: str | None = None, secret: str | None = None,
               algorithm: str | None = None, audience: str = "notes", issuer: str = "labkit-auth",
               leeway_s: float = 0, timeout_s: float = 5.0, trace=None):
    """A notes service called ``name`` that verifies tokens locally.

    Give it ``auth_url`` (it fetches the sign-in service's key set from there, as the
    client ``name``) or ``secret`` (HS256). ``algorithm`` is the one algorithm it
    accepts (default: HS256 with a secret, else the one the key set names for each
    key). ``audience`` and ``issuer`` must match the token's ``aud`` and ``iss``;
    ``leeway_s`` forgives that many seconds of clock difference on ``exp``.
    """
    if secret is not None and auth_url is not None:
        raise Invalid("give a secret (HS256) or an auth_url, not both")
    client = None
    if secret is None:
        auth_url = (auth_url or os.environ.get("LABKIT_AUTH_URL", "http://127.0.0.1:5001")).rstrip("/")
        client = Client(name, timeout=kit.positive(timeout_s, "timeout_s", 60), trace=trace)
        keys = tokens.KeySet(auth_url + "/.well-known/jwks.json", client)
    else:
        keys, algorithm = secret, algorithm or "HS256"
    state = Notes(name, keys, algorithm=algorithm, audience=audience, issuer=issuer, leeway_s=leeway_s, client=client)
    return kit.make_app(name, state, routes)
