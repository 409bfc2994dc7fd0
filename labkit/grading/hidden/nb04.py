"""Hidden tests for notebook 04 (microservices): q4.1 checkout, the store's one transaction.

The student's ``checkout(engine, sku, qty, key, pay)`` is plugged into the real
orders service (``create("orders", checkout=...)``), which calls the real payment
service through a link; buyers call the orders service through another link. Each
call of the answer still runs under the check's time limit (``run.call``).
"""

from __future__ import annotations

import concurrent.futures
import threading

import requests
import sqlalchemy
from sqlalchemy import select

from labkit.apps import _store, create
from labkit.apps._store import PaymentFailed, orders, payments
from labkit.db import Database
from labkit.grading.check import Fail, Question, _AnswerRaised, show

q41 = Question(
    "q4.1", "checkout", params=("engine", "sku", "qty", "key", "pay"),
    hint=("do it all inside one with engine.begin() as tx: block: look the key up, take the stock with one "
          "conditional UPDATE, insert the order, call pay(amount), insert the payment"),
    hang_hint="return as soon as the transaction is over; never wait for something without a time limit",
)

SKU, PRICE = "mug", 1200

_ONE_TRANSACTION = ("call pay(amount) inside the with engine.begin() as tx: block, after the order is written: "
                    "an exception that leaves the block rolls the whole transaction back")
_ROWCOUNT = ("take the stock with UPDATE products SET stock = stock - qty WHERE sku = ... AND stock >= qty, and "
             "return None when its rowcount is 0: there was not enough")
_IDEMPOTENT = ("look the key up first (SELECT id FROM orders WHERE key = ...): if that order exists, return its id "
               "and do nothing else")
_CONDITIONAL = ("check and take the stock in one statement inside the same transaction as the order and the payment: "
                "a conditional UPDATE ... WHERE stock >= qty, then look at its rowcount")


class _Shop:
    """A store for one run: its database, the payment service behind a link, the orders
    service running the answer, and a buyer's client behind another link."""

    def __init__(self, run, *, stock: int, fail: float = 0.0, payment_latency_ms: float = 5, **buyer_link):
        self.run = run
        self.db = Database()
        run.on_close(self.db.close)  # registered first, so closed last
        self.engine = self.db.engine
        _store.setup(self.engine, ())
        _store.restock(self.engine, SKU, stock, name="Mug", price_cents=PRICE)
        self.problems: list[BaseException] = []
        self._lock = threading.Lock()
        self.payment = run.serve(create("payment", db=self.db, fail=fail, seed=run.seed or 0), "payment·check")
        self.to_payment = run.link(self.payment, latency_ms=payment_latency_ms)
        app = create("orders", db=self.db, payment_url=self.to_payment.url, payment_timeout=0.5, payment_attempts=1,
                     checkout=self._answer, trace=run.trace)
        self.orders = run.serve(app, "orders·check")
        self.to_orders = run.link(self.orders, **(buyer_link or {"latency_ms": 5}))
        self.buyer = run.client("buyer", timeout=5)

    def _answer(self, engine, sku, qty, key, pay):
        """The student's checkout, under the check's time limit; PaymentFailed passes through."""
        try:
            value = self.run.call(engine, sku, qty, key, pay).value
        except _AnswerRaised as raised:
            if isinstance(raised.error, PaymentFailed):
                raise raised.error
            self._note(raised)
            raise RuntimeError("the answer raised") from None
        except BaseException as error:  # the time limit ran out
            self._note(error)
            raise RuntimeError("the answer was stopped") from None
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            self._note(Fail(f"it returned {show(value)}; expected the new order's id (an int), or None",
                            "return the id of the order: insert(orders)...inserted_primary_key[0]"))
        return value

    def _note(self, error: BaseException) -> None:
        with self._lock:
            self.problems.append(error)

    def raise_problems(self) -> None:
        """What went wrong inside the service (the answer raised, overran, returned nonsense), first first."""
        if self.problems:
            raise self.problems[0]

    def buy(self, qty: int, key: str, client=None):
        answer = (client or self.buyer).post(self.to_orders.url + "/checkout", json={"sku": SKU, "qty": qty},
                                             headers={"Idempotency-Key": key})
        self.raise_problems()
        return answer.status_code, answer.json()

    def tables(self) -> dict:
        return _store.counts(self.engine, SKU)

    def charges(self) -> int:
        return requests.get(self.payment.url + "/charges", timeout=5).json()["charges"]


