"""labkit.db: transactions a service runs are in the trace, on SQLite and PostgreSQL.

Real Flask services on real sockets write to a real database; the test reads the
trace they left. The lock wait is a real SQLite write lock held by another request.
"""

from __future__ import annotations

import threading
import time

import pytest
from flask import Flask, jsonify, request
from sqlalchemy import text

import labkit
from labkit.db import Database


def ledger_app(db: Database) -> Flask:
    """``POST /add?hold_s=`` inserts a row (holding the transaction open that long),
    ``GET /count`` reads, ``POST /fail`` inserts and then raises, so the transaction rolls back."""
    app = Flask("ledger")

    @app.post("/add")
    def add():
        with db.engine.begin() as c:
            c.execute(text("INSERT INTO ledger (note) VALUES ('x')"))
            time.sleep(float(request.args.get("hold_s", 0)))
        return jsonify(added=True)

    @app.get("/count")
    def count():
        with db.engine.connect() as c:
            n = c.execute(text("SELECT count(*) FROM ledger")).scalar_one()
            c.rollback()
        return jsonify(count=n)

    @app.post("/fail")
    def fail():
        try:
            with db.engine.begin() as c:
                c.execute(text("INSERT INTO ledger (note) VALUES ('y')"))
                raise RuntimeError("the work failed after writing")
        except RuntimeError:
            return jsonify(rolled_back=True), 500

    return app


@pytest.fixture
def ledger(lab, database_url):
    db = lab.enter(Database(database_url, name="ledger-db"))
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE ledger (note TEXT)"))
    lab.trace.clear()  # the setup above ran outside any request: it is not in the trace anyway
    return db, lab.serve(ledger_app(db), name="ledger")


def transactions(trace, node="ledger"):
    return [(e.kind, e.src, e.dst, e.detail) for e in trace if e.kind in ("begin", "commit", "rollback")
            and e.src == node]


def test_a_served_write_is_a_begin_and_a_commit_from_the_service_to_the_database(lab, ledger):
    db, server = ledger
    alice = lab.client("alice", timeout=5)
    assert alice.post(server.url + "/add").status_code == 200
    assert [(k, s, d) for k, s, d, _ in transactions(lab.trace)] == [
        ("begin", "ledger", "ledger-db"), ("commit", "ledger", "ledger-db")]
    commit = [e for e in lab.trace if e.kind == "commit"][0]
    request_ = [e for e in lab.trace if e.kind == "receive"][0]
    assert commit.trace_id == request_.trace_id and commit.trace_id  # the same request's trace
    assert commit.detail == ""  # it wrote


def test_a_read_is_marked_read_only_and_a_failure_is_a_rollback(lab, ledger):
    db, server = ledger
    alice = lab.client("alice", timeout=5)
    assert alice.get(server.url + "/count").json() == {"count": 0}
    assert transactions(lab.trace)[-1] == ("rollback", "ledger", "ledger-db", "read only")
    lab.trace.clear()
    assert alice.post(server.url + "/fail").status_code == 500
    assert transactions(lab.trace)[-1] == ("rollback", "ledger", "ledger-db", "")  # wrote, then undone
    assert alice.get(server.url + "/count").json() == {"count": 0}


def test_transactions_outside_a_served_request_are_not_recorded(lab, ledger):
    db, _ = ledger
    with db.engine.begin() as c:
        c.execute(text("INSERT INTO ledger (note) VALUES ('z')"))
    assert transactions(lab.trace, node=None) == [] and not [e for e in lab.trace if e.kind == "commit"]


def hold_the_write_lock(lab, server, hold_s: float) -> threading.Thread:
    """A client's POST /add that holds its transaction ``hold_s`` seconds, started and inside its
    transaction (its "begin" is in the trace) when this returns; join the thread afterwards."""
    holder = lab.client("holder", timeout=5)
    first = threading.Thread(target=holder.post, args=(server.url + f"/add?hold_s={hold_s}",))
    first.start()
    deadline = time.monotonic() + 5
    while not [e for e in lab.trace if e.kind == "begin"] and time.monotonic() < deadline:
        time.sleep(0.005)
    return first


def test_a_transaction_that_waits_for_sqlites_write_lock_says_how_long(lab, ledger):
    db, server = ledger
    if db.engine.dialect.name != "sqlite":
        pytest.skip("PostgreSQL does not take a lock at BEGIN: there is no wait to measure there")
    waiter = lab.client("waiter", timeout=5)
    first = hold_the_write_lock(lab, server, 0.4)
    waiter.post(server.url + "/add")
    first.join(5)
    waits = [e.detail for e in lab.trace if e.kind == "begin" and e.detail]
    assert len(waits) == 1 and waits[0].startswith("waited ") and waits[0].endswith(" ms for the lock")
    assert int(waits[0].split()[1]) >= 200  # the holder kept it 400 ms after the waiter asked


def test_the_sequence_diagram_draws_the_database_lane_and_the_written_transactions(lab, ledger):
    db, server = ledger
    alice = lab.client("alice", timeout=5)
    alice.post(server.url + "/add")
    alice.get(server.url + "/count")
    fig = labkit.sequence(lab.trace)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["alice", "ledger", "ledger-db"]
    spans = [a for a in fig.axes[0].get_children() if a.get_gid() == "transactions"][0]
    assert len(spans.get_segments()) == 1  # the write; the read-only transaction is not drawn by default
    every = [a for a in labkit.sequence(lab.trace, transactions="all").axes[0].get_children()
             if a.get_gid() == "transactions"][0]
    assert len(every.get_segments()) == 2
    none = [a for a in labkit.sequence(lab.trace, transactions="none").axes[0].get_children()
            if a.get_gid() == "transactions"][0]
    assert len(none.get_segments()) == 0
    with pytest.raises(ValueError, match="writes"):
        labkit.sequence(lab.trace, transactions="some")


def test_a_read_written_as_a_cte_is_read_only_and_a_cte_that_writes_is_not(lab, ledger):
    db, _ = ledger
    app = Flask("ctes")

    @app.get("/read")
    def read():
        with db.engine.connect() as c:
            c.execute(text("WITH notes AS (SELECT note FROM ledger) SELECT count(*) FROM notes")).scalar_one()
            c.rollback()
        return "ok"

    @app.post("/write")
    def write():
        with db.engine.begin() as c:
            c.execute(text("WITH new AS (SELECT 'w' AS note) INSERT INTO ledger (note) SELECT note FROM new"))
        return "ok"

    server = lab.serve(app, name="ctes")
    alice = lab.client("alice", timeout=5)
    alice.get(server.url + "/read")
    alice.post(server.url + "/write")
    assert [(k, d) for k, _, _, d in transactions(lab.trace, node="ctes")] == [
        ("begin", ""), ("rollback", "read only"), ("begin", ""), ("commit", "")]


def test_a_transaction_that_gives_up_waiting_for_the_lock_says_so(lab, tmp_path):
    db = lab.enter(Database(f"sqlite:///{tmp_path / 'busy.db'}", busy_timeout_ms=150))
    with db.engine.begin() as c:
        c.execute(text("CREATE TABLE ledger (note TEXT)"))
    server = lab.serve(ledger_app(db), name="ledger")
    waiter = lab.client("waiter", timeout=5)
    first = hold_the_write_lock(lab, server, 0.6)
    assert waiter.post(server.url + "/add").status_code == 500  # "database is locked"
    first.join(5)
    [gave_up] = [e.detail for e in lab.trace if e.kind == "begin" and e.detail.startswith("gave up")]
    assert gave_up.endswith(" ms waiting for the lock") and int(gave_up.split()[3]) >= 100
