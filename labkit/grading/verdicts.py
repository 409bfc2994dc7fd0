"""Verdicts: what a check decides about an answer, and the one line it prints.

    q1.1 passed the public tests: 8 tests, 11 runs against real servers; the grader may run more.
    q1.1 passed: 8 public and 3 private tests, 14 runs against real servers.   (in the grader)
    q1.1 not attempted yet: ...                       (the answer is still the stub)
    q1.1 failed: <test>: <what was wrong>. Hint: <what to try>.
    q1.1 could not be checked: ...                    (the check itself broke)

A line holds no time, port or id, so nbval can compare it. The grader reads the
:class:`Verdict` itself (its ``passed``), never the wording. This module imports
nothing, so the release can use it without loading the network code.
"""

from __future__ import annotations

import dataclasses

#: The body of every answer cell in the student edition (``labkit release`` writes it).
STUB = 'raise NotImplementedError("write your answer here")'

STATUSES = ("passed", "failed", "not attempted", "not checked")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What a check decided: ``status`` (one of STATUSES) and the ``line`` it prints."""

    question: str
    status: str
    line: str

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def passed(question: str, tests: int, runs: int, *, private: int = 0, grader: bool = False) -> Verdict:
    """A pass: in a student's kernel, of the public tests only (an instructor may keep private ones)."""
    if not grader:
        return Verdict(question, "passed", f"{question} passed the public tests: {tests} tests, {runs} runs "
                                           f"against real servers; the grader may run more.")
    which = f"{tests - private} public and {private} private tests" if private else f"{tests} tests"
    return Verdict(question, "passed", f"{question} passed: {which}, {runs} runs against real servers.")


def not_attempted(question: str) -> Verdict:
    """The verdict for an answer that is still the stub (``labkit release`` stores its line)."""
    return Verdict(question, "not attempted",
                   f"{question} not attempted yet: write your answer in the cell above, run it, then run this cell.")


def failed(question: str, what: str, hint: str = "") -> Verdict:
    line = f"{question} failed: {_sentence(what)}."
    return Verdict(question, "failed", f"{line} Hint: {_sentence(hint)}." if hint else line)


def not_checked(question: str, why: str) -> Verdict:
    return Verdict(question, "not checked", f"{question} {why}")


def _sentence(text: str) -> str:
    return " ".join(str(text).split()).rstrip(".")
