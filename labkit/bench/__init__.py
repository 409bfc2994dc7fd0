"""Benchmark: how labkit compares with what a student would otherwise use.

    python -m labkit bench                      the full run (about two minutes)
    python -m labkit bench --quick              fewer repeats (about half a minute)
    python -m labkit bench --only serve_ready_ms,link_overhead_us --json bench.json
    python -m labkit bench --only grading_ratio,grading_speedup,grading_shards_extra_pct [--class-size N]
                                                the grading metrics: opt-in, minutes long
    python -m labkit bench --only notebook_kernel_peak_mb,notebook_kernel_cpu_s
                                                what a student's kernel needs, notebook by notebook

Each figure is measured in the same run as its baseline, in alternating rounds
(labkit, baseline, baseline, labkit, ...) so that a busy machine slows both sides
alike, and is reported as a median. Every server binds 127.0.0.1 at a port the
system picks, every server, link, client and thread started here is stopped, and
nothing is printed but the final table.

Each module of this package measures one part and registers its metrics with their
targets (``tools.measures``): ``core`` labkit itself, ``styles`` the services of the
architecture notebooks, ``features`` those of the feature notebooks. The metrics:

speedup_vs_flask_requests  labkit server + Client + trace against Flask's development
                           server and a plain ``requests.get`` (p50 of a GET)
ratio_vs_raw_tcp           labkit's GET against a raw TCP echo round trip
link_overhead_us           what a Link without faults adds to a round trip
latency_error_p50/p99_ms   how far a 50 ms-each-way Link is from 100 ms extra
link_throughput_ratio      200 concurrent clients through a Link against direct
import_ratio               ``import labkit`` against ``import flask, requests``
serve_ready_ms             labkit.serve(app) until it accepts
serve_stop_ms              server.stop()
sequence_2000_s            plots.sequence on 2,000 events, rendered to PNG
live_sequence_cpu_pct      the kernel's CPU a live sequence diagram takes to follow 200 events/s
                           (traffic with the widget minus the same traffic without it)
kernel_rss_mb              peak memory of a Jupyter kernel that ran notebook 01
notebook_kernel_peak_mb    peak memory of a kernel (and its examiner) per notebook (opt-in)
notebook_kernel_cpu_s      CPU seconds a student's kernel uses per notebook (opt-in)
gossip_rounds_ratio        rounds until news written at one of 8 peers reaches all, against
                           log2 N + ln N, the rounds push-only rumour spreading needs
broker_requests_per_message_relay
                           requests the broker handles per message relayed through it
broker_relay_latency_ratio a relayed job's p50 against a direct one (1 ms per link each way)
checkout_{8,64}_vs_1_{sqlite,postgresql}
                           checkouts/s with 8 and 64 concurrent buyers against 1, on one
                           database (PostgreSQL where LABKIT_TEST_POSTGRES_URL names one)
styles_crash_answered_{client_server,peer_to_peer,broker,services}
                           notebook 09: the share of requests answered while each variant's weak
                           node (the server, one peer, the broker, the writing service) is killed
styles_throughput_2_vs_1_{client_server,peer_to_peer,broker,services}
                           notebook 09: requests answered per second with 2 nodes holding data
                           against 1, every process on the same machine
lookup_overhead_ratio      a call that asks the registry first (GET /services/S, then the
                           instance) against a call to an instance already known
failover_extra_ms          what a call pays when its first pick refuses the connection and
                           it moves on to the next instance, against a healthy first pick
retry_success_ratio        payments through with retries (backoff, jitter, idempotency key)
                           over without, against a service answering 30% 503
retry_load_ratio           requests the service received per payment, with retries over without
jitter_finish_speedup      a retry storm into a recovering service: seconds until the last of
                           40 customers paid with backoff alone, over backoff with full jitter
concurrency_scaling_link   the counter service's throughput with 8 concurrent clients over 1,
                           through a Link with 20 ms each way: waits overlap (Little's law)
concurrency_scaling_direct the same with no Link: CPU work under one GIL, so near 1

Opt-in metrics (``OPT_IN``): measured only when named with ``--only``, never by the
default run, because they run whole notebooks (grading runs notebook 01 in full once per
submission, about half a minute each):

notebook_kernel_peak_mb    the largest, over the solution notebooks run top to bottom in a
                           fresh kernel each, of the kernel's peak RSS plus its examiner's
notebook_kernel_cpu_s      the largest CPU seconds (user + system) such a kernel and its
                           examiner used; the note gives every notebook's two figures
grading_ratio              seconds per submission when ``python -m labkit grade --jobs 1``
                           grades a class of notebook 01, against a plain ``pytest --nbval``
                           run of the solution edition from a copy in an empty folder
                           (median of 2 runs, 1 with ``--quick``, taken between the grading runs)
grading_speedup            per-submission time with ``--jobs 1`` over that with ``--jobs 2``
grading_shards_extra_pct   the class graded as two shards and merged, against one run: the
                           extra time in %, and whether the records are the same

``--class-size N`` (default 100; 5 with ``--quick``) is the class: in turn two solutions,
the student edition, wrong answers and hostile ones (one kills its kernel, one replaces
``labkit.check``), as ``CLASS_KINDS`` says. ``--jobs 2`` grades all N; ``--jobs 1``
grades the first 5 (one of each kind), since the time per submission is what the
figures need.
"""


