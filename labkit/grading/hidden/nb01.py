"""Hidden tests for notebook 01 (client-server): q1.1 fetch_or_none, q1.2 order_totals, q1.3 next_messages."""

import numbers
import random

import requests

from labkit.apps import create
from labkit.grading.authoring import Fail, Question, is_a, show

# -- q1.1: a call that gives up -------------------------------------------------------

#: A call must give up within this many seconds (the answer aims at half a second).
GIVE_UP_S = 1.5

q11 = Question(
    "q1.1", "fetch_or_none", params=("client", "url"),
    hint="wrap the call in try/except requests.exceptions.RequestException and return None there",
    hang_hint="give the request a time limit, client.get(url, timeout=0.5), so a silent service cannot hold you",
)

_CATCH_CONNECTION = ("a service that is down or resets the connection raises requests.exceptions.ConnectionError, "
                     "not Timeout: catch requests.exceptions.RequestException, which covers both")
_CATCH_TIMEOUT = ("a service that does not answer makes the client raise requests.exceptions.ReadTimeout: "
                  "catch requests.exceptions.RequestException and return None")
_SET_TIMEOUT = "pass timeout=0.5 to client.get, or the client waits 5 s (its default) for an answer that may never come"
_CHECK_STATUS = ("look at the status before the body: response.raise_for_status() raises an HTTPError "
                 "(a RequestException) for 4xx and 5xx answers")


def _weather(run):
    app = create("weather")
    return app, run.serve(app, "weather·check")


def _body(app, path: str):
    """What the weather app answers on ``path`` (asked in-process, outside the trace)."""
    return app.test_client().get(path).get_json()


def _expect_none(run, client, url: str, situation: str, hint: str = "") -> None:
    call = run.call(client, url)
    if call.seconds > GIVE_UP_S:
        raise Fail(f"with {situation} it took more than {GIVE_UP_S:g} s to return; "
                   f"it must give up after about half a second", _SET_TIMEOUT)
    if call.value is not None:
        raise Fail(f"with {situation} it returned {show(call.value)}; expected None", hint)


@q11.test("a healthy service")
def _(run):
    app, server = _weather(run)
    link = run.link(server, latency_ms=20)
    call = run.call(run.client(), link.url + "/forecast?city=Oslo")
    expected = _body(app, "/forecast?city=Oslo")
    if is_a(call.value, requests.Response):
        raise Fail(f"it returned the response object {show(call.value)}, not its JSON body {show(expected)}",
                   "return response.json()")
    if call.value != expected:
        raise Fail(f"it returned {show(call.value)}; the service answered {show(expected)}",
                   "return the JSON body of the answer: response.json()")
    if call.seconds > GIVE_UP_S:
        raise Fail(f"a healthy service answered, but your answer took more than {GIVE_UP_S:g} s to return",
                   "return as soon as the answer is there")


@q11.test("a slow service (2 s latency)", raise_hints={requests.exceptions.Timeout: _CATCH_TIMEOUT})
def _(run):
    _, server = _weather(run)
    link = run.link(server, latency_ms=2000)
    _expect_none(run, run.client(), link.url + "/forecast?city=Oslo", "a service that takes 2 s to answer")


@q11.test("a service that never answers (messages dropped)",
          raise_hints={requests.exceptions.Timeout: _CATCH_TIMEOUT})
def _(run):
    _, server = _weather(run)
    link = run.link(server, drop=1.0)
    _expect_none(run, run.client(), link.url + "/forecast?city=Oslo", "a service that never answers")


@q11.test("a service that is down (connection refused)",
          raise_hints={requests.exceptions.ConnectionError: _CATCH_CONNECTION})
def _(run):
    _, server = _weather(run)
    link = run.link(server, down=True)
    _expect_none(run, run.client(), link.url + "/forecast?city=Oslo", "a service that is down")


@q11.test("a connection reset", raise_hints={requests.exceptions.ConnectionError: _CATCH_CONNECTION})
def _(run):
    _, server = _weather(run)
    link = run.link(server, reset=1.0)
    _expect_none(run, run.client(), link.url + "/forecast?city=Oslo", "a connection that is reset")


@q11.test("an error answer (503 Service Unavailable)")
def _(run):
    _, server = _weather(run)
    link = run.link(server, latency_ms=20)
    _expect_none(run, run.client(), link.url + "/broken", "an answer with status 503", _CHECK_STATUS)


@q11.test("an error answer (404 Not Found)")
def _(run):
    _, server = _weather(run)
    link = run.link(server, latency_ms=20)
    _expect_none(run, run.client(), link.url + "/no-such-page", "an answer with status 404", _CHECK_STATUS)


_CITIES = ("Oslo", "Lagos", "Lima", "Hanoi")


@q11.test("random faults: 40% of messages dropped and 20% reset, each way", seeds=(1, 2, 3, 4),
          raise_hints={requests.exceptions.Timeout: _CATCH_TIMEOUT,
                       requests.exceptions.ConnectionError: _CATCH_CONNECTION})
