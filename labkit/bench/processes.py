"""Real processes and a production engine: spawned services against threads, etcd against the hand-made registry."""

from __future__ import annotations

import concurrent.futures
import contextlib
import subprocess
import sys
import time

from .tools import CPUS, Plan, alternate, entry, measures, median, not_measured, timed

#: Milliseconds of CPU each request of the CPU-bound app spends.
WORK_MS = 20


def cpu_app(*, name: str = "cpu", work_ms: float = WORK_MS):
    """A service whose one route burns ``work_ms`` of CPU in Python (it holds the interpreter lock)."""
    from flask import Flask

    app = Flask(name)

    @app.get("/work")
    def work():
        deadline = time.thread_time() + work_ms / 1000
        n = 0
        while time.thread_time() < deadline:
            n += 1
        return {"spins": n}

    return app


@measures(("spawn_ready_ms", "<=", 300.0, "ms"))
def bench_spawn(plan: Plan, keys: set) -> dict:
    """spawn_ready_ms: labkit.spawn to the first answer, beside a bare interpreter's start."""
    import labkit

    log = labkit.Trace()
    bare = [timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True)) for _ in range(plan(7, 3))]
    ready = []
    with labkit.Client("bench", trace=log) as client:
        for _ in range(plan(7, 3)):
            started = time.perf_counter()
            with labkit.spawn("hello", name="bench-spawn", trace=log) as hello:
                client.get(hello.url + "/hello")
                ready.append(time.perf_counter() - started)
    return {"spawn_ready_ms": entry(
        "spawn_ready_ms", median(ready) * 1000, median(bare) * 1000,
        f"median of {len(ready)}: labkit.spawn('hello') until its first answer {median(ready) * 1000:.0f} ms; "
        f"baseline: `python -c pass` {median(bare) * 1000:.0f} ms")}


@measures(("spawned_call_ratio_vs_thread", "<=", 0.5, "x"))
def bench_spawned_call(plan: Plan, keys: set) -> dict:
    """spawned_call_ratio_vs_thread: a call's p50 to a spawned service against the same service in a thread."""
    import labkit
    from labkit.apps import create

    log = labkit.Trace(max_events=10_000)
    with contextlib.ExitStack() as stack:
        threaded = stack.enter_context(labkit.serve(create("hello"), name="bench-threaded", trace=log))
        spawned = stack.enter_context(labkit.spawn("hello", name="bench-spawned", trace=log))
        client = stack.enter_context(labkit.Client("bench", trace=log))
        sides = {"thread": (lambda: client.get(threaded.url + "/hello")),
                 "process": (lambda: client.get(spawned.url + "/hello"))}
        samples = alternate(sides, rounds=plan(12, 4), per_round=plan(40, 20), budget_s=plan(20, 4), warm_up=20)
    p50 = {side: median(times) for side, times in samples.items()}
    return {"spawned_call_ratio_vs_thread": entry(
        "spawned_call_ratio_vs_thread", p50["process"] / p50["thread"], p50["thread"] * 1e6,
        f"p50 GET /hello: spawned {p50['process'] * 1e6:.0f} us, threaded in the kernel {p50['thread'] * 1e6:.0f} us; "
        f"{len(samples['process'])} calls a side, alternating; baseline in us")}


def _calls_per_second(urls: list[str], clients: int, seconds: float) -> float:
    """Calls/s when ``clients`` threads GET /work round robin over ``urls`` for ``seconds``."""
    import labkit

    log = labkit.Trace(max_events=1000)
    deadline = time.monotonic() + seconds

    def client(i: int) -> int:
        done = 0
        with labkit.Client(f"load-{i}", trace=log, timeout=10) as session:
            while time.monotonic() < deadline:
                session.get(urls[(i + done) % len(urls)] + "/work").raise_for_status()
                done += 1
        return done

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.monotonic() - started)


@measures(("replicas_throughput_ratio", ">=", 1.6, "x"))
def bench_replicas(plan: Plan, keys: set) -> dict:
    """replicas_throughput_ratio: 2 spawned replicas against 1 on a CPU-bound route, beside 2 threaded against 1."""
    import labkit

    log = labkit.Trace(max_events=1000)
    seconds, clients = plan(4, 1.5), 4
    with contextlib.ExitStack() as stack:
        app = "labkit.bench.processes:cpu_app"
        spawned = [stack.enter_context(labkit.spawn(app, name=f"bench-cpu-{i}", trace=log)).url for i in range(2)]
        threaded = [stack.enter_context(labkit.serve(cpu_app(), name=f"bench-cpu-thread-{i}", trace=log)).url
                    for i in range(2)]
        rates = {}
        for label, urls in (("spawned", spawned), ("threaded", threaded)):
            one = _calls_per_second(urls[:1], clients, seconds)
            two = _calls_per_second(urls, clients, seconds)
            rates[label] = (one, two)
    (one, two), (t_one, t_two) = rates["spawned"], rates["threaded"]
    return {"replicas_throughput_ratio": entry(
        "replicas_throughput_ratio", two / one, t_two / t_one,
        f"{clients} client threads, {WORK_MS} ms of CPU a request, {CPUS} CPUs: spawned 1 replica {one:.0f}/s, "
        f"2 replicas {two:.0f}/s; threaded in the kernel 1: {t_one:.0f}/s, 2: {t_two:.0f}/s "
        f"(baseline: the threaded ratio)")}


@measures(("etcd_lookup_ratio_vs_registry", "<=", 3.0, "x"))
def bench_etcd_lookup(plan: Plan, keys: set) -> dict:
    """etcd_lookup_ratio_vs_registry: a prefix read from a 3-member etcd against GET on the hand-made registry."""
    import labkit
    from labkit import etcd
    from labkit.apps import create

    try:
        etcd.binary()
    except etcd.EtcdError as error:
        return {"etcd_lookup_ratio_vs_registry": not_measured("etcd_lookup_ratio_vs_registry", str(error))}
    log = labkit.Trace(max_events=1000)
    with contextlib.ExitStack() as stack:
        cluster = stack.enter_context(etcd.Cluster(members=3))
        kv = stack.enter_context(etcd.Etcd(cluster.endpoints))
        registry = stack.enter_context(labkit.serve(create("registry"), name="bench-registry", trace=log))
        client = stack.enter_context(labkit.Client("bench", trace=log))
        for i in range(3):
            kv.put(f"/services/shop/inv-{i}", f"http://127.0.0.1:{5000 + i}")
            client.post(registry.url + "/services/shop/instances",
                        json={"id": f"inv-{i}", "url": f"http://127.0.0.1:{5000 + i}", "ttl_s": 600})
        sides = {"etcd": lambda: kv.get("/services/shop/", prefix=True),
                 "registry": lambda: client.get(registry.url + "/services/shop")}
        samples = alternate(sides, rounds=plan(10, 4), per_round=plan(30, 15), budget_s=plan(15, 4), warm_up=10)
    p50 = {side: median(times) for side, times in samples.items()}
    return {"etcd_lookup_ratio_vs_registry": entry(
        "etcd_lookup_ratio_vs_registry", p50["etcd"] / p50["registry"], p50["registry"] * 1e6,
        f"p50 lookup of 3 instances: etcd (linearizable range read through the JSON gateway, 3 members) "
        f"{p50['etcd'] * 1e6:.0f} us, the hand-made registry (GET /services/shop, labkit Client) "
        f"{p50['registry'] * 1e6:.0f} us; {len(samples['etcd'])} calls a side; baseline in us")}
