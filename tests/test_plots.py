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
from labkit.plots import BLACK, BLUE, ORANGE, PURPLE
from labkit.tracing import Trace

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
    assert legend_texts(fig) == ["2xx/3xx answer", "4xx answer", "no answer",
                                 "lost / refused", "waiting until timeout"]
    colours = {tuple(c) for c in gid(fig, "messages").get_colors()}
    from matplotlib.colors import to_rgba
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
    assert exchange.fault == "reset on the way out by a partition"
