"""Answers to notebook 04: the checkout transaction, and wrong ones with the words their verdict must hold."""

import uuid

from sqlalchemy import insert, select, update

from labkit.apps._store import checkout, orders, payments, products


# The solution cell's code is the orders service's own checkout (tests/test_store.py keeps them equal).
SOLUTIONS = {"q4.1": checkout}


def checkout_check_then_update(engine, sku, qty, key, pay):
    """Subtly wrong: correct one at a time, but the check and the update are two transactions
    with a payment between them, so concurrent buyers all see the same last items."""
    with engine.begin() as tx:
        done = tx.execute(select(orders.c.id).where(orders.c.key == key)).scalar()
        if done is not None:
            return done
        stock, price = tx.execute(select(products.c.stock, products.c.price_cents).where(products.c.sku == sku)).one()
    if stock < qty:
        return None
    reference = pay(price * qty)
    with engine.begin() as tx:
        tx.execute(update(products).where(products.c.sku == sku).values(stock=products.c.stock - qty))
        order_id = tx.execute(insert(orders).values(key=key, sku=sku, qty=qty, amount_cents=price * qty)
                              ).inserted_primary_key[0]
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=price * qty, reference=reference))
    return order_id


def checkout_commits_before_paying(engine, sku, qty, key, pay):
    """Wrong: the order and the stock are committed before the payment, and never undone."""
    with engine.begin() as tx:
        done = tx.execute(select(orders.c.id).where(orders.c.key == key)).scalar()
        if done is not None:
            return done
        taken = tx.execute(update(products).where(products.c.sku == sku, products.c.stock >= qty)
                           .values(stock=products.c.stock - qty)).rowcount
        if taken == 0:
            return None
        price = tx.execute(select(products.c.price_cents).where(products.c.sku == sku)).scalar_one()
        order_id = tx.execute(insert(orders).values(key=key, sku=sku, qty=qty, amount_cents=price * qty)
                              ).inserted_primary_key[0]
    reference = pay(price * qty)
    with engine.begin() as tx:
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=price * qty, reference=reference))
    return order_id


def checkout_without_idempotency(engine, sku, qty, key, pay):
    """Wrong: every call is a new order (a fresh key), so a retry buys and charges again."""
    return checkout(engine, sku, qty, f"{key}-{uuid.uuid4().hex}", pay)


def checkout_ignores_rowcount(engine, sku, qty, key, pay):
    """Wrong: the conditional UPDATE is right, but its rowcount is never looked at."""
    with engine.begin() as tx:
        done = tx.execute(select(orders.c.id).where(orders.c.key == key)).scalar()
        if done is not None:
            return done
        tx.execute(update(products).where(products.c.sku == sku, products.c.stock >= qty)
                   .values(stock=products.c.stock - qty))
        price = tx.execute(select(products.c.price_cents).where(products.c.sku == sku)).scalar_one()
        order_id = tx.execute(insert(orders).values(key=key, sku=sku, qty=qty, amount_cents=price * qty)
                              ).inserted_primary_key[0]
        reference = pay(price * qty)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=price * qty, reference=reference))
    return order_id


def checkout_key_not_looked_up(engine, sku, qty, key, pay):
    """Wrong: stores the key (unique), but never looks it up, so a retry hits the unique constraint."""
    with engine.begin() as tx:
        taken = tx.execute(update(products).where(products.c.sku == sku, products.c.stock >= qty)
                           .values(stock=products.c.stock - qty)).rowcount
        if taken == 0:
            return None
        price = tx.execute(select(products.c.price_cents).where(products.c.sku == sku)).scalar_one()
        order_id = tx.execute(insert(orders).values(key=key, sku=sku, qty=qty, amount_cents=price * qty)
                              ).inserted_primary_key[0]
        reference = pay(price * qty)
        tx.execute(insert(payments).values(order_id=order_id, amount_cents=price * qty, reference=reference))
    return order_id


WRONG = [
    ("q4.1", checkout_check_then_update, ["40 buyers at once for 10 mugs", "oversold",
                                          "conditional UPDATE"]),
    ("q4.1", checkout_commits_before_paying, ["the payment is declined: after the payment was declined, the tables "
                                              "hold stock 4, 1 order(s), 0 payment(s)", "rolls the whole transaction back"]),
    ("q4.1", checkout_without_idempotency, ["the same request twice", "the retry bought and paid a second time",
                                            "look the key up first"]),
    ("q4.1", checkout_ignores_rowcount, ["not enough stock: with 1 mug in stock, buying 2 gave an order",
                                         "rowcount is 0"]),
    ("q4.1", checkout_key_not_looked_up, ["the same request twice", "your answer raised IntegrityError",
                                          "look the key up first"]),
]
