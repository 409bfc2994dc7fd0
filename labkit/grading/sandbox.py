"""Isolate a grading run: its own user id, its own network, nothing left behind.

When the grader runs as root on Linux, each run's pytest and the kernel it starts run

- as a user id of their own (one with no account and no groups): they can read the
  workbook and write only their own folder, plus the world-writable temporary
  folders, which are swept for the user's files after the run;
- in a network namespace of their own that holds only a loopback interface: an
  answer may bind any port, and reaches no service of the machine and no other machine;
- with ``no_new_privs``, so a setuid program gives them nothing back.

After the run every process of that user id is killed, wherever it went.

    >>> with sandbox.Lease() as user:                   # doctest: +SKIP
    ...     subprocess.run(sandbox.wrap(user.uid, ["python", "-c", "..."]))

The run's examiner (:mod:`labkit.grading.examiner`, which decides the verdicts) shares
the run's network namespace, so the kernel reaches the servers it starts, but runs as a
user id of its own: the answer can neither signal it nor read its memory nor write its
verdicts. The kernel also belongs to the examiner's group, so a SQLite database the
examiner hands the answer (a folder and file it opens to its group) is theirs alone to
share. Both run in a mount namespace of their own in which the folders the grader names
(the solution edition, the private tests, the repository's history) are empty: the
answer cannot read what it must not know.

Elsewhere (not root, not Linux) :func:`available` says why not, and the grader runs
without isolation. ``python -m labkit.grading.sandbox UID [--with EUID EXAMINER_JSON]
COMMAND...`` is the launcher :func:`wrap` puts in front of a command (run as root): the
examiner's command line, as a JSON list, starts first as EUID and must print "ready".
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: The first user id the sandbox lends; one per run going at once, counting up.
FIRST_UID = 61_000
#: Folders anyone may write to: swept for the sandbox user's files after each run.
SHARED_TEMP = ("/tmp", "/var/tmp", "/dev/shm")

_CLONE_NEWNET = 0x40000000
_CLONE_NEWNS = 0x00020000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 1, 2, 4, 8, 0x4000, 1 << 18
_PR_SET_NO_NEW_PRIVS = 38
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1

_lent: set[int] = set()
_lent_lock = threading.Lock()


@functools.cache
def available() -> tuple[bool, str]:
    """(True, "") when runs can be isolated here, else (False, why not)."""
    if not sys.platform.startswith("linux"):
        return False, "runs are isolated only on Linux"
    if os.geteuid() != 0:
        return False, "runs are isolated only when the grader runs as root (in a container, say)"
    probe = subprocess.run(wrap(FIRST_UID - 1, [sys.executable, "-c", "import labkit, nbval"]),
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        if "unshare" in last:
            return False, f"no namespaces can be made here ({last}): grant CAP_SYS_ADMIN (in a container)"
        return False, f"an isolated user cannot run this Python and labkit ({last}); make them world-readable"
    return True, ""


def wrap(uid: int, command: list[str], examiner: tuple[int, list[str]] | None = None, hide=()) -> list[str]:
    """``command`` as it runs isolated as ``uid`` (through this module's launcher), after ``examiner``
    (its user id and command) started in the same namespaces; the folders in ``hide`` look empty there."""
    before = [word for path in hide for word in ("--hide", str(path))]
    before += ["--with", str(examiner[0]), json.dumps(examiner[1])] if examiner else []
    return [sys.executable, "-m", __name__, str(uid), *before, *command]


class Lease:
    """A user id lent to one run; on exit its processes are killed and its files swept.

    A user id is lent to one run at a time across every grader on the machine: each
    lease holds a lock on a file named after it (``/run/lock``, or the temporary folder).
    """

    def __init__(self):
        with _lent_lock:
            for uid in range(FIRST_UID, FIRST_UID + 10_000):
                if uid not in _lent and self._lock(uid):
                    break
            else:
                raise OSError("every user id the sandbox may lend is in use")
            self.uid = uid
            _lent.add(uid)
        clean(self.uid)  # a run that crashed earlier may have left something

    def _lock(self, uid: int) -> bool:
        folder = Path("/run/lock") if Path("/run/lock").is_dir() else Path(tempfile.gettempdir())
        fd = os.open(folder / f"labkit-sandbox-{uid}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def give(self, *paths: Path) -> None:
        """Make ``paths`` (folders or files the grader made) the sandbox user's own."""
        for path in paths:
            os.chown(path, self.uid, self.uid)

    def __enter__(self) -> "Lease":
        return self

    def __exit__(self, *exc) -> None:
        clean(self.uid)
        with _lent_lock:
            _lent.discard(self.uid)
            os.close(self._fd)  # the lock goes with it


def clean(uid: int) -> None:
    """Kill every process of ``uid`` and remove its files from the shared temporary folders."""
    for _ in range(50):
        pids = processes_of(uid)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    for folder in SHARED_TEMP:
        _sweep(Path(folder), uid)


def processes_of(uid: int) -> list[int]:
    """Pids of the processes whose real or effective user id is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                status = Path(f"/proc/{entry}/status").read_text()
            except OSError:
                continue
            uids = next((line.split()[1:3] for line in status.splitlines() if line.startswith("Uid:")), [])
            if str(uid) in uids:
                found.append(int(entry))
    return found


def _sweep(folder: Path, uid: int) -> None:
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if info.st_uid == uid:
            if stat.S_ISDIR(info.st_mode):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        elif stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH:
            _sweep(Path(entry.path), uid)  # another world-writable folder: its files may be there too


# -- the launcher, run as root in front of the isolated command ---------------------------------


def end_with_grader() -> None:
    """Exit this process when the grader is gone: its pipe on our stdin reads end of file.

    The grader holds the pipe's other end for as long as the run lasts, so even a grader
    killed with SIGKILL ends its runs (the kernel closes that end). Without a pipe on stdin
    (a person started this), nothing is watched.
    """
    try:
        if not stat.S_ISFIFO(os.fstat(0).st_mode):
            return
        fd = os.dup(0)  # our own copy: pytest points fd 0 at /dev/null while it captures
    except OSError:
        return

    def watch():
        with contextlib.suppress(OSError):
            while os.read(fd, 4096):
                pass
        os._exit(70)

    threading.Thread(target=watch, name="labkit-grader-watch", daemon=True).start()


def _bring_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(s, _SIOCSIFFLAGS, struct.pack("16sH14s", b"lo", flags | _IFF_UP, b""))


def _become(uid: int, libc, groups=()) -> None:
    os.setgroups(list(groups))
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def _start_examiner(uid: int, command: list[str], libc) -> None:
    """Start ``command`` as ``uid`` and wait (a minute at most) for it to print "ready"."""
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        try:
            os.close(read_end)
            os.dup2(write_end, 1)
            _become(uid, libc)
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    os.close(write_end)
    said = b""
    deadline = time.monotonic() + 60
    while b"ready\n" not in said and time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(read_end, 100) if ready else b""
        if not chunk:
            break
        said += chunk
    os.close(read_end)
    if b"ready\n" not in said:
        sys.exit("the examiner did not start")


def _hide(path: str, libc) -> None:
    """Mount an empty, read-only tmpfs over the folder ``path``, in this mount namespace only."""
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                  b"size=4k,mode=0555") != 0:
        raise OSError(ctypes.get_errno(), f"could not hide {path}")


def _launch(uid: int, command: list[str]) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNET | _CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET | CLONE_NEWNS) failed: the grader needs root")
    _bring_loopback_up()
    if libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None) != 0:  # nothing mounted here leaks out
        raise OSError(ctypes.get_errno(), "could not make the mounts private")
    while command[:1] == ["--hide"]:
        _hide(command[1], libc)
        command = command[2:]
    os.umask(0)
    groups = ()
    if command[:1] == ["--with"]:
        _start_examiner(int(command[1]), json.loads(command[2]), libc)
        groups = (int(command[1]),)  # the examiner's group: the databases it shares with the answer
        command = command[3:]
    _become(uid, libc, groups)
    os.execvp(command[0], command)


if __name__ == "__main__":
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit("usage: python -m labkit.grading.sandbox UID [--hide FOLDER]... [--with EUID EXAMINER_JSON] "
                 "COMMAND [ARGS...]  (as root)")
    _launch(int(sys.argv[1]), sys.argv[2:])
