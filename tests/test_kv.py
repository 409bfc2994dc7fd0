"""The key-value store of notebook 09 (labkit.apps.kv), against real sockets.

In memory it forgets everything when its process dies; on a database, copies share
their values and a new copy finds what an earlier one wrote. A copy that serves only
reads or only writes refuses the other feature with 405. Malformed input gets a JSON
4xx and changes nothing.
"""

from __future__ import annotations

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.apps import create, kv

import malformed


def test_write_then_read(lab):
    server = lab.serve(create("kv"), name="kv")
    client = lab.client(timeout=5)
    assert client.get(server.url + "/kv/colour").status_code == 404
    answer = client.put(server.url + "/kv/colour", json={"value": {"name": "teal", "rgb": [0, 128, 128]}})
    assert answer.status_code == 200
    assert answer.json() == {"key": "colour", "value": {"name": "teal", "rgb": [0, 128, 128]}}
    assert client.get(server.url + "/kv/colour").json() == answer.json()
    client.put(server.url + "/kv/colour", json={"value": "navy"})
    assert client.get(server.url + "/kv/colour").json()["value"] == "navy"
    assert client.get(server.url + "/stats").json() == {"reads": 3, "writes": 2, "serves": "both"}


def test_copies_on_one_database_share_their_values(lab, database_url):
    one = lab.serve(create("kv", name="kv-1", database=database_url), name="kv-1")
    two = lab.serve(create("kv", name="kv-2", database=database_url), name="kv-2")
    client = lab.client(timeout=5)
    client.put(one.url + "/kv/n", json={"value": 1}).raise_for_status()
    assert client.get(two.url + "/kv/n").json()["value"] == 1
    client.put(two.url + "/kv/n", json={"value": 2}).raise_for_status()
    assert client.get(one.url + "/kv/n").json()["value"] == 2
    one.stop()
    three = lab.serve(create("kv", name="kv-3", database=database_url), name="kv-3")  # a restart finds them
    assert client.get(three.url + "/kv/n").json()["value"] == 2


def test_a_copy_serves_only_its_feature(lab, tmp_path):
    database = f"sqlite:///{tmp_path / 'kv.sqlite3'}"
    reads = lab.serve(create("kv", name="reads", database=database, serves="reads"), name="reads")
    writes = lab.serve(create("kv", name="writes", database=database, serves="writes"), name="writes")
    client = lab.client(timeout=5)
    refused = client.put(reads.url + "/kv/k", json={"value": 1})
    assert refused.status_code == 405 and "reads only" in refused.json()["error"]
    assert client.get(writes.url + "/kv/k").status_code == 405
    client.put(writes.url + "/kv/k", json={"value": 1}).raise_for_status()
    assert client.get(reads.url + "/kv/k").json()["value"] == 1


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="serves must be one of"):
        create("kv", serves="deletes")
    with pytest.raises(ValueError, match="database must be"):
        create("kv", database="")


def test_a_crash_loses_the_memory_and_not_the_database(tmp_path):
    database = f"sqlite:///{tmp_path / 'kv.sqlite3'}"
    log = labkit.Trace()
    memory = labkit.spawn("kv", name="kv-memory", trace=log)
    disk = labkit.spawn("kv", name="kv-disk", trace=log, database=database)
    try:
        with requests.Session() as session:
            for node in (memory, disk):
                session.put(node.url + "/kv/k", json={"value": "kept?"}, timeout=5).raise_for_status()
                node.kill()
                node.restart()
            assert session.get(memory.url + "/kv/k", timeout=5).status_code == 404
            assert session.get(disk.url + "/kv/k", timeout=5).json()["value"] == "kept?"
    finally:
        memory.stop()
        disk.stop()


# -- malformed input ------------------------------------------------------------------------

ENDPOINTS = [("PUT", "/kv/{id}"), ("GET", "/kv/{id}"), ("GET", "/stats"), ("POST", "/kv/{id}"), ("DELETE", "/kv/{id}"),
             ("GET", "/{id}")]
bodies = malformed.bodies(["value", "key"])


@pytest.fixture(scope="module")
def service():
    app = create("kv")
    app.extensions["labkit"].memory["known"] = "value"
    with labkit.serve(app, name="kv·malformed", trace=labkit.Trace()) as server, requests.Session() as session:
        session.trust_env = False
        yield app.extensions["labkit"], server, session


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(service, data):
    store, server, session = service
    method, template = data.draw(st.sampled_from(ENDPOINTS), label="endpoint")
    key = data.draw(st.sampled_from(["known", "x" * (kv.MAX_KEY + 1)]) | st.text(min_size=1, max_size=20), label="id")
    path = template.replace("{id}", requests.utils.quote(key, safe=""))
    body = data.draw(bodies, label="body")
    before = dict(store.memory)
    response = session.request(method, server.url + path, data=body[1] if body else None,
                               headers={"Content-Type": body[0]} if body else {}, timeout=10)
    assert response.status_code < 500, (method, path, response.status_code, response.text[:200])
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/json", (method, path, response.text[:200])
        assert isinstance(response.json()["error"], str)
        assert store.memory == before
