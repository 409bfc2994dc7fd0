"""Answers to notebook 02: the solutions, and wrong answers with the words their verdict must hold."""

import requests


def merge(mine, theirs):
    merged = dict(mine)
    for key, entry in theirs.items():
        if key not in merged or (entry["clock"], entry["peer"]) > (merged[key]["clock"], merged[key]["peer"]):
            merged[key] = entry
    return merged


def join_mesh(client, name, address, bootstrap):
    for url in bootstrap:
        try:
            response = client.post(url + "/join", json={"name": name, "address": address}, timeout=0.5)
            response.raise_for_status()
            return response.json()["members"]
        except requests.exceptions.RequestException:
            continue
    return None


SOLUTIONS = {"q2.1": merge, "q2.2": join_mesh}


def merge_theirs_win(mine, theirs):
    return {**mine, **theirs}


def merge_keep_mine(mine, theirs):
    return {**theirs, **mine}


def merge_ignores_clocks(mine, theirs):
    """Subtle: deterministic and order-independent, so replicas agree, but on the wrong winner."""
    merged = dict(mine)
    for key, entry in theirs.items():
        if key not in merged or entry["peer"] > merged[key]["peer"]:
            merged[key] = entry
    return merged


def merge_clock_only_keep_mine(mine, theirs):
    """Subtle: right except on ties, where each peer keeps its own, so replicas never agree."""
    merged = dict(mine)
    for key, entry in theirs.items():
        if key not in merged or entry["clock"] > merged[key]["clock"]:
            merged[key] = entry
    return merged


def merge_clock_only_take_theirs(mine, theirs):
    """Subtle: on ties the result depends on who pushed to whom."""
    merged = dict(mine)
    for key, entry in theirs.items():
        if key not in merged or entry["clock"] >= merged[key]["clock"]:
            merged[key] = entry
    return merged


def merge_only_known_keys(mine, theirs):
    merged = dict(mine)
    for key in mine:
        if key in theirs and (theirs[key]["clock"], theirs[key]["peer"]) > (mine[key]["clock"], mine[key]["peer"]):
            merged[key] = theirs[key]
    return merged


def merge_returns_nothing(mine, theirs):
    for key, entry in theirs.items():
        if key not in mine or (entry["clock"], entry["peer"]) > (mine[key]["clock"], mine[key]["peer"]):
            mine[key] = entry


def join_first_only(client, name, address, bootstrap):
    try:
        response = client.post(bootstrap[0] + "/join", json={"name": name, "address": address}, timeout=0.5)
        response.raise_for_status()
        return response.json()["members"]
    except requests.exceptions.RequestException:
        return None


def join_no_timeout(client, name, address, bootstrap):
    for url in bootstrap:
        try:
            response = client.post(url + "/join", json={"name": name, "address": address})
            response.raise_for_status()
            return response.json()["members"]
        except requests.exceptions.RequestException:
            continue
    return None


def join_catches_only_connection_errors(client, name, address, bootstrap):
    for url in bootstrap:
        try:
            response = client.post(url + "/join", json={"name": name, "address": address}, timeout=0.5)
            response.raise_for_status()
            return response.json()["members"]
        except requests.exceptions.ConnectionError:
            continue
    return None


def join_returns_response(client, name, address, bootstrap):
    for url in bootstrap:
        try:
            return client.post(url + "/join", json={"name": name, "address": address}, timeout=0.5)
        except requests.exceptions.RequestException:
            continue
    return None


WRONG = [
    ("q2.1", merge_theirs_win, ["two peers", "older write", "Hint: compare the entries' clocks"]),
    ("q2.1", merge_keep_mine, ["two peers", "older write"]),
    ("q2.1", merge_ignores_clocks, ["two peers", "'shape'", "older write"]),
    ("q2.1", merge_clock_only_keep_mine, ["two peers", "tie", "larger peer name"]),
    ("q2.1", merge_clock_only_take_theirs, ["two peers", "tie"]),
    ("q2.1", merge_only_known_keys, ["has no entry for", "Hint: start from a copy of mine"]),
    ("q2.1", merge_returns_nothing, ["one call", "returned None, not a dict"]),
    ("q2.2", join_first_only, ["dead", "never heard of"]),
    ("q2.2", join_no_timeout, ["more than 3 s", "timeout=0.5"]),
    ("q2.2", join_catches_only_connection_errors, ["your answer raised ReadTimeout", "RequestException"]),
    ("q2.2", join_returns_response, ["response object"]),
]
