"""labkit.plots: the sequence diagram of real traffic, and the smaller charts."""

import contextlib
import dataclasses
import io
import time

import pytest
import requests
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure

import labkit
from labkit import plots
from labkit.apps.hello import create_app
from labkit.plots import BLACK, BLUE, ORANGE, PURPLE, SKY
from labkit.tracing import Event, Trace

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def traffic():
    """The events of one real session: alice calls hello directly and through a link.

    The calls go to the default trace, cleared first, as a notebook's calls would.
    """
    with contextlib.ExitStack() as stack:
        labkit.trace.clear()
        hello = stack.enter_context(labkit.serve(create_app(), name="hello"))
        link = stack.enter_context(labkit.Link(hello, seed=1))
        alice = stack.enter_context(labkit.Client("alice", timeout=0.3))
        alice.get(hello.url + "/hello?name=alice")                     # 200, direct
        link.latency_ms = 40
        alice.get(link.url + "/hello")                                 # 200, slow
        link.configure(latency_ms=0, drop=(1, 0))
        with pytest.raises(requests.Timeout):                          # request lost: timeout
            alice.get(link.url + "/hello")
        link.configure(drop=(0, 1))
        with pytest.raises(requests.RequestException):                 # response lost
            alice.get(link.url + "/hello")
        link.configure(drop=0, down=True)
        with pytest.raises(requests.ConnectionError):                  # refused
            alice.get(link.url + "/hello")
        link.down = False
        assert alice.get(hello.url + "/nope").status_code == 404
        assert requests.get(hello.url + "/", timeout=5).status_code == 200  # a browser: no trace id
        yield Trace(labkit.trace.events())
    labkit.trace.clear()


def gid(fig, name):
    """The artist of the first Axes with this gid."""
    found = [a for a in fig.axes[0].get_children() if a.get_gid() == name]
    assert len(found) == 1, name
    return found[0]


