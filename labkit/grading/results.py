"""What grading writes: the records, the results table, Gradescope's and PrairieLearn's
results, a roster's gradebook, and the parts of a sharded class joined into one.

A :class:`Record` is one submission's verdict on one question. Every other output is
made from a list of them, so ``grade merge`` of a class graded in shards writes exactly
what one run over the whole class writes.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import os
import re
from pathlib import Path, PurePath

from ..errors import GradeError


@dataclasses.dataclass
class Record:
    submission: str
    notebook: str | None
    question: str | None
    passed: bool
    points: float
    max_points: float
    message: str
    status: str = "not graded"        # passed, failed, not attempted, not checked, not graded, unreadable
    seconds: float | None = None      # how long its check ran
    student_id: str = ""              # the notebook's metadata labkit.student_id, if it has one


# -- the parts of a class --------------------------------------------------------------------


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` as (I, N): part I (counted from 0, as a Kubernetes completion index) of N."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise GradeError(f"--shard {text!r}: give I/N with 0 <= I < N, such as 0/4 (the first of four parts)")
    return int(match[1]), int(match[2])


def shard(submissions: list[Path], part: tuple[int, int]) -> list[Path]:
    """Every N-th submission from the I-th, in the order given: the same files on every machine."""
    index, count = part
    return submissions[index::count]


def load(path: Path) -> list[Record]:
    """The records a grade run wrote to ``path`` (its RESULTS.json)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        fields = {f.name for f in dataclasses.fields(Record)}
        return [Record(**{k: v for k, v in item.items() if k in fields}) for item in data]
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise GradeError(f"{path} is not the results of a grade run ({type(error).__name__}: {error})") from None


def merge(parts: list[list[Record]]) -> list[Record]:
    """The parts' records as one run writes them: submission by submission, in path order."""
    seen: dict[str, int] = {}
    for number, records in enumerate(parts):
        for submission in {r.submission for r in records}:
            if seen.setdefault(submission, number) != number:
                raise GradeError(f"{submission} was graded in two parts: were the same shards given twice?")
    records = [r for part in parts for r in part]
    order = {s: i for i, s in enumerate(sorted({r.submission for r in records}, key=PurePath))}
    return sorted(records, key=lambda r: order[r.submission])  # stable: questions keep their order


# -- the results table -------------------------------------------------------------------------


