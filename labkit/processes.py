"""Services in processes of their own: real crashes, real pauses, no shared interpreter lock.

    >>> shop = labkit.spawn("shop", name="shop")      # doctest: +SKIP
    >>> shop.kill()        # SIGKILL: a crash; requests in flight are cut
    >>> shop.restart()     # the same port again; what it kept on disk is still there
    >>> shop.pause()       # SIGSTOP: alive and silent, "slow or dead?"

A spawned service runs ``python -m labkit serve`` (the same server runner as
:func:`labkit.serve`) on 127.0.0.1 and a port the system picks. It reports on a pipe:
first that it is ready, then every event of its trace, each written as it is recorded,
so the kernel's trace shows both sides of each exchange on one time axis and a crashed
child's events up to the crash are kept. It dies with its parent: when the parent's end
of its stdin closes (the parent exited, even by SIGKILL) it stops, and a child started
from the main thread also gets SIGKILL from the kernel when the parent dies.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

from . import tracing
from .errors import ServerError

#: Seconds a child may take to answer before spawn gives up.
READY_TIMEOUT = 20.0

_children: dict[str, "Process"] = {}
_children_lock = threading.Lock()


class Process:
    """A service running as its own OS process: ``url``, ``name``, ``pid``, ``state``.

    Make one with :func:`spawn`. ``kill()`` crashes it, ``pause()``/``resume()`` freeze
    and thaw it, ``restart()`` starts it again on the same port, ``stop()`` ends it
    cleanly. ``output`` holds the last lines the child printed (its errors).
    """

    def __init__(self, service: str, name: str, options: dict, trace: tracing.Trace, port: int,
                 machine: str | None = None):
        self.service, self.name, self.options, self.trace = service, name, options, trace
        self.port, self.machine = port, machine
        self.host = "127.0.0.1" if machine is None else _machine_address(machine)
        self.pid: int | None = None
        self.state = "new"
        self.output: collections.deque[str] = collections.deque(maxlen=50)
        self._popen: subprocess.Popen | None = None
        self._readers: list[threading.Thread] = []
        self._ready = threading.Event()
        self._lock = threading.RLock()

    # -- the life of the child ---------------------------------------------------------------

    def _start(self, timeout: float) -> "Process":
        report_r, report_w = os.pipe()
        command = [sys.executable, "-m", "labkit", "serve", self.service, "--port", str(self.port),
                   "--name", self.name, "--report-fd", str(report_w)]
        if self.machine is not None:  # a network stack of its own: it listens on its only interfaces there
            command = ["unshare", "--net", "--", *command, "--host", "0.0.0.0"]
        if threading.current_thread() is threading.main_thread():
            command.append("--die-with-parent")  # the kernel's SIGKILL reaches the child (PR_SET_PDEATHSIG)
        for key, value in self.options.items():
            command += ["--set", f"{key}={json.dumps(value)}"]
        self._ready.clear()
        self.output.clear()
        try:
            self._popen = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                pass_fds=(report_w,), env=dict(os.environ, LABKIT_PARENT_PID=str(os.getpid())),
                start_new_session=True)  # Ctrl-C in a terminal reaches the kernel, not its children
        finally:
            os.close(report_w)
        self.pid = self._popen.pid
        self._readers = [
            threading.Thread(target=self._read_reports, args=(os.fdopen(report_r, "rb"),),
                             name=f"labkit-spawn-{self.name}-trace", daemon=True),
            threading.Thread(target=self._read_output, args=(self._popen.stdout,),
                             name=f"labkit-spawn-{self.name}-output", daemon=True),
        ]
        for reader in self._readers:
            reader.start()
        if not self._ready.wait(timeout) or self._popen.poll() is not None:
            self._end(signal.SIGKILL)
            said = "\n".join(self.output).strip() or "(it printed nothing)"
            why = f"exited with {self._popen.returncode}" if self._popen.returncode not in (None, -9) \
                else f"did not answer within {timeout:g} s"
            raise ServerError(f"the service {self.service!r} ({self.name!r}) {why}; it said:\n{said}")
        if self.machine is not None:
            try:
                _cable(self.machine, self.pid)
            except (OSError, subprocess.CalledProcessError) as error:
                self._end(signal.SIGKILL)
                said = getattr(error, "stderr", "") or error
                raise ServerError(f"cannot connect the machine {self.machine!r} to this one: {said}") from error
        self.state = "running"
        tracing.register_name((self.host, self.port), self.name)
        return self

    def _read_reports(self, pipe) -> None:
        """Read the child's reports, until it exits: the port it listens on, then its trace."""
        with pipe:
            for line in pipe:
                try:
                    report = json.loads(line)
                except ValueError:
                    continue
                if "ready" in report:
                    self.port = report["ready"]
                    self._ready.set()
                    continue
                at = report.pop("at")
                if at < self.trace.start:  # recorded before the kernel's trace was last cleared
                    continue
                names = tracing.names()  # the child knows its peers by address; the kernel by name
                src, dst = (names.get(end, end) for end in (report.pop("src"), report.pop("dst")))
                self.trace.record(report.pop("kind"), src, dst, at=at, **report)

    def _read_output(self, pipe) -> None:
        with pipe:
            for line in pipe:
                self.output.append(line.decode(errors="replace").rstrip())

    def _end(self, signum: int, timeout: float = 5.0) -> None:
        """Send ``signum`` (continuing a paused child first) and wait for the child and its readers."""
        popen = self._popen
        if popen is None:
            return
        if popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                if signum != signal.SIGKILL:
                    os.kill(popen.pid, signal.SIGCONT)
                os.kill(popen.pid, signum)
            try:
                popen.wait(timeout)
            except subprocess.TimeoutExpired:
                popen.kill()
                popen.wait()
        with contextlib.suppress(OSError):
            popen.stdin.close()
        for reader in self._readers:
            reader.join(timeout)
        tracing.forget_name((self.host, self.port))

    # -- what a notebook does with it -------------------------------------------------------------

    @property
    def url(self) -> str:
        """http://127.0.0.1:PORT (its machine's address, on a machine): the same after a kill or a restart."""
        if self.state == "stopped":
            raise ServerError(f"the spawned service {self.name!r} is stopped; spawn it again, "
                              f"or restart() it before you call it")
        return f"http://{self.host}:{self.port}"

    def kill(self) -> None:
        """SIGKILL: the process ends at once, mid-request; callers see their connections cut."""
        with self._lock:
            self._end(signal.SIGKILL)
            self.state = "killed"

    def pause(self) -> None:
        """SIGSTOP: the process is alive but runs nothing; connections open, nothing answers.

        Returns once the process is stopped (Linux: its state in /proc says so).
        """
        with self._lock:
            self._signal(signal.SIGSTOP, "pause")
            self.state = "paused"
            deadline = time.monotonic() + 2
            while _process_state(self._popen.pid) not in ("T", "") and time.monotonic() < deadline:
                time.sleep(0.001)

    def resume(self) -> None:
        """SIGCONT: a paused process runs again and answers what waited."""
        with self._lock:
            self._signal(signal.SIGCONT, "resume")
            self.state = "running"

    def restart(self, timeout: float = READY_TIMEOUT) -> "Process":
        """Stop it (cleanly, if it still runs) and start it again on the same port, with the same options."""
        with self._lock:
            self._end(signal.SIGTERM)
            with _children_lock:
                _children[self.name] = self
            return self._start(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM: the service stops accepting, finishes what it serves and exits (SIGKILL after ``timeout``)."""
        with self._lock:
            self._end(signal.SIGTERM, timeout)
            self.state = "stopped"
            with _children_lock:
                if _children.get(self.name) is self:
                    del _children[self.name]

    def _signal(self, signum: int, what: str) -> None:
        if self._popen is None or self._popen.poll() is not None:
            raise ServerError(f"cannot {what} {self.name!r}: its process is {self.state}, not running; "
                              f"restart() it first")
        os.kill(self._popen.pid, signum)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f" on machine {self.machine!r}" if self.machine else ""
        return f"<Process {self.name!r}{where} {self.state}>"


def spawn(service: str, name: str | None = None, *, trace: tracing.Trace | None = None, port: int = 0,
          machine: str | None = None, timeout: float = READY_TIMEOUT, **options) -> Process:
    """Run a reference service (or an app named "package.module:app") as its own process.

    Returns once it answers; a service that cannot start (an unknown name, a bad option,
    a port in use) raises ServerError with what the child said. ``name`` labels it on diagrams and must be unique among
    running servers and spawned services (default: the service's name). ``options`` go
    to the service's ``create_app`` and must be JSON values (numbers, strings, lists, ...).
    Its trace events join ``trace`` (default: ``labkit.trace``).

    ``machine="A"`` runs it in a network namespace of its own (needs root and iproute2):
    another network stack, joined to this one by a virtual cable, at an address of its
    own (10.213.x.2), one service to a machine. Links and partitions work as on loopback.
    """
    from . import server

    if not isinstance(service, str) or not service.strip():
        raise ValueError(f"spawn needs a reference service's name (such as 'shop') or an app as "
                         f"'package.module:app', not {service!r}")
    name = service.rsplit(":", 1)[-1] if name is None else name
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a spawned service's name must be a non-empty string, not {name!r}")
    for key, value in options.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise TypeError(f"the option {key}={value!r} cannot be sent to another process; "
                            f"give numbers, strings, True/False, None, lists or dicts") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port is a whole number from 0 (any free port) to 65535, not {port!r}")
    if machine is not None:
        why = _no_machines()
        if why:
            raise ServerError(f"cannot run {name!r} on a machine of its own here: {why}; "
                              f"spawn it without machine= (on loopback)")
    with _children_lock:
        if machine is not None and any(child.machine == machine for child in _children.values()):
            raise ServerError(f"the machine {machine!r} already runs a service; give each spawned service a "
                              f"machine of its own (machine='B'), or stop the other first")
        if name in _children or name in {s.name for s in server.running()}:
            raise ServerError(f"a server named {name!r} is already running; stop it first "
                              f"(labkit.stop_all() stops every server) or pick another name")
        child = _children[name] = Process(service, name, options, tracing.default if trace is None else trace, port,
                                          machine)
    try:
        return child._start(timeout)
    except BaseException:
        with _children_lock:
            _children.pop(name, None)
        raise


def _process_state(pid: int) -> str:
    """The one-letter state of process ``pid`` from /proc ("T": stopped), or "" where it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


# -- other programs: etcd, PostgreSQL ------------------------------------------------------------

def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` nothing listens on now, for a program that cannot be told port 0."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def dies_with_kernel(command: list[str]) -> list[str]:
    """``command`` wrapped so that the program gets SIGKILL when this process dies, even by SIGKILL.

    It needs setpriv (util-linux) and the main thread: the kernel sends the signal when the
    thread that started the program exits. Elsewhere ``command`` comes back unchanged.
    """
    import shutil

    if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
        return ["setpriv", "--pdeathsig", "KILL", *command]
    return command


# -- machines: network namespaces joined by virtual cables ------------------------------------

_machines: dict[str, int] = {}   # machine name -> its number, which gives its addresses and cable names
_machines_lock = threading.Lock()


def _machine_address(machine: str) -> str:
    if not isinstance(machine, str) or not machine.strip():
        raise ValueError(f"a machine's name is a non-empty string, such as 'A', not {machine!r}")
    with _machines_lock:
        number = _machines.setdefault(machine, len(_machines) + 1)
    if number > 250:
        raise ValueError("at most 250 machines in one kernel")
    return f"10.213.{number}.2"


def _no_machines() -> str:
    """Why this process cannot make network namespaces ("" if it can)."""
    import shutil

    if os.geteuid() != 0:
        return "making a network namespace needs root"
    missing = [tool for tool in ("unshare", "nsenter", "ip") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (apt-get install util-linux iproute2)"
    tried = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True, timeout=10)
    if tried.returncode != 0:  # root in a container without CAP_SYS_ADMIN, say
        return f"this machine refuses new network namespaces ({tried.stderr.strip()})"
    return ""


def _cable(machine: str, pid: int) -> None:
    """A veth pair from this network stack to the one process ``pid`` made: 10.213.N.1 here, .2 there."""
    number = _machines[machine]
    here, there = f"lk{number}k{pid % 10_000}", f"lk{number}m"
    inside = ["nsenter", "-t", str(pid), "-n"]
    for command in (["ip", "link", "add", here, "type", "veth", "peer", "name", there, "netns", str(pid)],
                    ["ip", "addr", "add", f"10.213.{number}.1/30", "dev", here],
                    ["ip", "link", "set", here, "up"],
                    [*inside, "ip", "addr", "add", f"10.213.{number}.2/30", "dev", there],
                    [*inside, "ip", "link", "set", there, "up"],
                    [*inside, "ip", "link", "set", "lo", "up"]):
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=10)


def spawned() -> list[Process]:
    """The spawned services not stopped (running, paused or killed), by name."""
    with _children_lock:
        return [_children[name] for name in sorted(_children)]


def stop_all() -> list[Process]:
    """Stop every spawned service; return them."""
    children = spawned()
    for child in children:
        child.stop()
    return children


# -- the child's side ---------------------------------------------------------------------------

def report_to(fd: int, trace: tracing.Trace, port: int, stopping: threading.Event, die_with_parent: bool) -> None:
    """In a spawned service: report ready on ``fd``, then every event of ``trace``; stop with the parent.

    Each event is written as it is recorded (one line, one write), so what the service
    saw before a SIGKILL is already in the pipe.
    """
    parent = int(os.environ.get("LABKIT_PARENT_PID", "0"))
    if die_with_parent:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent and os.getppid() != parent:  # the parent died before the line above
        stopping.set()
    lock = threading.Lock()

    def send(report: dict) -> None:
        line = (json.dumps(report) + "\n").encode()
        with lock, contextlib.suppress(OSError):  # a parent gone: nobody to tell
            os.write(fd, line)

    def tee(event: tracing.Event, start: float) -> None:
        report = {key: value for key, value in event.__dict__.items() if value not in ("", None) and key != "t"}
        send({**report, "at": event.t + start})

    def watch_parent() -> None:
        sys.stdin.buffer.read()  # returns when the parent's end closes: the parent stopped us, or died
        stopping.set()

    trace.tee = tee
    send({"ready": port})
    threading.Thread(target=watch_parent, name="labkit-parent-watch", daemon=True).start()