def texts(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def test_sequence_draws_lanes_arrows_crosses_and_a_timeout(traffic):
    kinds = [e.kind for e in traffic]
    assert {"dropped", "error", "receive", "reply"} <= set(kinds)
    fig = plots.sequence(traffic)

    assert isinstance(fig, Figure)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["alice", "hello", "client"]
    # direct 2 + slow 2 + lost request 1 + lost response 2 + refused 1 + 404 2 + browser 2
    assert len(gid(fig, "messages").get_segments()) == 12
    assert len(gid(fig, "lanes").get_segments()) == 3
    crosses = gid(fig, "crosses").get_offsets()
    assert sum(1 for x, _ in crosses if x == pytest.approx(0.5)) >= 2      # lost half-way, each way
    assert any(0 < x < 0.5 for x, _ in crosses)                            # refused near alice
    timeouts = gid(fig, "timeouts").get_segments()
    # The lost request times out; the lost response may too (or the link may close the connection).
    assert 1 <= len(timeouts) <= 2
    (x0, y0), (x1, y1) = timeouts[0]
    assert x0 == x1 == pytest.approx(0.04) and y1 - y0 == pytest.approx(0.3, abs=0.1)

    labels = texts(fig)
    for label in ("GET /hello", "GET /nope", "GET /", "200", "404", "timeout", "refused"):
        assert label in labels
    assert legend_texts(fig) == ["2xx answer", "4xx answer", "no answer",
                                 "lost / refused", "waiting until timeout"]
    colours = {tuple(c) for c in gid(fig, "messages").get_colors()}
    assert {to_rgba(BLUE), to_rgba(ORANGE), to_rgba(BLACK)} == colours
    assert plots.png(fig).startswith(PNG)


def test_time_flows_down_and_arrows_slant_with_latency(traffic):
    fig = plots.sequence(traffic)
    bottom, top = fig.axes[0].get_ylim()
    assert bottom > top
    slow = [((x0, y0), (x1, y1)) for (x0, y0), (x1, y1) in gid(fig, "messages").get_segments()
            if x0 == 0 and x1 == 1 and y1 - y0 >= 0.04]
    assert slow, "the request through the 40 ms link arrives at least 40 ms after it left"


def test_nodes_order_the_lanes_and_max_events_keeps_the_latest(traffic):
    fig = plots.sequence(traffic, nodes=["hello", "alice"], title="hello world")
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["hello", "alice", "client"]
    assert "hello world" in [t.get_text() for t in fig.texts]
    last = plots.sequence(traffic, max_events=2)   # only the browser's receive and reply
    assert [t.get_text() for t in last.axes[0].get_xticklabels()] == ["client", "hello"]
    assert len(gid(last, "messages").get_segments()) == 2
    with pytest.raises(ValueError, match="max_events"):
        plots.sequence(traffic, max_events=0)


def test_an_empty_trace_draws_an_empty_diagram():
    fig = plots.sequence(Trace())
    assert "no messages yet" in texts(fig)
    assert plots.png(fig).startswith(PNG)


def test_a_figure_has_a_stable_text_form(traffic):
    assert repr(plots.sequence(traffic)) == repr(plots.sequence(traffic))
    assert repr(plots.sequence(traffic)).startswith("<Figure size 900x")


def test_two_thousand_events_render_fast_and_unlabelled(traffic):
    # 500 copies of real exchanges, each with its own ids and a later time.
    exchanges = {}
    for e in traffic:
        if e.trace_id:
            exchanges.setdefault(e.trace_id, []).append(e)
    shapes = list(exchanges.values())
    events, n = [], 0
    while len(events) < 2000:
        shape = shapes[n % len(shapes)]
        base = shape[0].t
        for e in shape:
            events.append(dataclasses.replace(e, t=n * 0.004 + (e.t - base) % 0.3, trace_id=f"{n:032x}"))
        n += 1
    events.sort(key=lambda e: e.t)
    assert len(events) >= 2000

    started = time.perf_counter()
    fig = plots.sequence(events)
    png = io.BytesIO()
    fig.savefig(png, format="png")
    elapsed = time.perf_counter() - started

    assert png.getvalue().startswith(PNG)
    assert len(gid(fig, "messages").get_segments()) > 500
    assert texts(fig) == []                       # too many arrows to label
    assert fig.get_size_inches()[1] <= 8
    assert elapsed < 2.0, f"sequence() of 2,000 events took {elapsed:.2f} s"


def test_latency_histogram_from_numbers_and_from_a_trace(traffic):
    fig = plots.latency_histogram([10, 12, 11, 13, 400], title="latency")
    lines = fig.axes[0].lines
    assert [line.get_xdata()[0] for line in lines] == [12, pytest.approx(384.52)]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["median 12.0 ms", "p99 384.5 ms"]

    measured = plots.latencies(traffic)
    assert len(measured) == 6                     # every exchange alice started
    assert max(measured) >= 300                   # the timeout
    fig = plots.latency_histogram(traffic)
    assert fig.axes[0].patches
    assert plots.png(plots.latency_histogram([])).startswith(PNG)


def test_throughput_curve_with_and_without_latency():
    fig = plots.throughput_curve([1, 2, 4], [100, 190, 200])
    assert len(fig.axes) == 1
    fig = plots.throughput_curve([1, 2, 4], [100, 190, 200], latency_ms=[10, 10.5, 20])
    assert len(fig.axes) == 2
    assert list(fig.axes[1].lines[0].get_ydata()) == [10, 10.5, 20]
    with pytest.raises(ValueError, match="one throughput per level"):
        plots.throughput_curve([1, 2], [100])


def test_topology_marks_down_nodes_and_cut_edges():
    fig = plots.topology(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "a")], down=["c"], cut=[("b", "a")])
    ax = fig.axes[0]
    edges = [c for c in ax.collections if c.get_gid() == "edges"][0]
    cut = [c for c in ax.collections if c.get_gid() == "cut"][0]
    assert len(edges.get_segments()) == 2 and len(cut.get_segments()) == 1
    assert len([c for c in ax.collections if c.get_gid() == "down"][0].get_offsets()) == 1
    assert "down" in [t.get_text() for t in ax.texts]
    with pytest.raises(ValueError, match="'d'"):
        plots.topology(["a"], [("a", "d")])


