"""The service kit: the one way every reference service in this folder is made.

A service has two parts:

- its **state**, a plain class a test or a notebook can build and call without HTTP
  (the peer's replica, the registry's leases). Its ``close()``, if it has one, runs when
  the server stops: threads end, its own clients close, requests it holds are woken;
- thin **routes** on a Blueprint: read the request, call the state, answer.

    bp = Blueprint("hello", __name__)

    @bp.get("/hello")
    def hello():
        name = kit.text(request.args.get("name", "world"), "name")
        return {"message": f"Hello, {name}!"}

    def create_app(*, name="hello"):
        return kit.make_app(name, None, bp)

A route finds its service's state with :func:`state`. The one way to refuse a request
is ``flask.abort(status, "a sentence that says what to send instead")``; the field
checks below refuse with 400 (they raise :class:`labkit.errors.Invalid`, a ValueError
too, so the same checks guard a service's options). Every error, Flask's own 404, 405
and 413 included, reaches the client as JSON ``{"error": sentence}``.
"""

from __future__ import annotations

import math
import re
import threading
from urllib.parse import urlsplit

import requests
from flask import Blueprint, Flask, Response, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from ..client import describe
from ..errors import Invalid
from ..server import STATE

#: The largest request body a reference service reads, in bytes.
MAX_BODY_BYTES = 64 * 1024
#: What a name (of a peer, an instance, a counter, a service) may be.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def make_app(name: str, state=None, *blueprints: Blueprint, max_body_bytes: int = MAX_BODY_BYTES) -> Flask:
    """A Flask app called ``name`` that keeps ``state`` and serves ``blueprints``; every error is JSON."""
    app = Flask(text(name, "a service's name"))
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes
    app.extensions[STATE] = state
    app.register_error_handler(HTTPException, _as_json)
    for blueprint in blueprints:
        app.register_blueprint(blueprint)
    return app


def _as_json(error: HTTPException):
    messages = {  # for werkzeug's own errors, which carry its HTML-minded default sentences
        404: f"no such page: {request.path}",
        405: f"{request.method} is not allowed on {request.path}",
        413: f"the body is too large: send at most {current_app.config['MAX_CONTENT_LENGTH']} bytes",
    }
    own = error.description != type(error).description  # abort(status, sentence) gave its own
    response = jsonify(error=error.description if own else messages.get(error.code, error.description))
    # The error's own headers (Allow on a 405, ...) and those refuse() set (Retry-After, ...); the body is JSON.
    headers = list(error.get_headers())
    if error.response is not None:
        headers += error.response.headers.items()
    for header, value in headers:
        if header.lower() not in ("content-type", "content-length"):
            response.headers[header] = value
    return response, error.code


def state():
    """The state of the service answering the current request."""
    return current_app.extensions[STATE]


def refuse(status: int, sentence: str, **headers) -> None:
    """``abort(status, sentence)`` with response headers, such as ``Retry-After`` or ``WWW-Authenticate``."""
    abort(status, description=sentence, response=Response(headers=headers))


# -- reading requests ------------------------------------------------------------------------


def body(example: str) -> dict:
    """The request's JSON object, or 400 naming ``example`` (what to send instead)."""
    value = request.get_json(silent=True, force=True)
    if not isinstance(value, dict):
        raise Invalid(f"send a JSON object such as {example}")
    return value


def short(value, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: a sentence may quote what it refuses."""
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


def text(value, field: str, *, limit: int = 100) -> str:
    """``value`` if it is 1 to ``limit`` printable characters, not all blank."""
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise Invalid(f"{field} must be 1 to {limit} printable characters, not {short(value)}")
    return value


def name(value, field: str) -> str:
    """``value`` if it is a name: see NAME_RULE."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise Invalid(f"{field} must be {NAME_RULE}, not {short(value)}")
    return value


def whole(value, field: str, low: int, high: int) -> int:
    """``value`` if it is a whole number from ``low`` to ``high`` (True and False are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Invalid(f"{field} must be a whole number from {low} to {high}, not {short(value)}")
    return value


def number(value, field: str, low: float, high: float, *, unit: str = "") -> float:
    """``value`` as a float if it is a finite number from ``low`` to ``high``."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not low <= value <= high):
        raise Invalid(f"{field} must be a number{' of ' + unit if unit else ''} from {low:g} to {high:g}, "
                      f"not {short(value)}")
    return float(value)


def positive(value, field: str, high: float, *, unit: str = "seconds") -> float:
    """``value`` as a float if it is a finite number above 0 and at most ``high``."""
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not 0 < value <= high):
        raise Invalid(f"{field} must be a number of {unit} above 0 and at most {high:g}, not {short(value)}")
    return float(value)


def probability(value, field: str) -> float:
    return number(value, field, 0.0, 1.0)


