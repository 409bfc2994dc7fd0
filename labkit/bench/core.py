"""labkit's own figures: its server, client, links, plots, kernel and grader against their baselines."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from .tools import CPUS, ROOT, Plan, alternate, entry, measures, median, not_measured, percentile, timed

def _env() -> dict:
    """The environment of a process this benchmark starts: it imports labkit from this checkout."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))


#: At most this many submissions are graded with ``--jobs 1``.
SERIAL_SUBMISSIONS = 5  # one of each kind of CLASS_KINDS


def _hello_app():
    from labkit.apps import create

    return create("hello")


@contextlib.contextmanager
def _flask_dev_server(app):
    """Flask's development server as ``flask run`` starts it, in a thread."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="bench-werkzeug", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextlib.contextmanager
def _echo_server():
    """A raw TCP echo server thread and a connected client socket."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    accepted = []

    def run():
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        accepted.append(conn)
        with conn:
            while not stop.is_set():
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                conn.sendall(data)

    thread = threading.Thread(target=run, name="bench-echo", daemon=True)
    thread.start()
    client = socket.create_connection(listener.getsockname())
    try:
        yield client
    finally:
        stop.set()
        client.close()
        listener.close()
        thread.join(5)
        for conn in accepted:
            conn.close()


# -- the measurements ---------------------------------------------------------

@measures(("speedup_vs_flask_requests", ">=", 1.5, "x"), ("ratio_vs_raw_tcp", "<=", 12.0, "x"))
def bench_round_trip(plan: Plan, keys: set) -> dict:
    """speedup_vs_flask_requests and ratio_vs_raw_tcp, from one alternating run."""
    import requests

    import labkit

    log = labkit.Trace()
    message = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(labkit.serve(_hello_app(), name="bench-roundtrip", trace=log))
        client = stack.enter_context(labkit.Client("bench", trace=log))
        url = server.url + "/hello"
        sides = {"labkit": lambda: client.get(url)}
        if "speedup_vs_flask_requests" in keys:
            flask_url = stack.enter_context(_flask_dev_server(_hello_app())) + "/hello"
            sides["flask"] = lambda: requests.get(flask_url)
        if "ratio_vs_raw_tcp" in keys:
            echo = stack.enter_context(_echo_server())

            def raw():
                echo.sendall(message)
                got = 0
                while got < len(message):
                    got += len(echo.recv(65536))

            sides["raw"] = raw
        samples = alternate(sides, rounds=plan(16, 6), per_round=plan(40, 25), budget_s=plan(25, 4), warm_up=20)
    p50 = {name: median(times) for name, times in samples.items()}
    count = len(samples["labkit"])
    results = {}
    if "speedup_vs_flask_requests" in keys:
        results["speedup_vs_flask_requests"] = entry(
            "speedup_vs_flask_requests", p50["flask"] / p50["labkit"], p50["flask"] * 1e6,
            f"p50 GET /hello: labkit {p50['labkit'] * 1e6:.0f} us (serve + Client + trace, "
            f"one session) vs {p50['flask'] * 1e6:.0f} us (werkzeug make_server threaded + "
            f"requests.get, a new connection each); {count} calls a side, alternating; baseline in us")
    if "ratio_vs_raw_tcp" in keys:
        results["ratio_vs_raw_tcp"] = entry(
            "ratio_vs_raw_tcp", p50["labkit"] / p50["raw"], p50["raw"] * 1e6,
            f"p50: labkit GET {p50['labkit'] * 1e6:.0f} us vs raw TCP echo of "
            f"{len(message)} bytes {p50['raw'] * 1e6:.1f} us; {count} calls a side; baseline in us")
    return results


@measures(("link_overhead_us", "<=", 100.0, "us"), ("latency_error_p50_ms", "<=", 2.0, "ms"),
          ("latency_error_p99_ms", "<=", 5.0, "ms"))
