"""The examiner: a process of its own that runs the hidden tests and decides every verdict.

The student's code never runs here. ``labkit.check`` in the notebook's kernel asks the
examiner to check a question; the examiner starts the tests' servers, links and
databases, and each time a test calls the student's function it asks the kernel to
call it (:mod:`labkit.grading.wire` says what crosses). The verdict is decided here, from
what came back and what the examiner's own servers saw, and sent to the kernel to print.

    python -m labkit.grading.examiner --fd N                 one connection (what labkit.check starts)
    python -m labkit.grading.examiner --listen ADDRESS [--record FILE --points JSON]
                                                             the grader's: every kernel that connects
                                                             to the Unix socket ADDRESS (a path, or
                                                             @name: Linux's abstract namespace, which
                                                             belongs to the network namespace); each
                                                             verdict is also written to FILE, a JSON line

It exits when its connection closes (``--fd``), or when it is killed or the grader is gone
(``--listen``: the grader's pipe on its stdin closes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time

from . import sandbox, wire
from .authoring import _Stopped

log = logging.getLogger("labkit")

#: Seconds between looks at whether a run was stopped, while a call waits for the kernel.
_POLL_S = 0.05


class _Pending:
    """One request to the kernel, waiting for its answer."""

    def __init__(self):
        self.done = threading.Event()
        self.value = None
        self.error: BaseException | None = None
        self.told = None  # the events the answer's side says its clients recorded


class Examiner:
    """Serves one kernel's connection: runs each check it asks for, one thread a check."""

    def __init__(self, channel: wire.Channel, record=None, points: dict | None = None):
        self.channel = channel
        self._record, self._points = record, dict(points or {})
        self._record_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._callbacks: dict[int, object] = {}   # ref -> a function of a test, for the kernel to call
        self._lock = threading.Lock()
        self._ids = iter(range(1, 2**62))
        self.gone = threading.Event()

    def next_id(self) -> int:
        with self._lock:
            return next(self._ids)

    # -- requests to the kernel, and their answers

    def ask(self, message: dict, run_stopped: threading.Event | None = None) -> _Pending:
        """Send ``message`` (an id is added) and wait for its answer (its value, or error, and what it told)."""
        number = self.next_id()
        pending = _Pending()
        with self._lock:
            self._pending[number] = pending
        try:
            self.channel.send({**message, "id": number})
            while not pending.done.wait(_POLL_S):
                if self.gone.is_set():
                    raise wire.RemoteError("labkit.grading.wire.Gone", [], "the notebook's kernel went away", "")
                if run_stopped is not None and run_stopped.is_set():
                    raise _Stopped()
        except BaseException:  # stopped (here, or by the run raising into this thread): stop the answer too
            if not pending.done.is_set():
                self._send_quietly({"op": "stop", "call": number})
            raise
        finally:
            with self._lock:
                self._pending.pop(number, None)
        return pending

    def _answered(self, message: dict) -> None:
        with self._lock:
            pending = self._pending.get(message.get("id"))
        if pending is None:
            return  # an answer to a call the examiner gave up on
        pending.told = message.get("told")
        try:
            if message["op"] == "returned":
                pending.value = wire.unplain(message.get("value"))
            else:
                pending.error = wire.error_from_wire(message.get("error"))
        except wire.WireError as error:
            pending.error = wire.RemoteError("labkit.grading.wire.WireError", [], f"it sent a value the check "
                                             f"cannot read: {error}", "")
        pending.done.set()

    def _send_quietly(self, message: dict) -> None:
        try:
            self.channel.send(message)
        except (OSError, wire.WireError):
            pass

    # -- the kernel calls back a function of a test (such as pay)

    def share_callback(self, function) -> int:
        number = self.next_id()
        with self._lock:
            self._callbacks[number] = function
        return number

    def forget_callbacks(self, numbers) -> None:
        with self._lock:
            for number in numbers:
                self._callbacks.pop(number, None)

    def _callback(self, message: dict) -> None:
        with self._lock:
            function = self._callbacks.get(message.get("ref"))
        reply = {"op": "callback-done", "id": message.get("id")}
        try:
            if function is None:
                raise RuntimeError("this function belongs to a check run that has ended")
            args = wire.unplain(message.get("args", []))
            if not isinstance(args, list):
                raise wire.WireError("arguments that are not a list")
            value = function(*args)
            reply["value"] = wire.plain(value)
        except BaseException as error:  # noqa: BLE001 - the test's function raised: the answer sees it
            from .authoring import describe_error

            reply = {"op": "callback-raised", "id": message.get("id"),
                     "error": wire.error_to_wire(error, describe_error(error))}
        self._send_quietly(reply)

    # -- checks

    def _check(self, message: dict) -> None:
        from .checker import verdict

        started = time.time()
        question = message.get("question")
        limit = message.get("time_limit")
        limit = float(limit) if isinstance(limit, (int, float)) and not isinstance(limit, bool) and 0 < limit < 3600 else None
        if self._record is not None:
            limit = None  # the grader's: every answer gets the question's own time limit, whatever the kernel asks
        answer = RemoteAnswer(self, message) if message.get("defined") else None
        result, trace = verdict(str(question), answer, time_limit=limit, grader=self._record is not None)
        if self._record is not None:
            self._write(result, started)
        reply = {"op": "verdict", "id": message.get("id"), "line": result.line, "status": result.status,
                 "passed": result.passed}
        if trace is not None and message.get("diagram"):
            from .. import tracing

            reply["trace"] = {"start": trace.start, "run": getattr(trace, "labkit_run", None),
                              "events": [wire.plain(vars(e)) for e in trace.events()], "names": tracing.names()}
        self._send_quietly(reply)

    def _write(self, result, started: float) -> None:
        line = json.dumps({"question": result.question, "status": result.status, "passed": result.passed,
                           "points": self._points.get(result.question, 1.0) if result.passed else 0.0,
                           "message": result.line, "started": started, "t": time.time()})
        with self._record_lock:
            self._record.write(line + "\n")
            self._record.flush()

    def serve(self) -> None:
        """Read the kernel's messages until it goes away."""
        try:
            while True:
                try:
                    message = self.channel.receive()
                except wire.WireError as error:
                    log.warning("a message from the kernel could not be read: %s", error)
                    break
                if message is None:
                    break
                op = message["op"]
                if op in ("returned", "raised"):
                    self._answered(message)
                elif op == "check":
                    threading.Thread(target=self._check, args=(message,), name="labkit-examiner-check",
                                     daemon=True).start()
                elif op == "callback":
                    threading.Thread(target=self._callback, args=(message,), name="labkit-examiner-callback",
                                     daemon=True).start()
        finally:
            self.gone.set()
            self.channel.close()


