"""Grade submitted notebooks: ``python -m labkit grade SUBMISSION.ipynb|FOLDER ... --out RESULTS``.

For each submission the grader

1. reads it (a file that is empty, not JSON, not a notebook, or a notebook of no
   notebook of this workbook scores 0 with a message saying which);
2. finds its solution notebook: the notebook-level metadata ``labkit.notebook`` if
   present, else the question ids in its cells' metadata (unique across the workbook),
   else the cell ids it shares with a solution notebook, else its file name;
3. takes the student's answer cells BY METADATA (``labkit.question`` and
   ``labkit.role == "answer"``), never by position: every cell marked as the answer of
   a question, in notebook order, joined into one (so moved, duplicated and split cells
   count as they ran: the last definition wins); a cell whose type was changed to
   markdown or raw counts if its text is Python;
4. puts them in place of the answer cells of a copy of the solution edition, with one
   cell of its own first (:mod:`labkit.grading.guard`, which undoes an answer's changes
   to labkit before each check), and runs that under nbval (``pytest --nbval``) in a
   subprocess of its own: a fresh kernel, its own temporary folder as the working
   directory, HOME and TMPDIR, a time limit per cell (``--cell-timeout``) and one for
   the whole submission (``--time-limit``), after which every process of the run is
   killed. Beside it runs the run's examiner (:mod:`labkit.grading.examiner`): the kernel's
   ``labkit.check`` finds it through ``LABKIT_EXAMINER``, the hidden tests run there and
   only there, and it writes each verdict to a file the kernel cannot reach;
5. reads nbval's result for each cell (:mod:`labkit.grading.probe`) and the verdicts
   the examiner recorded (question, passed, points, message); a question passes when
   the first check the examiner started for it while its check cell ran passed. The message
   is the verdict line itself, the same line ``labkit.check`` prints in the student's
   notebook for the same answer;
6. if the kernel died or the run was killed, the question whose cell broke it scores 0
   with a message saying so, and the notebook runs again with that answer left out,
   so the other questions are still graded.

It writes ``RESULTS.json`` (one :class:`~labkit.grading.results.Record` per submission
and question) and ``RESULTS.csv`` (one row per submission, one column per question, and
the total), and prints a table; or, with ``--format gradescope|prairielearn``, that
platform's results for one submission. ``--feedback``, ``--report`` and ``--roster`` add
feedback files, class statistics and a gradebook; ``--shard I/N`` grades one part of a
class, and ``grade merge`` joins the parts (:mod:`labkit.grading.results`). Exit status
0 when grading ran, whatever the scores; 2 when it cannot run (no such file, no solution
edition, private tests that do not load).

A question is worth 1 point unless its check cell's metadata says otherwise:
``{"labkit": {"question": "q1.1", "role": "check", "points": 2}}``.

Each run has a temporary folder: the kernel starts there, and HOME, TMPDIR, TMP and
TEMP point there, so files written to relative paths, to ``~`` or through
:mod:`tempfile` land there and are deleted with it. Run as root on Linux, the grader
also isolates every run (:mod:`labkit.grading.sandbox`): a user id of its own that may
write only that folder, a network namespace with nothing but loopback, and after the
run every process of that user id killed and its files in /tmp swept. Elsewhere it
says so (``python -m labkit grade`` prints why) and an answer can write wherever the
grading user may, or open network connections: grade in a container as root when that
matters. Either way, processes the kernel started are found by an environment variable
the run sets and killed at the end.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import nbformat

from ..errors import GradeError
from . import feedback, release, report, results, sandbox
from .results import Record

#: Default seconds one cell may run before nbval interrupts it.
CELL_TIMEOUT_S = 120.0
#: Default seconds one submission may take in all (its runs together) before it is killed.
TIME_LIMIT_S = 600.0
#: The cells the grader adds: one first in every notebook it runs, one before each check cell.
RESTORE_CELL = "import labkit.grading.guard as _labkit_guard; _labkit_guard.restore(); del _labkit_guard"
GUARD_CELL = "import labkit.grading.guard as _labkit_guard; _labkit_guard.install(); del _labkit_guard"


# -- the solution editions ------------------------------------------------------------


@dataclasses.dataclass
class Solution:
    name: str                  # "01_client_server"
    path: Path
    nb: object
    questions: list            # question ids in notebook order
    max_points: dict           # question -> points
    cell_ids: set


def load_solutions(folder: Path) -> dict[str, Solution]:
    folder = Path(folder)
    if not folder.is_dir():
        raise GradeError(f"no solutions folder at {folder}: the grader needs the solution edition "
                         f"(pass --solutions DIR)")
    found = {}
    for path in sorted(folder.glob(release.PATTERN)):
        nb = nbformat.read(path, as_version=4)
        qs, points = [], {}
        for cell in nb.cells:
            marks = release.role(cell)
            if marks and marks[1] == "check":
                qs.append(marks[0])
                value = cell.metadata.get("labkit", {}).get("points", 1)
                points[marks[0]] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 1.0
        found[path.stem] = Solution(path.stem, path, nb, qs, points,
                                    {c.get("id") for c in nb.cells if c.get("id")})
    if not found:
        raise GradeError(f"no solution notebooks ({release.PATTERN}) in {folder}")
    return found


# -- reading a submission ---------------------------------------------------------------


def read_submission(path: Path):
    """(notebook, None) or (None, what is wrong with the file)."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        return None, f"the file could not be read ({error.strerror or error})"
    if not data.strip():
        return None, "the file is empty: it holds no notebook"
    try:
        text = data.decode("utf-8-sig")
        raw = json.loads(text)
    except (UnicodeDecodeError, ValueError) as error:
        where = f" (line {error.lineno})" if isinstance(error, json.JSONDecodeError) else ""
        return None, f"the file is not valid JSON{where}, so it is not a notebook; was it saved from Jupyter?"
    if not isinstance(raw, dict) or not isinstance(raw.get("cells"), list) or "nbformat" not in raw:
        return None, "the file is JSON but not a Jupyter notebook (no cells and nbformat)"
    try:
        nb = nbformat.reads(text, as_version=4, capture_validation_error={})
    except Exception as error:  # nbformat's errors vary by version
        return None, f"the file is not a notebook nbformat can read ({type(error).__name__})"
    return nb, None