def test_ipython_shows_a_figure_as_png_with_its_size_as_text():
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    try:
        plots._register_with_ipython()
        data, _ = shell.display_formatter.format(plots.throughput_curve([1], [1]))
        assert data["text/plain"] == "<Figure size 700x350 with 1 Axes>"
        assert data["image/png"].startswith(PNG)
    finally:
        InteractiveShell.clear_instance()


def messages(fig):
    """The message segments as ((x0, y0), (x1, y1)), in lanes and seconds."""
    return [tuple(map(tuple, s)) for s in gid(fig, "messages").get_segments()]


def test_a_lost_request_points_at_its_target_with_the_delay_it_would_have_had(lab):
    hello = lab.serve(create_app(), name="greeter")
    link = lab.link(hello, latency_ms=200, drop=(1, 0))
    alice = lab.client("alice", timeout=0.4)
    with pytest.raises(requests.Timeout):
        alice.get(link.url + "/hello")
    fig = plots.sequence(lab.trace)
    [((x0, y0), (x1, y1))] = messages(fig)
    assert (x0, x1) == (0, 0.5) and y1 - y0 == pytest.approx(0.1, abs=0.03)  # half-way, at half its 200 ms
    assert [tuple(c) for c in gid(fig, "crosses").get_offsets()] == [(0.5, pytest.approx(y1))]
    assert legend_texts(fig) == ["no answer", "lost", "waiting until timeout"]


def test_a_stopped_servers_lane_says_so(lab):
    hello = lab.serve(create_app(), name="greeter")
    alice = lab.client("alice", timeout=2)
    alice.get(hello.url + "/hello")
    assert [t.get_text() for t in plots.sequence(lab.trace).axes[0].get_xticklabels()] == ["alice", "greeter"]
    hello.stop()
    assert [t.get_text() for t in plots.sequence(lab.trace).axes[0].get_xticklabels()] == ["alice", "greeter\n(stopped)"]


def test_a_copy_and_a_link_answer_are_drawn_where_the_link_is(lab):
    hello = lab.serve(create_app(), name="greeter")
    link = lab.link(hello, latency_ms=20, duplicate=1)
    alice = lab.client("alice", timeout=2)
    assert alice.get(link.url + "/hello").status_code == 200
    deadline = time.monotonic() + 2
    while len(lab.trace.filter(kind="reply")) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)  # the copy's answer comes after the caller's
    link.configure(duplicate=0, error_rate=1, error_status=503)
    assert alice.get(link.url + "/hello").status_code == 503
    fig = plots.sequence(lab.trace)
    colours = [tuple(c) for c in gid(fig, "messages").get_colors()]
    copies = [m for m, c in zip(messages(fig), colours) if c == to_rgba(PURPLE)]
    assert [(x0, x1) for (x0, _), (x1, _) in copies] == [(0.5, 1), (1, 0.5)]  # from the link and back to it
    assert [tuple(p)[0] for p in gid(fig, "link answers").get_offsets()] == [0.5]
    assert {"copy sent by the link", "answered by the link"} <= set(legend_texts(fig))
    [copy] = [x for x in plots._exchanges(lab.trace.events())[0] if x.copy]
    assert copy.fault == "a copy the link sent; the link discarded its answer"


