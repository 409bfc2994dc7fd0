"""labkit.serve: real servers on 127.0.0.1, their lifecycle, registry, concurrency and silence."""

import concurrent.futures
import errno
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask

import labkit
import labkit.server


def names() -> list[str]:
    """The names of the servers running now."""
    return [server.name for server in labkit.running()]


def named(name: str) -> labkit.Server:
    """The running server called ``name``."""
    [server] = [server for server in labkit.running() if server.name == name]
    return server


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def refuses(port: int) -> bool:
    """True if nothing accepts connections on 127.0.0.1:port."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


# -- serve and stop ------------------------------------------------------------


def test_serve_returns_once_accepting(make_app):
    for _ in range(20):  # a race would show up in some of them
        with labkit.serve(make_app("ready"), name="ready", trace=labkit.Trace()) as server:
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
            assert requests.get(server.url + "/", timeout=2).text == "ok"


def test_url_is_loopback_with_a_system_picked_port(lab):
    one = lab.serve(lab.app("one"))
    two = lab.serve(lab.app("two"))
    for server in (one, two):
        parts = urlsplit(server.url)
        assert (parts.scheme, parts.hostname) == ("http", "127.0.0.1")
        assert parts.port == server.port and parts.port > 0
    assert one.port != two.port


def test_serve_listens_on_the_host_and_port_asked_for(lab):
    port = free_port()
    server = lab.serve(lab.app("chosen"), host="127.0.0.1", port=port)
    assert (server.host, server.port) == ("127.0.0.1", port)
    assert server.url == f"http://127.0.0.1:{port}"
    assert requests.get(f"http://127.0.0.1:{port}/", timeout=2).text == "ok"
    lab.client("c", timeout=2).get(server.url + "/")
    assert [(e.kind, e.src, e.dst) for e in lab.trace.filter(node="c")][:2] == [
        ("send", "c", "chosen"), ("receive", "c", "chosen")]  # the trace knows the port by the server's name


def test_a_port_is_free_again_after_stop(lab):
    port = free_port()
    with labkit.serve(lab.app("first"), port=port, trace=lab.trace) as first:
        assert requests.get(first.url + "/", timeout=2).text == "ok"
    again = lab.serve(lab.app("second"), port=port)
    assert again.port == port
    assert requests.get(again.url + "/", timeout=2).text == "ok"


def test_serving_on_every_address_is_reached_at_loopback(lab):
    server = lab.serve(lab.app("everywhere"), host="0.0.0.0")
    assert server.host == "0.0.0.0" and server.port > 0
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert requests.get(server.url + "/", timeout=2).text == "ok"


def test_a_port_in_use_is_a_server_error_naming_the_port(lab, capfd):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        threads, fds = threading.active_count(), len(os.listdir("/proc/self/fd"))
        with pytest.raises(labkit.ServerError, match=rf"cannot listen on 127\.0\.0\.1:{port} \(.*in use") as caught:
            labkit.serve(lab.app("late"), name="late", port=port, trace=lab.trace)
        assert isinstance(caught.value, labkit.LabkitError)
        assert isinstance(caught.value.__cause__, OSError) and caught.value.__cause__.errno == errno.EADDRINUSE
        assert "late" not in names()
        assert threading.active_count() <= threads and len(os.listdir("/proc/self/fd")) <= fds  # nothing left open
    assert capfd.readouterr() == ("", "")  # said in the exception, not printed (werkzeug prints, then exits)
    server = lab.serve(lab.app("late"), name="late")  # the name was never taken
    assert requests.get(server.url + "/", timeout=2).text == "ok"


def test_context_manager_stops_the_server(make_app):
    with labkit.serve(make_app(), name="cm", trace=labkit.Trace()) as server:
        assert server.running
        assert "cm" in names()
        assert named("cm") is server
        port = server.port
    assert not server.running
    assert "cm" not in names()
    assert server not in labkit.running()
    assert refuses(port)


def test_stop_is_idempotent_and_the_port_then_refuses(make_app):
    server = labkit.serve(make_app(), name="idem", trace=labkit.Trace())
    assert requests.get(server.url + "/", timeout=2).ok
    server.stop()
    server.stop()
    server.stop(timeout=0.1)
    assert refuses(server.port)
    assert "stopped" in repr(server)


def test_url_of_a_stopped_server_raises_a_clear_server_error(make_app):
    server = labkit.serve(make_app(), name="gone", trace=labkit.Trace())
    server.stop()
    with pytest.raises(labkit.ServerError, match=r"'gone' is stopped.*labkit\.serve"):
        server.url
    with pytest.raises(labkit.ServerError):
        server.browser_url
    assert isinstance(labkit.ServerError("x"), labkit.LabkitError)


def test_a_name_already_serving_raises_and_the_first_keeps_running(lab):
    first = lab.serve(lab.app(), name="taken")
    with pytest.raises(labkit.ServerError, match="'taken' is already running"):
        labkit.serve(lab.app(), name="taken", trace=lab.trace)
    assert named("taken") is first
    assert requests.get(first.url + "/", timeout=2).text == "ok"


def test_a_name_is_free_again_after_stop(lab):
    labkit.serve(lab.app(), name="again", trace=lab.trace).stop()
    again = lab.serve(lab.app(), name="again")
    assert requests.get(again.url + "/", timeout=2).ok


def test_default_name_is_the_apps_name(lab):
    server = lab.serve(lab.app("catalogue"))
    assert server.name == "catalogue"


@pytest.mark.parametrize("name", ["", "   ", 42])
def test_bad_names_raise_value_error(name, make_app):
    with pytest.raises(ValueError):
        labkit.serve(make_app(), name=name)
    assert name not in names()


def _wrong_signature(environ):
    return []


@pytest.mark.parametrize("app", [
    "hello", None, 42, Flask, _wrong_signature, lambda: None, lambda a, b, c: None,
], ids=["string", "None", "int", "Flask-class", "one-arg-function", "no-arg-lambda", "three-arg-lambda"])
def test_non_wsgi_objects_raise_type_error(app):
    before = labkit.running()
    threads = threading.active_count()
    with pytest.raises(TypeError, match="WSGI app"):
        labkit.serve(app, name="not-an-app")
    assert labkit.running() == before
    assert threading.active_count() <= threads  # no thread was started


def test_flask_class_error_says_to_pass_an_instance():
    with pytest.raises(TypeError, match=r"pass an instance"):
        labkit.serve(Flask)


def test_a_plain_wsgi_callable_is_served(lab):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"plain ", environ["PATH_INFO"].encode()]

    server = lab.serve(app, name="plain")
    assert requests.get(server.url + "/x", timeout=2).text == "plain /x"


def test_the_app_iterable_is_closed(lab):
    closed = threading.Event()

    class Body:
        def __iter__(self):
            yield b"body"

        def close(self):
            closed.set()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    server = lab.serve(app, name="closing")
    assert requests.get(server.url + "/", timeout=2).text == "body"
    assert closed.wait(2)


def test_a_handler_can_stop_its_own_server(lab):
    app = Flask("selfstop")

    @app.post("/shutdown")
    def shutdown():
        named("selfstop").stop()
        return "bye"

    server = lab.serve(app)
    start = time.perf_counter()
    answer = requests.post(server.url + "/shutdown", timeout=3)  # its own request still gets its answer
    assert time.perf_counter() - start < 2
    assert answer.text == "bye"
    assert not server.running
    assert "selfstop" not in names()
    assert refuses(server.port)


# -- registry ------------------------------------------------------------------


@pytest.fixture
def own_registry(monkeypatch):
    """An empty registry (and no open links) for this test, so stop_all() cannot touch what other tests keep."""
    monkeypatch.setattr(labkit.server, "_registry", {})
    monkeypatch.setattr(labkit.net, "_open", set())


def test_running_lists_servers_by_name(lab, own_registry):
    assert labkit.running() == []
    b = lab.serve(lab.app(), name="b")
    a = lab.serve(lab.app(), name="a")
    c = lab.serve(lab.app(), name="c")
    assert labkit.running() == [a, b, c]  # sorted by name, not by start
    a.stop()
    assert labkit.running() == [b, c]
    snapshot = labkit.running()
    snapshot.clear()  # a copy: changing it changes nothing
    assert labkit.running() == [b, c]
    assert all(isinstance(server, labkit.Server) for server in labkit.running())


def test_stop_all_stops_every_running_server(lab, own_registry):
    servers = [lab.serve(lab.app(), name=f"s{i}") for i in range(3)]
    assert labkit.stop_all() == servers
    assert labkit.running() == []
    for server in servers:
        assert not server.running
        assert refuses(server.port)
    assert labkit.stop_all() == []


def test_stop_all_closes_the_links_then_stops_the_servers(lab, own_registry):
    server = lab.serve(lab.app(), name="target")
    first = lab.link(server)
    second = lab.link(server)
    assert labkit.open_links() == [first, second]
    assert labkit.stop_all() == [first, second, server]  # what was closed and stopped, links first
    assert first.closed and second.closed and not server.running
    assert labkit.open_links() == [] and labkit.running() == []
    assert refuses(first.port) and refuses(server.port)
    assert labkit.stop_all() == []


# -- many clients --------------------------------------------------------------


def test_many_clients_at_once_all_succeed(lab):
    server = lab.serve(lab.app("busy"))
    client = lab.client("crowd", timeout=10)
    url = server.url + "/"

    def twenty(_):
        return [client.get(url).status_code for _ in range(20)]

    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        statuses = [s for batch in pool.map(twenty, range(50)) for s in batch]
    assert statuses == [200] * 1000
    assert len(lab.trace.filter(kind="reply", node="busy")) == 1000
    assert len(lab.trace.filter(kind="response", node="crowd")) == 1000


def test_requests_are_served_concurrently(lab):
    server = lab.serve(lab.app("slow"))
    client = lab.client("c", timeout=5)
    start = time.perf_counter()
    client.get(server.url + "/sleep?s=0.2")
    one = time.perf_counter() - start
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        texts = list(pool.map(lambda _: client.get(server.url + "/sleep?s=0.2").text, range(10)))
    ten = time.perf_counter() - start
    assert texts == ["slept"] * 10
    # Served one after another they would take 2 s; side by side, about one call's time.
    assert ten < one + 0.6 < 10 * 0.2


# -- silence -------------------------------------------------------------------


def test_requests_and_app_errors_print_nothing(lab, capfd):
    server = lab.serve(lab.app("quiet"))
    client = lab.client("c", timeout=2)
    assert client.get(server.url + "/").status_code == 200
    assert client.get(server.url + "/missing").status_code == 404
    assert client.get(server.url + "/boom").status_code == 500
    # A malformed request: http.server answers with an error page and would log it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as raw:
        raw.sendall(b"GET / HTTP/9.9\r\n\r\n")
        assert b"Error response" in raw.makefile("rb").read()
    server.stop()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [e.status for e in lab.trace.filter(kind="reply")] == [200, 404, 500]


def test_an_app_that_raises_is_a_500_and_prints_nothing(lab, capfd):
    def broken(environ, start_response):
        raise RuntimeError("a WSGI app with a bug")

    server = lab.serve(broken, name="broken")
    assert requests.get(server.url + "/", timeout=2).status_code == 500
    server.stop()
    assert capfd.readouterr() == ("", "")
    assert [(e.kind, e.status) for e in lab.trace.filter(kind="reply")] == [("reply", 500)]


QUIET_SCRIPT = textwrap.dedent("""
    import socket
    import requests
    from flask import Flask
    import labkit

    app = Flask("noisy")

    @app.get("/")
    def index():
        return "ok"

    @app.get("/boom")
    def boom():
        raise RuntimeError("boom")

    def broken(environ, start_response):
        raise RuntimeError("raw boom")

    server = labkit.serve(app)
    raw = labkit.serve(broken, name="raw")
    link = labkit.Link(server, seed=1)
    with labkit.Client("alice", timeout=0.3) as alice:
        statuses = [alice.get(server.url + "/").status_code,
                    alice.get(server.url + "/boom").status_code,
                    alice.get(raw.url + "/").status_code,
                    alice.get(link.url + "/boom").status_code]
        assert statuses == [200, 500, 500, 500], statuses
        link.drop = (0, 1)
        try:
            alice.get(link.url + "/")
        except requests.exceptions.ReadTimeout:
            pass
        link.configure(drop=0, reset=1)
        try:
            alice.get(link.url + "/")
        except requests.exceptions.ConnectionError:
            pass
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"NONSENSE\\r\\n\\r\\n")
        s.recv(100)
    # left running on purpose: stopping at exit must be silent too
