"""Answers to notebook 05: wrong answers with the words their verdict must hold."""

import itertools
import time

import requests

_turn = itertools.count()  # the round-robin counter, shared by every call


def _instances(client, registry_url, service):
    return client.get(f"{registry_url}/services/{service}", timeout=2).json()["instances"]


def call_no_retry(client, registry_url, service, path):
    listed = _instances(client, registry_url, service)
    instance = listed[next(_turn) % len(listed)]
    response = client.get(instance["url"] + path, timeout=0.5)
    response.raise_for_status()
    return response.json()


def call_retries_the_same(client, registry_url, service, path):
    listed = _instances(client, registry_url, service)
    instance = listed[next(_turn) % len(listed)]
    for attempt in range(3):
        try:
            response = client.get(instance["url"] + path, timeout=0.5)
            response.raise_for_status()
            return response.json()
        except requests.exceptions.RequestException:
            if attempt == 2:
                raise
            time.sleep(0.05)


_cache = {}


def call_cached_forever(client, registry_url, service, path):
    key = (registry_url, service)
    if key not in _cache:
        _cache[key] = _instances(client, registry_url, service)
    listed = _cache[key]
    start = next(_turn)
    for k in range(len(listed)):
        instance = listed[(start + k) % len(listed)]
        try:
            response = client.get(instance["url"] + path, timeout=0.5)
            response.raise_for_status()
            return response.json()
        except requests.exceptions.RequestException:
            pass
    raise LookupError(f"no instance of {service!r} answered")


def call_resolves_once(client, registry_url, service, path):
    listed = _instances(client, registry_url, service)
    start = next(_turn)
    for k in range(len(listed)):
        instance = listed[(start + k) % len(listed)]
        try:
            response = client.get(instance["url"] + path, timeout=0.5)
            response.raise_for_status()
            return response.json()
        except requests.exceptions.RequestException:
            pass
    raise LookupError(f"no instance of {service!r} answered")


def call_no_timeout(client, registry_url, service, path):
    for _ in range(10):
        listed = _instances(client, registry_url, service)
        start = next(_turn)
        for k in range(len(listed)):
            instance = listed[(start + k) % len(listed)]
            try:
                response = client.get(instance["url"] + path)
                response.raise_for_status()
                return response.json()
            except requests.exceptions.RequestException:
                pass
        time.sleep(0.2)
    raise LookupError(f"no instance of {service!r} answered")


def call_always_first(client, registry_url, service, path):
    for _ in range(10):
        for instance in _instances(client, registry_url, service):
            try:
                response = client.get(instance["url"] + path, timeout=0.5)
                response.raise_for_status()
                return response.json()
            except requests.exceptions.RequestException:
                pass
        time.sleep(0.2)
    raise LookupError(f"no instance of {service!r} answered")


def call_ignores_status(client, registry_url, service, path):
    for _ in range(10):
        listed = _instances(client, registry_url, service)
        start = next(_turn)
        for k in range(len(listed)):
            instance = listed[(start + k) % len(listed)]
            try:
                return client.get(instance["url"] + path, timeout=0.5).json()
            except requests.exceptions.RequestException:
                pass
        time.sleep(0.2)
    raise LookupError(f"no instance of {service!r} answered")


_last = {}  # (registry_url, service) -> the last list the registry gave


def _round_robin_until(client, registry_url, service, path, *, rounds=None, seconds=None, keep_last=True,
                       error=TimeoutError, keep_empty=False):
    """Ask the registry (falling back on the last list), try each instance, pause, ask again; then raise ``error``."""
    deadline = None if seconds is None else time.monotonic() + seconds
    tried, n = set(), 0
    while (rounds is None or n < rounds) and (deadline is None or time.monotonic() < deadline):
        n += 1
        if keep_last:
            try:
                answer = client.get(f"{registry_url}/services/{service}", timeout=0.5)
                answer.raise_for_status()
                if answer.json()["instances"] or keep_empty:
                    _last[registry_url, service] = answer.json()["instances"]
            except requests.exceptions.RequestException:
                pass
            listed = _last.get((registry_url, service), [])
        else:
            listed = client.get(f"{registry_url}/services/{service}", timeout=0.5).json()["instances"]
        start = next(_turn)
        ordered = sorted((listed[(start + k) % len(listed)] for k in range(len(listed))),
                         key=lambda instance: instance["url"] in tried)
        for instance in ordered:
            try:
                response = client.get(instance["url"] + path, timeout=0.5)
                response.raise_for_status()
                return response.json()
            except requests.exceptions.RequestException:
                tried.add(instance["url"])
        time.sleep(0.2)
    raise error(f"no instance of {service!r} answered")


def call_forgets_the_list(client, registry_url, service, path):
    """The old solution: a registry that cannot be reached fails the call, though the instances are alive."""
    return _round_robin_until(client, registry_url, service, path, rounds=10, keep_last=False, error=LookupError)


