"""The student's side of a check: the kernel answers the examiner's calls, and prints its verdict.

``labkit.check`` sends the question to the examiner (:mod:`labkit.grading.examiner`, a
process of its own: started here on first use, or the grader's, named by the
environment variable ``LABKIT_EXAMINER``), then serves what the examiner asks until
the verdict comes: each call of the student's function runs here, in a thread of its
own that the examiner can stop, with arguments rebuilt from :mod:`labkit.grading.wire`.
"""

from __future__ import annotations

import atexit
import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import wire
from .authoring import _GRACE_S, _sleep_patch, _Stopped, _Worker, describe_error

#: The environment variable naming the grader's examiner (a Unix socket path).
ENV = "LABKIT_EXAMINER"


class _Run:
    """What the examiner sent for one run of one test: rebuilt once, closed when the run ends."""

    def __init__(self, connection: "_Connection"):
        from ..tracing import Trace

        self.connection = connection
        self.trace = Trace()  # the clients' events: only ever drawn, never judged
        self.objects: dict[int, object] = {}
        self.closers: list = []

    def decode(self, tag: str, data: dict):
        ref = data.get("ref")
        if tag == "ref":
            if ref not in self.objects:
                raise wire.WireError(f"an object {ref!r} this run was never sent")
            return self.objects[ref]
        if ref in self.objects:
            return self.objects[ref]
        if tag == "client":
            from ..client import Client

            value = Client(str(data.get("name")), timeout=wire.unplain(data.get("timeout")),
                           base_url=str(data.get("base_url") or ""), trace=self.trace)
            self.closers.append(value.close)
        elif tag == "engine":
            from ..db import Database

            recipe = data.get("recipe")
            if not isinstance(recipe, dict) or not isinstance(recipe.get("url"), str):
                raise wire.WireError("an engine without its recipe")
            database = Database(**{k: recipe[k] for k in ("url", "busy_timeout_ms", "name", "begin", "pause_ms")
                                   if k in recipe})
            self.closers.append(database.close)
            value = database.engine
        elif tag == "shared":
            value = wire.unplain(data.get("value"), extra=self.decode)
        elif tag == "callback":
            value = self.connection.callback(ref)
        else:
            raise wire.WireError(f"a value tagged {tag!r}")
        self.objects[ref] = value
        return value

    def close(self) -> None:
        for close in reversed(self.closers):
            try:
                close()
            except Exception:  # noqa: BLE001 - tidying up after the answer
                pass
        self.objects.clear()


