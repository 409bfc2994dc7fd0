"""Release: write the student edition (notebooks/) from the solution edition (solutions/).

    python -m labkit release                # writes notebooks/NN_*.ipynb
    python -m labkit release --check        # writes nothing; exit 1 if notebooks/ is stale

In each solution notebook, cells are marked in their metadata::

    {"tags": ["exercise"], "labkit": {"question": "q1.1", "role": "answer"}}
    {"tags": ["check"],    "labkit": {"question": "q1.1", "role": "check"}}

An answer cell holds the function with its solution between a line
``# BEGIN SOLUTION`` and a line ``# END SOLUTION``. The release:

- in answer cells, replaces each such region by one line
  ``raise NotImplementedError("write your answer here")`` at the same indentation,
  and clears the cell's outputs;
- gives each check cell, as its only output, the line ``labkit.check`` prints for
  the stub ("... not attempted yet: ...");
- copies every other cell, with its outputs, unchanged.

The result is byte-for-byte the same on every run, so a test can compare it with
the committed notebooks/. A notebook that breaks the conventions (an answer cell
without markers, a check cell without its answer cell, a question id used twice)
is refused with a :class:`ReleaseError` that says where.
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path

import nbformat

from ..errors import ReleaseError
from .verdicts import STUB, not_attempted

BEGIN, END = "# BEGIN SOLUTION", "# END SOLUTION"
#: Which notebooks are released: solutions/NN_topic.ipynb
PATTERN = "[0-9][0-9]_*.ipynb"


def role(cell) -> tuple[str, str] | None:
    """(question id, "answer" or "check") for an exercise cell, else None."""
    marks = cell.get("metadata", {}).get("labkit")
    if not isinstance(marks, dict) or marks.get("role") not in ("answer", "check"):
        return None
    return str(marks.get("question", "")), marks["role"]


def problems(nb, *, edition: str = "solution") -> list[str]:
    """What breaks the cell conventions in ``nb`` (an empty list if nothing does).

    ``edition`` is "solution" (answer cells hold BEGIN/END SOLUTION markers) or
    "student" (answer cells hold the stub and no markers).
    """
    found: list[str] = []
    answers: dict[str, int] = {}
    checks: dict[str, int] = {}
    for index, cell in enumerate(nb.cells):
        marks = role(cell)
        if marks is None:
            continue
        question, kind = marks
        where = f"cell {index} ({kind} of {question or '?'})"
        a_kind = "an answer" if kind == "answer" else "a check"
        if not re.fullmatch(r"q\d+\.\d+", question):
            found.append(f"{where}: the question id {question!r} is not of the form q<notebook>.<number>, such as q1.1")
            continue
        if cell.cell_type != "code":
            found.append(f"{where}: {a_kind} cell must be a code cell, not {cell.cell_type}")
            continue
        tag = "exercise" if kind == "answer" else "check"
        if tag not in cell.get("metadata", {}).get("tags", []):
            found.append(f'{where}: {a_kind} cell needs the tag "{tag}" in its metadata')
        seen = answers if kind == "answer" else checks
        if question in seen:
            found.append(f"{where}: question {question} already has {a_kind} cell (cell {seen[question]}); "
                         f"question ids must be unique")
            continue
        seen[question] = index
        if kind == "answer":
            if edition == "solution":
                try:
                    _regions(cell.source)
                except ReleaseError as error:
                    found.append(f"{where}: {error}")
            elif BEGIN in cell.source or END in cell.source or STUB not in cell.source:
                found.append(f"{where}: a student edition's answer cell holds {STUB} and no solution markers")
        else:
            if question not in answers:
                found.append(f"{where}: no answer cell for {question} comes before this check cell")
            if not re.search(r"""check\(\s*["']""" + re.escape(question) + r"""["']""", cell.source):
                found.append(f'{where}: a check cell calls labkit.check("{question}", ...)')
    for question, index in answers.items():
        if question not in checks:
            found.append(f"cell {index} (answer of {question}): no check cell for {question} follows it")
    return found


def _regions(source: str) -> list[tuple[int, int]]:
    """(begin line, end line) of each solution region; ReleaseError if the markers are wrong."""
    regions, begin = [], None
    for number, line in enumerate(source.split("\n")):
        text = line.strip()
        if text == BEGIN:
            if begin is not None:
                raise ReleaseError(f"line {number + 1}: {BEGIN} again before {END}")
            begin = number
        elif text == END:
            if begin is None:
                raise ReleaseError(f"line {number + 1}: {END} without a {BEGIN} before it")
            regions.append((begin, number))
            begin = None
    if begin is not None:
        raise ReleaseError(f"line {begin + 1}: {BEGIN} has no {END} after it")
    if not regions:
        raise ReleaseError(f"an answer cell needs its solution between a line {BEGIN} and a line {END}")
    return regions


def stub_source(source: str) -> str:
    """``source`` with each solution region replaced by the stub line, at the region's indentation."""
    lines = source.split("\n")
    for begin, end in reversed(_regions(source)):
        indent = lines[begin][: len(lines[begin]) - len(lines[begin].lstrip())]
        lines[begin:end + 1] = [indent + STUB]
    return "\n".join(lines)


def student_edition(nb, *, name: str = "notebook"):
    """The student edition of the solution notebook ``nb`` (a new notebook; ``nb`` is unchanged)."""
    found = problems(nb)
    if found:
        raise ReleaseError(f"{name} breaks the exercise cell conventions:\n  " + "\n  ".join(found))
    out = copy.deepcopy(nb)
    for cell in out.cells:
        marks = role(cell)
        if marks is None:
            continue
        question, kind = marks
        if kind == "answer":
            cell.source = stub_source(cell.source)
            cell.outputs = []
            cell.execution_count = None
        else:
            cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=not_attempted(question).line + "\n")]
    return out


