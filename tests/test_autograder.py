"""Where a class submits: Gradescope's zip unpacked and run end to end, and PrairieLearn's
external grader. Every submission is really graded; the results are checked against the
fields the platforms document.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from labkit.grading import results

from test_class_grading import HARD_CODED, NB00, ROOT, nb00, python
from test_grade import (EQUALS_EVERYTHING, FORGES_THE_HIDDEN_TESTS, WRITES_THE_RECORD, student_edition,
                        with_answers, write)

NB01 = "01_client_server"


def readable_by_others(path: Path) -> None:
    """The grader's sandbox users must reach what they run (as .ci/run does for the clone)."""
    for folder in [path, *path.parents]:
        if folder == Path("/"):
            break
        folder.chmod(folder.stat().st_mode | 0o011)


# -- Gradescope: the zip, unpacked as Gradescope does, run end to end ----------------------------------


@pytest.fixture(scope="module")
def autograder_zip(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradescope") / "autograder.zip"
    built = python("autograder", "gradescope", "--notebook", NB01, "--out", str(out))
    assert built.returncode == 0, built.stderr
    return out


def run_autograder(zip_path: Path, root: Path, submission, *, broken: bool = False) -> dict:
    """Unpack the zip into ROOT/source, put the submission in ROOT/submission, run run_autograder
    (``broken``: with the solution edition gone, so the grader cannot run)."""
    (root / "source").mkdir(parents=True)
    (root / "submission").mkdir()
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(root / "source")
    for info in archive.infolist():  # zipfile drops the modes: put them back as Gradescope's unzip does
        (root / "source" / info.filename).chmod((info.external_attr >> 16) & 0o777)
    if submission is not None:
        write(root / "submission", "notebook.ipynb", submission)
    if broken:
        shutil.rmtree(root / "source" / "workbook" / "solutions")
    readable_by_others(root / "source")
    env = dict(os.environ, AUTOGRADER_ROOT=str(root), LABKIT_PYTHON=sys.executable)
    done = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    return json.loads((root / "results" / "results.json").read_text())


def assert_gradescope_schema(result: dict) -> None:
    assert isinstance(result["score"], (int, float)) and isinstance(result["output"], str)
    for test in result["tests"]:
        assert set(test) >= {"name", "score", "max_score", "output", "visibility"}
        assert test["visibility"] in results.VISIBILITIES and test["status"] in ("passed", "failed")
        assert 0 <= test["score"] <= test["max_score"]
    assert result["score"] == sum(t["score"] for t in result["tests"])


def test_the_zip_has_what_gradescope_runs(autograder_zip):
    with zipfile.ZipFile(autograder_zip) as archive:
        names = archive.namelist()
        modes = {i.filename: (i.external_attr >> 16) & 0o777 for i in archive.infolist()}
        assert "import sys; assert sys.version_info >= (3, 11)" in archive.read("setup.sh").decode()
    assert {"setup.sh", "run_autograder"} <= set(names) and modes["run_autograder"] & 0o100
    assert f"workbook/solutions/{NB01}.ipynb" in names and "workbook/requirements.txt" in names
    assert [n for n in names if n.startswith("workbook/solutions/")] == [f"workbook/solutions/{NB01}.ipynb"]
    assert not [n for n in names if "__pycache__" in n]


@pytest.mark.parametrize("who", ["solution", "student edition", "hostile", "nothing"])
def test_gradescope_grades_the_unpacked_zip(autograder_zip, tmp_path, who):
    submission = {
        "solution": ROOT / "solutions" / f"{NB01}.ipynb",
        "student edition": student_edition(NB01),
        # forges the hidden tests, claims equality with everything, writes the record (test_grade has the rest)
        "hostile": with_answers(NB01, {"q1.1": FORGES_THE_HIDDEN_TESTS, "q1.2": EQUALS_EVERYTHING,
                                       "q1.3": WRITES_THE_RECORD}),
        "nothing": None,
    }[who]
    if isinstance(submission, Path):
        submission = nbformat.read(submission, as_version=4)
    result = run_autograder(autograder_zip, tmp_path, submission)
    assert_gradescope_schema(result)
    if who == "nothing":
        assert result["score"] == 0 and result["tests"] == [] and "no notebook" in result["output"]
        return
    assert [t["name"] for t in result["tests"]] == ["q1.1", "q1.2", "q1.3"]
    if who == "solution":
        assert result["score"] == 3, result
        assert all(t["output"].startswith(f"{t['name']} passed: ") for t in result["tests"])
    elif who == "student edition":
        assert result["score"] == 0
        assert all(f"{t['name']} not attempted" in t["output"] for t in result["tests"]), result
    else:
        assert result["score"] == 0, result
        assert all(t["status"] == "failed" for t in result["tests"])


def test_run_autograder_writes_a_result_when_the_grader_cannot_run(autograder_zip, tmp_path):
    result = run_autograder(autograder_zip, tmp_path, student_edition(NB01), broken=True)
    assert result == {"score": 0, "output": "the grader could not run; please tell the course team"}


# -- PrairieLearn --------------------------------------------------------------------------------


def test_prairielearn_grades_with_its_external_grader_layout(tmp_path):
    built = python("autograder", "prairielearn", "--notebook", NB00, "--out", str(tmp_path / "pl"))
    assert built.returncode == 0, built.stderr
    settings = json.loads((tmp_path / "pl" / "info.json").read_text())
    info = settings["externalGradingOptions"]
    assert settings["gradingMethod"] == "External"
    assert info["enabled"] is True and info["entrypoint"] == "/grade/tests/run.sh" and info["timeout"] <= 600
    assert f"--time-limit {info['timeout'] - 120}" in (tmp_path / "pl" / "tests" / "run.sh").read_text()
    assert "FROM python:3.12" in (tmp_path / "pl" / "Dockerfile").read_text()
    grade_root = tmp_path / "grade"
    (grade_root / "student").mkdir(parents=True)
    write(grade_root / "student", "00_start_here.ipynb", nb00(HARD_CODED))
    readable_by_others(tmp_path / "pl")
    env = dict(os.environ, AUTOGRADER_ROOT=str(grade_root), LABKIT_WORKBOOK=str(tmp_path / "pl" / "workbook"),
               LABKIT_PYTHON=sys.executable)
    done = subprocess.run([str(tmp_path / "pl" / "tests" / "run.sh")], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr
    result = json.loads((grade_root / "results" / "results.json").read_text())
    assert result["gradable"] is True and result["score"] == 0.0
    assert isinstance(result["message"], str) and "00_start_here" in result["message"]
    [test] = result["tests"]
    assert set(test) == {"name", "points", "max_points", "output"}
    assert test["name"] == "q0.1" and test["points"] == 0 and test["max_points"] == 1
    assert test["output"].startswith("q0.1 failed: "), test["output"]


@pytest.mark.parametrize("content", [None, "", "not json"], ids=["no notebook", "empty", "not json"])
def test_prairielearn_without_a_notebook_is_not_gradable(tmp_path, content):
    (tmp_path / "student").mkdir()
    if content is not None:
        write(tmp_path / "student", "00_start_here.ipynb", content)
    out = tmp_path / "results.json"
    done = python("grade", str(tmp_path / "student"), "--format", "prairielearn", "--notebook", NB00,
                  "--out", str(out))
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert result["gradable"] is False, result
    assert ("no notebook" if content is None else "not") in result["message"], result

