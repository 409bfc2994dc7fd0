"""The store of notebook 04: gateway, catalogue, orders and payment on one shared database.

Every test runs real servers on 127.0.0.1; the database tests run on SQLite and on
PostgreSQL (the ``database_url`` fixture). The invariants of the checkout under
concurrency and faults: exactly as many orders as there was stock, stock never
below zero, no order lost (a buyer has an order exactly when its checkout answered
2xx) and nothing charged twice (retries carry an idempotency key).

The payment service is the card processor of :mod:`labkit.apps.payment`: its ledger
is in its own memory, so the tests read the payments the checkout recorded from the
shared database, and the processor's charges from its ``/stats`` and ``/charges/<ref>``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import re
import threading
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update

import labkit
from labkit.apps import create, payment as payment_service, store
from labkit.apps import orders as orders_service
from labkit.apps.store import order_lines, orders, payments, products
from labkit.db import Database

import malformed


def _store_on(lab, db, *, payment_link: dict | None = None, orders_options: dict | None = None, **payment_options):
    """The four services on ``db``; the orders service reaches payment through a link."""
    catalogue = lab.serve(create("catalogue", db=db), name="catalogue")
    payment = lab.serve(create("payment", **payment_options), name="payment")
    to_payment = lab.link(payment, seed=1, **(payment_link or {}))
    orders_app = create("orders", db=db, payment_url=to_payment.url, trace=lab.trace,
                        **{"timeout_s": 1.0, **(orders_options or {})})
    orders_ = lab.serve(orders_app, name="orders")
    gateway_app = create("gateway", catalogue_url=catalogue.url, orders_url=orders_.url, trace=lab.trace)
    gateway = lab.serve(gateway_app, name="gateway")
    return catalogue, payment, to_payment, orders_, gateway


@pytest.fixture
def db(database_url):
    with Database(database_url) as database:
        yield database


def buy(client, url, sku="mug", qty=1, key="k1"):
    return client.post(url + "/checkout", json={"items": [{"sku": sku, "qty": qty}]},
                       headers={"Idempotency-Key": key})


def charged(client, payment) -> tuple[int, int]:
    """(charges made, charges declined) by the payment processor."""
    stats = client.get(payment.url + "/stats").json()
    return stats["charges"], stats["declined"]


def recorded_payments(engine) -> list[dict]:
    """The payments the checkouts recorded in the shared database, by order."""
    with engine.connect() as c:
        rows = c.execute(select(payments.c.order_id, payments.c.amount_cents, payments.c.reference)
                         .order_by(payments.c.order_id)).mappings().all()
        c.rollback()
    return [dict(r) for r in rows]


def test_a_checkout_buys_once_and_a_retry_gets_the_same_answer(lab, db):
    _, payment, _, orders_, gateway = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    assert store.counts(db.engine, "mug") == {"stock": 10, "orders": 0, "payments": 0}
    basket = {"items": [{"sku": "mug", "qty": 2}]}
    first = me.post(gateway.url + "/api/checkout", json=basket, headers={"Idempotency-Key": "a"})
    assert first.status_code == 201
    order = first.json()["order"]
    assert (order["items"], order["amount_cents"]) == ([{"sku": "mug", "qty": 2}], 2400)
    assert set(order) == {"id", "items", "amount_cents", "payment"}
    assert "Idempotent-Replayed" not in first.headers
    again = me.post(gateway.url + "/api/checkout", json=basket, headers={"Idempotency-Key": "a"})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert store.counts(db.engine, "mug") == {"stock": 8, "orders": 1, "payments": 1}
    assert charged(me, payment) == (1, 0)
    assert recorded_payments(db.engine) == [
        {"order_id": order["id"], "amount_cents": 2400, "reference": order["payment"]}]
    assert me.get(payment.url + f"/charges/{order['payment']}").json() == {
        "reference": order["payment"], "amount_cents": 2400, "status": "succeeded"}
    assert me.get(orders_.url + f"/orders/{order['id']}").json() == order
    assert me.get(gateway.url + "/api/orders").json() == {"orders": [order]}
    other = buy(me, orders_.url, qty=1, key="a")  # the same key for another order
    assert other.status_code == 422 and "use a new key" in other.json()["error"]
    assert buy(me, orders_.url, sku="nothing", key="b").status_code == 404
    assert buy(me, orders_.url, qty=9, key="c").status_code == 409
    assert me.get(orders_.url + "/orders/999").status_code == 404
    assert store.counts(db.engine, "mug") == {"stock": 8, "orders": 1, "payments": 1}
    assert charged(me, payment) == (1, 0)


def test_the_stores_own_checkout_refuses_a_basket_of_two_and_changes_nothing(lab, db):
    """The store's own checkout buys one product per order; a whole basket is notebook 04's exercise."""
    _, payment, _, orders_, gateway = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    before = store.counts(db.engine)
    two = {"items": [{"sku": "mug", "qty": 1}, {"sku": "pen", "qty": 2}]}
    for url in (orders_.url + "/checkout", gateway.url + "/api/checkout"):
        refused = me.post(url, json=two, headers={"Idempotency-Key": "two"})
        assert refused.status_code == 400 and "one product per order" in refused.json()["error"]
    for basket in ({"items": []}, {"items": [{"sku": "mug", "qty": 1}, {"sku": "mug", "qty": 1}]},
                   {"items": [{"sku": "mug", "qty": 1}] * 11}, {"items": [{"sku": "mug"}]},
                   {"items": [{"sku": "mug", "qty": 0}]}, {"items": [{"sku": "mug", "qty": True}]},
                   {"items": [{"sku": "mug", "qty": store.MAX_QTY + 1}]}, {"sku": "mug", "qty": 1}):
        refused = me.post(orders_.url + "/checkout", json=basket, headers={"Idempotency-Key": "bad"})
        assert refused.status_code == 400 and refused.json()["error"], basket
    no_key = me.post(orders_.url + "/checkout", json={"items": [{"sku": "mug", "qty": 1}]})
    assert no_key.status_code == 400 and "Idempotency-Key" in no_key.json()["error"]
    assert store.counts(db.engine) == before
    assert charged(me, payment) == (0, 0)
    assert me.get(payment.url + "/stats").json()["requests"] == 0  # nothing even reached the processor
    assert me.get(orders_.url + "/orders").json() == {"orders": []}
    with db.engine.connect() as c:
        assert c.execute(select(func.count()).select_from(order_lines)).scalar_one() == 0
        c.rollback()


def test_the_orders_service_runs_the_checkout_it_is_given(lab, db):
    """``create("orders", checkout=...)`` plugs in another checkout; the service judges what it returns."""
    calls = []

    def sold_out(engine, items, key, pay):
        calls.append((items, key))
        return None

    def broken(engine, items, key, pay):
        raise RuntimeError("this checkout fails on purpose")

    def invented(engine, items, key, pay):
        return 12345

    store.setup(db.engine)  # the tables and the default catalogue, as the catalogue service makes them
    payment = lab.serve(create("payment"), name="payment")
    me = lab.client("me", timeout=10)
    answers = {}
    for checkout in (sold_out, broken, invented):
        app = create("orders", name=f"orders-{checkout.__name__}", db=db, payment_url=payment.url, timeout_s=1.0,
                     checkout=checkout, trace=lab.trace)
        server = lab.serve(app)
        answers[checkout.__name__] = buy(me, server.url, sku="pen", qty=3, key="plugged")
    assert calls == [([("pen", 3)], "plugged")]
    assert answers["sold_out"].status_code == 409 and "not enough in stock" in answers["sold_out"].json()["error"]
    assert answers["broken"].status_code == 500 and "RuntimeError" in answers["broken"].json()["error"]
    assert answers["invented"].status_code == 500 and "12345" in answers["invented"].json()["error"]
    assert store.counts(db.engine) == {"stock": 65, "orders": 0, "payments": 0}
    assert charged(me, payment) == (0, 0)


def test_a_failed_payment_rolls_the_whole_checkout_back(lab, db):
    _, payment, to_payment, orders_, _ = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    before = store.counts(db.engine)
    faults = me.get(payment.url + "/faults").json()
    assert me.put(payment.url + "/faults", json={"decline_rate": 1.0}).json() == {**faults, "decline_rate": 1.0}
    declined = buy(me, orders_.url, key="d")
    assert declined.status_code == 402 and "declined" in declined.json()["error"]
    assert store.counts(db.engine) == before
    me.put(payment.url + "/faults", json={"decline_rate": 0}).raise_for_status()
    again = buy(me, orders_.url, key="d")  # a decline is the key's answer for good
    assert again.status_code == 402 and "new Idempotency-Key" in again.json()["error"]
    assert charged(me, payment) == (0, 1)
    to_payment.down = True
    unreachable = buy(me, orders_.url, key="e")
    assert unreachable.status_code == 503 and "refused" in unreachable.json()["error"]
    assert store.counts(db.engine) == before
    to_payment.down = False
    assert buy(me, orders_.url, key="e").status_code == 201  # the same key, once the payment works
    assert store.counts(db.engine)["orders"] == before["orders"] + 1
    assert charged(me, payment) == (1, 1)


def test_a_late_twin_of_a_declined_checkout_is_declined_too(lab, db):
    """A request delayed on its way must not turn a purchase the buyer was told was declined into a charge."""
    _, payment, _, orders_, _ = _store_on(lab, db, decline_rate=1.0)
    me = lab.client("me", timeout=10)
    assert buy(me, orders_.url, key="t").status_code == 402
    me.put(payment.url + "/faults", json={"decline_rate": 0}).raise_for_status()
    late = buy(me, orders_.url, key="t")  # the first attempt, arriving after its retry was answered
    assert late.status_code == 402
    assert store.counts(db.engine, "mug") == {"stock": 10, "orders": 0, "payments": 0}
    assert charged(me, payment) == (0, 1)


def _wait_for_charges(client, payment, charges: int, within_s: float = 10.0) -> None:
    deadline = time.monotonic() + within_s
    while charged(client, payment)[0] < charges:
        assert time.monotonic() < deadline, f"the payment processor made fewer than {charges} charges"
        time.sleep(0.05)


def test_a_slow_payment_that_times_out_rolls_back_and_the_retry_charges_once(lab, db):
    _, payment, _, orders_, _ = _store_on(lab, db, orders_options={"payment_attempts": 1})
    me = lab.client("me", timeout=10)
    me.put(payment.url + "/faults", json={"work_ms": 1500}).raise_for_status()  # longer than the 1 s timeout
    slow = buy(me, orders_.url, key="s")
    assert slow.status_code == 503 and "timeout" in slow.json()["error"]
    assert store.counts(db.engine, "mug") == {"stock": 10, "orders": 0, "payments": 0}
    me.put(payment.url + "/faults", json={"work_ms": 0}).raise_for_status()
    _wait_for_charges(me, payment, 1)  # the timed-out call still charged, late
    retry = buy(me, orders_.url, key="s")
    assert retry.status_code == 201
    assert charged(me, payment) == (1, 0)  # the charge the timed-out call made is the one the retry got back
    assert retry.json()["order"]["payment"] == "pay-0001"
    assert me.get(payment.url + "/stats").json()["replayed"] == 1
    assert store.counts(db.engine, "mug") == {"stock": 9, "orders": 1, "payments": 1}


def test_a_retry_inside_the_checkout_that_finds_the_charge_still_in_progress_rolls_back(lab, db):
    """The orders service tries payment twice with one key; the processor answers 409 while the first still works."""
    _, payment, _, orders_, _ = _store_on(lab, db, work_ms=2500)  # still working when the 2nd attempt comes
    me = lab.client("me", timeout=10)
    slow = buy(me, orders_.url, key="w")
    assert slow.status_code == 503 and "409" in slow.json()["error"]
    assert "same Idempotency-Key" in slow.json()["error"]
    calls = lab.trace.filter(kind={"response", "error"}, node="orders", path="/charges")
    assert [(e.kind, e.status, e.error) for e in calls] == [("error", None, "timeout"), ("response", 409, "")]
    assert store.counts(db.engine, "mug") == {"stock": 10, "orders": 0, "payments": 0}
    _wait_for_charges(me, payment, 1)
    me.put(payment.url + "/faults", json={"work_ms": 0}).raise_for_status()
    retry = buy(me, orders_.url, key="w")
    assert retry.status_code == 201 and retry.json()["order"]["payment"] == "pay-0001"
    assert charged(me, payment) == (1, 0)


BUYERS, STOCK, THREADS = 200, 10, 32


def test_200_concurrent_buyers_of_10_items_under_faults_keep_every_invariant(lab, db):
    _, payment, _, orders_, _ = _store_on(lab, db, payment_link={"latency_ms": 2, "drop": 0.02},
                                          decline_rate=0.1, seed=3)
    store.restock(db.engine, "mug", STOCK)
    to_orders = lab.link(orders_, seed=7, latency_ms=2, jitter_ms=3, drop=0.02, reset=0.03)
    outcome: dict[str, int] = {}
    attempts = collections.Counter()
    lock = threading.Lock()

    def buyer(number: int) -> None:
        key = f"buyer-{number}"
        with labkit.Client(key, timeout=1.0, trace=lab.trace) as client:
            for _ in range(40):
                with lock:
                    attempts[key] += 1
                try:
                    answer = buy(client, to_orders.url, key=key)
                except requests.exceptions.RequestException:
                    continue  # no answer: the same key again
                if answer.status_code in (500, 503):
                    continue
                with lock:
                    outcome[key] = answer.status_code
                return

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(buyer, range(BUYERS)))

    assert len(outcome) == BUYERS, "every buyer got a definite answer"
    assert set(outcome.values()) <= {201, 402, 409}
    with db.engine.connect() as c:
        stock = c.execute(select(products.c.stock).where(products.c.sku == "mug")).scalar_one()
        keys = c.execute(select(orders.c.key)).scalars().all()
        unpaid = c.execute(select(func.count()).select_from(orders.outerjoin(payments, payments.c.order_id == orders.c.id))
                           .where(payments.c.id.is_(None))).scalar_one()
        wrong_amount = c.execute(select(func.count()).select_from(orders.join(payments, payments.c.order_id == orders.c.id))
                                 .where(payments.c.amount_cents != orders.c.amount_cents)).scalar_one()
        references = c.execute(select(payments.c.reference, payments.c.amount_cents)).all()
        c.rollback()
    assert stock == 0
    assert len(keys) == STOCK and len(set(keys)) == STOCK
    assert set(keys) == {k for k, status in outcome.items() if status == 201}, "an order exactly for each 2xx"
    assert unpaid == 0 and wrong_amount == 0
    assert sum(attempts.values()) > BUYERS, "the faults made some buyers retry"
    stats = requests.get(payment.url + "/stats", timeout=5).json()
    assert stats["charges"] >= STOCK  # one charge per key: a retry never charged again
    assert len({ref for ref, _ in references}) == STOCK, "each order has a charge of its own"
    for reference, amount in references:
        assert requests.get(payment.url + f"/charges/{reference}", timeout=5).json() == {
            "reference": reference, "amount_cents": amount, "status": "succeeded"}
    assert len(lab.trace.filter(kind="dropped")) > 0


def test_the_page_uses_relative_urls_and_the_api_forwards(lab, db):
    catalogue, _, _, orders_, gateway = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    page = me.get(gateway.url + "/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'fetch("api/products")' in page.text and 'fetch("api/checkout"' in page.text
    assert 'fetch("/' not in page.text and "127.0.0.1" not in page.text
    assert me.get(gateway.url + "/api/products").json() == me.get(catalogue.url + "/products").json()
    bad = me.post(gateway.url + "/api/checkout", data=b"not json", headers={"Content-Type": "text/plain",
                                                                          "Idempotency-Key": "x"})
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]
    bought = me.post(gateway.url + "/api/checkout", json={"items": [{"sku": "pen", "qty": 1}]},
                     headers={"Idempotency-Key": "page"})
    assert bought.status_code == 201
    replayed = me.post(gateway.url + "/api/checkout", json={"items": [{"sku": "pen", "qty": 1}]},
                       headers={"Idempotency-Key": "page"})
    assert replayed.headers["Idempotent-Replayed"] == "true"  # the gateway passes the header back
    assert me.get(gateway.url + "/api/orders").json() == me.get(orders_.url + "/orders").json()


def test_the_gateway_says_when_a_service_cannot_be_reached(lab):
    db = lab.enter(Database())
    catalogue = lab.serve(create("catalogue", db=db), name="catalogue")
    to_catalogue = lab.link(catalogue, down=True)
    gateway_app = create("gateway", catalogue_url=to_catalogue.url, orders_url=to_catalogue.url, timeout_s=1,
                         trace=lab.trace)
    gateway = lab.serve(gateway_app, name="gateway")
    answer = lab.client("me", timeout=5).get(gateway.url + "/api/products")
    assert answer.status_code == 502 and "catalogue service could not be reached (refused)" in answer.json()["error"]
    to_catalogue.configure(down=False, drop=1.0)
    answer = lab.client("me2", timeout=5).get(gateway.url + "/api/products")
    assert answer.status_code == 504 and "catalogue service did not answer in time" in answer.json()["error"]


def test_the_gateway_passes_answers_through_as_they_are(lab):
    """The gateway no longer checks that an upstream answer is JSON: status, body and type pass through."""
    upstream = lab.app("upstream")

    @upstream.get("/products")
    def not_json():
        return "<p>not JSON</p>", 418, {"Content-Type": "text/html"}

    server = lab.serve(upstream)
    gateway = lab.serve(create("gateway", catalogue_url=server.url, orders_url=server.url, timeout_s=2,
                               trace=lab.trace))
    answer = lab.client("me", timeout=5).get(gateway.url + "/api/products")
    assert (answer.status_code, answer.text, answer.headers["Content-Type"]) == (418, "<p>not JSON</p>",
                                                                                 "text/html")


def test_the_catalogue_adds_and_restocks(lab, db):
    catalogue = lab.serve(create("catalogue", db=db, start_with=()), name="catalogue")
    me = lab.client("me", timeout=10)
    assert me.get(catalogue.url + "/products").json() == {"products": []}
    made = me.put(catalogue.url + "/products/tea", json={"name": "Tea", "price_cents": 300, "stock": 4})
    assert made.status_code == 201
    again = me.put(catalogue.url + "/products/tea", json={"name": "Tea", "price_cents": 350, "stock": 0})
    assert again.status_code == 200 and again.json() == {"sku": "tea", "name": "Tea", "price_cents": 350, "stock": 0}
    assert me.get(catalogue.url + "/products/tea").json()["price_cents"] == 350
    assert me.get(catalogue.url + "/products/coffee").status_code == 404


def test_reads_do_not_wait_for_a_checkout_that_holds_the_lock(lab, db):
    """The catalogue's and the orders service's reads take no lock: browsing goes on while a checkout pays."""
    catalogue, payment, _, orders_, gateway = _store_on(lab, db, work_ms=600)
    paying = threading.Thread(target=buy, args=(lab.client("buyer", timeout=10), orders_.url))
    paying.start()
    deadline = time.monotonic() + 5
    while not lab.trace.filter(kind="receive", node="payment") and time.monotonic() < deadline:
        time.sleep(0.005)  # the checkout's transaction is open, and it waits for the processor
    me = lab.client("me", timeout=10)
    started = time.monotonic()
    assert me.get(catalogue.url + "/products/mug").json()["stock"] == 10  # the last commit: nothing taken yet
    assert me.get(orders_.url + "/orders").json() == {"orders": []}
    assert me.get(gateway.url + "/api/products").status_code == 200
    assert time.monotonic() - started < 0.4  # well before the payment answers
    paying.join(10)
    assert store.counts(db.engine, "mug") == {"stock": 9, "orders": 1, "payments": 1}
    begins = [e for e in lab.trace if e.kind == "begin" and "waited" in e.detail]
    assert not begins, [e.detail for e in begins]


def test_a_connection_for_reads_is_refused_an_unknown_way_to_begin(db):
    with pytest.raises(ValueError, match="immediate.*deferred"):
        with db.engine.connect().execution_options(labkit_begin="exclusive") as c:
            c.execute(select(products.c.sku))


def _database_through_a_link(lab, db):
    """A Database whose every connection goes through a labkit Link, and that Link: a database that can be cut off.

    SQLite has no network: there the file's folder is moved away and back instead (``gone``).
    """
    import contextlib
    import os

    if db.engine.dialect.name == "sqlite":
        folder = os.path.dirname(db.engine.url.database)

        @contextlib.contextmanager
        def gone():
            db.engine.dispose()
            os.rename(folder, folder + "-gone")
            try:
                yield
            finally:
                os.rename(folder + "-gone", folder)
        return db, gone
    url = db.engine.url
    link = lab.link((url.host or "127.0.0.1", url.port or 5432))
    through = lab.enter(Database(url.set(host="127.0.0.1", port=link.port).render_as_string(hide_password=False)))

    @contextlib.contextmanager
    def gone():
        link.down = True
        through.engine.dispose()
        try:
            yield
        finally:
            link.down = False
    return through, gone


def test_without_the_database_every_call_that_needs_data_answers_503_and_all_recover(lab, db):
    database, gone = _database_through_a_link(lab, db)
    store.setup(database.engine)
    catalogue, payment, _, orders_, gateway = _store_on(lab, database)
    me = lab.client("me", timeout=10)

    def answers(key):
        return {"page": me.get(gateway.url + "/").status_code,
                "products": me.get(gateway.url + "/api/products").status_code,
                "catalogue": me.get(catalogue.url + "/products/mug").status_code,
                "orders": me.get(gateway.url + "/api/orders").status_code,
                "checkout": buy(me, gateway.url + "/api", key=key).status_code,
                "payment": me.get(payment.url + "/fees?amount_cents=100").status_code}

    with gone():
        assert answers("gone") == {"page": 200, "products": 503, "catalogue": 503, "orders": 503, "checkout": 503,
                                   "payment": 200}
        refused = me.get(catalogue.url + "/products")
        assert "the database did not answer" in refused.json()["error"]
    assert answers("back") == {"page": 200, "products": 200, "catalogue": 200, "orders": 200, "checkout": 201,
                               "payment": 200}
    assert charged(me, payment) == (1, 0)  # the checkout tried while the database was gone never reached payment


def _race(db, buyers: int, stock: int, write) -> tuple[int, int]:
    """``buyers`` threads at once, each in ONE transaction: read the mug's stock, wait 50 ms (a payment), then
    write it (``write(tx, seen)``) and count an order if the read saw stock. Returns (orders, final stock)."""
    store.setup(db.engine)
    store.restock(db.engine, "mug", stock)
    start = threading.Barrier(buyers)
    made = []

    def buyer(_):
        start.wait(10)
        with db.engine.begin() as tx:
            seen = tx.execute(select(products.c.stock).where(products.c.sku == "mug")).scalar_one()
            if seen < 1:
                return
            time.sleep(0.05)
            write(tx, seen)
        made.append(1)

    with concurrent.futures.ThreadPoolExecutor(buyers) as pool:
        list(pool.map(buyer, range(buyers)))
    return len(made), store.counts(db.engine, "mug")["stock"]


def test_read_then_write_in_one_transaction_oversells_on_postgresqls_read_committed_only(db):
    """Notebook 04, section 6: a check-then-act race inside ONE transaction. SQLite's BEGIN IMMEDIATE runs
    one writer at a time, so the check holds; PostgreSQL's default READ COMMITTED lets every buyer read the
    stock before the first commits, and each relative UPDATE then applies to the new row: oversold."""
    made, left = _race(db, buyers=12, stock=4, write=lambda tx, seen: tx.execute(
        update(products).where(products.c.sku == "mug").values(stock=products.c.stock - 1)))
    if db.engine.dialect.name == "sqlite":
        assert (made, left) == (4, 0)
    else:
        assert made > 4 and left == 4 - made  # no update lost: every "stock - 1" applied, below zero


def test_writing_back_a_value_read_loses_updates_on_postgresqls_read_committed_only(db):
    """The lost update: each transaction writes back ``seen - 1``; on PostgreSQL's READ COMMITTED the writes
    overwrite each other and the stock ends higher than the orders allow. SQLite's one writer at a time keeps it."""
    made, left = _race(db, buyers=12, stock=100, write=lambda tx, seen: tx.execute(
        update(products).where(products.c.sku == "mug").values(stock=seen - 1)))
    assert made == 12
    if db.engine.dialect.name == "sqlite":
        assert left == 88
    else:
        assert left > 88  # updates lost: (left - 88) decrements vanished


