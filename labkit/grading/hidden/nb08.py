"""Hidden tests for notebook 08 (concurrency): q8.1 add_one, q8.2 increment_with_version.

q8.1: the answer runs inside a real service whose threads call it at once, on SQLite
in its default mode (BEGIN DEFERRED): a transaction takes no lock until it writes, so
two transactions can read the same row at the same time. What happens next is not
PostgreSQL's: SQLite's transactions are serializable, so when both then write, SQLite
refuses one ("database is locked", an error the answer raises), where PostgreSQL's
READ COMMITTED would let the second write overwrite the first (a lost update) and
MySQL's REPEATABLE READ too. Either way a read-then-write answer fails here: with an
error raised, or with updates lost when it reads and writes in separate transactions.
The database is slowed a little after every transaction (a connection going back to
the pool waits 3 ms), which widens the windows, so an unprotected read-then-write
fails in every run, not by luck. Only a single atomic UPDATE passes.

q8.2: the answer is hammered by many threads at once, each with its own client,
against the counter service; one test makes another client win the race on purpose,
twice in a row, so an answer that gives up or retries with a stale version fails
every time; another makes the rival win the first 40 PUTs, so an answer that never
gives up (or gives up without pausing between attempts) fails every time.
"""

import os
import shutil
import tempfile
import threading
import time

import sqlalchemy
from flask import Flask, jsonify
from sqlalchemy import text

from labkit.apps import create
from labkit.db import Database
from labkit.grading.authoring import AnswerRaised, Fail, Question, describe_error, show

# -- q8.1: an increment that cannot lose updates ----------------------------------------------

q81 = Question(
    "q8.1", "add_one", params=("engine", "name"),
    hint=("add one in a single statement inside a transaction: with engine.begin() as tx: "
          "tx.execute(text(\"UPDATE counters SET value = value + 1, version = version + 1 WHERE name = :name\"), "
          "{\"name\": name}), then read the value back in the same transaction and return it"),
)

#: Seconds the database pauses after each transaction (a connection going back to the pool).
SLOW_S = 0.003
_ATOMIC = ("let the database do the read and the write as one: UPDATE counters SET value = value + 1, "
           "version = version + 1 WHERE name = :name, then SELECT the value in the same transaction")
_LOCKED = ("two transactions read the same value, and then both tried to write it: SQLite refused the second "
           "(\"database is locked\"); PostgreSQL would have let it overwrite the first. " + _ATOMIC)


def _database(run):
    """A SQLite file in its default transaction mode, with counters "hits", "a" and "b" at 0."""
    folder = tempfile.mkdtemp(prefix="labkit-check-")
    run.on_close(shutil.rmtree, folder, True)
    database = Database("sqlite:///" + os.path.join(folder, "check.sqlite3"), name="counters·db",
                        begin="deferred", pause_ms=SLOW_S * 1000)  # deferred: reads do not lock out other readers
    run.on_close(database.close)
    engine = database.engine
    with engine.begin() as tx:
        tx.execute(text("CREATE TABLE counters (name VARCHAR(40) PRIMARY KEY, value BIGINT NOT NULL, "
                        "version BIGINT NOT NULL)"))
        for name in ("hits", "a", "b"):
            tx.execute(text("INSERT INTO counters (name, value, version) VALUES (:name, 0, 0)"), {"name": name})
    return engine


def _stored(engine, name: str) -> int:
    with engine.connect() as connection:
        return connection.execute(text("SELECT value FROM counters WHERE name = :name"), {"name": name}).scalar_one()


def _service(run, engine):
    """A service whose POST /counters/<name>/increment calls the answer; it keeps the answer's errors."""
    answer, errors = run.answer, []
    app = Flask("counter-q81")

    @app.post("/counters/<name>/increment")
    def increment(name):
        try:
            value = answer(engine, name)
        except Exception as error:
            errors.append(error)
            return jsonify(error=describe_error(error)), 500
        return jsonify(value=value)

    return run.serve(app, "counter·check"), errors


def _at_once(run, clients: list, count: int, one) -> list:
    """``one(client, index)`` for every index below ``count``, spread over ``clients``, each client in a
    thread of its own, all started together; their values, by index.

    Runs as one call of the check (one time limit for all). The first error raised in any
    thread is raised again, so the verdict names it.
    """
    start = threading.Barrier(len(clients))

    def many():
        values, errors = [None] * count, []

        def worker(number):
            try:
                start.wait(5)
                for index in range(number, count, len(clients)):
                    values[index] = one(clients[number], index)
            except BaseException as error:  # carried to the verdict
                errors.append(error)

        workers = [threading.Thread(target=worker, args=(n,), name="labkit-check-helper", daemon=True)
                   for n in range(len(clients))]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        if errors:
            raise errors[0]
        return values

    return run.call_with(many)


