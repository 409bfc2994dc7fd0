"""Grading a class: private tests, feedback, statistics, a roster's gradebook, and the class
graded in shards and merged. Every submission is really graded (nbval, a kernel, the examiner).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

import labkit

from answers.solutions import solution_source
from test_grade import student_edition, with_answers, write

ROOT = Path(__file__).resolve().parents[1]
NB00 = "00_start_here"

# Passes every public test of q0.1, but builds the query by hand: "&" and "+" in a name break it.
CONCATENATES = '''def greet(client, base_url, name):
    return client.get(base_url + "/hello?name=" + name).json()["message"]
'''

PRIVATE_TEST = '''"""An instructor's private test for q0.1: names the public tests never try."""
from labkit.apps import create
from labkit.grading.authoring import questions
from labkit.grading.hidden.nb00 import _greet

q01 = questions()["q0.1"]


@q01.test("names with & and + in them")
def _(run):
    app = create("hello")
    server = run.serve(app, "hello·check")
    client = run.client()
    for name in ("Tom & Jerry", "C++"):
        _greet(run, app, server, client, server.url, name)
'''

HARD_CODED = "def greet(client, base_url, name):\n    return f'Hello, {name}!'\n"

ROSTER = """student_id,file
s-alice,alice
s-carol,car*
s-dave,dave
s-eve,
s-frank,
"""


def python(*args, cwd=ROOT, env=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "labkit", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def nb00(answer: str | None, student_id: str | None = None):
    nb = with_answers(NB00, {"q0.1": answer}) if answer else student_edition(NB00)
    if student_id:
        nb.metadata.setdefault("labkit", {})["student_id"] = student_id
    return nb


def strip_seconds(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


# -- a class: one run, two shards and their merge ---------------------------------------------


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    folder = tmp_path_factory.mktemp("class")
    private = tmp_path_factory.mktemp("private")
    (private / "more_names.py").write_text(PRIVATE_TEST, encoding="utf-8")
    write(folder, "alice.ipynb", nb00(solution_source("q0.1")))
    write(folder, "carol.ipynb", nb00(HARD_CODED))
    write(folder, "dave.ipynb", nb00(CONCATENATES))
    write(folder, "eve-final.ipynb", nb00(solution_source("q0.1"), student_id="s-eve"))
    write(folder, "mallory.ipynb", nb00(None))  # the student edition, and in no row of the roster
    roster = folder.parent / "roster.csv"
    roster.write_text(ROSTER, encoding="utf-8")
    out = tmp_path_factory.mktemp("out")
    common = ["--private-tests", str(private), "--jobs", "1"]  # one at a time: the suite runs beside
    full = python("grade", str(folder), "--out", str(out / "full"), "--feedback", str(out / "feedback"),
                  "--report", str(out / "report"), "--roster", str(roster), *common)
    parts = [python("grade", str(folder), "--out", str(out / f"part{i}"), "--shard", f"{i}/2", *common)
             for i in range(2)]
    merged = python("grade", "merge", str(out / "part0.json"), str(out / "part1.json"), "--out", str(out / "merged"))
    return dict(folder=folder, out=out, full=full, parts=parts, merged=merged, private=private,
                records={Path(r["submission"]).stem: r for r in json.loads((out / "full.json").read_text())})


def test_the_class_is_graded(graded_class):
    assert graded_class["full"].returncode == 0, graded_class["full"].stderr
    records = graded_class["records"]
    assert records["alice"]["passed"] and records["alice"]["status"] == "passed"
    assert records["mallory"]["status"] == "not attempted" and records["mallory"]["points"] == 0
    assert records["carol"]["status"] == "failed" and "without asking the service" in records["carol"]["message"]
    assert all(r["seconds"] > 0 for r in records.values())


def test_a_private_test_changes_a_verdict_the_public_tests_pass(graded_class, capsys):
    dave = graded_class["records"]["dave"]
    assert not dave["passed"], dave
    assert dave["message"].startswith("q0.1 failed: a private test, names with & and + in them: "), dave["message"]
    assert "PRIVATE" not in dave["message"] and "def " not in dave["message"]  # the verdict, never the test's code
    # The student's own check runs only the public tests, and says so.
    namespace = {}
    exec(CONCATENATES, namespace)
    labkit.check("q0.1", namespace["greet"])
    line = capsys.readouterr().out.strip()
    assert line.startswith("q0.1 passed the public tests: ") and line.endswith("the grader may run more."), line
    assert "all" not in line.split()
    alice = graded_class["records"]["alice"]["message"]
    assert alice.startswith("q0.1 passed: 2 public and 1 private tests, "), alice


def test_shards_and_their_merge_equal_one_run(graded_class):
    out = graded_class["out"]
    for run in (*graded_class["parts"], graded_class["merged"]):
        assert run.returncode == 0, run.stderr
    parts = [json.loads((out / f"part{i}.json").read_text()) for i in range(2)]
    assert parts[0] and parts[1], "each shard graded some of the class"
    assert not {r["submission"] for r in parts[0]} & {r["submission"] for r in parts[1]}
    full, merged = json.loads((out / "full.json").read_text()), json.loads((out / "merged.json").read_text())
    assert strip_seconds(merged) == strip_seconds(full)  # the times a check took differ between runs; nothing else
    assert (out / "merged.csv").read_text() == (out / "full.csv").read_text()


def test_merging_the_same_shard_twice_is_refused(graded_class, tmp_path):
    out = graded_class["out"]
    again = python("grade", "merge", str(out / "part0.json"), str(out / "part0.json"), "--out", str(tmp_path / "m"))
    assert again.returncode == 2 and "graded in two parts" in again.stderr
    assert python("grade", str(graded_class["folder"]), "--shard", "2/2").returncode == 2


def test_the_gradebook_has_one_row_per_student_and_reports_who_matched_nobody(graded_class):
    out, stderr = graded_class["out"], graded_class["full"].stderr
    with open(out / "full-gradebook.csv", newline="") as f:
        rows = {row["student_id"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["s-alice", "s-carol", "s-dave", "s-eve", "s-frank"]
    assert list(next(iter(rows.values()))) == ["student_id", "q0.1", "total"]
    assert rows["s-alice"]["total"] == "1" and rows["s-carol"]["total"] == "0"
    assert rows["s-eve"]["q0.1"] == "1", "matched by the notebook's metadata labkit.student_id"
    assert rows["s-frank"]["total"] == "0" and rows["s-frank"]["q0.1"] == ""
    assert "mallory.ipynb matches no student of the roster" in stderr, stderr
    assert "s-frank submitted nothing" in stderr, stderr


def test_feedback_holds_verdicts_hints_and_points_and_no_test_code(graded_class):
    feedback = graded_class["out"] / "feedback"
    assert sorted(p.name for p in feedback.iterdir()) == sorted(
        f"{n}{s}" for n in ("alice", "carol", "dave", "eve-final", "mallory") for s in (".md", ".html"))
    carol = (feedback / "carol.md").read_text()
    assert "# 00_start_here: 0 of 1 points" in carol and "## q0.1: 0 of 1" in carol
    assert "without asking the service" in carol and "*Hint:* call the service" in carol
    assert "<td class=failed>0 of 1</td>" in (feedback / "carol.html").read_text()
    hidden = (ROOT / "labkit/grading/hidden/nb00.py").read_text().splitlines()
    private = graded_class["private"].joinpath("more_names.py").read_text().splitlines()
    code = [line.strip() for line in hidden + private if line.strip().startswith(("def ", "@", "raise ", "for "))]
    for path in feedback.iterdir():
        text = path.read_text()
        assert not [line for line in code if line in text], path.name


def test_the_report_counts_pass_rates_failures_and_slow_answers(graded_class):
    out = graded_class["out"]
    stats = json.loads((out / "report.json").read_text())
    q = stats["questions"]["q0.1"]
    assert stats["submissions"] == 5 and q["submissions"] == 5
    assert q["passed"] == 2 and q["pass_rate"] == pytest.approx(0.4)
    kinds = {f["kind"]: f["count"] for f in q["failures"]}
    assert sum(kinds.values()) == 3 and len(kinds) == 3, kinds
    assert len(q["slowest"]) == 5 and q["slowest"][0]["seconds"] >= q["slowest"][-1]["seconds"]
    assert sorted(stats["totals"]) == [0, 0, 0, 1, 1]
    page = (out / "report.html").read_text()
    assert 'src="data:image/png;base64,' in page and "2 of 5 (40%)" in page


def test_the_documented_grading_commands_parse():
    """Every `python -m labkit grade|autograder ...` in the grading README (its Kubernetes Job and CI
    matrix included) is accepted by the command line it documents."""
    import argparse
    import re
    import shlex

    from labkit.grading import autograder, grade
    from labkit.grading.results import parse_shard

    parser = argparse.ArgumentParser(prog="python -m labkit")
    commands = parser.add_subparsers(dest="command", required=True)
    grade.add_parser(commands)
    autograder.add_parser(commands)
    text = (ROOT / "labkit" / "grading" / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\$\{\{ *matrix\.shard *\}\}|\$JOB_COMPLETION_INDEX", "0", text)
    found = re.findall(r"python -m labkit ((?:grade|autograder) [^`\n\"]*(?:\n +--[^`\n\"]*)*)", text)
    assert len(found) >= 6, found
    for command in found:
        words = shlex.split(re.sub(r"\[[^]]*\]|\S*\.\.\.\S*|#.*", "", command.replace("\n", " ")))
        args = parser.parse_args(words)
        if getattr(args, "shard", None):
            assert parse_shard(args.shard) == (0, 4), command


def test_a_submission_matching_several_students_or_claiming_a_row_is_reported(tmp_path):
    from labkit.grading import results

    roster = tmp_path / "roster.csv"
    roster.write_text("student_id,file\nann,ann*\nanna,anna*\nzed,\n", encoding="utf-8")
    rows = results.read_roster(roster)
    folder = tmp_path / "class"

    def record(name, student_id=""):
        return results.Record(str(folder / name), NB00, "q0.1", True, 1.0, 1.0, "q0.1 passed", "passed",
                              student_id=student_id)

    header, book, problems = results.gradebook(
        [record("anna_01.ipynb"), record("mine.ipynb", student_id="ann"), record("zed.ipynb", student_id="zed")],
        rows)
    by = {row["student_id"]: row for row in book}
    assert header == ["student_id", "q0.1", "total"]
    assert by["ann"]["total"] == 0 and by["anna"]["total"] == 0, "matched two rows: credited to neither"
    assert by["zed"]["total"] == 1, "a row without a file is matched by the notebook's metadata"
    assert any("anna_01.ipynb matches several students of the roster (ann, anna)" in p for p in problems), problems
    assert any("mine.ipynb matches no student" in p for p in problems), "a row that names a file cannot be claimed"


STEALS_THE_SOLUTION = '''import json, pathlib
import labkit