def test_options_are_checked():
    with pytest.raises(ValueError, match="decline_rate must be a number"):
        create("payment", decline_rate=True)
    with pytest.raises(ValueError, match="work_ms"):
        create("payment", work_ms=-1)
    with Database() as db:
        with pytest.raises(ValueError, match="'db' is not a fault setting"):  # the ledger is the processor's own
            create("payment", db=db)
        with pytest.raises(ValueError, match="payment_attempts"):
            create("orders", db=db, payment_attempts=0)
        with pytest.raises(ValueError, match="timeout_s"):
            create("orders", db=db, timeout_s=0)
        with pytest.raises(ValueError, match="either db"):
            create("catalogue", db=db, url="sqlite://")
    with pytest.raises(TypeError, match="labkit.db.Database"):
        create("catalogue", db="sqlite://")
    with pytest.raises(ValueError, match="timeout_s"):
        create("gateway", timeout_s=-1)


# -- malformed input -------------------------------------------------------------------------

ENDPOINTS = [
    ("catalogue", "GET", "/products"), ("catalogue", "GET", "/products/{id}"), ("catalogue", "PUT", "/products/{id}"),
    ("catalogue", "DELETE", "/products/{id}"),
    ("payment", "POST", "/charges"), ("payment", "GET", "/charges/{id}"), ("payment", "GET", "/charges"),
    ("payment", "PUT", "/faults"), ("payment", "GET", "/faults"), ("payment", "PUT", "/admin"),
    ("payment", "GET", "/payments"),
    ("orders", "POST", "/checkout"), ("orders", "GET", "/orders"), ("orders", "GET", "/orders/{id}"),
    ("orders", "GET", "/checkout"),
    ("gateway", "GET", "/"), ("gateway", "GET", "/api/products"), ("gateway", "POST", "/api/checkout"),
    ("gateway", "GET", "/api/orders"), ("gateway", "PUT", "/api/{id}"),
]
STATE = [("catalogue", "/products"), ("payment", "/faults"), ("orders", "/orders")]
FIELDS = ["items", "sku", "qty", "name", "price_cents", "stock", "amount_cents", "decline_rate", "key"]
ODD = ["", " ", "mug", "cap", "-1", "0", "1", "nan", "true", "null", "\x00", "é" * 50, "9" * 40]
FAULTS = {setting: default for setting, (default, _) in payment_service.RULES.items()}

