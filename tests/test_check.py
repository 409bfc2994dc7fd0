"""labkit.check: the solutions pass, stubs are "not attempted yet", wrong answers fail
with the right hint, hanging answers are stopped, and nothing is left running."""

from __future__ import annotations

import threading
import time

import pytest
import requests

import labkit
import labkit.net
from labkit.apps import create
from labkit.grading import authoring, checker, verdicts

from answers import SOLUTIONS, WRONG
from answers.nb00 import greet_hard_coded
from answers.nb01 import fetch_ignores_status, totals_n_plus_one

greet, fetch_or_none, order_totals = SOLUTIONS["q0.1"], SOLUTIONS["q1.1"], SOLUTIONS["q1.2"]


def stub(*args):
    raise NotImplementedError("write your answer here")


# -- fixtures -------------------------------------------------------------------------------


def _state():
    return ([server.name for server in labkit.running()], len(labkit.open_links()))


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """Every check stops what it started: servers, links and threads."""
    before_state = _state()
    before_threads = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t.name for t in set(threading.enumerate()) - before_threads
                 if t.is_alive() and t.name != "labkit-check-reader"]  # the examiner's connection stays open
        if not extra or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _state() == before_state
    assert extra == []


def verdict(capsys, question, answer, **options) -> str:
    result = labkit.check(question, answer, **options)
    assert result is None
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1, out
    return out.strip()


def verdicts_are_deterministic(line: str) -> None:
    assert "127.0.0.1:" not in line and "port=" not in line.lower() and " at 0x" not in line


# -- the tests ------------------------------------------------------------------------------


def test_every_question_has_its_answers():
    assert sorted(authoring.questions()) == sorted(SOLUTIONS), "every question needs its answer cell in solutions/"
    assert labkit.check is checker.check
    wrong = {question for question, _, _ in WRONG}
    assert wrong == set(SOLUTIONS), "every question needs wrong answers in tests/answers/"


@pytest.mark.parametrize("question", list(SOLUTIONS))
def test_the_solution_passes(capsys, question):
    line = verdict(capsys, question, SOLUTIONS[question])
    q = authoring.questions()[question]
    assert line == (f"{question} passed the public tests: {len(q.tests)} tests, {q.runs} runs against real "
                    f"servers; the grader may run more.")


@pytest.mark.parametrize("question", list(SOLUTIONS))
def test_the_solution_passes_every_time(capsys, question):
    """Timing bounds have margins wide enough that a correct answer never fails at random."""
    lines = {verdict(capsys, question, SOLUTIONS[question]) for _ in range(3)}
    assert len(lines) == 1 and "passed" in lines.pop()


@pytest.mark.parametrize("question", list(SOLUTIONS))
@pytest.mark.parametrize("answer", [stub, None, 42], ids=["stub", "None", "not-callable"])
def test_the_stub_is_not_attempted_yet(capsys, question, answer):
    line = verdict(capsys, question, answer)
    assert line == f"{question} not attempted yet: write your answer in the cell above, run it, then run this cell."
    assert line == verdicts.not_attempted(question).line


@pytest.mark.parametrize("question, answer, words", WRONG, ids=[f"{q}-{a.__name__}" for q, a, _ in WRONG])
def test_a_wrong_answer_fails_with_the_right_hint(capsys, question, answer, words):
    line = verdict(capsys, question, answer)
    assert line.startswith(f"{question} failed: "), line
    assert "Hint: " in line and line.endswith(".")
    for word in words:
        assert word in line, line
    verdicts_are_deterministic(line)


@pytest.mark.parametrize("question, answer", [("q1.2", totals_n_plus_one), ("q1.1", fetch_ignores_status),
                                              ("q0.1", greet_hard_coded)])
def test_a_failure_verdict_is_the_same_every_run(capsys, question, answer):
    assert len({verdict(capsys, question, answer) for _ in range(3)}) == 1


def test_an_answer_that_raises_is_reported(capsys):
    def divide(client, url):
        return 1 / 0

    line = verdict(capsys, "q1.1", divide)
    assert line.startswith("q1.1 failed: a healthy service: your answer raised ZeroDivisionError: division by zero. Hint: ")


def test_a_key_error_names_the_key(capsys):
    def wrong_key(client, base_url, name):
        return client.get(base_url + "/hello", params={"name": name}).json()["greeting"]

    assert "your answer raised KeyError: 'greeting'" in verdict(capsys, "q0.1", wrong_key)


