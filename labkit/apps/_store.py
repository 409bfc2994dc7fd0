"""The store's shared database: one schema for the catalogue, orders and payment services.

Notebook 04's services are separate Flask apps, each deployed on its own, but they
share ONE database, as a services architecture usually does. This module is that
shared part: the tables (SQLAlchemy Core), the checkout transaction, and small
helpers the services use to read requests.

    products  sku (key), name, price_cents, stock
    orders    id (key), key (unique: the buyer's idempotency key), sku, qty, amount_cents
    payments  id (key), order_id (unique: one payment per order), amount_cents, reference

There is deliberately no CHECK (stock >= 0) constraint: the checkout must keep the
stock from going negative by itself (a conditional UPDATE), and the lessons show what
happens when it does not. A real shop would add the constraint as a second guard.
"""

from __future__ import annotations

import atexit
import threading

import sqlalchemy
from flask import request
from sqlalchemy import Column, ForeignKey, Integer, MetaData, String, Table, func, insert, select, update

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
    Column("sku", String(40), ForeignKey("products.sku"), nullable=False),
    Column("qty", Integer, nullable=False),
    Column("amount_cents", Integer, nullable=False),
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

#: The most items one checkout may buy, and the longest sku and key accepted.
MAX_QTY = 100
MAX_KEY = 100
MAX_SKU = 40


class PaymentFailed(Exception):
    """The payment did not go through: declined (``status`` 402) or the payment service
    could not be reached or did not answer (503). Nothing was charged."""

    def __init__(self, message: str, status: int = 402):
        super().__init__(message)
        self.status = status


def checkout(engine, sku, qty, key, pay):
    """Buy ``qty`` of ``sku`` in ONE transaction; return the order id, or None if out of stock.

    ``pay(amount_cents)`` charges the buyer and returns the payment's reference, or
    raises PaymentFailed. A call with a ``key`` already used returns that order's id
    and charges nothing again.
    """
    with engine.begin() as tx:
        # 1. A retry of an order already made? Give the first answer again; charge nothing.
        done = tx.execute(select(orders.c.id).where(orders.c.key == key)).scalar()
        if done is not None:
            return done
        # 2. Take the stock only if there is enough: one conditional UPDATE, never read-then-write.
        taken = tx.execute(
            update(products)
            .where(products.c.sku == sku, products.c.stock >= qty)
            .values(stock=products.c.stock - qty)
        ).rowcount
        if taken == 0:
            return None
        price = tx.execute(select(products.c.price_cents).where(products.c.sku == sku)).scalar_one()
        amount = price * qty
        order_id = tx.execute(
            insert(orders).values(key=key, sku=sku, qty=qty, amount_cents=amount)
        ).inserted_primary_key[0]
        # 3. Pay. PaymentFailed leaves the with block: the order and the stock are rolled back.
        reference = pay(amount)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=amount, reference=reference))
    return order_id


# -- the database ---------------------------------------------------------------

_setup_lock = threading.Lock()


def database(db=None, url: str | None = None) -> Database:
    """The Database a service was given (``db``), or one for ``url`` (or the environment)."""
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


def setup(engine, products_=DEFAULT_PRODUCTS) -> None:
    """Create the tables if they are missing, and add ``products_`` to an empty catalogue."""
    with _setup_lock:
        metadata.create_all(engine, checkfirst=True)
        with engine.begin() as tx:
            if products_ and tx.execute(select(func.count()).select_from(products)).scalar_one() == 0:
                tx.execute(insert(products), [dict(sku=s, name=n, price_cents=p, stock=k) for s, n, p, k in products_])


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
        tx.execute(orders.delete())


def counts(engine, sku: str | None = None) -> dict:
    """{"stock": of sku (or of all products), "orders": n, "payments": n}: what a lesson prints."""
    with engine.connect() as c:
        stock = select(func.coalesce(func.sum(products.c.stock), 0))
        if sku is not None:
            stock = stock.where(products.c.sku == sku)
        result = {
            "stock": c.execute(stock).scalar_one(),
            "orders": c.execute(select(func.count()).select_from(orders)).scalar_one(),
            "payments": c.execute(select(func.count()).select_from(payments)).scalar_one(),
        }
        c.rollback()
    return {k: int(v) for k, v in result.items()}


def order_row(connection, order_id: int) -> dict | None:
    """One order with its payment reference, as the orders service answers it."""
    row = connection.execute(
        select(orders, payments.c.reference.label("payment"))
        .select_from(orders.outerjoin(payments, payments.c.order_id == orders.c.id))
        .where(orders.c.id == order_id)
    ).mappings().first()
    return None if row is None else {k: row[k] for k in ("id", "sku", "qty", "amount_cents", "payment")}


# -- reading requests -------------------------------------------------------------


class BadRequest(Exception):
    """The request is malformed; ``str(error)`` says which value and what to send."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def json_object(example: str) -> dict:
    """The request's JSON body as a dict, or BadRequest naming ``example``."""
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest(f"send a JSON object such as {example} with Content-Type: application/json")
    return body


#: The largest id a database's BIGINT holds (and SQLite's INTEGER).
MAX_ID = 2**63 - 1


def whole_number(body: dict, field: str, low: int, high: int) -> int:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRequest(f"{field} must be a whole number from {low} to {high}, not {value!r:.60}")
    return value


def text(value, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > limit or not value.isprintable():
        raise BadRequest(f"{field} must be 1 to {limit} printable characters, not {value!r:.60}")
    return value


def is_integrity_error(error: BaseException) -> bool:
    return isinstance(error, sqlalchemy.exc.IntegrityError)
