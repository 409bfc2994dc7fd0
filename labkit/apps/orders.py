"""The store's orders service (notebook 04): a checkout is ONE database transaction.

    POST /checkout            {"items": [{"sku": "mug", "qty": 1}]} with an ``Idempotency-Key: K`` header
                              -> 201 {"order": {"id", "items", "amount_cents", "payment"}}
                              404 unknown sku, 409 not enough stock, 402 payment declined (for
                              good: a new attempt takes a new key), 503 the payment service did
                              not answer (the outcome unknown, no order written: retry with the
                              same key, which finds a charge already made), 422 the key was used for
                              another basket, 503 too when the database cannot be reached. The
                              same key again gives the first answer again (header
                              ``Idempotent-Replayed: true``): a retry never buys or charges twice.
    GET  /orders              {"orders": [...]} by id
    GET  /orders/<id>         one order

The checkout takes the stock (a conditional UPDATE, so never below zero), writes the
order and records the payment in one transaction of the shared database
(:mod:`labkit.apps.store`); it calls the payment service in the middle, so a failed
payment rolls all of it back (and holds the transaction's lock until payment answers).
The service's own reads (the key, the skus, the order it answers with, GET /orders)
take no lock, so they never wait for another checkout. The store's own :func:`checkout`
sells one product per order; ``create_app(checkout=...)`` plugs in another function
with its signature, such as one that takes a whole basket (notebook 04's exercise).

``python -m labkit serve orders`` finds the payment service at LABKIT_PAYMENT_URL and
the database at LABKIT_DATABASE_URL.
"""

from __future__ import annotations

import logging
import os

import requests
import sqlalchemy
from flask import Blueprint, abort, jsonify
from sqlalchemy import insert, select, update

from ..client import Client, describe
from ..errors import Invalid, PaymentDeclined, PaymentError, PaymentUnavailable
from . import kit, store
from .store import order_lines, orders, payments, products

log = logging.getLogger("labkit")


def checkout(engine, items, key, pay):
    """The store's own checkout: ONE product per order, in ONE transaction.

    ``items`` is ``[(sku, qty)]``; ``pay(amount_cents)`` charges the buyer and returns
    the payment's reference, or raises PaymentDeclined or PaymentUnavailable. Returns
    the new order's id, or None (nothing written, nothing charged) if there is not
    enough stock. A call with a ``key`` already used returns that order's id and
    charges nothing again.
    """
    if len(items) != 1:
        raise Invalid("this store's own checkout buys one product per order; send one item, or plug in "
                      "a checkout that takes a whole basket (notebook 04's exercise)")
    [(sku, qty)] = items
    with engine.begin() as tx:
        # 1. A retry of an order already made? Give the first answer again; charge nothing.
        done = tx.execute(select(orders.c.id).where(orders.c.key == key)).scalar()
        if done is not None:
            return done
        # 2. Take the stock only if there is enough: one conditional UPDATE, never read-then-write.
        taken = tx.execute(update(products).where(products.c.sku == sku, products.c.stock >= qty)
                           .values(stock=products.c.stock - qty)).rowcount
        if taken == 0:
            return None
        price = tx.execute(select(products.c.price_cents).where(products.c.sku == sku)).scalar_one()
        order_id = tx.execute(insert(orders).values(key=key, amount_cents=price * qty)).inserted_primary_key[0]
        tx.execute(insert(order_lines).values(order_id=order_id, sku=sku, qty=qty, price_cents=price))
        # 3. Pay. A PaymentError leaves the with block: the order and the stock are rolled back.
        reference = pay(price * qty)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=price * qty, reference=reference))
    return order_id