def flag(value, field: str) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"{field} must be true or false, not {short(value)}")
    return value


def url(value, field: str, *, path: bool = False) -> str:
    """``value`` without its trailing slash, if it is a base URL: http(s), a host and a port (and a path,
    if ``path``), no query."""
    problem = not isinstance(value, str) or len(value) > 300 or any(c.isspace() for c in value)
    if not problem:
        try:
            parts = urlsplit(value)
            problem = (parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None
                       or (not path and parts.path not in ("", "/")) or bool(parts.query or parts.fragment))
        except ValueError:
            problem = True
    if problem:
        shape = "scheme, host, port and perhaps a path" if path else "scheme, host and port"
        raise Invalid(f'{field} must be a base URL such as "http://127.0.0.1:5001" ({shape}, '
                      f"at most 300 characters), not {short(value)}")
    return value.rstrip("/")


def idempotency_key() -> str | None:
    """The request's ``Idempotency-Key`` header (None if it has none), or 400 if it is malformed."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not re.fullmatch(r"[\x21-\x7e]{1,100}", key):
        raise Invalid("the Idempotency-Key header must be 1 to 100 printable characters without spaces, "
                      "the same on every retry of one request")
    return key


# -- faults --------------------------------------------------------------------------------------


class Faults:
    """A service's fault settings: checked, changed all at once or not at all, read by many threads.

        >>> faults = Faults({"work_ms": (0.0, lambda v, f: number(v, f, 0, 10_000))}, {"work_ms": 10})
        >>> faults.configure(work_ms=50)["work_ms"]
        50.0

    ``rules`` maps each setting to (its default, a check that returns the value or
    raises Invalid); ``on_change()`` runs after every change. Routes: the :data:`faults`
    Blueprint, ``GET /faults`` and ``PUT /faults``, for a state whose ``faults`` this is.
    """

    def __init__(self, rules: dict, values: dict | None = None, *, on_change=None):
        self._rules = dict(rules)
        self._on_change = None
        self._lock = threading.Lock()
        self._values = {setting: default for setting, (default, _) in self._rules.items()}
        self.configure(**(values or {}))
        self._on_change = on_change

    def configure(self, /, **changes) -> dict:
        """Apply ``changes`` (Invalid, and nothing changes, if one is unknown or bad); the settings now."""
        checked = {}
        for setting, value in changes.items():
            if setting not in self._rules:
                raise Invalid(f"{short(setting)} is not a fault setting of this service; "
                              f"the settings are {', '.join(self._rules)}")
            checked[setting] = self._rules[setting][1](value, setting)
        with self._lock:
            self._values.update(checked)
            now = dict(self._values)
        if self._on_change is not None:
            self._on_change()
        return now

    def __getitem__(self, setting: str):
        with self._lock:
            return self._values[setting]

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._values)


#: ``GET /faults`` (the settings) and ``PUT /faults`` (change some; all or none), for a state with ``faults``.
faults = Blueprint("faults", __name__)


@faults.get("/faults")
def _get_faults():
    return state().faults.snapshot()


@faults.put("/faults")
def _put_faults():
    return state().faults.configure(**body('{"error_rate": 0.3}'))


# -- calling other services ----------------------------------------------------------------------

#: Headers of an answer that a forwarder passes back to its caller.
PASSED_BACK = ("Content-Type", "Idempotent-Replayed", "Retry-After", "WWW-Authenticate", "Location")


def forward(client, method: str, url: str, *, service: str, **kwargs) -> Response:
    """Send the request on to ``service`` at ``url`` with ``client``, and hand its answer back.

    It answers 504 when ``service`` does not answer in time, and 502 when it cannot be
    reached; ``kwargs`` go to ``client.request`` (``data``, ``headers``, ...).
    """
    try:
        answer = client.request(method, url, **kwargs)
    except requests.exceptions.Timeout:
        abort(504, f"{service} did not answer in time; try again")
    except requests.exceptions.RequestException as exc:
        abort(502, f"{service} could not be reached ({describe(exc)}); try again")
    response = Response(answer.content, status=answer.status_code)
    for header in PASSED_BACK:
        if header in answer.headers:
            response.headers[header] = answer.headers[header]
    return response


# -- time ----------------------------------------------------------------------------------------


class ManualClock:
    """A clock that moves only when told: ``clock()`` is the time in seconds, ``clock.advance(s)`` moves it.

    Services that keep time (leases, token expiry, lockouts) take a ``clock``; this one
    makes an experiment or a test see the same expiries on every run.

        >>> clock = ManualClock()
        >>> clock.advance(1.5)
        >>> clock()
        1.5
    """

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        number(seconds, "a clock moves forward only: seconds", 0, 10**9)
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return f"<ManualClock at {self():g} s>"
