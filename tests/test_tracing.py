"""labkit.Trace: the event log, and trace ids that join both ends of an exchange."""

import json
import re
import threading

import pytest
from flask import Flask, jsonify

import labkit
import labkit.tracing
from labkit.tracing import KINDS, Event, Trace, parse_traceparent, traceparent

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")


def test_record_stamps_and_keeps_order():
    log = Trace()
    first = log.record("send", "alice", "hello", method="GET", path="/")
    second = log.record("response", "hello", "alice", status=200)
    assert log.events() == [first, second]
    assert 0 <= first.t <= second.t
    assert (second.kind, second.src, second.dst, second.status) == ("response", "hello", "alice", 200)
    assert len(log) == 2 and repr(log) == "<Trace: 2 events>"


def test_labkit_trace_is_the_default_trace_of_the_tracing_module():
    assert isinstance(labkit.trace, Trace)
    assert labkit.trace is labkit.tracing.default
    assert labkit.Trace is Trace


def test_max_events_keeps_the_newest():
    log = Trace(max_events=3)
    for i in range(5):
        log.record("send", "a", "b", detail=str(i))
    assert [e.detail for e in log] == ["2", "3", "4"]
    assert len(log) == 3
    assert [e.detail for e in log.filter(kind="send")] == ["2", "3", "4"]
    log.clear()
    log.record("send", "a", "b", detail="after")
    assert [e.detail for e in log] == ["after"]
    unbounded = Trace()
    for i in range(1000):
        unbounded.record("send", "a", "b")
    assert len(unbounded) == 1000


