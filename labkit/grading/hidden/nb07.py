"""Hidden tests for notebook 07 (error handling): q7.1 pay, a resilient payment client.

Every test serves the payment service (labkit/apps/payment.py) with faults behind a Link
and counts, on the service, what the answer cost it: requests received and charges made.
"""

from collections import Counter

import requests

from labkit.apps import create
from labkit.grading.authoring import Fail, Question, is_a, show

#: Every call must return within this many seconds (the solution starts no attempt after 2.3 s).
LATENCY_S = 4.0
#: In the random-fault tests, at least this fraction of the payments must go through.
SUCCESS_RATE = 0.9
#: The most requests the recovering service may receive for one payment (the solution makes about 6).
RECOVERY_BUDGET = 12

q71 = Question(
    "q7.1", "pay", params=("client", "url", "amount", "key"),
    hint=("retry connection errors, timeouts, 408, 409, 429 and 5xx answers with exponential backoff and jitter, "
          "waiting at least the seconds a Retry-After header asks for, "
          'sending the same {"Idempotency-Key": key} header each time, and return None for any other 4xx answer'),
    hang_hint="give each attempt a timeout, timeout=(1.1, 0.5), and start no attempt after about 2.3 s",
    time_limit=12,
)

_TIMEOUT = ("give every attempt a timeout, such as timeout=(1.1, 0.5) (connect, read): "
            "without one a lost or slow answer holds the payment for the client's 5 s default")
_RETRY = ("retry what may pass on a second try (ConnectionError, Timeout, and the answers 408, 409, 429, 500, 502, "
          "503, 504), with exponential backoff and jitter, for up to about 2.3 s")
_KEY = ('send headers={"Idempotency-Key": key} with every attempt: the service then charges a key once '
        "and answers a retry with the first result")
_BACKOFF = ("wait longer after each failure, exponentially and with jitter, such as "
            "tenacity.wait_random_exponential(multiplier=0.1, max=1.0): a fixed short pause hammers a service "
            "that is trying to recover")
_NO_4XX = ("a 4xx answer (400 bad amount, 422 key reused) is the service refusing the request itself: "
           "sending it again cannot change that, so return None at once; retry only 408, 409, 429 and 5xx")
_IN_FLIGHT = ("409 with the same key means your first attempt is still being processed: wait and send the same "
              "request again; the service then answers with the charge that attempt made")
_RETRY_AFTER = ("a 503 or 429 answer with a Retry-After: N header asks you to wait N seconds: make the pause before "
                "the next attempt at least N (the larger of N and your backoff), or give up if that passes the deadline")
_CATCH = ("catch the errors you retry (requests.exceptions.ConnectionError and Timeout) and return None "
          "when the retries run out: with tenacity, catch tenacity.RetryError")


def _service(run, *, link=None, **faults):
    """The payment service with ``faults`` (seeded by the run) behind a link; (its state, server, link)."""
    app = create("payment", name="payments·check", seed=run.seed or 0, **faults)
    server = run.serve(app, "payments·check")
    return app.extensions["labkit"], server, run.link(server, **(link or {}))


def _judge_charge(value, amount: int, number: int):
    if is_a(value, requests.Response):
        raise Fail(f"payment {number}: it returned the response object {show(value)}, not its JSON body",
                   "return response.json(), the charge")
    if value is None:
        return False
    if not isinstance(value, dict) or not isinstance(value.get("reference"), str):
        raise Fail(f"payment {number}: it returned {show(value)}, not the charge "
                   f"(a dict with a reference) or None", "return response.json() when the answer is 201")
    if value.get("amount_cents") != amount:
        raise Fail(f"payment {number}: it returned a charge of {show(value.get('amount_cents'))} cents "
                   f"for a payment of {amount}", 'send JSON {"amount_cents": amount}')
    return True


def _pay_many(run, server, link, count: int, *, first_amount: int = 1000):
    """Make ``count`` payments (amounts first_amount, first_amount + 1, ...); return how many succeeded."""
    client = run.client()
    paid = 0
    for number in range(1, count + 1):
        amount = first_amount + number
        call = run.call(client, link.url, amount, f"order-{run.seed}-{number}")
        if call.seconds > LATENCY_S:
            raise Fail(f"payment {number} took more than {LATENCY_S:g} s to return", _TIMEOUT)
        paid += _judge_charge(call.value, amount, number)
    return paid


def _charged_once(state) -> None:
    amounts = Counter(charge["amount_cents"] for charge in state.charges.values())
    twice = sorted(amount for amount, times in amounts.items() if times > 1)
    if twice:
        raise Fail(f"the payment of {twice[0]} cents was charged {amounts[twice[0]]} times: a retry of a payment "
                   f"whose answer was lost charged the card again", _KEY)


