"""Answers to notebook 08: wrong answers with the words their verdict must hold."""

import random
import threading
import time

from sqlalchemy import text

from .solutions import solution


_READ = text("SELECT value FROM counters WHERE name = :name")
_WRITE = text("UPDATE counters SET value = :value WHERE name = :name")


def add_one_read_then_write(engine, name):
    """Read in one transaction, write in another: nothing stops a second reader in between."""
    with engine.begin() as tx:
        value = tx.execute(_READ, {"name": name}).scalar_one()
    with engine.begin() as tx:
        tx.execute(_WRITE, {"name": name, "value": value + 1})
    return value + 1


_read_lock = threading.Lock()


def add_one_lock_around_the_read(engine, name):
    """A lock, but only around the read: two threads still read the same value before either writes."""
    with _read_lock:
        with engine.begin() as tx:
            value = tx.execute(_READ, {"name": name}).scalar_one()
    with engine.begin() as tx:
        tx.execute(_WRITE, {"name": name, "value": value + 1})
    return value + 1


def add_one_in_one_transaction(engine, name):
    """Read then write inside one transaction: safe only where the database serialises transactions."""
    with engine.begin() as tx:
        value = tx.execute(_READ, {"name": name}).scalar_one()
        tx.execute(_WRITE, {"name": name, "value": value + 1})
    return value + 1


def add_one_never_commits(engine, name):
    with engine.connect() as connection:
        connection.execute(text("UPDATE counters SET value = value + 1 WHERE name = :name"), {"name": name})
        return connection.execute(_READ, {"name": name}).scalar_one()


def add_one_every_counter(engine, name):
    with engine.begin() as tx:
        tx.execute(text("UPDATE counters SET value = value + 1"))
        return tx.execute(_READ, {"name": name}).scalar_one()


def add_one_returns_in_a_second_transaction(engine, name):
    with engine.begin() as tx:
        tx.execute(text("UPDATE counters SET value = value + 1 WHERE name = :name"), {"name": name})
    with engine.begin() as tx:
        return tx.execute(_READ, {"name": name}).scalar_one()


def increment_read_modify_write(client, url):
    """No protection: PUT whatever version is current now (a blind write)."""
    counter = client.get(url).json()
    current = client.get(url).json()["version"]
    return client.put(url, json={"value": counter["value"] + 1, "version": current}).json()["value"]


def increment_gives_up_after_one_conflict(client, url):
    for _ in range(2):
        counter = client.get(url).json()
        response = client.put(url, json={"value": counter["value"] + 1, "version": counter["version"]})
        if response.status_code != 409:
            return response.json()["value"]
    return counter["value"] + 1


def increment_retries_stale_version(client, url):
    counter = client.get(url).json()
    while True:
        response = client.put(url, json={"value": counter["value"] + 1, "version": counter["version"]})
        if response.status_code != 409:
            return response.json()["value"]


def increment_retries_forever(client, url):
    """Retries on 409 with no bound and no pause: under contention it never stops, and hammers the service."""
    while True:
        counter = client.get(url).json()
        response = client.put(url, json={"value": counter["value"] + 1, "version": counter["version"]})
        if response.status_code != 409:
            response.raise_for_status()
            return response.json()["value"]


def increment_bounded_without_pause(client, url):
    """Bounded, but it retries at once: clients that conflicted together conflict again together."""
    for _ in range(20):
        counter = client.get(url).json()
        response = client.put(url, json={"value": counter["value"] + 1, "version": counter["version"]})
        if response.status_code != 409:
            return response.json()["value"]
    raise RuntimeError("gave up after 20 conflicts")


def increment_bounded_raises_http_error(client, url):
    """Pauses and gives up after 20 PUTs, but raises the 409 as an HTTPError, not the RuntimeError asked for."""
    for attempt in range(1, 21):
        counter = client.get(url).json()
        response = client.put(url, json={"value": counter["value"] + 1, "version": counter["version"]})
        if response.status_code != 409:
            return response.json()["value"]
        if attempt < 20:
            time.sleep(random.uniform(0, min(0.2, 0.005 * 2 ** attempt)))
    response.raise_for_status()


def increment_ignores_conflict(client, url):
    counter = client.get(url).json()
    client.put(url, json={"value": counter["value"] + 1, "version": counter["version"]})
    return counter["value"] + 1


_big_lock = threading.Lock()


def increment_under_global_lock(client, url):
    with _big_lock:  # correct here, but it serialises every caller and protects nothing across processes
        return solution("q8.2")(client, url)


def increment_returns_version(client, url):
    while True:
        counter = client.get(url).json()
        response = client.put(url, json={"value": counter["value"] + 1, "version": counter["version"]})
        if response.status_code != 409:
            return response.json()["version"] - 1


WRONG = [
    ("q8.1", add_one_read_then_write, ["120 increments from 8 threads of a service at once",
                                       "updates were lost", "UPDATE counters SET value = value + 1"]),
    ("q8.1", add_one_lock_around_the_read, ["120 increments of 'hits' at once left it below 120", "updates were lost"]),
    ("q8.1", add_one_in_one_transaction, ["your answer raised OperationalError", "database is locked",
                                          "PostgreSQL would have let it overwrite the first"]),
    ("q8.1", add_one_never_commits, ["after one call the counter is 0, not 1", "not engine.connect()"]),
    ("q8.1", add_one_every_counter, ["two counters at once", "30 increments of 'a' at once left it at 50"]),
    ("q8.1", add_one_returns_in_a_second_transaction, ["the values returned were not 1 to 120 once each",
                                                       "SELECT it in the same transaction"]),
    ("q8.2", increment_read_modify_write, ["another client wins the race twice", "did not try again",
                                           "expected 2", "read the counter again and retry"]),
    ("q8.2", increment_gives_up_after_one_conflict, ["your first two PUTs got 409 Conflict", "expected 3",
                                                     "in a loop of up to 20 PUTs"]),
    ("q8.2", increment_retries_forever, ["another client writes first 40 times", "kept trying: 41 PUTs",
                                         "it must give up after 20", "raise RuntimeError"]),
    ("q8.2", increment_bounded_without_pause, ["retried almost at once", "pause random.uniform(0, min(0.2"]),
    ("q8.2", increment_bounded_raises_http_error, ["gave up after 20 PUTs, but raised HTTPError",
                                                   "not a RuntimeError"]),
    ("q8.2", increment_retries_stale_version, ["stopped after 12 s", "read the counter again (GET) for its current version"]),
    ("q8.2", increment_ignores_conflict, ["did not try again", "your increment was lost", "read the counter again and retry"]),
    ("q8.2", increment_under_global_lock, ["20 increments from 4 threads through a link with 5 ms latency (seed 1)",
                                           "no two of your calls were ever at the server at the same time",
                                           "do not hold a lock across the network"]),
    ("q8.2", increment_returns_version, ["the counter is right (3), but your answer returned 2", 'response.json()["value"] of the PUT']),
]
