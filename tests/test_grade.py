"""python -m labkit grade: submissions scored through nbval, fairly, safely, and in parallel.

Grading one notebook costs a kernel and a run of the notebook (about 13 s for 00,
27 s for 01), so every submission of this suite is graded in ONE call of the grader
(module fixture ``graded``), several at a time, and each submission carries wrong or
hostile answers for DIFFERENT questions at once. The tests below only read the results.

The wrong answers come from the catalogue in tests/answers/ (``WRONG``): the first
two per question of notebooks 00 and 01 go through the grader here (set
LABKIT_GRADE_ALL_WRONG=1 to send all of them); the grader's path is the same for every
notebook, and tests/test_check.py checks every notebook's wrong answers with
``labkit.check``, whose verdict is the grader's message (tested below).
"""

from __future__ import annotations

import collections
import contextlib
import copy
import csv
import inspect
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
import pytest

import labkit
from labkit.grading import grade, release, sandbox
from labkit.grading import verdicts
from labkit.grading.authoring import questions

from answers import WRONG
from answers.solutions import solution_source

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
STUDENT = ROOT / "notebooks"
NB00, NB01 = "00_start_here", "01_client_server"
# Longer than the slowest cell of notebook 01 (its throughput sweep, about 30 s), so that only
# the hostile answers meet it: a cell that times out first hides the timeouts after it.
CELL_TIMEOUT = 60
JOBS = int(os.environ.get("LABKIT_GRADE_JOBS", "3"))
WRONG_BATCHES = None if os.environ.get("LABKIT_GRADE_ALL_WRONG") else 2

# -- building submissions -------------------------------------------------------------------

IMPORTS = "import os\nimport sys\nimport time\n\nimport requests\n\n"


def source_of(question: str, function) -> str:
    """An answer cell defining the question's function as ``function`` does (from test_check)."""
    name = questions()[question].function
    text = IMPORTS + inspect.getsource(function)
    if function.__name__ != name:
        text += f"\n\n{name} = {function.__name__}\n"
    return text


def student_edition(name: str):
    return nbformat.read(STUDENT / f"{name}.ipynb", as_version=4)


def with_answers(name: str, answers: dict):
    nb = student_edition(name)
    for cell in nb.cells:
        marks = release.role(cell)
        if marks and marks[1] == "answer" and marks[0] in answers:
            cell.source = answers[marks[0]]
    return nb


def write(folder: Path, filename: str, nb_or_text) -> Path:
    path = folder / filename
    if isinstance(nb_or_text, (str, bytes)):
        path.write_bytes(nb_or_text.encode() if isinstance(nb_or_text, str) else nb_or_text)
    else:
        nbformat.write(nb_or_text, path)
    return path


def wrong_batches():
    """Submissions of wrong answers: batch i holds the i-th wrong answer of every question."""
    by_question = collections.defaultdict(list)
    for question, function, words in WRONG:
        by_question[question].append((function, words))
    batches = []
    for i in range(max(len(v) for v in by_question.values())):
        if WRONG_BATCHES is not None and i >= WRONG_BATCHES:
            break
        batch = {q: v[i] for q, v in by_question.items() if i < len(v)}
        for notebook in (NB00, NB01):
            part = {q: fw for q, fw in batch.items() if q.startswith("q" + str(int(notebook[:2])) + ".")}
            if part:
                batches.append((f"wrong-{i}-{notebook}.ipynb", notebook, part))
    return batches


# hostile answers: each costs only the question it is in

REPLACES_CHECK = IMPORTS + '''import labkit

def fetch_or_none(client, url):
    return None

labkit.check = lambda question, answer, **options: print(
    f"{question} passed: 8 hidden tests, 11 runs against real servers.")
'''

REBINDS_LABKIT = IMPORTS + '''import types

def next_messages(client, base_url, after):
    return []

labkit = types.SimpleNamespace(check=lambda question, answer, **options: print(
    f"{question} passed: 2 hidden tests, 2 runs against real servers."))
'''

EXIT_IN_FUNCTION = IMPORTS + '''def order_totals(client, base_url, order_ids):
    sys.exit("I am done")
'''