def bench_link(plan: Plan, keys: set) -> dict:
    """link_overhead_us and latency_error_p50_ms / _p99_ms."""
    import labkit

    log = labkit.Trace()
    results = {}
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(labkit.serve(_hello_app(), name="bench-link", trace=log))
        client = stack.enter_context(labkit.Client("bench", trace=log))
        link = stack.enter_context(labkit.Link(server, trace=log))
        direct_url, link_url = server.url + "/hello", link.url + "/hello"
        for _ in range(20):
            client.get(direct_url)
            client.get(link_url)
        sides = {"direct": lambda: client.get(direct_url), "link": lambda: client.get(link_url)}
        if "link_overhead_us" in keys:
            samples = alternate(sides, rounds=plan(16, 6), per_round=plan(40, 25), budget_s=plan(20, 4))
            direct, through = median(samples["direct"]), median(samples["link"])
            results["link_overhead_us"] = entry(
                "link_overhead_us", (through - direct) * 1e6, direct * 1e6,
                f"p50 through a Link {through * 1e6:.0f} us minus direct {direct * 1e6:.0f} us "
                f"(same client, {len(samples['link'])} calls a side, alternating); baseline = direct p50 in us")
        if keys & {"latency_error_p50_ms", "latency_error_p99_ms"}:
            link.latency_ms = 50
            sides = {"direct": lambda: client.get(direct_url), "link": lambda: client.get(link_url)}
            client.get(link_url)
            samples = alternate(sides, rounds=plan(12, 4), per_round=plan(6, 5), budget_s=plan(15, 4))
            direct = median(samples["direct"])
            errors = [abs(t - direct - 0.100) * 1000 for t in samples["link"]]
            late = median([t - direct - 0.100 for t in samples["link"]]) * 1000
            note = (f"{len(errors)} calls through a Link with latency_ms=50, each against the direct "
                    f"p50 ({direct * 1e3:.2f} ms) + 100 ms; median signed error {late:+.2f} ms")
            results["latency_error_p50_ms"] = entry(
                "latency_error_p50_ms", percentile(errors, 50), direct * 1e3, note + "; baseline = direct p50 in ms")
            results["latency_error_p99_ms"] = entry(
                "latency_error_p99_ms", percentile(errors, 99), direct * 1e3, note + "; baseline = direct p50 in ms")
    return {key: value for key, value in results.items() if key in keys}


def _throughput(url: str, log, clients: int, each: int, limit_s: float) -> tuple[float, int]:
    """(calls/s, failures, listen overflows, CPU s per call) when ``clients`` threads GET ``url`` ``each`` times."""
    import labkit

    start = threading.Barrier(clients + 1)
    done = [0] * clients
    failed = [0] * clients

    def work(i):
        with labkit.Client(f"c{i}", trace=log, timeout=(5, 10)) as client:
            try:  # connect before the clock starts: measure requests, not a connect storm
                client.get(url)
            except Exception:
                pass
            start.wait()
            for _ in range(each):
                try:
                    client.get(url)
                    done[i] += 1
                except Exception:
                    failed[i] += 1

    threads = [threading.Thread(target=work, args=(i,), name=f"bench-client-{i}", daemon=True)
               for i in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    overflows = _listen_overflows()
    began, cpu = time.perf_counter(), time.process_time()
    deadline = time.monotonic() + limit_s
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    elapsed, cpu = time.perf_counter() - began, time.process_time() - cpu
    return sum(done) / elapsed, sum(failed), _listen_overflows() - overflows, cpu / max(1, sum(done))


def _listen_overflows() -> int:
    """How many connections this machine's listen queues have turned away so far (Linux)."""
    try:
        header, values = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()[:2]]
        return int(dict(zip(header, values))["ListenOverflows"])
    except (OSError, ValueError, KeyError):
        return 0


