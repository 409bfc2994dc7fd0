"""A protected notes service for notebook 06: it trusts the sign-in service's tokens.

    GET    /whoami        any valid token -> {"sub", "roles"}
    GET    /notes         role "reader"   -> {"notes": [{"id", "text", "author"}]}
    POST   /notes         role "writer"   {"text"} -> 201 {"id"}
    DELETE /notes/<id>    role "admin"    -> {"deleted": id}; 404 if there is no such note

Every request needs ``Authorization: Bearer <token>``. The service verifies the
token itself, with the sign-in service's public key (fetched once, on first
need, from ``auth_url`` + "/public-key") or with a shared secret (HS256): it
never asks the sign-in service about a request.

    401 + WWW-Authenticate: Bearer ...   no token, not a Bearer token, or a token that does not
                                         verify (signature, algorithm, audience, issuer, expiry)
    403 + WWW-Authenticate: Bearer error="insufficient_scope"
                                         a valid token whose roles lack the one needed

``python -m labkit serve notes`` reads the sign-in service's address from the
LABKIT_AUTH_URL environment variable (default http://127.0.0.1:5001).
"""

from __future__ import annotations

import functools
import os
import threading

import jwt
from flask import Flask, g, jsonify, request

from ._errors import json_errors

#: The claims a token must carry before its roles mean anything.
REQUIRED_CLAIMS = ["sub", "roles", "aud", "iss", "iat", "exp"]


def _quoted(text: str) -> str:
    """``text`` safe inside a quoted header parameter."""
    return "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "?" for c in text)[:200]


def create_app(*, public_key: str | None = None, auth_url: str | None = None, secret: str | None = None,
               algorithm: str | None = None, audience: str = "notes", issuer: str = "labkit-auth",
               leeway_s: float = 0, realm: str = "notes", trace=None) -> Flask:
    """A notes service that verifies tokens locally.

    Give it one of: ``public_key`` (a PEM string), ``auth_url`` (it fetches the
    key once from ``auth_url + "/public-key"``, as the client named ``realm``), or
    ``secret`` (HS256). ``algorithm`` is the one algorithm it accepts (default:
    "HS256" with a secret, else what the sign-in service says, else "EdDSA").
    ``audience`` and ``issuer`` must match the token's ``aud`` and ``iss``;
    ``leeway_s`` forgives that many seconds of clock difference on ``exp``.
    ``realm`` names the service (its Flask app, its WWW-Authenticate realm).
    """
    if secret is None and public_key is None and auth_url is None:
        auth_url = os.environ.get("LABKIT_AUTH_URL", "http://127.0.0.1:5001")
    if secret is not None and (public_key is not None or auth_url is not None):
        raise ValueError("give a secret (HS256) or a public key / auth_url, not both")
    app = json_errors(Flask(realm))
    notes: dict[int, dict] = {}
    state = {"next_id": 1, "key": secret if secret is not None else public_key,
             "algorithm": algorithm or ("HS256" if secret is not None else None)}
    lock, key_lock = threading.Lock(), threading.Lock()
    app.extensions["notes"] = notes

    def verification_key():
        """The key and algorithm to verify with; fetched from the sign-in service once."""
        with key_lock:
            if state["key"] is None:
                from ..client import Client

                with Client(realm, timeout=5, trace=trace) as client:
                    answer = client.get(auth_url.rstrip("/") + "/public-key")
                    answer.raise_for_status()
                    body = answer.json()
                state["key"] = body["pem"]
                state["algorithm"] = state["algorithm"] or body["alg"]
            return state["key"], state["algorithm"] or "EdDSA"

    def refuse(status: int, message: str, error: str = ""):
        response = jsonify(error=message)
        challenge = f'Bearer realm="{realm}"'
        if error:
            challenge += f', error="{error}", error_description="{_quoted(message)}"'
        response.headers["WWW-Authenticate"] = challenge
        return response, status

    def requires(role: str | None):
        """Decorator: the view runs only for a valid token that carries ``role`` (None: any role)."""

        def wrap(view):
            @functools.wraps(view)
            def guarded(*args, **kwargs):
                header = request.headers.get("Authorization")
                if not header:
                    return refuse(401, "no token: send the header Authorization: Bearer <token> "
                                       "(sign in to the sign-in service to get one)")
                scheme, _, token = header.strip().partition(" ")
                if scheme.lower() != "bearer" or not token.strip():
                    return refuse(401, "the Authorization header must be 'Bearer <token>'", "invalid_request")
                try:
                    key, algorithm = verification_key()
                except Exception:  # the sign-in service cannot be reached or answered nonsense
                    return jsonify(error="cannot get the sign-in service's public key; try again later"), 503
                try:
                    claims = jwt.decode(token.strip(), key, algorithms=[algorithm], audience=audience,
                                        issuer=issuer, leeway=leeway_s, options={"require": REQUIRED_CLAIMS})
                except (jwt.PyJWTError, ValueError, TypeError) as exc:
                    return refuse(401, f"invalid token: {exc}", "invalid_token")
                roles = claims.get("roles")
                if not isinstance(roles, list):
                    return refuse(401, "invalid token: its roles claim is not a list", "invalid_token")
                if role is not None and role not in roles:
                    return refuse(403, f"{claims['sub']!r} may not do this: it needs the role {role!r}",
                                  "insufficient_scope")
                g.claims = claims
                return view(*args, **kwargs)

            return guarded

        return wrap

    @app.get("/whoami")
    @requires(None)
    def whoami():
        return jsonify(sub=g.claims["sub"], roles=g.claims["roles"])

    @app.get("/notes")
    @requires("reader")
    def list_notes():
        with lock:
            return jsonify(notes=[notes[i] for i in sorted(notes)])

    @app.post("/notes")
    @requires("writer")
    def add_note():
        body = request.get_json(silent=True)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not 1 <= len(text) <= 1000:
            return jsonify(error='send JSON {"text": "..."} with 1 to 1000 characters'), 400
        with lock:
            note = {"id": state["next_id"], "text": text, "author": g.claims["sub"]}
            notes[note["id"]] = note
            state["next_id"] += 1
        return jsonify(id=note["id"]), 201

    @app.delete("/notes/<int:note_id>")
    @requires("admin")
    def delete_note(note_id: int):
        with lock:
            if notes.pop(note_id, None) is None:
                return jsonify(error=f"there is no note {note_id}; GET /notes lists them"), 404
        return jsonify(deleted=note_id)

    return app