bodies = malformed.bodies(FIELDS, ODD)
keys = st.none() | st.sampled_from(["", "k", "é", "x" * 101, "a\tb"]) | st.text(
    st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12).filter(lambda k: k == k.strip())
ids = malformed.path_ids(ODD)


@pytest.fixture(scope="module")
def running_store():
    payment_app = create("payment")
    with Database() as db, labkit.serve(create("catalogue", db=db), name="catalogue·malformed", trace=labkit.Trace()) \
            as catalogue, labkit.serve(payment_app, name="payment·malformed", trace=labkit.Trace()) \
            as payment, requests.Session() as session:
        quiet = labkit.Trace()
        orders_app = create("orders", db=db, payment_url=payment.url, trace=quiet)
        with labkit.serve(orders_app, name="orders·malformed", trace=quiet) as orders_:
            gateway_app = create("gateway", catalogue_url=catalogue.url, orders_url=orders_.url, trace=quiet)
            with labkit.serve(gateway_app, name="gateway·malformed", trace=quiet) as gateway:
                session.trust_env = False
                yield ({"catalogue": catalogue, "payment": payment, "orders": orders_, "gateway": gateway}, session,
                       payment_app.extensions["labkit"])


def _state(servers, session):
    stats = session.get(servers["payment"].url + "/stats", timeout=10).json()
    return ([session.get(servers[name].url + path, timeout=10).json() for name, path in STATE]
            + [(stats["charges"], stats["charged_cents"], stats["declined"])])


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(running_store, data):
    servers, session, processor = running_store
    processor.faults.configure(**FAULTS)  # undo what an accepted PUT /faults changed
    service, method, template = data.draw(st.sampled_from(ENDPOINTS), label="endpoint")
    path = template.replace("{id}", requests.utils.quote(data.draw(ids, label="id"), safe=""))
    body = data.draw(bodies, label="body")
    key = data.draw(keys, label="Idempotency-Key")
    headers = {"Content-Type": body[0]} if body else {}
    if key is not None:
        headers["Idempotency-Key"] = key.encode().decode("latin-1")
    before = _state(servers, session)
    response = session.request(method, servers[service].url + path, data=body[1] if body else None,
                               headers=headers, timeout=10)
    assert response.status_code < 500, (service, method, path, response.status_code, response.text[:200])
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/json", (method, path, response.text[:200])
        error = response.json()["error"]
        assert isinstance(error, str) and error
        assert _state(servers, session) == before


