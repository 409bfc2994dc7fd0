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
    GET  /whoami?ms=N                   {"thread": id of the thread serving this request}, after N ms
    GET  /stats                         {"requests": served so far, "in_flight": now, "max_in_flight": peak}

Every write adds one to the counter's ``version``. The pause (``pause_ms``) sits
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
import re
import threading
import time

import sqlalchemy
from flask import Flask, jsonify, request
from sqlalchemy import text

from ..db import Database
from ._errors import json_errors

HOW = ("unsafe", "locked", "transaction", "atomic")
#: The largest absolute value a counter may be set to (fits every database's BIGINT).
MAX_VALUE = 10**15
MAX_WHOAMI_MS = 2000
_NAME = re.compile(r"[A-Za-z0-9_-]{1,40}")
_NAME_RULE = "a counter's name is 1 to 40 letters, digits, '-' or '_'"

#: SQLite lets one transaction write at a time, and a writer that finds the file busy
#: sleeps (1, 2, 5, ... up to 100 ms) before it tries again, so under load most time
#: goes to sleeping. The threads of this process queue here instead, one queue per
#: database file (replicas in this process share it; other processes still wait in
#: SQLite). It changes no outcome: each transaction is still one at a time, as
#: BEGIN IMMEDIATE makes it, and separate transactions still interleave.
_sqlite_queues: dict[str, threading.Lock] = {}
_queues_lock = threading.Lock()

_SCHEMA = """CREATE TABLE IF NOT EXISTS counters (
    name VARCHAR(40) PRIMARY KEY,
    value BIGINT NOT NULL,
    version BIGINT NOT NULL
)"""