class _Connection:
    """One connection to an examiner, with the thread that reads it."""

    def __init__(self, sock: socket.socket, process: subprocess.Popen | None = None):
        self.channel, self.process = wire.Channel(sock), process
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._answers: dict[int, object] = {}          # check -> the student's function
        self._verdicts: dict[int, list] = {}           # check -> [event, message]
        self._callbacks: dict[int, list] = {}          # callback call -> [event, message]
        self._workers: dict[int, _Worker] = {}         # examiner's call -> the thread running it
        self._runs: dict[int, _Run] = {}
        self._ended: dict[int, _Run] = {}              # runs that ended, kept for a diagram
        self.alive = True
        threading.Thread(target=self._read, name="labkit-check-reader", daemon=True).start()

    # -- checks

    def check(self, question: str, answer, time_limit, diagram: bool) -> dict:
        number = next(self._ids)
        waiting = [threading.Event(), None]
        with self._lock:
            self._answers[number] = answer
            self._verdicts[number] = waiting
        defined = answer is not None and callable(answer)
        try:
            self.channel.send({"op": "check", "id": number, "question": question, "time_limit": time_limit,
                               "defined": defined, "diagram": diagram,
                               "name": getattr(answer, "__name__", "answer") if defined else "",
                               "parameters": wire.parameters(answer) if defined else None})
            while not waiting[0].wait(0.1):
                if not self.alive:
                    return {"line": f"{question} could not be checked: the checker stopped. Run the cell again.",
                            "status": "not checked"}
        except KeyboardInterrupt:
            self._send_quietly({"op": "cancel", "id": number})
            raise
        finally:
            with self._lock:
                self._answers.pop(number, None)
                self._verdicts.pop(number, None)
                mine = [w for w in self._workers.values() if getattr(w, "check", None) == number]
            deadline = time.monotonic() + _GRACE_S
            for worker in mine:  # a stopped answer ends before the verdict is printed: nothing left running
                worker.join(max(0.0, deadline - time.monotonic()))
        return waiting[1]

    # -- the examiner's calls of the student's function

    def _call(self, message: dict) -> None:
        number = message.get("id")
        with self._lock:
            answer = self._answers.get(message.get("check"))
            run = self._runs.get(message.get("run")) or self._runs.setdefault(message.get("run"), _Run(self))
        try:
            if answer is None:
                raise RuntimeError("this check has ended")
            args = wire.unplain(message.get("args", []), extra=run.decode)
            if not isinstance(args, list):
                raise wire.WireError("arguments that are not a list")
        except Exception as error:  # noqa: BLE001 - reported back as the answer's error
            self._reply(number, None, error)
            return
        mark = len(run.trace)
        worker = _Worker(answer, args, on_done=lambda w: self._finished(number, w, run, mark))
        worker.check = message.get("check")
        with self._lock:
            self._workers[number] = worker
        _sleep_patch.acquire()
        worker.start()

    def _finished(self, number: int, worker: _Worker, run: _Run, mark: int) -> None:
        _sleep_patch.release()
        with self._lock:
            self._workers.pop(number, None)
        if not isinstance(worker.error, _Stopped):
            told = {"start": run.trace.start, "events": [wire.plain(vars(e)) for e in run.trace.events()[mark:]]}
            self._reply(number, worker.value, worker.error, told)

    def _reply(self, number, value, error, told=None) -> None:
        if error is None:
            try:
                self.channel.send({"op": "returned", "id": number, "value": wire.plain(value), "told": told})
                return
            except wire.WireError as too_big:
                error = too_big
        self._send_quietly({"op": "raised", "id": number, "error": wire.error_to_wire(error, describe_error(error)),
                            "told": told})

    def _stop(self, message: dict) -> None:
        with self._lock:
            worker = self._workers.get(message.get("call"))
        if worker is not None:
            threading.Thread(target=_stop_worker, args=(worker,), name="labkit-check-stopper", daemon=True).start()

    # -- calls the answer makes back into the test (such as pay)

    def callback(self, ref: int):
        def call_back(*args):
            number = next(self._ids)
            waiting = [threading.Event(), None]
            with self._lock:
                self._callbacks[number] = waiting
            try:
                self.channel.send({"op": "callback", "id": number, "ref": ref, "args": wire.plain(list(args))})
                while not waiting[0].wait(0.1):
                    if not self.alive:
                        raise ConnectionError("the checker stopped")
            finally:
                with self._lock:
                    self._callbacks.pop(number, None)
            reply = waiting[1]
            if reply["op"] == "callback-raised":
                raise wire.error_from_wire(reply.get("error"))
            return wire.unplain(reply.get("value"))

        call_back.__name__ = "callback"
        return call_back

    # -- reading

    def _read(self) -> None:
        try:
            while True:
                message = self.channel.receive()
                if message is None:
                    break
                self._dispatch(message)
        except (OSError, wire.WireError):
            pass
        finally:
            self.alive = False
            self.channel.close()

    def _dispatch(self, message: dict) -> None:
        op = message["op"]
        if op == "call":
            self._call(message)
        elif op == "stop":
            self._stop(message)
        elif op == "end-run":
            with self._lock:
                run = self._runs.pop(message.get("run"), None)
                if run is not None:
                    self._ended[message.get("run")] = run
                    while len(self._ended) > 4:
                        self._ended.pop(next(iter(self._ended)))
            if run is not None:
                run.close()
        elif op in ("verdict", "callback-done", "callback-raised"):
            table = self._verdicts if op == "verdict" else self._callbacks
            with self._lock:
                waiting = table.get(message.get("id"))
            if waiting is not None:
                waiting[1] = message
                waiting[0].set()

    def _send_quietly(self, message: dict) -> None:
        try:
            self.channel.send(message)
        except (OSError, wire.WireError):
            pass

    def client_events(self, run: int | None):
        """The events the clients of run ``run`` recorded here, with the start of their trace."""
        with self._lock:
            found = self._ended.get(run) or self._runs.get(run)
        return (found.trace.start, found.trace.events()) if found is not None else (None, [])

    def close(self) -> None:
        self.alive = False
        self.channel.close()
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _stop_worker(worker: _Worker) -> None:
    """Wake the answer's sleeps and raise into its thread until it ends (it may catch one exception)."""
    worker.stopping.set()
    deadline = time.monotonic() + _GRACE_S
    while worker.is_alive() and not worker.done.is_set() and time.monotonic() < deadline:
        worker.interrupt()
        worker.join(0.05)


_connection: _Connection | None = None
_connection_lock = threading.Lock()


def connection() -> _Connection:
    """The examiner of this process: the grader's, or one started now (and reused)."""
    global _connection
    with _connection_lock:
        if _connection is None or not _connection.alive:
            _connection = _connect()
        return _connection


def _connect() -> _Connection:
    path = os.environ.get(ENV)
    if path:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect("\0" + path[1:] if path.startswith("@") else path)
        return _Connection(sock)
    ours, theirs = socket.socketpair()
    root = str(Path(__file__).resolve().parents[2])  # the examiner imports this very labkit
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-m", "labkit.grading.examiner", "--fd", str(theirs.fileno())],
                               pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               env=env, cwd=root)
    theirs.close()
    return _Connection(ours, process)


@atexit.register
def _close() -> None:
    if _connection is not None:
        _connection.close()
