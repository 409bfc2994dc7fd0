"""Run a WSGI app (a Flask app) in a background thread: the one server runner of labkit.

    >>> from flask import Flask
    >>> app = Flask("hello")
    >>> with serve(app, name="hello") as hello:
    ...     hello.url.startswith("http://127.0.0.1:")
    True

By default it listens on 127.0.0.1 at a port the system picks. Requests are served
concurrently (a thread each) on HTTP/1.1 connections kept alive, nothing is printed
(requests go to the trace, errors to the ``labkit`` logger), an app's state is closed
when its server stops, and every server still running is stopped at interpreter exit.
``python -m labkit serve`` runs a service on this same runner in a process of its own.
"""

from __future__ import annotations

import atexit
import inspect
import io
import logging
import os
import selectors
import socket
import threading
import time

from werkzeug.serving import DechunkedInput, ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wsgi import LimitedStream

from . import net as _net
from . import processes
from . import tracing
from .errors import ServerError

log = logging.getLogger("labkit")

_registry: dict[str, "Server"] = {}
_registry_lock = threading.Lock()


class _LogStream(io.TextIOBase):
    """A ``wsgi.errors`` stream that writes to the labkit logger, never to a cell."""

    def write(self, text: str) -> int:
        if text.strip():
            log.error(text.rstrip())
        return len(text)


class _Unread(io.RawIOBase):
    """The handler's ``rfile``; reads nothing while ``guard`` is set.

    After each response werkzeug discards whatever else is on the socket, which is
    right only because werkzeug closes every connection. On a kept-alive
    connection that would swallow the caller's next request, so the stream is
    guarded while a request runs; the app reads its body from ``wsgi.input``.
    """

    def __init__(self, rfile):
        self.raw_file, self.guard = rfile, False

    def read(self, size=-1):
        return b"" if self.guard else self.raw_file.read(size)

    def readinto(self, b):
        return 0 if self.guard else self.raw_file.readinto(b)

    def readline(self, size=-1):
        return self.raw_file.readline(size)

    def readable(self):
        return True


class _QuietHandler(WSGIRequestHandler):
    """werkzeug's handler, quiet, and keeping HTTP/1.1 connections alive.

    werkzeug's development server closes every connection after one request;
    a client that calls the same service again would pay a new TCP handshake
    (and a new server thread) each time, which is neither what real HTTP/1.1
    services do nor what a lesson about latency should measure.
    """

    timeout = 60  # seconds an idle kept-alive connection waits for its next request
    wbufsize = io.DEFAULT_BUFFER_SIZE  # headers and body leave together, at werkzeug's flush

    def setup(self):
        super().setup()
        # Small writes on a kept-alive connection must not wait for delayed ACKs (Nagle).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = _Unread(self.rfile)

    def make_environ(self):
        environ = super().make_environ()
        environ["wsgi.errors"] = _LogStream()
        body = self.rfile.raw_file
        if environ.get("wsgi.input_terminated"):  # a chunked body: close after it
            self.close_connection = True
            environ["wsgi.input"] = DechunkedInput(body)
        else:
            length = environ.get("CONTENT_LENGTH", "")
            environ["wsgi.input"] = self._body = LimitedStream(body, int(length) if length.isdigit() else 0)
        self.rfile.guard = not self.close_connection
        return environ

    def run_wsgi(self):
        self._body = None
        if self.server.begin(self.connection):  # the server is stopping: this is the last request here
            self.close_connection = True
        try:
            super().run_wsgi()
            if self._body is not None and not self.close_connection:
                self._body.exhaust()  # what the app left unread, so the next request starts clean
        finally:
            self.rfile.guard = False
            if self.server.end(self.connection):
                self.close_connection = True

    def send_header(self, keyword, value):
        # Keep the connection open unless the caller asked to close it or its body had no length.
        if keyword.lower() == "connection" and value == "close" and not self.close_connection:
            return
        super().send_header(keyword, value)

    def log(self, type: str, message: str, *args) -> None:
        log.debug("%s %s", self.address_string(), message % args if args else message)

    def log_request(self, code="-", size="-") -> None:
        pass