def identify(nb, solutions: dict[str, Solution], filename: str = "") -> tuple[str | None, str]:
    """(solution name, how it was found), or (None, why not)."""
    meta = nb.metadata.get("labkit") if isinstance(nb.metadata, dict) else None
    if isinstance(meta, dict) and meta.get("notebook") in solutions:
        return meta["notebook"], "notebook metadata"
    owner = {q: s.name for s in solutions.values() for q in s.questions}
    votes: dict[str, int] = {}
    for cell in nb.cells:
        marks = release.role(cell)
        if marks and marks[0] in owner:
            votes[owner[marks[0]]] = votes.get(owner[marks[0]], 0) + 1
    if votes:
        return max(sorted(votes), key=votes.get), "question ids"
    ids = {c.get("id") for c in nb.cells if c.get("id")}
    shared = {s.name: len(ids & s.cell_ids) for s in solutions.values()}
    best = max(sorted(shared), key=shared.get)
    if shared[best] >= 3:
        return best, "cell ids"
    for name in solutions:
        if name in filename:
            return name, "file name"
    return None, ("it is not a notebook of this workbook: no cell of it is an exercise or check cell "
                  f"of {', '.join(solutions)}")


def _is_python(source: str) -> bool:
    try:
        compile(source, "<answer>", "exec")
        return True
    except (SyntaxError, ValueError):
        return False


def answers_of(nb) -> dict[str, str]:
    """question -> the student's answer source: every cell marked as its answer, in order, joined."""
    parts: dict[str, list[str]] = {}
    for cell in nb.cells:
        marks = release.role(cell)
        if not marks or marks[1] != "answer":
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(source)
        if cell.get("cell_type") != "code":
            if not _is_python(source):
                continue  # prose in a cell that was an answer cell: nothing to run
        parts.setdefault(marks[0], []).append(source)
    return {q: "\n\n".join(sources) for q, sources in parts.items()}


def merge(solution: Solution, answers: dict[str, str]):
    """(notebook to run, roles of its code cells in order: None, ("guard", ""), or (question, role))."""
    nb = copy.deepcopy(solution.nb)
    for cell in nb.cells:
        marks = release.role(cell)
        if marks and marks[1] == "answer":
            cell.source = answers.get(marks[0], release.stub_source(cell.source))
    cells = [nbformat.v4.new_code_cell(GUARD_CELL, id="labkit-grader-guard")]
    for number, cell in enumerate(nb.cells):
        marks = release.role(cell)
        if marks and marks[1] == "check":
            cells.append(nbformat.v4.new_code_cell(RESTORE_CELL, id=f"labkit-grader-restore-{number}"))
        cells.append(cell)
    nb.cells = cells
    roles = [("guard", "") if (c.get("id") or "").startswith("labkit-grader-") else release.role(c)
             for c in nb.cells if c.cell_type == "code"]
    return nb, roles


