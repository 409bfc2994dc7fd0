"""Answers to notebook 07: wrong answers with the words their verdict must hold."""

import time

import requests
import tenacity


def _charge(client, url, amount, key, *, timeout=(0.5, 0.5)):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(url + "/charges", json={"amount_cents": amount}, headers=headers, timeout=timeout)


def _wait_as_asked(state):
    """Full-jitter backoff, but never shorter than a Retry-After header asks."""
    pause = tenacity.wait_random_exponential(multiplier=0.1, max=1.0)(state)
    if not state.outcome.failed:
        asked = state.outcome.result().headers.get("Retry-After", "")
        if asked.isdigit():
            pause = max(pause, float(asked))
    return pause


def pay_no_retries(client, url, amount, key):
    try:
        response = _charge(client, url, amount, key)
    except requests.exceptions.RequestException:
        return None
    return response.json() if response.status_code == 201 else None


def pay_no_backoff(client, url, amount, key):
    """Retries at once, again and again (a short fixed pause): fine for the client, hard on the service."""
    deadline = time.monotonic() + 2.5
    while True:
        try:
            response = _charge(client, url, amount, key)
            if response.status_code < 500:
                return response.json() if response.status_code == 201 else None
        except requests.exceptions.RequestException:
            pass
        if time.monotonic() > deadline:
            return None
        time.sleep(0.02)


def _with_backoff(attempt, deadline_s=2.5):
    """Call attempt() until it returns something other than "again", with full-jitter backoff."""
    import random

    deadline = time.monotonic() + deadline_s
    for number in range(100):
        result = attempt()
        if result != "again":
            return result
        pause = random.uniform(0, min(1.0, 0.1 * 2 ** number))
        if time.monotonic() + pause > deadline:
            return None
        time.sleep(pause)
    return None


def pay_no_timeout(client, url, amount, key):
    def attempt():
        try:
            response = client.post(url + "/charges", json={"amount_cents": amount}, headers={"Idempotency-Key": key})
        except requests.exceptions.RequestException:
            return "again"
        if response.status_code >= 500:
            return "again"
        return response.json() if response.status_code == 201 else None

    return _with_backoff(attempt)


def pay_without_key(client, url, amount, key):
    def attempt():
        try:
            response = _charge(client, url, amount, None)
        except requests.exceptions.RequestException:
            return "again"
        if response.status_code >= 500:
            return "again"
        return response.json() if response.status_code == 201 else None

    return _with_backoff(attempt)


def pay_retries_everything(client, url, amount, key):
    """Retries every failure, 4xx answers included (raise_for_status inside the retried function)."""
    @tenacity.retry(wait=tenacity.wait_random_exponential(multiplier=0.1, max=1.0),
                    stop=tenacity.stop_before_delay(2.5))
    def attempt():
        response = _charge(client, url, amount, key)
        response.raise_for_status()
        return response.json()

    try:
        return attempt()
    except tenacity.RetryError:
        return None


def pay_gives_up_early(client, url, amount, key):
    """Three quick tries: enough for random 503s, not for a service that is down for a moment."""
    for pause in (0.05, 0.1, 0.2):
        try:
            response = _charge(client, url, amount, key)
            if response.status_code < 500:
                return response.json() if response.status_code == 201 else None
        except requests.exceptions.RequestException:
            pass
        time.sleep(pause)
    return None


def pay_ignores_retry_after(client, url, amount, key):
    """Subtle: right in every way but one: a Retry-After header is ignored (backoff alone, pauses of 0.1-1 s)."""
    retrying = tenacity.Retrying(
        retry=(tenacity.retry_if_exception_type((requests.exceptions.ConnectionError, requests.exceptions.Timeout))
               | tenacity.retry_if_result(lambda response: response.status_code in (408, 409, 429, 500, 502, 503, 504))),
        wait=tenacity.wait_random_exponential(multiplier=0.1, max=1.0),
        stop=tenacity.stop_before_delay(2.3),
    )
    try:
        response = retrying(_charge, client, url, amount, key, timeout=(1.1, 0.5))
    except tenacity.RetryError:
        return None
    return response.json() if response.status_code == 201 else None


def pay_409_is_final(client, url, amount, key):
    """Subtle: right in every way but one: a 409 (the first attempt is still in progress) is taken as a refusal."""
    retrying = tenacity.Retrying(
        retry=(tenacity.retry_if_exception_type((requests.exceptions.ConnectionError, requests.exceptions.Timeout))
               | tenacity.retry_if_result(lambda response: response.status_code in (429, 500, 502, 503, 504))),
        wait=_wait_as_asked,
        stop=tenacity.stop_before_delay(2.3),
    )
    try:
        response = retrying(_charge, client, url, amount, key)
    except tenacity.RetryError:
        return None
    return response.json() if response.status_code == 201 else None


WRONG = [
    ("q7.1", pay_no_retries, ["30% of answers are 503 Service Unavailable (seed 1): only 6 of 10 payments went through",
                              "with exponential backoff and jitter"]),
    ("q7.1", pay_no_backoff, ["the recovering service received more than 12 requests for one payment",
                              "a fixed short pause hammers a service"]),
    ("q7.1", pay_no_timeout, ["took more than 4 s to return", "timeout=(1.1, 0.5)"]),
    ("q7.1", pay_without_key, ["was charged 2 times", "Idempotency-Key"]),
    ("q7.1", pay_retries_everything, ["refused payments", "refused with 400", "cannot change that"]),
    ("q7.1", pay_gives_up_early, ["a down period", "it returned None, but the service was back"]),
    ("q7.1", pay_ignores_retry_after, ["Retry-After: 1", "more request(s) within 0.9 s", "at least N"]),
    ("q7.1", pay_409_is_final, ["still being processed", "only 0 of 2 payments went through", "409"]),
]
