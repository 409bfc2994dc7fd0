"""A small order service for notebook 01: one order at a time, or many in one call.

    GET  /orders              {"ids": [...]}: every order's id
    GET  /orders/<id>         one order: {"id", "customer", "items": [{"sku", "qty", "price"}]}
    POST /orders/batch        {"ids": [...]} -> {"orders": [...]} in the order asked
    GET  /visits              {"visits": n}: how many requests this server has received, this one
                              included (stateful: kept in memory, lost when the server restarts)

The orders are made up from ``seed``, so every run sees the same shop.
"""

import random
import threading

from flask import Blueprint, abort

from ..errors import Invalid
from . import kit

MAX_BATCH = 1000


class Shop:
    """Made-up orders, and a count of the requests served."""

    def __init__(self, orders: int, seed: int):
        rng = random.Random(seed)
        skus = ["pen", "pad", "mug", "cap", "bag", "ink"]
        self.orders = {}
        for order_id in range(1, kit.whole(orders, "orders", 0, 10_000) + 1):
            items = [{"sku": sku, "qty": rng.randint(1, 4), "price": rng.choice([1.5, 2.0, 4.25, 9.99])}
                     for sku in rng.sample(skus, rng.randint(1, 3))]
            self.orders[order_id] = {"id": order_id, "customer": f"c{rng.randint(1, 9)}", "items": items}
        self.visits = 0
        self._lock = threading.Lock()

    def visit(self) -> int:
        with self._lock:
            self.visits += 1
            return self.visits


routes = Blueprint("shop", __name__)


@routes.before_app_request
def count_visit():
    kit.state().visit()


@routes.get("/orders")
def list_orders():
    return {"ids": sorted(kit.state().orders)}


@routes.get("/orders/<int:order_id>")
def one_order(order_id: int):
    order = kit.state().orders.get(order_id)
    if order is None:
        abort(404, f"no order {order_id}")
    return order


@routes.post("/orders/batch")
def batch():
    ids = kit.body('{"ids": [1, 2, 3]}').get("ids")
    if not isinstance(ids, list) or len(ids) > MAX_BATCH or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise Invalid(f'send JSON {{"ids": [1, 2, ...]}}: a list of at most {MAX_BATCH} whole numbers')
    orders = kit.state().orders
    missing = [i for i in ids if i not in orders]
    if missing:
        abort(404, f"no orders {missing}")
    return {"orders": [orders[i] for i in ids]}


@routes.get("/visits")
def visit_count():
    return {"visits": kit.state().visits}


def create_app(*, name: str = "shop", orders: int = 50, seed: int = 0):
    """A shop with ``orders`` made-up orders."""
    return kit.make_app(name, Shop(orders, seed), routes)
