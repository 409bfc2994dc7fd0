"""Hidden tests for notebook 06 (authentication): q6.1 authorize, q6.2 get_notes.

Every token comes from a real sign-in service (``labkit.apps.auth``) reached
through a link, and the public key is fetched from its key set (JWKS); the
attacks are built from those real tokens: an edited payload, ``alg: none``, an
HS256 signature made with the public key as the secret (algorithm confusion), a
token from another sign-in service, an expired one, one for another audience,
one from another issuer, one without ``sub``, and ones whose ``roles`` is not a
list of strings (a string holding the role's name passes a substring test).
The sign-in service here names itself ``ISSUER``, not the notebook's
``labkit-auth``, so an answer must check the issuer it is given.

q6.2 (get_notes) meets no token, a valid one, an expired one, one without the
role, a wrong password, a lockout of 1 s, a sign-in service that answers 429 to
every attempt (give up after the third, without a last wait), a Retry-After given
as an HTTP date, and a notes service that refuses even a fresh token.
"""

from __future__ import annotations

import base64
import email.utils
import json
import math
import time

import jwt
from flask import Flask
from werkzeug.datastructures import Headers

from labkit.apps import create
from labkit.apps import tokens
from labkit.apps.auth import FAST_HASHING, forge, forge_hs256
from labkit.apps.kit import ManualClock
from labkit.grading.authoring import Fail, Question, show, type_name

USERS = {"alice": ("alice's password", ["reader", "writer"]), "bob": ("bob's password", ["reader"])}
AUDIENCE = "notes"
ISSUER = "auth·check"

_DECODE = ('verify with jwt.decode(token, public_key, algorithms=["EdDSA"], audience=audience, issuer=issuer), '
           "return (401, reason) when it raises jwt.PyJWTError, and (403, reason) when the role is missing")
_PIN = ('pin the algorithm you accept: algorithms=["EdDSA"]; never take it from the token\'s own header, '
        "and turn every jwt.PyJWTError into (401, reason)")
_VERIFY = ("the signature is what makes a token trustworthy: decode with the public key and never with "
           'options={"verify_signature": False}')

q61 = Question(
    "q6.1", "authorize", params=("headers", "public_key", "audience", "role", "issuer"), hint=_DECODE,
)


# -- the sign-in service and its tokens --------------------------------------------------------


class _SignIn:
    """A real sign-in service behind a link; logs users in and hands out its public key."""

    def __init__(self, run, name: str = "auth·check", **options):
        self.app = create("auth", users=USERS, issuer=ISSUER, **FAST_HASHING, **options)
        self.server = run.serve(self.app, name)
        self.link = run.link(self.server, latency_ms=5)
        self.client = run.client("service")

    def token(self, user: str, audience: str = AUDIENCE) -> str:
        answer = self.client.post(self.link.url + "/login",
                                  json={"username": user, "password": USERS[user][0], "audience": audience})
        answer.raise_for_status()
        return answer.json()["token"]

    def public_key(self) -> str:
        answer = self.client.get(self.link.url + "/.well-known/jwks.json")
        answer.raise_for_status()
        return tokens.pem(answer.json()["keys"][0])

    @property
    def signer(self):
        return self.app.extensions["labkit"].signer


def _parts(token: str) -> tuple[dict, dict, str]:
    header, payload, signature = token.split(".")
    pad = lambda text: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
    return json.loads(pad(header)), json.loads(pad(payload)), signature


def _bearer(token: str) -> Headers:
    return Headers({"Authorization": f"Bearer {token}", "Accept": "application/json"})


# -- judging one call ------------------------------------------------------------------------------


def _status_of(value, case: str) -> tuple[int, object]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        kind = type_name(value)
        raise Fail(f"{case}: it returned a {kind}, not a pair (status, claims_or_reason)",
                   "return a tuple such as (200, claims), (401, \"why\") or (403, \"why\")")
    status, detail = value
    if isinstance(status, bool) or not isinstance(status, int):
        raise Fail(f"{case}: the status it returned is a {type_name(status)}, not an int",
                   "return the status as an int: 200, 401 or 403")
    return status, detail


