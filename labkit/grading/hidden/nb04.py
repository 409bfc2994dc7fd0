"""Hidden tests for notebook 04 (microservices): q4.1 checkout, a whole basket in one transaction.

The student's ``checkout(engine, items, key, pay)`` is plugged into the real orders
service (``create("orders", checkout=...)``), which calls the real payment service
through a link; buyers call the orders service through another link. Each call of the
answer still runs under the check's time limit (``run.call``).
"""

from __future__ import annotations

import concurrent.futures
import os
import shutil
import tempfile
import threading

import requests
import sqlalchemy
from sqlalchemy import func, select

from labkit.apps import create, store
from labkit.apps.store import order_lines, orders, payments, products
from labkit.db import Database
from labkit.errors import PaymentError
from labkit.grading.authoring import AnswerRaised, Fail, Question, show

q41 = Question(
    "q4.1", "checkout", params=("engine", "items", "key", "pay"),
    hint=("do it all inside one with engine.begin() as tx: block: look the key up; for each line take the stock "
          "with one conditional UPDATE and raise if its rowcount is 0; insert the order and its lines; call "
          "pay(total); insert the payment"),
    hang_hint="return as soon as the transaction is over; never wait for something without a time limit",
)

PRICES = {"mug": 1200, "pen": 250}

_ONE_TRANSACTION = ("call pay(total) inside the with engine.begin() as tx: block, after the order is written: "
                    "an exception that leaves the block rolls the whole transaction back")
_ROWCOUNT = ("take each line's stock with UPDATE products SET stock = stock - qty WHERE sku = ... AND stock >= qty, "
             "and when its rowcount is 0 there was not enough")
_PARTIAL = ("a return inside the with engine.begin() block COMMITS what was done before it: when a line lacks "
            "stock, call tx.rollback() before you return None (or raise inside the block and return None outside "
            "it), so the stock taken for the earlier lines comes back")
_IDEMPOTENT = ("look the key up first (SELECT id FROM orders WHERE key = ...): if that order exists, return its id "
               "and do nothing else")
_LINES = ("write one row of order_lines per item (order_id, sku, qty, and the price_cents it was sold at) and the "
          "order's amount_cents: the sum of price_cents * qty over the lines")
_CONDITIONAL = ("check and take the stock in one statement inside the same transaction as the order and the payment: "
                "a conditional UPDATE ... WHERE stock >= qty, then look at its rowcount")


class _Shop:
    """A store for one run: its database, the payment service behind a link, the orders
    service running the answer, and a buyer's client behind another link."""

    def __init__(self, run, *, stock: dict, decline_rate: float = 0.0, payment_latency_ms: float = 5, **buyer_link):
        self.run = run
        # A SQLite file of its own, whatever LABKIT_DATABASE_URL names: the check never touches the student's store.
        folder = tempfile.mkdtemp(prefix="labkit-check-")
        run.on_close(shutil.rmtree, folder, True)  # registered first, so removed last
        self.db = Database("sqlite:///" + os.path.join(folder, "store.sqlite3"))
        run.on_close(self.db.close)
        self.engine = self.db.engine
        store.setup(self.engine, ())
        for sku, left in stock.items():
            store.restock(self.engine, sku, left, name=sku.title(), price_cents=PRICES[sku])
        self.problems: list[BaseException] = []
        self._lock = threading.Lock()
        self.payment = run.serve(create("payment", name="payment·check", decline_rate=decline_rate,
                                        seed=run.seed or 0), "payment·check")
        self.to_payment = run.link(self.payment, latency_ms=payment_latency_ms)
        app = create("orders", name="orders·check", db=self.db, payment_url=self.to_payment.url, timeout_s=0.5,
                     payment_attempts=1, checkout=self._answer, trace=run.trace)
        self.orders = run.serve(app, "orders·check")
        self.to_orders = run.link(self.orders, **(buyer_link or {"latency_ms": 5}))
        self.buyer = run.client("buyer", timeout=5)

    def _answer(self, engine, items, key, pay):
        """The student's checkout, under the check's time limit; a PaymentError passes through."""
        try:
            value = self.run.call(engine, list(items), key, pay).value
        except AnswerRaised as raised:
            if isinstance(raised.error, PaymentError):
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

    def buy(self, basket: dict, key: str, client=None):
        answer = (client or self.buyer).post(
            self.to_orders.url + "/checkout", headers={"Idempotency-Key": key},
            json={"items": [{"sku": sku, "qty": qty} for sku, qty in basket.items()]})
        self.raise_problems()
        return answer.status_code, answer.json()

    def tables(self) -> dict:
        with self.engine.connect() as c:
            found = dict(c.execute(select(products.c.sku, products.c.stock)).all())
            found["orders"] = c.execute(select(func.count()).select_from(orders)).scalar_one()
            found["payments"] = c.execute(select(func.count()).select_from(payments)).scalar_one()
            c.rollback()
        return found

    def charges(self) -> int:
        return requests.get(self.payment.url + "/stats", timeout=5).json()["charges"]


