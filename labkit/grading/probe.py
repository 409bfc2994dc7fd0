"""A pytest plugin the grader loads into its nbval run (``-p labkit.grading.probe``).

It writes one JSON line per notebook cell nbval ran to the file named by the
environment variable ``LABKIT_PROBE_OUT``: the code cell's number (as nbval counts
them), when it started and ended, nbval's outcome, what went wrong (``timeout``,
``dead`` kernel, ``error`` raised in the cell, outputs that ``differ``: read from the
state nbval and the kernel are in, never from nbval's messages), the error's name and
value, and the end of the cell's stdout.

It also makes nbval notice a dead kernel at once: nbval 0.11 waits for a reply
until the cell's timeout even when the kernel has exited, so the kernel's
``get_message`` is made to look every half second whether the kernel still lives.
"""

from __future__ import annotations

import json
import os
import time
from queue import Empty

import pytest

from . import sandbox

#: How much of a cell's stdout is kept (its end): verdict lines are short, prints may not be.
KEEP_CHARS = 4000


sandbox.end_with_grader()  # at import, before pytest captures stdin: a grader killed mid-run takes its run along


class KernelDied(RuntimeError):
    """The notebook's kernel exited while a cell ran."""


def _patch_nbval() -> None:
    try:
        from nbval.kernel import RunningKernel
    except ImportError:  # pragma: no cover
        return
    if getattr(RunningKernel.get_message, "_labkit_probe", False):
        return
    original = RunningKernel.get_message

    def get_message(self, stream, timeout=None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            step = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
            try:
                return original(self, stream, timeout=step)
            except Empty:
                if not self.is_alive():
                    raise KernelDied("the kernel died") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    get_message._labkit_probe = True
    RunningKernel.get_message = get_message


def pytest_configure(config):
    _patch_nbval()


_started: dict = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    kernel = getattr(item.parent, "kernel", None)
    _started[item.nodeid] = (time.time(), getattr(item.parent, "timed_out", False),
                             kernel is not None and not kernel.is_alive())
    yield


def _kind(item, excinfo, errors) -> str | None:
    """What went wrong in the cell, from the state nbval and the kernel are left in (never its wording)."""
    if excinfo is None:
        return None
    kernel = getattr(item.parent, "kernel", None)
    if isinstance(excinfo.value, KernelDied) or (kernel is not None and not kernel.is_alive()):
        return "dead"
    timed_out_before = _started.get(item.nodeid, (0, False, False))[1]
    if getattr(item.parent, "timed_out", False) and not timed_out_before:
        return "timeout"
    return "error" if errors else "differ"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    cell = getattr(item, "cell_num", None)
    path = os.environ.get("LABKIT_PROBE_OUT")
    if cell is None or not path:
        return
    if call.when == "teardown" or (call.when == "setup" and report.passed):
        return
    outputs = getattr(item, "test_outputs", None) or []
    stdout = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")
    errors = [o for o in outputs if o.get("output_type") == "error"]
    kind = _kind(item, call.excinfo, errors)
    record = {
        "cell": cell,
        "when": call.when,
        "outcome": report.outcome,
        "kind": kind,
        "start": _started.get(item.nodeid, (call.start, False, False))[0],
        "dead_at_start": _started.get(item.nodeid, (0, False, False))[2],
        "end": time.time(),
        "ename": errors[-1].get("ename") if errors else None,
        "evalue": str(errors[-1].get("evalue", ""))[:500] if errors else None,
        "stdout_chars": len(stdout),
        "stdout": stdout[-KEEP_CHARS:],
        "message": str(call.excinfo.value)[:300] if call.excinfo is not None else None,
    }
    with open(path, "a", encoding="utf-8") as out:
        out.write(json.dumps(record) + "\n")
