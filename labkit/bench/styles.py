"""Figures of the architecture notebooks' services: gossip among peers, a broker, checkout on one database."""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import math
import os
import time

from .tools import Plan, alternate, entry, measures, median, not_measured

#: Peers in the gossip measurement.
GOSSIP_PEERS = 8


@measures(("gossip_rounds_ratio", "<=", 1.0, "x"))
def bench_gossip(plan: Plan, keys: set) -> dict:
    """Rounds until news written at one of 8 peers reaches all, against what theory predicts.

    Every peer gossips once per round (push-pull anti-entropy through labkit Links) with a
    partner chosen at random. Push-only rumour spreading informs N nodes in
    log2(N) + ln(N) + O(1) rounds (B. Pittel, "On spreading a rumor", SIAM J. Appl. Math.
    47(1), 1987); push-pull needs log3(N) + O(log log N) (R. Karp, C. Schindelhauer,
    S. Shenker, B. Vöcking, "Randomized rumor spreading", FOCS 2000). A ratio at or below 1
    says the peers do at least as well as push alone predicts.
    """
    import labkit
    from labkit.apps.peer import create_app, network_dial

    names = [f"bench-peer-{i}" for i in range(GOSSIP_PEERS)]
    repeats = plan(20, 6)
    rounds: dict[float, list[int]] = {0.0: [], 0.2: []}
    for repeat in range(repeats):
        for drop, taken in rounds.items():
            log = labkit.Trace()
            with contextlib.ExitStack() as stack:
                net = stack.enter_context(labkit.Network(seed=repeat, trace=log))
                peers, urls = {}, {}
                for name in names:
                    app = create_app(name=name, dial=network_dial(net, name, drop=drop), seed=repeat,
                                     timeout_s=0.3, trace=log)
                    urls[name] = stack.enter_context(labkit.serve(app, name=name, trace=log)).url
                    peers[name] = app.extensions["labkit"]
                    peers[name].address = urls[name]
                for peer in peers.values():  # everyone knows everyone: partners are uniform, as the theory assumes
                    peer.learn(urls)
                peers[names[repeat % len(names)]].write("news", repeat)
                with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
                    for number in range(1, 51):
                        list(pool.map(lambda peer: peer.gossip_round(), peers.values()))
                        if all("news" in peer.entries for peer in peers.values()):
                            break
                taken.append(number)
    push = math.log2(len(names)) + math.log(len(names))
    push_pull = math.log(len(names), 3)
    clean, lossy = sorted(rounds[0.0]), sorted(rounds[0.2])
    return {"gossip_rounds_ratio": entry(
        "gossip_rounds_ratio", clean[len(clean) // 2] / push, push,
        f"{len(names)} peers, push-pull through links, {repeats} runs: median {clean[len(clean) // 2]} rounds "
        f"(range {clean[0]}-{clean[-1]}); with 20% of messages dropped median {lossy[len(lossy) // 2]}; "
        f"theory: push log2 N + ln N = {push:.2f} (Pittel 1987), push-pull log3 N = {push_pull:.2f} "
        f"+ O(log log N) (Karp et al. 2000); baseline in rounds")}


@measures(("broker_requests_per_message_relay", "<=", 1.0, "x"), ("broker_relay_latency_ratio", "<=", 3.0, "x"))
def bench_broker(plan: Plan, keys: set) -> dict:
    """Requests the broker handles per relayed message, and a relayed job's latency against a direct one.

    One broker and two workers, each behind a Link with 1 ms latency each way, so a hop
    costs something as it would between machines; alice sends jobs to bob directly (the
    address looked up once, before timing) and through the broker, in alternating rounds.
    """
    import labkit
    from labkit.apps import create, worker

    log = labkit.Trace()
    with contextlib.ExitStack() as stack:
        broker_app = create("broker", name="bench-broker", ttl_s=600, trace=log)
        broker = stack.enter_context(labkit.serve(broker_app, name="bench-broker", trace=log))
        to_broker = stack.enter_context(labkit.Link(broker, latency_ms=1, trace=log))
        members = {}
        for name in ("bench-alice", "bench-bob"):
            server = stack.enter_context(labkit.serve(
                create("worker", name=name, broker_url=to_broker.url, trace=log), name=name, trace=log))
            link = stack.enter_context(labkit.Link(server, latency_ms=1, trace=log))
            member = worker.Member(server, to_broker.url, f"{name}-secret", name=name, url=link.url,
                                   heartbeat_s=600, trace=log)
            stack.callback(member.stop, leave=False)
            members[name] = member
        client = stack.enter_context(labkit.Client("bench-alice", trace=log))
        auth = {"Authorization": f"Bearer {members['bench-alice'].token_for('bench-bob')}"}  # bob accepts only his own
        bob_url = client.get(to_broker.url + "/peers/bench-bob").json()["url"]  # looked up once
        relay_url = to_broker.url + "/relay/bench-bob/jobs"
        sides = {
            "direct": lambda: client.post(bob_url + "/jobs", json={"numbers": [1, 2]}, headers=auth).raise_for_status(),
            "relay": lambda: client.post(relay_url, json={"numbers": [1, 2]}, headers=auth).raise_for_status(),
        }
        for call in sides.values():  # warm up: the key fetch, the connections
            for _ in range(10):
                call()
        start = len(log)
        samples = alternate(sides, rounds=plan(12, 4), per_round=plan(30, 15), budget_s=plan(20, 4))
        events = log.events()[start:]
    messages = len(samples["relay"])
    at_broker = sum(1 for e in events if e.kind == "receive" and e.dst == "bench-broker" and e.path != "/heartbeat")
    direct, relay = median(samples["direct"]), median(samples["relay"])
    results = {
        "broker_requests_per_message_relay": entry(
            "broker_requests_per_message_relay", at_broker / messages, 0.0,
            f"{at_broker} requests at the broker for {messages} relayed and {len(samples['direct'])} direct jobs "
            f"(direct mode: 0 per job once the address is cached; baseline = direct mode's requests per job)"),
        "broker_relay_latency_ratio": entry(
            "broker_relay_latency_ratio", relay / direct, direct * 1e3,
            f"p50 relayed job {relay * 1e3:.2f} ms vs direct {direct * 1e3:.2f} ms, 1 ms latency each way on "
            f"every link (relay crosses two links), alternating rounds; baseline = direct p50 in ms"),
    }
    return {key: value for key, value in results.items() if key in keys}


LEVELS = (1, 8, 64)


def _rate(url: str, buyers: int, per_buyer: int, counter) -> float:
    """Checkouts per second with ``buyers`` concurrent buyers, ``per_buyer`` checkouts each."""
    import labkit

    log = labkit.Trace()

    def buyer(_):
        with labkit.Client("bench-buyer", timeout=30, trace=log) as client:
            client.get(url + "/orders/0")  # connect before the clock starts (answers 404)
            for _ in range(per_buyer):
                key = f"bench-{next(counter)}"
                answer = client.post(url + "/checkout", json={"items": [{"sku": "bench", "qty": 1}]},
                                     headers={"Idempotency-Key": key})
                answer.raise_for_status()

    with concurrent.futures.ThreadPoolExecutor(buyers) as pool:
        start = time.perf_counter()
        list(pool.map(buyer, range(buyers)))
        return buyers * per_buyer / (time.perf_counter() - start)


def _measure(db_url: str | None, plan) -> dict[int, list[float]]:
    import labkit
    from labkit.apps import create, store
    from labkit.db import Database

    rates: dict[int, list[float]] = {level: [] for level in LEVELS}
    counter = itertools.count()
    with Database(db_url) as db:
        store.setup(db.engine, ())
        store.restock(db.engine, "bench", 10**6, price_cents=100)
        trace = labkit.Trace()
        with labkit.serve(create("payment"), name="bench-payment", trace=trace) as payment:
            app = create("orders", db=db, payment_url=payment.url, trace=trace)
            with labkit.serve(app, name="bench-orders", trace=trace) as orders:
                total = plan(256, 64)  # checkouts per measurement, whatever the level
                for round_ in range(plan(3, 1)):
                    order = LEVELS if round_ % 2 == 0 else tuple(reversed(LEVELS))
                    for level in order:
                        rates[level].append(_rate(orders.url, level, max(1, total // level), counter))
    return rates


@measures(("checkout_8_vs_1_sqlite", ">=", 0.5, "x"), ("checkout_64_vs_1_sqlite", ">=", 0.3, "x"),
          ("checkout_8_vs_1_postgresql", ">=", 0.5, "x"), ("checkout_64_vs_1_postgresql", ">=", 0.3, "x"))
def bench_checkout(plan: Plan, keys: set) -> dict:
    """Checkouts per second at 8 and 64 concurrent buyers, against 1 buyer, on SQLite and PostgreSQL.

    The orders and payment services (no links) on one database; every buyer (a thread with
    its own labkit Client) buys one item at a time with a new idempotency key, from a stock
    that never runs out. SQLite serialises every transaction (BEGIN IMMEDIATE), so its ratio
    stays near 1 or below; PostgreSQL locks only the product's row, but every checkout here
    buys the same product, so it too serialises on that row: what the lesson's design costs.
    PostgreSQL is measured where LABKIT_TEST_POSTGRES_URL names a server (in a scratch database).
    """
    results = {}
    backends = {"sqlite": contextlib.nullcontext(None)}
    server = os.environ.get("LABKIT_TEST_POSTGRES_URL")
    if server:
        from labkit.db import scratch

        backends["postgresql"] = scratch(server, prefix="labkit_bench")
    for backend, url_context in backends.items():
        wanted = [k for k in keys if k.endswith(backend)]
        if not wanted:
            continue
        with url_context as url:
            rates = _measure(url, plan)
        one = median(rates[1])
        for level in LEVELS[1:]:
            key = f"checkout_{level}_vs_1_{backend}"
            if key in keys:
                results[key] = entry(key, median(rates[level]) / one, one, (
                    f"{level} concurrent buyers {median(rates[level]):.0f} checkouts/s vs 1 buyer {one:.0f}/s "
                    f"(medians of {len(rates[level])} alternating rounds); orders + payment services on one "
                    f"{backend} database, every checkout one transaction around a payment call; "
                    f"baseline = checkouts/s with 1 buyer"))
    for key in keys - set(results):
        results[key] = not_measured(key, "no PostgreSQL server: set LABKIT_TEST_POSTGRES_URL")
    return results
