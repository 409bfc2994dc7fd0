"""labkit.Link and labkit.Network: a real TCP proxy whose faults the caller really sees."""

import math
import socket
import threading
import time

import pytest
import requests

import labkit
from labkit.client import describe


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def best_of(n, fn, *args):
    """The shortest of n timings of fn(*args): the least noisy estimate of its cost."""
    return min(timed(fn, *args)[1] for _ in range(n))


@pytest.fixture
def svc(lab):
    return lab.serve(lab.app("svc"))


@pytest.fixture
def alice(lab):
    return lab.client("alice", timeout=2)


# -- plain forwarding ----------------------------------------------------------


def test_a_link_forwards_requests_and_bodies(lab, svc, alice):
    link = lab.link(svc)
    assert link.url.startswith("http://127.0.0.1:") and link.port != svc.port
    assert alice.get(link.url + "/").text == "ok"
    body = bytes(range(256)) * 4000  # 1 MB, many chunks each way
    assert alice.post(link.url + "/echo", data=body).content == body
    # Events through the link name the service, not the link's port.
    assert {e.dst for e in lab.trace.filter(kind="send")} == {"svc"}


def test_a_link_can_front_a_url_a_pair_or_another_link(lab, svc, alice):
    by_url = lab.link(svc.url)
    by_pair = lab.link(("127.0.0.1", svc.port))
    chained = lab.link(by_url)
    for link in (by_url, by_pair, chained):
        assert alice.get(link.url + "/").text == "ok"
    with pytest.raises(ValueError):
        labkit.Link("no-port-here")
    with pytest.raises(TypeError):
        labkit.Link(3.14)


# -- latency and jitter --------------------------------------------------------


def test_latency_applies_each_way(lab, svc, alice):
    link = lab.link(svc)
    direct = best_of(3, alice.get, svc.url + "/")
    link.latency_ms = 100
    assert link.latency_ms == 100 and link.settings.latency_ms == (100.0, 100.0)
    _, slow = timed(alice.get, link.url + "/")
    assert slow >= 0.2
    assert slow < 0.2 + direct + 0.15
    delays = [e.detail for e in lab.trace.filter(kind="delayed")]
    assert delays == ["100 ms", "100 ms"]


@pytest.mark.parametrize("pair, slow_direction", [((150, 0), "request"), ((0, 150), "response")])
def test_latency_per_direction(lab, alice, pair, slow_direction):
    app = lab.app("svc")
    link = lab.link(lab.serve(app), latency_ms=pair)
    assert link.latency_ms == pair
    start = time.perf_counter()
    alice.get(link.url + "/")
    end = time.perf_counter()
    arrived = app.config["arrivals"][-1][1]
    there, back = arrived - start, end - arrived
    slow, fast = (there, back) if slow_direction == "request" else (back, there)
    assert slow >= 0.15
    assert fast < 0.1
    [delayed] = lab.trace.filter(kind="delayed")
    expected = ("alice", "svc") if slow_direction == "request" else ("svc", "alice")
    assert (delayed.src, delayed.dst, delayed.detail) == (*expected, "150 ms")


def test_jitter_stays_within_its_bounds_and_varies(lab, svc, alice):
    link = lab.link(svc, latency_ms=(20, 0), jitter_ms=(40, 0), seed=3)
    assert link.jitter_ms == (40, 0)
    times = [timed(alice.get, link.url + "/")[1] for _ in range(12)]
    delays = [float(e.detail.split()[0]) for e in lab.trace.filter(kind="delayed")]
    assert len(delays) == 12  # the response direction has no latency: no event
    assert all(20 <= d <= 60 for d in delays)
    assert max(delays) - min(delays) > 10  # random, not constant
    assert all(t >= d / 1000 - 0.001 for t, d in zip(times, delays))


