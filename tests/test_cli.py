"""The command line: every reference service runs as a process of its own, with options."""

from __future__ import annotations

import socket
import subprocess
import sys
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
