"""Answers to notebook 02: wrong answers with the words their verdict must hold."""

import requests


from labkit.apps.peer import last_writer_wins

WRITE = ("value", "clock", "peer", "version")


def _below(v1, v2):
    return v1 != v2 and all(clock <= v2.get(peer, 0) for peer, clock in v1.items())


def _writes(*entries):
    found = []
    for entry in entries:
        for write in (entry, *entry["conflicts"]):
            write = {k: write[k] for k in WRITE}
            if write not in found:
                found.append(write)
    return found


def _merge_with(keep):
    """A merge that gathers each shared key's writes and lets ``keep(writes)`` choose the sorted survivors."""
    def merge(mine, theirs):
        merged = dict(mine)
        for key, entry in theirs.items():
            if key not in merged:
                merged[key] = entry
                continue
            kept = keep(_writes(merged[key], entry))
            merged[key] = {**kept[-1], "conflicts": kept[:-1]}
        return merged
    return merge


def merge_last_writer_wins(mine, theirs):
    """Wrong: the peers' own merge, which drops concurrent writes."""
    return last_writer_wins(mine, theirs)


def merge_keeps_everything(mine, theirs):
    """Wrong: never drops a write, so replaced writes stay as conflicts forever."""
    return _merge_with(lambda writes: sorted(writes, key=lambda w: (w["clock"], w["peer"])))(mine, theirs)


def merge_no_dedupe(mine, theirs):
    """Subtle: a write both sides hold is kept twice, so it ends up among its own conflicts."""
    def merge(mine, theirs):
        merged = dict(mine)
        for key, entry in theirs.items():
            if key not in merged:
                merged[key] = entry
                continue
            writes = [{k: w[k] for k in WRITE} for e in (merged[key], entry) for w in (e, *e["conflicts"])]
            kept = sorted([w for w in writes if not any(_below(w["version"], o["version"]) for o in writes)],
                          key=lambda w: (w["clock"], w["peer"]))
            merged[key] = {**kept[-1], "conflicts": kept[:-1]}
        return merged
    return merge(mine, theirs)


def merge_unsorted_conflicts(mine, theirs):
    """Subtle: keeps the right writes, but lists the conflicts in the order it met them, so two peers
    that merged in different orders hold different replicas."""
    def merge(mine, theirs):
        merged = dict(mine)
        for key, entry in theirs.items():
            if key not in merged:
                merged[key] = entry
                continue
            writes = _writes(merged[key], entry)
            kept = [w for w in writes if not any(_below(w["version"], o["version"]) for o in writes)]
            winner = max(kept, key=lambda w: (w["clock"], w["peer"]))
            merged[key] = {**winner, "conflicts": [w for w in kept if w is not winner]}
        return merged
    return merge(mine, theirs)


def merge_by_clock(mine, theirs):
    """Subtle: takes a larger Lamport clock for "happened after", which it does not mean: concurrent writes
    with different clocks are dropped."""
    def keep(writes):
        newest = max(w["clock"] for w in writes)
        return sorted([w for w in writes if w["clock"] == newest], key=lambda w: (w["clock"], w["peer"]))
    return _merge_with(keep)(mine, theirs)


def merge_forgets_conflicts(mine, theirs):
    """Wrong: compares only the two entries, not the conflicts they already carry."""
    def merge(mine, theirs):
        merged = dict(mine)
        for key, entry in theirs.items():
            if key not in merged:
                merged[key] = entry
                continue
            writes = [{k: e[k] for k in WRITE} for e in (merged[key], entry)]
            writes = [w for i, w in enumerate(writes) if w not in writes[:i]]
            kept = sorted([w for w in writes if not any(_below(w["version"], o["version"]) for o in writes)],
                          key=lambda w: (w["clock"], w["peer"]))
            merged[key] = {**kept[-1], "conflicts": kept[:-1]}
        return merged
    return merge(mine, theirs)


def merge_returns_nothing(mine, theirs):
    mine.update({k: v for k, v in theirs.items() if k not in mine})


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


def join_trusts_any_success(client, name, address, bootstrap):
    """Subtle: takes any answer with a success status for a peer's, so a server without "members" breaks it."""
    for url in bootstrap:
        try:
            response = client.post(url + "/join", json={"name": name, "address": address}, timeout=0.5)
            response.raise_for_status()
            return response.json()["members"]
        except requests.exceptions.RequestException:
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
    ("q2.1", merge_last_writer_wins, ["one call of merge(mine, theirs)", "'colour' holds 'blue'",
                                      "it should keep the concurrent writes 'red' and 'blue'"]),
    ("q2.1", merge_keeps_everything, ["'city' holds 'Oslo' and 'Lima'", "should hold only 'Lima'",
                                      "was seen by the other's writer and replaced"]),
    ("q2.1", merge_no_dedupe, ["merging the merged replica with b's once more", "'city' holds the same write more "
                               "than once", "keep one copy of each version"]),
    ("q2.1", merge_unsorted_conflicts, ["6 peers", "the entry of 'leader'", "sort the conflicts"]),
    ("q2.1", merge_by_clock, ["one call of merge(mine, theirs)", "'colour' holds 'blue'",
                              "keep both"]),
    ("q2.1", merge_forgets_conflicts, ["merging the merged replica with b's once more"]),
    ("q2.1", merge_returns_nothing, ["returned None, not a dict"]),
    ("q2.2", join_first_only, ["dead", "never heard of"]),
    ("q2.2", join_no_timeout, ["more than 3 s", "timeout=0.5"]),
    ("q2.2", join_catches_only_connection_errors, ["your answer raised ReadTimeout", "RequestException"]),
    ("q2.2", join_returns_response, ["response object"]),
    ("q2.2", join_trusts_any_success, ["your answer raised KeyError", "no peer's", "KeyError"]),
]
