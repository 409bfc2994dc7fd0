"""labkit.etcd: a real three-member etcd cluster on loopback, its leases, watches and quorum."""

from __future__ import annotations

import os
import shutil
import textwrap
import threading
import time

import pytest

import orphans
from labkit import etcd


if shutil.which("etcd") is None:
    if os.environ.get("CI"):
        raise RuntimeError("etcd is not installed (CI is set: .ci/run installs etcd-server)")
    pytest.skip("etcd is not installed: apt-get install etcd-server", allow_module_level=True)


def _members(folder: str) -> set[int]:
    """The pids of the etcd processes whose data lives under ``folder`` (one cluster's members)."""
    return orphans.pids("etcd", folder)


@pytest.fixture(scope="module")
def cluster():
    with etcd.Cluster(members=3) as running:
        yield running


@pytest.fixture
def kv(cluster):
    with etcd.Etcd(cluster.endpoints) as client:
        yield client
        client.delete("/", prefix=True)


def test_keys_are_written_read_by_prefix_and_deleted(kv):
    first = kv.put("/services/shop/1", "http://127.0.0.1:5001")
    assert kv.put("/services/shop/2", "http://127.0.0.1:5002") > first  # every write a new revision
    kv.put("/services/cart/1", "http://127.0.0.1:5003")
    assert kv.get("/services/shop/", prefix=True) == {"/services/shop/1": "http://127.0.0.1:5001",
                                                      "/services/shop/2": "http://127.0.0.1:5002"}
    assert kv.delete("/services/shop/", prefix=True) == 2
    assert kv.get("/services/", prefix=True) == {"/services/cart/1": "http://127.0.0.1:5003"}


def test_a_key_on_a_lease_goes_when_heartbeats_stop(kv):
    kept, lapsed = kv.grant(ttl_s=1), kv.grant(ttl_s=1)
    kv.put("/services/shop/kept", "a", lease=kept)
    kv.put("/services/shop/lapsed", "b", lease=lapsed)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:  # three times the TTL: only the heartbeats keep "kept"
        assert kv.keepalive(kept) >= 1
        time.sleep(0.25)
    assert kv.get("/services/shop/", prefix=True) == {"/services/shop/kept": "a"}
    kv.revoke(kept)
    assert kv.get("/services/shop/", prefix=True) == {}


def test_a_watch_hears_every_change_at_once(kv):
    heard = []
    watcher = threading.Thread(target=lambda: heard.extend(kv.watch("/services/", prefix=True, seconds=2)))
    watcher.start()
    time.sleep(0.5)
    kv.put("/services/shop/1", "up")
    kv.delete("/services/shop/1")
    watcher.join(5)
    assert heard == [("PUT", "/services/shop/1", "up"), ("DELETE", "/services/shop/1", "")]


def test_list_then_watch_from_the_read_s_revision_misses_nothing(kv):
    kv.put("/listed/a", "1")
    listing = kv.get("/listed/", prefix=True)
    assert listing == {"/listed/a": "1"} and isinstance(listing, dict)
    assert listing.revision >= 1
    kv.put("/listed/b", "2")  # after the read, before the watch opens
    kv.delete("/listed/a")
    assert list(kv.watch("/listed/", prefix=True, seconds=1, start_revision=listing.revision + 1)) == [
        ("PUT", "/listed/b", "2"), ("DELETE", "/listed/a", "")]
    assert list(kv.watch("/listed/", prefix=True, seconds=0.5)) == []  # from now on: the two are missed
    assert kv.get("/listed/", prefix=True).revision > listing.revision
    with pytest.raises(ValueError):
        next(kv.watch("/listed/", start_revision=0))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="from 1 to 7"):
        etcd.Cluster(members=0)
    with pytest.raises(ValueError, match="at least one endpoint"):
        etcd.Etcd([])
    with pytest.raises(ValueError, match="ttl_s"):
        etcd.Etcd("http://127.0.0.1:9").grant(0)


def test_without_etcd_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(etcd.EtcdError, match="apt-get install etcd-server"):
        etcd.Cluster(members=1)


def test_two_of_three_keep_writing_one_of_three_refuses_writes_but_can_answer_stale():
    with etcd.Cluster(members=3) as cluster, etcd.Etcd(cluster.endpoints, timeout=1.5) as kv:
        kv.put("/k", "before")
        cluster.kill(0)
        assert kv.put("/k", "two of three") > 0  # a quorum (2 of 3) still commits
        cluster.kill(1)
        assert cluster.alive() == [False, False, True]
        with pytest.raises(etcd.EtcdError, match="kv/put"):
            kv.put("/k", "one of three")  # no quorum: the write is not committed
        with pytest.raises(etcd.EtcdError):
            kv.get("/k")  # a linearizable read needs the quorum too
        assert kv.get("/k", serializable=True) == {"/k": "two of three"}  # one member's own (possibly stale) copy
        cluster.restart(0)
        kv.put("/k", "quorum again")
        assert kv.get("/k") == {"/k": "quorum again"}
        with pytest.raises(ValueError, match="0 to 2"):
            cluster.kill(3)


def test_cluster_cycles_leave_no_member_or_folder():
    folders = []
    for _ in range(5):
        with etcd.Cluster(members=3) as cluster:
            folders.append(cluster.folder)
            assert len(_members(cluster.folder)) == 3
            with etcd.Etcd(cluster.endpoints) as kv:
                kv.put("/x", "y")
    assert not any(_members(folder) for folder in folders)
    assert not any(os.path.exists(folder) for folder in folders)


KERNEL = textwrap.dedent("""
    import threading
    from labkit import etcd
    cluster = etcd.Cluster(members=3)
    print(cluster.folder, flush=True)
    threading.Event().wait()
""")


def test_a_kernel_killed_with_sigkill_leaves_no_member():
    before, after = orphans.left_by_killed_kernel(KERNEL, "etcd")
    assert len(before) == 3
    assert not after, "etcd members outlived their kernel"
