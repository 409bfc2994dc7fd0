"""A key-value store for notebook 09: the one small application every style is built from.

    GET  /kv/<key>      {"key", "value"}, or 404 if the key was never written
    PUT  /kv/<key>      {"value": any JSON} -> {"key", "value"}
    GET  /stats         {"reads", "writes", "serves"}: what this copy has answered

The values live in this process's memory (``database=None``: a crash loses them all), or
in one table of a database that several copies share (``database`` a SQLAlchemy URL,
such as ``"sqlite:////tmp/kv.sqlite3"``: a crash loses nothing committed). ``serves`` says
which feature this copy offers: "both", "reads" (a PUT is refused with 405) or
"writes" (a GET is refused with 405), so one program can be deployed as a reading
service and a writing service on one database, notebook 04's style in miniature.

The peer-to-peer version of this store is :mod:`labkit.apps.peer` (the same ``/kv``
routes, one replica per peer); the broker version is this service behind
:mod:`labkit.apps.broker`'s relay.
"""

from __future__ import annotations

import json
import threading

import sqlalchemy
from flask import Blueprint, abort
from sqlalchemy import Column, MetaData, String, Table, Text, insert, select, update

from ..db import Database
from ..errors import Invalid
from . import kit

MAX_KEY = 100
#: What a copy may serve (the ``serves`` option).
FEATURES = ("both", "reads", "writes")

_schema = MetaData()
#: The shared table: one row per key, the value as JSON text.
values = Table("kv_values", _schema, Column("key", String(MAX_KEY), primary_key=True), Column("value", Text))


class Store:
    """The values, in memory or in a database, and how many reads and writes this copy answered."""

    def __init__(self, database: str | None = None, serves: str = "both"):
        if serves not in FEATURES:
            raise Invalid(f"serves must be one of {', '.join(FEATURES)}, not {kit.short(serves)}")
        self.serves = serves
        self.database = None if database is None else Database(kit.text(database, "database", limit=300))
        if self.database is not None:
            _schema.create_all(self.database.engine)
        self.memory: dict[str, object] = {}
        self.counts = {"reads": 0, "writes": 0}
        self._lock = threading.Lock()

    def read(self, key: str):
        """The value of ``key``; KeyError if it was never written."""
        self._count("reads")
        if self.database is None:
            with self._lock:
                return self.memory[key]
        with self.database.engine.connect().execution_options(labkit_begin="deferred") as c:
            text = c.execute(select(values.c.value).where(values.c.key == key)).scalar()
            c.rollback()
        if text is None:
            raise KeyError(key)
        return json.loads(text)

    def write(self, key: str, value) -> None:
        self._count("writes")
        if self.database is None:
            with self._lock:
                self.memory[key] = value
            return
        text = json.dumps(value)
        with self.database.engine.begin() as tx:  # one writer at a time on SQLite (BEGIN IMMEDIATE)
            if not tx.execute(update(values).where(values.c.key == key).values(value=text)).rowcount:
                tx.execute(insert(values).values(key=key, value=text))

    def _count(self, what: str) -> None:
        with self._lock:
            self.counts[what] += 1

    def close(self) -> None:
        if self.database is not None:
            self.database.close()


routes = Blueprint("kv", __name__)


def _offers(feature: str) -> None:
    serves = kit.state().serves
    if serves not in ("both", feature):
        # 405's first argument is the list of allowed methods: the sentence goes by name
        abort(405, description=f"this copy serves {serves} only; send {feature} to the copy that serves them")


@routes.get("/kv/<key>")
def read(key):
    _offers("reads")
    try:
        return {"key": key, "value": kit.state().read(key)}
    except KeyError:
        abort(404, f"no key {key!r:.100}: write it first with PUT /kv/{key:.100}")


@routes.put("/kv/<key>")
def write(key):
    _offers("writes")
    kit.text(key, "the key", limit=MAX_KEY)
    body = kit.body('{"value": "any JSON value"}')
    if "value" not in body:
        raise Invalid('send JSON {"value": ...} (any JSON value)')
    kit.state().write(key, body["value"])
    return {"key": key, "value": body["value"]}


@routes.get("/stats")
def stats():
    state = kit.state()
    with state._lock:
        return {**state.counts, "serves": state.serves}


def _unavailable(error):
    return {"error": "the database cannot be reached; try again"}, 503


def create_app(*, name: str = "kv", database: str | None = None, serves: str = "both"):
    """A key-value store called ``name``: in memory, or in ``database`` (a URL) shared with other copies."""
    app = kit.make_app(name, Store(database, serves), routes)
    app.register_error_handler(sqlalchemy.exc.OperationalError, _unavailable)
    return app
