"""The store's shared database (notebook 04): one schema for the catalogue and the orders service.

Notebook 04's services are separate Flask apps, each deployed on its own, but they
share ONE database, as a service-based architecture does. This module is that shared
part: the tables (SQLAlchemy Core) and small helpers a lesson or a test uses.

    products     sku (key), name, price_cents, stock
    orders       id (key), key (unique: the buyer's idempotency key), amount_cents
    order_lines  order_id and sku (together the key), qty, price_cents
    payments     id (key), order_id (unique: one payment per order), amount_cents, reference

There is deliberately no CHECK (stock >= 0) constraint: a checkout must keep the stock
from going negative by itself (a conditional UPDATE), and the lessons show what happens
when it does not. A real shop would add the constraint as a second guard.
"""

from __future__ import annotations

import atexit
import contextlib
import threading

from flask import jsonify
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, exc, func, insert, select, update

from ..db import Database

metadata = MetaData()

products = Table(
    "products", metadata,
    Column("sku", String(40), primary_key=True),
    Column("name", String(80), nullable=False),
    Column("price_cents", Integer, nullable=False),
    Column("stock", Integer, nullable=False),
)

orders = Table(
    "orders", metadata,
    Column("id", Integer, primary_key=True),
    Column("key", String(100), nullable=False, unique=True),
    Column("amount_cents", Integer, nullable=False),
)

order_lines = Table(
    "order_lines", metadata,
    Column("order_id", Integer, ForeignKey("orders.id"), primary_key=True),
    Column("sku", String(40), ForeignKey("products.sku"), primary_key=True),
    Column("qty", Integer, nullable=False),
    Column("price_cents", Integer, nullable=False),
)

payments = Table(
    "payments", metadata,
    Column("id", Integer, primary_key=True),
    Column("order_id", Integer, ForeignKey("orders.id"), nullable=False, unique=True),
    Column("amount_cents", Integer, nullable=False),
    Column("reference", String(100), nullable=False),
)

#: The catalogue a new store starts with: (sku, name, price in cents, stock).
DEFAULT_PRODUCTS = (
    ("mug", "Mug with a sequence diagram", 1200, 10),
    ("cap", "Cap: 'it works on my machine'", 1500, 5),
    ("pen", "Pen that never times out", 250, 50),
)

#: The most of one product a basket may hold, the most products, and the longest sku.
MAX_QTY = 100
MAX_LINES = 10
MAX_SKU = 40
#: The largest id a database's BIGINT holds (and SQLite's INTEGER).
MAX_ID = 2**63 - 1

_setup_lock = threading.Lock()


def database(db=None, url: str | None = None) -> Database:
    """The Database a service was given (``db``), or a new one for ``url`` (or LABKIT_DATABASE_URL)."""
    if db is not None and url is not None:
        raise ValueError("give a service either db (a labkit Database) or url, not both")
    if db is not None:
        if not isinstance(db, Database):
            raise TypeError(f"db must be a labkit.db.Database, not {db!r}; or pass url='sqlite:///...'")
        return db
    if url is not None and not isinstance(url, str):
        raise TypeError(f"url must be a SQLAlchemy URL string, not {url!r}")
    made = Database(url)
    atexit.register(made.close)
    return made


@contextlib.contextmanager
def reading(engine):
    """A connection for reads only, rolled back at the end. On SQLite it takes no lock, so a
    read never waits for a checkout that holds the write lock (it sees the last commit)."""
    with engine.connect().execution_options(labkit_begin="deferred") as connection:
        try:
            yield connection
        finally:
            connection.rollback()


def answer_503_without_the_database(app):
    """Make ``app`` answer 503 (not 500) when the shared database cannot be reached or stays locked."""
    app.register_error_handler(exc.OperationalError, _database_unavailable)
    return app


def _database_unavailable(error):
    return jsonify(error=f"the database did not answer ({type(error.orig or error).__name__}); try again later, "
                         f"a checkout with the same Idempotency-Key"), 503


def setup(engine, start_with=DEFAULT_PRODUCTS) -> None:
    """Create the tables if they are missing, and give an empty catalogue ``start_with``."""
    with _setup_lock:
        metadata.create_all(engine, checkfirst=True)
        with engine.begin() as tx:
            if start_with and tx.execute(select(func.count()).select_from(products)).scalar_one() == 0:
                tx.execute(insert(products), [dict(sku=s, name=n, price_cents=p, stock=k) for s, n, p, k in start_with])


def restock(engine, sku: str, stock: int, *, name: str | None = None, price_cents: int | None = None) -> None:
    """Set ``sku``'s stock (adding the product if it is new); for notebooks and tests."""
    with engine.begin() as tx:
        found = tx.execute(update(products).where(products.c.sku == sku).values(stock=stock)).rowcount
        if not found:
            tx.execute(insert(products).values(sku=sku, name=name or sku, price_cents=price_cents or 100, stock=stock))
        elif name is not None or price_cents is not None:
            values = {k: v for k, v in (("name", name), ("price_cents", price_cents)) if v is not None}
            tx.execute(update(products).where(products.c.sku == sku).values(**values))


def reset(engine) -> None:
    """Delete every payment and order (the catalogue stays); for notebooks and tests."""
    with engine.begin() as tx:
        tx.execute(payments.delete())
        tx.execute(order_lines.delete())
        tx.execute(orders.delete())


def counts(engine, sku: str | None = None) -> dict:
    """{"stock": of sku (or of all products), "orders": n, "payments": n}: what a lesson prints."""
    with reading(engine) as c:
        stock = select(func.coalesce(func.sum(products.c.stock), 0))
        if sku is not None:
            stock = stock.where(products.c.sku == sku)
        result = {
            "stock": c.execute(stock).scalar_one(),
            "orders": c.execute(select(func.count()).select_from(orders)).scalar_one(),
            "payments": c.execute(select(func.count()).select_from(payments)).scalar_one(),
        }
    return {k: int(v) for k, v in result.items()}


def order_row(connection, order_id: int) -> dict | None:
    """One order with its lines and payment reference, as the orders service answers it."""
    row = connection.execute(
        select(orders.c.id, orders.c.amount_cents, payments.c.reference)
        .select_from(orders.outerjoin(payments, payments.c.order_id == orders.c.id))
        .where(orders.c.id == order_id)
    ).first()
    if row is None:
        return None
    lines = connection.execute(select(order_lines.c.sku, order_lines.c.qty)
                               .where(order_lines.c.order_id == order_id).order_by(order_lines.c.sku)).all()
    return {"id": row.id, "items": [{"sku": sku, "qty": qty} for sku, qty in lines],
            "amount_cents": row.amount_cents, "payment": row.reference}
