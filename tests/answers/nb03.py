"""Answers to notebook 03: wrong answers with the words their verdict must hold."""

import requests


def call_no_cache(client, broker_url, peer, path, cache):
    try:
        answer = client.get(f"{broker_url}/peers/{peer}", timeout=1)
        if answer.status_code != 200:
            return None
        return client.get(answer.json()["url"] + path, timeout=1).json()
    except requests.exceptions.RequestException:
        return None


def call_cache_never_refreshes(client, broker_url, peer, path, cache):
    try:
        if peer not in cache:
            answer = client.get(f"{broker_url}/peers/{peer}", timeout=1)
            if answer.status_code != 200:
                return None
            cache[peer] = answer.json()["url"]
        return client.get(cache[peer] + path, timeout=1).json()
    except requests.exceptions.RequestException:
        return None


def call_broker_errors_unhandled(client, broker_url, peer, path, cache):
    for _ in range(2):
        url = cache.get(peer)
        if url is None:
            answer = client.get(f"{broker_url}/peers/{peer}", timeout=1)
            if answer.status_code != 200:
                return None
            url = cache[peer] = answer.json()["url"]
        try:
            return client.get(url + path, timeout=1).json()
        except requests.exceptions.RequestException:
            cache.pop(peer, None)
    return None


def call_no_timeout(client, broker_url, peer, path, cache):
    for _ in range(2):
        url = cache.get(peer)
        if url is None:
            try:
                answer = client.get(f"{broker_url}/peers/{peer}")
            except requests.exceptions.RequestException:
                return None
            if answer.status_code != 200:
                return None
            url = cache[peer] = answer.json()["url"]
        try:
            return client.get(url + path, timeout=1).json()
        except requests.exceptions.RequestException:
            cache.pop(peer, None)
    return None


def call_refresh_not_stored(client, broker_url, peer, path, cache):
    def look_up():
        answer = client.get(f"{broker_url}/peers/{peer}", timeout=1)
        return answer.json()["url"] if answer.status_code == 200 else None

    try:
        if peer not in cache:
            cache[peer] = look_up()
            if cache[peer] is None:
                del cache[peer]
                return None
        try:
            return client.get(cache[peer] + path, timeout=1).json()
        except requests.exceptions.RequestException:
            fresh = look_up()  # the new address is used once, never remembered
            return None if fresh is None else client.get(fresh + path, timeout=1).json()
    except requests.exceptions.RequestException:
        return None


def call_ignores_404(client, broker_url, peer, path, cache):
    for _ in range(2):
        url = cache.get(peer)
        if url is None:
            try:
                answer = client.get(f"{broker_url}/peers/{peer}", timeout=1)
            except requests.exceptions.RequestException:
                return None
            url = cache[peer] = answer.json()["url"]  # a 404's body has no "url"
        try:
            return client.get(url + path, timeout=1).json()
        except requests.exceptions.RequestException:
            cache.pop(peer, None)
    return None


def call_returns_error_bodies(client, broker_url, peer, path, cache):
    """Right in every way but one: an error answer's JSON body comes back as if it were the answer."""
    for _ in range(2):
        url = cache.get(peer)
        if url is None:
            try:
                answer = client.get(f"{broker_url}/peers/{peer}", timeout=1)
            except requests.exceptions.RequestException:
                return None
            if answer.status_code != 200:
                return None
            url = cache[peer] = answer.json()["url"]
        try:
            return client.get(url + path, timeout=1).json()
        except requests.exceptions.RequestException:
            cache.pop(peer, None)
    return None


def call_error_status_forgets_the_address(client, broker_url, peer, path, cache):
    """Returns None on an error status, but treats it like a dead address and asks the broker again."""
    for _ in range(2):
        url = cache.get(peer)
        if url is None:
            try:
                answer = client.get(f"{broker_url}/peers/{peer}", timeout=1)
            except requests.exceptions.RequestException:
                return None
            if answer.status_code != 200:
                return None
            url = cache[peer] = answer.json()["url"]
        try:
            answer = client.get(url + path, timeout=1)
            answer.raise_for_status()
            return answer.json()
        except requests.exceptions.RequestException:
            cache.pop(peer, None)
    return None


WRONG = [
    ("q3.1", call_no_cache, ["two peers, ten calls: each looked up once: it asked the broker 10 times",
                             "look a peer up only when it is not in cache"]),
    ("q3.1", call_cache_never_refreshes, ["a peer moved to a new address: alice moved", "returned None",
                                          "ask the broker again"]),
    ("q3.1", call_broker_errors_unhandled, ["the broker goes down (connection refused): your answer raised "
                                            "ConnectionError (connection refused)", "the broker can fail too"]),
    ("q3.1", call_no_timeout, ["the broker never answers (messages dropped): with the broker silent, a look-up "
                               "of a new peer took more than 3 s", "timeout=1"]),
    ("q3.1", call_refresh_not_stored, ["a peer moved to a new address: after finding alice's new address "
                                       "it asked the broker again 3 times", "cache[peer] = new url"]),
    ("q3.1", call_ignores_404, ["a peer the broker does not know: your answer raised KeyError: 'url'"]),
    ("q3.1", call_returns_error_bodies, ["the peer answers with an error status: alice answered 503 "
                                         "(Service Unavailable), yet it returned", "expected None",
                                         "return None (answer.ok is False)"]),
    ("q3.1", call_error_status_forgets_the_address, ["the peer answers with an error status: alice answered 503: "
                                                     "she was reached at her address, yet it asked the broker again"]),
]
