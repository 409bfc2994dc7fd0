"""A payment service that fails on purpose, for notebook 07 (error handling).

    POST /charge          {"amount": cents} with an optional Idempotency-Key header
                          -> 201 {"charge_id", "amount", "status": "succeeded"}
                          The same key again (same body) answers the first result and
                          charges nothing (header Idempotent-Replayed: true); the same key
                          with a different body -> 422. amount: an integer 1..1,000,000,
                          anything else -> 400 (and nothing is charged).
    GET  /price?item=NAME {"item", "price"}: a read, safe to repeat
    GET  /stats           what the service received: {"requests", "statuses", "charges",
                          "charged", "replayed", "max_in_flight", "bucket_s", "load"}, where
                          load[i] counts the requests that arrived in the i-th bucket of
                          bucket_s seconds since the first one
    GET  /faults          the fault settings
    PUT  /faults          change them: JSON with any of the options below; "recover_s" and
                          "recover_requests" start counting again from now

/stats and /faults never fail and are not counted. Every other request meets
the faults, decided in the order the requests arrive, with seeded random numbers:

=================  ================================================================
option             what the caller sees
=================  ================================================================
error_rate         that fraction of requests answers ``error_status`` (500 or 503)
                   before doing anything (nothing is charged)
slow_rate, slow_ms that fraction of requests does its work, then waits slow_ms before
                   answering: a charge is made, the answer comes late (slow headers)
recover_s          the service is "recovering": it answers 503 to everything for
                   this many seconds after it starts (or after PUT /faults)
recover_requests   ... or to its first N requests
capacity, work_ms  each request takes work_ms of waiting; more than ``capacity``
                   requests at once are turned away with 503 at once (overload)
=================  ================================================================

These are HTTP-level faults: a :class:`labkit.Link` in front of the service adds
the network's own (refused, reset, dropped, slow). ``app.config["flaky"]`` is
the service's :class:`Flaky` state, so a notebook or a test can read the same
counts in-process. When its labkit server stops, requests still waiting in a slow
answer end at once.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
import zlib

from flask import Flask, jsonify, request

from ..server import ON_STOP
from ._errors import json_errors

MAX_AMOUNT = 1_000_000
MAX_SLOW_MS = 60_000
MAX_RECOVER_S = 3_600
MAX_BUCKETS = 100_000
_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces

#: option -> (kind, low, high); kind "p" a probability, "n" a number, "i" an integer, "s" a status
OPTIONS = {
    "error_rate": ("p", 0.0, 1.0),
    "error_status": ("s", 500, 503),
    "slow_rate": ("p", 0.0, 1.0),
    "slow_ms": ("n", 0.0, MAX_SLOW_MS),
    "recover_s": ("n", 0.0, MAX_RECOVER_S),
    "recover_requests": ("i", 0, 10**9),
    "capacity": ("i", 1, 10**6),  # or None: no limit
    "work_ms": ("n", 0.0, MAX_SLOW_MS),
}
DEFAULTS = dict(error_rate=0.0, error_status=503, slow_rate=0.0, slow_ms=2000.0, recover_s=0.0,
                recover_requests=0, capacity=None, work_ms=0.0)


def _validated(changes) -> dict:
    """The options in ``changes``, checked; ValueError with a sentence naming the bad one."""
    if not isinstance(changes, dict):
        raise ValueError(f"send a JSON object of fault settings such as {{\"error_rate\": 0.3}}; "
                         f"the settings are {', '.join(OPTIONS)}")
    checked = {}
    for name, value in changes.items():
        if name not in OPTIONS:
            raise ValueError(f"{name!r} is not a fault setting; the settings are {', '.join(OPTIONS)}")
        kind, low, high = OPTIONS[name]
        if name == "capacity" and value is None:
            checked[name] = None
            continue
        if kind == "s":
            if isinstance(value, bool) or value not in (500, 503):
                raise ValueError(f"error_status must be 500 or 503, not {value!r}")
        elif kind == "i":
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"{name} must be an integer from {low} to {high}, not {value!r}")
        else:
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                    or not low <= value <= high):
                raise ValueError(f"{name} must be a number from {low:g} to {high:g}, not {value!r}")
            value = float(value)
        checked[name] = value
    return checked


class Flaky:
    """The service's state: fault settings, charges, idempotency keys and load counts. Thread-safe."""

    def __init__(self, seed: int, bucket_s: float, options: dict):
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stopping = threading.Event()
        self.bucket_s = bucket_s
        self.settings = {**DEFAULTS, **_validated(options)}
        self._since = time.monotonic()      # when recovering began
        self._counted_since_change = 0       # requests since the settings changed (recover_requests)
        self.requests = 0
        self.statuses: dict[str, int] = {}
        self.charges: list[dict] = []
        self.replayed = 0
        self.in_flight = self.max_in_flight = 0
        self._first: float | None = None
        self.load: list[int] = []
        self._keys: dict[str, tuple[str, dict]] = {}  # key -> (fingerprint of the body, the charge)

    # -- settings and stats ------------------------------------------------------

    def configure(self, /, **changes) -> dict:
        """Change fault settings (ValueError, and nothing changes, if one is wrong); restart recovery."""
        checked = _validated(changes)
        with self._lock:
            self.settings.update(checked)
            self._since = time.monotonic()
            self._counted_since_change = 0
            return dict(self.settings)

    def stats(self) -> dict:
        with self._lock:
            return dict(requests=self.requests, statuses=dict(sorted(self.statuses.items())),
                        charges=len(self.charges), charged=sum(c["amount"] for c in self.charges),
                        replayed=self.replayed, max_in_flight=self.max_in_flight,
                        bucket_s=self.bucket_s, load=list(self.load))

    def stop(self) -> None:
        """Wake every request waiting in a slow answer or in its work, so the server can stop at once."""
        self._stopping.set()

    def wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    # -- one request ---------------------------------------------------------------

    def _count(self, now: float) -> None:
        self.requests += 1
        if self._first is None:
            self._first = now
        bucket = int((now - self._first) / self.bucket_s)
        if bucket < MAX_BUCKETS:
            self.load.extend([0] * (bucket + 1 - len(self.load)))
            self.load[bucket] += 1

    def refused(self) -> None:
        """Count a request refused as malformed (400): it meets no fault."""
        with self._lock:
            self._count(time.monotonic())
            self.statuses["400"] = self.statuses.get("400", 0) + 1

    def arrive(self) -> tuple[str, float]:
        """Count a request and decide its fate: ("error" | "recovering" | "busy" | "ok", slow seconds)."""
        now = time.monotonic()
        with self._lock:
            s = self.settings
            self._count(now)
            self._counted_since_change += 1
            r_error, r_slow = self._rng.random(), self._rng.random()
            if now - self._since < s["recover_s"] or self._counted_since_change <= s["recover_requests"]:
                return "recovering", 0.0
            if s["capacity"] is not None and self.in_flight >= s["capacity"]:
                return "busy", 0.0
            if r_error < s["error_rate"]:
                return "error", 0.0
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return "ok", (s["slow_ms"] / 1000 if r_slow < s["slow_rate"] else 0.0)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def answered(self, status: int) -> None:
        with self._lock:
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    def charge(self, amount: int, key: str | None, fingerprint: str) -> tuple[int, dict, bool]:
        """(status, body, replayed): charge once per key; the same key with another body is 422."""
        with self._lock:
            if key is not None and key in self._keys:
                first_fingerprint, first = self._keys[key]
                if first_fingerprint != fingerprint:
                    return 422, {"error": f"the Idempotency-Key {key!r} was first used for another request "
                                          f"({first['amount']} cents); use a new key for a new payment"}, False
                self.replayed += 1
                return 201, first, True
            charge = {"charge_id": f"ch_{len(self.charges) + 1:05d}", "amount": amount, "status": "succeeded"}
            self.charges.append(charge)
            if key is not None:
                self._keys[key] = (fingerprint, charge)
            return 201, charge, False


