"""The grader's guard: runs first in a graded kernel, so a submission cannot fake its verdicts.

``python -m labkit grade`` puts one cell of its own before every other cell of the
notebook it runs::

    import labkit.grading.guard as _g; _g.install("/tmp/.../verdicts", {"q1.1": 1.0}); del _g

``install`` (before any of the student's code has run):

1. imports labkit, its grading code and every hidden test, and takes a snapshot of
   the namespaces of the ``labkit.*`` and ``requests.*`` modules and of the classes
   they define;
2. opens the verdict file, keeps it open in a closure, and deletes its name, so the
   student's code has no path to write to (the grader reads it through its own handle);
3. replaces ``labkit.check`` (and ``labkit.grading.checker.check``) by a guarded check.

Before each check cell the grader puts a cell calling :func:`restore`, so an answer that
replaced ``labkit.check`` for its own question does not spoil the checks of the others.

The guarded check first puts every snapshotted name back as it was (undoing any
monkeypatching of labkit or requests by the answers), then runs the genuine
:func:`labkit.grading.checker.verdict` it captured at install time, prints the line as
``labkit.check`` does, and writes the verdict to the verdict file: ``{"question",
"status", "passed", "points", "message", "t"}`` (points: the question's points if it
passed, else 0).

The grader counts a question as passed only when this file holds a passed verdict
for it, written while that question's check cell ran. An answer that replaces
``labkit.check`` (``labkit.check = lambda *a: print("q1.1 passed: ...")``) prints the
right words but writes nothing there, and scores 0 with a message that says so.

What it does not stop: everything here lives in the kernel's own process, like the
student's code. Someone who reads this file and digs the open file out of the
closure (or out of ``/proc/self/fd``) can still write a forged line. Closing that
needs the hidden tests to run in a process the answer cannot reach; until then the
grader flags what it cannot explain (a verdict printed but not recorded).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time

_PREFIXES = ("labkit", "requests")


def _snapshot() -> list:
    """(namespace owner, copy of its dict) for the modules and classes to protect."""
    taken = []
    for name, module in sorted(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in _PREFIXES):
            continue
        names = dict(vars(module))
        taken.append((module, names))
        for value in names.values():
            if isinstance(value, type) and getattr(value, "__module__", None) == name:
                taken.append((value, dict(vars(value))))
    return taken


def _restore(taken: list) -> None:
    """Put every snapshotted name back; remove names added to classes and non-module names added to modules."""
    for owner, names in taken:
        current = vars(owner)
        is_class = isinstance(owner, type)
        for key in [k for k in list(current) if k not in names]:
            value = current[key]
            if is_class or not isinstance(value, type(sys)):
                try:
                    delattr(owner, key)
                except (AttributeError, TypeError):
                    pass
        for key, value in names.items():
            if current.get(key, _MISSING) is not value:
                try:
                    setattr(owner, key, value)
                except (AttributeError, TypeError):
                    pass


_MISSING = object()


def install(path: str, points: dict) -> None:
    """Guard ``labkit.check`` in this kernel; verdicts go to ``path`` (whose name is then removed).

    ``points`` maps each question to what it is worth.
    """
    import labkit
    import labkit.apps  # noqa: F401  (what the hidden tests import, loaded before the snapshot)
    checking = importlib.import_module("labkit.grading.checker")
    checking.questions()  # load every hidden test
    real_verdict = checking.verdict
    real_show_diagram = checking.show_diagram
    out = open(path, "a", encoding="utf-8")
    try:
        os.unlink(path)
    except OSError:
        pass
    write, flush, now, dumps = out.write, out.flush, time.time, json.dumps

    worth = dict(points)

    def check(question: str, answer, *, diagram=None, time_limit: float | None = None) -> None:
        _restore(taken)
        result, trace = real_verdict(question, answer, time_limit=time_limit)
        try:
            write(dumps({"question": result.question, "status": result.status, "passed": result.passed,
                         "points": worth.get(result.question, 1.0) if result.passed else 0.0,
                         "message": result.line, "t": now()}) + "\n")
            flush()
        except Exception:
            pass
        print(result.line)
        if diagram is not None and trace is not None:
            real_show_diagram(diagram, trace)

    check.__doc__ = checking.check.__doc__
    check.__wrapped__ = checking.check
    checking.check = check
    labkit.check = check
    global _taken
    _taken = taken = []  # bound before the snapshot, so the snapshot holds this very list
    taken.extend(_snapshot())


_taken: list = []


def restore() -> None:
    """Undo any change to labkit and requests since ``install`` (the grader runs this before each check cell)."""
    _restore(_taken)