def test_a_wrong_signature_is_named(capsys):
    line = verdict(capsys, "q1.1", lambda url: None)
    assert line == ("q1.1 failed: fetch_or_none must take 2 arguments (client, url), but yours is <lambda>(url). "
                    "Hint: define it as def fetch_or_none(client, url):.")


def spin(*args):
    while True:
        pass


def sleep_long(*args):
    time.sleep(1000)


def wait_on_the_network(client, url):
    # No timeout, and not the labkit client: blocks until the link is closed under it.
    return requests.get(url).json()


def swallow_and_spin(*args):
    while True:
        try:
            while True:
                pass
        except Exception:
            pass


@pytest.mark.parametrize("question, answer", [("q0.1", spin), ("q1.1", sleep_long), ("q1.1", wait_on_the_network),
                                              ("q1.3", swallow_and_spin)],
                         ids=["busy-loop", "sleep", "blocked-on-network", "catches-exception"])
def test_a_hanging_answer_is_stopped(capsys, question, answer):
    started = time.monotonic()
    line = verdict(capsys, question, answer, time_limit=2)
    assert time.monotonic() - started < 2 + 5
    assert line.startswith(f"{question} failed: stopped after 2 s: the answer did not return. Hint: "), line


def test_the_time_limit_defaults_to_the_module_constant(monkeypatch):
    monkeypatch.setattr(checker, "TIME_LIMIT_S", 1.5)  # the examiner's own verdict, run here
    assert checker.verdict("q0.1", spin)[0].line.startswith("q0.1 failed: stopped after 1.5 s: ")


def test_time_sleep_is_itself_again_after_a_check(capsys):
    real = time.sleep
    verdict(capsys, "q0.1", spin, time_limit=1)
    assert time.sleep is real


def test_an_unknown_question_is_named_not_raised(capsys):
    line = verdict(capsys, "q9.9", greet)
    assert line == (f"q9.9 is not a question of this workbook; the questions are {', '.join(authoring.questions())}. "
                    "Check the first argument of labkit.check.")
    assert "is not a question" in verdict(capsys, None, greet)


def test_the_check_never_raises_even_when_a_hidden_test_breaks(capsys, monkeypatch):
    question = authoring.questions()["q0.1"]

    def broken(run):
        raise RuntimeError("a bug in the hidden test")

    monkeypatch.setattr(question, "tests", [authoring.HiddenTest("broken", broken)])
    line = checker.verdict("q0.1", greet)[0].line  # the examiner's own verdict, run here
    assert line.startswith("q0.1 could not be checked: the check itself failed with RuntimeError: a bug in the hidden test")


def test_the_check_never_raises_when_there_is_no_examiner(capsys, monkeypatch, tmp_path):
    from labkit.grading import answering

    monkeypatch.setattr(answering, "_connection", None)
    monkeypatch.setenv(answering.ENV, str(tmp_path / "nobody-listens-here"))
    line = verdict(capsys, "q0.1", greet)
    assert line.startswith("q0.1 could not be checked: the checker could not start (FileNotFoundError"), line


def test_the_students_trace_and_servers_are_left_alone(capsys):
    before = len(labkit.trace)
    with labkit.serve(create("hello"), name="hello") as mine:
        assert "passed" in verdict(capsys, "q0.1", greet)
        assert labkit.running() == [mine]
    assert len(labkit.trace) == before


def test_diagram_shows_the_failing_run(capsys, monkeypatch):
    IPython_display = pytest.importorskip("IPython.display")
    plots = pytest.importorskip("labkit.plots")
    shown, drawn = [], []
    real_sequence = plots.sequence

    def sequence(trace, **options):
        drawn.append(trace)
        return real_sequence(trace, **options)

    monkeypatch.setattr(plots, "sequence", sequence)
    monkeypatch.setattr(IPython_display, "display", shown.append)
    monkeypatch.setattr("IPython.get_ipython", lambda: object())  # as in a notebook
    line = verdict(capsys, "q1.2", totals_n_plus_one, diagram=plots.sequence)
    assert "made 25 requests" in line
    assert len(drawn) == 1 and len(shown) == 1
    receives = [e for e in drawn[0] if e.kind == "receive" and e.dst == "shop·check"]
    assert len(receives) == 25
    assert type(shown[0]).__name__ == "Figure"
    # a passing answer draws nothing
    assert "passed" in verdict(capsys, "q1.2", order_totals, diagram=plots.sequence)
    assert len(shown) == 1