def test_max_events_keeps_the_newest_of_the_events_given():
    log = Trace([Event(float(i), "send", "a", "b", detail=str(i)) for i in range(4)], max_events=2)
    assert [e.detail for e in log] == ["2", "3"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10", True])
def test_a_bad_max_events_is_a_value_error(bad):
    with pytest.raises(ValueError, match="max_events"):
        Trace(max_events=bad)


def test_unknown_kind_is_a_value_error():
    log = Trace()
    with pytest.raises(ValueError, match="unknown event kind 'sent'"):
        log.record("sent", "a", "b")
    assert len(log) == 0


def test_many_threads_recording_at_once_lose_nothing():
    log = Trace()
    threads, per_thread = 16, 2000
    start = threading.Barrier(threads)

    def work(n):
        start.wait()
        for i in range(per_thread):
            log.record("send", f"t{n}", "x", detail=str(i))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    events = log.events()
    assert len(events) == threads * per_thread
    for n in range(threads):  # each thread's events in the order it recorded them
        assert [e.detail for e in events if e.src == f"t{n}"] == [str(i) for i in range(per_thread)]


def test_filter_by_kind_node_trace_id_and_path():
    log = Trace()
    log.record("send", "alice", "shop", path="/a", trace_id="1" * 32)
    log.record("receive", "alice", "shop", path="/a", trace_id="1" * 32)
    log.record("send", "bob", "shop", path="/b", trace_id="2" * 32)
    log.record("dropped", "bob", "shop", path="/b", trace_id="2" * 32)
    log.record("send", "shop", "db", path="/a", trace_id="1" * 32)

    def kinds(trace):
        return [(e.kind, e.src) for e in trace]

    assert isinstance(log.filter(kind="send"), Trace)
    assert kinds(log.filter(kind="send")) == [("send", "alice"), ("send", "bob"), ("send", "shop")]
    assert kinds(log.filter(kind={"receive", "dropped"})) == [("receive", "alice"), ("dropped", "bob")]
    assert kinds(log.filter(node="bob")) == [("send", "bob"), ("dropped", "bob")]
    assert kinds(log.filter(node="db")) == [("send", "shop")]
    assert len(log.filter(trace_id="1" * 32)) == 3
    assert kinds(log.filter(kind="send", path="/a")) == [("send", "alice"), ("send", "shop")]
    assert len(log.filter(node="nobody")) == 0
    assert log.filter(node="alice").start == log.start
    assert log.nodes() == ["alice", "shop", "bob", "db"]


def test_clear_forgets_and_restarts_the_clock():
    log = Trace()
    log.record("send", "a", "b")
    old_start = log.start
    log.clear()
    assert len(log) == 0 and list(log) == []
    assert log.start > old_start
    assert log.record("send", "a", "b").t < 1


def test_to_dicts_and_to_json_round_trip():
    log = Trace()
    log.record("send", "alice", "shop", method="POST", path="/buy", trace_id="a" * 32, span_id="b" * 16)
    log.record("error", "shop", "alice", error="timeout", trace_id="a" * 32, span_id="b" * 16)
    log.record("delayed", "alice", "shop", detail="40 ms")
    dicts = log.to_dicts()
    assert dicts[0]["kind"] == "send" and dicts[1]["error"] == "timeout" and dicts[1]["status"] is None
    again = Trace([Event(**d) for d in json.loads(log.to_json())])
    assert again.events() == log.events()
    assert json.loads(log.to_json(indent=1)) == dicts


def test_traceparent_helpers():
    header = traceparent("ab" * 16, "cd" * 8)
    assert header == f"00-{'ab' * 16}-{'cd' * 8}-01"
    assert parse_traceparent(header) == ("ab" * 16, "cd" * 8)
    for bad in (None, "", "garbage", "00-abc-def-01", f"00-{'a' * 32}-{'b' * 15}-01"):
        assert parse_traceparent(bad) == ("", "")


def test_every_kind_has_a_meaning():
    assert set(KINDS) >= {"send", "receive", "reply", "response", "error",
                          "delayed", "dropped", "reset", "partitioned"}
    assert all(isinstance(text, str) and text for text in KINDS.values())


# -- both ends of an exchange ----------------------------------------------------


def test_the_server_sees_a_w3c_traceparent_and_the_callers_name(lab):
    server = lab.serve(lab.app("svc"))
    seen = lab.client("alice", timeout=2).get(server.url + "/headers").json()
    assert TRACEPARENT.match(seen["traceparent"])
    assert seen["caller"] == "alice"
    [send] = lab.trace.filter(kind="send")
    assert seen["traceparent"] == traceparent(send.trace_id, send.span_id)


def test_client_and_server_events_of_one_exchange_share_ids(lab):
    server = lab.serve(lab.app("svc"))
    client = lab.client("alice", timeout=2)
    client.get(server.url + "/")
    client.get(server.url + "/missing")
    events = lab.trace.events()
    assert [(e.kind, e.src, e.dst) for e in events] == [
        ("send", "alice", "svc"), ("receive", "alice", "svc"),
        ("reply", "svc", "alice"), ("response", "svc", "alice"),
    ] * 2
    first, second = events[:4], events[4:]
    for exchange, status in ((first, 200), (second, 404)):
        assert len({(e.trace_id, e.span_id) for e in exchange}) == 1
        assert exchange[2].status == exchange[3].status == status
        assert exchange[0].path == exchange[1].path
    assert first[0].trace_id != second[0].trace_id  # separate calls, separate traces


def test_a_downstream_call_carries_the_same_trace_id(lab):
    """A server that calls another while handling a request passes its trace id on."""
    stock = lab.serve(lab.app("stock"))
    shop_client = lab.client("shop", timeout=2)
    shop = Flask("shop")

    @shop.get("/buy")
    def buy():
        downstream = shop_client.get(stock.url + "/headers").json()
        return jsonify(downstream=downstream)

    shop_server = lab.serve(shop)
    answer = lab.client("alice", timeout=2).get(shop_server.url + "/buy").json()

    [first_send] = lab.trace.filter(kind="send", node="alice")
    trace_id = first_send.trace_id
    assert {e.trace_id for e in lab.trace} == {trace_id}  # all 8 events: one trace
    assert len(lab.trace) == 8
    assert parse_traceparent(answer["downstream"]["traceparent"])[0] == trace_id
    [inner_send] = lab.trace.filter(kind="send", node="stock")
    assert inner_send.src == "shop" and inner_send.span_id != first_send.span_id
    # Outside any request, a new call starts a new trace.
    shop_client.get(stock.url + "/")
    assert lab.trace.events()[-1].trace_id != trace_id


def test_link_events_carry_the_trace_id_of_the_request(lab):
    server = lab.serve(lab.app("svc"))
    link = lab.link(server, latency_ms=(10, 20))
    lab.client("alice", timeout=2).get(link.url + "/")
    [send] = lab.trace.filter(kind="send")
    delayed = lab.trace.filter(kind="delayed").events()
    assert [(e.src, e.dst, e.detail) for e in delayed] == [("alice", "svc", "10 ms"), ("svc", "alice", "20 ms")]
    assert {e.trace_id for e in delayed} == {send.trace_id}


def test_an_empty_trace_passed_in_is_the_one_used(make_app):
    """A fresh Trace is empty (falsy): it must still be used, not the shared default."""
    mine = labkit.Trace()
    default_before = len(labkit.trace)
    with labkit.serve(make_app("own"), name="own-trace", trace=mine) as server, \
            labkit.Link(server, trace=mine, latency_ms=1) as link, \
            labkit.Client("own", trace=mine, timeout=2) as client:
        client.get(link.url + "/")
    assert [e.kind for e in mine] == ["send", "delayed", "receive", "reply", "delayed", "response"]
    assert len(labkit.trace) == default_before