""")


def test_nothing_reaches_the_process_stdout_or_stderr():
    """At the file-descriptor level, outside pytest's logging: what a notebook kernel sees."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", QUIET_SCRIPT], cwd=root,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


# -- browser_url ---------------------------------------------------------------


def test_browser_url_locally_is_the_url(lab, monkeypatch):
    monkeypatch.delenv("JUPYTERHUB_SERVICE_PREFIX", raising=False)
    server = lab.serve(lab.app())
    assert server.browser_url.rstrip("/") == server.url
    assert requests.get(server.browser_url, timeout=2).text == "ok"


@pytest.mark.parametrize("prefix", ["/user/ada/", "/user/ada"])
def test_browser_url_on_jupyterhub_goes_through_the_proxy(lab, monkeypatch, prefix):
    monkeypatch.setenv("JUPYTERHUB_SERVICE_PREFIX", prefix)
    server = lab.serve(lab.app())
    assert server.browser_url == f"/user/ada/proxy/{server.port}/"


class Closing:
    """A service's state that notes each close() and whether its server was still running then."""

    def __init__(self, fail: bool = False):
        self.calls: list[bool] = []
        self.server: labkit.Server | None = None
        self.fail = fail

    def close(self):
        self.calls.append(self.server.running)
        if self.fail:
            raise RuntimeError("this close() fails on purpose")