class RemoteAnswer:
    """The student's function, as the examiner sees it: each call goes to the kernel."""

    def __init__(self, examiner: Examiner, check: dict):
        self.examiner, self.check = examiner, check.get("id")
        self.__name__ = str(check.get("name") or "answer")[:80]
        signature = wire.signature_of(check.get("parameters"))
        if signature is not None:
            self.__signature__ = signature

    def bound(self, run) -> "_RunAnswer":
        """This answer for one run of one test: its objects and calls end with the run."""
        return _RunAnswer(self, run)

    def __call__(self, *args):  # only ever called through a run
        raise RuntimeError("a remote answer is called through a run")


class _RunAnswer:
    """The student's function within one run: what it is sent (clients, engines, callbacks) ends with the run."""

    def __init__(self, remote: RemoteAnswer, run):
        self.examiner, self.check = remote.examiner, remote.check
        self.number = self.examiner.next_id()
        self.stopped = threading.Event()
        self._shared: dict[int, tuple[int, object]] = {}   # id(object) -> (ref, object), kept alive
        self._callbacks: list[int] = []
        self._lock = threading.Lock()
        self.run = run
        run.trace.labkit_run = self.number
        run.on_close(self.end)

    def __call__(self, *args):
        with self._lock:
            encoded = [wire.plain(arg, custom=self._encode) for arg in args]
        pending = self.examiner.ask({"op": "call", "check": self.check, "run": self.number, "args": encoded},
                                    self.stopped)
        self._note(pending.told)
        if pending.error is not None:
            raise pending.error
        return pending.value

    def _note(self, told) -> None:
        """Keep what the answer's side told about its clients' events, on this run's clock (``run.told``)."""
        from .. import tracing
        from ..tracing import Event

        if not isinstance(told, dict) or not isinstance(told.get("events"), list):
            return
        known = tracing.names()  # the answer's clients name this examiner's servers by their addresses
        try:
            start = float(told.get("start"))
            events = []
            for data in told["events"][:10_000]:
                fields = wire.unplain(data)
                if isinstance(fields, dict):
                    event = Event(**{k: v for k, v in fields.items() if k in Event.__dataclass_fields__})
                    events.append(dataclasses.replace(event, t=start + float(event.t) - self.run.trace.start,
                                                      src=known.get(event.src, event.src),
                                                      dst=known.get(event.dst, event.dst)))
        except (TypeError, ValueError, wire.WireError):
            return  # nothing usable: the examiner never needs it to decide
        self.run.note_told(events)

    def _encode(self, value, depth: int):
        from sqlalchemy.engine import Engine

        from ..client import Client

        if isinstance(value, Client):
            return {"$": "client", "ref": self._ref(value), "name": value.name,
                    "timeout": wire.plain(value.timeout), "base_url": value.base_url}
        if isinstance(value, Engine):
            recipe = getattr(value, "labkit_recipe", None)
            if recipe is None:
                raise TypeError("a check can hand the answer only an engine labkit.db.Database made")
            _open_to_group(value)
            return {"$": "engine", "ref": self._ref(value), "recipe": recipe}
        if isinstance(value, (dict, list, set)):
            known = self._shared.get(id(value))
            if known is not None:
                return {"$": "ref", "ref": known[0]}
            ref = self._ref(value)
            return {"$": "shared", "ref": ref, "value": wire.plain(value, depth + 1, custom=self._skip(value))}
        if callable(value) and not isinstance(value, type):
            number = self.examiner.share_callback(value)
            self._callbacks.append(number)
            return {"$": "callback", "ref": number}
        return None

    def _skip(self, container):
        """The encoder for a shared container's own items (the container itself is not shared again)."""
        return lambda value, depth: None if value is container else self._encode(value, depth)

    def _ref(self, value) -> int:
        known = self._shared.get(id(value))
        if known is None:
            known = self._shared[id(value)] = (self.examiner.next_id(), value)
        return known[0]

    def end(self) -> None:
        self.stopped.set()
        self.examiner.forget_callbacks(self._callbacks)
        self.examiner._send_quietly({"op": "end-run", "run": self.number})