def _(run):
    app, server = _weather(run)
    link = run.link(server, drop=0.4, reset=0.2)
    client = run.client()
    for number, city in enumerate(_CITIES, 1):
        path = f"/forecast?city={city}"
        call = run.call(client, link.url + path)
        if call.seconds > GIVE_UP_S:
            raise Fail(f"call {number} took more than {GIVE_UP_S:g} s to return; "
                       f"it must give up after about half a second", _SET_TIMEOUT)
        # The answer reached the caller if the service answered more often than the link lost or reset an
        # answer on its way back (what the checker's own servers and link saw, not what the caller says).
        answered = sum(1 for e in call.events if e.kind == "reply" and e.src == server.name
                       and e.status is not None and 200 <= e.status < 300)
        lost = sum(1 for e in call.events if e.kind in ("dropped", "reset") and e.src == server.name)
        if answered > lost:
            expected = _body(app, path)
            if call.value != expected:
                raise Fail(f"call {number}: the service's answer {show(expected)} arrived, "
                           f"but your answer returned {show(call.value)}",
                           "return response.json() when the call succeeds")
        elif call.value is not None:
            raise Fail(f"call {number}: no answer arrived, yet your answer returned {show(call.value)}; expected None",
                       "return None when the request fails")


# -- q1.2: one request, not N+1 -----------------------------------------------------------

#: The most requests an answer may make for any number of orders.
MAX_ORDER_REQUESTS = 2

q12 = Question(
    "q1.2", "order_totals", params=("client", "base_url", "order_ids"),
    hint='ask for all the orders in one request: client.post(base_url + "/orders/batch", json={"ids": list(order_ids)})',
)

_ADD_UP = 'add qty × price over the order\'s items: sum(item["qty"] * item["price"] for item in order["items"])'


def _shop(run, seed: int):
    app = create("shop", orders=50, seed=seed)
    return app, run.serve(app, "shop·check")


def _true_totals(app, ids) -> dict:
    """Each order's exact total, from the shop app itself (asked in-process, outside the trace)."""
    orders = app.test_client().post("/orders/batch", json={"ids": list(ids)}).get_json()["orders"]
    return {o["id"]: sum(item["qty"] * item["price"] for item in o["items"]) for o in orders}


def _judge_totals(value, truth: dict) -> None:
    if not isinstance(value, dict):
        raise Fail(f"it returned {show(value)}, not a dict {{order id: total}}",
                   "build a dict: {order['id']: total for order in orders}")
    missing = [i for i in truth if i not in value]
    if missing:
        raise Fail(f"the result has no total for order {missing[0]} "
                   f"(its keys must be the order ids as given, such as {missing[0]!r})",
                   "use each order's id as the key: {order['id']: total ...}")
    extra = [k for k in value if k not in truth]
    if extra:
        raise Fail(f"the result has a total for {show(extra[0])}, which was not asked for",
                   "return one total per id asked for, and nothing else")
    for order_id, exact in truth.items():
        total, expected = value[order_id], round(exact, 2)
        if isinstance(total, bool) or not isinstance(total, numbers.Number):
            raise Fail(f"order {order_id}: the total {show(total)} is not a number", _ADD_UP)
        if abs(float(total) - exact) > 0.006:
            raise Fail(f"order {order_id}: your total is {total!r}, but its items add up to {expected!r}", _ADD_UP)
        if float(total) != expected:
            raise Fail(f"order {order_id}: your total {total!r} is not rounded to 2 decimals ({expected!r})",
                       "round each total: round(total, 2)")


@q12.test("25 orders through a link with 50 ms latency", seeds=(1, 2, 3))
def _(run):
    app, server = _shop(run, run.seed)
    link = run.link(server, latency_ms=50)
    ids = random.Random(run.seed).sample(range(1, 51), 25)
    call = run.call(run.client(), link.url, ids)
    _judge_totals(call.value, _true_totals(app, ids))
    made = len(call.receives(server))
    if made > MAX_ORDER_REQUESTS:
        raise Fail(f"it made {made} requests for {len(ids)} orders (at most {MAX_ORDER_REQUESTS} allowed): "
                   f"under latency every request costs a round trip",
                   'ask for all the orders at once with POST /orders/batch and JSON {"ids": [...]}')


@q12.test("no orders")
def _(run):
    _, server = _shop(run, 1)
    link = run.link(server, latency_ms=50)
    call = run.call(run.client(), link.url, [])
    if call.value != {}:
        raise Fail(f"for no ids it returned {show(call.value)}; expected {{}}", "no ids, no totals: return {}")


# -- q1.3: long polling -----------------------------------------------------------------

#: When the background poster sends the new message, seconds after the answer was called.
POST_AT_S = 1.2
#: How late after the post the answer may return (it aims at well under 0.3 s).
LATE_S = 0.6
#: The most requests an answer may make while it waits for the message.
MAX_POLLS = 3
#: How long an answer may take when messages are already waiting.
AT_ONCE_S = 1.0
#: When the message comes in the test where a first long poll (wait_s=5) must end empty.
POST_AFTER_EMPTY_S = 6.0