_FAILURES = {
    "recovering": "the service is recovering from a failure; try again later",
    "busy": "the service is over capacity; try again later",
    "error": "the service failed while handling the request; try again later",
}


def create_app(*, seed: int = 0, bucket_s: float = 0.1, **faults) -> Flask:
    """The flaky payment service; ``faults`` are the options of the table in the module docstring."""
    if isinstance(bucket_s, bool) or not isinstance(bucket_s, (int, float)) or not 0.001 <= bucket_s <= 3600:
        raise ValueError(f"bucket_s is a number of seconds from 0.001 to 3600, not {bucket_s!r}")
    app = json_errors(Flask("flaky"))
    state = app.config["flaky"] = Flaky(seed, float(bucket_s), faults)
    app.extensions[ON_STOP] = [state.stop]  # its server wakes the requests waiting in slow answers

    def faulty(handler):
        """Run ``handler`` under the faults: count, maybe fail, do the work, maybe answer late."""
        fate, slow_s = state.arrive()
        if fate != "ok":
            status = 503 if fate != "error" else state.settings["error_status"]
            state.answered(status)
            return jsonify(error=_FAILURES[fate]), status
        try:
            state.wait(state.settings["work_ms"] / 1000)
            response, status = handler()
        finally:
            state.leave()
        state.wait(slow_s)  # the work is done; the answer comes late
        state.answered(status)
        return response, status

    @app.post("/charge")
    def charge():
        body = request.get_json(silent=True)
        amount = body.get("amount") if isinstance(body, dict) else None
        key = request.headers.get("Idempotency-Key")
        problem = None
        if isinstance(amount, bool) or not isinstance(amount, int) or not 1 <= amount <= MAX_AMOUNT:
            problem = f'send JSON {{"amount": cents}} with a whole number of cents from 1 to {MAX_AMOUNT}, not {amount!r}'
        elif key is not None and not _KEY.fullmatch(key):
            problem = "the Idempotency-Key header must be 1 to 255 printable characters without spaces"
        if problem:  # refused before any fault: a bad request stays bad, however often it is sent
            state.refused()
            return jsonify(error=problem), 400
        fingerprint = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

        def work():
            status, result, replayed = state.charge(amount, key, fingerprint)
            response = jsonify(result)
            if replayed:
                response.headers["Idempotent-Replayed"] = "true"
            return response, status

        return faulty(work)

    @app.get("/price")
    def price():
        item = request.args.get("item", "")
        if not item or len(item) > 100:
            state.refused()
            return jsonify(error=f"send ?item=NAME with 1 to 100 characters, not {item[:100]!r}"), 400
        return faulty(lambda: (jsonify(item=item, price=100 + zlib.crc32(item.encode()) % 900), 200))

    @app.get("/stats")
    def stats():
        return jsonify(state.stats())

    @app.get("/faults")
    def get_faults():
        return jsonify(state.settings)

    @app.put("/faults")
    def put_faults():
        body = request.get_json(silent=True)
        try:
            return jsonify(state.configure(**body) if isinstance(body, dict) else _validated(body))
        except ValueError as error:
            return jsonify(error=str(error)), 400

    return app
