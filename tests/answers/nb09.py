"""Answers to notebook 09: wrong replicated clients with the words their verdict must hold."""

import requests


def replicated_404_is_final(client, urls, key, value=None):
    """Subtle: right in every way but one: a 404 ends the read, so a copy that restarted empty hides the others."""
    if value is not None:
        stored = False
        for url in urls:
            try:
                stored |= client.put(f"{url}/kv/{key}", json={"value": value}, timeout=1.0).status_code == 200
            except requests.RequestException:
                pass
        return stored
    for url in urls:
        try:
            response = client.get(f"{url}/kv/{key}", timeout=1.0)
        except requests.RequestException:
            continue
        return response.json()["value"] if response.status_code == 200 else None
    return None


def replicated_writes_one_copy(client, urls, key, value=None):
    """Subtle: a write stops at the first copy that takes it, so the others never hear of it."""
    if value is not None:
        for url in urls:
            try:
                if client.put(f"{url}/kv/{key}", json={"value": value}, timeout=1.0).status_code == 200:
                    return True
            except requests.RequestException:
                pass
        return False
    for url in urls:
        try:
            response = client.get(f"{url}/kv/{key}", timeout=1.0)
        except requests.RequestException:
            continue
        if response.status_code == 200:
            return response.json()["value"]
    return None


def replicated_no_timeout(client, urls, key, value=None):
    """Waits as long as the client's default allows: a silent copy holds every call."""
    if value is not None:
        stored = False
        for url in urls:
            try:
                stored |= client.put(f"{url}/kv/{key}", json={"value": value}).status_code == 200
            except requests.RequestException:
                pass
        return stored
    for url in urls:
        try:
            response = client.get(f"{url}/kv/{key}")
        except requests.RequestException:
            continue
        if response.status_code == 200:
            return response.json()["value"]
    return None


def replicated_first_copy_only(client, urls, key, value=None):
    """Plain client-server: one copy, no failover; a down server raises."""
    url = f"{urls[0]}/kv/{key}"
    if value is not None:
        return client.put(url, json={"value": value}, timeout=1.0).status_code == 200
    response = client.get(url, timeout=1.0)
    return response.json()["value"] if response.status_code == 200 else None


WRONG = [
    ("q9.1", replicated_404_is_final, ["restarted", "404 from one copy is not the end"]),
    ("q9.1", replicated_writes_one_copy, ["copy 2 of 2 does not hold the value", "write to every copy"]),
    ("q9.1", replicated_no_timeout, ["first copy silent", "timeout=1.0"]),
    ("q9.1", replicated_first_copy_only, ["two healthy copies", "write to every copy"]),
]
