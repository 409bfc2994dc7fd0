"""labkit.Client: names its caller, times out by default, raises what requests raises."""

import time

import pytest
import requests

import labkit
from labkit.client import DEFAULT_TIMEOUT, describe


def test_the_client_timeout_applies_to_every_call(lab):
    server = lab.serve(lab.app("slow"))
    client = lab.client("impatient", timeout=0.2)
    start = time.perf_counter()
    with pytest.raises(requests.exceptions.ReadTimeout) as caught:
        client.get(server.url + "/sleep?s=0.5")
    assert time.perf_counter() - start < 0.45
    assert isinstance(caught.value, requests.exceptions.Timeout)
    assert isinstance(caught.value, requests.exceptions.RequestException)
    assert describe(caught.value) == "timeout"
    [error] = lab.trace.filter(kind="error")
    assert (error.src, error.dst, error.error, error.path) == ("slow", "impatient", "timeout", "/sleep")
    # A call's own timeout wins over the client's.
    assert client.get(server.url + "/sleep?s=0.3", timeout=2).text == "slept"


def test_a_client_has_a_default_timeout():
    client = labkit.Client("default")
    assert client.timeout == DEFAULT_TIMEOUT and 0 < DEFAULT_TIMEOUT <= 30
    client.close()


def test_connection_refused_is_requests_connection_error(lab):
    client = lab.client("alice", timeout=2)
    port = lab.closed_port()
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        client.get(f"http://127.0.0.1:{port}/")
    assert not isinstance(caught.value, requests.exceptions.Timeout)
    assert describe(caught.value) == "refused"
    [error] = lab.trace.filter(kind="error")
    assert (error.src, error.error) == (f"127.0.0.1:{port}", "refused")


def test_the_server_sees_the_callers_name(lab):
    server = lab.serve(lab.app("svc"))
    client = lab.client("carol", timeout=2)
    assert client.get(server.url + "/headers").json()["caller"] == "carol"
    assert {(e.src, e.dst) for e in lab.trace.filter(kind={"send", "receive"})} == {("carol", "svc")}
    assert repr(client) == "<Client 'carol'>"


def test_base_url_lets_calls_name_only_a_path(lab):
    server = lab.serve(lab.app("svc"))
    client = lab.client("dave", timeout=2, base_url=server.url)
    assert client.get("/").text == "ok"
    assert client.get("hits").json() == {"hits": 1}
    assert client.post("/echo", data=b"x").content == b"x"
    # A full URL still goes where it says.
    other = lab.serve(lab.app("other"))
    assert client.get(other.url + "/hits").json() == {"hits": 0}
    assert [e.dst for e in lab.trace.filter(kind="send")] == ["svc", "svc", "svc", "other"]


def test_every_method_is_traced_with_its_status(lab):
    server = lab.serve(lab.app("svc"))
    client = lab.client("erin", timeout=2)
    head = client.head(server.url + "/")
    statuses = [client.get(server.url + "/").status_code,
                head.status_code,
                client.post(server.url + "/echo", json={"a": 1}).status_code,
                client.put(server.url + "/").status_code,
                client.patch(server.url + "/").status_code,
                client.delete(server.url + "/").status_code]
    assert statuses == [200, 200, 200, 405, 405, 405]
    assert head.content == b"" and head.headers["Content-Length"] == "2"  # the headers of GET /, no body
    assert client.patch(server.url + "/echo").status_code == 405
    responses = lab.trace.filter(kind="response").events()[:6]
    assert [(e.method, e.status) for e in responses] == [
        ("HEAD", 200), ("GET", 200), ("POST", 200), ("PUT", 405), ("PATCH", 405), ("DELETE", 405)]
    receives = lab.trace.filter(kind="receive").events()[:6]
    assert [e.method for e in receives] == ["HEAD", "GET", "POST", "PUT", "PATCH", "DELETE"]


def test_the_callers_own_headers_are_kept(lab):
    server = lab.serve(lab.app("svc"))
    client = lab.client("frank", timeout=2)
    headers = {"X-Test": "1"}
    assert client.get(server.url + "/headers", headers=headers).json()["caller"] == "frank"
    assert headers == {"X-Test": "1"}  # not changed in place


@pytest.mark.parametrize("name", ["", "   ", None, 7])
def test_a_bad_name_is_a_value_error(name):
    with pytest.raises(ValueError, match="name"):
        labkit.Client(name)


def test_describe_is_exported_by_labkit():
    assert labkit.describe is describe
    assert labkit.describe(requests.exceptions.ReadTimeout()) == "timeout"


def test_describe_names_what_went_wrong():
    assert describe(requests.exceptions.ConnectTimeout()) == "connect timeout"
    assert describe(requests.exceptions.ReadTimeout()) == "timeout"
    assert describe(requests.exceptions.ConnectionError(ConnectionResetError(104, "reset"))) == "reset"
    assert describe(requests.exceptions.ConnectionError(ConnectionRefusedError(111, "no"))) == "refused"
    assert describe(ValueError("other")) == "ValueError"
