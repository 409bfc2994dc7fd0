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
    PUT  /counters/<name>/value         {"value": V} a blind write (whoever writes last wins), or
                                        {"value": V, "token": T} a fenced write: refused with 409 if a
                                        write with a higher token came first
    POST /leases/<name>                 {"holder": "a", "ttl_ms": 300} -> the lease and its fencing
                                        token (higher at every new grant), or 409 while another holds it
    GET  /leases/<name>                 {"name", "holder", "token", "expires_in_ms"}, or 404 if nobody holds it
    GET  /whoami?work_ms=N&cpu_ms=C     {"thread": id of the thread serving this request}, after N ms
                                        of waiting and C ms of Python computing (holding the GIL)
    GET  /stats                         {"requests": served so far, "in_flight": now, "max_in_flight": peak}

Every write adds one to the counter's ``version``. The work (``work_ms``) sits
between the read and the write: it does not create the race, it only widens the
window in which another request can slip in, so a rare bug becomes a frequent one.

Whether ``transaction`` is safe depends on the database: labkit's SQLite starts every
transaction with ``BEGIN IMMEDIATE`` (one writer at a time, so the read and the write
cannot interleave with another's); PostgreSQL's default READ COMMITTED lets two
transactions read the same value and both write (a lost update), unless the read
says ``SELECT ... FOR UPDATE``. ``atomic`` and the versioned ``PUT`` are correct on both.

The leases are a small lock service (kept in this process's memory): a lease is granted
for ``ttl_ms`` and expires on its own, so a holder that pauses longer than that no longer
holds it, whatever it believes. Each grant carries a fencing token, a number higher than
any granted before; the fenced write keeps the highest token it has seen for each counter
and refuses a lower one, which stops the paused holder's late write (Kleppmann,
*Designing Data-Intensive Applications*, ch. 8). :func:`lease_holder` is a client that takes
a lease, works and writes, as a service of its own to spawn and pause.
"""

from __future__ import annotations

import atexit
import contextlib
import threading
import time

import sqlalchemy
from flask import Blueprint, abort, jsonify, request
from sqlalchemy import text

from .. import tracing
from ..client import Client
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
    version BIGINT NOT NULL,
    fence BIGINT NOT NULL DEFAULT 0
)"""
#: The longest lease a holder may ask for, in milliseconds.
MAX_TTL_MS = 60_000


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
        self._leases: dict[str, tuple[str, int, float]] = {}  # name -> (holder, token, expires at)
        self._last_token = 0
        self._leases_lock = threading.Lock()
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

    def write(self, name: str, value: int, token: int | None):
        """(written, the row now): a blind write if ``token`` is None, else only if no higher token wrote first."""
        with _transaction(self.engine) as tx:
            if token is None:
                written = tx.execute(text("UPDATE counters SET value = :value, version = version + 1 WHERE name = :name"),
                                     {"name": name, "value": value}).rowcount
            else:  # one statement checks the token and writes: no other write can come between
                written = tx.execute(
                    text("UPDATE counters SET value = :value, version = version + 1, fence = :token "
                         "WHERE name = :name AND fence <= :token"),
                    {"name": name, "value": value, "token": token}).rowcount
            row = tx.execute(text("SELECT value, version, fence FROM counters WHERE name = :name"),
                             {"name": name}).first()
        return bool(written), row

    def lease(self, name: str, holder: str, ttl_s: float) -> tuple[bool, str, int, float]:
        """(granted, holder, token, seconds left): a new lease (a new token) if it is free or expired,
        the same lease extended if ``holder`` holds it, else the current holder's."""
        now = time.monotonic()
        with self._leases_lock:
            current = self._leases.get(name)
            if current is not None and current[2] > now and current[0] != holder:
                return False, current[0], current[1], current[2] - now
            if current is not None and current[2] > now:
                token = current[1]  # the holder renews: same lease, same token
            else:
                self._last_token += 1
                token = self._last_token
            self._leases[name] = (holder, token, now + ttl_s)
            return True, holder, token, ttl_s

    def holder(self, name: str) -> tuple[str, int, float] | None:
        """(holder, token, seconds left) of the lease ``name``, or None if nobody holds it now."""
        now = time.monotonic()
        with self._leases_lock:
            current = self._leases.get(name)
        if current is None or current[2] <= now:
            return None
        return current[0], current[1], current[2] - now

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


@routes.put("/counters/<name>/value")
def write_value(name):
    kit.name(name, "a counter's name")
    body = kit.body('{"value": 5} or, fenced, {"value": 5, "token": 3}')
    value = kit.whole(body.get("value"), "value", -MAX_VALUE, MAX_VALUE)
    token = body.get("token")
    if token is not None:
        token = kit.whole(token, "token (the lease's fencing token)", 0, MAX_VALUE)
    written, row = kit.state().write(name, value, token)
    if row is None:
        abort(404, f'no counter {name!r}; create it first with POST /counters and JSON {{"name": {name!r}}}')
    if not written:
        return jsonify(error=f"token {token} is older than token {row[2]}, which wrote {name!r} already: "
                             f"your lease has expired; take the lease again before you write",
                       name=name, value=row[0], version=row[1], token_seen=row[2]), 409
    return {"name": name, "value": row[0], "version": row[1], "token_seen": row[2]}


@routes.post("/leases/<name>")
def take_lease(name):
    kit.name(name, "a lease's name")
    body = kit.body('{"holder": "a", "ttl_ms": 300}')
    holder = kit.name(body.get("holder"), "holder")
    ttl_s = kit.positive(body.get("ttl_ms"), "ttl_ms", MAX_TTL_MS, unit="milliseconds") / 1000
    granted, who, token, left_s = kit.state().lease(name, holder, ttl_s)
    if not granted:
        return jsonify(error=f"the lease {name!r} is held by {who!r} for {left_s * 1000:.0f} ms more; try later",
                       name=name, holder=who, expires_in_ms=round(left_s * 1000)), 409
    return {"name": name, "holder": who, "token": token, "ttl_ms": round(left_s * 1000)}


@routes.get("/leases/<name>")
def read_lease(name):
    kit.name(name, "a lease's name")
    held = kit.state().holder(name)
    if held is None:
        abort(404, f"nobody holds the lease {name!r} now; POST /leases/{name} takes it")
    who, token, left_s = held
    return {"name": name, "holder": who, "token": token, "expires_in_ms": round(left_s * 1000)}


@routes.post("/counters/<name>/increment/<how>")
def increment(name, how):
    kit.name(name, "a counter's name")
    if how not in HOW:
        abort(404, f"no increment {how!r}; choose one of {', '.join(HOW)}")
    return _counter(name, kit.state().increment(name, how))


@routes.get("/whoami")
def whoami():
    work_ms, cpu_ms = (_milliseconds(field) for field in ("work_ms", "cpu_ms"))
    time.sleep(work_ms / 1000)
    deadline = time.thread_time() + cpu_ms / 1000  # this thread's own CPU time: Python code, the GIL held
    while time.thread_time() < deadline:
        pass
    return {"thread": threading.get_ident()}


def _milliseconds(field: str) -> int:
    value = request.args.get(field, "0")
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_WORK_MS:
        raise Invalid(f"{field} must be a whole number of milliseconds from 0 to {MAX_WORK_MS}, not {value!r:.40}")
    return int(value)


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


# -- a lease holder, to run as a process of its own ---------------------------------------------

holder_routes = Blueprint("holder", __name__)


#: How long a job started with ``until_released`` waits for POST /release before it gives up.
RELEASE_TIMEOUT_S = 30


@holder_routes.post("/job")
def job():
    """Take the lease named ``counter``, work ``work_ms``, then write ``value`` to that counter (fenced or not).

    With ``"until_released": true`` the work lasts until POST /release instead (at most 30 s;
    without a release it answers 504 and writes nothing), so that an experiment, not a
    timer, decides when the holder writes.
    """
    settings = kit.state()
    body = kit.body('{"counter": "report", "value": 1, "work_ms": 300, "ttl_ms": 200, "fenced": true}')
    counter = kit.name(body.get("counter"), "counter")
    value = kit.whole(body.get("value"), "value", -MAX_VALUE, MAX_VALUE)
    work_s = kit.number(body.get("work_ms", 0), "work_ms", 0, MAX_WORK_MS, unit="milliseconds") / 1000
    ttl_ms = kit.positive(body.get("ttl_ms", 1000), "ttl_ms", MAX_TTL_MS, unit="milliseconds")
    fenced = kit.flag(body.get("fenced", True), "fenced")
    until_released = kit.flag(body.get("until_released", False), "until_released")
    serving = tracing.current()
    me = serving.node if serving is not None else settings["name"]  # the name it is served (or spawned) under
    released = settings["released"]
    if until_released:
        released.clear()  # a release sent before this job does not count
    with Client(me, timeout=10) as client:
        taken = client.post(f"{settings['lease_url']}/leases/{counter}", json={"holder": me, "ttl_ms": ttl_ms})
        if taken.status_code != 200:
            return jsonify(error="no lease: " + taken.json().get("error", str(taken.status_code))), 409
        token = taken.json()["token"]
        if until_released:  # the work; a pause here (a GC, a SIGSTOP) can outlast the lease
            if not released.wait(RELEASE_TIMEOUT_S):
                return jsonify(error=f"nobody sent POST /release within {RELEASE_TIMEOUT_S} s; nothing written",
                               token=token), 504
            released.clear()
        else:
            time.sleep(work_s)  # the work; a pause here (a GC, a SIGSTOP) can outlast the lease
        write = {"value": value, **({"token": token} if fenced else {})}
        written = client.put(f"{settings['store_url']}/counters/{counter}/value", json=write)
    return {"token": token, "write_status": written.status_code, "write": written.json()}


@holder_routes.post("/release")
def release():
    """End the work of a job started with ``until_released``: it goes on to write."""
    kit.state()["released"].set()
    return {"released": True}


def lease_holder(*, name: str = "holder", lease_url: str, store_url: str | None = None):
    """A client that takes a lease from ``lease_url`` and writes to ``store_url`` (default: the same) on POST /job
    (and, for a job started with ``until_released``, writes when POST /release arrives).

    It holds the lease, and calls, under the name it is served as (a spawned holder: its spawn name).

        >>> labkit.spawn("labkit.apps.counter:lease_holder", name="holder-a", lease_url=locks.url)  # doctest: +SKIP
    """
    settings = {"name": kit.name(name, "name"), "lease_url": kit.url(lease_url, "lease_url"),
                "store_url": kit.url(store_url or lease_url, "store_url"), "released": threading.Event()}
    return kit.make_app(name, settings, holder_routes)
