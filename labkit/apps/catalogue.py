"""The store's catalogue service (notebook 04): what is for sale, at what price, how many left.

    GET  /products            {"products": [{"sku", "name", "price_cents", "stock"}, ...]} by sku
    GET  /products/<sku>      one product
    PUT  /products/<sku>      {"name": str, "price_cents": int, "stock": int} -> the product
                              (201 if it is new; the back office's restock)

It reads and writes the shared store database (:mod:`labkit.apps.store`): pass ``db``
(a labkit Database) or ``url``; with neither it uses LABKIT_DATABASE_URL or a new SQLite file.
Its reads take no lock, so browsing never waits for a checkout; when the database cannot
be reached, every route answers 503.
"""

from __future__ import annotations

from flask import Blueprint, abort
from sqlalchemy import insert, select, update

from . import kit, store
from .store import products

MAX_PRICE_CENTS = 10**7
MAX_STOCK = 10**6


class Catalogue:
    """The catalogue's state: the shared database (closed at stop if the service made it)."""

    def __init__(self, database, *, owned: bool, start_with):
        self.database, self.engine, self._owned = database, database.engine, owned
        store.setup(self.engine, start_with)

    def product(self, connection, sku: str) -> dict | None:
        row = connection.execute(select(products).where(products.c.sku == sku)).mappings().first()
        return None if row is None else dict(row)

    def close(self) -> None:
        if self._owned:
            self.database.close()


routes = Blueprint("catalogue", __name__)


@routes.get("/products")
def list_products():
    with store.reading(kit.state().engine) as c:
        rows = c.execute(select(products).order_by(products.c.sku)).mappings().all()
    return {"products": [dict(r) for r in rows]}


@routes.get("/products/<sku>")
def get_product(sku: str):
    state = kit.state()
    with store.reading(state.engine) as c:
        row = state.product(c, sku)
    if row is None:
        abort(404, f"no product with sku {sku!r:.60}; GET /products lists them")
    return row


@routes.put("/products/<sku>")
def put_product(sku: str):
    kit.text(sku, "the sku in the path", limit=store.MAX_SKU)
    body = kit.body('{"name": "Mug", "price_cents": 1200, "stock": 10}')
    values = dict(name=kit.text(body.get("name"), "name", limit=80),
                  price_cents=kit.whole(body.get("price_cents"), "price_cents", 0, MAX_PRICE_CENTS),
                  stock=kit.whole(body.get("stock"), "stock", 0, MAX_STOCK))
    state = kit.state()
    with state.engine.begin() as tx:
        status = 200
        if not tx.execute(update(products).where(products.c.sku == sku).values(**values)).rowcount:
            tx.execute(insert(products).values(sku=sku, **values))
            status = 201
        row = state.product(tx, sku)
    return row, status


def create_app(*, name: str = "catalogue", db=None, url: str | None = None, start_with=store.DEFAULT_PRODUCTS):
    """A catalogue on the shared database; an empty catalogue gets ``start_with``: (sku, name, price_cents, stock) rows."""
    app = kit.make_app(name, Catalogue(store.database(db, url), owned=db is None, start_with=start_with), routes)
    return store.answer_503_without_the_database(app)
