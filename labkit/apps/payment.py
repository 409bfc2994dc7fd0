"""A card processor (notebooks 04 and 07): it charges once per idempotency key, and fails on purpose.

    POST /charges             {"amount_cents": 1200}, with an optional ``Idempotency-Key: K`` header
                              -> 201 {"reference", "amount_cents", "status": "succeeded"}
                                 402 declined; nothing charged
                                 503 (or 500, or 429) failing or overloaded; nothing charged
                                 409 a request with this key is still being processed: retry later
                                 422 this key was first used for another amount: use a new key
                              The same key again gives its first answer again, a decline
                              included (header ``Idempotent-Replayed: true``): a retry never
                              charges twice. Without a key every request is a new charge.
    GET  /charges/<reference> one charge: a read, safe to repeat
    GET  /fees?amount_cents=N {"amount_cents", "fee_cents"}: what the processor keeps of a charge of
                              N cents (2.9% + 30 cents); a read, safe to repeat
    GET  /stats               what it received: {"requests", "statuses", "charges", "charged_cents",
                              "declined", "replayed", "max_in_flight", "bucket_s", "load"}, where
                              load[i] counts the requests that arrived in the i-th bucket of
                              bucket_s seconds since the first one
    GET  /faults, PUT /faults the fault settings below; a change restarts "recover_s" and
                              "recover_requests"

Keys follow the IETF Idempotency-Key draft: they are scoped per caller and forgotten
``key_ttl_s`` after their first use (Stripe keeps them 24 hours). A real processor scopes
them per authenticated account; this one has no authentication, so the caller's own
``Labkit-Caller`` header (or else its address) stands in for the account. That name is
asserted, not proven: it is no security boundary (any caller can claim another's name
and have its stored answers replayed).

Faults, decided in the order requests arrive, with seeded random numbers; a notebook
picks its own profile (notebook 04 declines and slows, notebook 07 fails and overloads):

=================  ================================================================
setting            what the caller sees
=================  ================================================================
decline_rate       that fraction of new charges is declined (402); the decline is final
error_rate         that fraction of requests answers ``error_status`` (500, 503, or 429
                   Too Many Requests) before doing anything (nothing is charged)
retry_after_s      None, or a whole number of seconds: every 503 and 429 answer then
                   carries ``Retry-After: N`` (RFC 9110, section 10.2.3), the pause
                   the processor asks for
work_ms            each request takes this long to do its work
late_rate, late_ms that fraction of requests does its work, then waits late_ms before
                   answering: the charge is made, the answer comes late
recover_s          it is "recovering": 503 to everything for this many seconds after it
                   starts (or after a change of the settings)
recover_requests   ... or to its first N requests
capacity           more than this many requests at once are turned away with 503 at once
=================  ================================================================

The ledger lives in the processor's own memory, not in the store's database: it
stands for an outside company. A :class:`labkit.Link` in front of it adds the
network's faults (refused, reset, lost, slow).
"""

from __future__ import annotations

import random
import threading
import time

from flask import Blueprint, jsonify, request

from ..errors import Invalid
from . import kit

MAX_AMOUNT_CENTS = 10**9
MAX_MS = 60_000.0
MAX_BUCKETS = 100_000


def _status(value, field):
    if value not in (429, 500, 503) or isinstance(value, bool):
        raise Invalid(f"{field} must be 429, 500 or 503, not {kit.short(value)}")
    return value


def _retry_after(value, field):
    return None if value is None else kit.whole(value, field, 0, 86_400)


def _capacity(value, field):
    return None if value is None else kit.whole(value, field, 1, 10**6)


RULES = {
    "decline_rate": (0.0, kit.probability),
    "error_rate": (0.0, kit.probability),
    "error_status": (503, _status),
    "work_ms": (0.0, lambda v, f: kit.number(v, f, 0, MAX_MS, unit="milliseconds")),
    "late_rate": (0.0, kit.probability),
    "late_ms": (2000.0, lambda v, f: kit.number(v, f, 0, MAX_MS, unit="milliseconds")),
    "recover_s": (0.0, lambda v, f: kit.number(v, f, 0, 3600, unit="seconds")),
    "recover_requests": (0, lambda v, f: kit.whole(v, f, 0, 10**9)),
    "capacity": (None, _capacity),
    "retry_after_s": (None, _retry_after),
}

