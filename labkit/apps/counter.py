"""Shared counters in a database, for notebook 08: lost updates and three ways to prevent them.

    GET  /counters                      {"counters": [{"name", "value", "version"}, ...]}
    POST /counters                      {"name": "hits"} -> 201 the new counter at 0 (409 if it exists)
    GET  /counters/<name>               {"name", "value", "version"}
    PUT  /counters/<name>               {"value": V, "version": K} -> the counter with value V and
                                        version K + 1, only if its version is still K; otherwise
                                        409 Conflict with the counter as it is now (optimistic concurrency)
    POST /counters/<name>/increment/<how>
                                        add one and answer the counter; ``how`` is
                                          unsafe       read, pause, write: loses updates under concurrency
                                          locked       the same inside a lock of this process
                                          transaction  read, pause, write inside one database transaction
                                          atomic       one statement: UPDATE ... SET value = value + 1
    GET  /whoami?work_ms=N              {"thread": id of the thread serving this request}, after N ms
    GET  /stats                         {"requests": served so far, "in_flight": now, "max_in_flight": peak}

Every write adds one to the counter's ``version``. The work (``work_ms``) sits
between the read and the write: it does not create the race, it only widens the
window in which another request can slip in, so a rare bug becomes a frequent one.

Whether ``transaction`` is safe depends on the database: labkit's SQLite starts every
transaction with ``BEGIN IMMEDIATE`` (one writer at a time, so the read and the write
cannot interleave with another's); PostgreSQL's default READ COMMITTED lets two
transactions read the same value and both write (a lost update), unless the read
says ``SELECT ... FOR UPDATE``. ``atomic`` and the versioned ``PUT`` are correct on both.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time

import sqlalchemy
from flask import Blueprint, abort, jsonify, request
from sqlalchemy import text

from ..db import Database
from ..errors import Invalid
from . import kit

HOW = ("unsafe", "locked", "transaction", "atomic")
#: The largest absolute value a counter may be set to (fits every database's BIGINT).
MAX_VALUE = 10**15
MAX_WORK_MS = 2000

#: SQLite lets one transaction write at a time, and a writer that finds the file busy
#: sleeps (1, 2, 5, ... up to 100 ms) before it tries again, so under load most time
#: goes to sleeping. The threads of this process queue here instead, one queue per
#: database file (replicas in this process share it; other processes still wait in
#: SQLite). It changes no outcome: each transaction is still one at a time, as
#: BEGIN IMMEDIATE makes it, and separate transactions still interleave.
_sqlite_queues: dict[str, threading.Lock] = {}
_queues_lock = threading.Lock()

_SCHEMA = """CREATE TABLE IF NOT EXISTS counters (
    name VARCHAR(64) PRIMARY KEY,
    value BIGINT NOT NULL,
    version BIGINT NOT NULL
)"""


@contextlib.contextmanager
def _transaction(engine):
    """``engine.begin()``, queued behind this process's other transactions on the same SQLite file."""
    queue = contextlib.nullcontext()
    if engine.dialect.name == "sqlite":
        with _queues_lock:
            queue = _sqlite_queues.setdefault(str(engine.url), threading.Lock())
    with queue, engine.begin() as tx:
        yield tx