def _post_many(run, url: str, names: list, threads: int):
    """POST url/counters/<name>/increment for each name, from ``threads`` clients at once (one check call)."""

    def post(client, index):
        response = client.post(f"{url}/counters/{names[index]}/increment")
        return response.json().get("value") if response.status_code == 200 else None

    return _at_once(run, [run.client(f"you-{n}", timeout=20) for n in range(1, threads + 1)], len(names), post)


def _judge_service(errors, engine, expected: dict, values: list) -> None:
    if errors:
        error = errors[0]
        hint = _LOCKED if "database is locked" in str(error) else _ATOMIC
        error = getattr(error, "orig", None) or error  # the database's own error, without SQLAlchemy's links
        raise Fail(f"your answer raised {describe_error(error)} when increments ran at once", hint)
    for name, count in expected.items():
        final = _stored(engine, name)
        if final < count:
            raise Fail(f"{count} increments of {name!r} at once left it below {count}: updates were lost", _ATOMIC)
        if final > count:
            raise Fail(f"{count} increments of {name!r} at once left it at {final}, not {count}", _ATOMIC)


@q81.test("one increment", raise_hints={sqlalchemy.exc.OperationalError: _ATOMIC})
def _(run):
    engine = _database(run)
    call = run.call(engine, "hits")
    final = _stored(engine, "hits")
    if final != 1:
        raise Fail(f"after one call the counter is {final}, not 1"
                   + (": nothing was saved; use engine.begin(), which commits at the end of its block,"
                      " not engine.connect()" if final == 0 else ""), _ATOMIC)
    if call.value != 1:
        raise Fail(f"the counter is right (1), but your answer returned {show(call.value)}",
                   "return the new value: SELECT it in the same transaction, after the UPDATE")


@q81.test("120 increments from 8 threads of a service at once")
def _(run):
    engine = _database(run)
    server, errors = _service(run, engine)
    call = _post_many(run, server.url, ["hits"] * 120, threads=8)
    _judge_service(errors, engine, {"hits": 120}, call.value)
    if sorted(v for v in call.value if isinstance(v, int)) != list(range(1, 121)):
        raise Fail("the counter is right, but the values returned were not 1 to 120 once each "
                   "(some came back twice, or not at all)",
                   "return the value your own UPDATE made: SELECT it in the same transaction")


@q81.test("two counters at once: 30 and 20 increments")
def _(run):
    engine = _database(run)
    server, errors = _service(run, engine)
    call = _post_many(run, server.url, ["a", "b", "a", "b", "a"] * 10, threads=8)
    _judge_service(errors, engine, {"a": 30, "b": 20, "hits": 0}, call.value)


# -- q8.2: optimistic concurrency from the client ------------------------------------------------

q82 = Question(
    "q8.2", "increment_with_version", params=("client", "url"),
    hint=("read the counter (GET url), PUT url with JSON {\"value\": value + 1, \"version\": version}, "
          "and on 409 Conflict pause (full jitter), read it again and retry; after 20 PUTs that got 409, "
          "raise RuntimeError"),
    hang_hint=("after a 409 Conflict, read the counter again (GET) for its current version before you retry: "
               "a retry with the old version conflicts forever"),
    time_limit=12,
)

#: PUTs an answer makes before it gives up (every one of them answered 409).
ATTEMPTS = 20
#: The least the pauses before an answer's retries may add up to, in seconds, over ATTEMPTS attempts.
LEAST_PAUSES_S = 0.200
_RETRY = ("a 409 means another client wrote first: pause, read the counter again and retry, in a loop of up to "
          f"{ATTEMPTS} PUTs (not a single second try)")
_BOUNDED = (f"retry in a loop of at most {ATTEMPTS} PUTs: before retry n pause random.uniform(0, min(0.2, 0.005 * 2**n)) "
            f"seconds, and after the {ATTEMPTS}th 409 raise RuntimeError (no PUT more)")
_RETURN = 'return the new value: response.json()["value"] of the PUT that succeeded'
#: Calls from this many threads at once; each thread has its own client (its own connection).
THREADS = 4


def _counter(run):
    """A counter service with the counter "hits" at 0 (not yet served)."""
    app = create("counter", work_ms=0)
    run.on_close(app.extensions["labkit"].database.close)
    app.test_client().post("/counters", json={"name": "hits"})
    return app


def _value(app) -> int:
    return app.test_client().get("/counters/hits").get_json()["value"]


