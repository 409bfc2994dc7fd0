"""Figures of the feature notebooks' services: discovery, retries, concurrency."""

from __future__ import annotations

import contextlib

from .tools import Plan, alternate, entry, measures, median


@measures(("lookup_overhead_ratio", "<=", 2.5, "x"), ("failover_extra_ms", "<=", 5.0, "ms"))
def bench_discovery(plan: Plan, keys: set) -> dict:
    """lookup_overhead_ratio and failover_extra_ms, from one alternating run."""
    import requests

    import labkit
    from labkit.apps import create

    log = labkit.Trace()
    results = {}
    with contextlib.ExitStack() as stack:
        registry = stack.enter_context(labkit.serve(create("registry"), name="bench-registry", trace=log))
        client = stack.enter_context(labkit.Client("bench", trace=log, timeout=5))
        healthy = stack.enter_context(labkit.serve(create("instance", label="a"), name="bench-a", trace=log))
        dead = stack.enter_context(labkit.Link(healthy, trace=log, down=True))  # refuses at once
        client.post(f"{registry.url}/services/bench/instances",
                    json={"id": "a", "url": healthy.url, "ttl": 3600}).raise_for_status()
        known = healthy.url + "/whoami"

        def with_lookup():
            instance = client.get(f"{registry.url}/services/bench").json()["instances"][0]
            client.get(instance["url"] + "/whoami")

        def fail_over():
            for url in (dead.url + "/whoami", known):
                try:
                    return client.get(url, timeout=0.5)
                except requests.exceptions.RequestException:
                    continue

        sides = {"known": lambda: client.get(known), "lookup": with_lookup, "failover": fail_over}
        for call in sides.values():  # warm up: first connections, caches
            for _ in range(20):
                call()
        samples = alternate(sides, rounds=plan(12, 4), per_round=plan(40, 20), budget_s=plan(20, 4))
    p50 = {name: median(times) for name, times in samples.items()}
    count = len(samples["known"])
    if "lookup_overhead_ratio" in keys:
        results["lookup_overhead_ratio"] = entry(
            "lookup_overhead_ratio", p50["lookup"] / p50["known"], p50["known"] * 1e6,
            f"p50: registry lookup + call {p50['lookup'] * 1e6:.0f} us vs call to a known instance "
            f"{p50['known'] * 1e6:.0f} us; {count} calls a side, alternating; baseline in us")
    if "failover_extra_ms" in keys:
        results["failover_extra_ms"] = entry(
            "failover_extra_ms", (p50["failover"] - p50["known"]) * 1e3, p50["known"] * 1e3,
            f"p50 of a call whose first pick refuses ({p50['failover'] * 1e3:.2f} ms) minus a healthy call "
            f"({p50['known'] * 1e3:.2f} ms); {count} calls a side; baseline = healthy p50 in ms")
    return results