def _say(tables: dict) -> str:
    stock = ", ".join(f"{tables[sku]} {sku}s" for sku in PRICES if sku in tables)
    return f"stock {stock}; {tables['orders']} order(s), {tables['payments']} payment(s)"


def _expect_tables(shop: _Shop, expected: dict, situation: str, hint: str) -> None:
    found = shop.tables()
    if found != expected:
        raise Fail(f"{situation}, the tables hold {_say(found)}; expected {_say(expected)}", hint)


@q41.test("one basket: 2 mugs and 3 pens", raise_hints={sqlalchemy.exc.SQLAlchemyError: _ONE_TRANSACTION})
def _(run):
    shop = _Shop(run, stock={"mug": 5, "pen": 10})
    status, body = shop.buy({"mug": 2, "pen": 3}, "first")
    if status == 409:
        raise Fail("it returned None for 2 mugs (5 in stock) and 3 pens (10 in stock); expected the new order's id",
                   _ROWCOUNT)
    if status != 201:
        raise Fail(f"the orders service answered {status} {show(body.get('error'))}", q41.hint)
    _expect_tables(shop, {"mug": 3, "pen": 7, "orders": 1, "payments": 1}, "after buying 2 mugs and 3 pens",
                   "write the order, its lines and the payment and take the stock, all inside one with engine.begin() block")
    if shop.charges() != 1:
        raise Fail(f"one basket charged the buyer {shop.charges()} times", "call pay(total) once, for the whole basket")
    total = 2 * PRICES["mug"] + 3 * PRICES["pen"]
    with shop.engine.connect() as c:
        order = c.execute(select(orders.c.amount_cents, payments.c.amount_cents, payments.c.reference)
                          .select_from(orders.join(payments))).one()
        lines = sorted(c.execute(select(order_lines.c.sku, order_lines.c.qty, order_lines.c.price_cents)).all())
        c.rollback()
    if tuple(order) != (total, total, "pay-0001"):
        raise Fail(f"the order and payment rows hold {show(tuple(order))}; expected ({total}, {total}, 'pay-0001'): "
                   f"the order's amount, the payment's amount, and the reference pay() returned",
                   "amount = the sum of price_cents * qty; call pay(amount) once; store its reference")
    if [tuple(line) for line in lines] != [("mug", 2, PRICES["mug"]), ("pen", 3, PRICES["pen"])]:
        raise Fail(f"the order's lines are {show([tuple(line) for line in lines])}; expected "
                   f"[('mug', 2, {PRICES['mug']}), ('pen', 3, {PRICES['pen']})]", _LINES)


@q41.test("one line of the basket lacks stock", raise_hints={sqlalchemy.exc.SQLAlchemyError: _ROWCOUNT})
def _(run):
    shop = _Shop(run, stock={"mug": 1, "pen": 10})
    status, _ = shop.buy({"pen": 3, "mug": 2}, "too-many")
    if status == 201:
        raise Fail(f"with 1 mug in stock, a basket of 2 mugs and 3 pens gave an order (the tables hold "
                   f"{_say(shop.tables())}); expected None and nothing written", _ROWCOUNT)
    if shop.charges():
        raise Fail("with 1 mug in stock, a basket of 2 mugs charged the buyer; pay only once every line's stock "
                   "is taken", _ROWCOUNT)
    _expect_tables(shop, {"mug": 1, "pen": 10, "orders": 0, "payments": 0},
                   "after a basket of 3 pens and 2 mugs with 1 mug in stock", _PARTIAL)
    if shop.buy({"mug": 1}, "last-one")[0] != 201:
        raise Fail("with 1 mug in stock, a basket of 1 mug gave no order", _ROWCOUNT)
    status, _ = shop.buy({"mug": 1, "pen": 1}, "one-more")
    if status == 201 or shop.tables() != {"mug": 0, "pen": 10, "orders": 1, "payments": 1}:
        raise Fail(f"with the last mug sold, another basket still changed the tables ({_say(shop.tables())})",
                   _PARTIAL)