def test_a_partition_that_rejects_is_drawn_as_a_reset_at_the_caller(lab):
    greeter = lab.serve(create_app(), name="greeter")
    net = lab.network()
    link = net.link("alice", greeter)
    net.partition(["alice"], ["greeter"], kind="reject")
    with pytest.raises(requests.ConnectionError):
        lab.client("alice", timeout=2).get(link.url + "/hello")
    fig = plots.sequence(lab.trace)
    [(x, _)] = [tuple(c) for c in gid(fig, "crosses").get_offsets()]
    assert x < 0.5 and "reset" in legend_texts(fig) and "lost" not in legend_texts(fig)
    [exchange] = plots._exchanges(lab.trace.events())[0]
    assert exchange.fault == "reset on the way there by a partition"


# -- messages that never arrived: the slope rule holds for them too ---------------------------------


def crosses(fig):
    return [tuple(map(float, c)) for c in gid(fig, "crosses").get_offsets()]


def heads(fig):
    """The tip of every arrow head, as (x, y)."""
    return [tuple(map(float, path.vertices[0])) for path in gid(fig, "heads").get_paths()]


def sent(trace, kind="send"):
    return [e.t for e in trace.events() if e.kind == kind]


def wait_for(trace, kind, count=1, timeout_s=5.0):
    """Wait until ``trace`` holds ``count`` events of ``kind`` (a server may answer after its caller gave up)."""
    deadline = time.monotonic() + timeout_s
    while len(sent(trace, kind)) < count and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_lost_message_is_crossed_at_the_link_never_on_a_lane_between(lab):
    """alice and greeter have bob's lane between them: a cross at the midpoint would sit on bob's lane
    (as it did). The link is drawn half a lane before greeter, and the arrow keeps the slope of the
    200 ms the message would have taken, there and back."""
    greeter = lab.serve(create_app(), name="greeter")
    link = lab.link(greeter, latency_ms=200, drop=(1, 0))
    alice = lab.client("alice", timeout=0.3)
    with pytest.raises(requests.Timeout):
        alice.get(link.url + "/hello")
    link.configure(drop=(0, 1))
    with pytest.raises(requests.Timeout):
        alice.get(link.url + "/hello")
    wait_for(lab.trace, "dropped", 2)
    fig = plots.sequence(lab.trace, nodes=["alice", "bob", "greeter"])
    assert crosses(fig) and all(x == 1.5 for x, _ in crosses(fig)), crosses(fig)
    t_request, _ = sent(lab.trace)
    [t_reply] = sent(lab.trace, "reply")
    lost_request, request_arrow, answer_lost = messages(fig)
    assert lost_request == ((0, t_request), (1.5, pytest.approx(t_request + 0.75 * 0.2)))  # 3/4 of the way
    assert request_arrow[1] == (2, pytest.approx(sent(lab.trace, "receive")[0]))
    assert answer_lost == ((2, t_reply), (1.5, pytest.approx(t_reply + 0.25 * 0.2)))       # 1/4 of the way back
    assert [y for _, y in crosses(fig)] == [pytest.approx(lost_request[1][1]), pytest.approx(answer_lost[1][1])]
    assert all(x == 2 for x, _ in heads(fig))  # only the request that arrived has a head
    assert legend_texts(fig) == ["no answer", "lost", "waiting until timeout"]


def test_a_link_event_no_exchange_claims_is_crossed_at_the_link_too():
    events = [Event(0.1, "dropped", "a", "c", detail="100 ms")]
    fig = plots.sequence(events, nodes=["a", "b", "c"])
    assert crosses(fig) == [(1.5, pytest.approx(0.175))]