def test_the_page_buys_in_a_real_browser_behind_a_proxy_path(lab):
    """Served under /user/NAME/proxy/PORT/ as on Binder, the page lists and buys with relative URLs."""
    playwright = pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    from werkzeug.middleware.dispatcher import DispatcherMiddleware
    from werkzeug.wrappers import Response

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    db = lab.enter(Database())
    catalogue, _, _, orders_, _ = _store_on(lab, db)
    gateway_app = create("gateway", catalogue_url=catalogue.url, orders_url=orders_.url, trace=lab.trace)
    prefix = "/user/student/proxy/1234"
    proxy = lab.serve(DispatcherMiddleware(Response("only the proxied path is served", 404), {prefix: gateway_app}),
                      name="proxy")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(proxy.url + prefix + "/")
            page.wait_for_selector("button", timeout=15_000)
            page.click("button >> nth=1")  # products are listed by sku: cap, mug, pen
            page.wait_for_selector("#orders li", timeout=15_000)
            assert page.inner_text("#message") == "bought: order #1, payment pay-0001"
            assert page.inner_text("#orders") == "#1: 1 x mug, 12.00 (pay-0001)"
        finally:
            browser.close()
    assert store.counts(db.engine, "mug") == {"stock": 9, "orders": 1, "payments": 1}