def _say(tables: dict) -> str:
    return f"stock {tables['stock']}, {tables['orders']} order(s), {tables['payments']} payment(s)"


def _expect_tables(shop: _Shop, expected: dict, situation: str, hint: str) -> None:
    found = shop.tables()
    if found != expected:
        raise Fail(f"{situation}, the tables hold {_say(found)}; expected {_say(expected)}", hint)


@q41.test("one purchase of 2 mugs (5 in stock)", raise_hints={sqlalchemy.exc.SQLAlchemyError: _ONE_TRANSACTION})
def _(run):
    shop = _Shop(run, stock=5)
    status, body = shop.buy(2, "first")
    if status == 409:
        raise Fail("it returned None for 2 mugs with 5 in stock; expected the new order's id", _ROWCOUNT)
    if status != 201:
        raise Fail(f"the orders service answered {status} {show(body.get('error'))}", q41.hint)
    _expect_tables(shop, {"stock": 3, "orders": 1, "payments": 1}, "after buying 2 of 5",
                   "write the order and the payment and take the stock, all inside one with engine.begin() block")
    with shop.engine.connect() as c:
        row = c.execute(select(orders.c.qty, orders.c.amount_cents, payments.c.amount_cents,
                               payments.c.reference).select_from(orders.join(payments))).one()
        c.rollback()
    if tuple(row) != (2, 2 * PRICE, 2 * PRICE, "pay-0001"):
        raise Fail(f"the order and payment rows hold {show(tuple(row))}; expected (2, 2400, 2400, 'pay-0001'): "
                   f"the order's qty and amount, the payment's amount, and the reference pay() returned",
                   "amount = price_cents * qty; store pay()'s reference in payments.reference")


@q41.test("not enough stock", raise_hints={sqlalchemy.exc.SQLAlchemyError: _ROWCOUNT})
def _(run):
    shop = _Shop(run, stock=1)
    status, _ = shop.buy(2, "too-many")
    if status == 201:
        raise Fail(f"with 1 mug in stock, buying 2 gave an order (the tables hold {_say(shop.tables())}); "
                   f"expected None and nothing written", _ROWCOUNT)
    if shop.charges():
        raise Fail("with 1 mug in stock, buying 2 charged the buyer; pay only once the stock is taken", _ROWCOUNT)
    _expect_tables(shop, {"stock": 1, "orders": 0, "payments": 0}, "after a purchase of 2 with 1 in stock", _ROWCOUNT)
    if shop.buy(1, "last-one")[0] != 201:
        raise Fail("with 1 mug in stock, buying 1 gave no order", _ROWCOUNT)
    status, _ = shop.buy(1, "one-more")
    if status == 201 or shop.tables() != {"stock": 0, "orders": 1, "payments": 1}:
        raise Fail(f"with the last mug sold, another buyer still got an order (the tables hold {_say(shop.tables())})",
                   _ROWCOUNT)


@q41.test("the payment is declined")
def _(run):
    shop = _Shop(run, stock=5, fail=1.0)
    status, body = shop.buy(1, "declined")
    _expect_tables(shop, {"stock": 5, "orders": 0, "payments": 0}, "after the payment was declined", _ONE_TRANSACTION)
    if status != 402:
        raise Fail(f"the payment was declined, and the orders service answered {status} {show(body.get('error'))}; "
                   f"expected 402: let the PaymentFailed that pay() raises leave your function",
                   "do not catch PaymentFailed: leaving the with block by an exception is what rolls back")


