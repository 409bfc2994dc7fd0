"""Answers to notebook 01: wrong answers with the words their verdict must hold."""

import time

import requests


def fetch_no_timeout(client, url):
    try:
        response = client.get(url)
        response.raise_for_status()
        return response.json()
    except requests.exceptions.RequestException:
        return None


def fetch_catches_only_timeout(client, url):
    try:
        response = client.get(url, timeout=0.5)
        response.raise_for_status()
        return response.json()
    except requests.exceptions.Timeout:
        return None


def fetch_ignores_status(client, url):
    try:
        return client.get(url, timeout=0.5).json()
    except requests.exceptions.RequestException:
        return None


def fetch_catches_nothing(client, url):
    response = client.get(url, timeout=0.5)
    response.raise_for_status()
    return response.json()


def fetch_always_none(client, url):
    return None


def totals_n_plus_one(client, base_url, order_ids):
    totals = {}
    for order_id in order_ids:
        order = client.get(f"{base_url}/orders/{order_id}").json()
        totals[order_id] = round(sum(i["qty"] * i["price"] for i in order["items"]), 2)
    return totals


def totals_not_rounded(client, base_url, order_ids):
    orders = client.post(base_url + "/orders/batch", json={"ids": list(order_ids)}).json()["orders"]
    return {o["id"]: sum(i["qty"] * i["price"] for i in o["items"]) for o in orders}


def totals_ignore_qty(client, base_url, order_ids):
    orders = client.post(base_url + "/orders/batch", json={"ids": list(order_ids)}).json()["orders"]
    return {o["id"]: round(sum(i["price"] for i in o["items"]), 2) for o in orders}


def totals_string_keys(client, base_url, order_ids):
    orders = client.post(base_url + "/orders/batch", json={"ids": list(order_ids)}).json()["orders"]
    return {str(o["id"]): round(sum(i["qty"] * i["price"] for i in o["items"]), 2) for o in orders}


def messages_busy_polling(client, base_url, after):
    while True:
        messages = client.get(base_url + "/messages", params={"after": after}).json()["messages"]
        if messages:
            return messages
        time.sleep(0.05)


def messages_sleepy_polling(client, base_url, after):
    while True:
        messages = client.get(base_url + "/messages", params={"after": after}).json()["messages"]
        if messages:
            return messages
        time.sleep(2)


def messages_short_client_timeout(client, base_url, after):
    while True:
        response = client.get(base_url + "/messages", params={"after": after, "wait_s": 5}, timeout=1)
        messages = response.json()["messages"]
        if messages:
            return messages


def messages_one_long_poll(client, base_url, after):
    response = client.get(base_url + "/messages", params={"after": after, "wait_s": 5}, timeout=10)
    return response.json()["messages"]


def messages_timeout_shorter_than_wait(client, base_url, after):
    while True:
        response = client.get(base_url + "/messages", params={"after": after, "wait_s": 5}, timeout=2)
        messages = response.json()["messages"]
        if messages:
            return messages


def messages_no_wait(client, base_url, after):
    return client.get(base_url + "/messages", params={"after": after}).json()["messages"]


def messages_ignore_after(client, base_url, after):
    while True:
        response = client.get(base_url + "/messages", params={"wait_s": 5}, timeout=10)
        messages = response.json()["messages"]
        if messages:
            return messages


WRONG = [
    ("q1.1", fetch_no_timeout, ["a slow service (2 s latency): with a service that takes 2 s to answer "
                                "it took more than 1.5 s", "Hint: pass timeout=0.5 to client.get"]),
    ("q1.1", fetch_catches_only_timeout, ["a service that is down (connection refused): your answer raised "
                                          "ConnectionError (connection refused)", "RequestException"]),
    ("q1.1", fetch_ignores_status, ["an error answer (503 Service Unavailable)", "returned {'error': 'the forecast",
                                    "expected None", "raise_for_status()"]),
    ("q1.1", fetch_catches_nothing, ["a slow service (2 s latency): your answer raised ReadTimeout "
                                     "(no answer within the client's timeout)", "catch requests.exceptions.RequestException"]),
    ("q1.1", fetch_always_none, ["a healthy service: it returned None; the service answered {'city': 'Oslo'",
                                 "response.json()"]),
    ("q1.2", totals_n_plus_one, ["(seed 1): it made 25 requests for 25 orders (at most 2 allowed)",
                                 "POST /orders/batch"]),
    ("q1.2", totals_not_rounded, ["is not rounded to 2 decimals", "round(total, 2)"]),
    ("q1.2", totals_ignore_qty, ["but its items add up to", "qty × price"]),
    ("q1.2", totals_string_keys, ["has no total for order", "keys must be the order ids"]),
    ("q1.3", messages_busy_polling, ["a message posted while you wait: it made more than 3 requests",
                                     "GET /messages?after=N&wait_s=5"]),
    ("q1.3", messages_sleepy_polling, ["more than 0.6 s after the message was posted", "sleeping between polls"]),
    ("q1.3", messages_short_client_timeout, ["your answer raised ReadTimeout (no answer within the client's timeout)",
                                             "the client's timeout must be longer than the server's wait"]),
    ("q1.3", messages_no_wait, ["it returned [] before any new message was posted"]),
    ("q1.3", messages_one_long_poll, ["a long poll that ends empty first (a message posted after 6 s): "
                                      "it returned [] before any new message was posted",
                                      "when a long poll ends empty, long-poll again"]),
    ("q1.3", messages_timeout_shorter_than_wait, ["a long poll that ends empty first (a message posted after 6 s): "
                                                  "your answer raised ReadTimeout",
                                                  "the client's timeout must be longer than the server's wait"]),
    ("q1.3", messages_ignore_after, ["for after=2 it returned messages with ids [1, 2]",
                                     "only ids greater than 2 belong"]),
]