_FAILURES = {
    "recovering": "the processor is recovering from a failure; try again later",
    "busy": "the processor is over capacity; try again later",
    "error": "the processor failed while handling the request; try again later",
}


class Processor:
    """The processor's state: faults, the ledger, idempotency keys and load counts. Thread-safe."""

    def __init__(self, *, seed: int, bucket_s: float, key_ttl_s: float, clock=time.monotonic, **faults):
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._stopping = threading.Event()
        self._clock = clock
        self.bucket_s = kit.number(bucket_s, "bucket_s", 0.001, 3600, unit="seconds")
        self.key_ttl_s = kit.positive(key_ttl_s, "key_ttl_s", 10**7)
        self._since, self._counted = clock(), 0  # when recovering began; requests since then
        self.faults = kit.Faults(RULES, faults, on_change=self._restart)
        self.charges: dict[str, dict] = {}        # reference -> the charge
        self._keys: dict[tuple, dict] = {}        # (caller, key) -> {"fingerprint", "answer", "until"}
        self.requests, self.declined, self.replayed = 0, 0, 0
        self.statuses: dict[str, int] = {}
        self.in_flight = self.max_in_flight = 0
        self._first: float | None = None
        self.load: list[int] = []

    def _restart(self) -> None:
        with self._lock:
            self._since, self._counted = self._clock(), 0

    def stats(self) -> dict:
        with self._lock:
            return dict(requests=self.requests, statuses=dict(sorted(self.statuses.items())),
                        charges=len(self.charges), charged_cents=sum(c["amount_cents"] for c in self.charges.values()),
                        declined=self.declined, replayed=self.replayed, max_in_flight=self.max_in_flight,
                        bucket_s=self.bucket_s, load=list(self.load))

    def wait(self, seconds: float) -> None:
        """Sleep, but wake at once when the server stops."""
        if seconds > 0:
            self._stopping.wait(seconds)

    def close(self) -> None:
        self._stopping.set()

    # -- one request ----------------------------------------------------------------------------

    def _count(self, now: float) -> None:
        """Count one request in ``requests`` and in its bucket of ``load``. Call with the lock held."""
        self.requests += 1
        self._first = now if self._first is None else self._first
        bucket = int((now - self._first) / self.bucket_s)
        if bucket < MAX_BUCKETS:
            self.load.extend([0] * (bucket + 1 - len(self.load)))
            self.load[bucket] += 1

    def refused(self) -> None:
        """Count a request refused as malformed (400): it meets no fault."""
        with self._lock:
            self._count(self._clock())
            self.statuses["400"] = self.statuses.get("400", 0) + 1

    def arrive(self) -> tuple[str, float]:
        """Count a request and decide its fate: ("ok", seconds its answer comes late) or (why it fails, 0)."""
        now = self._clock()
        s = self.faults.snapshot()
        with self._lock:
            self._count(now)
            self._counted += 1
            r_error, r_late = self._rng.random(), self._rng.random()
            if now - self._since < s["recover_s"] or self._counted <= s["recover_requests"]:
                return "recovering", 0.0
            if s["capacity"] is not None and self.in_flight >= s["capacity"]:
                return "busy", 0.0
            if r_error < s["error_rate"]:
                return "error", 0.0
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return "ok", s["late_ms"] / 1000 if r_late < s["late_rate"] else 0.0

    def served(self, work, begin=lambda: None):
        """One request under the faults: ``begin()`` (an early answer, or None), the work time, then
        ``work()``; the (status, body, headers) the caller gets."""
        fate, late_s = self.arrive()
        if fate != "ok":
            status = self.faults["error_status"] if fate == "error" else 503
            self.answered(status)
            after = self.faults["retry_after_s"]
            headers = {"Retry-After": str(after)} if after is not None and status in (429, 503) else {}
            return status, {"error": _FAILURES[fate]}, headers
        try:
            answer = begin()
            if answer is None:
                self.wait(self.faults["work_ms"] / 1000)
                answer = work()
                self.wait(late_s)  # the work is done; the answer comes late
        finally:
            with self._lock:
                self.in_flight -= 1
        self.answered(answer[0])
        return answer

    def answered(self, status: int) -> None:
        with self._lock:
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1

    def begin_charge(self, caller: str, key: str | None, amount_cents: int):
        """Reserve (caller, key) for a new charge (None), or the answer the key already has."""
        if key is None:
            return None
        now = self._clock()
        with self._lock:
            for expired in [k for k, v in self._keys.items() if v["until"] <= now]:
                del self._keys[expired]
            known = self._keys.get((caller, key))
            if known is None:
                self._keys[(caller, key)] = {"amount_cents": amount_cents, "answer": None,
                                             "until": now + self.key_ttl_s}
                return None
            if known["amount_cents"] != amount_cents:
                return 422, {"error": f"the Idempotency-Key {key!r:.60} was first used for "
                                      f"{known['amount_cents']} cents; use a new key for a new payment"}, {}
            if known["answer"] is None:
                return 409, {"error": "a request with this Idempotency-Key is still being processed; "
                                      "try again in a moment with the same key"}, {}
            self.replayed += 1
            return (*known["answer"], {"Idempotent-Replayed": "true"})

    def charge(self, caller: str, key: str | None, amount_cents: int):
        """Charge, or decline; the answer is final for (caller, key)."""
        with self._lock:
            if self._rng.random() < self.faults["decline_rate"]:
                self.declined += 1
                answer = (402, {"error": f"the card was declined for {amount_cents} cents; nothing was charged; "
                                         f"a new attempt needs a new Idempotency-Key"})
            else:
                reference = f"pay-{len(self.charges) + 1:04d}"
                self.charges[reference] = {"reference": reference, "amount_cents": amount_cents,
                                           "status": "succeeded"}
                answer = (201, dict(self.charges[reference]))
            if key is not None and (caller, key) in self._keys:
                self._keys[(caller, key)]["answer"] = answer
        return (*answer, {})

    @staticmethod
    def fee(amount_cents: int):
        return 200, {"amount_cents": amount_cents, "fee_cents": round(amount_cents * 0.029) + 30}, {}

    def read(self, reference: str):
        with self._lock:
            charge = self.charges.get(reference)
        if charge is None:
            return 404, {"error": f"no charge {reference!r:.60}; POST /charges makes one"}, {}
        return 200, dict(charge), {}