def test_messages_keep_their_order_when_latency_changes_mid_stream(lab, svc, alice):
    """Bytes queued behind a slow message are not overtaken when the latency drops."""
    link = lab.link(svc, latency_ms=(0, 60))
    body = bytes(range(256)) * 8000  # 2 MB: the response arrives in many chunks
    result = {}

    def call():
        result["content"] = alice.post(link.url + "/echo", data=body).content

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.03)
    link.latency_ms = 0
    caller.join(5)
    assert result["content"] == body


# -- drop, reset, down ---------------------------------------------------------


def test_drop_everything_is_a_read_timeout(lab, svc):
    link = lab.link(svc, drop=1)
    client = lab.client("bob", timeout=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout) as caught:
        client.get(link.url + "/")
    assert describe(caught.value) == "timeout"
    assert svc_hits(svc) == 0  # the request never arrived
    assert [e.kind for e in lab.trace.filter(node="bob")] == ["send", "dropped", "error"]


def svc_hits(server):
    return requests.get(server.url + "/hits", timeout=2).json()["hits"]


def test_drop_on_responses_only_the_server_got_the_request(lab, svc):
    link = lab.link(svc, drop=(0, 1))
    client = lab.client("bob", timeout=0.3)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.get(link.url + "/")
    assert svc_hits(svc) == 1
    kinds = [e.kind for e in lab.trace.filter(node="bob")]
    assert kinds == ["send", "receive", "reply", "dropped", "error"]
    [send], [dropped] = lab.trace.filter(kind="send"), lab.trace.filter(kind="dropped")
    assert dropped.trace_id == send.trace_id != ""
    assert (dropped.src, dropped.dst) == ("svc", "bob")


def test_reset_is_a_fast_connection_error(lab, svc):
    link = lab.link(svc, reset=1)
    client = lab.client("bob", timeout=2)
    start = time.perf_counter()
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        client.get(link.url + "/")
    assert time.perf_counter() - start < 0.5
    assert not isinstance(caught.value, requests.exceptions.Timeout)
    assert describe(caught.value) == "reset"
    assert svc_hits(svc) == 0
    [reset] = lab.trace.filter(kind="reset")
    assert reset.trace_id == lab.trace.filter(kind="send").events()[0].trace_id
    link.reset = 0
    assert client.get(link.url + "/").text == "ok"


def test_down_refuses_and_up_again_works_on_the_same_url(lab, svc, alice):
    link = lab.link(svc)
    url = link.url
    assert alice.get(url + "/").ok
    link.down = True
    assert link.down is True and "down" in repr(link)
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        alice.get(url + "/")
    assert describe(caught.value) == "refused"
    link.down = False
    assert link.url == url
    assert alice.get(url + "/").text == "ok"


def test_a_link_made_down_refuses_from_the_start(lab, svc, alice):
    link = lab.link(svc, down=True)
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        alice.get(link.url + "/")
    assert describe(caught.value) == "refused"
    link.down = False
    assert alice.get(link.url + "/").text == "ok"


def test_going_down_cuts_connections_in_flight(lab, svc, alice):
    link = lab.link(svc)
    errors = []

    def call():
        try:
            alice.get(link.url + "/sleep?s=0.5")
        except requests.exceptions.ConnectionError as exc:
            errors.append(describe(exc))

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(0.1)
    link.down = True
    caller.join(3)
    assert errors == ["reset"]


# -- live changes ----------------------------------------------------------------