@measures(("link_throughput_ratio", ">=", 0.8, "x"))
def bench_throughput(plan: Plan, keys: set) -> dict:
    """link_throughput_ratio: 200 concurrent clients through a Link against direct."""
    import labkit

    log = labkit.Trace()
    clients, each = 200, plan(5, 2)
    rates = {"direct": [], "link": []}
    cpu = {"direct": [], "link": []}
    failures = overflows = 0
    with labkit.serve(_hello_app(), name="bench-throughput", trace=log) as server, \
            labkit.Link(server, trace=log) as link:
        urls = {"direct": server.url + "/hello", "link": link.url + "/hello"}
        deadline = time.monotonic() + plan(40, 10)
        for round_ in range(plan(4, 2)):
            for side in ("direct", "link") if round_ % 2 == 0 else ("link", "direct"):
                rate, failed, overflowed, cpu_per_call = _throughput(urls[side], log, clients, each, limit_s=30)
                rates[side].append(rate)
                cpu[side].append(cpu_per_call)
                failures += failed
                overflows += overflowed
            if time.monotonic() > deadline:
                break
    direct, through = median(rates["direct"]), median(rates["link"])
    return {"link_throughput_ratio": entry(
        "link_throughput_ratio", through / direct, direct,
        f"{clients} threads x {each} GETs, each thread its own Client; through a Link "
        f"{through:.0f} req/s vs direct {direct:.0f} req/s (medians of {len(rates['link'])} "
        f"alternating runs; process CPU per call {median(cpu['link']) * 1e6:.0f} us vs "
        f"{median(cpu['direct']) * 1e6:.0f} us; {failures} failed calls; {overflows} connections turned away by a full "
        f"listen queue while timed, each costing its caller a 1 s SYN retry); every client "
        f"connects once before the clock starts; clients, link and server share one process "
        f"and its GIL, so this compares CPU per request and GIL scheduling, not the network; "
        f"baseline = direct req/s")}


_IMPORT_SNIPPET = "import time; t = time.perf_counter(); import {}; print(time.perf_counter() - t)"


