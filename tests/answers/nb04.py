"""Answers to notebook 04: wrong basket checkouts with the words their verdict must hold."""

import uuid

from sqlalchemy import insert, select, update

from labkit.apps.store import order_lines, orders, payments, products

from .solutions import solution


def _take(tx, sku, qty) -> bool:
    return bool(tx.execute(update(products).where(products.c.sku == sku, products.c.stock >= qty)
                           .values(stock=products.c.stock - qty)).rowcount)


def _price(tx, sku) -> int:
    return tx.execute(select(products.c.price_cents).where(products.c.sku == sku)).scalar_one()


def _write(tx, key, lines, reference=None):
    total = sum(line["price_cents"] * line["qty"] for line in lines)
    order_id = tx.execute(insert(orders).values(key=key, amount_cents=total)).inserted_primary_key[0]
    tx.execute(insert(order_lines), [{"order_id": order_id, **line} for line in lines])
    return order_id, total


def _done(tx, key):
    return tx.execute(select(orders.c.id).where(orders.c.key == key)).scalar()


def checkout_returns_inside(engine, items, key, pay):
    """Subtle: returns None inside the with block when a line lacks stock, which COMMITS the
    stock taken for the lines before it."""
    with engine.begin() as tx:
        if (done := _done(tx, key)) is not None:
            return done
        lines = []
        for sku, qty in items:
            if not _take(tx, sku, qty):
                return None
            lines.append({"sku": sku, "qty": qty, "price_cents": _price(tx, sku)})
        order_id, total = _write(tx, key, lines)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=total, reference=pay(total)))
    return order_id


def checkout_check_then_update(engine, items, key, pay):
    """Subtle: correct one at a time, but the check and the update are two transactions with a
    payment between them, so concurrent buyers all see the same last items."""
    with engine.begin() as tx:
        if (done := _done(tx, key)) is not None:
            return done
        lines = []
        for sku, qty in items:
            stock = tx.execute(select(products.c.stock).where(products.c.sku == sku)).scalar_one()
            if stock < qty:
                return None
            lines.append({"sku": sku, "qty": qty, "price_cents": _price(tx, sku)})
    total = sum(line["price_cents"] * line["qty"] for line in lines)
    reference = pay(total)
    with engine.begin() as tx:
        for line in lines:
            tx.execute(update(products).where(products.c.sku == line["sku"])
                       .values(stock=products.c.stock - line["qty"]))
        order_id, _ = _write(tx, key, lines)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=total, reference=reference))
    return order_id


def checkout_commits_before_paying(engine, items, key, pay):
    """Wrong: the order and the stock are committed before the payment, and never undone."""
    with engine.begin() as tx:
        if (done := _done(tx, key)) is not None:
            return done
        lines = []
        for sku, qty in items:
            if not _take(tx, sku, qty):
                tx.rollback()
                return None
            lines.append({"sku": sku, "qty": qty, "price_cents": _price(tx, sku)})
        order_id, total = _write(tx, key, lines)
    reference = pay(total)
    with engine.begin() as tx:
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=total, reference=reference))
    return order_id


def checkout_pays_each_line(engine, items, key, pay):
    """Wrong: one payment per line, so the order's payment row is missing and the buyer is charged
    several times."""
    with engine.begin() as tx:
        if (done := _done(tx, key)) is not None:
            return done
        lines, references = [], []
        for sku, qty in items:
            if not _take(tx, sku, qty):
                tx.rollback()
                return None
            price = _price(tx, sku)
            lines.append({"sku": sku, "qty": qty, "price_cents": price})
            references.append(pay(price * qty))
        order_id, total = _write(tx, key, lines)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=total, reference=references[0]))
    return order_id


def checkout_first_line_only(engine, items, key, pay):
    """Wrong: the store's own checkout, fed only the basket's first item."""
    from labkit.apps.orders import checkout

    return checkout(engine, items[:1], key, pay)


def checkout_without_idempotency(engine, items, key, pay):
    """Wrong: a fresh key on every call, so a retry buys again."""
    return solution("q4.1")(engine, items, f"{key}-{uuid.uuid4().hex}", pay)


def checkout_key_not_looked_up(engine, items, key, pay):
    """Wrong: never looks the key up, so the retry's INSERT breaks the UNIQUE key."""
    with engine.begin() as tx:
        lines = []
        for sku, qty in items:
            if not _take(tx, sku, qty):
                tx.rollback()
                return None
            lines.append({"sku": sku, "qty": qty, "price_cents": _price(tx, sku)})
        order_id, total = _write(tx, key, lines)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=total, reference=pay(total)))
    return order_id


WRONG = [
    ("q4.1", checkout_returns_inside, ["one line of the basket lacks stock", "stock 1 mugs, 7 pens",
                                       "a return inside the with engine.begin() block COMMITS"]),
    ("q4.1", checkout_check_then_update, ["40 buyers at once for 10 mugs", "oversold",
                                          "a conditional UPDATE ... WHERE stock >= qty"]),
    ("q4.1", checkout_commits_before_paying, ["the payment is declined: after the payment was declined, the tables "
                                              "hold stock 4 mugs, 4 pens; 1 order(s), 0 payment(s)"]),
    ("q4.1", checkout_pays_each_line, ["one basket: 2 mugs and 3 pens", "answered 503", "(status 422)",
                                       "call pay(total)"]),
    ("q4.1", checkout_first_line_only, ["one basket: 2 mugs and 3 pens", "answered 422",
                                        "used for another basket"]),
    ("q4.1", checkout_without_idempotency, ["the same basket twice", "the retry bought and paid a second time",
                                            "look the key up first"]),
    ("q4.1", checkout_key_not_looked_up, ["the same basket twice", "your answer raised IntegrityError",
                                          "look the key up first"]),
]
