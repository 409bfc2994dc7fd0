"""Writing hidden tests: the public API the modules of ``labkit.grading.hidden`` use.

    q = Question("q9.1", "double", params=("client", "url"), hint="...")

    @q.test("a healthy service")
    def _(run):
        server = run.serve(create("hello"), "hello·check")
        call = run.call(run.client(), server.url)
        if call.value != 2:
            raise Fail(f"it returned {show(call.value)}, expected 2", "double the number")

Each test starts its own servers, links and client through ``run`` (a :class:`Run`, on
a :class:`labkit.Trace` of its own, so the student's trace and servers are left alone),
calls the student's function with ``run.call`` (in a worker thread, with a time limit),
and judges what came back and what went over the wire, raising :class:`Fail` with what
was wrong and a hint. Tests with random faults run once per seed, so an answer that
ignores a fault cannot pass by luck. :func:`labkit.grading.checker.check` runs them.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib
import importlib.util
import logging
import pkgutil
import re
import threading
import time
from pathlib import Path
from typing import Callable

import requests

from ..client import Client, describe
from ..errors import Fail
from ..net import Link
from ..server import serve
from ..tracing import Event, Trace
from .wire import is_a, type_name  # noqa: F401  (for the hidden tests: the answer's values cross as data)

__all__ = ["Question", "Run", "Call", "Fail", "AnswerRaised", "show", "describe_error", "questions", "is_a",
           "type_name"]

log = logging.getLogger("labkit")

#: Seconds one call of an answer may take before the check stops it, unless the
#: question sets its own limit or ``check(..., time_limit=...)`` overrides it.
TIME_LIMIT_S = 20.0

#: Seconds the check waits, after a time limit ran out, for the answer's thread to end.
_GRACE_S = 3.0

_HIDDEN_PACKAGE = "labkit.grading.hidden"
_questions: dict[str, "Question"] = {}
_loaded = False
_loading_private = False
_load_lock = threading.RLock()  # a private test module asks for questions() while it loads


# -- what the tests raise ----------------------------------------------------


class AnswerRaised(Exception):
    """The student's function raised ``error``; a test raises it for an error it caught on the
    answer's behalf (a merge called by a peer, say), and the verdict names it."""

    def __init__(self, error: BaseException):
        super().__init__(repr(error))
        self.error = error


class _Overrun(Exception):
    """A call of the student's function did not return within the time limit."""

    def __init__(self, limit: float):
        super().__init__(limit)
        self.limit = limit


class _Stopped(BaseException):
    """Raised inside an answer's thread to stop it; a BaseException so ``except Exception`` lets it pass."""


# -- the registry --------------------------------------------------------------


@dataclasses.dataclass
class HiddenTest:
    """One hidden test: ``run(run)`` raises :class:`Fail` if the answer is wrong."""

    name: str
    run: Callable[["Run"], None]
    seeds: tuple = (None,)
    #: exception type -> hint, for answers that raise during this test
    raise_hints: dict = dataclasses.field(default_factory=dict)
    #: an instructor's test, loaded only by the grader (--private-tests)
    private: bool = False


class Question:
    """A graded exercise: its id, the function the student writes, and its hidden tests.

    ``params`` names the function's parameters (checked before any test runs);
    ``hint`` is the hint when the answer raises and no test has a better one;
    ``hang_hint`` the hint when a call does not return within ``time_limit`` seconds.
    Creating a Question registers it.
    """

    def __init__(self, id: str, function: str, *, params: tuple[str, ...], hint: str,
                 hang_hint: str = "look for a loop that never ends, or a wait with no time limit",
                 time_limit: float | None = None):
        if id in _questions:
            raise ValueError(f"question {id!r} is defined twice; question ids must be unique")
        self.id, self.function, self.params = id, function, tuple(params)
        self.hint, self.hang_hint = hint, hang_hint
        self.time_limit = time_limit
        self.tests: list[HiddenTest] = []
        _questions[id] = self

    def test(self, name: str, *, seeds=(None,), raise_hints: dict | None = None):
        """Decorator: add a hidden test called ``name``, run once per seed in ``seeds``."""

        def add(function):
            self.tests.append(HiddenTest(name, function, tuple(seeds), dict(raise_hints or {}), _loading_private))
            return function

        return add

    @property
    def runs(self) -> int:
        """How many runs a full check makes (tests times seeds)."""
        return sum(len(t.seeds) for t in self.tests)

    def __repr__(self) -> str:
        return f"<Question {self.id} {self.function}: {len(self.tests)} hidden tests>"


def questions() -> dict[str, "Question"]:
    """Every question, by id (loads the hidden tests on first use)."""
    global _loaded
    with _load_lock:
        if not _loaded:
            package = importlib.import_module(_HIDDEN_PACKAGE)
            for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__)):
                importlib.import_module(f"{_HIDDEN_PACKAGE}.{module}")
            _loaded = True
    return dict(sorted(_questions.items(), key=lambda item: _order(item[0])))


