"""A protected notes service for notebook 06: it trusts the sign-in service's tokens.

    GET    /whoami        any valid token -> {"sub", "roles"}
    GET    /notes         role "reader"   -> {"notes": [{"id", "text", "author"}]}
    POST   /notes         role "writer"   {"text"} -> 201 {"id"}
    DELETE /notes/<id>    role "writer", and the note's author or role "admin" -> {"deleted": id};
                          403 for another writer's note; 404 if there is no such note

Every request needs ``Authorization: Bearer <token>``. The service verifies the token
itself, with the sign-in service's public keys (its JSON Web Key Set, fetched on first
need from ``auth_url`` + "/.well-known/jwks.json", and again when a token names a key
it has not seen) or with a shared secret (HS256): it never asks the sign-in service
about a request. It accepts one algorithm, fixed by its configuration (EdDSA by default,
HS256 with a secret): neither the token's ``alg`` header nor the fetched key set chooses it.

    401 + WWW-Authenticate: Bearer ...   no token, not a Bearer token, or a token that does not
                                         verify (signature, algorithm, audience, issuer, expiry)
    403 + WWW-Authenticate: Bearer error="insufficient_scope"
                                         a valid token whose roles lack the one needed
    503                                  the sign-in service's keys cannot be fetched

A role says what *kind* of thing a caller may do; only the object says *which* ones:
``DELETE /notes/<id>`` also checks that the note is the caller's own. Built with
``owner_check=False`` the service leaves that out (broken object-level authorization,
OWASP API Security risk 1, shown in notebook 06): any writer deletes anyone's note.

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

    def __init__(self, name: str, keys, *, algorithm, audience: str, issuer: str, leeway_s: float, client=None,
                 owner_check: bool = True):
        self.name, self.keys, self.algorithm = name, keys, algorithm
        self.audience, self.issuer = audience, issuer
        self.leeway_s = kit.number(leeway_s, "leeway_s", 0, 3600, unit="seconds")
        self.client = client
        self.owner_check = owner_check
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
        roles = claims.get("roles")
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            self.refuse(401, "invalid token: its roles claim is not a list of strings", "invalid_token")
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
@requires("writer")
def delete_note(note_id: int):
    state = kit.state()
    me, roles = g.claims["sub"], g.claims["roles"]
    with state.lock:
        note = state.notes.get(note_id)
        if note is None:
            abort(404, f"there is no note {note_id}; GET /notes lists them")
        # The role said "may delete notes"; this says "this note": without it, any writer deletes any note.
        if state.owner_check and note["author"] != me and "admin" not in roles:
            state.refuse(403, f"{me!r} may not delete note {note_id}: its author is {note['author']!r}",
                         "insufficient_scope")
        del state.notes[note_id]
    return {"deleted": note_id}


def create_app(*, name: str = "notes", auth_url: str | None = None, secret: str | None = None,
               algorithm: str | None = "default", audience: str = "notes", issuer: str = "labkit-auth",
               leeway_s: float = 0, timeout_s: float = 5.0, trace=None, owner_check: bool = True,
               refetch_s: float = 30.0, keys_clock=None):
    """A notes service called ``name`` that verifies tokens locally.

    Give it ``auth_url`` (it fetches the sign-in service's key set from there, as the
    client ``name``) or ``secret`` (HS256). ``algorithm`` is the one algorithm it
    accepts (default: "EdDSA" with ``auth_url``, "HS256" with a secret; None with
    ``auth_url``: whatever the key set names for each key, which lets whoever controls
    the key set choose). ``audience`` and ``issuer`` must match the token's ``aud`` and ``iss``;
    ``leeway_s`` forgives that many seconds of clock difference on ``exp``.
    ``owner_check=False`` builds the broken service that lets any writer delete any
    note (for the lesson only). ``refetch_s``: the least time between two fetches of
    the key set for an unknown key id, on ``keys_clock`` (default: time.monotonic; a
    ManualClock for tests and lessons).
    """
    if secret is not None and auth_url is not None:
        raise Invalid("give a secret (HS256) or an auth_url, not both")
    client = None
    if secret is None:
        auth_url = (auth_url or os.environ.get("LABKIT_AUTH_URL", "http://127.0.0.1:5001")).rstrip("/")
        client = Client(name, timeout=kit.positive(timeout_s, "timeout_s", 60), trace=trace)
        keys = tokens.KeySet(auth_url + "/.well-known/jwks.json", client, refetch_s=refetch_s,
                             **({} if keys_clock is None else {"clock": keys_clock}))
        algorithm = "EdDSA" if algorithm == "default" else algorithm
    else:
        keys, algorithm = secret, "HS256" if algorithm in ("default", None) else algorithm
    state = Notes(name, keys, algorithm=algorithm, audience=audience, issuer=issuer, leeway_s=leeway_s, client=client,
                  owner_check=owner_check)
    return kit.make_app(name, state, routes)