def _expect_ok(run, headers, key, role, user: str, case: str) -> None:
    status, claims = _status_of(run.call(headers, key, AUDIENCE, role, ISSUER).value, case)
    if status != 200:
        hint = _DECODE
        if status == 401:
            hint = ("the token is valid: check the audience you are given (audience=audience), "
                    'the algorithm the sign-in service uses (algorithms=["EdDSA"]), the issuer you are given '
                    "(issuer=issuer), and read the token "
                    "after 'Bearer '")
        raise Fail(f"{case}: it returned status {status}, expected 200", hint)
    if not isinstance(claims, dict) or claims.get("sub") != user or not isinstance(claims.get("roles"), list):
        got = claims.get("sub") if isinstance(claims, dict) else type_name(claims)
        raise Fail(f"{case}: with status 200 it must return the token's claims (sub {user!r}), but it returned {got!r}",
                   "return (200, claims) with the dict jwt.decode gives you")


def _expect_refused(run, headers, key, role, expected: int, case: str, hint: str) -> None:
    status, reason = _status_of(run.call(headers, key, AUDIENCE, role, ISSUER).value, case)
    if status != expected:
        if (status, expected) == (403, 401) and "no Authorization header" not in case:
            hint = _INVALID
        raise Fail(f"{case}: it returned status {status}, expected {expected}", hint)
    if not isinstance(reason, str) or not reason:
        raise Fail(f"{case}: with status {expected} it must return a reason (a non-empty string), "
                   f"not a {type_name(reason)}", f'return ({expected}, "why the request is refused")')


_INVALID = "a token that does not verify means nobody is authenticated: 401, not 403"


@q61.test("valid tokens with the role asked for")
def _(run):
    auth = _SignIn(run)
    key = auth.public_key()
    _expect_ok(run, _bearer(auth.token("alice")), key, "writer", "alice", "alice's valid token, role writer")
    _expect_ok(run, _bearer(auth.token("bob")), key, "reader", "bob", "bob's valid token, role reader")


@q61.test("a valid token without the role")
def _(run):
    auth = _SignIn(run)
    _expect_refused(run, _bearer(auth.token("bob")), auth.public_key(), "writer", 403,
                    "bob (roles ['reader']) asks for role writer",
                    "the token is valid, so bob is known: a missing role is 403 Forbidden, not 401")


@q61.test("no Authorization header")
def _(run):
    auth = _SignIn(run)
    _expect_refused(run, Headers({"Accept": "application/json"}), auth.public_key(), "reader", 401,
                    "a request with no Authorization header",
                    "no credentials means we do not know who is calling: 401 Unauthorized (with 403 "
                    "the client would never learn to sign in)")


@q61.test("credentials that are not a Bearer token")
def _(run):
    auth = _SignIn(run)
    key, token = auth.public_key(), auth.token("alice")
    hint = "accept only 'Authorization: Bearer <token>'; anything else is 401"
    _expect_refused(run, Headers({"Authorization": token}), key, "reader", 401,
                    "the token without the 'Bearer ' prefix", hint)
    basic = base64.b64encode(b"alice:alice's password").decode()
    _expect_refused(run, Headers({"Authorization": f"Basic {basic}"}), key, "reader", 401,
                    "Basic credentials (a user name and password)", hint)


@q61.test("garbage instead of a token")
def _(run):
    auth = _SignIn(run)
    key = auth.public_key()
    for garbage in ("not-a-token", "a.b.c", "Bearer", "e30.e30"):
        _expect_refused(run, _bearer(garbage), key, "reader", 401, f"the token {garbage!r}", _DECODE)
    _expect_refused(run, Headers({"Authorization": "Bearer "}), key, "reader", 401,
                    "'Bearer ' and no token", _DECODE)


@q61.test("a token whose payload was edited, its signature kept")
def _(run):
    auth = _SignIn(run)
    header, claims, signature = _parts(auth.token("bob"))
    claims["roles"] = ["reader", "writer", "admin"]
    edited = forge(header, claims).rsplit(".", 1)[0] + "." + signature
    _expect_refused(run, _bearer(edited), auth.public_key(), "admin", 401,
                    "a token whose payload was edited (bob made himself admin)", _VERIFY)


