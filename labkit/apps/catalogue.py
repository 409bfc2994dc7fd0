"""The store's catalogue service (notebook 04): what is for sale, at what price, how many left.

    GET  /products            {"products": [{"sku", "name", "price_cents", "stock"}, ...]} by sku
    GET  /products/<sku>      one product
    PUT  /products/<sku>      {"name": str, "price_cents": int, "stock": int} -> the product
                              (added if new; the back office's restock)

It reads and writes the shared store database (labkit.apps._store): pass ``db`` (a
labkit Database) or ``url``; with neither it uses LABKIT_DATABASE_URL or a new SQLite file.
"""

from __future__ import annotations

from flask import Flask, jsonify
from sqlalchemy import insert, select, update

from . import _store
from ._errors import json_errors
from ._store import BadRequest, products

MAX_PRICE_CENTS = 10**7
MAX_STOCK = 10**6


def create_app(*, db=None, url: str | None = None, start_with=_store.DEFAULT_PRODUCTS) -> Flask:
    """A catalogue on the shared database; an empty catalogue gets ``start_with``: (sku, name, price_cents, stock) rows."""
    database = _store.database(db, url)
    engine = database.engine
    _store.setup(engine, start_with)
    app = json_errors(Flask("catalogue"))
    app.config["database"] = database

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest):
        return jsonify(error=str(error)), error.status

    def one(connection, sku: str):
        row = connection.execute(select(products).where(products.c.sku == sku)).mappings().first()
        return None if row is None else dict(row)

    @app.get("/products")
    def list_products():
        with engine.connect() as c:
            rows = c.execute(select(products).order_by(products.c.sku)).mappings().all()
            c.rollback()
        return jsonify(products=[dict(r) for r in rows])

    @app.get("/products/<sku>")
    def get_product(sku: str):
        with engine.connect() as c:
            row = one(c, sku)
            c.rollback()
        if row is None:
            return jsonify(error=f"no product with sku {sku!r:.60}; GET /products lists them"), 404
        return jsonify(row)

    @app.put("/products/<sku>")
    def put_product(sku: str):
        _store.text(sku, "the sku in the path", _store.MAX_SKU)
        body = _store.json_object('{"name": "Mug", "price_cents": 1200, "stock": 10}')
        values = dict(
            name=_store.text(body.get("name"), "name", 80),
            price_cents=_store.whole_number(body, "price_cents", 0, MAX_PRICE_CENTS),
            stock=_store.whole_number(body, "stock", 0, MAX_STOCK),
        )
        with engine.begin() as tx:
            if tx.execute(update(products).where(products.c.sku == sku).values(**values)).rowcount:
                status = 200
            else:
                tx.execute(insert(products).values(sku=sku, **values))
                status = 201
            row = one(tx, sku)
        return jsonify(row), status

    return app