q13 = Question(
    "q1.3", "next_messages", params=("client", "base_url", "after"),
    hint=('long-poll: client.get(base_url + "/messages", params={"after": after, "wait_s": 5}, timeout=10), '
          'again until the list of messages is not empty'),
    hang_hint="return as soon as the list of messages is not empty",
)

_LONG_POLL = ("long-poll instead of asking again and again: GET /messages?after=N&wait_s=5 holds the request "
              "until a message arrives")
_READ_TIMEOUT = ("the client gave up before the server's long poll ended: the client's timeout must be longer "
                 'than the server\'s wait, such as params={"after": after, "wait_s": 5} with timeout=10')


def _chat(run, texts):
    app = create("chat")
    server = run.serve(app, "chat·check")
    # At the end, a last message wakes any long poll still held, so the server stops at once.
    run.on_close(lambda: app.test_client().post("/messages", json={"text": "the check is over"}))
    poster = run.client("bob")
    for text in texts:
        poster.post(server.url + "/messages", json={"text": text}).raise_for_status()
    return app, server, poster


def _messages_after(app, after: int) -> list:
    return app.test_client().get(f"/messages?after={after}").get_json()["messages"]


def _judge_messages(value, expected: list, after: int) -> None:
    if not isinstance(value, list):
        raise Fail(f"it returned {show(value)}, not a list of messages", 'return response.json()["messages"]')
    if value != expected:
        old = [m.get("id") for m in value if isinstance(m, dict) and isinstance(m.get("id"), int) and m["id"] <= after]
        if old:
            raise Fail(f"for after={after} it returned messages with ids {old}; only ids greater than {after} belong",
                       'pass after to the service: params={"after": after, ...}')
        raise Fail(f"for after={after} it returned {show(value)}; the messages after {after} are {show(expected)}",
                   'return response.json()["messages"]')


@q13.test("messages already there (only those with id > after)", raise_hints={requests.exceptions.ReadTimeout: _READ_TIMEOUT})
def _(run):
    app, server, _ = _chat(run, ["hi", "anyone here?", "yes, me", "good, the workshop starts at nine"])
    link = run.link(server, latency_ms=20)
    call = run.call(run.client(), link.url, 2)
    _judge_messages(call.value, _messages_after(app, 2), 2)
    if call.seconds > AT_ONCE_S:
        raise Fail(f"messages were already waiting, but it took more than {AT_ONCE_S:g} s to return them",
                   "ask at once, and wait only when there is nothing yet")


@q13.test("a message posted while you wait", raise_hints={requests.exceptions.ReadTimeout: _READ_TIMEOUT})
def _(run):
    app, server, poster = _chat(run, ["hi", "anyone here?"])
    link = run.link(server, latency_ms=20)
    client = run.client()
    post = run.later(POST_AT_S, lambda: poster.post(server.url + "/messages", json={"text": "are you still there?"}))
    call = run.call(client, link.url, 2)
    if post.started_at is None or call.ended < post.started_at:
        raise Fail(f"it returned {show(call.value)} before any new message was posted; "
                   f"it must wait until there is at least one message with id > after",
                   "ask again (long-poll with wait_s=...) until the list of messages is not empty")
    _judge_messages(call.value, _messages_after(app, 2), 2)
    polls = len(call.receives(server, src=client.name, method="GET"))
    if polls > MAX_POLLS:
        raise Fail(f"it made more than {MAX_POLLS} requests while waiting about a second for one message", _LONG_POLL)
    if call.ended - post.started_at > LATE_S:
        raise Fail(f"it returned more than {LATE_S:g} s after the message was posted; "
                   f"it should return within about 0.3 s",
                   "long-poll: with wait_s=S the server answers the moment a message arrives, "
                   "while sleeping between polls makes you late")


@q13.test("a long poll that ends empty first (a message posted after 6 s)",
          raise_hints={requests.exceptions.ReadTimeout: _READ_TIMEOUT})
def _(run):
    app, server, poster = _chat(run, ["hi", "anyone here?"])
    link = run.link(server, latency_ms=20)
    client = run.client()
    post = run.later(POST_AFTER_EMPTY_S, lambda: poster.post(server.url + "/messages", json={"text": "sorry, I was out"}))
    call = run.call(client, link.url, 2)
    if post.started_at is None or call.ended < post.started_at:
        raise Fail(f"it returned {show(call.value)} before any new message was posted: "
                   f"a long poll that ends with no message is not the end of the wait",
                   "loop: when a long poll ends empty, long-poll again until the list of messages is not empty")
    _judge_messages(call.value, _messages_after(app, 2), 2)
    polls = len(call.receives(server, src=client.name, method="GET"))
    if polls > MAX_POLLS:
        raise Fail(f"it made more than {MAX_POLLS} requests while waiting {POST_AFTER_EMPTY_S:g} s for one message "
                   f"(with wait_s=5, 2 are enough)", _LONG_POLL)
    if call.ended - post.started_at > LATE_S:
        raise Fail(f"it returned more than {LATE_S:g} s after the message was posted; "
                   f"it should return within about 0.3 s",
                   "long-poll again at once when a long poll ends empty: do not sleep between polls")