@q61.test("a token with alg none and no signature")
def _(run):
    auth = _SignIn(run)
    _, claims, _ = _parts(auth.token("bob"))
    claims["roles"] = ["reader", "writer", "admin"]
    unsigned = forge({"alg": "none", "typ": "JWT"}, claims)
    _expect_refused(run, _bearer(unsigned), auth.public_key(), "admin", 401,
                    "a token with alg none and no signature", _PIN)


@q61.test("algorithm confusion: HS256 signed with the public key as the secret",
          raise_hints={jwt.PyJWTError: _PIN})
def _(run):
    auth = _SignIn(run)
    key = auth.public_key()
    _, claims, _ = _parts(auth.token("bob"))
    claims["roles"] = ["reader", "writer", "admin"]
    confused = forge_hs256({"alg": "HS256", "typ": "JWT"}, claims, key.encode())
    _expect_refused(run, _bearer(confused), key, "admin", 401,
                    "a token signed with HS256 using the public key as the secret", _PIN)


@q61.test("a token from another sign-in service (another key)")
def _(run):
    auth, other = _SignIn(run), _SignIn(run, "impostor·check")
    _expect_refused(run, _bearer(other.token("alice")), auth.public_key(), "reader", 401,
                    "a token signed by another sign-in service's key", _VERIFY)


@q61.test("an expired token")
def _(run):
    auth = _SignIn(run, clock=ManualClock(start=time.time() - 3600), token_ttl_s=60)  # its tokens expired long ago
    key = auth.public_key()
    _expect_refused(run, _bearer(auth.token("alice")), key, "reader", 401,
                    "a token that expired 59 minutes ago",
                    "jwt.decode checks exp unless told not to: keep the check, and turn "
                    "jwt.ExpiredSignatureError (a jwt.PyJWTError) into 401")


@q61.test("a token for another audience")
def _(run):
    auth = _SignIn(run)
    _expect_refused(run, _bearer(auth.token("alice", audience="billing")), auth.public_key(), "reader", 401,
                    "a token for the billing service (aud 'billing')",
                    "pass audience=audience to jwt.decode: a token meant for another service must not open this one")


@q61.test("a validly signed token from another issuer")
def _(run):
    auth = _SignIn(run)
    _, claims, _ = _parts(auth.token("alice"))
    _expect_refused(run, _bearer(auth.signer.sign({**claims, "iss": "someone-else"})), auth.public_key(), "reader",
                    401, "a token whose iss is 'someone-else', not the issuer you were given",
                    "pass issuer=issuer to jwt.decode (and require iss): the issuer says who vouches for the claims")
    del claims["iss"]
    _expect_refused(run, _bearer(auth.signer.sign(claims)), auth.public_key(), "reader", 401,
                    "a token without iss", 'require the claims you rely on: options={"require": [..., "iss"]}')


_ROLES = ("roles must be a list of strings: check isinstance(roles, list) and that every item is a str, "
          "and answer 401 otherwise; `role in roles` on a string is a substring test")


@q61.test("a validly signed token whose roles is not a list of strings")
def _(run):
    auth = _SignIn(run)
    _, claims, _ = _parts(auth.token("bob"))
    key = auth.public_key()
    _expect_refused(run, _bearer(auth.signer.sign({**claims, "roles": "not-an-admin"})), key, "admin", 401,
                    "a token whose roles is the string 'not-an-admin', asking for role admin", _ROLES)
    _expect_refused(run, _bearer(auth.signer.sign({**claims, "roles": ["reader", 7]})), key, "reader", 401,
                    "a token whose roles is ['reader', 7] (not all strings)", _ROLES)
    missing = {k: v for k, v in claims.items() if k != "roles"}
    _expect_refused(run, _bearer(auth.signer.sign(missing)), key, "reader", 401, "a token without roles", _ROLES)


@q61.test("a validly signed token without sub")
def _(run):
    auth = _SignIn(run)
    _, claims, _ = _parts(auth.token("alice"))
    del claims["sub"]
    _expect_refused(run, _bearer(auth.signer.sign(claims)), auth.public_key(), "reader", 401,
                    "a token without sub (it names nobody)",
                    'require the claims you rely on: options={"require": ["sub", "roles", "aud", "iss", "exp"]}')