routes = Blueprint("payment", __name__)


def _reply(status: int, body: dict, headers: dict):
    response = jsonify(body)
    response.headers.update(headers)
    return response, status


@routes.post("/charges")
def post_charge():
    state = kit.state()
    try:  # a bad request stays bad, however often it is sent: refused before any fault
        amount = kit.whole(kit.body('{"amount_cents": 1200}').get("amount_cents"), "amount_cents", 1, MAX_AMOUNT_CENTS)
        key = kit.idempotency_key()
    except Invalid:
        state.refused()
        raise
    caller = request.headers.get("Labkit-Caller") or request.remote_addr or "anyone"
    return _reply(*state.served(lambda: state.charge(caller, key, amount),
                                lambda: state.begin_charge(caller, key, amount)))


@routes.get("/charges/<reference>")
def get_charge(reference: str):
    state = kit.state()
    return _reply(*state.served(lambda: state.read(reference)))


@routes.get("/fees")
def get_fee():
    try:
        amount = int(request.args.get("amount_cents", ""))
    except ValueError:
        raise Invalid("send ?amount_cents=N, a whole number of cents") from None
    amount, state = kit.whole(amount, "amount_cents", 1, MAX_AMOUNT_CENTS), kit.state()
    return _reply(*state.served(lambda: state.fee(amount)))


@routes.get("/stats")
def stats():
    return kit.state().stats()


def create_app(*, name: str = "payment", seed: int = 0, bucket_s: float = 0.1, key_ttl_s: float = 86_400,
               **faults):
    """A card processor; ``faults`` are the settings of the table in the module docstring."""
    state = Processor(seed=seed, bucket_s=bucket_s, key_ttl_s=key_ttl_s, **faults)
    return kit.make_app(name, state, routes, kit.faults)
