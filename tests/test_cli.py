"""The command line: every reference service runs as a process of its own, with options, on another host too.

``python -m labkit serve`` runs on labkit.serve: HTTP/1.1 kept alive, nothing printed per
request, a clean stop on SIGTERM and SIGINT. Every test runs the real command in a
subprocess and kills it in a ``finally``.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from labkit.apps import SERVICES

#: The first line `serve` prints: the service, the server's name, where it listens.
SERVING = re.compile(r"serving (?P<service>\S+) as '(?P<name>[^']+)' on http://(?P<host>[^:]+):(?P<port>\d+) "
                     r"\(Ctrl-C stops\)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*args):
    return subprocess.Popen([sys.executable, "-m", "labkit", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def first_line(process, timeout: float = 30.0) -> str:
    """The first line the process prints, waiting at most ``timeout`` seconds for it."""
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"nothing printed in {timeout} s")
    line = process.stdout.readline()
    assert line, ("the process ended before it said where it serves", process.wait(10), process.stderr.read())
    return line


def started(*args) -> tuple[subprocess.Popen, re.Match]:
    """``serve *args`` running, and the match of its first line."""
    process = serve(*args)
    try:
        line = first_line(process)
        match = SERVING.fullmatch(line.rstrip("\n"))
        assert match, line
    except BaseException:
        kill(process)
        raise
    return process, match


def kill(process) -> None:
    """End the process if it still runs, and close its pipes."""
    if process.poll() is None:
        process.kill()
    process.wait(10)
    process.stdout.close()
    process.stderr.close()


def finish(process, timeout: float = 10.0) -> tuple[str, str]:
    """What the process prints from now until it exits (within ``timeout`` s)."""
    out, err = process.communicate(timeout=timeout)
    return out, err


# -- running a service ---------------------------------------------------------------


def test_a_service_runs_as_its_own_process_with_options():
    port = free_port()
    process, line = started("instance", "--port", str(port), "--set", "name=inv-7",
                            "--set", "work_ms=20", "--set", "healthy=false")
    try:
        assert line.group("service", "name", "host", "port") == ("instance", "inv-7", "127.0.0.1", str(port))
        url = f"http://127.0.0.1:{port}"
        # It accepts as soon as it says so; option values are JSON (numbers, true/false) where they parse.
        assert requests.get(url + "/faults", timeout=5).json() == {"work_ms": 20.0, "healthy": False}
        sick = requests.get(url + "/health", timeout=5)
        assert sick.status_code == 503 and "inv-7" in sick.json()["error"]
        assert requests.put(url + "/faults", json={"healthy": True}, timeout=5).json()["healthy"] is True
        answer = requests.get(url + "/whoami", timeout=5)
        assert answer.status_code == 200
        assert answer.json() == {"instance": "inv-7", "served": 1}
    finally:
        kill(process)


def test_port_0_picks_a_free_port_and_the_first_line_names_it():
    process, line = started("hello", "--port", "0")
    try:
        port = int(line.group("port"))
        assert port > 0 and line.group("name") == "hello" and line.group("host") == "127.0.0.1"
        answer = requests.get(f"http://127.0.0.1:{port}/hello", params={"name": "cli"}, timeout=5)
        assert answer.json() == {"message": "Hello, cli!"}
    finally:
        kill(process)


def test_a_connection_is_kept_alive_between_requests():
    process, line = started("chat", "--port", "0")
    try:
        connection = http.client.HTTPConnection("127.0.0.1", int(line.group("port")), timeout=5)
        try:
            connection.request("GET", "/messages?after=0")
            first = connection.getresponse()
            assert (first.status, json.loads(first.read())) == (200, {"messages": []})
            assert first.version == 11 and not first.will_close
            sock = connection.sock
            local = sock.getsockname()
            connection.request("POST", "/messages", body=json.dumps({"text": "hi"}),
                               headers={"Content-Type": "application/json"})
            second = connection.getresponse()
            assert (second.status, json.loads(second.read())) == (201, {"id": 1})
            connection.request("GET", "/messages?after=0")
            third = connection.getresponse()
            assert json.loads(third.read()) == {"messages": [{"id": 1, "text": "hi"}]}
            assert not third.will_close
            assert connection.sock is sock and sock.getsockname() == local  # one TCP connection for all three
        finally:
            connection.close()
    finally:
        kill(process)


def test_nothing_is_printed_per_request():
    process, line = started("hello", "--port", "0")
    try:
        url = f"http://127.0.0.1:{line.group('port')}"
        with requests.Session() as session:
            statuses = [session.get(url + "/hello", timeout=5).status_code,
                        session.get(url + "/nope", timeout=5).status_code,
                        session.post(url + "/hello", timeout=5).status_code,
                        session.get(url + "/hello", params={"name": " "}, timeout=5).status_code]
        assert statuses == [200, 404, 405, 400]
        with socket.create_connection(("127.0.0.1", int(line.group("port"))), timeout=5) as raw:
            raw.sendall(b"GET / HTTP/9.9\r\n\r\n")  # http.server answers with an error page and would log it
            assert b"Error response" in raw.makefile("rb").read()
        process.send_signal(signal.SIGTERM)
        out, err = finish(process)
        assert process.returncode == 0, err
        assert (out, err) == ("stopped\n", "")  # after the first line: no request log, no warning
    finally:
        kill(process)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_it_cleanly_and_answers_a_long_poll_at_once(signum):
    process, line = started("chat", "--port", "0")
    try:
        poll = socket.create_connection(("127.0.0.1", int(line.group("port"))), timeout=40)
        try:
            poll.sendall(b"GET /messages?after=0&wait_s=30 HTTP/1.1\r\nHost: chat\r\n\r\n")
            time.sleep(0.5)  # the server has taken the request and holds it
            with selectors.DefaultSelector() as selector:
                selector.register(poll, selectors.EVENT_READ)
                assert not selector.select(0), "the long poll was answered before the stop"
            signalled = time.monotonic()
            process.send_signal(signum)
            answer = b""
            while chunk := poll.recv(4096):  # until the server closes the connection
                answer += chunk
            answered = time.monotonic() - signalled
        finally:
            poll.close()
        out, err = finish(process, timeout=10)
        exited = time.monotonic() - signalled
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), answer
        assert json.loads(body) == {"messages": []}
        # "At once" against the 30 s the poll would wait: bounds far from both, since a loaded
        # machine (the whole suite on two cores) can take seconds to tear an interpreter down.
        assert answered < 10, f"the long poll was answered {answered:.1f} s after the signal, not at once"
        assert exited < 15, f"the process took {exited:.1f} s to exit"
        assert process.returncode == 0, err
        assert (out, err) == ("stopped\n", "")
    finally:
        kill(process)


#: Options that make a service quick to start: the sign-in service hashes its demo users' passwords.
QUICK = {"auth": ["--set", "time_cost=1", "--set", "memory_kib=64", "--set", "parallelism=1"]}


def test_every_service_serves_and_stops_cleanly_from_the_command_line():
    processes = {name: serve(name, "--port", "0", *QUICK.get(name, [])) for name in SERVICES}
    try:
        for name, process in processes.items():
            line = SERVING.fullmatch(first_line(process, timeout=60).rstrip("\n"))
            assert line and line.group("service") == name, (name, line)
        for process in processes.values():
            process.send_signal(signal.SIGTERM)
        for name, process in processes.items():
            out, err = finish(process)
            assert (process.returncode, out, err) == (0, "stopped\n", ""), name
    finally:
        for process in processes.values():
            kill(process)


# -- refusing to start -----------------------------------------------------------------


def test_a_port_in_use_exits_2_and_says_which_port():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = serve("hello", "--host", "127.0.0.1", "--port", str(port))
        try:
            out, err = finish(process, timeout=30)
        finally:
            kill(process)
    assert process.returncode == 2, (out, err)
    assert out == ""
    assert f"127.0.0.1:{port}" in err and "in use" in err, err
    assert err.startswith("serve: ") and "Traceback" not in err


@pytest.mark.parametrize("args, message", [
    (["instance", "--set", "name"], "--set wants OPTION=VALUE"),
    (["instance", "--set", "=red"], "--set wants OPTION=VALUE"),
    (["instance", "--set", "colour=red"], "'colour' is not a fault setting"),
    (["hello", "--set", "colour=red"], "unexpected keyword argument 'colour'"),
    (["instance", "--set", "work_ms=-5"], "work_ms must be a number of milliseconds from 0 to 10000, not -5"),
    (["instance", "--set", "name=two words"], "an instance's name must be"),
    (["no-such-service"], "no reference service 'no-such-service'"),
], ids=["no-equals", "no-option", "unknown-fault", "unknown-option", "bad-value", "bad-name", "unknown-service"])
def test_a_bad_serve_command_says_what_was_wrong(args, message):
    process = serve(*args, "--port", str(free_port()))
    try:
        out, err = finish(process, timeout=30)
    finally:
        kill(process)
    assert process.returncode == 2, (out, err)
    assert message in err
    assert out == "" and err.startswith("serve: ") and "Traceback" not in err


def test_every_service_can_be_created_with_its_defaults():
    from labkit.apps import create

    for name in SERVICES:
        assert create(name).name


IP = shutil.which("ip")


@pytest.fixture
def two_hosts():
    """Two network namespaces joined by a virtual cable: 10.231.0.1 (server) and 10.231.0.2 (client).

    The nearest thing to two machines on one: each has its own interfaces, addresses
    and loopback, and reaches the other only over the cable. Needs root and iproute2.
    """
    if os.geteuid() != 0 or IP is None:
        pytest.skip("network namespaces need root and iproute2's ip")
    tag = f"{os.getpid() % 100000}"
    server_ns, client_ns = f"lk-srv-{tag}", f"lk-cli-{tag}"

    def ip(*args):
        subprocess.run([IP, *args], check=True, capture_output=True, timeout=10)

    ip("netns", "add", server_ns)
    try:
        ip("netns", "add", client_ns)
        ip("link", "add", f"lks{tag}", "type", "veth", "peer", "name", f"lkc{tag}")
        for ns, dev, address in ((server_ns, f"lks{tag}", "10.231.0.1/24"), (client_ns, f"lkc{tag}", "10.231.0.2/24")):
            ip("link", "set", dev, "netns", ns)
            ip("-n", ns, "addr", "add", address, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            ip("-n", ns, "link", "set", "lo", "up")
        yield server_ns, client_ns
    finally:
        for ns in (server_ns, client_ns):
            subprocess.run([IP, "netns", "del", ns], capture_output=True, timeout=10)  # takes the cable with it


def test_a_service_answers_from_another_host(two_hosts):
    """As in the notebooks' "try it across machines": serve on one host, call from the other."""
    server_ns, client_ns = two_hosts
    server = subprocess.Popen([IP, "netns", "exec", server_ns, sys.executable, "-m", "labkit", "serve", "hello",
                               "--host", "10.231.0.1", "--port", "5001"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    call = textwrap.dedent("""
        import time, requests
        session = requests.Session()
        session.trust_env = False  # no proxy: straight over the cable
        for _ in range(300):
            try:
                print(session.get("http://10.231.0.1:5001/hello", params={"name": "other host"}, timeout=2).text)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        """)
    try:
        answer = subprocess.run([IP, "netns", "exec", client_ns, sys.executable, "-c", call],
                                capture_output=True, text=True, timeout=60)
        assert answer.returncode == 0, answer.stderr
        assert json.loads(answer.stdout) == {"message": "Hello, other host!"}
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(10)