# -- q6.2: a client that keeps its token -------------------------------------------------------

#: Seconds the locked-out sign-in service asks the client to wait (Retry-After).
LOCKOUT_S = 1
#: The most sign-in attempts a client may make for one call.
MAX_SIGN_INS = 3
#: Seconds alice is locked out in the test whose Retry-After is an HTTP date.
LOCKOUT_DATE_S = 3

q62 = Question(
    "q6.2", "get_notes", params=("client", "auth_url", "notes_url", "credentials", "token"),
    hint=("use the token you have; sign in (POST auth_url + \"/login\" with json=credentials) only when there is "
          "none or the notes service answers 401; a 403 will not get better by signing in again"),
)

_NOTES = [{"author": "alice", "id": 1, "text": "the workshop starts at nine"}]
ZED = ("zed's password", [])


class _Pair:
    """A sign-in service and a notes service (holding one note), both behind links."""

    def __init__(self, run, notes_options=None, http_date=False, **auth_options):
        users = {**USERS, "zed": ZED}
        self.app = create("auth", users=users, **{**FAST_HASHING, **auth_options})
        if http_date:
            self.app.after_request(_retry_after_as_a_date)
        self.auth = run.serve(self.app, "auth·check")
        self.auth_link = run.link(self.auth, latency_ms=5)
        self.notes_app = create("notes", name="notes·check", auth_url=self.auth.url, trace=run.trace,
                                **(notes_options or {}))
        notes = self.notes_app.extensions["labkit"]
        notes.notes[1], notes.next_id = dict(_NOTES[0]), 2
        self.notes = run.serve(self.notes_app, "notes·check")
        self.notes_link = run.link(self.notes, latency_ms=5)
        self.client = run.client("you")
        self.users = users

    def credentials(self, user: str, password: str | None = None) -> dict:
        return {"username": user, "password": self.users[user][0] if password is None else password}

    def token(self, user: str) -> str:
        answer = self.client.post(self.auth.url + "/login", json=self.credentials(user))
        answer.raise_for_status()
        return answer.json()["token"]

    def call(self, run, credentials, token):
        return run.call(self.client, self.auth_link.url, self.notes_link.url, credentials, token)

    def sign_ins(self, call) -> list:
        return call.receives(self.auth, path="/login")

    def reads(self, call) -> list:
        return call.receives(self.notes, path="/notes")


def _retry_after_as_a_date(response):
    """Retry-After in its other form (RFC 9110, 10.2.3): the HTTP date when the wait is over, never earlier."""
    seconds = response.headers.get("Retry-After")
    if seconds is not None and seconds.isdigit():
        response.headers["Retry-After"] = email.utils.formatdate(math.ceil(time.time()) + int(seconds), usegmt=True)
    return response


def _always_busy():
    """A sign-in service that answers every attempt 429, Retry-After: 1."""
    app = Flask("busy")

    @app.post("/login")
    def login():
        return {"error": "too many sign-ins; try again in 1 s"}, 429, {"Retry-After": str(LOCKOUT_S)}

    return app


def _pair_of(value, case: str):
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise Fail(f"{case}: it returned a {type_name(value)}, not a pair (notes, token)",
                   "return a tuple: (notes, token)")
    return value


def _judge_notes(value, case: str, user: str):
    notes, token = _pair_of(value, case)
    if notes != _NOTES:
        raise Fail(f"{case}: it returned notes {show(notes)}; the service holds {show(_NOTES)}",
                   'return response.json()["notes"] from GET notes_url + "/notes"')
    if not isinstance(token, str) or token.count(".") != 2 or _parts(token)[1].get("sub") != user:
        raise Fail(f"{case}: the token it returned is not {user}'s token ({type_name(token)})",
                   "return the token you used for the successful call, so the next call can use it again")
    return token


def _judge_sign_ins(pair, call, expected: int, case: str, hint: str):
    made = len(pair.sign_ins(call))
    if made != expected:
        raise Fail(f"{case}: it signed in {made} time(s), expected {expected}", hint)


