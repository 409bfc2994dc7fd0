"""labkit.spawn: services in processes of their own, crashed, paused and restarted for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

import labkit
from labkit.errors import ServerError

ROOT = Path(__file__).resolve().parents[1]


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (not a zombie waiting to be reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def log():
    return labkit.Trace()


@pytest.fixture
def alice(log):
    with labkit.Client("alice", trace=log, timeout=5) as client:
        yield client


def test_a_spawned_service_answers_and_its_events_join_the_trace(log, alice):
    with labkit.spawn("hello", name="hello-p", trace=log) as hello:
        assert hello.pid != os.getpid() and _alive(hello.pid)
        assert alice.get(hello.url + "/hello").json() == {"message": "Hello, world!"}
        assert _wait_for(lambda: len(log) == 4, 5), list(log)
        events = {e.kind: e for e in log}
        assert [e.kind for e in sorted(log, key=lambda e: e.t)] == ["send", "receive", "reply", "response"]
        assert events["receive"].src == "alice" and events["receive"].dst == "hello-p"
        assert len({e.trace_id for e in log}) == 1  # the child's half and the kernel's join up
        assert events["send"].t <= events["receive"].t <= events["reply"].t <= events["response"].t
        assert events["response"].t - events["send"].t < 2
    assert not _alive(hello.pid) and hello.state == "stopped"
    assert labkit.spawned() == []


def test_a_kill_cuts_the_request_in_flight_and_keeps_what_the_child_saw(log, alice, tmp_path):
    with labkit.spawn("counter", name="slow", trace=log, database=f"sqlite:///{tmp_path / 'c.db'}") as slow:
        outcome = {}

        def call():
            started = time.monotonic()
            try:
                outcome["error"] = alice.get(slow.url + "/whoami?work_ms=2000").status_code
            except requests.RequestException as error:
                outcome["error"] = error
            outcome["seconds"] = time.monotonic() - started

        caller = threading.Thread(target=call)
        caller.start()
        assert _wait_for(lambda: any(e.kind == "receive" and e.dst == "slow" for e in log), 10), list(log)
        slow.kill()
        caller.join(10)
        assert slow.state == "killed" and not _alive(slow.pid)
        assert isinstance(outcome["error"], requests.ConnectionError), outcome
        assert outcome["seconds"] < 1.5, outcome  # cut at once, not answered after its 2 s of work
        assert not any(e.kind == "reply" and e.src == "slow" for e in log)  # it died before answering
        with pytest.raises(requests.ConnectionError):
            alice.get(slow.url + "/whoami")  # nobody listens: refused


def test_a_paused_service_times_out_and_answers_once_resumed(log, alice):
    with labkit.spawn("hello", name="frozen", trace=log) as frozen:
        frozen.pause()
        assert frozen.state == "paused" and _alive(frozen.pid)
        with pytest.raises(requests.ReadTimeout):  # the connection is accepted by the kernel; nothing answers
            alice.get(frozen.url + "/hello", timeout=0.5)
        frozen.resume()
        assert alice.get(frozen.url + "/hello").status_code == 200


def test_a_restart_keeps_the_port_and_what_was_on_disk(log, alice, tmp_path):
    database = f"sqlite:///{tmp_path / 'counters.db'}"
    with labkit.spawn("counter", name="durable", trace=log, database=database) as durable:
        url, pid = durable.url, durable.pid
        alice.post(url + "/counters", json={"name": "hits"})
        for _ in range(3):
            alice.post(url + "/counters/hits/increment/atomic")
        durable.kill()
        durable.restart()
        assert durable.url == url and durable.pid != pid and durable.state == "running"
        assert alice.get(url + "/counters/hits").json()["value"] == 3


def test_a_link_and_a_partition_work_in_front_of_a_spawned_service(log, alice):
    with labkit.spawn("hello", name="far", trace=log) as far, labkit.Link(far, trace=log, latency_ms=100) as link:
        assert link.dst == "far"
        started = time.perf_counter()
        assert alice.get(link.url + "/hello").status_code == 200
        assert time.perf_counter() - started >= 0.1
        link.down = True
        with pytest.raises(requests.ConnectionError):
            alice.get(link.url + "/hello")


@pytest.mark.parametrize("call, error, says", [
    (lambda: labkit.spawn("no-such-service"), ServerError, "no reference service 'no-such-service'"),
    (lambda: labkit.spawn(""), ValueError, "a reference service's name"),
    (lambda: labkit.spawn("hello", colour="blue"), ServerError, "unexpected keyword argument 'colour'"),
    (lambda: labkit.spawn("hello", when=object()), TypeError, "cannot be sent to another process"),
    (lambda: labkit.spawn("hello", port=70000), ValueError, "port is a whole number"),
    (lambda: labkit.spawn("labkit.apps.hello:no_such_app"), ServerError, "no_such_app"),
    (lambda: labkit.spawn("hello", name=""), ValueError, "non-empty string"),
])
def test_bad_input_is_refused_with_the_reason_and_nothing_left_running(call, error, says):
    with pytest.raises(error, match=None) as raised:
        call()
    assert says in str(raised.value), raised.value
    assert labkit.spawned() == []


def test_a_taken_port_or_name_is_refused(log):
    with labkit.spawn("hello", name="first", trace=log) as first:
        with pytest.raises(ServerError, match="Address already in use"):
            labkit.spawn("hello", name="second", port=first.port, trace=log)
        with pytest.raises(ServerError, match="already running"):
            labkit.spawn("hello", name="first", trace=log)
        assert [p.name for p in labkit.spawned()] == ["first"]


def test_an_app_named_by_module_path_runs(log, alice):
    with labkit.spawn("labkit.apps.weather:create_app", name="weather-p", trace=log) as weather:
        assert alice.get(weather.url + "/forecast?city=Oslo").status_code == 200


def test_stop_all_ends_every_spawned_service(log):
    children = [labkit.spawn("hello", name=f"many-{i}", trace=log) for i in range(3)]
    stopped = labkit.stop_all()
    assert set(children) <= set(stopped)
    assert not any(_alive(child.pid) for child in children)
    assert labkit.spawned() == []


def test_spawn_and_kill_cycles_leave_no_process_port_or_thread(log):
    threads = set(threading.enumerate())
    pids = []
    for i in range(40):
        child = labkit.spawn("hello", name="cycle", trace=log)
        pids.append(child.pid)
        child.kill() if i % 2 else child.stop()
        child.stop()
    assert not any(_alive(pid) for pid in pids)
    assert _wait_for(lambda: not set(threading.enumerate()) - threads, 5), set(threading.enumerate()) - threads
    assert labkit.spawned() == []


KERNEL = textwrap.dedent("""
    import sys, threading, labkit
    hello = labkit.spawn("hello", name="orphan")
    if sys.argv[1] == "paused":
        hello.pause()
    print(hello.pid, flush=True)
    threading.Event().wait()