class Orders:
    """The orders service's state: the database, the checkout function, and a client for payment."""

    def __init__(self, name, database, *, owned: bool, payment_url: str, timeout_s: float, payment_attempts: int,
                 checkout, trace):
        self.database, self.engine, self._owned = database, database.engine, owned
        self.payment_url = payment_url.rstrip("/")
        self.attempts = kit.whole(payment_attempts, "payment_attempts", 1, 5)
        self.checkout = checkout
        self.client = Client(name, timeout=kit.positive(timeout_s, "timeout_s", 60), trace=trace)
        store.setup(self.engine, ())

    def payer(self, key: str):
        """``pay(amount_cents)`` for the checkout: charges with ``key``, tried ``attempts`` times."""
        def pay(amount_cents: int) -> str:
            problem = ""
            for _ in range(self.attempts):
                try:
                    answer = self.client.post(self.payment_url + "/charges", json={"amount_cents": amount_cents},
                                              headers={"Idempotency-Key": key})
                except requests.exceptions.RequestException as exc:
                    problem = describe(exc)
                    continue
                if answer.status_code == 201:
                    return answer.json()["reference"]
                if answer.status_code == 402:
                    raise PaymentDeclined("the payment was declined; nothing was bought; a new attempt needs a "
                                          "new Idempotency-Key")
                problem = ("409: the first attempt is still in progress" if answer.status_code == 409
                           else f"status {answer.status_code}")
            raise PaymentUnavailable(f"the payment service could not confirm the payment ({problem}); its outcome "
                                     f"is unknown (you may have been charged): retry with the same Idempotency-Key")
        return pay

    # Reads take no lock (store.reading): they never wait for another checkout's transaction.
    def read(self, order_id: int) -> dict | None:
        with store.reading(self.engine) as c:
            return store.order_row(c, order_id)

    def order_for(self, key: str) -> int | None:
        with store.reading(self.engine) as c:
            return c.execute(select(orders.c.id).where(orders.c.key == key)).scalar()

    def unknown(self, items) -> list[str]:
        skus = [sku for sku, _ in items]
        with store.reading(self.engine) as c:
            known = set(c.execute(select(products.c.sku).where(products.c.sku.in_(skus))).scalars())
        return [sku for sku in skus if sku not in known]

    def buy(self, items, key: str):
        """Run the checkout for ``items`` under ``key``: (status, JSON body, replayed)."""
        replayed = self.order_for(key) is not None  # only sets the header: the checkout itself finds the key
        if missing := self.unknown(items):
            abort(404, f"no product with sku {missing[0]!r:.60}; GET /products of the catalogue lists them")
        try:
            order_id = self.checkout(self.engine, items, key, self.payer(key))
        except (PaymentError, Invalid, sqlalchemy.exc.OperationalError):
            raise  # a 402/503, a 400, or the database gone (503)
        except Exception as error:  # noqa: BLE001 - a twin request, or a broken checkout function
            twin = self.order_for(key) if isinstance(error, sqlalchemy.exc.IntegrityError) else None
            if twin is None:  # not the same key committed meanwhile (PostgreSQL): a broken checkout
                log.warning("checkout failed", exc_info=True)
                abort(500, f"the checkout failed: {type(error).__name__}; nothing was bought")
            order_id, replayed = twin, True
        if order_id is None:
            order_id, replayed = self.order_for(key), True  # on PostgreSQL a twin may have taken the last item
            if order_id is None:
                abort(409, "not enough in stock for this basket; nothing was bought or charged")
        return self.answer(order_id, items, replayed)

    def answer(self, order_id, items, replayed: bool):
        row = self.read(order_id) if isinstance(order_id, int) else None
        if row is None:  # a checkout function that returned an id it never wrote
            abort(500, f"the checkout returned order {order_id!r:.40}, which is not in the database")
        if sorted((line["sku"], line["qty"]) for line in row["items"]) != sorted(items):
            abort(422, "this Idempotency-Key was used for another basket; use a new key for a new order")
        return 201, {"order": row}, replayed

    def close(self) -> None:
        self.client.close()
        if self._owned:
            self.database.close()


def basket(body: dict) -> list[tuple[str, int]]:
    """The (sku, qty) pairs of a checkout's body, or 400."""
    items = body.get("items")
    if not isinstance(items, list) or not 1 <= len(items) <= store.MAX_LINES:
        raise Invalid(f'items must be a list of 1 to {store.MAX_LINES} {{"sku": ..., "qty": ...}}, '
                      f"not {kit.short(items)}")
    pairs = []
    for item in items:
        if not isinstance(item, dict) or set(item) != {"sku", "qty"}:
            raise Invalid(f'each item is {{"sku": "mug", "qty": 1}}, not {kit.short(item)}')
        pairs.append((kit.text(item["sku"], "sku", limit=store.MAX_SKU), kit.whole(item["qty"], "qty", 1, store.MAX_QTY)))
    if len({sku for sku, _ in pairs}) != len(pairs):
        raise Invalid("name each product once in a basket, with the quantity you want")
    return pairs


routes = Blueprint("orders", __name__)


@routes.post("/checkout")
def post_checkout():
    key = kit.idempotency_key()
    if key is None:
        raise Invalid("send an Idempotency-Key header (1 to 100 printable characters, the same on every retry)")
    items = basket(kit.body('{"items": [{"sku": "mug", "qty": 1}]}'))
    try:
        status, answer, replayed = kit.state().buy(items, key)
    except PaymentError as failed:  # not abort(): werkzeug has no exception for 402
        return jsonify(error=str(failed)), failed.status
    response = jsonify(answer)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, status


@routes.get("/orders")
def list_orders():
    state = kit.state()
    with store.reading(state.engine) as c:
        ids = c.execute(select(orders.c.id).order_by(orders.c.id)).scalars().all()
        rows = [store.order_row(c, i) for i in ids]
    return {"orders": rows}


@routes.get(f"/orders/<int(max={store.MAX_ID}):order_id>")  # a larger id is no order (404), not an overflow
def get_order(order_id: int):
    row = kit.state().read(order_id)
    if row is None:
        abort(404, f"no order {order_id}; GET /orders lists them")
    return row


def create_app(*, name: str = "orders", db=None, url: str | None = None, payment_url: str | None = None,
               timeout_s: float = 2.0, payment_attempts: int = 2, checkout=checkout, trace=None):
    """An orders service on the shared database that charges through ``payment_url``.

    ``timeout_s`` bounds each call to the payment service; a call that fails is tried
    ``payment_attempts`` times in all, with the same key. ``trace`` is where its calls
    to the payment service are recorded (default: labkit.trace).
    """
    database = store.database(db, url)
    state = Orders(name, database, owned=db is None, checkout=checkout, trace=trace,
                   payment_url=payment_url or os.environ.get("LABKIT_PAYMENT_URL", "http://127.0.0.1:5004"),
                   timeout_s=timeout_s, payment_attempts=payment_attempts)
    return store.answer_503_without_the_database(kit.make_app(name, state, routes))
