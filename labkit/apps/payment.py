"""The store's payment service (notebook 04): charges a buyer, or declines; can be told to fail or be slow.

    POST /charges             {"amount_cents": 1200} with an ``Idempotency-Key: K`` header
                              -> 201 {"reference", "amount_cents"}; 402 if declined.
                              The same key again gives the first answer again, a decline
                              included (and the header ``Idempotent-Replayed: true``): a
                              retry never charges twice. The same key with another amount: 409.
    GET  /charges             {"charges": n, "declined": n}: how many charges made, refused
    GET  /admin               {"fail": p, "delay_ms": ms}: the fault settings
    PUT  /admin               {"fail": 0.0-1.0, "delay_ms": 0-10000} (either or both): change them;
                              ``fail`` is the probability that a charge is declined
    GET  /payments            {"payments": [{"order_id", "amount_cents", "reference"}]}: the
                              payments recorded in the shared database, by order

It stands for an outside card processor, so its ledger of charges (by key) lives in
its own memory, not in the store's database; the checkout records each payment in
the ``payments`` table inside its own transaction. A decline is remembered like a
charge: were a retry decided afresh, a request still on its way with the same key
could turn a purchase the buyer was told was declined into a charge. A new attempt
takes a new key. Declines are drawn from ``seed``.
"""

from __future__ import annotations

import random
import threading
import time

from flask import Flask, jsonify, request
from sqlalchemy import select

from . import _store
from ._errors import json_errors
from ._store import BadRequest, payments

MAX_DELAY_MS = 10_000
MAX_AMOUNT_CENTS = 10**9


def _fail(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"fail is the probability that a charge is declined, a number from 0 to 1, not {value!r:.60}")
    return float(value)


def _delay(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_DELAY_MS:
        raise ValueError(f"delay_ms is how long each charge takes, a whole number from 0 to {MAX_DELAY_MS}, "
                         f"not {value!r:.60}")
    return value


def key_header() -> str:
    """The request's Idempotency-Key header, or BadRequest saying how to send one."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        raise BadRequest("send an Idempotency-Key header (1 to 100 printable characters, the same on every retry)")
    return _store.text(key, "the Idempotency-Key header", _store.MAX_KEY)


def create_app(*, db=None, url: str | None = None, fail: float = 0.0, delay_ms: int = 0, seed: int = 0) -> Flask:
    """A payment service declining a ``fail`` share of charges, each taking ``delay_ms``."""
    settings = {"fail": _fail(fail), "delay_ms": _delay(delay_ms)}
    database = _store.database(db, url)
    engine = database.engine
    _store.setup(engine, ())
    app = json_errors(Flask("payment"))
    app.config["database"] = database
    lock = threading.Lock()
    rng = random.Random(seed)
    answers: dict[str, tuple[int, int, dict]] = {}   # key -> (amount, status, body) of its first answer
    made = {201: 0, 402: 0}                            # charges made, declined

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest):
        return jsonify(error=str(error)), error.status

    @app.post("/charges")
    def charge():
        key = key_header()
        body = _store.json_object('{"amount_cents": 1200}')
        amount = _store.whole_number(body, "amount_cents", 1, MAX_AMOUNT_CENTS)
        with lock:
            delay_s, fail_p = settings["delay_ms"] / 1000, settings["fail"]
        if delay_s:
            time.sleep(delay_s)  # a slow processor (outside the lock: other charges go on)
        with lock:
            first = answers.get(key)
            replayed = first is not None
            if first is None:
                status = 402 if rng.random() < fail_p else 201
                made[status] += 1
                reply = ({"reference": f"pay-{made[201]:04d}", "amount_cents": amount} if status == 201 else
                         {"error": f"the card was declined for {amount} cents; nothing was charged; "
                                   f"a new attempt needs a new Idempotency-Key"})
                first = answers[key] = (amount, status, reply)
        if first[0] != amount:
            return jsonify(error=f"the Idempotency-Key {key!r:.60} was used for a charge of "
                                 f"{first[0]} cents, not {amount}; use a new key"), 409
        response = jsonify(first[2])
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response, first[1]

    @app.get("/charges")
    def charge_counts():
        with lock:
            return jsonify(charges=made[201], declined=made[402])

    @app.get("/admin")
    def get_admin():
        with lock:
            return jsonify(settings)

    @app.put("/admin")
    def put_admin():
        body = _store.json_object('{"fail": 1.0, "delay_ms": 0}')
        unknown = sorted(set(body) - set(settings))
        if unknown or not body:
            raise BadRequest(f'send "fail" (0 to 1) and/or "delay_ms" (0 to {MAX_DELAY_MS}); '
                             f"not {', '.join(map(repr, unknown)) or 'an empty object'}")
        try:
            new = {"fail": _fail(body["fail"]) if "fail" in body else None,
                   "delay_ms": _delay(body["delay_ms"]) if "delay_ms" in body else None}
        except ValueError as error:
            raise BadRequest(str(error)) from error
        with lock:
            settings.update({k: v for k, v in new.items() if v is not None})
            return jsonify(settings)

    @app.get("/payments")
    def list_payments():
        with engine.connect() as c:
            rows = c.execute(select(payments.c.order_id, payments.c.amount_cents, payments.c.reference)
                             .order_by(payments.c.order_id)).mappings().all()
            c.rollback()
        return jsonify(payments=[dict(r) for r in rows])

    return app