@q62.test("no token yet")
def _(run):
    pair = _Pair(run)
    call = pair.call(run, pair.credentials("alice"), None)
    _judge_notes(call.value, "with token None", "alice")
    _judge_sign_ins(pair, call, 1, "with token None", "sign in once when you have no token")


@q62.test("a valid token")
def _(run):
    pair = _Pair(run)
    token = pair.token("bob")
    call = pair.call(run, pair.credentials("bob"), token)
    returned = _judge_notes(call.value, "with bob's valid token", "bob")
    _judge_sign_ins(pair, call, 0, "with bob's valid token",
                    "reuse the token you are given: every sign-in costs the sign-in service a slow hash, "
                    "and the token is valid for minutes")
    if returned != token:
        raise Fail("with bob's valid token: it returned another token than the one it used",
                   "return the token you were given when it worked")


@q62.test("an expired token")
def _(run):
    pair = _Pair(run)
    claims = _parts(pair.token("alice"))[1]
    expired = pair.app.extensions["labkit"].signer.sign({**claims, "iat": claims["iat"] - 7200,
                                                             "exp": claims["iat"] - 3600})
    call = pair.call(run, pair.credentials("alice"), expired)
    case = "with alice's token that expired an hour ago"
    if not isinstance(call.value, (tuple, list)) or len(call.value) != 2 or call.value[0] is None:
        raise Fail(f"{case}: it returned no notes",
                   "a 401 from the notes service means the token is no good: sign in again, then retry once")
    returned = _judge_notes(call.value, case, "alice")
    _judge_sign_ins(pair, call, 1, case, "after a 401, sign in once and retry the read once")
    if returned == expired:
        raise Fail(f"{case}: it returned the expired token", "return the new token from the sign-in")


@q62.test("a valid token without the role (403)")
def _(run):
    pair = _Pair(run)
    token = pair.token("zed")
    call = pair.call(run, pair.credentials("zed"), token)
    case = "zed (no roles) with a valid token"
    notes, returned = _pair_of(call.value, case)
    if notes is not None:
        raise Fail(f"{case}: it returned notes {show(notes)} although the service answered 403; expected None",
                   "return (None, token) when the notes service answers 403")
    _judge_sign_ins(pair, call, 0, case,
                    "a 403 means the service knows who you are and refuses: signing in again gives the same roles")
    if len(pair.reads(call)) != 1:
        raise Fail(f"{case}: it asked the notes service {len(pair.reads(call))} times; a 403 does not change on retry",
                   "return (None, token) after the first 403")


@q62.test("a wrong password")
def _(run):
    pair = _Pair(run)
    call = pair.call(run, pair.credentials("alice", "not alice's password"), None)
    case = "with a wrong password and no token"
    notes, token = _pair_of(call.value, case)
    if notes is not None or token is not None:
        raise Fail(f"{case}: it returned notes {show(notes)} and {'a token' if token else show(token)}; "
                   f"expected (None, None)",
                   "when the sign-in answers 401 there is no token and no notes: return (None, None)")
    _judge_sign_ins(pair, call, 1, case, "a wrong password stays wrong: do not try it again")


@q62.test("the sign-in service asks you to wait (429, Retry-After: 1)")
def _(run):
    pair = _Pair(run, max_failures=2, lockout_s=LOCKOUT_S)
    for _ in range(2):  # someone else guessed alice's password: she is locked out for a second
        pair.client.post(pair.auth.url + "/login", json=pair.credentials("alice", "guess"))
    call = pair.call(run, pair.credentials("alice"), None)
    case = "while alice is locked out for 1 s"
    attempts = pair.sign_ins(call)
    wait = 'time.sleep(int(response.headers["Retry-After"])) before the next attempt'
    if len(attempts) > MAX_SIGN_INS:
        raise Fail(f"{case}: it made more than {MAX_SIGN_INS} sign-in attempts",
                   "wait as long as the Retry-After header says before you sign in again")
    if len(attempts) < 2:
        raise Fail(f"{case}: it gave up after the sign-in service answered 429",
                   f"429 means 'not now': {wait}, then sign in again")
    if attempts[-1].t - attempts[0].t < LOCKOUT_S * 0.8:
        raise Fail(f"{case}: it signed in again before the {LOCKOUT_S} s of Retry-After had passed", wait)
    _judge_notes(call.value, case, "alice")