def test_stop_calls_the_states_close_once_serving_has_ended(lab, make_app):
    app = make_app("closing")
    state = app.extensions[labkit.server.STATE] = Closing()
    assert labkit.server.STATE == "labkit"
    server = state.server = lab.serve(app)
    assert requests.get(server.url + "/", timeout=2).text == "ok"
    assert state.calls == []  # not while it serves
    server.stop()
    server.stop()
    assert state.calls == [False]  # once, after it stopped accepting
    assert refuses(server.port)


def test_the_state_closed_is_the_one_served(lab, make_app):
    app = make_app("swapped")
    served = app.extensions["labkit"] = Closing()
    server = served.server = lab.serve(app)
    later = app.extensions["labkit"] = Closing()  # read when served: a state put there later is not closed
    later.server = server
    server.stop()
    assert (served.calls, later.calls) == ([False], [])


def test_an_app_without_state_or_without_close_stops_cleanly(lab, make_app):
    for state in (None, object(), "a state with no close()"):
        app = make_app("stateless")
        app.extensions["labkit"] = state
        server = lab.serve(app)
        assert requests.get(server.url + "/", timeout=2).text == "ok"
        server.stop()
        assert refuses(server.port)


def test_a_close_that_raises_is_logged_and_the_server_still_stops(lab, make_app, caplog, capfd):
    app = make_app("failing")
    state = app.extensions["labkit"] = Closing(fail=True)
    server = state.server = lab.serve(app)
    with caplog.at_level("ERROR", logger="labkit"):
        server.stop()
    assert state.calls == [False]
    assert not server.running and refuses(server.port)
    assert "failing" not in names()
    [record] = [r for r in caplog.records if r.name == "labkit"]
    assert "closing the state of server 'failing' failed" in record.getMessage()
    assert record.exc_info and record.exc_info[0] is RuntimeError
    assert capfd.readouterr() == ("", "")