_nb = json.loads((pathlib.Path(labkit.__file__).parents[1] / "solutions" / "00_start_here.ipynb").read_text())
exec("".join(next(c["source"] for c in _nb["cells"] if c.get("metadata", {}).get("labkit", {}).get("role") == "answer")))
'''


def test_isolated_runs_share_databases_with_their_examiner_and_cannot_read_the_solutions(tmp_path):
    """Notebooks 04 and 08 hand the answer SQLite databases the examiner made; an answer that reads
    the solution edition beside labkit finds an empty folder."""
    from labkit.grading import grade, sandbox

    if not sandbox.available()[0]:
        pytest.skip(f"runs are not isolated here: {sandbox.available()[1]}")
    for name in ("04_microservices", "08_concurrency"):
        (tmp_path / f"{name}.ipynb").write_bytes((ROOT / "solutions" / f"{name}.ipynb").read_bytes())
    write(tmp_path, "steals.ipynb", nb00(STEALS_THE_SOLUTION))
    records = grade.grade([tmp_path], solutions=ROOT / "solutions", jobs=1)
    by = {(Path(r.submission).stem, r.question): r for r in records}
    for q in ("q4.1", "q8.1", "q8.2"):
        r = by[("04_microservices" if q == "q4.1" else "08_concurrency", q)]
        assert r.passed, r.message
    stolen = by[("steals", "q0.1")]
    assert not stolen.passed and "No such file or directory" in stolen.message, stolen.message