def load_private(folder) -> int:
    """Import every ``*.py`` of ``folder``: the instructor's private tests, added to the questions they
    name (``questions()["q1.1"].test(...)``). The number of tests added."""
    global _loading_private
    questions()
    before = sum(len(q.tests) for q in _questions.values())
    with _load_lock:
        _loading_private = True
        try:
            for path in sorted(Path(folder).glob("*.py")):
                spec = importlib.util.spec_from_file_location(f"labkit_private_tests.{path.stem}", path)
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
        finally:
            _loading_private = False
    return sum(len(q.tests) for q in _questions.values()) - before


def _order(question_id: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", question_id)]


# -- showing values ------------------------------------------------------------


_ADDRESS = re.compile(r"(127\.0\.0\.1|localhost):\d+")
_PORT = re.compile(r"port=\d+")
_MEMORY = re.compile(r" at 0x[0-9a-fA-F]+")


def show(value, limit: int = 120) -> str:
    """A short repr of ``value`` with no port or memory address in it (verdicts must be stable)."""
    text = _scrub(repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _scrub(text: str) -> str:
    text = _ADDRESS.sub(r"\1:PORT", text)
    text = _PORT.sub("port=PORT", text)
    return _MEMORY.sub("", text)


_REQUESTS_ERRORS = {
    "timeout": "no answer within the client's timeout",
    "connect timeout": "could not connect within the client's timeout",
    "refused": "connection refused",
    "reset": "connection reset",
}


def describe_error(error: BaseException) -> str:
    """``ReadTimeout (no answer within the client's timeout)``, ``ZeroDivisionError: division by zero``."""
    described = getattr(error, "labkit_described", None) or getattr(error, "described", None)
    if isinstance(described, str) and described:  # worded on the answer's side, where the error was raised
        return described
    name = type(error).__name__
    if isinstance(error, requests.exceptions.RequestException):
        kind = describe(error)
        return f"{name} ({_REQUESTS_ERRORS.get(kind, kind)})"
    message = " ".join(_scrub(str(error)).split()).rstrip(".")
    if isinstance(error, KeyError) and error.args:
        message = show(error.args[0])
    if len(message) > 160:
        message = message[:157] + "..."
    return f"{name}: {message}" if message else name


# -- one run of one hidden test ------------------------------------------------


@dataclasses.dataclass
class Call:
    """What one call of the answer gave: its ``value``, how many ``seconds`` it took
    (from ``started``, a ``time.perf_counter()`` reading), the trace ``events`` the
    check's own servers and links recorded while it ran, and ``told``: the events the
    answer's side says its clients recorded (to explain a failure, never to decide one)."""

    value: object
    seconds: float
    events: list[Event]
    started: float = 0.0
    told: list = dataclasses.field(default_factory=list)

    @property
    def ended(self) -> float:
        return self.started + self.seconds

    def receives(self, server, *, src: str | None = None, path: str | None = None,
                 method: str | None = None) -> list[Event]:
        """The requests ``server`` (a Server or a name) received during the call."""
        name = getattr(server, "name", server)
        return [e for e in self.events if e.kind == "receive" and e.dst == name
                and (src is None or e.src == src) and (path is None or e.path == path)
                and (method is None or e.method == method)]


class Run:
    """One hidden test with one seed: its own trace, and everything it starts, stopped at the end.

    ``serve``, ``link``, ``client`` and ``later`` start things and register them for
    teardown; ``call`` runs the student's function in a worker thread with the time limit.
    """

    def __init__(self, answer, seed, time_limit: float):
        self.trace = Trace()
        self.seed = seed
        self.time_limit = time_limit
        self._stack = contextlib.ExitStack()
        self.told: list[Event] = []  # what the answer's side said its clients recorded: see Call.told
        self._told_lock = threading.Lock()
        # The examiner's stand-in for the student's function calls it in the student's process, for this run.
        self._answer = answer.bound(self) if hasattr(answer, "bound") else answer

    def note_told(self, events: list[Event]) -> None:
        with self._told_lock:
            self.told.extend(events)

    # things the test starts (each stopped when the run ends, whatever happens)

    def serve(self, app, name: str):
        server = serve(app, name=name, trace=self.trace)
        self._stack.callback(_quietly, server.stop)
        return server

    def link(self, target, **settings) -> Link:
        link = Link(target, seed=0 if self.seed is None else self.seed, trace=self.trace, **settings)
        self._stack.callback(_quietly, link.close)
        return link

    def client(self, name: str = "you", **options) -> Client:
        client = Client(name, trace=self.trace, **options)
        self._stack.callback(_quietly, client.close)
        return client

    def on_close(self, function, *args) -> None:
        """Call ``function(*args)`` when the run ends (before what was started earlier stops)."""
        self._stack.callback(_quietly, function, *args)

    def later(self, delay: float, function) -> "_Later":
        """Call ``function()`` in a helper thread after ``delay`` seconds (unless the run ends first)."""
        job = _Later(delay, function)
        self._stack.callback(_quietly, job.cancel)
        job.start()
        return job

    # the student's function

    @property
    def answer(self):
        """The student's function itself, for a test that calls it from threads of its own (see call_with)."""
        return self._answer

    def call(self, *args) -> Call:
        """Call the answer with ``args`` in a worker thread; stop it if it overruns the time limit.

        Raises AnswerRaised if the answer raised, _Overrun if it did not return in time.
        """
        return self.call_with(self._answer, *args)

    def call_with(self, harness, *args) -> Call:
        """Like :meth:`call`, but run ``harness(*args)``: a function of the test that calls
        :attr:`answer` many times (from threads of its own, say) as one call, under one time limit."""
        start_index, told_index = len(self.trace), len(self.told)
        worker = _Worker(harness, args)
        _sleep_patch.acquire()
        try:
            started = time.perf_counter()
            worker.start()
            finished = worker.done.wait(self.time_limit)
            seconds = time.perf_counter() - started
            if not finished:
                self._stop(worker)
                raise _Overrun(self.time_limit)
            worker.join()
        except BaseException:
            if worker.is_alive() and not worker.stopping.is_set():  # interrupted (KeyboardInterrupt)
                self._stop(worker)
            raise
        finally:
            _sleep_patch.release()
        if worker.error is not None:
            raise AnswerRaised(worker.error)
        return Call(worker.value, seconds, self.trace.events()[start_index:], started, self.told[told_index:])

    def _stop(self, worker: "_Worker") -> None:
        """Stop an overrunning answer: wake its sleeps, close the network under it, raise inside it."""
        worker.stopping.set()
        self.close()  # links and servers closed: a call blocked on the network returns
        deadline = time.monotonic() + _GRACE_S
        while worker.is_alive() and not worker.done.is_set() and time.monotonic() < deadline:
            worker.interrupt()
            worker.join(0.05)
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.warning("an answer's thread did not stop; it is left running as a daemon thread")

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _quietly(function, *args) -> None:
    try:
        function(*args)
    except Exception:
        log.debug("cleanup of a check run failed", exc_info=True)


class _Worker(threading.Thread):
    """The thread an answer runs in; it never prints, whatever happens to it."""

    def __init__(self, answer, args, on_done=None):
        super().__init__(name="labkit-check-answer", daemon=True)
        self._answer, self._args, self._on_done = answer, args, on_done
        self.value = None
        self.error: BaseException | None = None
        self.done = threading.Event()
        self.stopping = threading.Event()
        # An exception that escapes run() would be printed by threading's excepthook.
        self._invoke_excepthook = lambda thread: None

    def run(self) -> None:
        _sleep_patch.stopping[threading.get_ident()] = self.stopping
        try:
            try:
                self.value = self._answer(*self._args)
            except BaseException as error:  # the student's error, or _Stopped
                self.error = error
        except BaseException:  # _Stopped landing while the error above was stored
            pass
        finally:
            _sleep_patch.stopping.pop(threading.get_ident(), None)
            self.done.set()
            self._answer = self._args = None
            if self._on_done is not None:
                self._on_done(self)

    def interrupt(self) -> None:
        """Raise _Stopped in this thread at its next Python instruction."""
        if self.ident is not None and not self.done.is_set():
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self.ident), ctypes.py_object(_Stopped))


