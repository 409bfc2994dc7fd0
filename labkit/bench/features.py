"""Figures of the feature notebooks' services: discovery, retries, concurrency."""

from __future__ import annotations

import contextlib
import threading
import time

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
        healthy = stack.enter_context(labkit.serve(create("instance", name="a"), name="bench-a", trace=log))
        dead = stack.enter_context(labkit.Link(healthy, trace=log, down=True))  # refuses at once
        client.post(f"{registry.url}/services/bench/instances",
                    json={"id": "a", "url": healthy.url, "ttl_s": 3600}).raise_for_status()
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
        samples = alternate(sides, rounds=plan(12, 4), per_round=plan(40, 20), budget_s=plan(20, 4), warm_up=20)
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


def _pay(client, url: str, amount: int, key, rng, retries: bool) -> bool:
    """One payment: True if it went through. Retries: full-jitter backoff, at most 8 attempts."""
    import requests

    for attempt in range(8 if retries else 1):
        try:
            response = client.post(url + "/charges", json={"amount_cents": amount},
                                   headers={"Idempotency-Key": key}, timeout=(1, 2))
            if response.status_code == 201:
                return True
            if response.status_code < 500 and response.status_code != 409:
                return False
        except requests.exceptions.RequestException:
            pass
        if retries:
            time.sleep(rng.uniform(0, min(1.0, 0.05 * 2 ** attempt)))
    return False


