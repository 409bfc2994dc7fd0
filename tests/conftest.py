"""Shared fixtures: real servers, links and clients that are always torn down.

Everything here is real: Flask apps served by ``labkit.serve`` on 127.0.0.1 at a
port the system picks, ``labkit.Link`` proxies, ``labkit.Client`` sessions. No
mocks. As in werkzeug's and httpx's test suites, one test can start as many of
them as it likes through a factory built on a ``contextlib.ExitStack``, and
each one is stopped or closed when the test ends, pass or fail, last first.

Fixtures
--------

``trace``
    A fresh ``labkit.Trace()`` for this test only, so tests never see each
    other's events (the module-level ``labkit.trace`` is shared by everything).

``lab``
    The factory (a :class:`Lab`). Everything it makes records to ``lab.trace``
    (the same object as the ``trace`` fixture)::

        def test_something(lab):
            hello = lab.serve(lab.app("hello"))        # a running labkit.Server
            link = lab.link(hello, latency_ms=50)      # a labkit.Link in front of it
            alice = lab.client("alice", timeout=2)     # a labkit.Client
            net = lab.network(seed=1)                  # a labkit.Network
            assert alice.get(link.url + "/").text == "ok"
            assert [e.kind for e in lab.trace.filter(node="alice")][:1] == ["send"]

    ``lab.app(name)`` builds a small Flask app for tests (routes listed in
    :func:`make_app`); ``lab.serve(app, name=None, **kw)``, ``lab.link(target,
    **settings)``, ``lab.client(name, **kw)`` and ``lab.network(**kw)`` pass
    their arguments on to labkit and default ``trace=`` to ``lab.trace``;
    ``lab.enter(cm)`` and ``lab.callback(fn, *args)`` register anything else for
    teardown. ``lab.closed_port()`` is a 127.0.0.1 port nothing listens on.

``make_app``
    The app builder itself, for tests that want an app without serving it.

``database_url``
    A SQLAlchemy URL of a new, empty database, once per backend: a SQLite file in
    the test's temporary folder, and a PostgreSQL database created for the test
    and dropped after it. PostgreSQL runs where ``LABKIT_TEST_POSTGRES_URL`` names
    a server (``.ci/run`` starts one on 127.0.0.1); elsewhere that half is skipped.

The suite runs on several workers: see the conftest.py at the repo's root.

Keep every network call bounded: pass a short ``timeout`` to clients (there is
no pytest-timeout here), and talk only to 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

import pytest
from flask import Flask, jsonify, request

import labkit


def make_app(name: str = "svc") -> Flask:
    """A small Flask app named ``name`` for tests.

    ``GET /``               "ok"
    ``GET /headers``        the request's traceparent and Labkit-Caller headers, as JSON
    ``GET /sleep?s=0.2``    sleeps that many seconds, then "slept"
    ``GET /boom``           raises RuntimeError (Flask answers 500)
    ``GET /hits``           how many requests this app has answered before this one
    ``POST /echo``          the request body back

    ``app.config["arrivals"]`` is a list of (path, time.perf_counter()) per request
    received, so a test can tell when a request reached the server.
    """
    app = Flask(name)
    arrivals: list[tuple[str, float]] = []
    lock = threading.Lock()
    app.config["arrivals"] = arrivals

    @app.before_request
    def note_arrival():
        with lock:
            arrivals.append((request.path, time.perf_counter()))

    @app.get("/")
    def index():
        return "ok"

    @app.get("/headers")
    def headers():
        return jsonify(traceparent=request.headers.get("traceparent"),
                       caller=request.headers.get("Labkit-Caller"))

    @app.get("/sleep")
    def sleep():
        time.sleep(float(request.args.get("s", "0.2")))
        return "slept"

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom: this view fails on purpose")

    @app.get("/hits")
    def hits():
        with lock:
            return jsonify(hits=len(arrivals) - 1)

    @app.post("/echo")
    def echo():
        return request.get_data()

    return app


class Lab:
    """Starts servers, links, clients and networks, and tears every one down."""

    def __init__(self, stack: contextlib.ExitStack, trace: labkit.Trace):
        self._stack = stack
        self.trace = trace

    def app(self, name: str = "svc") -> Flask:
        return make_app(name)

    def serve(self, app, name: str | None = None, **kwargs) -> labkit.Server:
        kwargs.setdefault("trace", self.trace)
        return self._stack.enter_context(labkit.serve(app, name=name, **kwargs))

    def link(self, target, **kwargs) -> labkit.Link:
        kwargs.setdefault("trace", self.trace)
        return self._stack.enter_context(labkit.Link(target, **kwargs))

    def client(self, name: str = "client", **kwargs) -> labkit.Client:
        kwargs.setdefault("trace", self.trace)
        return self._stack.enter_context(labkit.Client(name, **kwargs))

    def network(self, **kwargs) -> labkit.Network:
        kwargs.setdefault("trace", self.trace)
        return self._stack.enter_context(labkit.Network(**kwargs))

    def enter(self, context_manager):
        return self._stack.enter_context(context_manager)

    def callback(self, fn, *args, **kwargs):
        return self._stack.callback(fn, *args, **kwargs)

    @staticmethod
    def closed_port() -> int:
        """A port on 127.0.0.1 that nothing listens on (it was free a moment ago)."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]


@pytest.fixture
def trace() -> labkit.Trace:
    return labkit.Trace()


@pytest.fixture
def lab(trace):
    with contextlib.ExitStack() as stack:
        yield Lab(stack, trace)


@pytest.fixture(name="make_app")
def make_app_fixture():
    return make_app


#: A PostgreSQL server the tests may create databases on (``.ci/run`` sets it).
POSTGRES_ENV = "LABKIT_TEST_POSTGRES_URL"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.sqlite3'}"
        return
    server = os.environ.get(POSTGRES_ENV)
    if not server:
        pytest.skip(f"no PostgreSQL server: set {POSTGRES_ENV} to a URL such as "
                    f"postgresql+psycopg://labkit:labkit@127.0.0.1:5432/postgres (.ci/run does)")
    import labkit.db

    with labkit.db.scratch(server, prefix="labkit_test") as url:
        yield url