@q41.test("the payment is declined")
def _(run):
    shop = _Shop(run, stock={"mug": 5, "pen": 5}, decline_rate=1.0)
    status, body = shop.buy({"mug": 1, "pen": 1}, "declined")
    _expect_tables(shop, {"mug": 5, "pen": 5, "orders": 0, "payments": 0}, "after the payment was declined",
                   _ONE_TRANSACTION)
    if status != 402:
        raise Fail(f"the payment was declined, and the orders service answered {status} {show(body.get('error'))}; "
                   f"expected 402: let the PaymentDeclined that pay() raises leave your function",
                   "do not catch the payment's exception: leaving the with block by an exception is what rolls back")


@q41.test("the payment service does not answer")
def _(run):
    shop = _Shop(run, stock={"mug": 5, "pen": 5})
    shop.to_payment.drop = 1.0
    status, _ = shop.buy({"mug": 1, "pen": 2}, "unanswered")
    _expect_tables(shop, {"mug": 5, "pen": 5, "orders": 0, "payments": 0}, "after the payment service did not answer",
                   _ONE_TRANSACTION)
    if status != 503:
        raise Fail(f"the payment service did not answer, and the orders service answered {status}; expected 503",
                   "do not catch the payment's exception: leaving the with block by an exception is what rolls back")


@q41.test("the same basket twice (a retry with the same key)",
          raise_hints={sqlalchemy.exc.IntegrityError: _IDEMPOTENT})
def _(run):
    shop = _Shop(run, stock={"mug": 5, "pen": 5})
    first = shop.buy({"mug": 1, "pen": 1}, "retry-me")
    second = shop.buy({"mug": 1, "pen": 1}, "retry-me")
    found = shop.tables()
    if found["orders"] > 1 or found["payments"] > 1 or shop.charges() > 1:
        raise Fail(f"the same key twice left {_say(found)}: the retry bought and paid a second time", _IDEMPOTENT)
    if first[0] != 201 or second != first:
        raise Fail(f"the first call answered {first[0]} and the retry {second[0]} "
                   f"{show(second[1].get('order', second[1]))}; expected the same order both times", _IDEMPOTENT)
    _expect_tables(shop, {"mug": 4, "pen": 4, "orders": 1, "payments": 1}, "after the same basket twice", _IDEMPOTENT)


BUYERS, STOCK, TRIES = 40, 10, 30


@q41.test(f"{BUYERS} buyers at once for {STOCK} mugs, each with a pen too, links losing and resetting messages",
          seeds=(1, 2), raise_hints={sqlalchemy.exc.IntegrityError: _IDEMPOTENT})
def _(run):
    shop = _Shop(run, stock={"mug": STOCK, "pen": 1000}, decline_rate=0.1, payment_latency_ms=10,
                 latency_ms=2, jitter_ms=3, drop=0.03, reset=0.03)
    outcome: dict[str, int] = {}
    lock = threading.Lock()
    clients = [run.client(f"buyer-{n}", timeout=2.0) for n in range(BUYERS)]
    start = threading.Barrier(BUYERS)

    def buyer(number: int) -> None:
        key = f"buyer-{number}"
        basket = [{"sku": "mug", "qty": 1}, {"sku": "pen", "qty": 1}][:: 1 if number % 2 else -1]
        try:
            start.wait(10)  # all at once, as on the first morning of a sale
        except threading.BrokenBarrierError:
            pass
        for _ in range(TRIES):
            try:
                answer = clients[number].post(shop.to_orders.url + "/checkout", json={"items": basket},
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
    tables = shop.tables()
    with shop.engine.connect() as c:
        keys = c.execute(select(orders.c.key)).scalars().all()
        c.rollback()
    if len(keys) > STOCK or tables["mug"] < 0:
        raise Fail(f"{len(keys)} orders were made for {STOCK} mugs and the stock ended at {tables['mug']}: oversold",
                   _CONDITIONAL)
    shop.raise_problems()  # after the tables: an oversold store is the first thing to say
    bought = {k for k, status in outcome.items() if status == 201}
    if set(keys) != bought:
        lost = sorted(bought - set(keys))
        silent = sorted(set(keys) - bought)
        raise Fail(f"{len(lost)} buyer(s) were told their order went through but have none, and {len(silent)} "
                   f"have an order but were never told so", _IDEMPOTENT)
    if len(keys) < STOCK or tables["mug"] != 0:
        raise Fail(f"{len(keys)} orders were made and {tables['mug']} mugs are left, though {BUYERS} buyers "
                   f"wanted them", _ROWCOUNT)
    if tables["pen"] != 1000 - len(keys):
        raise Fail(f"{len(keys)} orders each bought a pen, but {1000 - tables['pen']} pens left the stock", _PARTIAL)
    if tables["payments"] != len(keys):
        raise Fail(f"{len(keys)} orders but {tables['payments']} payments", _ONE_TRANSACTION)
