"""The command line: every reference service runs as a process of its own, with options, on another host too."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest
import requests

from labkit.apps import SERVICES


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(*args):
    return subprocess.Popen([sys.executable, "-m", "labkit", "serve", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_a_service_runs_as_its_own_process_with_options():
    port = free_port()
    process = serve("instance", "--port", str(port), "--set", "label=inv-7")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/whoami", timeout=2)
                break
            except requests.ConnectionError:
                assert process.poll() is None and time.monotonic() < deadline, process.communicate()
                time.sleep(0.1)
        assert answer.status_code == 200
        assert answer.json()["instance"] == "inv-7"
    finally:
        process.terminate()
        process.wait(10)
        process.stdout.close()
        process.stderr.close()


@pytest.mark.parametrize("args, message", [
    (["instance", "--set", "label"], "--set wants OPTION=VALUE"),
    (["instance", "--set", "colour=red"], "unexpected keyword argument 'colour'"),
    (["no-such-service"], "no reference service 'no-such-service'"),
])
def test_a_bad_serve_command_says_what_was_wrong(args, message):
    process = serve(*args, "--port", str(free_port()))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 2, (out, err)
    assert message in err


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
        server.terminate()
        server.wait(10)