def questions_of(records) -> list[str]:
    qs = {r.question for r in records if r.question}
    return sorted(qs, key=lambda q: [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", q)])


def table_rows(records):
    """(header, rows): one row per submission, one column per question, and the total."""
    columns = questions_of(records)
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r.submission, {"submission": r.submission, "notebook": r.notebook or "",
                                             "total": 0.0, "max": 0.0})
        if r.question:
            row[r.question] = r.points
        row["total"] += r.points
        row["max"] += r.max_points
    return ["submission", "notebook", *columns, "total", "max"], list(rows.values())


def write_results(records, out: Path) -> tuple[Path, Path]:
    """OUT.json (every record) and OUT.csv (the table)."""
    out = Path(out)
    if out.suffix in (".json", ".csv"):
        out = out.with_suffix("")
    json_path, csv_path = out.with_name(out.name + ".json"), out.with_name(out.name + ".csv")
    write_json(json_path, [dataclasses.asdict(r) for r in records])
    header, rows = table_rows(records)
    _write_csv(csv_path, header, rows)
    return json_path, csv_path


def format_table(records) -> str:
    header, rows = table_rows(records)
    cells = [header] + [[_number(row.get(h, "")) if h != "submission" else row[h] for h in header] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- where a class submits -----------------------------------------------------------------------

#: Who sees a question's result on Gradescope (its documented values).
VISIBILITIES = ("visible", "after_due_date", "after_published", "hidden")


def gradescope(records, *, visibility: str = "visible", seconds: float | None = None) -> dict:
    """Gradescope's ``results.json`` for one submission: one test per question."""
    if visibility not in VISIBILITIES:
        raise GradeError(f"visibility {visibility!r}: one of {', '.join(VISIBILITIES)}")
    tests = [{"name": r.question, "number": r.question.lstrip("q"), "score": r.points, "max_score": r.max_points,
              "status": "passed" if r.passed else "failed", "output": r.message, "visibility": visibility}
             for r in records if r.question]
    result = {"score": sum(r.points for r in records), "output": summary(records),
              "visibility": visibility, "stdout_visibility": "hidden", "tests": tests}
    if seconds is not None:
        result["execution_time"] = round(seconds)
    return result


def prairielearn(records) -> dict:
    """PrairieLearn's external grader ``results.json`` for one submission (score from 0 to 1)."""
    most = sum(r.max_points for r in records)
    return {"gradable": True, "score": sum(r.points for r in records) / most if most else 0.0,
            "message": summary(records),
            "tests": [{"name": r.question, "points": r.points, "max_points": r.max_points, "output": r.message}
                      for r in records if r.question]}


def summary(records) -> str:
    """One line per submission: its notebook and score, or why it was not graded."""
    lines = []
    for submission in dict.fromkeys(r.submission for r in records):
        mine = [r for r in records if r.submission == submission]
        if len(mine) == 1 and mine[0].question is None:
            lines.append(f"{PurePath(submission).name}: {mine[0].message}")
            continue
        lines.append(f"{PurePath(submission).name} ({mine[0].notebook}): {_number(sum(r.points for r in mine))} "
                     f"of {_number(sum(r.max_points for r in mine))} points")
    return "\n".join(lines)


# -- rosters and the gradebook -------------------------------------------------------------------


def read_roster(path: Path) -> list[dict]:
    """The roster's rows: ``student_id`` and, optionally, ``file`` (a file or folder name, or a pattern)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as error:
        raise GradeError(f"cannot read the roster {path}: {error.strerror or error}") from None
    if not rows or "student_id" not in rows[0]:
        raise GradeError(f"the roster {path} needs a header with a student_id column (and optionally file)")
    ids = [(row.get("student_id") or "").strip() for row in rows]
    if "" in ids:
        raise GradeError(f"the roster {path} has a row without a student_id (line {ids.index('') + 2})")
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise GradeError(f"the roster {path} lists {', '.join(duplicated)} more than once")
    return [{"student_id": i, "file": (row.get("file") or "").strip()} for i, row in zip(ids, rows)]


def students_of(record: Record, roster: list[dict], root: PurePath) -> list[str]:
    """The roster's students a submission may be: those whose ``file`` is its name, its stem or a
    folder between ``root`` (the class's folder) and it; else the one whose id is in its notebook's
    metadata, if that student's row names no file (a student cannot claim a row that does)."""
    path = PurePath(os.path.abspath(record.submission))
    names = {*path.relative_to(root).parts, path.stem} if path.is_relative_to(root) else {path.name, path.stem}
    found = [row["student_id"] for row in roster
             if row["file"] and any(fnmatch.fnmatchcase(n, row["file"]) for n in names)]
    if not found and record.student_id:
        found = [row["student_id"] for row in roster if row["student_id"] == record.student_id and not row["file"]]
    return found


def gradebook(records, roster: list[dict]) -> tuple[list[str], list[dict], list[str]]:
    """(header, rows, problems): one row per student of the roster, one column per question and the total.

    A student with several submissions of one notebook gets the best; a submission that
    matches nobody, and a student who submitted nothing, are among the problems.
    """
    columns = questions_of(records)
    best: dict[tuple[str, str], list[Record]] = {}
    problems = []
    by_submission: dict[str, list[Record]] = {}
    for r in records:
        by_submission.setdefault(r.submission, []).append(r)
    folders = [os.path.dirname(os.path.abspath(s)) for s in by_submission]
    root = PurePath(os.path.commonpath(folders)) if folders else PurePath()
    for submission, mine in by_submission.items():
        candidates = students_of(mine[0], roster, root)
        if len(candidates) != 1:
            problems.append(f"{submission} matches " + (f"several students of the roster ({', '.join(candidates)})"
                                                        if candidates else "no student of the roster")
                            + ": its points are in no row")
            continue
        student = candidates[0]
        key = (student, mine[0].notebook or submission)
        if key in best:
            kept = max(best[key], mine, key=lambda rs: sum(r.points for r in rs))
            problems.append(f"{student} has more than one submission of {key[1]}: "
                            f"kept {kept[0].submission} ({_number(sum(r.points for r in kept))} points)")
            mine = kept
        best[key] = mine
    rows = []
    for student in (row["student_id"] for row in roster):
        row = {"student_id": student, "total": 0.0}
        theirs = [r for (s, _), rs in best.items() if s == student for r in rs]
        if not theirs:
            problems.append(f"{student} submitted nothing that was graded")
        for r in theirs:
            if r.question:
                row[r.question] = r.points
            row["total"] += r.points
        rows.append(row)
    return ["student_id", *columns, "total"], rows, problems


def write_gradebook(records, roster: list[dict], path: Path) -> list[str]:
    """Write the gradebook CSV; the problems (unmatched submissions, students without one)."""
    header, rows, problems = gradebook(records, roster)
    _write_csv(path, header, rows)
    return problems


# -- files -----------------------------------------------------------------------------------------


def write_json(path: Path, data) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def _write_csv(path: Path, header, rows) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _number(v) for k, v in row.items()})


def _number(value):
    return f"{value:g}" if isinstance(value, float) else value