def test_close_runs_before_the_server_waits_for_requests_in_progress(lab):
    """A request the state holds open is released by close() and still gets its answer."""
    release = threading.Event()
    holding = threading.Event()

    class Holder:
        closes = 0

        def close(self):
            Holder.closes += 1
            release.set()

    app = Flask("holder")
    app.extensions["labkit"] = Holder()

    @app.get("/hold")
    def hold():
        holding.set()
        return "released" if release.wait(20) else "not released"

    server = lab.serve(app)
    answers = []
    caller = threading.Thread(target=lambda: answers.append(requests.get(server.url + "/hold", timeout=30)))
    caller.start()
    assert holding.wait(5)
    start = time.monotonic()
    server.stop(timeout=15)
    stopped = time.monotonic() - start
    caller.join(10)
    assert stopped < 5, f"stop waited {stopped:.1f} s: close() ran only after waiting for the request"
    assert Holder.closes == 1
    [answer] = answers
    assert (answer.status_code, answer.text) == (200, "released")


def arrived(app, path: str, within: float = 5.0) -> bool:
    """True once a request for ``path`` has reached ``app`` (a conftest app), waiting up to ``within`` s."""
    deadline = time.monotonic() + within
    while path not in [p for p, _ in app.config["arrivals"]]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_a_request_in_progress_at_stop_gets_its_answer_and_its_connection_closes(lab):
    app = lab.app("finishing")
    server = lab.serve(app)
    idle = lab.enter(socket.create_connection(("127.0.0.1", server.port), timeout=5))
    busy = lab.enter(socket.create_connection(("127.0.0.1", server.port), timeout=5))
    idle.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert idle.recv(1000).endswith(b"ok")  # answered, and kept alive: now idle
    received = []

    def read_to_the_end():
        busy.sendall(b"GET /sleep?s=0.5 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := busy.recv(1000):  # until the server closes the connection
            data += chunk
        received.append(data)

    caller = threading.Thread(target=read_to_the_end)
    caller.start()
    assert arrived(app, "/sleep")
    start = time.monotonic()
    server.stop(timeout=5)
    stopped = time.monotonic() - start
    caller.join(5)
    [data] = received
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\nslept")
    assert 0.2 < stopped < 4  # it waited for the answer (0.5 s), not for its timeout (5 s)
    assert idle.recv(10) == b""  # the idle connection was closed at once
    assert refuses(server.port)


def test_a_request_that_outlasts_the_stop_timeout_is_cut(lab):
    app = lab.app("cut")
    server = lab.serve(app)
    errors = []

    def call():
        try:
            requests.get(server.url + "/sleep?s=5", timeout=10)
        except requests.RequestException as exc:
            errors.append(exc)

    before = set(threading.enumerate())
    caller = threading.Thread(target=call)
    caller.start()
    assert arrived(app, "/sleep")
    start = time.monotonic()
    server.stop(timeout=0.3)
    stopped = time.monotonic() - start
    caller.join(10)
    assert stopped < 3  # cut after its timeout (0.3 s), not served to the end (5 s)
    assert len(errors) == 1 and isinstance(errors[0], requests.exceptions.ConnectionError)
    for worker in set(threading.enumerate()) - before:  # the view still sleeps: let it end before other tests
        if worker.name.startswith("labkit-request"):
            worker.join(10)


def test_stopping_the_chat_ends_its_long_polls_at_once(lab):
    """The chat's state wakes the handler waiting in a long poll at close(): the poll is answered at once."""
    from labkit.apps import create

    chat = lab.serve(create("chat"))
    client = lab.client("bob", timeout=30)
    ended, answers = [], []

    def poll():
        try:
            answers.append(client.get(chat.url + "/messages?after=0&wait_s=25"))
        except requests.RequestException as exc:
            answers.append(exc)
        ended.append(time.monotonic())

    poller = threading.Thread(target=poll)
    poller.start()
    deadline = time.monotonic() + 5
    while not lab.trace.filter(kind="receive", node=chat.name) and time.monotonic() < deadline:
        time.sleep(0.01)
    started = time.monotonic()
    chat.stop(timeout=20)
    stopped = time.monotonic() - started
    poller.join(30)
    assert stopped < 10, f"stop waited {stopped:.1f} s for the long poll's handler"
    assert ended and ended[0] - started < 10
    [answer] = answers
    assert isinstance(answer, requests.Response), answer
    assert (answer.status_code, answer.json()) == (200, {"messages": []})