def test_an_answer_after_the_timeout_travels_on_and_reaches_the_caller_too_late(lab):
    """The service answers, but alice gave up first: the answer is not lost half-way, it arrives
    150 ms later (the link's latency) at a caller that no longer listens."""
    greeter = lab.serve(create_app(), name="greeter")
    link = lab.link(greeter, latency_ms=150)
    alice = lab.client("alice", timeout=0.25)
    with pytest.raises(requests.Timeout):
        alice.get(link.url + "/hello")
    wait_for(lab.trace, "delayed", 2)  # the answer left the service, and the link holds it 150 ms
    time.sleep(0.2)  # the answer reaches alice's closed connection before the link closes
    fig = plots.sequence(lab.trace)
    [t_reply], [t_gave_up] = sent(lab.trace, "reply"), sent(lab.trace, "error")
    _, answer = messages(fig)
    arrival = max(t_reply + 0.15, t_gave_up)
    assert answer == ((1, t_reply), (0, pytest.approx(arrival)))   # slanted by 150 ms, not flat
    assert crosses(fig) == [(0, pytest.approx(arrival))]
    assert "too late" in texts(fig) and "200" in texts(fig)


def test_a_reset_on_the_way_there_and_on_the_way_back(lab):
    """On the way there the connection breaks next to alice and greeter never sees the request; on
    the way back the request arrives (greeter did the work) and its answer breaks next to greeter."""
    greeter = lab.serve(create_app(), name="greeter")
    link = lab.link(greeter, latency_ms=50, reset=(1, 0))
    alice = lab.client("alice", timeout=2)
    with pytest.raises(requests.ConnectionError):
        alice.get(link.url + "/hello")
    assert sent(lab.trace, "receive") == []
    link.configure(reset=(0, 1))
    with pytest.raises(requests.ConnectionError):
        alice.get(link.url + "/hello")
    [t_receive], [t_reply] = sent(lab.trace, "receive"), sent(lab.trace, "reply")
    fig = plots.sequence(lab.trace)
    there, request, back = messages(fig)
    assert there[0][0] == 0 and there[1][0] == pytest.approx(0.3)
    assert request == ((0, pytest.approx(sent(lab.trace)[1])), (1, t_receive))
    assert back[0] == (1, t_reply) and back[1][0] == pytest.approx(0.7)
    assert [x for x, _ in crosses(fig)] == [pytest.approx(0.3), pytest.approx(0.7)]  # none on alice's lane
    assert texts(fig).count("reset") == 2
    faults = [x.fault for x in plots._exchanges(lab.trace.events())[0]]
    assert faults == ["reset on the way there", "reset on the way back"]
    # The live diagram draws the same layout.
    exchanges, _ = plots._exchanges(lab.trace.events())
    lane = {"alice": 0, "greeter": 1}
    live = [c for x in exchanges for c in plots.layout(x, lane)["crosses"]]
    assert [tuple(map(float, c)) for c in live] == crosses(fig)


def test_a_redirect_is_drawn_apart_from_a_success(lab, make_app):
    app = make_app("mover")

    @app.get("/old")
    def old():
        return "", 302, {"Location": "/hello"}

    mover = lab.serve(app, name="mover")
    alice = lab.client("alice", timeout=2)
    assert alice.get(mover.url + "/old", allow_redirects=False).status_code == 302
    fig = plots.sequence(lab.trace)
    assert {tuple(c) for c in gid(fig, "messages").get_colors()} == {to_rgba(SKY)}
    assert legend_texts(fig) == ["3xx answer (redirect)"]


def test_the_live_legend_says_what_the_png_legend_says():
    """live_sequence.js keeps its own copy of the outcomes' colours and legend texts: they must agree."""
    import json
    import re
    from pathlib import Path

    source = (Path(plots.__file__).with_name("live_sequence.js")).read_text(encoding="utf-8")
    legend = json.loads(re.search(r"const LEGEND = (\[.*?\n\]);", source, re.S).group(1).replace(",\n]", "]"))
    colours = dict(re.findall(r'(\w+): "(#[0-9A-Fa-f]{6})"', re.search(r"const COLOURS = \{(.*?)\};", source).group(1)))
    shown = {kind: (colour, text) for kind, _, colour, text in legend}
    for outcome, (colour, text) in plots._OUTCOMES.items():
        assert shown[outcome] == (colour, text) and colours[outcome] == colour, outcome