def render(nb) -> bytes:
    """The bytes of ``nb`` as a file: nbformat's JSON (sorted keys) and a final newline."""
    text = nbformat.writes(nb, version=4)
    return (text if text.endswith("\n") else text + "\n").encode("utf-8")


def plan(solutions: Path) -> dict[str, bytes]:
    """What release would write: file name -> bytes, for each solutions/NN_*.ipynb."""
    solutions = Path(solutions)
    if not solutions.is_dir():
        raise ReleaseError(f"no solutions folder at {solutions}; run from the repo root or pass --solutions DIR")
    written: dict[str, bytes] = {}
    owner: dict[str, str] = {}
    for path in sorted(solutions.glob(PATTERN)):
        nb = nbformat.read(path, as_version=4)
        written[path.name] = render(student_edition(nb, name=str(path)))
        for cell in nb.cells:
            marks = role(cell)
            if marks and marks[1] == "answer":
                if marks[0] in owner:
                    raise ReleaseError(f"question {marks[0]} has answer cells in both {owner[marks[0]]} "
                                       f"and {path.name}; question ids must be unique")
                owner[marks[0]] = path.name
    return written


def differences(solutions: Path, notebooks: Path) -> list[str]:
    """Why notebooks/ differs from what release would write (an empty list if it does not)."""
    notebooks = Path(notebooks)
    wanted = plan(solutions)
    found = []
    for name, data in wanted.items():
        path = notebooks / name
        if not path.exists():
            found.append(f"{path} is missing")
        elif path.read_bytes() != data:
            found.append(f"{path} differs from its release")
    for path in sorted(notebooks.glob(PATTERN)) if notebooks.is_dir() else []:
        if path.name not in wanted:
            found.append(f"{path} has no solutions/{path.name}")
    return found


def release(solutions: Path, notebooks: Path) -> list[Path]:
    """Write the student edition of every solution notebook into ``notebooks``; return the paths written.

    A notebooks/NN_*.ipynb with no solution notebook (one renamed or removed) is deleted:
    notebooks/ is made by release alone.
    """
    wanted = plan(solutions)  # everything is checked before anything is written
    notebooks = Path(notebooks)
    notebooks.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in wanted.items():
        path = notebooks / name
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
        written.append(path)
    for path in sorted(notebooks.glob(PATTERN)):
        if path.name not in wanted:
            path.unlink()
    return written


# -- command line ------------------------------------------------------------------


def add_parser(commands) -> None:
    """Add the ``release`` subcommand to ``python -m labkit``'s subparsers."""
    parser = commands.add_parser("release", help="write notebooks/ (the student edition) from solutions/",
                                 description=__doc__.splitlines()[0])
    parser.add_argument("--solutions", type=Path, default=Path("solutions"),
                        help="folder of the solution notebooks (default: solutions)")
    parser.add_argument("--notebooks", type=Path, default=Path("notebooks"),
                        help="folder to write the student notebooks to (default: notebooks)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 and list the notebooks that differ from their release")
    parser.set_defaults(run=main)


def main(args) -> int:
    try:
        if args.check:
            found = differences(args.solutions, args.notebooks)
            for line in found:
                print(line)
            if found:
                print(f"{args.notebooks} is out of date: run python -m labkit release")
                return 1
            print(f"{args.notebooks} is up to date")
            return 0
        written = release(args.solutions, args.notebooks)
    except ReleaseError as error:
        print(f"release: {error}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} notebooks to {args.notebooks}")
    return 0
