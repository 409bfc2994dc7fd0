"""What every benchmark module shares: the metric registry, repeats, medians, side-by-side timing.

A benchmark module registers each function with :func:`measures`, naming the metrics it
measures and their targets; ``labkit.bench`` imports the modules and runs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import time
import warnings
from pathlib import Path

CPUS = os.cpu_count() or 1
ROOT = Path(__file__).resolve().parents[2]

#: metric -> (comparison, target value, unit), in the order the modules register them
METRICS: dict[str, tuple[str, float, str]] = {}
#: metric -> the function that measures it (one function may measure several)
BENCHES: dict[str, object] = {}
#: Metrics measured only when named with ``--only``: the default run leaves them out.
OPT_IN: set[str] = set()
#: Class size for the grading metrics: the issue's class, and the one of ``--quick``.
CLASS_SIZE, CLASS_SIZE_QUICK = 100, 5


def measures(*metrics: tuple[str, str, float, str], opt_in: bool = False):
    """Decorator: ``function(plan, keys) -> {metric: entry(...)}`` measures ``metrics``,
    each given as ``(key, comparison, target, unit)``, such as ``("x_ratio", "<=", 1.5, "x")``."""

    def register(function):
        for key, op, target, unit in metrics:
            if key in METRICS:
                raise ValueError(f"metric {key!r} is registered twice")
            METRICS[key] = (op, target, unit)
            BENCHES[key] = function
            if opt_in:
                OPT_IN.add(key)
        return function

    return register


class Plan:
    """How many repeats: ``quick`` trades precision for time."""

    def __init__(self, quick: bool, class_size: int | None = None):
        self.quick = quick
        self.class_size = class_size or (CLASS_SIZE_QUICK if quick else CLASS_SIZE)

    def __call__(self, full: int, quick: int) -> int:
        return quick if self.quick else full


def median(values) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values, p: float) -> float:
    """The p-th percentile (0-100) by linear interpolation between ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def alternate(sides: dict, rounds: int, per_round: int, budget_s: float, warm_up: int = 0) -> dict:
    """Time each side's call ``per_round`` times a round, the sides alternating.

    Each side is first called ``warm_up`` times, untimed (imports, first connections, caches).
    The order of the sides flips every round, so neither always runs first.
    Stops early (after at least two rounds) when ``budget_s`` seconds are spent.
    Returns side -> list of seconds.
    """
    for call in sides.values():
        for _ in range(warm_up):
            call()
    names = list(sides)
    samples = {name: [] for name in names}
    deadline = time.monotonic() + budget_s
    for round_ in range(rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            call = sides[name]
            samples[name].extend(timed(call) for _ in range(per_round))
        if round_ >= 1 and time.monotonic() > deadline:
            break
    return samples


def entry(key: str, value, baseline=None, note: str = "") -> dict:
    op, limit, unit = METRICS[key]
    target = f"{op} {limit:g}"
    measured = isinstance(value, (int, float)) and value == value
    if measured:
        met = value >= limit if op == ">=" else value <= limit
    else:
        met = False
    return {
        "value": round(value, 4) if measured else None,
        "baseline": round(baseline, 4) if isinstance(baseline, (int, float)) else baseline,
        "target": target,
        "met": bool(met),
        "unit": unit,
        "note": note,
    }


def not_measured(key: str, why: str) -> dict:
    return entry(key, None, None, f"not measured: {why}")


@contextlib.contextmanager
def quiet():
    """No warnings and no stray log lines while measuring."""
    werkzeug_log = logging.getLogger("werkzeug")
    saved = werkzeug_log.level, list(werkzeug_log.handlers), werkzeug_log.propagate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # werkzeug logs each request at INFO and adds a stderr handler when the
        # logger has none: a NullHandler takes the records and shows nothing, so
        # the development server still does its usual work per request.
        werkzeug_log.handlers[:] = [logging.NullHandler()]
        werkzeug_log.propagate = False
        if werkzeug_log.level == logging.NOTSET:
            werkzeug_log.setLevel(logging.INFO)
        try:
            yield
        finally:
            werkzeug_log.setLevel(saved[0])
            werkzeug_log.handlers[:] = saved[1]
            werkzeug_log.propagate = saved[2]


