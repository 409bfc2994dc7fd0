"""labkit.widgets: a control panel bound to a real link, a live diagram, a progress bar."""

import contextlib
import threading
import time

import pytest
import requests

import labkit
from labkit import widgets
from labkit.apps.hello import create_app


@pytest.fixture
def stack():
    """An ExitStack that tears down every server, link and widget a test starts."""
    with contextlib.ExitStack() as stack:
        labkit.trace.clear()
        stack.callback(labkit.trace.clear)
        yield stack


@pytest.fixture
def hello(stack):
    return stack.enter_context(labkit.serve(create_app(), name="hello"))


@pytest.fixture
def alice(stack):
    return stack.enter_context(labkit.Client("alice", timeout=2))


def link_to(stack, server, **settings):
    return stack.enter_context(labkit.Link(server, seed=1, **settings))


def wait_for(predicate, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_panel_starts_from_the_link_settings(stack, hello):
    link = link_to(stack, hello, latency_ms=(30, 40), jitter_ms=5, drop=0.25, reset=0.5)
    panel = widgets.control_panel(link)
    assert (panel.latency_request.value, panel.latency_response.value) == (30, 40)
    assert (panel.jitter.value, panel.drop.value, panel.reset.value, panel.down.value) == (5, 0.25, 0.5, False)
    assert "hello" in panel.children[0].value
    assert all(not getattr(c, "continuous_update", False) for c in panel.children)
    assert repr(panel) == "<ControlPanel for the link to 'hello'>"


def test_moving_a_slider_changes_the_link_live(stack, hello, alice):
    link = link_to(stack, hello)
    panel = widgets.control_panel(link)
    panel.latency_request.value = 120
    panel.latency_response.value = 80
    assert link.settings.latency_ms == (120.0, 80.0)
    started = time.perf_counter()
    assert alice.get(link.url + "/hello").status_code == 200
    assert time.perf_counter() - started >= 0.2

    panel.jitter.value = 25
    panel.drop.value = 0.5
    panel.reset.value = 0.1
    assert (link.settings.jitter_ms, link.settings.drop, link.settings.reset) == ((25, 25), (0.5, 0.5), 0.1)
    assert panel.message.value == ""


def test_the_down_toggle_refuses_callers(stack, hello, alice):
    link = link_to(stack, hello)
    panel = widgets.control_panel(link)
    panel.down.value = True
    assert link.down
    with pytest.raises(requests.ConnectionError):
        alice.get(link.url + "/hello")
    panel.down.value = False
    assert alice.get(link.url + "/hello").status_code == 200


def test_a_rejected_value_leaves_the_link_alone_and_says_why(stack, hello):
    link = link_to(stack, hello, drop=0.1)
    panel = widgets.control_panel(link)
    panel.drop.max = 2
    panel.drop.value = 1.5
    assert link.settings.drop == (0.1, 0.1)
    assert "probability between 0 and 1" in panel.message.value
    assert panel.drop.value == 0.1              # the control shows what the link does
    panel.drop.value = 0.2                      # a good value clears the message
    assert link.settings.drop == (0.2, 0.2) and panel.message.value == ""

    link.close()
    panel.latency_request.value = 100
    assert "closed" in panel.message.value


def test_refresh_reads_changes_made_in_code(stack, hello):
    link = link_to(stack, hello)
    panel = widgets.control_panel(link)
    link.latency_ms = 300
    panel.refresh()
    assert panel.latency_request.value == panel.latency_response.value == 300
    assert link.settings.latency_ms == (300, 300)


def live_threads():
    return [t for t in threading.enumerate() if t.name == "labkit-live-sequence"]


def test_live_sequence_redraws_as_the_trace_grows_and_stops_cleanly(stack, hello, alice, capsys):
    live = widgets.live_sequence(labkit.trace, interval=0.05)
    stack.callback(live.stop)
    assert bytes(live.value).startswith(b"\x89PNG") and len(live_threads()) == 1
    first = live.value
    alice.get(hello.url + "/hello")
    assert wait_for(lambda: live.value != first), "the diagram was not redrawn"
    second = live.value
    time.sleep(0.2)
    assert live.value == second                 # nothing new, nothing redrawn

    live.stop()
    live.stop()                                 # stopping twice is fine
    assert live_threads() == []
    assert repr(live) == "<LiveSequence stopped>"
    assert capsys.readouterr() == ("", "")


def test_live_sequence_is_a_context_manager_and_stops_when_closed(stack):
    with widgets.live_sequence(labkit.trace, interval=0.05, max_events=10) as live:
        assert live_threads()
    assert live_threads() == []
    live = widgets.live_sequence(labkit.trace, interval=0.05)
    live.close()
    assert live_threads() == []
    with pytest.raises(ValueError, match="interval"):
        widgets.live_sequence(labkit.trace, interval=0)


def test_progress_outside_a_notebook_just_yields():
    assert list(widgets.progress(range(4), description="counting")) == [0, 1, 2, 3]
    assert list(widgets.progress(iter("ab"))) == ["a", "b"]
