"""etcd, the registry production uses, as a real cluster on this machine.

    >>> with labkit.etcd.Cluster(members=3) as cluster:       # doctest: +SKIP
    ...     kv = labkit.etcd.Etcd(cluster.endpoints)
    ...     lease = kv.grant(ttl_s=2)                          # a lease: the key goes when it is not kept alive
    ...     kv.put("/services/shop/1", "http://127.0.0.1:5001", lease=lease)
    ...     cluster.kill(0); cluster.kill(1)                  # no quorum: writes are refused

Each member is Debian's (or Ubuntu's) ``etcd`` binary, listening on 127.0.0.1 at ports
the system picked, with a data folder of its own in one temporary folder; ``close()``
(or leaving the ``with``) ends every member and removes the folder.

The client speaks to etcd's JSON gateway (etcd's documented HTTP mapping of its v3 gRPC
API: keys and values in base64) over ``requests``: nothing more to install, and every
call is an HTTP request a student can read. The gRPC client libraries for Python are
either unmaintained (python-etcd3) or need a code generator; the gateway needs neither.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import requests

from .errors import LabkitError
from .processes import dies_with_kernel, free_port


class EtcdError(LabkitError, RuntimeError):
    """etcd is missing, a member would not start, or the cluster refused a request."""


def binary() -> str:
    """The path of the etcd program; EtcdError saying how to install it when there is none."""
    found = shutil.which("etcd")
    if found is None:
        raise EtcdError("etcd is not installed here: on Debian or Ubuntu, `apt-get install etcd-server` "
                        "(Binder installs it from binder/apt.txt)")
    return found


def version(program: str) -> tuple[int, int]:
    """(major, minor) of the etcd ``program``, from ``etcd --version``."""
    said = subprocess.run([program, "--version"], capture_output=True, text=True, timeout=30).stdout
    for line in said.splitlines():
        if line.startswith("etcd Version:"):
            major, minor = line.split(":", 1)[1].strip().split(".")[:2]
            return int(major), int(minor)
    raise EtcdError(f"{program} --version did not say its version:\n{said}")


class Cluster:
    """``members`` etcd processes forming one cluster on 127.0.0.1: ``endpoints``, ``kill(i)``, ``restart(i)``."""

    def __init__(self, members: int = 3, *, timeout: float = 30.0):
        if isinstance(members, bool) or not isinstance(members, int) or not 1 <= members <= 7:
            raise ValueError(f"members is a whole number from 1 to 7 (3 or 5 in production), not {members!r}")
        self._etcd = binary()
        self._version = version(self._etcd)
        self.folder = tempfile.mkdtemp(prefix="labkit-etcd-")
        self.names = [f"etcd-{i}" for i in range(members)]
        self._ports = [(free_port(), free_port()) for _ in range(members)]  # (client, peer)
        self._processes: list[subprocess.Popen | None] = [None] * members
        self._token = os.path.basename(self.folder)
        try:
            for i in range(members):
                self._start(i, "new")
            for i in range(members):
                self._wait_healthy(i, timeout)
        except BaseException:
            self.close()
            raise

    @property
    def endpoints(self) -> list[str]:
        """Every member's client URL, such as http://127.0.0.1:PORT, dead members too."""
        return [f"http://127.0.0.1:{client}" for client, _ in self._ports]

    def alive(self) -> list[bool]:
        """Which members' processes are running."""
        return [p is not None and p.poll() is None for p in self._processes]

    def _start(self, i: int, state: str) -> None:
        client, peer = self._ports[i]
        cluster = ",".join(f"{name}=http://127.0.0.1:{p}" for name, (_, p) in zip(self.names, self._ports))
        command = [
            self._etcd, "--name", self.names[i], "--data-dir", os.path.join(self.folder, self.names[i]),
            "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", self._token,
            # loopback answers in microseconds: a fast election keeps the notebook's waits short
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        if self._version >= (3, 4):  # etcd 3.3 (Ubuntu 22.04's) logs with its older logger
            command += ["--logger", "zap", "--log-outputs", "stderr"]
        command = dies_with_kernel(command)
        log = open(os.path.join(self.folder, f"{self.names[i]}.log"), "ab")
        with log:
            self._processes[i] = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                                  start_new_session=True)

    def _wait_healthy(self, i: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            process = self._processes[i]
            if process.poll() is not None:
                raise EtcdError(f"etcd member {self.names[i]} exited with {process.returncode}:\n{self._tail(i)}")
            with contextlib.suppress(requests.RequestException, ValueError):
                if requests.get(self.endpoints[i] + "/health", timeout=1).json().get("health") == "true":
                    return
            if time.monotonic() > deadline:
                raise EtcdError(f"etcd member {self.names[i]} was not healthy within {timeout:g} s:\n{self._tail(i)}")
            time.sleep(0.05)

    def _tail(self, i: int, lines: int = 15) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.folder, f"{self.names[i]}.log"), "rb") as log:
            return b"\n".join(log.read().splitlines()[-lines:]).decode(errors="replace")
        return ""

    def kill(self, i: int) -> None:
        """SIGKILL member ``i``: a crash. Its data folder stays, so ``restart(i)`` brings it back."""
        self._check(i)
        process = self._processes[i]
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()

    def restart(self, i: int, timeout: float = 30.0) -> None:
        """Start member ``i`` again from its data folder (killing it first if it runs) and wait until it is healthy."""
        self.kill(i)
        self._start(i, "existing")
        self._wait_healthy(i, timeout)

    def _check(self, i: int) -> None:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < len(self.names):
            raise ValueError(f"the cluster's members are 0 to {len(self.names) - 1}, not {i!r}")

    def close(self) -> None:
        """End every member and remove the data folders."""
        for process in self._processes:
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGKILL)
                process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<etcd Cluster: {sum(self.alive())} of {len(self.names)} members running>"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(b64: str) -> str:
    return base64.b64decode(b64).decode()