def _success(paid: int, count: int, situation: str) -> None:
    if paid < SUCCESS_RATE * count:
        raise Fail(f"only {paid} of {count} payments went through {situation} "
                   f"(at least {SUCCESS_RATE * count:g} must)", _RETRY)


@q71.test("a healthy service")
def _(run):
    state, server, link = _service(run)
    paid = _pay_many(run, server, link, 3)
    if paid < 3:
        raise Fail(f"only {paid} of 3 payments went through on a healthy service", "return response.json()")
    received = state.requests
    if received != 3:
        raise Fail(f"it sent {received} requests for 3 payments to a healthy service; one each is enough",
                   "retry only after a failure")
    _charged_once(state)


@q71.test("30% of answers are 503 Service Unavailable", seeds=(1, 2, 3),
          raise_hints={requests.exceptions.HTTPError: _RETRY})
def _(run):
    state, server, link = _service(run, error_rate=0.3)
    paid = _pay_many(run, server, link, 10)
    _success(paid, 10, "when 30% of answers are 503")
    _charged_once(state)


@q71.test("lost messages (10% of requests, 15% of answers dropped)", seeds=(1, 2),
          raise_hints={requests.exceptions.Timeout: _CATCH})
def _(run):
    state, server, link = _service(run, link=dict(drop=(0.1, 0.15)))
    paid = _pay_many(run, server, link, 5)
    _charged_once(state)
    _success(paid, 5, "when messages are lost")


@q71.test("slow answers (25% wait 4.5 s before answering)", seeds=(1,),
          raise_hints={requests.exceptions.Timeout: _CATCH})
def _(run):
    state, server, link = _service(run, late_rate=0.25, late_ms=4500)
    paid = _pay_many(run, server, link, 4)
    _charged_once(state)
    _success(paid, 4, "when some answers are slow")


@q71.test("a down period (refused for 0.4 s), then a service recovering until 1 s",
          raise_hints={requests.exceptions.ConnectionError: _CATCH})
def _(run):
    state, server, link = _service(run, recover_s=1.0, link=dict(down=True))
    run.later(0.4, lambda: link.configure(down=False))
    paid = _pay_many(run, server, link, 1)
    if not paid:
        raise Fail("it returned None, but the service was back within a second: "
                   "the payment must go through", _RETRY)
    received = state.requests
    if received > RECOVERY_BUDGET:
        raise Fail(f"the recovering service received more than {RECOVERY_BUDGET} requests for one payment",
                   _BACKOFF)
    _charged_once(state)


@q71.test("refused payments (400 bad amount, 422 key reused with another amount)")
def _(run):
    state, server, link = _service(run)
    client = run.client()
    for number, (amount, key, status) in enumerate([(0, "order-a", 400), (700, "order-b", 201),
                                                    (900, "order-b", 422)], 1):
        before = state.requests
        call = run.call(client, link.url, amount, key)
        sent = state.requests - before
        if status != 201:
            if call.value is not None:
                raise Fail(f"the service answered {status} to payment {number}, "
                           f"yet it returned {show(call.value)}; expected None", _NO_4XX)
            if sent > 1:
                raise Fail(f"it sent a payment the service refused with {status} more than once", _NO_4XX)
        elif not _judge_charge(call.value, amount, number):
            raise Fail(f"payment {number} ({amount} cents) did not go through on a healthy service",
                       "return response.json() when the answer is 201")


@q71.test("a retry while the first attempt is still being processed (each charge takes 0.7 s)",
          raise_hints={requests.exceptions.HTTPError: _IN_FLIGHT})
def _(run):
    state, server, link = _service(run, work_ms=700)
    paid = _pay_many(run, server, link, 2)
    if paid < 2:
        statuses = state.stats()["statuses"]
        hint = _IN_FLIGHT if "409" in statuses else _RETRY
        raise Fail(f"only {paid} of 2 payments went through, though the service answered every one in 0.7 s "
                   f"(its answers: {show(statuses)})", hint)
    _charged_once(state)


@q71.test("a 503 answer that asks for a pause (Retry-After: 1)")
def _(run):
    state, server, link = _service(run, recover_requests=1, retry_after_s=1)
    paid = _pay_many(run, server, link, 1)
    early = sum(state.stats()["load"][:9])  # requests that arrived less than 0.9 s after the first
    if early > 1:
        raise Fail(f"the service answered 503 with Retry-After: 1, yet it received {early - 1} more request(s) "
                   f"within 0.9 s", _RETRY_AFTER)
    if not paid:
        raise Fail("it returned None, but the service answered 201 after the pause it asked for (1 s)", _RETRY_AFTER)
    _charged_once(state)
