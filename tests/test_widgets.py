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
    link = link_to(stack, hello, latency_ms=(30, 40), jitter_ms=(5, 10), drop=(0.25, 0), reset=(0, 0.5), duplicate=0.1,
                   error_rate=0.2, error_status=429, retry_after_s=3, late_rate=0.3, late_ms=700,
                   bytes_per_s=(0, 5000), fail_first=4)
    panel = widgets.control_panel(link)
    assert (panel.latency_request.value, panel.latency_response.value) == (30, 40)
    assert (panel.jitter_request.value, panel.jitter_response.value) == (5, 10)
    assert (panel.drop_request.value, panel.drop_response.value) == (0.25, 0)
    assert (panel.reset_request.value, panel.reset_response.value, panel.down.value) == (0, 0.5, False)
    assert (panel.duplicate.value, panel.error_rate.value, panel.error_status.value) == (0.1, 0.2, 429)
    assert (panel.retry_after_s.value, panel.late_rate.value, panel.late_ms.value) == (3, 0.3, 700)
    assert (panel.bytes_request.value, panel.bytes_response.value, panel.fail_next.value) == (0, 5000, 4)
    assert "hello" in panel.children[0].value
    controls = [c for tab in panel.tabs.children for c in tab.children]
    assert len(controls) == len(widgets._CONTROLS) + 1 and all(not getattr(c, "continuous_update", False)
                                                               for c in controls)
    settings = {setting for _, setting, _, _, _ in widgets._CONTROLS} | {"down", "fail_first"}
    assert settings == {f.name for f in labkit.net.dataclasses.fields(labkit.net.Settings)}  # every setting has one
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

    panel.jitter_response.value = 25
    panel.drop_response.value = 0.5
    panel.reset_request.value = 0.1
    panel.error_status.value = 502
    assert (link.settings.jitter_ms, link.settings.drop, link.settings.reset) == ((0, 25), (0, 0.5), (0.1, 0))
    assert link.settings.error_status == 502 and panel.message.value == ""


def test_a_slider_moves_its_own_direction_and_shows_values_past_its_end(stack, hello):
    link = link_to(stack, hello, latency_ms=(5000, 10))
    panel = widgets.control_panel(link)
    assert (panel.latency_request.value, panel.latency_request.max) == (5000, 5000)  # widened, not clamped
    panel.latency_response.value = 20
    assert link.settings.latency_ms == (5000, 20)  # the other direction keeps what the link has


def test_arm_fails_the_next_requests_again_each_time_it_is_pressed(stack, hello, alice):
    link = link_to(stack, hello, error_status=503)
    panel = widgets.control_panel(link)
    panel.fail_next.value = 2
    assert link.settings.fail_first == 0  # moving the slider arms nothing
    for _ in range(2):
        panel.arm.click()
        statuses = [alice.get(link.url + "/hello").status_code for _ in range(3)]
        assert statuses == [503, 503, 200]


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
    panel.drop_request.max = 2
    panel.drop_request.value = 1.5
    assert link.settings.drop == (0.1, 0.1)
    assert "probability from 0 to 1" in panel.message.value
    assert panel.drop_request.value == 0.1      # the control shows what the link does
    panel.drop_request.value = 0.2              # a good value clears the message
    assert link.settings.drop == (0.2, 0.1) and panel.message.value == ""

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


def test_live_sequence_sends_only_what_changed_and_stops_cleanly(stack, hello, alice, capsys):
    live = widgets.live_sequence(labkit.trace, interval=0.05)
    stack.callback(live.stop)
    sent = []
    live.send = sent.append  # what the browser would get
    assert len(live_threads()) == 1
    alice.get(hello.url + "/hello")
    assert wait_for(lambda: sent), "the diagram got no update"
    [update] = sent
    assert update["type"] == "update" and update["lanes"] == ["alice", "hello"] and update["drop"] == []
    [exchange] = update["exchanges"]
    assert exchange["details"]["request"] == "GET /hello" and exchange["details"]["status"] == 200
    assert [a["label"] for a in exchange["arrows"]] == ["GET /hello", "200"]
    time.sleep(0.2)
    assert len(sent) == 1                       # nothing new, nothing sent
    alice.get(hello.url + "/hello")
    assert wait_for(lambda: len(sent) == 2)
    assert [x["id"] for x in sent[1]["exchanges"]] == [exchange["id"] + 1]  # only the new exchange
    live._on_message(live, {"type": "ready"}, [])  # a new view gets everything so far
    assert sent[-1]["type"] == "snapshot" and len(sent[-1]["exchanges"]) == 2

    live.stop()
    live.stop()                                 # stopping twice is fine
    assert live_threads() == []
    assert repr(live) == "<LiveSequence stopped>"
    assert capsys.readouterr() == ("", "")


def test_live_sequence_keeps_the_newest_exchanges_only(stack, hello, alice):
    live = widgets.live_sequence(labkit.trace, interval=10, max_exchanges=3)
    stack.callback(live.stop)
    sent = []
    live.send = sent.append
    for _ in range(5):
        alice.get(hello.url + "/hello")
    live.update()
    assert live.exchanges == 3 and sent[-1]["drop"] == [0, 1]
    labkit.trace.clear()                         # a cleared trace starts the diagram again
    alice.get(hello.url + "/hello")
    live.update()
    assert sent[-2]["type"] == "snapshot" and sent[-2]["exchanges"] == [] and live.exchanges == 1


def test_live_sequence_names_a_stopped_server(stack, alice):
    gone = labkit.serve(create_app(), name="gone")
    url = gone.url
    alice.get(url + "/hello")
    gone.stop()
    live = widgets.live_sequence(labkit.trace, interval=10)
    stack.callback(live.stop)
    sent = []
    live.send = sent.append
    live.update()
    assert sent[-1]["states"] == {"gone": "stopped"}