def test_settings_change_live_while_traffic_flows(lab, svc):
    link = lab.link(svc)
    client = lab.client("loop", timeout=2)
    calls, errors, stop = [], [], threading.Event()

    def loop():
        while not stop.is_set():
            start = time.perf_counter()
            try:
                client.get(link.url + "/")
            except requests.RequestException as exc:
                errors.append(exc)
            calls.append((start, time.perf_counter()))

    caller = threading.Thread(target=loop)
    caller.start()
    try:
        time.sleep(0.1)
        slow_from = time.perf_counter()
        link.latency_ms = 60
        time.sleep(0.5)
        fast_from = time.perf_counter()
        link.latency_ms = 0
        time.sleep(0.15)
    finally:
        stop.set()
        caller.join(3)
    assert errors == []
    before = [end - start for start, end in calls if end < slow_from]
    during = [end - start for start, end in calls if start > slow_from and end < fast_from]
    after = [end - start for start, end in calls if start > fast_from]
    assert len(before) >= 3 and len(during) >= 2 and len(after) >= 3
    assert all(d >= 0.12 for d in during)
    assert max(before) < 0.1 and sorted(after)[len(after) // 2] < 0.05


def test_configure_changes_several_settings_at_once(lab, svc):
    link = lab.link(svc)
    link.configure(latency_ms=(5, 10), jitter_ms=1, drop=(0, 0.5), reset=0.25)
    assert link.settings == labkit.net.Settings(
        latency_ms=(5.0, 10.0), jitter_ms=(1.0, 1.0), drop=(0.0, 0.5), reset=(0.25, 0.25), down=False)
    assert (link.latency_ms, link.jitter_ms, link.drop, link.reset) == ((5, 10), 1, (0, 0.5), 0.25)


@pytest.mark.parametrize("changes", [
    {"latency_ms": -1},
    {"latency_ms": math.nan},
    {"latency_ms": math.inf},
    {"latency_ms": "100"},
    {"latency_ms": (1, 2, 3)},
    {"latency_ms": (1, -2)},
    {"jitter_ms": -5},
    {"drop": 1.5},
    {"drop": -0.1},
    {"drop": (0.5, 2)},
    {"drop": True},
    {"reset": 2},
    {"reset": None},
    {"down": "yes"},
    {"down": 1},
    {"latency_ms": 50, "drop": 1.5},  # all or nothing: the valid latency is not applied
    {"reset": (0, 1.5)},
    {"duplicate": 2},
    {"error_rate": -0.5},
    {"error_status": 404},
    {"error_status": True},
    {"fail_first": 1.5},
    {"fail_first": -1},
    {"retry_after_s": -1},
    {"late_rate": 1.01},
    {"late_ms": 10**9},
    {"bytes_per_s": -1},
    {"bytes_per_s": (100, "fast")},
    {"error_status": 503.0},
    {"latency_ms": 10**400},
])
def test_invalid_settings_raise_value_error_and_change_nothing(lab, svc, changes):
    link = lab.link(svc, latency_ms=(1, 2), drop=0.1)
    before = link.settings
    with pytest.raises(labkit.Invalid) as refused:
        link.configure(**changes)
    message = str(refused.value)
    name = next((n for n in changes if n in message), None)
    assert name is not None, message  # the setting refused,
    value = changes[name]
    shown = [repr(v)[:20] for v in (value if isinstance(value, tuple) else ())] + [repr(value)[:20]]
    assert any(text in message for text in shown), message  # the value,
    assert any(words in message for words in (" from ", " one of ", "True or False", "a (request, response) pair")), \
        message  # and what it may be
    assert link.settings == before
    if len(changes) == 1:
        [(name, value)] = changes.items()
        with pytest.raises(ValueError):
            setattr(link, name, value)
        assert link.settings == before


def test_an_unknown_setting_is_a_type_error(lab, svc):
    link = lab.link(svc)
    before = link.settings
    with pytest.raises(TypeError, match="no setting 'latency'"):
        link.configure(latency=5)
    assert link.settings == before
    with pytest.raises(TypeError):
        labkit.Link(svc, latency=5)


def test_an_invalid_setting_at_creation_leaves_no_thread_or_port(svc):
    threads = threading.active_count()
    with pytest.raises(ValueError):
        labkit.Link(svc, drop=2)
    assert threading.active_count() <= threads  # no thread was started


# -- seeds -----------------------------------------------------------------------


def outcomes(lab, server, seed, n=40):
    """Which of n sequential calls through a link with reset=0.3 get through."""
    link = lab.link(server, seed=seed, reset=0.3)
    result = []
    with labkit.Client("seeded", timeout=2, trace=lab.trace) as client:
        for _ in range(n):
            try:
                client.get(link.url + "/")
                result.append(True)
            except requests.exceptions.ConnectionError:
                result.append(False)
    return result


def test_the_same_seed_gives_the_same_faults(lab, svc):
    first = outcomes(lab, svc, seed=11)
    assert 3 <= first.count(False) <= 25  # some of each
    assert outcomes(lab, svc, seed=11) == first
    assert outcomes(lab, svc, seed=12) != first


# -- closing ---------------------------------------------------------------------


def test_a_closed_link_raises_link_error_and_refuses(lab, svc, alice):
    link = labkit.Link(svc, trace=lab.trace)
    assert alice.get(link.url + "/").ok
    link.close()
    link.close()
    assert link.closed and "closed" in repr(link)
    with pytest.raises(labkit.LinkError, match="closed"):
        link.configure(latency_ms=5)
    with pytest.raises(labkit.LinkError):
        link.latency_ms = 5
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        alice.get(link.url + "/")
    assert describe(caught.value) == "refused"


def test_closing_a_link_ends_the_connections_through_it(lab, svc):
    link = labkit.Link(svc, trace=lab.trace)
    with socket.create_connection(("127.0.0.1", link.port), timeout=2) as raw:
        raw.sendall(b"GET /sleep?s=0.3 HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.05)
        start = time.perf_counter()
        link.close()
        assert time.perf_counter() - start < 1
        assert raw.recv(100) == b""


def test_a_link_to_a_closed_port_fails_fast_instead_of_hanging(lab, alice):
    link = lab.link(("127.0.0.1", lab.closed_port()))
    start = time.perf_counter()
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        alice.get(link.url + "/")
    assert time.perf_counter() - start < 1
    assert not isinstance(caught.value, requests.exceptions.Timeout)


def test_a_link_to_a_stopped_server_fails_fast(lab, alice):
    server = lab.serve(lab.app("brief"))
    link = lab.link(server)
    server.stop()
    with pytest.raises(requests.exceptions.ConnectionError):
        alice.get(link.url + "/")


def test_open_links_lists_the_links_open_now_oldest_first(lab, svc, monkeypatch):
    monkeypatch.setattr(labkit.net, "_open", set())  # only this test's links
    assert labkit.open_links() == []
    first, second, third = lab.link(svc), lab.link(svc), lab.link(svc)
    assert labkit.open_links() == [first, second, third]
    second.close()
    assert labkit.open_links() == [first, third]
    snapshot = labkit.open_links()
    snapshot.clear()  # a copy: changing it changes nothing
    assert labkit.open_links() == [first, third]
    assert labkit.net.close_all() == [first, third]
    assert first.closed and third.closed
    assert labkit.open_links() == [] and labkit.net.close_all() == []


# -- networks and partitions -----------------------------------------------------


def test_partition_and_heal(lab):
    a, b, c = (lab.serve(lab.app(name)) for name in "abc")
    net = lab.network(seed=5)
    a_to_b, a_to_c, b_to_a = net.link("a", b), net.link("a", c), net.link("b", a)
    assert net.links == {("a", "b"): a_to_b, ("a", "c"): a_to_c, ("b", "a"): b_to_a}
    client_a = lab.client("a", timeout=0.3)
    client_b = lab.client("b", timeout=0.3)

    for client, link in ((client_a, a_to_b), (client_a, a_to_c), (client_b, b_to_a)):
        assert client.get(link.url + "/").ok

    net.partition(["a", "c"], ["b"])
    assert client_a.get(a_to_c.url + "/").ok  # same group
    with pytest.raises(requests.exceptions.ReadTimeout):
        client_a.get(a_to_b.url + "/")
    with pytest.raises(requests.exceptions.ReadTimeout):
        client_b.get(b_to_a.url + "/")
    cut = lab.trace.filter(kind="partitioned")
    assert [(e.src, e.dst) for e in cut] == [("a", "b"), ("b", "a")]

    net.heal()
    for client, link in ((client_a, a_to_b), (client_a, a_to_c), (client_b, b_to_a)):
        assert client.get(link.url + "/").ok


def test_a_link_added_during_a_partition_is_cut(lab):
    b = lab.serve(lab.app("b"))
    net = lab.network()
    net.partition(["a"], ["b"])
    late = net.link("a", b)
    with pytest.raises(requests.exceptions.ReadTimeout):
        lab.client("a", timeout=0.3).get(late.url + "/")
    net.heal()
    assert lab.client("a2", timeout=1).get(late.url + "/").ok


def test_partition_arguments_are_checked(lab):
    net = lab.network()
    with pytest.raises(ValueError):
        net.partition(["a", "b"])
    with pytest.raises(ValueError):
        net.partition(["a", "b"], ["b", "c"])


def test_a_network_has_one_link_per_pair(lab):
    b = lab.serve(lab.app("b"))
    net = lab.network()
    first = net.link("a", b)
    with pytest.raises(labkit.LinkError):
        net.link("a", b)
    first.close()
    assert not net.link("a", b).closed


def test_closing_a_network_closes_its_links(lab):
    b = lab.serve(lab.app("b"))
    with labkit.Network(trace=lab.trace) as net:
        link = net.link("a", b)
    assert link.closed


# -- the faults of real networks and proxies ----------------------------------------


def arrivals(svc, path=None):
    return [p for p, _ in svc_app(svc).config["arrivals"] if path is None or p == path]


def svc_app(svc):
    return svc._app


@pytest.fixture
def counted(lab):
    """A service that counts what arrives (conftest's app records arrivals)."""
    app = lab.app("counted")
    server = lab.serve(app)
    server._app = app
    return server


def test_a_reset_on_the_request_means_nothing_was_done(lab, counted):
    link = lab.link(counted, reset=(1, 0))
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        lab.client("bob", timeout=2).post(link.url + "/echo", data=b"pay")
    assert describe(caught.value) == "reset"
    assert arrivals(counted) == []
    [reset] = lab.trace.filter(kind="reset")
    assert (reset.src, reset.dst) == ("bob", "counted")


def test_a_reset_on_the_response_comes_after_the_work_was_done(lab, counted):
    link = lab.link(counted, reset=(0, 1))
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        lab.client("bob", timeout=2).post(link.url + "/echo", data=b"pay")
    assert describe(caught.value) == "reset" and not isinstance(caught.value, requests.exceptions.Timeout)
    assert arrivals(counted) == ["/echo"]  # the service did the work; the caller saw an error
    [reply] = lab.trace.filter(kind="reply")
    [reset] = lab.trace.filter(kind="reset")
    assert (reset.src, reset.dst) == ("counted", "bob") and reset.t >= reply.t


def test_a_duplicated_request_reaches_the_service_twice_and_the_caller_once(lab, counted):
    link = lab.link(counted, duplicate=1)
    client = lab.client("bob", timeout=2)
    assert client.post(link.url + "/echo", data=b"once").content == b"once"
    deadline = time.monotonic() + 2
    while len(arrivals(counted)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert arrivals(counted) == ["/echo", "/echo"]
    [duplicated] = lab.trace.filter(kind="duplicated")
    assert (duplicated.src, duplicated.dst) == ("bob", "counted")
    receives = lab.trace.filter(kind="receive").events()
    assert len(receives) == 2 and receives[0].trace_id == receives[1].trace_id
    assert receives[0].span_id != receives[1].span_id  # the copy is a separate exchange on a diagram
    assert len(lab.trace.filter(kind="response")) == 1
    link.duplicate = 0
    client.get(link.url + "/")
    assert len(arrivals(counted)) == 3


def test_a_copy_still_on_its_way_is_never_delivered_once_the_link_closes(lab, counted):
    other = lab.link(counted)  # keeps the links' event loop busy, as a notebook's other links would
    link = lab.link(counted, duplicate=1, latency_ms=(400, 0))
    client = lab.client("bob", timeout=0.2)
    with pytest.raises(requests.exceptions.RequestException):
        client.get(link.url + "/")  # gives up before the request (and its copy) get there
    time.sleep(0.1)
    link.close()
    time.sleep(0.6)
    assert arrivals(counted) == []  # neither the request nor its copy reached the service
    assert client.get(other.url + "/").status_code == 200


def test_a_duplicated_request_with_a_chunked_body_is_sent_whole(lab, counted):
    link = lab.link(counted, duplicate=1)
    chunks = (part for part in (b"a" * 10, b"b" * 20))
    assert lab.client("bob", timeout=2).post(link.url + "/echo", data=chunks).content == b"a" * 10 + b"b" * 20
    deadline = time.monotonic() + 2
    while len(arrivals(counted)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert arrivals(counted) == ["/echo", "/echo"]


def test_the_link_answers_with_an_error_the_service_never_gave(lab, counted):
    link = lab.link(counted, error_rate=1, error_status=429, retry_after_s=2.5)
    answer = lab.client("bob", timeout=2).post(link.url + "/echo", data=b"x" * 5000)
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "3"
    assert "not from counted" in answer.json()["error"]
    assert arrivals(counted) == []
    [answered] = lab.trace.filter(kind="answered")
    assert (answered.src, answered.dst, answered.status) == ("counted", "bob", 429)
    link.configure(error_rate=0, error_status=503)
    assert lab.client("bob", timeout=2).get(link.url + "/").text == "ok"


def test_the_first_requests_fail_then_the_service_answers(lab, counted):
    link = lab.link(counted, fail_first=2, error_status=503)
    client = lab.client("bob", timeout=2)
    assert [client.get(link.url + "/").status_code for _ in range(4)] == [503, 503, 200, 200]
    assert len(arrivals(counted)) == 2
    link.fail_first = 1  # counting starts again
    assert [client.get(link.url + "/").status_code for _ in range(2)] == [503, 200]


def test_a_late_answer_comes_after_the_work_is_done(lab, counted):
    link = lab.link(counted, late_rate=1, late_ms=300)
    client = lab.client("bob", timeout=(1, 0.15))
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.get(link.url + "/")
    assert arrivals(counted) == ["/"]  # it got there and was answered; the answer is late
    patient = lab.client("carol", timeout=2)
    answer, took = timed(patient.get, link.url + "/")
    assert answer.text == "ok" and took >= 0.29
    assert any("late" in e.detail for e in lab.trace.filter(kind="delayed"))


def test_a_slow_line_takes_the_time_its_bytes_need(lab, svc):
    link = lab.link(svc, bytes_per_s=(0, 200_000))
    body = b"x" * 100_000
    answer, took = timed(lab.client("bob", timeout=5).post, link.url + "/echo", data=body)
    assert answer.content == body and took >= 0.45  # 100 kB at 200 kB/s
    link.bytes_per_s = 0
    _, fast = timed(lab.client("carol", timeout=5).post, link.url + "/echo", data=body)
    assert fast < took / 3


def test_a_one_way_cut_loses_the_answers_that_go_that_way(lab):
    a, b = lab.serve(lab.app("a")), lab.serve(lab.app("b"))
    b._app = None
    net = lab.network(seed=1)
    a_to_b, b_to_a = net.link("a", b), net.link("b", a)
    net.cut(["b"], ["a"])  # b cannot reach a; a still reaches b
    with pytest.raises(requests.exceptions.ReadTimeout):
        lab.client("a", timeout=0.3).get(a_to_b.url + "/hits")  # it arrives, its answer is lost
    with pytest.raises(requests.exceptions.ReadTimeout):
        lab.client("b", timeout=0.3).get(b_to_a.url + "/")      # b's request is lost
    cut = lab.trace.filter(kind="partitioned")
    assert [(e.src, e.dst) for e in cut] == [("b", "a"), ("b", "a")], [
        (round(e.t, 3), e.kind, e.src, e.dst, e.detail, e.span_id[:4]) for e in lab.trace]
    assert len(lab.trace.filter(kind="receive", node="b")) == 1  # b did receive a's request
    net.heal()
    assert lab.client("a2", timeout=1).get(a_to_b.url + "/").ok


def test_a_rejecting_partition_resets_at_once(lab):
    b = lab.serve(lab.app("b"))
    net = lab.network()
    a_to_b = net.link("a", b)
    net.partition(["a"], ["b"], kind="reject")
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        timed(lab.client("a", timeout=2).get, a_to_b.url + "/")
    assert describe(caught.value) == "reset"
    [cut] = lab.trace.filter(kind="partitioned")
    assert cut.detail == "rejected"
    with pytest.raises(ValueError):
        net.partition(["a"], ["b"], kind="sometimes")
    with pytest.raises(ValueError):
        net.cut(["a"], ["a", "b"])


def test_every_new_fault_is_seeded(lab, svc):
    """The same seed gives the same answers, the same copies and the same late answers, call by call."""
    def run(seed):
        trace = labkit.Trace()
        link = labkit.Link(svc, seed=seed, error_rate=0.3, duplicate=0.2, late_rate=0.2, late_ms=1, trace=trace)
        lab.enter(link)
        with labkit.Client("seeded", timeout=2, trace=trace) as client:
            story = []
            for _ in range(30):
                mark = len(trace)
                status = client.get(link.url + "/").status_code
                kinds = {e.kind for e in trace.events()[mark:]}
                late = any(e.kind == "delayed" and "(late)" in e.detail for e in trace.events()[mark:])
                story.append((status, "duplicated" in kinds, late))
            return story
    first = run(3)
    assert 3 <= sum(s == 503 for s, _, _ in first) <= 20
    assert any(copied for _, copied, _ in first) and any(late for _, _, late in first)
    assert run(3) == first and run(4) != first


def test_settings_are_all_or_nothing_for_any_change(lab, svc):
    """A property test: whatever a change holds, the link either takes all of it or none."""
    from hypothesis import given, settings as hsettings, HealthCheck
    from hypothesis import strategies as st

    link = lab.link(svc)
    names = [f.name for f in labkit.net.dataclasses.fields(labkit.net.Settings) if f.name != "down"] + ["latency"]
    values = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**11), st.floats(allow_nan=True),
                       st.text(max_size=3), st.tuples(st.floats(-1, 2), st.floats(-1, 2)),
                       st.sampled_from([429, 500, 503, 404]))

    @hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.dictionaries(st.sampled_from(names), values, min_size=1, max_size=3))
    def check(changes):
        before = link.settings
        try:
            link.configure(**changes)
        except (labkit.Invalid, TypeError) as refused:
            assert link.settings == before
            assert any(name in str(refused) for name in changes), refused
        else:
            for field in labkit.net.dataclasses.fields(labkit.net.Settings):  # every change, and only those
                now, value = getattr(link.settings, field.name), changes.get(field.name, getattr(before, field.name))
                expected = (value, value) if isinstance(now, tuple) and not isinstance(value, tuple) else value
                assert now == expected and type(now) is type(getattr(before, field.name)), (field.name, now, value)
            link.configure(**{f.name: f.default for f in labkit.net.dataclasses.fields(labkit.net.Settings)
                              if f.name != "down"})

    check()
