"""PostgreSQL, the database production uses, as a private server on this machine.

    >>> with labkit.postgres.Server() as server:               # doctest: +SKIP
    ...     db = labkit.db.Database(server.url)                # READ COMMITTED, as PostgreSQL ships

The server is Debian's (or Ubuntu's) ``postgres`` program, run by labkit on 127.0.0.1 at
a port the system picked, with a cluster of its own in a temporary folder: created by
``initdb`` when the server starts, removed by ``close()`` (or leaving the ``with``). Its
one role, ``labkit``, signs in with a password made for this server alone, so other users
of a shared machine cannot use it. Unix sockets are off: loopback TCP only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

from .errors import LabkitError
from .processes import dies_with_kernel, free_port


class PostgresError(LabkitError, RuntimeError):
    """PostgreSQL is missing or its server would not start."""


def _programs() -> str:
    """The folder holding initdb and postgres (the newest version installed)."""
    found = shutil.which("initdb")
    if found:
        return os.path.dirname(found)
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                     key=lambda path: int(path.split("/")[-3].split(".")[0]))
    if not folders:
        raise PostgresError("PostgreSQL is not installed here: on Debian or Ubuntu, `apt-get install postgresql` "
                            "(Binder installs it from binder/apt.txt)")
    return os.path.dirname(folders[-1])


def _user() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a user they accept (they refuse root)."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresError("PostgreSQL refuses to run as root and there is no user 'postgres' to run it as") from None
    if shutil.which("setpriv") is None:
        raise PostgresError("PostgreSQL refuses to run as root and setpriv (util-linux) is missing")
    return ["setpriv", "--reuid", "postgres", "--regid", "postgres", "--init-groups"]


def why_not() -> str:
    """Why a Server cannot start here ("" if it can)."""
    try:
        _programs()
        _user()
    except PostgresError as error:
        return str(error)
    return ""


def available() -> bool:
    """Whether a Server can start here."""
    return not why_not()


class Server:
    """A private PostgreSQL server on 127.0.0.1: ``url`` (for SQLAlchemy and labkit.db), ``close()``."""

    def __init__(self, *, timeout: float = 60.0):
        programs, user = _programs(), _user()
        self.folder = tempfile.mkdtemp(prefix="labkit-postgres-")
        self.port = free_port()
        self._password = secrets.token_urlsafe(16)
        self._process: subprocess.Popen | None = None
        data, password_file = os.path.join(self.folder, "data"), os.path.join(self.folder, "password")
        try:
            with open(password_file, "w") as out:
                out.write(self._password)
            if user:  # the folder belongs to the user the server runs as
                for path in (self.folder, password_file):
                    shutil.chown(path, "postgres", "postgres")
            initdb = subprocess.run(
                [*user, os.path.join(programs, "initdb"), "-D", data, "-U", "labkit", "--pwfile", password_file,
                 "--auth", "scram-sha-256", "--encoding", "UTF8", "--no-sync"],
                capture_output=True, text=True, timeout=timeout)
            if initdb.returncode != 0:
                raise PostgresError(f"initdb failed with {initdb.returncode}:\n{initdb.stderr.strip()}")
            log = open(os.path.join(self.folder, "server.log"), "ab")
            with log:
                self._process = subprocess.Popen(
                    [*user, *dies_with_kernel([  # after the change of user, which would clear the death signal
                        os.path.join(programs, "postgres"), "-D", data, "-p", str(self.port),
                        "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="])],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
            self._wait_ready(timeout)
        except BaseException:
            self.close()
            raise

    @property
    def url(self) -> str:
        """The server's ``postgres`` database as a SQLAlchemy URL (psycopg), password included."""
        return f"postgresql+psycopg://labkit:{self._password}@127.0.0.1:{self.port}/postgres"

    def _wait_ready(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise PostgresError(f"postgres exited with {self._process.returncode}:\n{self._tail()}")
            try:
                psycopg.connect(host="127.0.0.1", port=self.port, user="labkit", password=self._password,
                                dbname="postgres", connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresError(f"postgres did not accept connections within {timeout:g} s:\n"
                                        f"{self._tail()}") from None
                time.sleep(0.05)

    def _tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.folder, "server.log"), "rb") as log:
            return b"\n".join(log.read().splitlines()[-lines:]).decode(errors="replace")
        return ""

    def close(self) -> None:
        """Stop the server (a fast shutdown: sessions are ended, nothing waits) and remove its folder."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)  # postgres' "fast" shutdown
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        running = self._process is not None and self._process.poll() is None
        return f"<PostgreSQL Server {'running' if running else 'stopped'}>"