def test_live_sequence_labels_a_server_that_stops_while_it_watches(stack, alice):
    going = labkit.serve(create_app(), name="going")
    stack.callback(going.stop)
    alice.get(going.url + "/hello")
    live = widgets.live_sequence(labkit.trace, interval=10)
    stack.callback(live.stop)
    sent = []
    live.send = sent.append
    live.update()
    assert sent[-1]["states"] == {}
    going.stop()
    live.update()                               # no new exchange, but the lane changed
    assert sent[-1]["states"] == {"going": "stopped"} and sent[-1]["exchanges"] == []


def test_live_sequence_stays_bounded_over_many_exchanges_without_ids(stack, hello):
    live = widgets.live_sequence(labkit.trace, interval=10, max_exchanges=20)
    stack.callback(live.stop)
    live.send = lambda message: None
    for _ in range(200):
        requests.get(hello.url + "/hello", timeout=5)  # a browser: no traceparent of its own
    live.update()
    joiner = live._joiner
    assert len(joiner.exchanges) == 20 and len(joiner._unkeyed) <= 1 and joiner.orphans == []
    assert len(joiner._by_trace) <= 20 and len(joiner._by_span) <= 20  # only what the diagram holds


def test_a_new_live_diagram_of_a_trace_stops_the_one_before(stack):
    first = widgets.live_sequence(labkit.trace, interval=0.05)
    second = widgets.live_sequence(labkit.trace, interval=0.05)
    stack.callback(second.stop)
    assert not first.running and second.running and len(live_threads()) == 1


def test_live_sequence_is_a_context_manager_and_stops_when_closed(stack):
    with widgets.live_sequence(labkit.trace, interval=0.05, max_exchanges=10) as live:
        assert live_threads()
    assert live_threads() == []
    live = widgets.live_sequence(labkit.trace, interval=0.05)
    live.close()
    assert live_threads() == []
    with pytest.raises(ValueError, match="interval"):
        widgets.live_sequence(labkit.trace, interval=0)
    with pytest.raises(ValueError, match="max_exchanges"):
        widgets.live_sequence(labkit.trace, max_exchanges=0)


def test_an_experiment_runs_from_its_controls_and_keeps_its_runs():
    seen = []

    def double(n, fast, mode, progress):
        seen.append((n, fast, mode))
        progress(1, 2)
        return {"twice": 2 * n}

    panel = labkit.experiment(double, {"n": (1, 10, 1, 3), "fast": True, "mode": ["a", "b"]}, title="double",
                              plot=lambda runs: labkit.plots.throughput_curve([r["n"] for r in runs],
                                                                              [r["twice"] for r in runs]))
    assert repr(panel) == "<Experiment 'double': n, fast, mode; 0 runs kept>"
    assert panel.values == {"n": 3, "fast": True, "mode": "a"}
    panel.controls["n"].value = 5
    panel.button.click()                        # what the Run button does
    assert panel.run(n=7, mode="b") == {"twice": 14}
    assert seen == [(5, True, "a"), (7, True, "b")]
    assert panel.results == [{"n": 5, "fast": True, "mode": "a", "twice": 10}, {"n": 7, "fast": True, "mode": "b",
                                                                                 "twice": 14}]
    assert panel.table.value.count("<tr>") == 3 and bytes(panel.figure.value).startswith(b"\x89PNG")
    assert repr(panel) == "<Experiment 'double': n, fast, mode; 2 runs kept>"
    panel.keep.value = False
    panel.run()
    assert len(panel.results) == 1 and repr(panel).endswith("; 1 run kept>")
    with pytest.raises(ValueError, match="from 1 to 10"):
        panel.run(n=50)                         # beyond the slider: refused, not clamped
    assert panel.controls["n"].value == 7 and len(panel.results) == 1
    panel.clear_button.click()
    assert panel.results == [] and panel.table.value == ""
    with pytest.raises(TypeError, match="no control 'm'"):
        panel.run(m=1)
    with pytest.raises(TypeError, match="must be"):
        labkit.experiment(double, {"n": "lots"})
    not_a_dict = labkit.experiment(lambda n: 3, {"n": (1, 2, 1)})
    with pytest.raises(TypeError, match="dict"):
        not_a_dict.run()
    assert "dict" in not_a_dict.status.value and not_a_dict.results == []
    clash = labkit.experiment(lambda n: {"n": 2}, {"n": (1, 2, 1)})
    with pytest.raises(ValueError, match="controls too"):
        clash.run()


def test_a_failing_run_says_so_and_keeps_nothing():
    panel = labkit.experiment(lambda n: 1 / 0, {"n": (1, 2, 1)})
    with pytest.raises(ZeroDivisionError):
        panel.run()
    assert panel.results == [] and "ZeroDivisionError" in panel.status.value and not panel.button.disabled


def test_a_prediction_is_remembered_and_explained():
    question = labkit.predict("How long?", ["0.1 s", "1 s"], "1 s", "ten round trips of 100 ms")
    assert repr(question) == "<Predict: How long?>" and question.choice is None and question.button.disabled
    question.options.value = "0.1 s"
    assert not question.button.disabled
    question.button.click()
    assert question.choice == "0.1 s" and question.correct is False
    assert "the answer is 1 s" in question.explanation.value and "ten round trips" in question.explanation.value
    question.options.value = "1 s"
    question.reveal()
    assert question.correct and "Right." in question.explanation.value
    with pytest.raises(ValueError):
        labkit.predict("?", ["a"], "b", "")


def test_progress_outside_a_notebook_just_yields():
    assert list(widgets.progress(range(4), description="counting")) == [0, 1, 2, 3]
    assert list(widgets.progress(iter("ab"))) == ["a", "b"]