# -- running one notebook under nbval ------------------------------------------------------

_active: dict[str, subprocess.Popen] = {}
_active_lock = threading.Lock()


def _processes_with(token: str) -> list[int]:
    """Pids of this user's processes whose environment holds LABKIT_GRADE_RUN=token (Linux)."""
    needle = f"LABKIT_GRADE_RUN={token}".encode()
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _kill_run(token: str, process: subprocess.Popen | None) -> None:
    """Kill the run's process group and every process that carries its token."""
    if process is not None and process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (OSError, AttributeError):
            process.kill()
    for _ in range(20):
        pids = _processes_with(token)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    if process is not None:
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            pass


def kill_all() -> None:
    """Kill every run still going (Ctrl-C, or the grader exiting)."""
    with _active_lock:
        runs = list(_active.items())
    for token, process in runs:
        _kill_run(token, process)


@dataclasses.dataclass
class RunResult:
    cells: dict          # code cell number -> the probe's record
    verdicts: list       # {"question", "status", "passed", "points", "message", "t"}
    killed: bool         # the run hit the time limit
    seconds: float


def _matplotlib_dir() -> str | None:
    if os.environ.get("MPLCONFIGDIR"):
        return os.environ["MPLCONFIGDIR"]
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "matplotlib"
    return str(cache) if cache.is_dir() else None