""")


@pytest.mark.parametrize("state", ["running", "paused"])
def test_a_kernel_killed_with_sigkill_leaves_no_child(state, tmp_path):
    kernel = subprocess.Popen([sys.executable, "-c", KERNEL, state], stdout=subprocess.PIPE, cwd=ROOT)
    try:
        child = int(kernel.stdout.readline())
        assert _alive(child)
        kernel.send_signal(signal.SIGKILL)
        kernel.wait(10)
        assert _wait_for(lambda: not _alive(child), 10), f"the {state} child {child} outlived its kernel"
    finally:
        kernel.kill()
        kernel.wait()
        kernel.stdout.close()


def test_a_child_spawned_from_a_thread_outlives_the_thread(log, alice):
    made = []
    spawner = threading.Thread(target=lambda: made.append(labkit.spawn("hello", name="from-thread", trace=log)))
    spawner.start()
    spawner.join(30)
    with made[0] as child:
        time.sleep(0.3)
        assert _alive(child.pid)
        assert alice.get(child.url + "/hello").status_code == 200


def _machines_here() -> str:
    from labkit.processes import _no_machines

    return _no_machines()


@pytest.mark.skipif(bool(_machines_here()), reason=f"no network namespaces here: {_machines_here()}")
def test_a_service_on_a_machine_of_its_own_has_another_network_stack(log, alice):
    with labkit.spawn("hello", name="remote", machine="A", trace=log) as remote:
        assert remote.url.startswith("http://10.213.") and "127.0.0.1" not in remote.url
        assert os.readlink(f"/proc/{remote.pid}/ns/net") != os.readlink("/proc/self/ns/net")
        with labkit.Link(remote, trace=log, latency_ms=50) as link:
            started = time.perf_counter()
            assert alice.get(link.url + "/hello").status_code == 200  # across the virtual cable
            assert time.perf_counter() - started >= 0.05
        remote.kill()
        remote.restart()
        assert alice.get(remote.url + "/hello").json() == {"message": "Hello, world!"}
        with pytest.raises(ServerError, match="already runs a service"):
            labkit.spawn("hello", name="neighbour", machine="A", trace=log)
    cables = subprocess.run(["ip", "-brief", "link"], capture_output=True, text=True, check=True).stdout
    assert not [line for line in cables.splitlines() if line.startswith("lk")], cables


def test_a_machine_says_why_it_cannot_be_made(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ServerError, match="on a machine of its own here: "):
        labkit.spawn("hello", name="nowhere", machine="B")
    assert labkit.spawned() == []


def test_a_killed_or_paused_service_says_so_on_its_lane(log, alice):
    from labkit import plots

    with labkit.spawn("hello", name="lane", trace=log) as lane:
        alice.get(lane.url + "/hello")
        assert plots._states(["alice", "lane"], {"lane"}) == {}
        lane.pause()
        assert plots._states(["alice", "lane"], {"lane"}) == {"lane": "paused"}
        lane.kill()
        assert plots._states(["alice", "lane"], {"lane"}) == {"lane": "killed"}
        figure = plots.sequence(log)
        assert "lane\n(killed)" in [tick.get_text() for tick in figure.axes[0].get_xticklabels()]