def call_lookup_error_after_rounds(client, registry_url, service, path):
    """Keeps the last list, but counts rounds instead of keeping a deadline, and raises LookupError."""
    return _round_robin_until(client, registry_url, service, path, rounds=10, error=LookupError)


def call_gives_up_early(client, registry_url, service, path):
    """Raises the right error, but after three rounds (about 0.7 s), long before the deadline."""
    return _round_robin_until(client, registry_url, service, path, rounds=3)


def call_trusts_an_empty_list(client, registry_url, service, path):
    """Keeps the last list and a deadline, but also keeps an empty answer: a restarted registry erases its copy."""
    return _round_robin_until(client, registry_url, service, path, seconds=2.5, keep_empty=True)


WRONG = [
    ("q5.1", call_trusts_an_empty_list, ["the registry listed nobody while every instance was alive",
                                         "keep only a non-empty list"]),
    ("q5.1", call_forgets_the_list, ["the registry went down (connection refused) while every instance was alive",
                                     "keep the last list the registry gave you"]),
    ("q5.1", call_lookup_error_after_rounds, ["no instance answers at all", "it raised LookupError",
                                              "expected TimeoutError"]),
    ("q5.1", call_gives_up_early, ["before its 2.5 s deadline", "time.monotonic() + 2.5"]),
    ("q5.1", call_no_retry, ["one instance is down (connection refused) but still listed",
                             "the instance it picked (inv-2) was dead and it tried no other",
                             "ConnectionError (connection refused)", "try the next instance"]),
    ("q5.1", call_retries_the_same, ["it tried the dead instance inv-2 3 times and no other",
                                     "DIFFERENT instance"]),
    ("q5.1", call_cached_forever, ["the instances are replaced between calls: call 3: it did not ask the registry",
                                   "(inv-1, inv-2)", "ask the registry for the current list"]),
    ("q5.1", call_resolves_once, ["a replacement registers while you call: call 1: it asked the registry once",
                                  "ask the registry again"]),
    ("q5.1", call_no_timeout, ["stopped after 10 s: the answer did not return", "timeout=0.5"]),
    ("q5.1", call_always_first, ["instance inv-1 served 12 of the 12 calls", "round robin"]),
    ("q5.1", call_ignores_status, ["an unhealthy instance answers 503: call", "returned the error answer",
                                   "raise_for_status()"]),
]


def _beats(client, registry_url, service, instance_id, url, ttl_s, seconds, *, every, again=True, leave=True,
           catch=True, timeout=0.3):
    instances = f"{registry_url}/services/{service}/instances"
    deadline = time.monotonic() + seconds

    def guarded(request):
        try:
            return request()
        except requests.exceptions.RequestException:
            if not catch:
                raise
            return None

    guarded(lambda: client.post(instances, json={"id": instance_id, "url": url, "ttl_s": ttl_s}, timeout=timeout))
    while time.monotonic() < deadline:
        time.sleep(max(0.0, min(every, deadline - time.monotonic())))
        answer = guarded(lambda: client.put(f"{instances}/{instance_id}/heartbeat", timeout=timeout))
        if again and answer is not None and answer.status_code == 404:
            guarded(lambda: client.post(instances, json={"id": instance_id, "url": url, "ttl_s": ttl_s}, timeout=timeout))
    if leave:
        guarded(lambda: client.delete(f"{instances}/{instance_id}", timeout=timeout))


def beats_every_ttl(client, registry_url, service, instance_id, url, ttl_s, seconds):
    return _beats(client, registry_url, service, instance_id, url, ttl_s, seconds, every=ttl_s)


def beats_never_register_again(client, registry_url, service, instance_id, url, ttl_s, seconds):
    return _beats(client, registry_url, service, instance_id, url, ttl_s, seconds, every=ttl_s / 3, again=False)


def beats_never_leave(client, registry_url, service, instance_id, url, ttl_s, seconds):
    return _beats(client, registry_url, service, instance_id, url, ttl_s, seconds, every=ttl_s / 3, leave=False)


def beats_crash_on_error(client, registry_url, service, instance_id, url, ttl_s, seconds):
    return _beats(client, registry_url, service, instance_id, url, ttl_s, seconds, every=ttl_s / 3, catch=False)


def beats_no_timeout(client, registry_url, service, instance_id, url, ttl_s, seconds):
    return _beats(client, registry_url, service, instance_id, url, ttl_s, seconds, every=ttl_s / 3, timeout=None)


WRONG += [
    ("q5.2", beats_every_ttl, ["stays up for 1.2 s", "the registry forgot the instance while your function ran",
                               "every ttl_s / 3 seconds"]),
    ("q5.2", beats_never_register_again, ["an operator removes the instance midway", "never registered again",
                                          "register again at once"]),
    ("q5.2", beats_never_leave, ["was still listed after your function returned", "deregister before returning"]),
    ("q5.2", beats_crash_on_error, ["the registry loses every message", "your answer raised ReadTimeout",
                                    "catch requests.exceptions.RequestException"]),
    ("q5.2", beats_no_timeout, ["stopped after 6 s: the answer did not return", "timeout=ttl_s / 3"]),
]