class _SleepPatch:
    """While a check runs, ``time.sleep`` in an answer's thread wakes when the answer is stopped.

    An exception raised into a thread is only seen between Python instructions,
    never during ``time.sleep(1000)``; this sleep waits on an event instead. Other
    threads get the real ``time.sleep``.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self._real = time.sleep
        self._patched = self._sleep  # one bound method, so "is" can recognise it
        self.stopping: dict[int, threading.Event] = {}

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                self._real = time.sleep
                time.sleep = self._patched
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and time.sleep is self._patched:
                time.sleep = self._real

    def _sleep(self, seconds) -> None:
        stopping = self.stopping.get(threading.get_ident())
        if stopping is None:
            return self._real(seconds)
        seconds = float(seconds)
        if seconds < 0:
            raise ValueError("sleep length must be non-negative")
        if stopping.wait(min(seconds, threading.TIMEOUT_MAX)):
            raise _Stopped()


_sleep_patch = _SleepPatch()


class _Later(threading.Thread):
    """A helper thread of a hidden test: calls ``function`` after ``delay`` seconds, quietly."""

    def __init__(self, delay: float, function):
        super().__init__(name="labkit-check-helper", daemon=True)
        self.delay, self.function = delay, function
        self._cancel = threading.Event()
        self.started_at: float | None = None  # perf_counter when the function began
        self.error: BaseException | None = None
        self._invoke_excepthook = lambda thread: None

    def run(self) -> None:
        if self._cancel.wait(self.delay):
            return
        self.started_at = time.perf_counter()
        try:
            self.function()
        except BaseException as error:
            self.error = error

    def cancel(self) -> None:
        self._cancel.set()
        if self.is_alive():
            self.join(10)