class _Server(ThreadedWSGIServer):
    """werkzeug's threaded server that knows its open connections, so stop can close them."""

    daemon_threads = True
    request_queue_size = 1024  # bursts of hundreds of new connections are part of the lessons

    def __init__(self, app, host: str, port: int):
        super().__init__(host, port, app, handler=_QuietHandler)
        self.connections: dict[socket.socket, threading.Thread] = {}  # each open connection's worker
        self.busy: set[socket.socket] = set()  # the connections with a request in progress
        self.stopping = False
        self._lock = threading.Lock()

    def server_bind(self):
        # werkzeug prints a failed bind (or listen) and exits the process: carry it past werkzeug instead.
        try:
            super().server_bind()
        except OSError as exc:
            raise _CannotListen() from exc

    def server_activate(self):
        try:
            super().server_activate()
        except OSError as exc:
            raise _CannotListen() from exc

    def process_request(self, request, client_address):
        worker = threading.Thread(
            target=self._work, args=(request, client_address), daemon=True,
            name=f"labkit-request-{client_address[1]}",
        )
        with self._lock:
            self.connections[request] = worker
        worker.start()

    def _work(self, request, client_address):
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._lock:
                self.connections.pop(request, None)
                self.busy.discard(request)

    def begin(self, conn) -> bool:
        """A request on ``conn`` is in progress; True if the server is stopping."""
        with self._lock:
            self.busy.add(conn)
            return self.stopping

    def end(self, conn) -> bool:
        """The request on ``conn`` has been answered; True if the server is stopping."""
        with self._lock:
            self.busy.discard(conn)
            return self.stopping

    def handle_error(self, request, client_address):
        log.debug("error while serving %s", client_address, exc_info=True)

    def log(self, type: str, message: str, *args) -> None:
        log.error(message, *args)

    def close_connections(self, timeout: float) -> None:
        """Shut the idle connections down, let requests in progress answer, and wait for the workers.

        A request still in progress after ``timeout`` seconds has its connection shut down.
        """
        with self._lock:
            self.stopping = True  # from now on each answer closes its connection
            idle = [conn for conn in self.connections if conn not in self.busy]
            workers = list(self.connections.values())
        for conn in idle:
            _shutdown(conn)
        deadline = time.monotonic() + timeout
        for worker in workers:
            if worker is not threading.current_thread():  # a handler may stop its own server
                worker.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            late = [conn for conn, worker in self.connections.items() if worker is not threading.current_thread()]
        for conn in late:
            _shutdown(conn)


class _CannotListen(Exception):
    """The listening socket cannot bind or listen; its cause is the OSError."""


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _traced(app, name: str, log_to: tracing.Trace):
    """Wrap a WSGI app so each request it serves is recorded in the trace."""

    def traced_app(environ, start_response):
        caller = environ.get("HTTP_LABKIT_CALLER") or "client"
        trace_id, parent = tracing.parse_traceparent(environ.get("HTTP_TRACEPARENT"))
        if not trace_id:  # a caller outside labkit (a browser): calls made downstream still share one id
            trace_id = tracing.new_ids()[0]
        fields = dict(
            method=environ.get("REQUEST_METHOD", ""),
            path=environ.get("PATH_INFO", ""),
            trace_id=trace_id,
            span_id=parent,
        )
        log_to.record("receive", caller, name, **fields)
        status = []

        def recording_start_response(status_line, headers, exc_info=None):
            status[:] = [int(status_line.split(" ", 1)[0])]
            return start_response(status_line, headers, exc_info)

        token = tracing._context.set(tracing.Context(trace_id, parent, name, log_to))
        body = None
        try:
            body = app(environ, recording_start_response)
            return list(body)
        finally:
            try:
                if hasattr(body, "close"):  # PEP 3333: the server must close what the app returned
                    body.close()
            finally:
                tracing._context.reset(token)
            log_to.record("reply", name, caller, status=status[0] if status else 500, **fields)

    return traced_app


#: The key of ``app.extensions`` that holds a service's state (see labkit.apps.kit).
STATE = "labkit"