def _open_to_group(engine) -> None:
    """Let the answer's kernel (isolated, it is in this process's group alone) open a SQLite file handed
    to it: its folder and files become the group's too (SQLite gives later journals the file's mode)."""
    database = engine.url.database if engine.dialect.name == "sqlite" else None
    if not database or database == ":memory:" or not os.path.exists(database):
        return
    folder = os.path.dirname(os.path.abspath(database))
    if os.stat(folder).st_uid == os.geteuid():
        os.chmod(folder, 0o2770)
    for path in (database, database + "-wal", database + "-shm", database + "-journal"):  # WAL keeps its files
        if os.path.exists(path) and os.stat(path).st_uid == os.geteuid():
            os.chmod(path, 0o660)


# -- the process ----------------------------------------------------------------------------


def unix_address(address: str) -> str:
    """A Unix socket address: "@name" is Linux's abstract namespace (no file; it belongs to the network
    namespace, so only the processes of a grading run can reach it)."""
    return "\0" + address[1:] if address.startswith("@") else address


def _serve_socket(sock: socket.socket, **options) -> None:
    Examiner(wire.Channel(sock), **options).serve()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.grading.examiner", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--fd", type=int, help="a connected socket inherited from the kernel")
    where.add_argument("--listen", help="a Unix socket path to accept kernels on")
    parser.add_argument("--record", help="append each verdict here (a JSON line)")
    parser.add_argument("--points", default="{}", help="question -> points, as JSON")
    parser.add_argument("--tmp", help="the folder for temporary files (the databases the tests make)")
    parser.add_argument("--private", help="a folder of the instructor's private tests (*.py) to load too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("labkit").setLevel(logging.ERROR)  # the services' warnings about answers are expected here
    if args.tmp:
        tempfile.tempdir = os.environ["TMPDIR"] = args.tmp
    from .authoring import load_private, questions

    questions()  # every hidden test loaded before the first check
    if args.private:
        load_private(args.private)
    record = open(args.record, "a", encoding="utf-8") if args.record else None
    options = {"record": record, "points": json.loads(args.points)}
    if args.fd is not None:
        # The kernel's own examiner: the kernel's Interrupt (SIGINT to its process group) is
        # for the kernel; this process ends when the kernel's end of the socket closes.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _serve_socket(socket.socket(fileno=args.fd), **options)
        return 0
    sandbox.end_with_grader()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(unix_address(args.listen))
    if not args.listen.startswith("@"):
        os.chmod(args.listen, 0o777)  # the kernel runs as another user
    server.listen()
    os.write(sys.stdout.fileno(), b"ready\n")  # one write: whoever waits for it may stop reading after it
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    while True:
        connection, _ = server.accept()
        threading.Thread(target=_serve_socket, args=(connection,), kwargs=options, daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
