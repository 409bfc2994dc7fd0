"""Starting and stopping over and over leaves no thread and no open file behind.

A notebook cell that serves or links may be re-run many times; each run must
give back every thread and socket it took.
"""

import os
import socket
import threading
import time

import requests

import labkit


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def settles(baseline: tuple[int, int], within: float = 1.0) -> bool:
    """True once (threads, open fds) are back at ``baseline`` or below, waiting up to ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        threads, fds = threading.active_count(), open_fds()
        if threads <= baseline[0] and fds <= baseline[1]:
            return True
        if time.monotonic() > deadline:
            print(f"threads {threads} (was {baseline[0]}), open fds {fds} (was {baseline[1]})")
            return False
        time.sleep(0.02)


def test_a_thousand_serve_stop_cycles_leak_nothing(make_app):
    app = make_app("cycle")
    log = labkit.Trace()
    for _ in range(20):  # warm up: imports, lazy allocations
        labkit.serve(app, name="cycle", trace=log).stop()
    baseline = (threading.active_count(), open_fds())
    start = time.perf_counter()
    for _ in range(1000):
        server = labkit.serve(app, name="cycle", trace=log)
        server.stop()
    elapsed = time.perf_counter() - start
    assert settles(baseline)
    assert "cycle" not in [server.name for server in labkit.running()]
    assert elapsed < 15  # about 1 ms a cycle; a slow stop would show here


def test_serve_stop_cycles_with_a_request_each_leak_nothing(make_app):
    app = make_app("cycle")
    log = labkit.Trace()
    with labkit.Client("c", timeout=2, trace=log) as client:
        for _ in range(5):
            with labkit.serve(app, name="cycle", trace=log) as server:
                client.get(server.url + "/")
        baseline = (threading.active_count(), open_fds())
        for _ in range(150):
            with labkit.serve(app, name="cycle", trace=log) as server:
                assert client.get(server.url + "/").text == "ok"
        client.close()
        assert settles(baseline)


def test_two_hundred_link_cycles_leak_nothing(lab):
    server = lab.serve(lab.app("target"))
    for _ in range(5):
        with labkit.Link(server, trace=lab.trace) as link, \
                labkit.Client("c", timeout=2, trace=lab.trace) as client:
            client.get(link.url + "/")
    baseline = (threading.active_count(), open_fds())
    start = time.perf_counter()
    for i in range(200):
        with labkit.Link(server, trace=lab.trace, latency_ms=i % 2) as link, \
                labkit.Client("c", timeout=2, trace=lab.trace) as client:
            if i % 10:  # most cycles carry a request; some close an idle link
                assert client.get(link.url + "/").text == "ok"
    elapsed = time.perf_counter() - start
    assert settles(baseline)
    assert elapsed < 20


def test_links_alongside_a_long_lived_one_leak_nothing(lab):
    """With one link kept open, the shared loop thread stays; the others still clean up."""
    server = lab.serve(lab.app("target"))
    keeper = lab.link(server)
    client = lab.client("c", timeout=2)
    client.get(keeper.url + "/")
    baseline = (threading.active_count(), open_fds())
    for _ in range(100):
        with labkit.Link(server, trace=lab.trace) as link:
            with labkit.Client("c", timeout=2, trace=lab.trace) as short:
                short.get(link.url + "/")
    assert settles(baseline)
    assert client.get(keeper.url + "/").text == "ok"


def test_many_requests_through_one_link_leave_no_connection_open(lab):
    server = lab.serve(lab.app("target"))
    link = lab.link(server, latency_ms=(0, 1))
    client = lab.client("c", timeout=2)
    client.get(link.url + "/")
    baseline = (threading.active_count(), open_fds())
    for _ in range(100):
        assert client.get(link.url + "/").text == "ok"
    assert settles(baseline)
    assert len(link._pipes) <= 1


def test_lost_and_reset_connections_through_a_link_are_closed(lab):
    server = lab.serve(lab.app("target"))
    link = lab.link(server)
    client = lab.client("c", timeout=0.1)
    client.get(link.url + "/")
    baseline = (threading.active_count(), open_fds())
    for settings in ({"drop": 1}, {"drop": (0, 1)}, {"reset": 1}):
        link.configure(**{"drop": 0, "reset": 0, **settings})
        for _ in range(5):
            try:
                client.get(link.url + "/")
            except requests.RequestException:
                pass
    link.configure(drop=0, reset=0)
    client.get(link.url + "/")
    assert settles(baseline)
    assert len(link._pipes) <= 1


def test_stopping_with_idle_connections_open_leaves_no_thread(lab):
    app = lab.app("kept")
    with labkit.Client("warm", timeout=2, trace=lab.trace) as client:
        with labkit.serve(app, name="kept", trace=lab.trace) as warm:
            client.get(warm.url + "/")
    baseline = threading.active_count()
    server = labkit.serve(app, name="kept", trace=lab.trace)
    idle = socket.create_connection(("127.0.0.1", server.port), timeout=2)
    partial = socket.create_connection(("127.0.0.1", server.port), timeout=2)
    lab.callback(idle.close)
    lab.callback(partial.close)
    partial.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    deadline = time.monotonic() + 2
    while threading.active_count() < baseline + 3 and time.monotonic() < deadline:
        time.sleep(0.01)  # the server thread and one worker per connection
    assert threading.active_count() == baseline + 3
    start = time.perf_counter()
    server.stop()
    assert time.perf_counter() - start < 1
    assert threading.active_count() == baseline
    assert not [t for t in threading.enumerate() if t.name.startswith("labkit-request")]
    assert idle.recv(10) == b""


def test_stopping_with_a_client_connection_kept_alive_leaves_no_thread(lab):
    loop_was_running = any(t.name == "labkit-links" for t in threading.enumerate())
    baseline = threading.active_count()
    server = labkit.serve(lab.app("alive"), name="alive", trace=lab.trace)
    lab.callback(server.stop)
    session = lab.enter(requests.Session())
    assert session.get(server.url + "/", timeout=2).ok  # the pool keeps the socket
    link = lab.link(server)
    assert session.get(link.url + "/", timeout=2).ok
    server.stop()
    expected = baseline + (0 if loop_was_running else 1)  # the link's loop thread stays
    deadline = time.monotonic() + 1
    while threading.active_count() > expected and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() == expected
    assert not [t for t in threading.enumerate()
                if t.name.startswith("labkit-request") or t.name == "labkit-server-alive"]