def test_diagram_outside_ipython_prints_only_the_verdict(capsys):
    plots = pytest.importorskip("labkit.plots")
    assert verdict(capsys, "q0.1", greet_hard_coded, diagram=plots.sequence).startswith("q0.1 failed: ")


def test_a_diagram_that_fails_says_so(capsys):
    def broken(trace):
        raise RuntimeError("no pictures today")

    labkit.check("q0.1", greet_hard_coded, diagram=broken)
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("q0.1 failed: ")
    assert out[1] == "No diagram: RuntimeError: no pictures today."


def test_the_checker_imports_no_pictures():
    """A diagram comes through the declared hook (diagram=), never by an import of labkit.plots."""
    import subprocess
    import sys

    code = ("import sys, labkit.grading.checker as c; c.questions(); "
            "print(sorted(m for m in sys.modules if m in ('labkit.plots', 'labkit.widgets', 'matplotlib')))")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "[]"


def test_the_random_faults_test_sees_every_outcome():
    """Over its seeds the random test meets answers, lost requests, lost answers and resets both ways,
    so an answer that ignores any of them cannot pass by luck."""
    test = authoring.questions()["q1.1"].tests[-1]
    kinds, outcomes = set(), set()
    for seed in test.seeds:
        def recording(client, url):
            result = fetch_or_none(client, url)
            outcomes.add(result is None)
            return result

        with authoring.Run(recording, seed, 20) as run:
            test.run(run)
            for e in run.trace:
                if e.kind in ("dropped", "reset"):
                    kinds.add((e.kind, "request" if e.dst == "weather·check" else "response"))
    assert outcomes == {True, False}
    assert kinds == {("dropped", "request"), ("dropped", "response"), ("reset", "request"), ("reset", "response")}


def _public_functions():
    """Every public function and class of every labkit module, with where it lives."""
    import importlib
    import inspect
    import pkgutil

    found = []
    for info in pkgutil.walk_packages(labkit.__path__, "labkit."):
        if info.name.startswith("labkit.grading.hidden") or info.name == "labkit.__main__":
            continue
        module = importlib.import_module(info.name)
        for name, value in vars(module).items():
            if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value)) \
                    and getattr(value, "__module__", "") == info.name:
                found.append((f"{info.name}.{name}", value))
    return found


def _candidates(question):
    """labkit's public functions that could be handed in for ``question``: its name, or its parameters."""
    import inspect

    chosen = []
    for where, function in _public_functions():
        try:
            parameters = tuple(inspect.signature(function).parameters)
        except (TypeError, ValueError):
            continue
        if function.__name__ == question.function or parameters[:len(question.params)] == question.params:
            chosen.append((where, function))
    return chosen


@pytest.mark.parametrize("question", list(SOLUTIONS))
def test_no_answer_ships_in_labkit(capsys, question):
    """Handing in labkit's own code never passes a check: every public function of labkit with the
    exercise's name or its parameters is tried, and each one fails."""
    candidates = _candidates(authoring.questions()[question])
    for where, function in candidates:
        line = verdict(capsys, question, function)
        assert not line.startswith(f"{question} passed"), f"{where} passes {question}: {line}"
    if question in ("q2.1", "q4.1"):  # the two whose service ships a function of the same name and shape
        assert candidates, f"the search found nothing for {question}, so it proves nothing"


def test_the_kernels_examiner_outlives_an_interrupt_and_ends_with_the_kernel():
    """Interrupt kernel sends SIGINT to the kernel's process group: it is for the kernel, not its examiner."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    ours, theirs = socket.socketpair()
    examiner = subprocess.Popen([sys.executable, "-m", "labkit.grading.examiner", "--fd", str(theirs.fileno())],
                                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    theirs.close()
    try:
        def ignores_sigint() -> bool:  # from /proc: the examiner has finished starting up
            status = open(f"/proc/{examiner.pid}/status").read()
            return bool(int(status.split("SigIgn:")[1].split()[0], 16) & (1 << (signal.SIGINT - 1)))

        deadline = time.monotonic() + 30
        while not ignores_sigint():
            assert time.monotonic() < deadline and examiner.poll() is None, "the examiner never started"
            time.sleep(0.05)
        os.kill(examiner.pid, signal.SIGINT)
        time.sleep(0.5)
        assert examiner.poll() is None, examiner.stderr.read().decode()
        ours.close()  # the kernel went away
        assert examiner.wait(10) == 0
        assert b"KeyboardInterrupt" not in examiner.stderr.read()
    finally:
        ours.close()
        examiner.kill()
        examiner.wait()
        examiner.stderr.close()
