"""The grader's guard: a graded kernel's first cell, so one answer's changes to labkit do not spoil the others.

``python -m labkit grade`` puts one cell of its own before every other cell of the
notebook it runs::

    import labkit.grading.guard as _g; _g.install(); del _g

:func:`install` (before any of the student's code has run) imports labkit and takes a
snapshot of the namespaces of the ``labkit.*`` and ``requests.*`` modules and of the
classes they define. Before each check cell the grader puts a cell calling
:func:`restore`, which puts every snapshotted name back as it was: an answer that
monkeypatched ``labkit.check``, ``labkit.Client`` or ``requests`` for its own question
(by accident, or to print a verdict it did not earn) leaves the checks of the other
questions as they were.

The guard decides nothing. Verdicts are decided and recorded by the run's examiner
(:mod:`labkit.grading.examiner`), a process the answer's code never runs in: an answer
that replaces ``labkit.check`` prints what it likes and records nothing, and scores 0
with a message that says so.
"""

from __future__ import annotations

import sys

_PREFIXES = ("labkit", "requests")
#: Module globals that change as the kernel runs and are left as they are (the connection to the examiner).
_LIVE = {("labkit.grading.answering", "_connection")}


def _snapshot() -> list:
    """(namespace owner, copy of its dict) for the modules and classes to protect."""
    taken = []
    for name, module in sorted(sys.modules.items()):
        if module is None or not any(name == p or name.startswith(p + ".") for p in _PREFIXES):
            continue
        names = {k: v for k, v in vars(module).items() if (name, k) not in _LIVE}
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
        for key in [k for k in list(current) if k not in names and (getattr(owner, "__name__", ""), k) not in _LIVE]:
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
_taken: list = []


def install() -> None:
    """Snapshot labkit (with its check and the connection to the examiner) and requests, for :func:`restore`."""
    import labkit
    import labkit.apps  # noqa: F401  (what answers import, loaded before the snapshot)
    import labkit.grading.answering  # noqa: F401
    import labkit.grading.checker  # noqa: F401

    labkit.check  # noqa: B018  (loads the lazy name, so the snapshot holds it)
    _taken[:] = _snapshot()


def restore() -> None:
    """Undo any change to labkit and requests since :func:`install` (the grader runs this before each check cell)."""
    _restore(_taken)