class Server:
    """A running server: ``url``, ``name``, ``stop()``; a context manager.

    Make one with :func:`serve`. An app whose state has threads or clients of its own
    (gossip, heartbeats) or holds requests open (long polls, slow answers) keeps that
    state in ``app.extensions["labkit"]``: when the server stops, once it no longer
    accepts and before it waits for the requests in progress, it calls the state's
    ``close()``.
    """

    def __init__(self, app, name: str, trace: tracing.Trace, host: str, port: int):
        self.name = name
        self.trace = trace
        self._close_state = getattr(getattr(app, "extensions", {}).get(STATE), "close", None)
        try:
            self._httpd = _Server(_traced(app, name, trace), host, port)
        except (OSError, _CannotListen) as error:
            exc = error.__cause__ if isinstance(error, _CannotListen) else error
            raise ServerError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); "
                              f"pick another port, or 0 to let the system choose") from exc
        self.host = host
        self.port = self._httpd.server_port
        self._url = f"http://{_reachable(host)}:{self.port}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"labkit-server-{name}", daemon=True)
        self._stopping = threading.Lock()
        self.running = True

    def _run(self) -> None:
        httpd = self._httpd
        with selectors.DefaultSelector() as selector:
            selector.register(httpd.socket, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            self._ready.set()
            while self.running:
                for key, _ in selector.select():
                    if key.fileobj is httpd.socket and self.running:
                        httpd._handle_request_noblock()

    def _start(self) -> "Server":
        self._thread.start()
        self._ready.wait()
        tracing.register_name(("127.0.0.1", self.port), self.name, server=True)
        return self

    @property
    def url(self) -> str:
        """The base URL, such as http://127.0.0.1:PORT; ServerError once stopped.

        A server listening on every address (host "0.0.0.0") is reached here at 127.0.0.1.
        """
        self._check_running()
        return self._url

    @property
    def browser_url(self) -> str:
        """A URL that opens this service in the student's browser.

        On Binder (or any JupyterHub) the browser cannot reach 127.0.0.1 inside the
        container, so the URL goes through jupyter-server-proxy; locally it is ``url``.
        """
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX")
        if prefix:
            self._check_running()
            return f"{prefix.rstrip('/')}/proxy/{self.port}/"
        return self.url + "/"

    def stop(self, timeout: float = 2.0) -> None:
        """Stop accepting, close open connections, and wait for the threads to end.

        Stopping a stopped server does nothing.
        """
        with self._stopping:
            if not self.running:
                return
            self.running = False
            self._stop(timeout)

    def _stop(self, timeout: float) -> None:
        with _registry_lock:  # no longer running: gone from the registry before anything else
            if _registry.get(self.name) is self:
                del _registry[self.name]
        self._wake_w.send(b"x")
        if self._thread.ident is not None:  # it started
            self._thread.join(timeout)
        self._httpd.server_close()
        if self._close_state is not None:  # before waiting for the handlers: it may release requests held open
            try:
                self._close_state()
            except Exception:
                log.exception("closing the state of server %r failed", self.name)
        self._httpd.close_connections(timeout)
        self._wake_r.close()
        self._wake_w.close()
        tracing.forget_name(("127.0.0.1", self.port))

    def _check_running(self) -> None:
        if not self.running:
            raise ServerError(f"server {self.name!r} is stopped; start it again with labkit.serve(app, name={self.name!r})")

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<Server {self.name!r} {'running' if self.running else 'stopped'}>"


def serve(app, name: str | None = None, *, trace: tracing.Trace | None = None,
          host: str = "127.0.0.1", port: int = 0) -> Server:
    """Serve a WSGI app; return once it accepts connections.

    ``name`` labels the server on sequence diagrams and must be unique among the
    running servers (default: the app's ``name`` or "server"). It listens on ``host``
    (127.0.0.1: this machine only) at ``port`` (0: a free port the system picks).
    ``trace`` is where its requests are recorded (default: ``labkit.trace``).
    """
    _check_wsgi(app)
    name = name if name is not None else getattr(app, "name", None) or "server"
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a server's name must be a non-empty string, not {name!r}")
    with _registry_lock:
        if name in _registry:
            raise ServerError(
                f"a server named {name!r} is already running; stop it first "
                f"(labkit.stop_all() stops every server) or pick another name"
            )
        server = Server(app, name, tracing.default if trace is None else trace, host, port)
        _registry[name] = server
    try:
        return server._start()
    except BaseException:
        server.stop()
        raise


def _reachable(host: str) -> str:
    """The address a client on this machine uses for a server listening on ``host``."""
    return "127.0.0.1" if host in ("", "0.0.0.0") else f"[{host}]" if ":" in host else host


def _check_wsgi(app) -> None:
    """Raise TypeError unless ``app`` can be called as app(environ, start_response)."""
    problem = ""
    if isinstance(app, type):
        problem = f"the class {app.__name__}; pass an instance, such as {app.__name__}(__name__)"
    elif not callable(app):
        problem = f"{type(app).__name__} {app!r}, which is not callable"
    else:
        try:
            inspect.signature(app).bind({}, None)
        except TypeError:
            problem = f"{app!r}, which cannot be called as app(environ, start_response)"
        except ValueError:  # some builtins have no signature; let them through
            pass
    if problem:
        raise TypeError(f"serve() needs a WSGI app such as a Flask app, not {problem}")


def running() -> list[Server]:
    """The servers running now, by name."""
    with _registry_lock:
        return [_registry[name] for name in sorted(_registry)]


def stop_all() -> list:
    """Close every open link, stop every running server and spawned service; return them.

    The notebooks' last cell calls it, and so does the interpreter at exit.
    """
    links = _net.close_all()
    servers = running()
    for server in servers:
        server.stop()
    return links + servers + processes.stop_all()


atexit.register(stop_all)
