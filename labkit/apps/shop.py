"""A small order service for notebook 01: one order at a time, or many in one call.

    GET  /orders              the ids of all orders
    GET  /orders/<id>         one order: {"id", "customer", "items": [{"sku", "qty", "price"}]}
    POST /orders/batch        {"ids": [...]} -> {"orders": [...]} in the order asked
    GET  /visits              how many requests this server has answered (stateful!)

The orders are made up from ``seed``, so every run sees the same shop.
"""

import itertools
import random
import threading

from flask import Flask, jsonify, request

from ._errors import json_errors


def _orders(count: int, seed: int) -> dict[int, dict]:
    rng = random.Random(seed)
    skus = ["pen", "pad", "mug", "cap", "bag", "ink"]
    orders = {}
    for order_id in range(1, count + 1):
        items = [
            {"sku": sku, "qty": rng.randint(1, 4), "price": rng.choice([1.5, 2.0, 4.25, 9.99])}
            for sku in rng.sample(skus, rng.randint(1, 3))
        ]
        orders[order_id] = {"id": order_id, "customer": f"c{rng.randint(1, 9)}", "items": items}
    return orders


def create_app(orders: int = 50, seed: int = 0) -> Flask:
    """A shop with ``orders`` made-up orders."""
    app = json_errors(Flask("shop"))
    data = _orders(orders, seed)
    visits = itertools.count(1)
    lock = threading.Lock()
    app.config["visits"] = 0

    @app.before_request
    def count_visit():
        with lock:
            app.config["visits"] = next(visits)

    @app.get("/orders")
    def list_orders():
        return jsonify(ids=sorted(data))

    @app.get("/orders/<int:order_id>")
    def one_order(order_id: int):
        if order_id not in data:
            return jsonify(error=f"no order {order_id}"), 404
        return jsonify(data[order_id])

    @app.post("/orders/batch")
    def batch():
        body = request.get_json(silent=True)
        ids = body.get("ids") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            return jsonify(error='send JSON {"ids": [1, 2, ...]} with integer ids'), 400
        if len(ids) > 1000:
            return jsonify(error="at most 1000 ids per batch"), 400
        missing = [i for i in ids if i not in data]
        if missing:
            return jsonify(error=f"no orders {missing}"), 404
        return jsonify(orders=[data[i] for i in ids])

    @app.get("/visits")
    def visit_count():
        return jsonify(visits=app.config["visits"])

    return app