class Counters:
    """The counters in a database, and the four increments; ``work_ms`` sits between read and write."""

    def __init__(self, database: Database, *, owned: bool, work_ms: float):
        self.database, self.engine, self._owned = database, database.engine, owned
        self.work_s = kit.number(work_ms, "work_ms", 0, 1000, unit="milliseconds") / 1000
        self._lock = threading.Lock()   # the "locked" increment's lock: each app (each replica) has its own
        self._stats_lock = threading.Lock()
        self.stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0}
        with _transaction(self.engine) as tx:
            tx.execute(text(_SCHEMA))

    def arrived(self) -> None:
        with self._stats_lock:
            self.stats["requests"] += 1
            self.stats["in_flight"] += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self.stats["in_flight"])

    def left(self) -> None:
        with self._stats_lock:
            self.stats["in_flight"] -= 1

    def counts(self) -> dict:
        with self._stats_lock:
            return dict(self.stats)

    @staticmethod
    def _read(tx, name):
        return tx.execute(text("SELECT value, version FROM counters WHERE name = :name"), {"name": name}).first()

    @staticmethod
    def _write_plus_one(tx, name, row) -> tuple[int, int]:
        """Write back the (value, version) that was read, each plus one; return what was written."""
        value, version = row[0] + 1, row[1] + 1
        tx.execute(text("UPDATE counters SET value = :value, version = :version WHERE name = :name"),
                   {"name": name, "value": value, "version": version})
        return value, version

    def all(self) -> list[dict]:
        with _transaction(self.engine) as tx:
            rows = tx.execute(text("SELECT name, value, version FROM counters ORDER BY name")).all()
        return [{"name": n, "value": v, "version": k} for n, v, k in rows]

    def create(self, name: str) -> bool:
        """False if a counter of that name exists already."""
        try:
            with _transaction(self.engine) as tx:
                tx.execute(text("INSERT INTO counters (name, value, version) VALUES (:name, 0, 0)"), {"name": name})
        except sqlalchemy.exc.IntegrityError:
            return False
        return True

    def get(self, name: str):
        with _transaction(self.engine) as tx:
            return self._read(tx, name)

    def compare_and_set(self, name: str, value: int, version: int):
        """(written, the row now): writes only if nobody wrote since ``version`` was read."""
        with _transaction(self.engine) as tx:
            written = tx.execute(
                text("UPDATE counters SET value = :value, version = version + 1 WHERE name = :name AND version = :version"),
                {"name": name, "value": value, "version": version}).rowcount
            return bool(written), self._read(tx, name)

    def increment(self, name: str, how: str):
        """Add one the way ``how`` says; the (value, version) written, or None if there is no such counter."""
        if how == "atomic":
            with _transaction(self.engine) as tx:  # one statement reads, adds and writes
                tx.execute(text("UPDATE counters SET value = value + 1, version = version + 1 WHERE name = :name"),
                           {"name": name})
                return self._read(tx, name)
        if how == "transaction":
            with _transaction(self.engine) as tx:  # the read and the write in ONE transaction
                row = self._read(tx, name)
                if row is None:
                    return None
                time.sleep(self.work_s)
                return self._write_plus_one(tx, name, row)
        if how == "locked":
            with self._lock:
                return self._read_work_write(name)
        return self._read_work_write(name)

    def _read_work_write(self, name):
        """The unsafe increment: read in one transaction, write what was read plus one in another."""
        with _transaction(self.engine) as tx:
            row = self._read(tx, name)
        if row is None:
            return None
        time.sleep(self.work_s)  # another request can read the same value now
        with _transaction(self.engine) as tx:
            return self._write_plus_one(tx, name, row)

    def close(self) -> None:
        if self._owned:
            self.database.close()


routes = Blueprint("counter", __name__)


@routes.before_app_request
def arrived():
    if request.path != "/stats":
        kit.state().arrived()


@routes.teardown_app_request
def left(_error=None):
    if request.path != "/stats":
        kit.state().left()


def _counter(name, row, status=200):
    if row is None:
        abort(404, f'no counter {name!r}; create it first with POST /counters and JSON {{"name": {name!r}}}')
    return {"name": name, "value": row[0], "version": row[1]}, status


@routes.get("/counters")
def list_counters():
    return {"counters": kit.state().all()}


@routes.post("/counters")
def create_counter():
    name = kit.name(kit.body('{"name": "hits"}').get("name"), "a counter's name")
    if not kit.state().create(name):
        abort(409, f"a counter {name!r} exists already; GET /counters/{name} reads it")
    return _counter(name, (0, 0), 201)


@routes.get("/counters/<name>")
def get_counter(name):
    return _counter(kit.name(name, "a counter's name"), kit.state().get(name))


@routes.put("/counters/<name>")
def put_counter(name):
    kit.name(name, "a counter's name")
    body = kit.body('{"value": 5, "version": 4}')
    value = kit.whole(body.get("value"), "value", -MAX_VALUE, MAX_VALUE)
    version = kit.whole(body.get("version"), "version (the one you read)", 0, MAX_VALUE)
    written, row = kit.state().compare_and_set(name, value, version)
    if row is not None and not written:
        return jsonify(error=f"version {version} of {name!r} is out of date: it is at version {row[1]} now; "
                             f"read it again and retry with that version",
                       name=name, value=row[0], version=row[1]), 409
    return _counter(name, row)


@routes.post("/counters/<name>/increment/<how>")
def increment(name, how):
    kit.name(name, "a counter's name")
    if how not in HOW:
        abort(404, f"no increment {how!r}; choose one of {', '.join(HOW)}")
    return _counter(name, kit.state().increment(name, how))


@routes.get("/whoami")
def whoami():
    work_ms = request.args.get("work_ms", "0")
    if not (work_ms.isascii() and work_ms.isdigit()) or int(work_ms) > MAX_WORK_MS:
        raise Invalid(f"work_ms must be a whole number of milliseconds from 0 to {MAX_WORK_MS}, not {work_ms!r:.40}")
    time.sleep(int(work_ms) / 1000)
    return {"thread": threading.get_ident()}


@routes.get("/stats")
def get_stats():
    return kit.state().counts()


def create_app(*, name: str = "counter", database: Database | str | None = None, work_ms: float = 10):
    """A counter service on ``database`` (a labkit Database, a SQLAlchemy URL, or None for a new SQLite file).

    ``work_ms`` is the work between the read and the write of the read-then-write increments.
    Several apps given the same Database are replicas of one service sharing its data.
    """
    owned = not isinstance(database, Database)
    db = Database(database) if owned else database
    try:
        app = kit.make_app(name, Counters(db, owned=owned, work_ms=work_ms), routes)
    except Exception:
        if owned:  # a bad option (or an unreachable database): no temporary database left behind
            db.close()
        raise
    if owned:
        atexit.register(db.close)
    return app