class _RivalWins:
    """WSGI middleware: before the PUTs numbered in ``puts``, another client adds one first.

    The rival's write lands between the answer's read and its write, exactly the race
    optimistic concurrency exists for, so the answer's PUT gets a 409 every time.
    """

    def __init__(self, app, puts):
        self.app, self.puts, self.seen = app, set(puts), 0
        self.requests: list[tuple[str, float, float]] = []  # (method, arrived, answered), perf_counter seconds
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        arrived = time.perf_counter()
        method = environ.get("REQUEST_METHOD")
        if method == "PUT":
            with self._lock:
                self.seen += 1
                rival = self.seen in self.puts
            if rival:
                with self.app.extensions["labkit"].engine.begin() as tx:
                    tx.execute(text("UPDATE counters SET value = value + 1, version = version + 1 WHERE name = 'hits'"))
        answer = self.app(environ, start_response)
        with self._lock:
            self.requests.append((method, arrived, time.perf_counter()))
        return answer

    def pauses(self) -> list[float]:
        """Seconds from each PUT's answer to the next request: the pause before a retry."""
        with self._lock:
            seen = sorted(self.requests, key=lambda r: r[1])
        return [later[1] - put[2] for put, later in zip(seen, seen[1:]) if put[0] == "PUT"]


def _hammer(run, url: str, times: int, threads: int = THREADS):
    """Call the answer ``times`` times from ``threads`` clients at once; return the values it returned."""
    answer = run.answer
    return _at_once(run, [run.client(f"you-{n}") for n in range(1, threads + 1)], times,
                    lambda client, _: answer(client, url))


def _judge(app, values, times: int) -> None:
    final = _value(app)
    if final < times:
        raise Fail(f"{times} increments at once left the counter below {times}: updates were lost", _RETRY)
    if final > times:
        raise Fail(f"{times} increments at once left the counter at {final}, not {times}", _RETRY)
    if sorted(v for v in values if isinstance(v, int)) != list(range(1, times + 1)):
        raise Fail(f"the counter is right, but the values returned were not 1 to {times} once each "
                   f"(some came back twice, or not at all)", _RETURN)


@q82.test("one increment while another client wins the race twice")
def _(run):
    app = _counter(run)
    wins = _RivalWins(app, puts=(1, 2))
    server = run.serve(wins, "counter·rival")
    call = run.call(run.client(), server.url + "/counters/hits")
    final, rivals = _value(app), min(wins.seen, 2)
    if final != rivals + 1:
        if wins.seen == 0:
            raise Fail(f"your answer made no PUT; the counter is {final}, expected 1", _RETRY)
        what = ("your PUT got 409 Conflict (another client wrote first) and your answer did not try again"
                if wins.seen == 1 else
                "your first two PUTs got 409 Conflict (another client wrote first, twice)")
        lost = "your increment was lost" if final == rivals else f"the counter is {final}"
        raise Fail(f"{what}; {lost}: expected {rivals + 1} (the rival's {rivals} and yours)", _RETRY)
    if call.value != final:
        raise Fail(f"the counter is right ({final}), but your answer returned {show(call.value)}", _RETURN)


@q82.test(f"another client writes first 40 times: give up after {ATTEMPTS} PUTs")
def _(run):
    app = _counter(run)
    wins = _RivalWins(app, puts=range(1, 41))
    server = run.serve(wins, "counter·rival")
    try:
        call = run.call(run.client(), server.url + "/counters/hits")
    except AnswerRaised as raised:
        error = raised.error
    else:
        raise Fail(f"another client wrote first {min(wins.seen, 40)} times, and your answer kept trying: "
                   f"{wins.seen} PUTs, then it returned {show(call.value)}; it must give up after {ATTEMPTS}",
                   _BOUNDED)
    if wins.seen != ATTEMPTS:
        raise Fail(f"your answer gave up after {wins.seen} PUT{'s' if wins.seen != 1 else ''}, not {ATTEMPTS}", _BOUNDED)
    if not isinstance(error, RuntimeError):
        raise Fail(f"your answer gave up after {ATTEMPTS} PUTs, but raised {describe_error(error)}, "
                   f"not a RuntimeError", _BOUNDED)
    paused = sum(wins.pauses())
    if paused < LEAST_PAUSES_S:
        raise Fail(f"your answer retried almost at once: its pauses before the {ATTEMPTS - 1} retries add up to "
                   f"{paused * 1000:.0f} ms, under {LEAST_PAUSES_S * 1000:.0f} ms", _BOUNDED)


@q82.test("60 increments from 4 threads at once")
def _(run):
    app = _counter(run)
    server = run.serve(app, "counter·check")
    call = _hammer(run, server.url + "/counters/hits", 60)
    _judge(app, call.value, 60)


@q82.test("20 increments from 4 threads through a link with 5 ms latency", seeds=(1, 2))
def _(run):
    app = _counter(run)
    server = run.serve(app, "counter·check")
    link = run.link(server, latency_ms=5, jitter_ms=3)
    call = _hammer(run, link.url + "/counters/hits", 20)
    _judge(app, call.value, 20)
    peak = app.test_client().get("/stats").get_json()["max_in_flight"]
    if peak < 2:
        raise Fail("the counter is right, but no two of your calls were ever at the server at the same time: "
                   "a lock held across the network serialises every client of this process "
                   "(and does nothing for clients in other processes)",
                   "do not hold a lock across the network; the version and the 409 already protect the counter")