def _prefix_end(prefix: str) -> str:
    """The key just past every key that starts with ``prefix`` (etcd's range_end)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


class Listing(dict):
    """{key: value}, as read by :meth:`Etcd.get`, with ``revision``: the cluster's revision when it was read.

    Watching from ``revision + 1`` (``Etcd.watch(..., start_revision=listing.revision + 1)``) hears
    every change made after the read, even one made before the watch was opened: list, then watch.
    """

    revision: int = 0


class Etcd:
    """A small etcd v3 client over the JSON gateway: keys, leases and watches.

    ``endpoints`` are tried in turn (a dead member is skipped); ``timeout`` bounds each
    request. A write the cluster cannot commit (no quorum) raises EtcdError.
    """

    def __init__(self, endpoints, *, timeout: float = 2.0):
        self.endpoints = [endpoints] if isinstance(endpoints, str) else list(endpoints)
        if not self.endpoints:
            raise ValueError("an etcd client needs at least one endpoint, such as http://127.0.0.1:2379")
        self.timeout = timeout
        self._session = requests.Session()
        self._apis: dict[str, str] = {}

    def _api(self, endpoint: str) -> str:
        """The gateway's path on ``endpoint``: /v3 since etcd 3.4, /v3beta in etcd 3.3."""
        if endpoint not in self._apis:
            said = self._session.get(f"{endpoint}/version", timeout=self.timeout).json()
            self._apis[endpoint] = "/v3beta" if said.get("etcdserver", "").startswith("3.3.") else "/v3"
        return endpoint + self._apis[endpoint]

    def _call(self, path: str, body: dict) -> dict:
        problems = []
        for endpoint in self.endpoints:
            try:
                answer = self._session.post(f"{self._api(endpoint)}/{path}", data=json.dumps(body),
                                            timeout=self.timeout)
            except requests.RequestException as error:
                problems.append(f"{endpoint}: {type(error).__name__}")
                continue
            reply = answer.json() if answer.content else {}
            if answer.status_code == 200:
                return reply
            problems.append(f"{endpoint}: {reply.get('error') or reply.get('message') or answer.status_code}")
        raise EtcdError(f"no etcd member did {path} (refused, timed out or unreachable): " + "; ".join(problems))

    def put(self, key: str, value: str, *, lease: int | None = None) -> int:
        """Set ``key`` to ``value`` (kept only while ``lease`` lives, if given); the cluster's new revision."""
        body = {"key": _b64(key), "value": _b64(value)}
        if lease is not None:
            body["lease"] = str(lease)
        return int(self._call("kv/put", body)["header"]["revision"])

    def get(self, key: str, *, prefix: bool = False, serializable: bool = False) -> Listing:
        """{key: value} for ``key`` (or every key under it, with ``prefix``), a dict whose
        ``revision`` is the revision the member answered at.

        By default a read is linearizable: it goes through the leader and needs a quorum.
        ``serializable=True`` lets one member answer from what it has (possibly stale).
        """
        body = {"key": _b64(key), "serializable": serializable}
        if prefix:
            body["range_end"] = _prefix_end(key)
        reply = self._call("kv/range", body)
        listing = Listing((_text(kv["key"]), _text(kv.get("value", ""))) for kv in reply.get("kvs", []))
        listing.revision = int(reply.get("header", {}).get("revision", 0))
        return listing

    def delete(self, key: str, *, prefix: bool = False) -> int:
        """Delete ``key`` (or every key under it); how many keys went."""
        body = {"key": _b64(key)}
        if prefix:
            body["range_end"] = _prefix_end(key)
        return int(self._call("kv/deleterange", body).get("deleted", 0))

    def grant(self, ttl_s: int) -> int:
        """A new lease of ``ttl_s`` seconds; its id."""
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or ttl_s < 1:
            raise ValueError(f"a lease's ttl_s is a whole number of seconds from 1, not {ttl_s!r}")
        return int(self._call("lease/grant", {"TTL": str(ttl_s)})["ID"])

    def keepalive(self, lease: int) -> int:
        """Renew ``lease`` once (a heartbeat); the seconds it has left (0: it had expired)."""
        reply = self._call("lease/keepalive", {"ID": str(lease)})
        return int(reply.get("result", reply).get("TTL", 0))

    def revoke(self, lease: int) -> None:
        """End ``lease`` now: every key attached to it goes."""
        self._call("lease/revoke", {"ID": str(lease)})

    def watch(self, key: str, *, prefix: bool = False, seconds: float = 5.0, start_revision: int | None = None):
        """Yield each change to ``key`` (or under it) as ("PUT" or "DELETE", key, value) for ``seconds``.

        From now on, or with ``start_revision`` from that revision on, changes already made
        included (``get(...).revision + 1``: every change after a read).
        """
        body = {"create_request": {"key": _b64(key)}}
        if prefix:
            body["create_request"]["range_end"] = _prefix_end(key)
        if start_revision is not None:
            if isinstance(start_revision, bool) or not isinstance(start_revision, int) or start_revision < 1:
                raise ValueError(f"start_revision is a revision from 1, not {start_revision!r}")
            body["create_request"]["start_revision"] = str(start_revision)
        deadline = time.monotonic() + seconds
        for endpoint in self.endpoints:
            try:
                stream = self._session.post(f"{self._api(endpoint)}/watch", data=json.dumps(body), stream=True,
                                            timeout=(self.timeout, max(deadline - time.monotonic(), 0.01)))
            except requests.RequestException:
                continue
            with stream:
                try:
                    for line in stream.iter_lines():
                        for event in json.loads(line).get("result", {}).get("events", []):
                            kv = event["kv"]
                            yield event.get("type", "PUT"), _text(kv["key"]), _text(kv.get("value", ""))
                        if time.monotonic() > deadline:
                            return
                except requests.RequestException:  # the time is up (a read timeout), or the member died
                    return
            return
        raise EtcdError("no etcd member answered the watch: " + ", ".join(self.endpoints))

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> "Etcd":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