@measures(("import_ratio", "<=", 1.4, "x"))
def bench_import(plan: Plan, keys: set) -> dict:
    """import_ratio: a fresh interpreter importing labkit against flask + requests."""
    env = _env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)

    def import_time(modules):
        out = subprocess.run([sys.executable, "-c", _IMPORT_SNIPPET.format(modules)], env=env,
                             cwd=str(ROOT), capture_output=True, text=True, timeout=60, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    import_time("labkit"), import_time("flask, requests")  # warm the disk cache and .pyc files
    times = {"labkit": [], "flask": []}
    for round_ in range(plan(9, 3)):
        for side in ("labkit", "flask") if round_ % 2 == 0 else ("flask", "labkit"):
            times[side].append(import_time("labkit" if side == "labkit" else "flask, requests"))
    labkit_s, flask_s = median(times["labkit"]), median(times["flask"])
    return {"import_ratio": entry(
        "import_ratio", labkit_s / flask_s, flask_s * 1e3,
        f"median import time in a fresh interpreter: labkit {labkit_s * 1e3:.0f} ms vs flask + requests "
        f"{flask_s * 1e3:.0f} ms ({len(times['labkit'])} runs each, alternating); baseline in ms")}


@measures(("serve_ready_ms", "<=", 10.0, "ms"), ("serve_stop_ms", "<=", 60.0, "ms"))
def bench_serve(plan: Plan, keys: set) -> dict:
    """serve_ready_ms and serve_stop_ms, beside werkzeug's make_server + serve_forever."""
    from werkzeug.serving import make_server

    import labkit

    log = labkit.Trace()
    app = _hello_app()
    times = {"ready": [], "stop": [], "wz_ready": [], "wz_stop": []}

    def labkit_cycle():
        with labkit.Client("bench", trace=log) as client:
            started = time.perf_counter()
            server = labkit.serve(app, name="bench-serve", trace=log)
            times["ready"].append(time.perf_counter() - started)
            try:
                client.get(server.url + "/hello")  # the client keeps its connection open
            finally:
                times["stop"].append(timed(server.stop))

    def werkzeug_cycle():
        started = time.perf_counter()
        server = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        times["wz_ready"].append(time.perf_counter() - started)

        def stop():
            server.shutdown()
            server.server_close()
            thread.join(5)

        times["wz_stop"].append(timed(stop))

    deadline = time.monotonic() + plan(20, 6)
    for round_ in range(plan(20, 8)):
        for cycle in (labkit_cycle, werkzeug_cycle) if round_ % 2 == 0 else (werkzeug_cycle, labkit_cycle):
            cycle()
        if round_ >= 2 and time.monotonic() > deadline:
            break
    n = len(times["ready"])
    return {
        "serve_ready_ms": entry(
            "serve_ready_ms", median(times["ready"]) * 1e3, median(times["wz_ready"]) * 1e3,
            f"median of {n}: labkit.serve(app) until it returns; baseline = werkzeug make_server "
            f"+ a serve_forever thread started, in ms"),
        "serve_stop_ms": entry(
            "serve_stop_ms", median(times["stop"]) * 1e3, median(times["wz_stop"]) * 1e3,
            f"median of {n}: server.stop() after one GET from a client that is still open; "
            f"baseline = werkzeug shutdown() + server_close() + join (poll interval 0.5 s), in ms"),
    }


def _synthetic_trace(events: int):
    """A trace of ``events`` events: clients calling services, some through faulty links."""
    import random

    import labkit

    rng = random.Random(7)
    log = labkit.Trace()
    clients = ["alice", "bob", "carol"]
    services = ["shop", "catalogue", "payments"]
    n = 0
    while n < events:
        src, dst = rng.choice(clients), rng.choice(services)
        trace_id, span_id = f"{n:032x}", f"{n:016x}"
        fields = dict(method=rng.choice(["GET", "POST"]), path=rng.choice(["/items", "/buy", "/pay"]),
                      trace_id=trace_id, span_id=span_id)
        fate = rng.random()
        log.record("send", src, dst, **fields)
        if fate < 0.05:
            log.record("dropped", src, dst, trace_id=trace_id)
            log.record("error", dst, src, error="timeout", **fields)
            n += 3
            continue
        if fate < 0.2:
            log.record("delayed", src, dst, trace_id=trace_id, detail="50 ms")
            n += 1
        log.record("receive", src, dst, **fields)
        log.record("reply", dst, src, status=200, **fields)
        log.record("response", dst, src, status=200, **fields)
        n += 4
    return labkit.Trace(log.events()[:events], start=log.start)


@measures(("sequence_2000_s", "<=", 1.0, "s"))
def bench_sequence(plan: Plan, keys: set) -> dict:
    """sequence_2000_s: plots.sequence on 2,000 events, then rendering the figure to PNG."""
    key = "sequence_2000_s"
    if not (ROOT / "labkit" / "plots.py").exists():
        return {key: not_measured(key, "labkit/plots.py does not exist yet")}
    started = time.perf_counter()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        from labkit import plots
    except Exception as exc:  # plots.py is being written: report, do not crash the bench
        return {key: not_measured(key, f"labkit.plots does not import ({type(exc).__name__}: {exc})")}
    import_s = time.perf_counter() - started
    log = _synthetic_trace(2000)

    def draw():
        result = plots.sequence(log)
        figure = result if hasattr(result, "savefig") else getattr(result, "figure", None) or plt.gcf()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        plt.close(figure)
        return buffer.tell()

    try:
        size = draw()  # warm up: fonts, caches
        times = [timed(draw) for _ in range(plan(3, 1))]
    except Exception as exc:
        plt.close("all")
        return {key: not_measured(key, f"plots.sequence failed ({type(exc).__name__}: {exc})")}
    return {key: entry(
        key, median(times), None,
        f"median of {len(times)}: plots.sequence(trace) with 2,000 synthetic events "
        f"(3 clients, 3 services, drops and delays) + savefig to PNG ({size // 1024} KiB); "
        f"importing matplotlib and labkit.plots took {import_s:.2f} s more, not counted")}


# Run in a real ipykernel: a thread records one exchange (4 events) every 20 ms, 200 events
# a second, for ``round_s`` seconds; with the widget on, a LiveSequence follows the trace and
# sends its updates on the kernel's comm (no browser is needed for the kernel's side of it).
_LIVE_ROUNDS = """
import json, threading, time
import labkit
from labkit.widgets import LiveSequence

def traffic(trace, seconds):
    start, n = time.perf_counter(), 0
    while (due := start + n * 0.02) < start + seconds:
        time.sleep(max(0.0, due - time.perf_counter()))
        tid, sid = f"{n:032x}", f"{n:016x}"
        for kind, src, dst in (("send", "alice", "hello"), ("receive", "alice", "hello"),
                               ("reply", "hello", "alice"), ("response", "hello", "alice")):
            trace.record(kind, src, dst, trace_id=tid, span_id=sid, method="GET", path="/hello",
                         status=None if kind in ("send", "receive") else 200)
        n += 1
    return n

def side(live, seconds):
    trace = labkit.Trace(max_events=20_000)
    widget = LiveSequence(trace, max_exchanges=300) if live else None
    cpu, wall = time.process_time(), time.perf_counter()
    sent = traffic(trace, seconds)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    lag = 0.0
    if widget is not None:
        lag = trace.events()[-1].t - widget._latest  # how far behind the newest event it was
        widget.close()
    return {"cpu": cpu, "wall": wall, "events": 4 * sent, "lag": lag,
            "held": widget.exchanges if widget is not None else 0}

rounds = []
for i in range(ROUNDS):
    order = (False, True) if i % 2 == 0 else (True, False)
    rounds.append({str(live): side(live, ROUND_S) for live in order})
print(json.dumps(rounds))
"""


@measures(("live_sequence_cpu_pct", "<=", 10.0, "%"))
def bench_live_sequence(plan: Plan, keys: set) -> dict:
    """live_sequence_cpu_pct: the kernel's CPU a live sequence diagram uses at 200 events per second."""
    key = "live_sequence_cpu_pct"
    try:
        from jupyter_client.manager import start_new_kernel
    except ImportError as exc:
        return {key: not_measured(key, f"jupyter_client is not installed ({exc})")}
    rounds, round_s = plan(6, 2), plan(10, 3)
    env = _env()
    printed: list[str] = []

    def collect(message):
        if message["msg_type"] == "stream" and message["content"]["name"] == "stdout":
            printed.append(message["content"]["text"])

    manager, kernel = start_new_kernel(kernel_name="python3", env=env, cwd=str(ROOT),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        code = _LIVE_ROUNDS.replace("ROUNDS", str(rounds)).replace("ROUND_S", str(round_s))
        reply = kernel.execute_interactive(code, timeout=rounds * round_s * 2 + 60, output_hook=collect)
    finally:
        kernel.stop_channels()
        manager.shutdown_kernel(now=True)
    if reply["content"]["status"] != "ok":
        return {key: not_measured(key, f"the kernel raised {reply['content'].get('ename')}")}
    measured = json.loads("".join(printed))
    extra = [(r["True"]["cpu"] - r["False"]["cpu"]) / r["True"]["wall"] * 100 for r in measured]
    base = [r["False"]["cpu"] / r["False"]["wall"] * 100 for r in measured]
    rate = median([r["True"]["events"] / r["True"]["wall"] for r in measured])
    lag = max(r["True"]["lag"] for r in measured)
    held = max(r["True"]["held"] for r in measured)
    return {key: entry(
        key, median(extra), median(base),
        f"kernel CPU with a LiveSequence following {rate:.0f} events/s minus the same traffic without it, "
        f"over wall time; median of {len(extra)} alternating rounds of {round_s} s ({rounds * round_s} s with "
        f"the widget); at most {lag:.2f} s behind the newest event, {held} exchanges held (max 300); "
        f"baseline = CPU % of the traffic alone")}


_FALLBACK_CELLS = [
    "import labkit\nfrom labkit.apps import create\nlog = labkit.Trace()",
    "hello = labkit.serve(create('hello'), name='hello', trace=log)\n"
    "link = labkit.Link(hello, latency_ms=5, trace=log)\n"
    "alice = labkit.Client('alice', trace=log)",
    "[alice.get(link.url + '/hello').status_code for _ in range(20)]",
    "labkit.sequence(log)",
    "alice.close(); link.close(); hello.stop()",
]


@measures(("kernel_rss_mb", "<=", 300.0, "MB"))
def bench_kernel(plan: Plan, keys: set) -> dict:
    """kernel_rss_mb: peak RSS (VmHWM) of a kernel that ran notebook 01."""
    key = "kernel_rss_mb"
    try:
        import nbformat
        from nbclient import NotebookClient
    except ImportError as exc:
        return {key: not_measured(key, f"nbclient is not installed ({exc})")}
    path = ROOT / "solutions" / "01_client_server.ipynb"
    if path.exists():
        notebook, label = nbformat.read(str(path), as_version=4), "solutions/01_client_server.ipynb"
        cwd = path.parent
    else:
        notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in _FALLBACK_CELLS])
        label = ("FALLBACK: solutions/01_client_server.ipynb does not exist yet; a small notebook "
                 "doing serve + link + client + a sequence plot")
        cwd = ROOT
        if not (ROOT / "labkit" / "plots.py").exists():
            notebook.cells = [c for c in notebook.cells if "sequence" not in c.source]
            label += " (without the plot: labkit/plots.py does not exist yet)"
    env = _env()
    client = NotebookClient(notebook, timeout=plan(120, 60), kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(cwd)}})
    started = time.perf_counter()
    try:
        # The kernel's own stdout and stderr (its startup warnings) go nowhere: the
        # table is the only output. What the cells print arrives through nbclient.
        with client.setup_kernel(env=env, cwd=str(cwd), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL):
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
            peak_mb, now_mb, _ = _process_usage(client.km.provisioner.pid)
    except Exception as exc:
        return {key: not_measured(key, f"the kernel did not run the notebook ({type(exc).__name__}: {exc})")}
    errors = sum(1 for cell in notebook.cells if cell.cell_type == "code"
                 for output in cell.get("outputs", []) if output.get("output_type") == "error")
    return {key: entry(
        key, peak_mb, None,
        f"{label}: VmHWM of the ipykernel process ({sys.executable}) before shutdown; VmRSS then "
        f"{now_mb:.0f} MB; {errors} cell(s) raised; ran in {time.perf_counter() - started:.1f} s")}


