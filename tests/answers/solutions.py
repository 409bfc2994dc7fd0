"""The solutions, read from the solution notebooks, so they cannot drift from what students see.

Each answer cell of ``solutions/NN_*.ipynb`` is run alone in a namespace of its own (so it
must import what it uses, which the student edition's cells show too); the solution is the
function named as its question says.
"""

from __future__ import annotations

import functools
import pathlib

import nbformat

from labkit.grading import release
from labkit.grading.authoring import questions

SOLUTIONS_FOLDER = pathlib.Path(__file__).resolve().parents[2] / "solutions"


@functools.cache
def all_solutions() -> dict:
    """question id -> the solution edition's function."""
    found = {}
    functions = {q.id: q.function for q in questions().values()}
    for question, source in _sources().items():
        namespace = {"__name__": f"solution_{question.replace('.', '_')}"}
        exec(compile(source, f"the answer cell of {question}", "exec"), namespace)
        found[question] = namespace[functions[question]]
    return found


def solution(question: str):
    """The solution of ``question`` (for a wrong answer that changes one thing of it)."""
    return all_solutions()[question]


@functools.cache
def _sources() -> dict:
    found = {}
    for path in sorted(SOLUTIONS_FOLDER.glob(release.PATTERN)):
        for cell in nbformat.read(path, as_version=4).cells:
            marks = release.role(cell)
            if marks and marks[1] == "answer":
                found[marks[0]] = cell.source
    return found


def solution_source(question: str) -> str:
    """The answer cell of ``question`` in the solution edition, as it stands."""
    return _sources()[question]