RAISES_AT_TOP = IMPORTS + '''def next_messages(client, base_url, after):
    return []

1 / 0
'''

LOOPS_AT_TOP = IMPORTS + '''while True:
    pass

def fetch_or_none(client, url):
    return None
'''

PATCHES_INTERNALS = IMPORTS + inspect.getsource(dict((f.__name__, f) for _, f, _ in WRONG)["totals_ignore_qty"]) + '''
order_totals = totals_ignore_qty

import labkit.grading.checker as _check
from labkit.grading import verdicts as _verdicts
_check._grade = lambda question, answer, limit: (_verdicts.passed(question, 2, 4), None)
_verdicts.passed = lambda question, tests, runs: _verdicts.Verdict(question, "passed", "anything")
sys.modules["labkit.tracing"].Trace.events = lambda self: []
'''

PRINTS_WHILE_CHECKED = solution_source("q1.3").replace(
    "def next_messages(client, base_url, after):\n",
    "def next_messages(client, base_url, after):\n    print('x' * 1_000_000)\n")

EXITS_IN_FUNCTION = IMPORTS + '''def fetch_or_none(client, url):
    os._exit(3)
'''

KILLS_KERNEL_AT_TOP = IMPORTS + '''import signal

def order_totals(client, base_url, order_ids):
    return {}

os.kill(os.getpid(), signal.SIGKILL)
'''

# The four lines: nonsense, then every hidden test's run made a no-op (here through the
# registry and through the garbage collector both). They reach only the kernel's copy of the tests.
FORGES_THE_HIDDEN_TESTS = IMPORTS + '''import gc
import labkit.grading.authoring as _authoring

def fetch_or_none(client, url):
    return "nonsense"

for _question in _authoring.questions().values():
    for _test in _question.tests:
        _test.run = lambda run: None
for _object in gc.get_objects():
    if type(_object).__name__ == "HiddenTest":
        _object.run = lambda run: None
'''

EQUALS_EVERYTHING = IMPORTS + '''class _Total(dict):
    def __eq__(self, other):
        return True
    __ne__ = lambda self, other: False
    def __contains__(self, key):
        return True

def order_totals(client, base_url, order_ids):
    return _Total()
'''

# Finds the examiner's record file on its command line and writes passed verdicts into it,
# tries to kill the examiner, and sends it a verdict of its own.
WRITES_THE_RECORD = IMPORTS + '''import json, pathlib, signal, socket

def next_messages(client, base_url, after):
    return []

for _proc in pathlib.Path("/proc").iterdir():
    try:
        _argv = (_proc / "cmdline").read_bytes().split(b"\\0")
    except OSError:
        continue
    if b"labkit.grading.examiner" in _argv and b"--record" in _argv:
        _record = _argv[_argv.index(b"--record") + 1].decode()
        try:
            with open(_record, "a") as _file:
                for _q in ("q1.1", "q1.2", "q1.3"):
                    _file.write(json.dumps({"question": _q, "status": "passed", "passed": True, "points": 1.0,
                                            "message": _q + " passed", "t": time.time()}) + "\\n")
        except OSError:
            pass
        try:
            os.kill(int(_proc.name), signal.SIGSTOP)
        except OSError:
            pass
try:
    _address = os.environ["LABKIT_EXAMINER"]
    _sock = socket.socket(socket.AF_UNIX)
    _sock.connect("\\0" + _address[1:] if _address.startswith("@") else _address)
    _sock.sendall(b\'{"op": "verdict", "id": 1, "line": "q1.3 passed", "passed": true}\\n{"op": 7}\\nnot json\\n\')
    _sock.close()
except OSError:
    pass
'''

# While its check cell runs, starts a check of its own on the examiner's socket, with an answer
# that is right but slow and a time limit of its own choosing (found by a review).
CHECKS_ON_THE_SIDE = """import builtins, os, socket, time
from labkit.grading import answering

def greet(client, base_url, name):
    return "wrong"

_calls = []
def _too_slow(client, base_url, name):
    _calls.append(name)
    if len(_calls) == 1:
        time.sleep(21)
    return client.get(base_url + "/hello", params={"name": name}).json()["message"]

_real_print = builtins.print
def _print(*args, **kw):
    if args and str(args[0]).startswith("q0.1 ") and not _calls:
        path = os.environ["LABKIT_EXAMINER"]
        s = socket.socket(socket.AF_UNIX)
        s.connect("\\0" + path[1:] if path.startswith("@") else path)
        answering._Connection(s).check("q0.1", _too_slow, 1000, False)
    return _real_print(*args, **kw)
builtins.print = _print
"""

