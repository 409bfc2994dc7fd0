"""The store's orders service (notebook 04): checkout in ONE database transaction.

    POST /checkout            {"sku": "mug", "qty": 1} with an ``Idempotency-Key: K`` header
                              -> 201 {"order": {"id", "sku", "qty", "amount_cents", "payment"}}
                              404 unknown sku, 409 not enough stock, 402 payment declined
                              (for good: a new attempt takes a new key),
                              503 the payment service did not answer, 422 the key was used
                              for another order. The same key again gives the first answer
                              again (header ``Idempotent-Replayed: true``): a retry never
                              buys or charges twice.
    GET  /orders              {"orders": [...]} by id
    GET  /orders/<id>         one order

The checkout writes the order, takes the stock (a conditional UPDATE, so never below
zero) and records the payment in one transaction of the shared database; it calls
the payment service (``payment_url``) in the middle, so a failed payment rolls all of
it back. ``checkout`` swaps in another transaction function with the signature of
:func:`labkit.apps._store.checkout` (the notebook's exercise plugs in here).
"""

from __future__ import annotations

import logging
import os

import requests
from flask import Flask, jsonify
from sqlalchemy import select

from .. import client as _client
from ..client import Client
from ..server import ON_STOP
from . import _store
from ._errors import json_errors
from ._store import BadRequest, PaymentFailed, orders, products
from .payment import key_header

log = logging.getLogger("labkit")

#: Where the payment service is when no ``payment_url`` is given.
PAYMENT_URL = os.environ.get("LABKIT_PAYMENT_URL", "http://127.0.0.1:5004")


def create_app(*, db=None, url: str | None = None, payment_url: str | None = None,
               payment_timeout: float = 2.0, payment_attempts: int = 2, checkout=None, trace=None) -> Flask:
    """An orders service on the shared database that charges through ``payment_url``.

    ``payment_timeout`` (seconds) bounds each call to the payment service; a call that
    fails is tried ``payment_attempts`` times in all, with the same key. ``trace`` is
    where its calls to the payment service are recorded (default: labkit.trace).
    """
    if isinstance(payment_attempts, bool) or not isinstance(payment_attempts, int) or not 1 <= payment_attempts <= 5:
        raise ValueError(f"payment_attempts must be a whole number from 1 to 5, not {payment_attempts!r}")
    database = _store.database(db, url)
    engine = database.engine
    _store.setup(engine, ())
    payment_url = (payment_url or PAYMENT_URL).rstrip("/")
    run_checkout = checkout or _store.checkout
    caller = Client("orders", timeout=payment_timeout, trace=trace)
    app = json_errors(Flask("orders"))
    app.config["database"] = database
    app.extensions[ON_STOP] = [caller.close]  # its server closes the client's kept-alive connections

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest):
        return jsonify(error=str(error)), error.status

    def payer(key: str):
        def pay(amount_cents: int) -> str:
            problem = ""
            for _ in range(payment_attempts):
                try:
                    answer = caller.post(payment_url + "/charges", json={"amount_cents": amount_cents},
                                         headers={"Idempotency-Key": key})
                except requests.exceptions.RequestException as exc:
                    problem = _client.describe(exc)
                    continue
                if answer.status_code == 201:
                    return answer.json()["reference"]
                if answer.status_code == 402:
                    raise PaymentFailed("the payment was declined; nothing was bought; a new attempt needs a new "
                                        "Idempotency-Key", 402)
                problem = f"status {answer.status_code}"
            raise PaymentFailed(f"the payment service did not answer ({problem}); nothing was bought: "
                                f"try again with the same Idempotency-Key", 503)
        return pay

    def answer(order_id: int, sku: str, qty: int, replayed: bool):
        with engine.connect() as c:
            row = _store.order_row(c, order_id)
            c.rollback()
        if row is None:  # a checkout function that returned an id it never wrote
            return jsonify(error=f"the checkout returned order {order_id!r}, which is not in the database"), 500
        if (row["sku"], row["qty"]) != (sku, qty):
            return jsonify(error=f"this Idempotency-Key was used for {row['qty']} x {row['sku']!r}, "
                                 f"not {qty} x {sku!r}; use a new key for a new order"), 422
        response = jsonify(order=row)
        if replayed:
            response.headers["Idempotent-Replayed"] = "true"
        return response, 201

    def order_for(key: str):
        with engine.connect() as c:
            found = c.execute(select(orders.c.id).where(orders.c.key == key)).scalar()
            c.rollback()
        return found

    @app.post("/checkout")
    def post_checkout():
        key = key_header()
        body = _store.json_object('{"sku": "mug", "qty": 1}')
        sku = _store.text(body.get("sku"), "sku", _store.MAX_SKU)
        qty = _store.whole_number(body, "qty", 1, _store.MAX_QTY)
        with engine.connect() as c:
            # whether this is a retry only sets the header: the checkout itself finds the key
            replayed = c.execute(select(orders.c.id).where(orders.c.key == key)).scalar() is not None
            known = c.execute(select(products.c.sku).where(products.c.sku == sku)).scalar()
            c.rollback()
        if known is None:
            return jsonify(error=f"no product with sku {sku!r:.60}; GET /products of the catalogue lists them"), 404
        try:
            order_id = run_checkout(engine, sku, qty, key, payer(key))
        except PaymentFailed as failed:
            return jsonify(error=str(failed)), failed.status
        except Exception as error:  # noqa: BLE001 - a twin request, or a broken checkout function
            twin = order_for(key) if _store.is_integrity_error(error) else None
            if twin is not None:  # the same key committed meanwhile (PostgreSQL): its answer
                return answer(twin, sku, qty, replayed=True)
            log.warning("checkout failed", exc_info=True)
            return jsonify(error=f"the checkout failed: {type(error).__name__}; nothing was bought"), 500
        if order_id is None:
            twin = order_for(key)  # on PostgreSQL a twin may have taken the last item for this very key
            if twin is not None:
                return answer(twin, sku, qty, replayed=True)
            return jsonify(error=f"not enough {sku!r} in stock for {qty}; nothing was bought or charged"), 409
        return answer(order_id, sku, qty, replayed=replayed)

    @app.get("/orders")
    def list_orders():
        with engine.connect() as c:
            ids = c.execute(select(orders.c.id).order_by(orders.c.id)).scalars().all()
            rows = [_store.order_row(c, i) for i in ids]
            c.rollback()
        return jsonify(orders=rows)

    @app.get(f"/orders/<int(max={_store.MAX_ID}):order_id>")  # a larger id is no order (404), not an overflow
    def get_order(order_id: int):
        with engine.connect() as c:
            row = _store.order_row(c, order_id)
            c.rollback()
        if row is None:
            return jsonify(error=f"no order {order_id}; GET /orders lists them"), 404
        return jsonify(row)

    return app
