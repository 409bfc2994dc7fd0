"""The store's gateway (notebook 04): the web page people open, and the one API behind it.

    GET  /                    a small web page: the catalogue, a Buy button per product, the orders
    GET  /api/products        -> the catalogue service's GET /products
    POST /api/checkout        -> the orders service's POST /checkout (body and Idempotency-Key passed on)
    GET  /api/orders          -> the orders service's GET /orders

The gateway holds no data and no business rules: it forwards each call to the service
that owns it, over that service's URL (``catalogue_url``, ``orders_url``, which may be
labkit Links), and passes the answer back; when a service does not answer, it says so
with 502 (unreachable) or 504 (too slow). The page uses relative URLs only, so it also
works behind a proxy path such as Binder's ``/user/NAME/proxy/PORT/``.

``python -m labkit serve gateway`` finds the services at LABKIT_CATALOGUE_URL and
LABKIT_ORDERS_URL.
"""

from __future__ import annotations

import os

from flask import Blueprint, Response, request

from ..client import Client
from . import kit

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>labkit store</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; max-width: 44em; }
 table { border-collapse: collapse; } td, th { padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left; }
 #message { margin: 1em 0; min-height: 1.5em; font-weight: bold; }
 .ok { color: #0072B2; } .bad { color: #D55E00; }
</style></head>
<body>
<h1>The labkit store</h1>
<p>This page talks only to the gateway; the gateway passes each call on to the catalogue or
the orders service, and the orders service calls payment. Every purchase has its own random
idempotency key: if the answer is lost, the page asks again with the same key, and after an
answer that leaves the outcome unknown (5xx) it keeps the key for your next click on that
product, so a charge already made is found again, not made twice.</p>
<table><thead><tr><th>product</th><th>price</th><th>in stock</th><th></th></tr></thead>
<tbody id="products"><tr><td colspan="4">loading...</td></tr></tbody></table>
<div id="message"></div>
<h2>Orders</h2>
<ul id="orders"></ul>
<script>
// Relative URLs only ("api/...", never "/api/..."): behind Binder's proxy the page lives under a path.
// A random version 4 UUID. crypto.randomUUID exists only in secure contexts (https, localhost);
// crypto.getRandomValues also on plain http, such as another machine's http://D:5001/.
function newKey() {
  if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80;  // version 4, RFC 9562 variant
  const hex = Array.from(b, x => x.toString(16).padStart(2, "0")).join("");
  return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
}
function say(text, good) {
  const m = document.getElementById("message");
  m.textContent = text; m.className = good ? "ok" : "bad";
}
function cell(row, text) { const td = document.createElement("td"); td.textContent = text; row.appendChild(td); return td; }
async function load() {
  try {
    const products = (await (await fetch("api/products")).json()).products || [];
    const body = document.getElementById("products");
    body.replaceChildren();
    for (const p of products) {
      const row = document.createElement("tr");
      cell(row, p.name); cell(row, (p.price_cents / 100).toFixed(2)); cell(row, p.stock);
      const button = document.createElement("button");
      button.textContent = "Buy one"; button.disabled = p.stock < 1;
      button.onclick = () => buy(p.sku);
      cell(row, "").appendChild(button);
      body.appendChild(row);
    }
    const orders = (await (await fetch("api/orders")).json()).orders || [];
    const list = document.getElementById("orders");
    list.replaceChildren();
    for (const o of orders) {
      const item = document.createElement("li");
      const lines = o.items.map(i => i.qty + " x " + i.sku).join(", ");
      item.textContent = "#" + o.id + ": " + lines + ", " + (o.amount_cents / 100).toFixed(2) + " (" + o.payment + ")";
      list.appendChild(item);
    }
  } catch (error) { say("the gateway did not answer: " + error, false); }
}
// A purchase whose outcome is unknown (no answer, or a 5xx) keeps its key: the next Buy of that
// product is a retry of the same purchase. A final answer (2xx or 4xx) ends the purchase.
const unsure = {};
async function buy(sku) {
  const key = unsure[sku] || newKey();
  unsure[sku] = key;
  for (let attempt = 1; attempt <= 3; attempt++) {
    try {
      const answer = await fetch("api/checkout", {method: "POST",
        headers: {"Content-Type": "application/json", "Idempotency-Key": key},
        body: JSON.stringify({items: [{sku: sku, qty: 1}]})});
      const data = await answer.json();
      if (answer.status < 500) delete unsure[sku];
      if (answer.ok) say("bought: order #" + data.order.id + ", payment " + data.order.payment, true);
      else if (answer.status < 500) say(answer.status + ": " + data.error, false);
      else say(answer.status + ": " + data.error + " (Buy again retries this purchase, with the same key)", false);
      break;
    } catch (error) {
      say(attempt < 3 ? "no answer (attempt " + attempt + "), trying again with the same key..."
                      : "no answer; Buy again retries this purchase, with the same key", false);
    }
  }
  load();
}
load();
</script>
</body></html>
"""


class Gateway:
    """The gateway's state: where the services are, and the client it calls them with."""

    def __init__(self, name: str, catalogue_url: str, orders_url: str, timeout_s: float, trace):
        self.upstream = {"catalogue": catalogue_url.rstrip("/"), "orders": orders_url.rstrip("/")}
        self.client = Client(name, timeout=kit.positive(timeout_s, "timeout_s", 60), trace=trace)

    def forward(self, service: str, method: str, path: str, **kwargs) -> Response:
        return kit.forward(self.client, method, self.upstream[service] + path, service=f"the {service} service",
                           **kwargs)

    def close(self) -> None:
        self.client.close()


routes = Blueprint("gateway", __name__)


@routes.get("/")
def page():
    return Response(PAGE, mimetype="text/html")


@routes.get("/api/products")
def api_products():
    return kit.state().forward("catalogue", "GET", "/products")


@routes.get("/api/orders")
def api_orders():
    return kit.state().forward("orders", "GET", "/orders")


@routes.post("/api/checkout")
def api_checkout():
    headers = {"Content-Type": request.content_type or "application/octet-stream"}
    if "Idempotency-Key" in request.headers:
        headers["Idempotency-Key"] = request.headers["Idempotency-Key"]
    return kit.state().forward("orders", "POST", "/checkout", data=request.get_data(), headers=headers)


def create_app(*, name: str = "gateway", catalogue_url: str | None = None, orders_url: str | None = None,
               timeout_s: float = 10.0, trace=None):
    """A gateway in front of the catalogue and orders services at these URLs."""
    state = Gateway(name, catalogue_url or os.environ.get("LABKIT_CATALOGUE_URL", "http://127.0.0.1:5002"),
                    orders_url or os.environ.get("LABKIT_ORDERS_URL", "http://127.0.0.1:5003"), timeout_s, trace)
    return kit.make_app(name, state, routes)