from __future__ import annotations

import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

from . import core, tools
from . import processes, styles, features  # noqa: F401, I001  (they register their metrics, in the notebooks' order)
from .tools import CLASS_SIZE, CLASS_SIZE_QUICK, METRICS, OPT_IN

SERIAL_SUBMISSIONS = core.SERIAL_SUBMISSIONS


def selected(keys=None, class_size: int | None = None) -> list[str]:
    """The metrics a run measures: ``keys`` checked, or by default every metric but the opt-in ones."""
    keys = [key for key in METRICS if key not in OPT_IN] if not keys else list(dict.fromkeys(keys))
    unknown = [key for key in keys if key not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if class_size is not None:
        if class_size < 1:
            raise ValueError(f"--class-size must be at least 1, not {class_size}")
        if not OPT_IN & set(keys):
            raise ValueError(f"--class-size applies only to {', '.join(sorted(OPT_IN))}; name them with --only")
    return keys


def run(keys=None, *, quick: bool = False, class_size: int | None = None) -> dict:
    """Measure ``keys`` (default: every metric but the opt-in ones); return the report as a dict.

    ``class_size`` is the class the grading metrics grade (default 100, or 5 when quick).
    """
    keys = selected(keys, class_size)
    plan = tools.Plan(quick, class_size)
    wanted = set(keys)
    results: dict[str, dict] = {}
    started = time.perf_counter()
    with tools.quiet():
        for bench in dict.fromkeys(tools.BENCHES[key] for key in keys):  # each once, in order
            mine = wanted & {key for key, b in tools.BENCHES.items() if b is bench}
            try:
                results.update(bench(plan, mine))
            except Exception as exc:  # one broken measurement must not hide the others
                for key in mine:
                    results[key] = tools.not_measured(key, f"{bench.__name__} failed: {type(exc).__name__}: {exc}")
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        },
        "quick": quick,
        **({"class_size": plan.class_size} if any(k.startswith("grading_") for k in wanted) else {}),
        "seconds": round(time.perf_counter() - started, 1),
        **{key: results[key] for key in keys},
    }


def _format(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def table(report: dict) -> str:
    """The report as a plain-text table."""
    rows = [("metric", "measured", "baseline", "target", "met?")]
    for key in (key for key in METRICS if key in report):
        entry = report[key]
        unit = entry["unit"]
        measured = "not measured" if entry["value"] is None else f"{_format(entry['value'])} {unit}"
        met = "yes" if entry["met"] else "NO" if entry["value"] is not None else "-"
        rows.append((key, measured, _format(entry["baseline"]), f"{entry['target']} {unit}", met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    machine = report["machine"]
    lines.append(f"\n{machine['cpu_count']} CPUs, Python {machine['python']}, {report['date']}, "
                 f"{report['seconds']} s{' (quick)' if report['quick'] else ''}; notes in the JSON")
    if "class_size" in report:
        lines.append(f"grading metrics: a class of {report['class_size']} submissions of {core.NOTEBOOK_01} "
                     f"({', '.join(core.CLASS_KINDS)}, in turn)")
    else:
        grading = [key for key in METRICS if key in OPT_IN and key.startswith("grading_")]
        others = [key for key in METRICS if key in OPT_IN and key not in grading]
        lines.append(f"opt-in: --only {','.join(grading)} [--class-size N] (the grader), "
                     f"--only {','.join(others)} (a student's kernel)")
    return "\n".join(lines)


def main(args) -> int:
    keys = [key.strip() for key in (args.only or "").split(",") if key.strip()]
    try:
        report = run(keys, quick=args.quick, class_size=getattr(args, "class_size", None))
    except ValueError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    print(table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


def add_parser(commands) -> None:
    """Add the ``bench`` subcommand to the command line's subparsers."""
    parser = commands.add_parser("bench", help="measure labkit against its baselines",
                                 description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    parser.add_argument("--quick", action="store_true", help="fewer repeats (about half a minute)")
    parser.add_argument("--only", metavar="KEYS",
                        help=f"comma-separated metrics to measure (default: all but the opt-in "
                             f"{', '.join(key for key in METRICS if key in OPT_IN)}): {', '.join(METRICS)}")
    parser.add_argument("--class-size", type=int, metavar="N", default=None,
                        help=f"submissions the grading metrics grade (default {CLASS_SIZE}; "
                             f"{CLASS_SIZE_QUICK} with --quick); --jobs 1 grades min(N, {SERIAL_SUBMISSIONS}) of them")
    parser.set_defaults(run=main)