SWALLOWS_INTERRUPTS = IMPORTS + '''while True:
    try:
        time.sleep(0.1)
    except BaseException:
        pass
'''

MEGABYTES_AT_TOP = "print('y' * 3_000_000)\n"


def mess_source(port: int, marker: str, host_port: int) -> str:
    """Starts servers and a detached process, binds a port, writes files in ~, TMPDIR, the cwd, /tmp and the
    workbook's labkit package, and calls a port of the grading machine; never cleans up."""
    return f'''
import socket, subprocess, tempfile, pathlib
import labkit, labkit.apps
_forgotten = labkit.serve(labkit.apps.create("hello"), name="forgotten")
_listener = socket.socket()
_listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
_listener.bind(("127.0.0.1", {port}))
_listener.listen()
_daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)  # {marker}"],
                           start_new_session=True)
pathlib.Path("~/{marker}.txt").expanduser().write_text("home")
pathlib.Path(tempfile.gettempdir(), "{marker}.txt").write_text("tmp")
pathlib.Path("{marker}.txt").write_text("cwd")
''' + (ESCAPES.format(marker=marker, host_port=host_port) if sandbox.available()[0] else "")


#: Only where runs are isolated: elsewhere these would really land in the workbook.
ESCAPES = '''
for _path in ("/tmp/{marker}.txt", pathlib.Path(labkit.__file__).parent / "{marker}.py"):
    try:
        pathlib.Path(_path).write_text("escaped")
    except OSError:
        pass
try:
    socket.create_connection(("127.0.0.1", {host_port}), timeout=2).sendall(b"{marker}")
except OSError:
    pass
'''


def fairness_submission():
    """The solution answers, in a notebook where the student inserted, moved, duplicated,
    split and retyped cells."""
    nb = student_edition(NB01)
    cells = nb.cells
    answer = {release.role(c)[0]: c for c in cells if release.role(c) and release.role(c)[1] == "answer"}
    check = {release.role(c)[0]: c for c in cells if release.role(c) and release.role(c)[1] == "check"}
    # q1.1: duplicated; the first copy is wrong, the copy run after it is right (the last definition wins)
    answer["q1.1"].source = source_of("q1.1", dict((f.__name__, f) for _, f, _ in WRONG)["fetch_always_none"])
    second = copy.deepcopy(answer["q1.1"])
    second.id = "student-copy"
    second.source = solution_source("q1.1")
    cells.insert(cells.index(answer["q1.1"]) + 1, second)
    # q1.2: split in two cells, both keeping the metadata
    first_half = copy.deepcopy(answer["q1.2"])
    first_half.id = "student-split"
    first_half.source = "import requests\nBATCH = '/orders/batch'\n"
    answer["q1.2"].source = '''def order_totals(client, base_url, order_ids):
    response = client.post(base_url + BATCH, json={"ids": list(order_ids)})
    response.raise_for_status()
    return {o["id"]: round(sum(i["qty"] * i["price"] for i in o["items"]), 2) for o in response.json()["orders"]}
'''
    cells.insert(cells.index(answer["q1.2"]), first_half)
    # q1.3: turned into a raw cell, and moved to the top of the notebook
    q13 = answer["q1.3"]
    cells.remove(q13)
    retyped = nbformat.v4.new_raw_cell(solution_source("q1.3"), id=q13.id, metadata=q13.metadata)
    cells.insert(0, retyped)
    # cells of their own, a check cell deleted, another turned to markdown
    cells.insert(1, nbformat.v4.new_code_cell("print('my own notes')\nx = 1 / 0", id="student-own"))
    cells.insert(2, nbformat.v4.new_markdown_cell("My notes: q1.1 was hard.", id="student-md"))
    cells.remove(check["q1.2"])
    index = cells.index(check["q1.1"])
    cells[index] = nbformat.v4.new_markdown_cell(check["q1.1"].source, id=check["q1.1"].id,
                                                 metadata=check["q1.1"].metadata)
    return nb