def _process_usage(pid: int) -> tuple[float, float, float]:
    """(peak RSS MB, RSS MB now, CPU seconds) of a live process, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024,
            (int(stat[11]) + int(stat[12])) / ticks)


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


@measures(("notebook_kernel_peak_mb", "<=", 400.0, "MB"), ("notebook_kernel_cpu_s", "<=", 120.0, "s"), opt_in=True)
def bench_notebook_kernels(plan: Plan, keys: set) -> dict:
    """What one student needs: each solution notebook run top to bottom in a fresh kernel, then
    the kernel's peak memory (with its examiner's) and the CPU seconds both used."""
    import nbformat
    from nbclient import NotebookClient

    paths = sorted((ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))[:plan(99, 2)]
    rows = []
    for path in paths:
        notebook = nbformat.read(str(path), as_version=4)
        client = NotebookClient(notebook, timeout=600, kernel_name="python3", allow_errors=True,
                                resources={"metadata": {"path": str(path.parent)}})
        with client.setup_kernel(env=_env(), cwd=str(path.parent), stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL):
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
            pid = client.km.provisioner.pid
            peak, _, cpu = _process_usage(pid)
            for child in _children(pid):  # the examiner its checks started, if any
                child_peak, _, child_cpu = _process_usage(child)
                peak, cpu = peak + child_peak, cpu + child_cpu
        rows.append((path.stem[:2], peak, cpu))
    each = ", ".join(f"{n}: {mb:.0f} MB {s:.0f} s" for n, mb, s in rows)
    note = (f"each solution notebook run top to bottom in a fresh kernel (nbclient); peak RSS (VmHWM) of the "
            f"kernel plus the examiner its checks start, and their CPU seconds (user + system), read from /proc "
            f"before shutdown: {each}; the value is the largest")
    results = {}
    if "notebook_kernel_peak_mb" in keys:
        results["notebook_kernel_peak_mb"] = entry("notebook_kernel_peak_mb", max(r[1] for r in rows), None, note)
    if "notebook_kernel_cpu_s" in keys:
        results["notebook_kernel_cpu_s"] = entry("notebook_kernel_cpu_s", max(r[2] for r in rows), None, note)
    return results


# -- grading (opt-in) ---------------------------------------------------------

NOTEBOOK_01 = "01_client_server"


@contextlib.contextmanager
def _scratch(prefix: str):
    """A temporary folder, removed afterwards whatever happened."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _plain_nbval(notebook: Path, cell_timeout: float, limit_s: float) -> float:
    """Seconds of one ``python -m pytest --nbval`` run of ``notebook``, from a copy in a folder of its own.

    The folder holds an empty pytest.ini, so the repo's pytest configuration (testpaths,
    addopts) plays no part. Every process of the run is killed afterwards.
    """
    import shutil
    import uuid

    from labkit.grading import grade

    with _scratch("labkit-bench-nbval-") as folder:
        (folder / "pytest.ini").write_text("[pytest]\n")
        copy = folder / notebook.name
        shutil.copyfile(notebook, copy)
        token = uuid.uuid4().hex  # grade._kill_run sweeps up whatever carries it
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LABKIT_", "JPY_"))}
        env.update(LABKIT_GRADE_RUN=token,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        command = [sys.executable, "-m", "pytest", "-c", str(folder / "pytest.ini"), "--rootdir", str(folder),
                   "-p", "no:cacheprovider", "--nbval", "--nbval-current-env",
                   f"--nbval-cell-timeout={cell_timeout:g}", "-q", "--tb=line", "--color=no", copy.name]
        with open(folder / "pytest.log", "wb+") as log:
            started = time.perf_counter()
            process = subprocess.Popen(command, cwd=folder, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            try:
                code = process.wait(timeout=limit_s)
            except subprocess.TimeoutExpired:
                code = None
            finally:
                seconds = time.perf_counter() - started
                grade._kill_run(token, process)
            if code != 0:
                log.seek(0)
                tail = " | ".join(log.read().decode("utf-8", "replace").strip().splitlines()[-3:])
                raise RuntimeError(f"plain nbval run of {notebook.name} "
                                   f"{'timed out' if code is None else f'exited {code}'}: {tail}")
    return seconds


#: The kinds of submission in a benchmark class, in turn: what a real class hands in.
CLASS_KINDS = ("solution", "solution", "student edition", "wrong", "hostile")

_WRONG_01 = {"q1.1": "def fetch_or_none(client, url):\n    return client.get(url).json()\n",
             "q1.2": "def order_totals(client, base_url, order_ids):\n    return {}\n",
             "q1.3": "def next_messages(client, base_url, after):\n    return []\n"}
_HOSTILE_01 = {"q1.1": "import os\nos._exit(3)\n",  # kills its kernel: the grader runs the notebook again
               "q1.2": "import labkit\nlabkit.check = lambda *a, **k: print('q1.2 passed')\n"
                       "def order_totals(client, base_url, order_ids):\n    return {}\n",
               "q1.3": "def next_messages(client, base_url, after):\n    raise SystemExit\n"}


def _write_class(folder: Path, size: int) -> list[Path]:
    """A class of notebook 01: solutions, the student edition, wrong answers and hostile ones, in turn."""
    import nbformat

    from labkit.grading import release

    solution = nbformat.read(str(ROOT / "solutions" / f"{NOTEBOOK_01}.ipynb"), as_version=4)
    student = nbformat.read(str(ROOT / "notebooks" / f"{NOTEBOOK_01}.ipynb"), as_version=4)
    paths = []
    for number in range(size):
        kind = CLASS_KINDS[number % len(CLASS_KINDS)]
        nb = solution if kind == "solution" else nbformat.from_dict(student)
        for cell in nb.cells if kind in ("wrong", "hostile") else ():
            marks = release.role(cell)
            if marks and marks[1] == "answer":
                cell.source = (_WRONG_01 if kind == "wrong" else _HOSTILE_01)[marks[0]]
        path = folder / f"student{number + 1:03d}" / f"{NOTEBOOK_01}.ipynb"
        path.parent.mkdir()
        nbformat.write(nb, str(path))
        paths.append(path)
    return paths


@measures(("grading_ratio", "<=", 1.2, "x"), ("grading_speedup", ">=", 1.7, "x"),
          ("grading_shards_extra_pct", "<=", 5.0, "%"), opt_in=True)
def bench_grading(plan: Plan, keys: set) -> dict:
    """grading_ratio, grading_speedup and grading_shards_extra_pct: grading a mixed class of notebook 01."""
    from labkit.grading import grade, results as outputs

    solutions = ROOT / "solutions"
    notebook = solutions / f"{NOTEBOOK_01}.ipynb"
    if not notebook.exists():
        return {key: not_measured(key, f"{notebook.relative_to(ROOT)} does not exist") for key in keys}
    size = plan.class_size
    serial = min(size, SERIAL_SUBMISSIONS)
    jobs = 2
    options = grade.Options(expect=NOTEBOOK_01)
    n_questions = len(grade.load_solutions(solutions)[NOTEBOOK_01].questions)
    outcomes = {"full marks": 0, "graded": 0, "runs": []}

    def grade_class(paths, jobs_: int, shard=None) -> tuple[float, list[float], list]:
        """(wall-clock seconds, seconds at which each submission finished, records) for grading ``paths``."""
        finished = []
        started = time.perf_counter()
        records = grade.grade(paths, solutions=solutions, jobs=jobs_, options=options, shard=shard,
                              progress=lambda *args: finished.append(time.perf_counter() - started))
        seconds = time.perf_counter() - started
        outcomes["runs"].append(f"{len(finished)} with --jobs {jobs_}" + (f" --shard {shard[0]}/{shard[1]}" if shard else ""))
        by_submission: dict[str, list] = {}
        for record in records:
            by_submission.setdefault(record.submission, []).append(record)
        for rs in by_submission.values():
            outcomes["graded"] += 1
            outcomes["full marks"] += len(rs) == n_questions and all(r.passed for r in rs)
        return seconds, finished, records

    with _scratch("labkit-bench-class-") as folder:
        paths = _write_class(folder, size)
        mix = ", ".join(f"{sum(CLASS_KINDS[i % len(CLASS_KINDS)] == k for i in range(size))} {k}"
                        for k in dict.fromkeys(CLASS_KINDS))
        # Alternating: half the serial submissions, the baseline, the other half, and (not
        # quick) the baseline again, so both sides share the machine's state; the first
        # grading run pays for the cold caches, which counts against the grader.
        first = paths[:max(1, serial // 2)]
        second = paths[len(first):serial]
        serial_s, finished, baseline = 0.0, [], []
        for step in (first, "baseline", second, "baseline"):
            if step == "baseline":
                if "grading_ratio" in keys and (not baseline or not plan.quick):
                    baseline.append(_plain_nbval(notebook, options.cell_timeout, options.time_limit))
            elif step:
                seconds, ends, _ = grade_class(step, 1)
                finished.extend(serial_s + end for end in ends)
                serial_s += seconds
        per_serial = serial_s / serial
        spans = [b - a for a, b in zip([0.0] + finished[:-1], finished)]
        results = {}
        if "grading_ratio" in keys:
            plain = median(baseline)
            results["grading_ratio"] = entry(
                "grading_ratio", per_serial / plain, plain,
                f"grade --jobs 1 on the first {serial} of a class of {size} submissions of {NOTEBOOK_01} "
                f"({mix}): {per_serial:.1f} s per submission ({serial_s:.1f} s in all; "
                f"each {min(spans):.1f}-{max(spans):.1f} s, including the grader's own overhead and the reruns "
                f"after a killed kernel), against the median of {len(baseline)} plain run(s) of python -m pytest "
                f"--nbval --nbval-current-env on the solution edition from a copy in an empty folder "
                f"({', '.join(f'{b:.1f}' for b in baseline)} s), alternating with the grading runs; baseline in s")
        if {"grading_speedup", "grading_shards_extra_pct"} & keys:
            parallel_s, _, whole = grade_class(paths, jobs)
        if "grading_speedup" in keys:
            results["grading_speedup"] = entry(
                "grading_speedup", per_serial / (parallel_s / size), per_serial,
                f"grade --jobs {jobs} on all {size} submissions ({mix}): {parallel_s:.1f} s, "
                f"{parallel_s / size:.1f} s per submission, against --jobs 1 on the first {serial} (one of each "
                f"kind, in the class's proportions): {per_serial:.1f} s per submission (the ratio of the "
                f"throughputs); {CPUS} CPUs; baseline = --jobs 1 s per submission")
        if "grading_shards_extra_pct" in keys:
            parts, shard_s = [], []
            for index in range(2):
                seconds, _, records = grade_class(paths, jobs, shard=(index, 2))
                parts.append(records)
                shard_s.append(seconds)
            started = time.perf_counter()
            merged = outputs.merge(parts)
            merge_s = time.perf_counter() - started
            strip = lambda rs: [{k: v for k, v in vars(r).items() if k != "seconds"} for r in rs]
            same = strip(merged) == strip(whole)
            total = sum(shard_s) + merge_s
            results["grading_shards_extra_pct"] = entry(
                "grading_shards_extra_pct", (total / parallel_s - 1) * 100, parallel_s,
                f"the class graded as two shards one after the other (--shard 0/2 and 1/2, --jobs {jobs}: "
                f"{shard_s[0]:.1f} s and {shard_s[1]:.1f} s) and merged ({merge_s * 1000:.0f} ms), against one "
                f"run over the whole class ({parallel_s:.1f} s); the merged records "
                f"{'equal' if same else 'DIFFER FROM'} the one run's (the times checks took aside); "
                f"baseline = the one run in s")
    note = (f"; {outcomes['full marks']}/{outcomes['graded']} gradings ({', '.join(outcomes['runs'])}) "
            f"scored full marks ({n_questions} questions)")
    for result in results.values():
        result["note"] += note
    return results