def test_the_solution_cell_plugs_into_the_orders_service():
    """Notebook 04's answer to q4.1 is plugged in as ``create("orders", checkout=...)``: it must keep the
    signature of the store's own checkout, ``checkout(engine, items, key, pay)``."""
    import ast
    import inspect
    from pathlib import Path

    import nbformat

    notebook = Path(__file__).resolve().parents[1] / "solutions" / "04_microservices.ipynb"
    cell = next(c for c in nbformat.read(notebook, as_version=4).cells
                if c.metadata.get("labkit", {}).get("question") == "q4.1" and c.metadata["labkit"]["role"] == "answer")
    [answer] = [node for node in ast.parse(cell.source).body
                if isinstance(node, ast.FunctionDef) and node.name == "checkout"]
    own = list(inspect.signature(orders_service.checkout).parameters)
    assert own == ["engine", "items", "key", "pay"]
    assert [arg.arg for arg in answer.args.args] == own


def test_the_page_keeps_the_key_after_a_503_so_buying_again_finds_the_charge(lab):
    """A 503 leaves the outcome unknown (the processor may have charged): the page's next Buy of that
    product sends the same key, and gets the charge the first try made, not a second one."""
    playwright = pytest.importorskip("playwright.sync_api")
    from pathlib import Path

    chromium = Path("/usr/bin/chromium")
    if not chromium.exists():
        pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    db = lab.enter(Database())
    _, payment, _, _, gateway = _store_on(lab, db, orders_options={"payment_attempts": 1}, work_ms=1500)
    me = lab.client("me", timeout=10)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(gateway.url + "/")
            page.wait_for_selector("button", timeout=15_000)
            key = page.evaluate("() => { crypto.randomUUID = undefined; return newKey(); }")  # as on plain http
            assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", key), key
            page.click("button >> nth=1")  # the mug: the processor takes 1.5 s, the orders service waits 1 s
            page.wait_for_function("document.getElementById('message').textContent.startsWith('503')",
                                   timeout=15_000)
            assert "same key" in page.inner_text("#message")
            _wait_for_charges(me, payment, 1)  # the timed-out try was charged all the same
            me.put(payment.url + "/faults", json={"work_ms": 0}).raise_for_status()
            page.click("button >> nth=1")
            page.wait_for_selector("#orders li", timeout=15_000)
            assert page.inner_text("#message") == "bought: order #1, payment pay-0001"
            page.click("button >> nth=1")  # a new purchase after a final answer: a new key
            page.wait_for_function("document.getElementById('message').textContent.includes('order #2')",
                                   timeout=15_000)
        finally:
            browser.close()
    assert charged(me, payment) == (2, 0)  # one charge per purchase: the retry found the first
    assert me.get(payment.url + "/stats").json()["replayed"] == 1
    assert store.counts(db.engine, "mug") == {"stock": 8, "orders": 2, "payments": 2}