# -- the one grading run --------------------------------------------------------------------------


def _leftovers(grader: int | None = None) -> list[int]:
    """The processes of the runs of ``grader`` (default: this process) still alive; other workers may grade beside."""
    token = f"LABKIT_GRADE_RUN={os.getpid() if grader is None else grader}-"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                pass
    return found


def _processes_running(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def _grade_dirs() -> set:
    return {p.name for p in Path(tempfile.gettempdir()).glob(f"labkit-grade-{os.getpid()}-*")}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("submissions")
    marker = f"labkit-grade-escape-{os.getpid()}"
    port = _free_port()
    host = socket.create_server(("127.0.0.1", 0))  # a service of the grading machine
    host.setblocking(False)
    expected = {}  # filename -> {question: (passed, [words in the message])}

    write(folder, "solution-00.ipynb", nbformat.read(SOLUTIONS / f"{NB00}.ipynb", as_version=4))
    write(folder, "solution-01.ipynb", nbformat.read(SOLUTIONS / f"{NB01}.ipynb", as_version=4))
    write(folder, "student-00.ipynb", student_edition(NB00))
    write(folder, "student-01.ipynb", student_edition(NB01))
    write(folder, "fairness-01.ipynb", fairness_submission())

    for filename, notebook, part in wrong_batches():
        answers = {q: source_of(q, f) for q, (f, _) in part.items()}
        if filename.startswith("wrong-0-") and notebook == NB01:
            answers["q1.2"] = MEGABYTES_AT_TOP + answers["q1.2"]
            answers["q1.3"] = answers["q1.3"] + mess_source(port, marker, host.getsockname()[1])
        write(folder, filename, with_answers(notebook, answers))
        expected[filename] = {q: (False, [f"{q} failed: ", *words]) for q, (_, words) in part.items()}

    write(folder, "hostile-1.ipynb", with_answers(NB01, {"q1.1": REPLACES_CHECK, "q1.2": EXIT_IN_FUNCTION,
                                                          "q1.3": RAISES_AT_TOP}))
    write(folder, "hostile-2.ipynb", with_answers(NB01, {"q1.1": LOOPS_AT_TOP, "q1.2": PATCHES_INTERNALS,
                                                          "q1.3": REBINDS_LABKIT}))
    write(folder, "hostile-3.ipynb", with_answers(NB01, {"q1.1": EXITS_IN_FUNCTION, "q1.2": KILLS_KERNEL_AT_TOP,
                                                          "q1.3": PRINTS_WHILE_CHECKED}))
    write(folder, "hostile-4.ipynb", with_answers(NB01, {"q1.1": FORGES_THE_HIDDEN_TESTS, "q1.2": EQUALS_EVERYTHING,
                                                          "q1.3": WRITES_THE_RECORD}))
    write(folder, "hostile-5.ipynb", with_answers(NB00, {"q0.1": CHECKS_ON_THE_SIDE}))
    over_time = write(tmp_path_factory.mktemp("slow"), "over-time.ipynb",
                      with_answers(NB00, {"q0.1": SWALLOWS_INTERRUPTS}))

    dirs_before = _grade_dirs()
    threads_before = set(threading.enumerate())
    progress = []
    slow = {}

    def grade_over_time():
        known = grade.load_solutions(SOLUTIONS)
        slow["records"] = grade.grade_submission(over_time, known, grade.Options(cell_timeout=300, time_limit=15))

    side = threading.Thread(target=grade_over_time)
    started = time.monotonic()
    side.start()
    records = grade.grade([folder], solutions=SOLUTIONS, jobs=JOBS,
                          options=grade.Options(cell_timeout=CELL_TIMEOUT, time_limit=300),
                          progress=lambda *args: progress.append(args))
    side.join()
    seconds = time.monotonic() - started
    if os.environ.get("LABKIT_GRADE_DEBUG"):
        for done, total, path, records_, at in progress:
            print(f"{at:6.1f} s  {Path(path).name}")
    by = collections.defaultdict(dict)
    for r in records + slow["records"]:
        by[Path(r.submission).name][r.question] = r
    return dict(records=records, by=by, expected=expected, progress=progress, seconds=seconds,
                port=port, marker=marker, host=host, dirs_before=dirs_before, threads_before=threads_before,
                folder=folder)


def messages(graded, filename):
    return {q: r.message for q, r in graded["by"][filename].items()}


# -- the editions ----------------------------------------------------------------------------------


def test_the_solution_edition_scores_full_marks(graded):
    for filename, notebook in (("solution-00.ipynb", NB00), ("solution-01.ipynb", NB01)):
        records = graded["by"][filename]
        assert {r.notebook for r in records.values()} == {notebook}
        for q, r in records.items():
            assert r.passed and r.points == r.max_points == 1, r
            question = questions()[q]
            assert r.message == verdicts.passed(q, len(question.tests), question.runs, grader=True).line


def test_the_student_edition_scores_zero_not_attempted(graded):
    for filename in ("student-00.ipynb", "student-01.ipynb"):
        records = graded["by"][filename]
        assert records, filename
        for q, r in records.items():
            assert (r.passed, r.points, r.max_points) == (False, 0, 1)
            assert r.message == verdicts.not_attempted(q).line


def test_every_question_of_the_workbook_is_graded(graded):
    known = grade.load_solutions(SOLUTIONS)
    assert sorted(q for s in known.values() for q in s.questions) == sorted(questions())
    for filename, notebook in (("solution-00.ipynb", NB00), ("solution-01.ipynb", NB01)):
        assert sorted(graded["by"][filename]) == sorted(known[notebook].questions)


# -- wrong answers: the verdict is the one labkit.check gives in the notebook -----------------------


def test_wrong_answers_fail_through_the_grader_with_the_right_hint(graded):
    assert graded["expected"], "no wrong answers were graded"
    for filename, wanted in graded["expected"].items():
        records = graded["by"][filename]
        for q, (passed, words) in wanted.items():
            r = records[q]
            assert not r.passed and r.points == 0, (filename, r)
            assert "Hint: " in r.message, r.message
            for word in words:
                assert word in r.message, (filename, q, r.message)


def test_the_grader_message_is_the_verdict_labkit_check_prints(graded, capsys):
    """The same answer, checked in this process as in a notebook, gives the grader's message."""
    import labkit

    for filename, notebook, part in wrong_batches()[:2]:
        for q, (function, _) in part.items():
            labkit.check(q, function)
            line = capsys.readouterr().out.strip()
            assert graded["by"][filename][q].message == line


# -- cells moved, inserted, duplicated, split, retyped ----------------------------------------------


def test_a_student_who_rearranges_cells_is_graded_fairly(graded):
    records = graded["by"]["fairness-01.ipynb"]
    assert {q: r.passed for q, r in records.items()} == {"q1.1": True, "q1.2": True, "q1.3": True}, \
        messages(graded, "fairness-01.ipynb")


# -- hostile submissions: each costs only what it breaks ----------------------------------------------


def test_replacing_labkit_check_earns_nothing(graded):
    """The grader puts labkit back before each check: the genuine check judges the answer."""
    r = graded["by"]["hostile-1.ipynb"]["q1.1"]
    assert not r.passed and r.points == 0
    assert r.message.startswith("q1.1 failed: a healthy service: it returned None"), r.message


def test_a_verdict_printed_by_anything_but_labkit_check_earns_nothing(graded):
    r = graded["by"]["hostile-2.ipynb"]["q1.3"]
    assert not r.passed and r.points == 0
    assert "q1.3 passed" in r.message and "labkit.check was replaced or changed at runtime" in r.message, r.message


def test_patching_the_checks_internals_is_undone_before_the_check(graded):
    r = graded["by"]["hostile-2.ipynb"]["q1.2"]
    assert not r.passed
    assert "but its items add up to" in r.message and "qty × price" in r.message, r.message


def test_an_answer_that_calls_sys_exit_fails_only_its_question(graded):
    r = graded["by"]["hostile-1.ipynb"]["q1.2"]
    assert not r.passed and "your answer raised SystemExit" in r.message, r.message


def test_an_answer_cell_that_raises_is_named(graded):
    r = graded["by"]["hostile-1.ipynb"]["q1.3"]
    assert not r.passed
    assert r.message.startswith("q1.3 failed: "), r.message


def test_an_answer_cell_that_loops_forever_is_stopped_at_the_cell_limit(graded):
    r = graded["by"]["hostile-2.ipynb"]["q1.1"]
    assert not r.passed
    assert f"your answer cell did not finish within {CELL_TIMEOUT} s" in r.message, r.message


def test_printing_while_checked_does_not_cost_a_correct_answer(graded):
    r = graded["by"]["hostile-3.ipynb"]["q1.3"]
    assert r.passed, r.message


def test_a_kernel_killed_by_one_answer_costs_only_that_question(graded):
    records = graded["by"]["hostile-3.ipynb"]
    assert not records["q1.1"].passed and "the kernel died" in records["q1.1"].message, records["q1.1"].message
    assert not records["q1.2"].passed and "the kernel died" in records["q1.2"].message, records["q1.2"].message
    assert records["q1.3"].passed, records["q1.3"].message  # graded in a third run, without the two others


def test_an_answer_that_disables_the_hidden_tests_earns_nothing(graded):
    """The hidden tests the answer can reach are the kernel's copy: the examiner's run as they are."""
    r = graded["by"]["hostile-4.ipynb"]["q1.1"]
    assert not r.passed and r.points == 0
    assert r.message.startswith("q1.1 failed: a healthy service: it returned 'nonsense'"), r.message


def test_a_check_started_on_the_side_decides_nothing(graded):
    """Only the first check that started while the check cell ran counts, with the question's time limit."""
    r = graded["by"]["hostile-5.ipynb"]["q0.1"]
    assert not r.passed and r.message.startswith("q0.1 failed: one name, straight to the service: "), r.message
    assert "'wrong'" in r.message, r.message


def test_a_value_that_claims_to_equal_everything_is_only_its_data(graded):
    r = graded["by"]["hostile-4.ipynb"]["q1.2"]
    assert not r.passed and "the result has no total for order" in r.message, r.message


@pytest.mark.skipif(not sandbox.available()[0], reason=f"runs are not isolated here: {sandbox.available()[1]}")
def test_an_answer_cannot_write_stop_or_talk_over_the_examiner(graded):
    """Isolated, the examiner is another user: its record cannot be written, it cannot be stopped, and what the
    answer sends it is no verdict. (Without isolation the grader says it cannot promise this.)"""
    records = graded["by"]["hostile-4.ipynb"]
    assert records["q1.3"].message.startswith("q1.3 failed: "), records["q1.3"].message
    assert not any(r.passed for r in records.values())


def test_a_submission_over_the_time_limit_is_killed(graded):
    r = graded["by"]["over-time.ipynb"]["q0.1"]
    assert not r.passed
    assert "time limit of 15 s" in r.message, r.message


def test_megabytes_of_output_servers_ports_and_files_cost_nothing_else(graded):
    records = graded["by"][f"wrong-0-{NB01}.ipynb"]
    # the answers are graded on what they do (the wrong-answer test checks their hints)
    assert all(r.message.startswith(f"{q} failed: ") for q, r in records.items())


def test_nothing_is_left_behind(graded):
    marker = graded["marker"]
    assert _leftovers() == [], "a process of a graded run is still alive"
    assert _processes_running(marker) == [], "the answer's detached process is still alive"
    assert _grade_dirs() <= graded["dirs_before"], "a temporary folder was left behind"
    assert not (Path.home() / f"{marker}.txt").exists()
    assert not (Path(tempfile.gettempdir()) / f"{marker}.txt").exists()
    assert not (graded["folder"] / f"{marker}.txt").exists()
    with socket.socket() as s:  # the port the answer bound is free again
        s.bind(("127.0.0.1", graded["port"]))
    extra = [t.name for t in set(threading.enumerate()) - graded["threads_before"]
             if t.is_alive() and t.name != "labkit-check-reader"]  # this process's examiner stays, for reuse
    assert extra == []


def test_a_grader_killed_with_sigkill_takes_its_run_and_examiner_along(tmp_path):
    submission = write(tmp_path, "loops.ipynb", with_answers(NB00, {"q0.1": SWALLOWS_INTERRUPTS}))
    grader = subprocess.Popen([sys.executable, "-m", "labkit", "grade", str(submission), "--out",
                               str(tmp_path / "results")], cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(_leftovers(grader.pid)) < 3 and time.monotonic() < deadline:  # pytest, its kernel, the examiner
            time.sleep(0.2)
        assert len(_leftovers(grader.pid)) >= 3, "the run did not start"
        grader.kill()
        grader.wait(10)
        deadline = time.monotonic() + 20
        while _leftovers(grader.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _leftovers(grader.pid) == [], "a process of the killed grader's run is still alive"
    finally:
        grader.kill()
        grader.wait()
        for pid in _leftovers(grader.pid):
            with contextlib.suppress(OSError):
                os.kill(pid, 9)
        for folder in Path(tempfile.gettempdir()).glob(f"labkit-grade-{grader.pid}-*"):  # a killed grader's
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.skipif(not sandbox.available()[0], reason=f"runs are not isolated here: {sandbox.available()[1]}")
def test_an_isolated_answer_cannot_write_the_workbook_or_reach_the_machine(graded):
    marker, host = graded["marker"], graded["host"]
    assert not (Path(labkit.__file__).parent / f"{marker}.py").exists(), "the answer wrote into labkit/"
    assert not Path(f"/tmp/{marker}.txt").exists(), "the answer's file in /tmp was left behind"
    with pytest.raises(BlockingIOError):  # nobody called the grading machine's service
        host.accept()
    host.close()


def test_progress_is_reported_and_grading_runs_in_parallel(graded):
    totals = [args[1] for args in graded["progress"]]
    assert totals and set(totals) == {len(totals)}
    assert [args[0] for args in graded["progress"]] == list(range(1, len(totals) + 1))


# -- bad files: no kernel needed ---------------------------------------------------------------------


def test_bad_files_score_zero_with_a_clear_message(tmp_path):
    write(tmp_path, "empty.ipynb", "")
    write(tmp_path, "not-json.ipynb", '{"cells": [')
    write(tmp_path, "not-a-notebook.ipynb", '{"hello": "world"}')
    write(tmp_path, "other.ipynb", nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")]))
    deleted = student_edition(NB00)
    deleted.cells = [c for c in deleted.cells if not (release.role(c) and release.role(c)[1] == "answer")]
    write(tmp_path, "deleted.ipynb", deleted)
    stripped = student_edition(NB01)
    for cell in stripped.cells:
        cell.metadata = {}
    write(tmp_path, "stripped.ipynb", stripped)

    started = time.monotonic()
    records = grade.grade([tmp_path], solutions=SOLUTIONS, jobs=2)
    assert time.monotonic() - started < 10  # nothing here needs a kernel
    by = collections.defaultdict(dict)
    for r in records:
        by[Path(r.submission).name][r.question] = r
    assert all(not r.passed and r.points == 0 for r in records)
    assert "the file is empty" in by["empty.ipynb"][None].message
    assert "not valid JSON" in by["not-json.ipynb"][None].message
    assert "not a Jupyter notebook" in by["not-a-notebook.ipynb"][None].message
    assert "not a notebook of this workbook" in by["other.ipynb"][None].message
    assert set(by["deleted.ipynb"]) == {"q0.1"}
    assert "no answer cell for q0.1" in by["deleted.ipynb"]["q0.1"].message
    assert set(by["stripped.ipynb"]) == {"q1.1", "q1.2", "q1.3"}  # found by its cell ids
    assert all("metadata (tags, labkit) removed" in r.message for r in by["stripped.ipynb"].values())


def test_a_different_notebook_than_expected_scores_zero(tmp_path):
    path = write(tmp_path, "mine.ipynb", student_edition(NB00))
    records = grade.grade([path], solutions=SOLUTIONS, options=grade.Options(expect=NB01))
    assert [r.question for r in records] == ["q1.1", "q1.2", "q1.3"]
    assert all("this is notebook 00_start_here, not 01_client_server" in r.message for r in records)


# -- the command line ----------------------------------------------------------------------------------


def run_cli(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "labkit", "grade", *map(str, argv)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_the_command_writes_json_csv_and_a_table(tmp_path):
    write(tmp_path, "alice.ipynb", "")
    write(tmp_path, "bob.ipynb", "not json")
    result = run_cli(tmp_path, "--out", tmp_path / "out" / "results", "--notebook", NB01)
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(data) == 6
    assert set(data[0]) == {"submission", "notebook", "question", "passed", "points", "max_points", "message",
                            "status", "seconds", "student_id"}
    assert data[0]["status"] == "unreadable" and data[0]["seconds"] is None
    with open(tmp_path / "out" / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["submission"]).name for r in rows] == ["alice.ipynb", "bob.ipynb"]
    assert list(rows[0]) == ["submission", "notebook", "q1.1", "q1.2", "q1.3", "total", "max"]
    assert rows[0]["total"] == "0" and rows[0]["max"] == "3"
    assert "submission" in result.stdout and "alice.ipynb" in result.stdout
    assert "2/2" in result.stderr  # the progress bar


def test_the_command_fails_only_when_it_cannot_grade(tmp_path):
    result = run_cli(tmp_path / "nowhere.ipynb", "--out", tmp_path / "r")
    assert result.returncode == 2 and "no such file" in result.stderr
    write(tmp_path, "a.ipynb", "")
    result = run_cli(tmp_path / "a.ipynb", "--out", tmp_path / "r", "--solutions", tmp_path / "none")
    assert result.returncode == 2 and "no solutions folder" in result.stderr
    result = run_cli(tmp_path / "a.ipynb", "--out", tmp_path / "r", "--notebook", "07_nothing")
    assert result.returncode == 2 and "no solution edition for 07_nothing" in result.stderr


# -- the guard, in a process of its own (it changes labkit for good) ----------------------------------

GUARD_SCRIPT = '''
import sys
import labkit, labkit.grading.guard as guard, labkit.grading.checker as check
guard.install()
genuine = labkit.check
for _ in range(3):  # every restore undoes every patch, not only the first
    labkit.check = lambda *a, **k: print("q0.1 passed: fake")
    check._grade = lambda *a: (labkit.grading.verdicts.passed("q0.1", 1, 1), None)
    sys.modules["labkit.tracing"].Trace.events = lambda self: []
    guard.restore()
    assert labkit.check is genuine and check.check is genuine
    assert check._grade is not None and check._grade.__name__ == "_grade"
    assert vars(sys.modules["labkit.tracing"].Trace)["events"].__name__ == "events"
check._grade = lambda *a: (labkit.grading.verdicts.passed("q0.1", 1, 1), None)
labkit.check("q0.1", lambda client, base_url, name: "nope")  # the kernel's _grade decides nothing: the examiner does
'''


def test_the_guard_undoes_patches_and_the_examiner_alone_records(tmp_path):
    record = tmp_path / "verdicts.jsonl"
    address = f"@labkit-test-examiner-{os.getpid()}"
    examiner = subprocess.Popen([sys.executable, "-m", "labkit.grading.examiner", "--listen", address, "--record",
                                 str(record), "--points", json.dumps({"q0.1": 2.0})], stdout=subprocess.PIPE)
    try:
        assert examiner.stdout.readline() == b"ready\n"
        result = subprocess.run([sys.executable, "-c", GUARD_SCRIPT], capture_output=True, text=True, timeout=60,
                                env=dict(os.environ, LABKIT_EXAMINER=address))
    finally:
        examiner.kill()
        examiner.wait()
        examiner.stdout.close()
    assert result.returncode == 0, result.stderr
    [printed] = result.stdout.strip().splitlines()
    [record] = [json.loads(line) for line in record.read_text().splitlines()]
    assert printed.startswith("q0.1 failed: ") and record["message"] == printed
    assert (record["question"], record["status"], record["passed"], record["points"]) == ("q0.1", "failed", False, 0.0)