def _storm(jitter: bool, log, customers: int = 40) -> float:
    """Seconds until the last of ``customers`` paid into a recovering, capacity-4 service."""
    import random

    import requests

    import labkit
    from labkit.apps import create

    app = create("payment", seed=0, recover_s=0.5, capacity=4, work_ms=50)
    paid_at, lock, go = [], threading.Lock(), threading.Barrier(customers)

    def customer(server_url, number):
        rng = random.Random(number)
        with labkit.Client(f"customer-{number}", trace=log) as client:
            go.wait()
            for attempt in range(16):
                try:
                    status = client.post(server_url + "/charges", json={"amount_cents": 500},
                                         headers={"Idempotency-Key": f"c-{number}"}, timeout=(1, 2)).status_code
                    if status == 201:
                        with lock:
                            paid_at.append(time.perf_counter())
                        return
                except requests.exceptions.RequestException:
                    pass
                ceiling = min(0.8, 0.1 * 2 ** attempt)
                time.sleep(rng.uniform(0, ceiling) if jitter else ceiling)

    with labkit.serve(app, name="bench-storm", trace=log) as server:
        threads = [threading.Thread(target=customer, args=(server.url, n), daemon=True)
                   for n in range(customers)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    if len(paid_at) < customers:
        return float("nan")
    return max(paid_at) - started


@measures(("retry_success_ratio", ">=", 1.25, "x"), ("retry_load_ratio", "<=", 1.6, "x"),
          ("jitter_finish_speedup", ">=", 1.5, "x"))
def bench_retries(plan: Plan, keys: set) -> dict:
    """What retries buy and cost against a flaky service, and what jitter does to a retry storm.

    Payments with retries (exponential backoff, full jitter, an idempotency key) against
    none, the service answering 30% 503 (the same seeds on both sides): the share that went
    through, and the requests it received per payment (1/0.7 = 1.43 at best). Then 40
    customers paying at once into a recovering service that serves 4 at a time: seconds
    until the last one paid with backoff alone, over the same with full jitter.
    """
    import random

    import labkit
    from labkit.apps import create

    log = labkit.Trace()
    results = {}
    if keys & {"retry_success_ratio", "retry_load_ratio"}:
        paid = {False: [], True: []}
        load = {False: [], True: []}
        payments = plan(40, 20)
        for round_ in range(plan(6, 2)):
            sides = (False, True) if round_ % 2 == 0 else (True, False)
            for retries in sides:  # the same seed both sides: the same 503s at the same requests
                app = create("payment", seed=round_, error_rate=0.3)
                with labkit.serve(app, name="bench-retries", trace=log) as server, \
                        labkit.Client("bench", trace=log) as client:
                    rng = random.Random(round_)
                    ok = sum(_pay(client, server.url, 100 + n, f"r{round_}-{n}", rng, retries)
                             for n in range(payments))
                    paid[retries].append(ok / payments)
                    load[retries].append(app.extensions["labkit"].stats()["requests"] / payments)
                    rate = {side: median(values) for side, values in paid.items()}
        cost = {side: median(values) for side, values in load.items()}
        rounds = len(paid[True])
        if "retry_success_ratio" in keys:
            results["retry_success_ratio"] = entry(
                "retry_success_ratio", rate[True] / rate[False], rate[False],
                f"median share of {payments} payments that went through: with retries {rate[True]:.2f}, "
                f"without {rate[False]:.2f}; 30% of answers 503; {rounds} rounds a side, alternating; "
                f"baseline = the share without retries")
        if "retry_load_ratio" in keys:
            results["retry_load_ratio"] = entry(
                "retry_load_ratio", cost[True] / cost[False], cost[False],
                f"median requests the service received per payment: with retries {cost[True]:.2f}, "
                f"without {cost[False]:.2f}; baseline = requests per payment without retries")
    if "jitter_finish_speedup" in keys:
        finish = {False: [], True: []}
        for round_ in range(plan(3, 1)):
            for jitter in ((False, True) if round_ % 2 == 0 else (True, False)):
                finish[jitter].append(_storm(jitter, log))
        plain, jittered = median(finish[False]), median(finish[True])
        results["jitter_finish_speedup"] = entry(
            "jitter_finish_speedup", plain / jittered, plain,
            f"median seconds until all 40 customers paid: backoff {plain:.2f} s, backoff + full jitter "
            f"{jittered:.2f} s ({len(finish[True])} storms a side; recovering 0.5 s, capacity 4, 50 ms "
            f"a request); baseline = backoff without jitter, in s")
    return results


#: Clients in the "many" measurement; 1 client is the baseline measured in the same rounds.
CONCURRENT_CLIENTS = 8


def _closed_loop(labkit, url: str, log, clients: int, each: int) -> float:
    """``clients`` threads, each its own Client, sending ``each`` GETs back to back; answers per second."""
    import concurrent.futures

    users = [labkit.Client(f"bench-user-{n}", trace=log) for n in range(clients)]
    try:
        for user in users:
            user.get(url).raise_for_status()  # connect before the clock starts
        ready = threading.Barrier(clients + 1)

        def loop(user):
            ready.wait(30)
            for _ in range(each):
                user.get(url).raise_for_status()

        with concurrent.futures.ThreadPoolExecutor(max_workers=clients) as pool:
            futures = [pool.submit(loop, user) for user in users]
            ready.wait(30)
            start = time.perf_counter()
            for future in futures:
                future.result()
            elapsed = time.perf_counter() - start
    finally:
        for user in users:
            user.close()
    log.clear()
    return clients * each / elapsed


@measures(("concurrency_scaling_link", ">=", 4.0, "x"), ("concurrency_scaling_direct", ">=", 0.7, "x"))
def bench_concurrency(plan: Plan, keys: set) -> dict:
    """concurrency_scaling_link, concurrency_scaling_direct: throughput of 8 clients over 1."""
    import labkit
    from labkit.apps import create

    log = labkit.Trace()
    rates = {(side, n): [] for side in ("direct", "link") for n in (1, CONCURRENT_CLIENTS)}
    app = create("counter", work_ms=0)
    try:
        with labkit.serve(app, name="bench-counter", trace=log) as server, \
                labkit.Link(server, latency_ms=20, seed=8, trace=log) as link:
            urls = {"direct": server.url + "/whoami", "link": link.url + "/whoami"}
            deadline = time.monotonic() + plan(40, 12)
            for round_ in range(plan(5, 2)):
                order = (1, CONCURRENT_CLIENTS) if round_ % 2 == 0 else (CONCURRENT_CLIENTS, 1)
                for side in ("direct", "link"):
                    for n in order:
                        each = plan(40, 15) if side == "direct" else plan(10, 5)
                        rates[(side, n)].append(_closed_loop(labkit, urls[side], log, n, each))
                if round_ >= 1 and time.monotonic() > deadline:
                    break
    finally:
        app.extensions["labkit"].close()
    results = {}
    for side in ("direct", "link"):
        key = f"concurrency_scaling_{side}"
        if key not in keys:
            continue
        one, many = median(rates[(side, 1)]), median(rates[(side, CONCURRENT_CLIENTS)])
        where = "through a Link with 20 ms latency each way" if side == "link" else "direct, no Link"
        results[key] = entry(
            key, many / one, one,
            f"counter service GET /whoami, {where}: {CONCURRENT_CLIENTS} concurrent clients "
            f"{many:.0f} req/s vs 1 client {one:.0f} req/s (medians of {len(rates[(side, 1)])} alternating "
            f"rounds; each client its own connection, connected before the clock starts; clients, link "
            f"and server share one process and its GIL); baseline = 1-client req/s")
    return results
