"""The store of notebook 04: gateway, catalogue, orders and payment on one shared database.

Every test runs real servers on 127.0.0.1; the database tests run on SQLite and on
PostgreSQL (the ``database_url`` fixture). The invariants of the checkout under
concurrency and faults: exactly as many orders as there was stock, stock never
below zero, no order lost (a buyer has an order exactly when its checkout answered
2xx) and nothing charged twice (retries carry an idempotency key).
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

import labkit
from labkit.apps import _store, create
from labkit.apps._store import orders, payments, products
from labkit.db import Database

import malformed


def _store_on(lab, db, *, payment_link: dict | None = None, **payment_options):
    """The four services on ``db``; the orders service reaches payment through a link."""
    catalogue = lab.serve(create("catalogue", db=db), name="catalogue")
    payment = lab.serve(create("payment", db=db, **payment_options), name="payment")
    to_payment = lab.link(payment, seed=1, **(payment_link or {}))
    orders_app = create("orders", db=db, payment_url=to_payment.url, payment_timeout=1.0, trace=lab.trace)
    orders_ = lab.serve(orders_app, name="orders")
    gateway_app = create("gateway", catalogue_url=catalogue.url, orders_url=orders_.url, trace=lab.trace)
    gateway = lab.serve(gateway_app, name="gateway")
    return catalogue, payment, to_payment, orders_, gateway


@pytest.fixture
def db(database_url):
    with Database(database_url) as database:
        yield database


def buy(client, url, sku="mug", qty=1, key="k1"):
    return client.post(url + "/checkout", json={"sku": sku, "qty": qty}, headers={"Idempotency-Key": key})


def test_a_checkout_buys_once_and_a_retry_gets_the_same_answer(lab, db):
    _, payment, _, orders_, gateway = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    assert _store.counts(db.engine, "mug") == {"stock": 10, "orders": 0, "payments": 0}
    first = me.post(gateway.url + "/api/checkout", json={"sku": "mug", "qty": 2}, headers={"Idempotency-Key": "a"})
    assert first.status_code == 201
    order = first.json()["order"]
    assert (order["sku"], order["qty"], order["amount_cents"]) == ("mug", 2, 2400)
    assert "Idempotent-Replayed" not in first.headers
    again = me.post(gateway.url + "/api/checkout", json={"sku": "mug", "qty": 2}, headers={"Idempotency-Key": "a"})
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert _store.counts(db.engine, "mug") == {"stock": 8, "orders": 1, "payments": 1}
    assert me.get(payment.url + "/charges").json() == {"charges": 1, "declined": 0}
    assert me.get(payment.url + "/payments").json()["payments"] == [
        {"order_id": order["id"], "amount_cents": 2400, "reference": order["payment"]}]
    assert me.get(orders_.url + f"/orders/{order['id']}").json() == order
    assert me.get(gateway.url + "/api/orders").json() == {"orders": [order]}
    other = buy(me, orders_.url, qty=1, key="a")  # the same key for another order
    assert other.status_code == 422 and "use a new key" in other.json()["error"]
    assert buy(me, orders_.url, sku="nothing", key="b").status_code == 404
    assert buy(me, orders_.url, qty=9, key="c").status_code == 409
    assert _store.counts(db.engine, "mug") == {"stock": 8, "orders": 1, "payments": 1}


def test_a_failed_payment_rolls_the_whole_checkout_back(lab, db):
    _, payment, to_payment, orders_, _ = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    before = _store.counts(db.engine)
    assert me.put(payment.url + "/admin", json={"fail": 1.0}).json() == {"fail": 1.0, "delay_ms": 0}
    declined = buy(me, orders_.url, key="d")
    assert declined.status_code == 402 and "declined" in declined.json()["error"]
    assert _store.counts(db.engine) == before
    me.put(payment.url + "/admin", json={"fail": 0})
    again = buy(me, orders_.url, key="d")  # a decline is the key's answer for good
    assert again.status_code == 402 and "new Idempotency-Key" in again.json()["error"]
    assert me.get(payment.url + "/charges").json() == {"charges": 0, "declined": 1}
    to_payment.down = True
    unreachable = buy(me, orders_.url, key="e")
    assert unreachable.status_code == 503 and "refused" in unreachable.json()["error"]
    assert _store.counts(db.engine) == before
    to_payment.down = False
    assert buy(me, orders_.url, key="e").status_code == 201  # the same key, once the payment works
    assert _store.counts(db.engine)["orders"] == before["orders"] + 1


def test_a_late_twin_of_a_declined_checkout_is_declined_too(lab, db):
    """A request delayed on its way must not turn a purchase the buyer was told was declined into a charge."""
    _, payment, _, orders_, _ = _store_on(lab, db, fail=1.0)
    me = lab.client("me", timeout=10)
    assert buy(me, orders_.url, key="t").status_code == 402
    me.put(payment.url + "/admin", json={"fail": 0})
    late = buy(me, orders_.url, key="t")  # the first attempt, arriving after its retry was answered
    assert late.status_code == 402
    assert _store.counts(db.engine, "mug") == {"stock": 10, "orders": 0, "payments": 0}
    assert me.get(payment.url + "/charges").json() == {"charges": 0, "declined": 1}


def test_a_slow_payment_that_times_out_rolls_back_and_the_retry_charges_once(lab, db):
    _, payment, _, orders_, _ = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    me.put(payment.url + "/admin", json={"delay_ms": 1500})  # longer than the orders' 1 s payment timeout
    slow = buy(me, orders_.url, key="s")
    assert slow.status_code == 503 and "timeout" in slow.json()["error"]
    assert _store.counts(db.engine, "mug") == {"stock": 10, "orders": 0, "payments": 0}
    me.put(payment.url + "/admin", json={"delay_ms": 0})
    retry = buy(me, orders_.url, key="s")
    assert retry.status_code == 201
    charges = me.get(payment.url + "/charges").json()["charges"]
    assert charges == 1  # the charge the timed-out call made is the one the retry got back
    assert retry.json()["order"]["payment"] == "pay-0001"


BUYERS, STOCK, THREADS = 200, 10, 32


def test_200_concurrent_buyers_of_10_items_under_faults_keep_every_invariant(lab, db):
    _, payment, _, orders_, _ = _store_on(lab, db, payment_link={"latency_ms": 2, "drop": 0.02}, fail=0.1, seed=3)
    _store.restock(db.engine, "mug", STOCK)
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
        c.rollback()
    assert stock == 0
    assert len(keys) == STOCK and len(set(keys)) == STOCK
    assert set(keys) == {k for k, status in outcome.items() if status == 201}, "an order exactly for each 2xx"
    assert unpaid == 0 and wrong_amount == 0
    assert sum(attempts.values()) > BUYERS, "the faults made some buyers retry"
    charges = requests.get(payment.url + "/charges", timeout=5).json()["charges"]
    assert charges >= STOCK  # one charge per key: a retry never charged again
    assert len(lab.trace.filter(kind="dropped")) > 0


def test_the_page_uses_relative_urls_and_the_api_forwards(lab, db):
    catalogue, _, _, _, gateway = _store_on(lab, db)
    me = lab.client("me", timeout=10)
    page = me.get(gateway.url + "/")
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert 'fetch("api/products")' in page.text and 'fetch("api/checkout"' in page.text
    assert 'fetch("/' not in page.text and "127.0.0.1" not in page.text
    assert me.get(gateway.url + "/api/products").json() == me.get(catalogue.url + "/products").json()
    bad = me.post(gateway.url + "/api/checkout", data=b"not json", headers={"Content-Type": "text/plain",
                                                                          "Idempotency-Key": "x"})
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]


def test_the_gateway_says_when_a_service_cannot_be_reached(lab):
    db = lab.enter(Database())
    catalogue = lab.serve(create("catalogue", db=db), name="catalogue")
    to_catalogue = lab.link(catalogue, down=True)
    gateway_app = create("gateway", catalogue_url=to_catalogue.url, orders_url=to_catalogue.url, timeout=1,
                         trace=lab.trace)
    gateway = lab.serve(gateway_app, name="gateway")
    answer = lab.client("me", timeout=5).get(gateway.url + "/api/products")
    assert answer.status_code == 502 and "catalogue service could not be reached (refused)" in answer.json()["error"]
    to_catalogue.configure(down=False, drop=1.0)
    answer = lab.client("me2", timeout=5).get(gateway.url + "/api/products")
    assert answer.status_code == 504 and "did not answer within 1 s" in answer.json()["error"]


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


def test_options_are_checked():
    with pytest.raises(ValueError, match="fail is the probability"):
        create("payment", fail=True)
    with pytest.raises(ValueError, match="delay_ms"):
        create("payment", delay_ms=-1)
    with pytest.raises(ValueError, match="payment_attempts"):
        create("orders", payment_attempts=0)
    with pytest.raises(TypeError, match="labkit.db.Database"):
        create("catalogue", db="sqlite://")


# -- malformed input -------------------------------------------------------------------------

ENDPOINTS = [
    ("catalogue", "GET", "/products"), ("catalogue", "GET", "/products/{id}"), ("catalogue", "PUT", "/products/{id}"),
    ("catalogue", "DELETE", "/products/{id}"),
    ("payment", "POST", "/charges"), ("payment", "GET", "/charges"), ("payment", "PUT", "/admin"),
    ("payment", "GET", "/payments"), ("payment", "POST", "/payments"),
    ("orders", "POST", "/checkout"), ("orders", "GET", "/orders"), ("orders", "GET", "/orders/{id}"),
    ("orders", "GET", "/checkout"),
    ("gateway", "GET", "/"), ("gateway", "GET", "/api/products"), ("gateway", "POST", "/api/checkout"),
    ("gateway", "GET", "/api/orders"), ("gateway", "PUT", "/api/{id}"),
]
STATE = [("catalogue", "/products"), ("payment", "/charges"), ("payment", "/admin"), ("payment", "/payments"),
         ("orders", "/orders")]
FIELDS = ["sku", "qty", "name", "price_cents", "stock", "amount_cents", "fail", "key"]
ODD = ["", " ", "mug", "cap", "-1", "0", "1", "nan", "true", "null", "\x00", "é" * 50, "9" * 40]

bodies = malformed.bodies(FIELDS, ODD)
keys = st.none() | st.sampled_from(["", "k", "é", "x" * 101, "a\tb"]) | st.text(
    st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=12).filter(lambda k: k == k.strip())
ids = malformed.path_ids(ODD)


@pytest.fixture(scope="module")
def running_store():
    with Database() as db, labkit.serve(create("catalogue", db=db), name="catalogue·malformed", trace=labkit.Trace()) \
            as catalogue, labkit.serve(create("payment", db=db), name="payment·malformed", trace=labkit.Trace()) \
            as payment, requests.Session() as session:
        quiet = labkit.Trace()
        orders_app = create("orders", db=db, payment_url=payment.url, trace=quiet)
        with labkit.serve(orders_app, name="orders·malformed", trace=quiet) as orders_:
            gateway_app = create("gateway", catalogue_url=catalogue.url, orders_url=orders_.url, trace=quiet)
            with labkit.serve(gateway_app, name="gateway·malformed", trace=quiet) as gateway:
                session.trust_env = False
                yield {"catalogue": catalogue, "payment": payment, "orders": orders_, "gateway": gateway}, session


def _state(servers, session):
    return [session.get(servers[name].url + path, timeout=10).json() for name, path in STATE]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(running_store, data):
    servers, session = running_store
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
    assert _store.counts(db.engine, "mug") == {"stock": 9, "orders": 1, "payments": 1}


def test_the_solution_cell_is_the_services_own_checkout():
    """Notebook 04's answer to q4.1 and the orders service's checkout are one code: they must not drift."""
    import inspect
    from pathlib import Path

    import nbformat

    notebook = Path(__file__).resolve().parents[1] / "solutions" / "04_microservices.ipynb"
    cell = next(c for c in nbformat.read(notebook, as_version=4).cells
                if c.metadata.get("labkit", {}).get("question") == "q4.1" and c.metadata["labkit"]["role"] == "answer")

    def body(source):  # the code after the docstring, markers and blank lines left out
        source = source.split('"""', 2)[2]
        return [line for line in source.splitlines() if line.strip() and "SOLUTION" not in line]

    assert body(cell.source) == body(inspect.getsource(_store.checkout))
