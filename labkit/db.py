"""The shared database the services use: SQLite by default, any SQLAlchemy URL otherwise.

    >>> with labkit.db.Database() as db:                    # doctest: +SKIP
    ...     with db.engine.begin() as tx:
    ...         tx.execute(sqlalchemy.text("select 1"))

With no URL (and no ``LABKIT_DATABASE_URL`` in the environment) the database is a
SQLite file in a temporary folder of its own, removed by ``close()``. The same code
runs on PostgreSQL by naming one: ``Database("postgresql+psycopg://user@127.0.0.1/shop")``.

SQLite is made to behave like a server database for many threads: every transaction
starts with ``BEGIN IMMEDIATE`` (unless ``begin="deferred"``; it takes the write lock at once, so two transactions
never read the same row and then both write it; reads take it too), and a writer
waits up to ``busy_timeout_ms`` for the lock instead of failing at once. A connection
that only reads can ask for SQLite's own deferred start instead, which takes no lock
(the file is in WAL mode, so it reads the last committed state and never waits for a
writer): ``engine.connect().execution_options(labkit_begin="deferred")``.

A transaction a service runs while it serves a request is in the trace: "begin" (on
SQLite with how long it waited for the lock, or how long before it gave up), then
"commit" or "rollback" (detail "read only" when none of its statements wrote: no INSERT,
UPDATE, DELETE, MERGE or DDL), from the service to the database's ``name``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
import uuid

import sqlalchemy
from sqlalchemy import event

from . import tracing

#: The environment variable that names the database for every service.
ENV = "LABKIT_DATABASE_URL"


class Database:
    """One database and its connection pool (``engine``); a context manager.

    On SQLite, ``begin`` is how a transaction starts: "immediate" (the default: it takes
    the write lock at once) or "deferred" (SQLite's own default: a reader takes no lock,
    so two transactions may read a row and then both try to write it). ``pause_ms`` makes
    each connection wait that long on its way back to the pool, which widens the windows
    in which concurrent requests interleave (an experiment's magnifying glass).
    """

    def __init__(self, url: str | None = None, *, busy_timeout_ms: int = 10_000, name: str = "database",
                 begin: str = "immediate", pause_ms: float = 0):
        if begin not in ("immediate", "deferred"):
            raise ValueError(f'begin is "immediate" or "deferred", not {begin!r}')
        if isinstance(pause_ms, bool) or not isinstance(pause_ms, (int, float)) or not 0 <= pause_ms <= 10_000:
            raise ValueError(f"pause_ms is milliseconds from 0 to 10000, not {pause_ms!r}")
        url = url or os.environ.get(ENV)
        self.name = name
        self._folder = None
        if not url:
            self._folder = tempfile.mkdtemp(prefix="labkit-db-")
            url = "sqlite:///" + os.path.join(self._folder, "labkit.sqlite3")
        try:
            self.engine = sqlalchemy.create_engine(url, **_options(url))
        except Exception:
            self._remove_folder()
            raise
        sqlite = self.engine.dialect.name == "sqlite"
        if sqlite:
            _serialise_sqlite(self.engine, busy_timeout_ms)
        _transactions(self.engine, name, begin=f"BEGIN {begin.upper()}" if sqlite else None)
        if pause_ms:
            event.listen(self.engine, "checkin", lambda *_: time.sleep(pause_ms / 1000))
        #: What makes this database again in another process (the examiner hands engines over by it).
        self.engine.labkit_recipe = {"url": self.engine.url.render_as_string(hide_password=False),
                                     "busy_timeout_ms": busy_timeout_ms, "name": name, "begin": begin,
                                     "pause_ms": pause_ms}

    @property
    def url(self) -> str:
        """The database's URL, password hidden."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        """Close every pooled connection; remove the temporary SQLite file, if any."""
        self.engine.dispose()
        self._remove_folder()

    def _remove_folder(self) -> None:
        if self._folder:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Database {self.engine.dialect.name}>"


@contextlib.contextmanager
def scratch(server_url: str, prefix: str = "labkit"):
    """A new, empty database on the server ``server_url`` names (PostgreSQL), dropped afterwards; yields its URL.

        >>> with labkit.db.scratch("postgresql+psycopg://labkit@127.0.0.1/postgres") as url:   # doctest: +SKIP
        ...     db = Database(url)
    """
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {name}")
        try:
            yield admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        admin.dispose()


def _options(url: str) -> dict:
    if url.startswith("sqlite"):
        # One connection per thread that asks; served threads come and go.
        return {"connect_args": {"check_same_thread": False}, "poolclass": sqlalchemy.pool.QueuePool,
                "pool_size": 8, "max_overflow": 64}
    return {"pool_size": 8, "max_overflow": 64, "pool_pre_ping": True}


def _serialise_sqlite(engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # let SQLAlchemy's "begin" below decide
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()


def _transactions(engine, name: str, *, begin: str | None) -> None:
    """Begin SQLite's transactions with ``begin`` (a statement); record each transaction a served request runs."""

    @event.listens_for(engine, "begin")
    def _begin(connection):
        connection.info["labkit_wrote"] = False
        chosen = connection.get_execution_options().get("labkit_begin")
        if chosen not in (None, "immediate", "deferred"):
            raise ValueError(f'the labkit_begin option is "immediate" or "deferred", not {chosen!r}')
        if begin is None:  # not SQLite: the database's own BEGIN
            _record("begin", name, "")
            return
        statement = begin if chosen is None else f"BEGIN {chosen.upper()}"
        started, got = time.perf_counter(), False
        try:
            connection.exec_driver_sql(statement)
            got = True
        finally:
            waited = (time.perf_counter() - started) * 1000
            _record("begin", name, f"waited {waited:.0f} ms for the lock" if got and waited >= 1 else
                    "" if got else f"gave up after {waited:.0f} ms waiting for the lock")

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(connection, _cursor, statement, *_):
        if _WRITES.search(statement):
            connection.info["labkit_wrote"] = True

    @event.listens_for(engine, "commit")
    def _commit(connection):
        _record("commit", name, "" if connection.info.pop("labkit_wrote", True) else "read only")

    @event.listens_for(engine, "rollback")
    def _rollback(connection):
        _record("rollback", name, "" if connection.info.pop("labkit_wrote", True) else "read only")


#: A statement that changes the database (anywhere in it: a WITH ... INSERT writes too).
_WRITES = re.compile(r"\b(INSERT\s+INTO|UPDATE\s+\S+\s+SET|DELETE\s+FROM|MERGE\s+INTO|REPLACE\s+INTO|CREATE|DROP|ALTER"
                     r"|TRUNCATE)\b", re.IGNORECASE)


def _record(kind: str, database: str, detail: str) -> None:
    serving = tracing.current()
    if serving is not None:  # a transaction a service runs for a request
        serving.trace.record(kind, serving.node, database, trace_id=serving.trace_id, span_id=serving.span_id,
                             detail=detail)
