"""labkit.serve: real servers on 127.0.0.1, their lifecycle, registry, concurrency and silence."""

import concurrent.futures
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


def test_context_manager_stops_the_server(make_app):
    with labkit.serve(make_app(), name="cm", trace=labkit.Trace()) as server:
        assert server.running
        assert "cm" in labkit.running()
        port = server.port
    assert not server.running
    assert "cm" not in labkit.running()
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
    assert labkit.running()["taken"] is first
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
    assert name not in labkit.running()


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
        labkit.running()["selfstop"].stop()
        return "bye"

    server = lab.serve(app)
    start = time.perf_counter()
    try:
        requests.post(server.url + "/shutdown", timeout=3)
    except requests.exceptions.ConnectionError:
        pass  # the connection it came on is closed too
    assert time.perf_counter() - start < 2
    assert not server.running
    assert "selfstop" not in labkit.running()
    assert refuses(server.port)


# -- registry ------------------------------------------------------------------


@pytest.fixture
def own_registry(monkeypatch):
    """An empty registry for this test, so stop_all() cannot touch servers other tests keep."""
    monkeypatch.setattr(labkit.server, "_registry", {})


def test_running_lists_servers_by_name(lab, own_registry):
    assert labkit.running() == {}
    a = lab.serve(lab.app(), name="a")
    b = lab.serve(lab.app(), name="b")
    assert labkit.running() == {"a": a, "b": b}
    a.stop()
    assert labkit.running() == {"b": b}
    snapshot = labkit.running()
    snapshot.clear()  # a copy: changing it changes nothing
    assert labkit.running() == {"b": b}


def test_stop_all_stops_every_running_server(lab, own_registry):
    servers = [lab.serve(lab.app(), name=f"s{i}") for i in range(3)]
    assert labkit.stop_all() == 3
    assert labkit.running() == {}
    for server in servers:
        assert not server.running
        assert refuses(server.port)
    assert labkit.stop_all() == 0


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


def test_stop_calls_the_apps_on_stop_hooks_once_serving_has_ended(lab, make_app):
    app = make_app("hooked")
    calls = []
    server = lab.serve(app)
    app.extensions[labkit.server.ON_STOP] = []  # read when served: a hook added later is not called
    hooked = make_app("hooked2")
    hooked.extensions[labkit.server.ON_STOP] = [lambda: calls.append(server2.running), lambda: 1 / 0,
                                                lambda: calls.append("after a failing hook")]
    server2 = lab.serve(hooked)
    server.stop()
    assert calls == []
    server2.stop()
    server2.stop()
    assert calls == [False, "after a failing hook"]


def test_stopping_the_chat_ends_its_long_polls_at_once(lab):
    """The chat's on-stop hook wakes the handler waiting in a long poll, so stop need not wait for it."""
    from labkit.apps import create

    chat = lab.serve(create("chat"))
    client = lab.client("bob", timeout=30)
    ended = []

    def poll():
        try:
            client.get(chat.url + "/messages?after=0&wait=25")
        except requests.RequestException:
            pass
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