@q41.test("the payment service does not answer")
def _(run):
    shop = _Shop(run, stock=5)
    shop.to_payment.drop = 1.0
    status, _ = shop.buy(1, "unanswered")
    _expect_tables(shop, {"stock": 5, "orders": 0, "payments": 0}, "after the payment service did not answer",
                   _ONE_TRANSACTION)
    if status != 503:
        raise Fail(f"the payment service did not answer, and the orders service answered {status}; expected 503",
                   "do not catch PaymentFailed: leaving the with block by an exception is what rolls back")


@q41.test("the same request twice (a retry with the same key)",
          raise_hints={sqlalchemy.exc.IntegrityError: _IDEMPOTENT})
def _(run):
    shop = _Shop(run, stock=5)
    first = shop.buy(1, "retry-me")
    second = shop.buy(1, "retry-me")
    found = shop.tables()
    if found["orders"] > 1 or found["payments"] > 1 or shop.charges() > 1:
        raise Fail(f"the same key twice left {_say(found)}: the retry bought and paid a second time", _IDEMPOTENT)
    if first[0] != 201 or second != first:
        raise Fail(f"the first call answered {first[0]} and the retry {second[0]} "
                   f"{show(second[1].get('order', second[1]))}; expected the same order both times", _IDEMPOTENT)
    _expect_tables(shop, {"stock": 4, "orders": 1, "payments": 1}, "after the same purchase twice", _IDEMPOTENT)


BUYERS, STOCK, TRIES = 40, 10, 30


@q41.test(f"{BUYERS} buyers at once for {STOCK} mugs, links losing and resetting messages", seeds=(1, 2),
          raise_hints={sqlalchemy.exc.IntegrityError: _IDEMPOTENT})
def _(run):
    shop = _Shop(run, stock=STOCK, fail=0.1, payment_latency_ms=10, latency_ms=2, jitter_ms=3, drop=0.03, reset=0.03)
    outcome: dict[str, int] = {}
    lock = threading.Lock()
    clients = [run.client(f"buyer-{n}", timeout=2.0) for n in range(BUYERS)]

    start = threading.Barrier(BUYERS)

    def buyer(number: int) -> None:
        key = f"buyer-{number}"
        try:
            start.wait(10)  # all at once, as on the first morning of a sale
        except threading.BrokenBarrierError:
            pass
        for _ in range(TRIES):
            try:
                answer = clients[number].post(shop.to_orders.url + "/checkout", json={"sku": SKU, "qty": 1},
                                              headers={"Idempotency-Key": key})
            except requests.exceptions.RequestException:
                continue  # no answer: ask again with the same key
            if answer.status_code == 503:
                continue
            with lock:
                outcome[key] = answer.status_code
            return

    with concurrent.futures.ThreadPoolExecutor(BUYERS, thread_name_prefix="labkit-check-buyer") as pool:
        list(pool.map(buyer, range(BUYERS)))
    with shop.engine.connect() as c:
        stock = c.execute(select(_store.products.c.stock).where(_store.products.c.sku == SKU)).scalar_one()
        keys = c.execute(select(orders.c.key)).scalars().all()
        paid = c.execute(select(sqlalchemy.func.count()).select_from(payments)).scalar_one()
        c.rollback()
    if len(keys) > STOCK or stock < 0:
        raise Fail(f"{len(keys)} orders were made for {STOCK} mugs and the stock ended at {stock}: oversold",
                   _CONDITIONAL)
    shop.raise_problems()  # after the tables: an oversold store is the first thing to say
    bought = {k for k, status in outcome.items() if status == 201}
    if set(keys) != bought:
        lost = sorted(bought - set(keys))
        silent = sorted(set(keys) - bought)
        raise Fail(f"{len(lost)} buyer(s) were told their order went through but have none, and {len(silent)} "
                   f"have an order but were never told so", _IDEMPOTENT)
    if len(keys) < STOCK or stock != 0:
        raise Fail(f"{len(keys)} orders were made and {stock} mugs are left, though {BUYERS} buyers wanted them",
                   _ROWCOUNT)
    if paid != len(keys):
        raise Fail(f"{len(keys)} orders but {paid} payments", _ONE_TRANSACTION)