def run_notebook(nb, folder: Path, *, points: dict, cell_timeout: float, time_limit: float,
                 private_tests: Path | None = None, hide=()) -> RunResult:
    """Run ``nb`` under nbval in ``folder`` (fresh), beside an examiner of its own; kill everything at
    ``time_limit``. ``points`` is what each question is worth; the examiner also loads the
    ``private_tests`` (a copy only it may read). Isolated, the folders in ``hide`` look empty to
    the run. Where :mod:`labkit.grading.sandbox` can,
    the run is isolated: the kernel and the examiner each a user id of their own, in a network of
    their own."""
    grader, work, exam = folder / "grader", folder / "work", folder / "examiner"
    for made in (grader, work, exam):
        made.mkdir(exist_ok=True)
    (grader / "pytest.ini").write_text("[pytest]\n")
    notebook = work / "submission.ipynb"
    nbformat.write(nb, notebook)
    probe_path, record = grader / "cells.jsonl", exam / "verdicts.jsonl"
    record.touch(mode=0o600)
    token = f"{os.getpid()}-{uuid.uuid4().hex}"  # whose runs these are: graders side by side tell theirs apart
    address = f"@labkit-examiner-{token}" if sys.platform.startswith("linux") else str(exam / "examiner.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "LABKIT_", "JPY_"))}
    env.update(HOME=str(work), TMPDIR=str(work), TMP=str(work), TEMP=str(work),
               LABKIT_PROBE_OUT=str(probe_path), LABKIT_GRADE_RUN=token, PYTHONDONTWRITEBYTECODE="1",
               LABKIT_EXAMINER=address, PYTHONPATH=str(_LABKIT_ROOT))  # this labkit
    shared = exam / "shared"  # the examiner's temporary files: the SQLite databases it hands the answer
    shared.mkdir()
    examiner = [sys.executable, "-m", "labkit.grading.examiner", "--listen", address, "--record", str(record),
                "--points", json.dumps(points), "--tmp", str(shared)]
    private = None
    if private_tests is not None:
        private = exam / "private"
        private.mkdir(mode=0o700)
        for path in sorted(Path(private_tests).glob("*.py")):
            shutil.copyfile(path, private / path.name)
        examiner += ["--private", str(private)]
    command = [sys.executable, "-m", "pytest", "-c", str(grader / "pytest.ini"), "--rootdir", str(work),
               "-p", "no:cacheprovider", "-p", "labkit.grading.probe", "--nbval", "--nbval-current-env",
               f"--nbval-cell-timeout={cell_timeout:g}", "-q", "-rN", "--tb=no", "--color=no", notebook.name]
    isolated, _ = sandbox.available()
    with contextlib.ExitStack() as stack:
        lease = stack.enter_context(sandbox.Lease()) if isolated else None
        judge = stack.enter_context(sandbox.Lease()) if isolated else None
        mpl = _matplotlib_dir()
        if lease is not None:
            if mpl:  # the run may not read the grader's home: give it a copy of matplotlib's font cache
                mpl = shutil.copytree(mpl, grader / "matplotlib")
            folder.chmod(0o711)
            lease.give(grader, work, notebook, *grader.rglob("*"))
            judge.give(exam, record, *([private, *private.iterdir()] if private else []))
            exam.chmod(0o711)
            shared.chmod(0o1777)  # both may make files here; only their owner may remove them
            command = sandbox.wrap(lease.uid, command, examiner=(judge.uid, examiner), hide=_hideable(hide))
        if mpl:
            env["MPLCONFIGDIR"] = str(mpl)
        started = time.monotonic()
        killed = False
        # The run's stdin is a pipe this process holds open while the run lasts: if the grader
        # dies, even by SIGKILL, the run and its examiner read end of file and exit.
        alive, holding = os.pipe()
        stack.callback(os.close, holding)
        with open(grader / "pytest.log", "wb") as log:
            try:
                if lease is None:  # no isolation: the examiner is simply a process of the grader's
                    stack.enter_context(_examiner(examiner, env, log, stdin=alive))
                process = subprocess.Popen(command, cwd=work, env=env, stdin=alive, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            finally:
                os.close(alive)
            with _active_lock:
                _active[token] = process
            try:
                process.wait(timeout=max(1.0, time_limit))
            except subprocess.TimeoutExpired:
                killed = True
            finally:
                _kill_run(token, process)
                with _active_lock:
                    _active.pop(token, None)
        lines = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines() if _is_json(line)]
    cells = {}
    if probe_path.exists():
        for line in probe_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if _is_json(line):
                record_ = json.loads(line)
                if not (isinstance(record_, dict) and isinstance(record_.get("cell"), int)
                        and all(isinstance(record_.get(k), (int, float)) for k in ("start", "end"))):
                    continue  # the kernel's user can write this file: only well-formed lines count
                if record_.get("when") == "call" or record_["cell"] not in cells:
                    cells[record_["cell"]] = record_
    return RunResult(cells, lines, killed, time.monotonic() - started)


_LABKIT_ROOT = Path(__file__).resolve().parents[2]


def _hideable(paths) -> list[str]:
    """The folders a run must not read (the solutions, the private tests, the history) that exist
    and hold neither this labkit nor the run's own folder."""
    found = []
    for path in paths:
        if path is None or not Path(path).is_dir():
            continue
        path = Path(path).resolve()
        if path not in (_LABKIT_ROOT, *_LABKIT_ROOT.parents) and not Path(tempfile.gettempdir()).resolve().is_relative_to(path):
            found.append(str(path))
    return sorted(set(found))


@contextlib.contextmanager
def _examiner(command: list[str], env: dict, log, stdin: int):
    """The examiner of a run that is not isolated: started, ready, and stopped at the end."""
    process = subprocess.Popen(command, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=log,
                               start_new_session=True)
    try:
        ready = process.stdout.readline()
        if ready != b"ready\n":
            raise GradeError(f"the examiner did not start; see {log.name}")
        yield process
    finally:
        process.kill()
        process.wait()
        process.stdout.close()


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def _is_json(line: str) -> bool:
    try:
        json.loads(line)
        return True
    except ValueError:
        return False


# -- grading one submission -------------------------------------------------------------------


@dataclasses.dataclass
class Options:
    cell_timeout: float = CELL_TIMEOUT_S
    time_limit: float = TIME_LIMIT_S
    expect: str | None = None
    keep: bool = False
    private_tests: Path | None = None   # a folder of extra hidden tests the examiner loads


def grade_submission(path: Path, solutions: dict[str, Solution], options: Options,
                     label: str | None = None) -> list[Record]:
    """The records of one submission. Never raises for anything the submission does."""
    label = label or str(path)
    nb, problem = read_submission(path)
    name = None
    if nb is not None:
        name, how = identify(nb, solutions, Path(path).name)
        if name is None:
            problem = how
        elif options.expect and name != options.expect:
            problem = f"this is notebook {name}, not {options.expect}: was the wrong notebook submitted?"
            name = None
    if problem:
        target = solutions.get(options.expect) if options.expect else None
        if target is None:
            return [Record(label, None, None, False, 0.0, 0.0, problem, "unreadable")]
        return [Record(label, target.name, q, False, 0.0, target.max_points[q], f"{q} not graded: {problem}",
                       "unreadable") for q in target.questions]
    solution = solutions[name]
    answers = answers_of(nb)
    judged = {q: _Judged(False, f"{q} not graded: no answer cell for {q} in the submission. The grader finds "
                                f"answers by their cell metadata; the cell was deleted or its metadata (tags, "
                                f"labkit) removed.")
              for q in solution.questions if q not in answers}
    pending = [q for q in solution.questions if q not in judged]
    if pending:
        judged.update(_run_until_judged(solution, {q: answers[q] for q in pending}, options))
    return [Record(label, solution.name, q, judged[q].passed, solution.max_points[q] if judged[q].passed else 0.0,
                   solution.max_points[q], judged[q].message, judged[q].status, judged[q].seconds, _student_id(nb))
            for q in solution.questions]


def _student_id(nb) -> str:
    """The notebook's metadata ``labkit.student_id``, for a roster that matches by it."""
    meta = nb.metadata.get("labkit")
    found = meta.get("student_id") if isinstance(meta, dict) else None
    return str(found) if isinstance(found, (str, int)) and not isinstance(found, bool) else ""


@dataclasses.dataclass
class _Judged:
    passed: bool
    message: str
    status: str = "not graded"
    seconds: float | None = None


def _run_until_judged(solution: Solution, answers: dict[str, str], options: Options) -> dict[str, _Judged]:
    judged: dict[str, _Judged] = {}
    deadline = time.monotonic() + options.time_limit
    live = dict(answers)  # the student's answers still in the notebook
    for attempt in range(len(answers) + 1):
        remaining = deadline - time.monotonic()
        if not live or remaining <= 1:
            break
        folder = Path(tempfile.mkdtemp(prefix=f"labkit-grade-{os.getpid()}-"))
        try:
            nb, roles = merge(solution, live)
            result = run_notebook(nb, folder, points=solution.max_points, cell_timeout=options.cell_timeout,
                                  time_limit=remaining, private_tests=options.private_tests,
                                  hide=(solution.path.parent, options.private_tests, _LABKIT_ROOT / ".git"))
        finally:
            if not options.keep:
                shutil.rmtree(folder, ignore_errors=True)
        found, broke = _judge(solution, roles, result, live, options)
        judged.update(found)
        for q in found:
            live.pop(q, None)
        if broke is None:
            break
        question, message = broke
        if question is None:  # the notebook itself broke, not an answer
            for q in list(live):
                judged[q] = _Judged(False, f"{q} not graded: {message}")
            live.clear()
            break
        judged.setdefault(question, _Judged(False, message, "failed"))
        live.pop(question, None)
    for q in answers:
        if q not in judged:
            judged[q] = _Judged(False, f"{q} not graded: the submission ran past the grader's time limit "
                                       f"of {options.time_limit:g} s")
    return judged


def _judge(solution: Solution, roles: list, result: RunResult, live: dict, options: Options):
    """({question: _Judged} for the questions this run decided, and what broke the run).

    What broke is None (the run went to the end), or (question, message) for the question
    whose cell killed the kernel or the run, or (None, message) when no answer is to blame.
    """
    check_cell = {r[0]: i for i, r in enumerate(roles) if r and r[1] == "check"}
    answer_cell = {r[0]: i for i, r in enumerate(roles) if r and r[1] == "answer"}
    found: dict[str, _Judged] = {}
    for q in live:
        record = result.cells.get(check_cell[q])
        if record is None or record.get("kind") in ("dead",):
            continue
        seconds = round(record["end"] - record["start"], 3)
        # The check cell's own check is the first one that started while the cell ran: a check the
        # answer starts on the side later (with an answer of its choosing) decides nothing.
        inside = [v for v in result.verdicts if v.get("question") == q
                  and record["start"] - 0.5 <= _number(v.get("started")) <= record["end"] + 0.5]
        if inside:
            verdict = min(inside, key=lambda v: _number(v.get("started")))
            passed = verdict.get("passed") is True
            found[q] = _Judged(passed, str(verdict.get("message", "")),
                               "passed" if passed else str(verdict.get("status") or "failed"), seconds)
            continue
        found[q] = _Judged(False, _why_no_verdict(q, record, result.cells.get(answer_cell[q]), options),
                           "failed", seconds)

    # Did the run break (kernel died, run killed) before every check cell ran?
    broken_at, how = None, None
    for number in range(len(roles)):
        record = result.cells.get(number)
        if record is None:
            broken_at, how = number, "killed" if result.killed else "stopped"
            break
        if record.get("kind") == "dead":
            broken_at, how = (number - 1 if record.get("dead_at_start") else number), "dead"
            break
    unjudged = [q for q in live if q not in found]
    if broken_at is None or not unjudged:
        return found, None
    # Blame the cell that broke it, or the last student answer that ran before it.
    blamed = None
    for number in range(broken_at, -1, -1):
        role = roles[number]
        if role and role[1] in ("answer", "check") and role[0] in live:
            blamed = role
            break
    if how == "killed":
        what = f"the submission ran past the grader's time limit of {options.time_limit:g} s and was stopped"
    elif how == "dead":
        what = "the kernel died (sys.exit in a thread, os._exit, a signal, or a crash)"
    else:
        what = "nbval stopped before the end of the notebook"
    if blamed is None:
        where = _cell_name(roles, broken_at)
        return found, (None, f"the notebook stopped at {where}, before any answer ran: {what}")
    q, role = blamed
    cell = "answer cell" if role == "answer" else "check"
    if q in found and not found[q].passed and "not graded" not in found[q].message:
        message = found[q].message
    else:
        message = f"{q} failed: {what} while your {cell} for {q} ran, or after it. Hint: look for an exit, a kill, or a thread your answer leaves running."
        if how == "killed":
            message = f"{q} failed: {what}, in your {cell} for {q}. Hint: look for a loop that never ends, or a wait with no time limit."
    found.pop(q, None)
    return found, (q, message)


def _cell_name(roles, number) -> str:
    role = roles[number] if 0 <= number < len(roles) else None
    if role == ("guard", ""):
        return "a cell of the grader's own"
    return f"code cell {number} of the notebook"


def _why_no_verdict(q: str, check: dict, answer: dict | None, options: Options) -> str:
    printed = [line for line in (check.get("stdout") or "").splitlines() if line.startswith(f"{q} ")]
    if printed:
        return (f"{q} failed: the check cell printed {printed[-1][:120]!r}, but the examiner decided no verdict "
                f"for {q} then: labkit.check was replaced or changed at runtime, and the grader does not trust "
                f"that output")
    if check.get("kind") == "timeout":
        return f"{q} failed: the check did not finish within {options.cell_timeout:g} s and was stopped"
    if answer and answer.get("ename") and answer.get("ename") != "KeyboardInterrupt":
        return f"{q} failed: your answer cell raised {answer['ename']}: {_short(answer.get('evalue'))}"
    if answer and answer.get("kind") == "timeout":
        return f"{q} failed: your answer cell did not finish within {options.cell_timeout:g} s and was stopped"
    if check.get("ename"):
        return f"{q} failed: the check cell raised {check['ename']}: {_short(check.get('evalue'))}"
    return f"{q} failed: the check printed no verdict"


def _short(text, limit: int = 200) -> str:
    text = " ".join(str(text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- many submissions -------------------------------------------------------------------------


def find_submissions(paths) -> list[Path]:
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found.extend(p for p in sorted(path.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts)
        elif path.exists():
            found.append(path)
        else:
            raise GradeError(f"no such file or folder: {path}")
    return found


def grade(paths, *, solutions: Path, jobs: int | None = None, options: Options | None = None,
          progress=None, shard: tuple[int, int] | None = None) -> list[Record]:
    """Grade every submission in ``paths`` (files or folders), or only part I of N of them
    (``shard=(I, N)``); the records, submission by submission."""
    options = options or Options()
    known = load_solutions(solutions)
    if options.expect and options.expect not in known:
        raise GradeError(f"no solution edition for {options.expect} in {solutions}")
    submissions = find_submissions(paths)
    if shard is not None:
        submissions = results.shard(submissions, shard)
    jobs = max(1, jobs or os.cpu_count() or 1)
    graded: dict[int, list[Record]] = {}
    done = 0
    started = time.monotonic()
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="labkit-grade") as pool:
            # Largest first, so the long notebooks do not all start last (the results keep the given order).
            order = sorted(range(len(submissions)), key=lambda i: -_size(submissions[i]))
            futures = {pool.submit(_safely, submissions[i], known, options): i for i in order}
            for future in concurrent.futures.as_completed(futures):
                index = futures[future]
                graded[index] = future.result()
                done += 1
                if progress:
                    progress(done, len(submissions), submissions[index], graded[index], time.monotonic() - started)
    finally:
        kill_all()
    return [r for i in range(len(submissions)) for r in graded.get(i, [])]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _safely(path: Path, known, options: Options) -> list[Record]:
    try:
        return grade_submission(path, known, options)
    except Exception as error:  # a grader bug must not lose the other submissions
        return [Record(str(path), None, None, False, 0.0, 0.0,
                       f"not graded: the grader failed on this submission ({type(error).__name__}: {error}); "
                       f"please report it")]


# -- command line -------------------------------------------------------------------------------

#: What ``--format`` writes at ``--out``.
FORMATS = {"results": "OUT.json (every record) and OUT.csv (one row per submission)",
           "gradescope": "Gradescope's results.json for the one submission",
           "prairielearn": "PrairieLearn's external grader results.json for the one submission"}


def add_parser(commands) -> None:
    """Add the ``grade`` subcommand to ``python -m labkit``'s subparsers."""
    parser = commands.add_parser(
        "grade", help="grade submitted notebooks through nbval", description=__doc__.splitlines()[0],
        epilog="python -m labkit grade merge PART.json ... [--out ...] joins the results of shards "
               "(RESULTS.json of each) and writes what one run over the whole class writes.")
    parser.add_argument("submissions", nargs="+", type=Path,
                        help="submitted .ipynb files, or folders of them (or: merge PART.json ...)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write (default: results, or results.json for one submission's formats)")
    parser.add_argument("--format", choices=list(FORMATS), default="results",
                        help="; ".join(f"{k}: {v}" for k, v in FORMATS.items()))
    parser.add_argument("--solutions", type=Path, default=None,
                        help="folder of the solution notebooks (default: solutions, here or beside labkit)")
    parser.add_argument("--notebook", dest="expect", default=None,
                        help="the notebook every submission should be (such as 01_client_server)")
    parser.add_argument("--private-tests", type=Path, default=None, metavar="DIR",
                        help="a folder of extra hidden tests the students do not have (see labkit/grading/README.md)")
    parser.add_argument("--shard", default=None, metavar="I/N",
                        help="grade only part I of N (I from 0, as a Kubernetes completion index); join with merge")
    parser.add_argument("--feedback", type=Path, default=None, metavar="DIR",
                        help="write a feedback file per submission (NAME.md and NAME.html) into DIR")
    parser.add_argument("--report", type=Path, default=None, metavar="FILE",
                        help="write statistics over the class to FILE.html and FILE.json")
    parser.add_argument("--roster", type=Path, default=None, metavar="CSV",
                        help="a roster (student_id and optionally file columns): writes OUT-gradebook.csv")
    parser.add_argument("--visibility", choices=results.VISIBILITIES, default="visible",
                        help="who sees each question's result on Gradescope (default visible)")
    parser.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 1,
                        help="submissions graded at once (default: the number of cores)")
    parser.add_argument("--time-limit", type=float, default=TIME_LIMIT_S,
                        help=f"seconds one submission may take in all before it is killed (default {TIME_LIMIT_S:g})")
    parser.add_argument("--cell-timeout", type=float, default=CELL_TIMEOUT_S,
                        help=f"seconds one cell may run before it is interrupted (default {CELL_TIMEOUT_S:g})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (to debug the grader)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print the message of every question not passed")
    parser.set_defaults(run=main)


def default_solutions() -> Path:
    here = Path("solutions")
    if here.is_dir():
        return here
    beside = Path(__file__).resolve().parents[2] / "solutions"
    return beside if beside.is_dir() else here


def _progress(stream):
    def report(done, total, path, records, seconds):
        score = sum(r.points for r in records)
        most = sum(r.max_points for r in records)
        width = 24
        bar = "#" * (width * done // total) + "." * (width - width * done // total)
        stream.write(f"[{bar}] {done}/{total} {path}: {score:g}/{most:g} ({seconds:.0f} s)\n")
        stream.flush()
    return report


def main(args) -> int:
    merging = args.submissions[0] == Path("merge") and not args.submissions[0].exists()
    try:
        if merging:
            if args.format != "results":
                raise GradeError("merge writes the results format; grade each submission for Gradescope or PrairieLearn")
            records = results.merge([results.load(p) for p in args.submissions[1:]])
            seconds = None
        else:
            records, seconds = _grade_from_command_line(args)
    except GradeError as error:
        print(f"grade: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kill_all()
        print("grade: interrupted; nothing written", file=sys.stderr)
        return 130
    if args.format != "results":
        return _write_one_submission(args, records, seconds)
    if not records and not args.shard:  # a shard may be empty: a class smaller than the number of machines
        print("grade: no notebooks (.ipynb) found in " + ", ".join(map(str, args.submissions)), file=sys.stderr)
        return 2
    return _write_class(args, records)


def _grade_from_command_line(args) -> tuple[list[Record], float]:
    solutions = args.solutions or default_solutions()
    options = Options(cell_timeout=args.cell_timeout, time_limit=args.time_limit, expect=args.expect, keep=args.keep,
                      private_tests=_private_tests(args.private_tests))
    isolated, why = sandbox.available()
    if not isolated:
        print(f"grade: runs are not isolated: {why}", file=sys.stderr)
    started = time.monotonic()
    records = grade(args.submissions, solutions=solutions, jobs=args.jobs, options=options,
                    progress=_progress(sys.stderr), shard=args.shard and results.parse_shard(args.shard))
    return records, time.monotonic() - started


def _private_tests(folder: Path | None) -> Path | None:
    if folder is None:
        return None
    if not folder.is_dir() or not any(folder.glob("*.py")):
        raise GradeError(f"--private-tests {folder}: not a folder of Python modules (*.py)")
    loaded = subprocess.run([sys.executable, "-c", "import sys; from labkit.grading.authoring import load_private; "
                             "print(load_private(sys.argv[1]))", str(folder)],
                            capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, PYTHONPATH=str(_LABKIT_ROOT)))
    if loaded.returncode != 0 or not loaded.stdout.strip().isdigit() or int(loaded.stdout) == 0:
        why = (loaded.stderr.strip().splitlines() or ["it adds no test to any question"])[-1]
        raise GradeError(f"--private-tests {folder}: the tests cannot be loaded: {why}")
    return folder.resolve()


def _write_class(args, records) -> int:
    out = args.out or Path("results")
    json_path, csv_path = results.write_results(records, out)
    print(results.format_table(records))
    if args.verbose:
        for r in records:
            if not r.passed:
                print(f"{r.submission}: {r.message}")
    written = [json_path, csv_path]
    if args.feedback:
        feedback.write(records, args.feedback)
        written.append(args.feedback)
    if args.report:
        written.extend(report.write(records, args.report))
    if args.roster:
        try:
            roster = results.read_roster(args.roster)
        except GradeError as error:
            print(f"grade: {error}; the results are written, the gradebook is not", file=sys.stderr)
            return 2
        path = json_path.with_name(json_path.stem + "-gradebook.csv")
        for problem in results.write_gradebook(records, roster, path):
            print(f"grade: roster: {problem}", file=sys.stderr)
        written.append(path)
    print("wrote " + ", ".join(map(str, written)))
    return 0


def _write_one_submission(args, records, seconds) -> int:
    """Gradescope's or PrairieLearn's results for a submission folder: its best notebook, the others named."""
    by = {}
    for r in records:
        by.setdefault(r.submission, []).append(r)
    chosen = max(by.values(), key=lambda rs: sum(r.points for r in rs), default=[])
    others = [s for s in by if not chosen or s != chosen[0].submission]
    note = "".join(f"\nnot counted: {s} (only the best notebook of a submission counts)" for s in others)
    out = args.out or Path("results.json")
    if args.format == "gradescope":
        data = results.gradescope(chosen, visibility=args.visibility, seconds=seconds)
        data["output"] = (data["output"] or "no notebook (.ipynb) was found in the submission") + note
    else:
        data = results.prairielearn(chosen)
        if not chosen:
            data.update(gradable=False, message="no notebook (.ipynb) was found in the submission")
        elif all(r.status == "unreadable" for r in chosen):  # not the notebook asked for: no attempt lost
            data.update(gradable=False, message=chosen[0].message)
        data["message"] += note
    results.write_json(out, data)
    if args.feedback and chosen:
        feedback.write(chosen, args.feedback)
    print(f"wrote {out}")
    return 0