def create_app(database: Database | str | None = None, *, pause_ms: float = 10) -> Flask:
    """A counter service on ``database`` (a labkit Database, a SQLAlchemy URL, or None for a new SQLite file).

    ``pause_ms`` is the pause between the read and the write of the read-then-write increments.
    Several apps given the same database are replicas of one service sharing its data.
    ``app.config["database"]`` is the Database; close it when the app is done with it
    (an app that made its own database closes it at interpreter exit too).
    """
    if not isinstance(pause_ms, (int, float)) or isinstance(pause_ms, bool) or not 0 <= pause_ms <= 1000:
        raise ValueError(f"pause_ms is the pause between read and write, 0 to 1000 ms, not {pause_ms!r}")
    db = database if isinstance(database, Database) else Database(database)
    if db is not database:
        atexit.register(db.close)
    engine = db.engine
    with _transaction(engine) as tx:
        tx.execute(text(_SCHEMA))
    pause = pause_ms / 1000

    app = json_errors(Flask("counter"))
    app.config["database"] = db
    app.config["pause_ms"] = pause_ms
    lock = threading.Lock()  # the "locked" increment's lock: each app (each replica) has its own
    stats_lock = threading.Lock()
    stats = {"requests": 0, "in_flight": 0, "max_in_flight": 0}

    @app.before_request
    def arrived():
        if request.path != "/stats":
            with stats_lock:
                stats["requests"] += 1
                stats["in_flight"] += 1
                stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])

    @app.teardown_request
    def left(_error=None):
        if request.path != "/stats":
            with stats_lock:
                stats["in_flight"] -= 1

    def read(tx, name):
        return tx.execute(text("SELECT value, version FROM counters WHERE name = :name"), {"name": name}).first()

    def as_json(name, row, status=200):
        return jsonify(name=name, value=row[0], version=row[1]), status

    def unknown(name):
        return jsonify(error=f"no counter {name!r}; create it first with POST /counters and JSON {{\"name\": {name!r}}}"), 404

    def bad_name(name):
        if isinstance(name, str) and _NAME.fullmatch(name):
            return None
        return jsonify(error=f"{_NAME_RULE}, not {name!r}"), 400

    @app.get("/counters")
    def list_counters():
        with _transaction(engine) as tx:
            rows = tx.execute(text("SELECT name, value, version FROM counters ORDER BY name")).all()
        return jsonify(counters=[{"name": n, "value": v, "version": k} for n, v, k in rows])

    @app.post("/counters")
    def create_counter():
        body = request.get_json(silent=True)
        name = body.get("name") if isinstance(body, dict) else None
        if name is None:
            return jsonify(error='send JSON {"name": "hits"} to create the counter "hits"'), 400
        if (problem := bad_name(name)) is not None:
            return problem
        try:
            with _transaction(engine) as tx:
                tx.execute(text("INSERT INTO counters (name, value, version) VALUES (:name, 0, 0)"), {"name": name})
        except sqlalchemy.exc.IntegrityError:
            return jsonify(error=f"a counter {name!r} exists already; GET /counters/{name} reads it"), 409
        return as_json(name, (0, 0), 201)

    @app.get("/counters/<name>")
    def get_counter(name):
        if (problem := bad_name(name)) is not None:
            return problem
        with _transaction(engine) as tx:
            row = read(tx, name)
        return unknown(name) if row is None else as_json(name, row)

    @app.put("/counters/<name>")
    def put_counter(name):
        if (problem := bad_name(name)) is not None:
            return problem
        body = request.get_json(silent=True)
        value = body.get("value") if isinstance(body, dict) else None
        version = body.get("version") if isinstance(body, dict) else None
        if not _is_int(value) or not _is_int(version) or abs(value) > MAX_VALUE or not 0 <= version <= MAX_VALUE:
            return jsonify(error=f'send JSON {{"value": V, "version": K}} with integers (|V| <= {MAX_VALUE}, '
                                 f'0 <= K <= {MAX_VALUE}, the version you read); got {_short(body)}'), 400
        with _transaction(engine) as tx:
            # Compare-and-set in one statement: it writes only if nobody wrote since version K was read.
            written = tx.execute(
                text("UPDATE counters SET value = :value, version = version + 1 WHERE name = :name AND version = :version"),
                {"name": name, "value": value, "version": version}).rowcount
            row = read(tx, name)
        if row is None:
            return unknown(name)
        if written == 0:
            return jsonify(error=f"version {version} of {name!r} is out of date: it is at version {row[1]} now; "
                                 f"read it again and retry with that version",
                           name=name, value=row[0], version=row[1]), 409
        return as_json(name, row)

    @app.post("/counters/<name>/increment/<how>")
    def increment(name, how):
        if (problem := bad_name(name)) is not None:
            return problem
        if how not in HOW:
            return jsonify(error=f"no increment {how!r}; choose one of {', '.join(HOW)}"), 404
        if how == "atomic":
            with _transaction(engine) as tx:  # one statement reads, adds and writes
                tx.execute(text("UPDATE counters SET value = value + 1, version = version + 1 WHERE name = :name"),
                           {"name": name})
                row = read(tx, name)
        elif how == "transaction":
            with _transaction(engine) as tx:  # the read and the write in ONE transaction
                row = read(tx, name)
                if row is not None:
                    time.sleep(pause)
                    row = _write_plus_one(tx, name, row)
        elif how == "locked":
            with lock:
                row = _read_pause_write(engine, name, pause, read)
        else:
            row = _read_pause_write(engine, name, pause, read)
        if row is None:
            return unknown(name)
        return as_json(name, row)

    @app.get("/whoami")
    def whoami():
        ms = request.args.get("ms", "0")
        if not (ms.isascii() and ms.isdigit()) or int(ms) > MAX_WHOAMI_MS:
            return jsonify(error=f"ms must be a whole number of milliseconds from 0 to {MAX_WHOAMI_MS}, not {ms!r}"), 400
        time.sleep(int(ms) / 1000)
        return jsonify(thread=threading.get_ident())

    @app.get("/stats")
    def get_stats():
        with stats_lock:
            return jsonify(stats)

    return app


@contextlib.contextmanager
def _transaction(engine):
    """``engine.begin()``, queued behind this process's other transactions on the same SQLite file."""
    queue = contextlib.nullcontext()
    if engine.dialect.name == "sqlite":
        with _queues_lock:
            queue = _sqlite_queues.setdefault(str(engine.url), threading.Lock())
    with queue, engine.begin() as tx:
        yield tx


def _read_pause_write(engine, name, pause, read):
    """The unsafe increment: read in one transaction, write what was read plus one in another."""
    with _transaction(engine) as tx:
        row = read(tx, name)
    if row is None:
        return None
    time.sleep(pause)  # another request can read the same value now
    with _transaction(engine) as tx:
        return _write_plus_one(tx, name, row)


def _write_plus_one(tx, name, row) -> tuple[int, int]:
    """Write back the (value, version) that was read, each plus one; return what was written."""
    value, version = row[0] + 1, row[1] + 1
    tx.execute(text("UPDATE counters SET value = :value, version = :version WHERE name = :name"),
               {"name": name, "value": value, "version": version})
    return value, version


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value, limit: int = 60) -> str:
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."