_GIVE_UP = "if the third attempt is answered 429 too, return (None, None) at once"


@q62.test("the sign-in service answers 429 to every attempt (Retry-After: 1)")
def _(run):
    busy = run.serve(_always_busy(), "auth·busy")
    busy_link = run.link(busy, latency_ms=5)
    notes = run.serve(create("notes", name="notes·check", auth_url=busy.url, trace=run.trace), "notes·check")
    notes_link = run.link(notes, latency_ms=5)
    credentials = {"username": "alice", "password": USERS["alice"][0]}
    call = run.call(run.client("you"), busy_link.url, notes_link.url, credentials, None)
    case = "while the sign-in service answers every attempt 429"
    attempts = call.receives(busy, path="/login")
    if len(attempts) > MAX_SIGN_INS:
        raise Fail(f"{case}: it made {len(attempts)} sign-in attempts, more than {MAX_SIGN_INS}", _GIVE_UP)
    if len(attempts) < MAX_SIGN_INS:
        raise Fail(f"{case}: it gave up after {len(attempts)} attempt(s)",
                   f"make {MAX_SIGN_INS} attempts in all, waiting as long as Retry-After says between them")
    for before, after in zip(attempts, attempts[1:]):
        if after.t - before.t < LOCKOUT_S * 0.8:
            raise Fail(f"{case}: it signed in again before the {LOCKOUT_S} s of Retry-After had passed",
                       "wait as long as the Retry-After header says before each new attempt")
    notes, token = _pair_of(call.value, case)
    if notes is not None or token is not None:
        raise Fail(f"{case}: it returned {show(notes)} and {show(token)}; expected (None, None)", _GIVE_UP)
    after_last = call.ended - (run.trace.start + attempts[-1].t)
    if after_last > 0.6:
        raise Fail(f"{case}: it returned {after_last:.1f} s after the third 429; no attempt follows it, "
                   "so there is nothing to wait for", _GIVE_UP + ", without sleeping after it")


@q62.test("Retry-After as an HTTP date")
def _(run):
    pair = _Pair(run, http_date=True, max_failures=2, lockout_s=LOCKOUT_DATE_S)
    for _ in range(2):  # someone else guessed alice's password: she is locked out for a few seconds
        pair.client.post(pair.auth.url + "/login", json=pair.credentials("alice", "guess"))
    call = pair.call(run, pair.credentials("alice"), None)
    case = f"while alice is locked out for {LOCKOUT_DATE_S} s, Retry-After given as an HTTP date"
    if not isinstance(call.value, (tuple, list)) or len(call.value) != 2 or call.value[0] is None:
        raise Fail(f"{case}: it returned no notes",
                   "Retry-After may be an HTTP date such as 'Wed, 21 Oct 2026 07:28:00 GMT': wait until then "
                   "(email.utils.parsedate_to_datetime(value).timestamp() - time.time() seconds)")
    if len(pair.sign_ins(call)) > MAX_SIGN_INS:
        raise Fail(f"{case}: it made more than {MAX_SIGN_INS} sign-in attempts", "wait until the date Retry-After names")
    _judge_notes(call.value, case, "alice")


@q62.test("a notes service that refuses even a fresh token (401 twice)")
def _(run):
    pair = _Pair(run, notes_options={"issuer": "another-sign-in"})  # it trusts another issuer's tokens only
    token = pair.token("alice")
    call = pair.call(run, pair.credentials("alice"), token)
    case = "with a notes service that answers 401 to every token, even a fresh one"
    notes, returned = _pair_of(call.value, case)
    if notes is not None or returned is not None:
        raise Fail(f"{case}: it returned {show(notes)} and {'a token' if returned else show(returned)}; "
                   "expected (None, None)",
                   "when the retried read is answered 401 too, no token works here: return (None, None)")
    _judge_sign_ins(pair, call, 1, case, "after a 401, sign in once and retry the read once; then stop")
    if len(pair.reads(call)) != 2:
        raise Fail(f"{case}: it read {len(pair.reads(call))} time(s); expected 2 (the read, and one retry)",
                   "retry the read once after signing in again, then return (None, None)")
