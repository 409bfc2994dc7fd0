"""Malformed input never breaks a reference service of notebooks 00 and 01.

For every endpoint, hypothesis sends made-up paths, query strings and bodies (bad
JSON, JSON of the wrong shape, wrong types, bools for numbers, non-UTF-8 bytes,
huge bodies) to a real server on 127.0.0.1. The service must answer below 500;
when it rejects a request it answers a JSON ``{"error": ...}`` 4xx, and its state
is what it was before. (Each later service has the same test in its own file.)
"""

from __future__ import annotations

import math

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import labkit
from labkit.apps import create

import malformed

#: service -> (endpoints as (method, path with {id}), the GETs whose answers are its state)
SERVICES = {
    "hello": ([("GET", "/hello"), ("GET", "/"), ("POST", "/hello")], []),
    "chat": ([("POST", "/messages"), ("GET", "/messages"), ("PUT", "/messages/{id}")], ["/messages"]),
    "shop": ([("GET", "/orders"), ("GET", "/orders/{id}"), ("POST", "/orders/batch"), ("DELETE", "/orders/{id}")],
             ["/orders", "/orders/1", "/orders/50"]),
    "weather": ([("GET", "/forecast"), ("POST", "/forecast"), ("GET", "/{id}")], []),
}
#: Answers that are the service's lesson, not a failure: the weather service's /broken page is down on purpose.
DESIGNED = {("weather", "/broken")}

PARAMS = ["name", "after", "wait_s", "city", "ids", "id", "text"]

bodies = malformed.bodies(PARAMS)
query_values = (st.text(max_size=30) | st.sampled_from(malformed.ODD_TEXT) | st.integers().map(str)).filter(
    lambda v: not _is_long_wait(v))
queries = st.dictionaries(st.sampled_from(PARAMS) | st.text(min_size=1, max_size=8), query_values, max_size=4)
ids = malformed.path_ids()


def _is_long_wait(value: str) -> bool:
    """A valid long-poll wait would hold the request open: keep the test fast."""
    try:
        number = float(value)
    except ValueError:
        return False
    return math.isfinite(number) and 0.05 < number <= 30


@pytest.fixture(scope="module", params=list(SERVICES))
def service(request):
    name = request.param
    with labkit.serve(create(name), name=f"{name}·malformed", trace=labkit.Trace()) as server, \
            requests.Session() as session:
        session.trust_env = False
        yield name, server, session


def _state(name, server, session):
    return [session.get(server.url + path, timeout=10).json() for path in SERVICES[name][1]]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_input_gets_a_json_4xx_and_changes_nothing(service, data):
    name, server, session = service
    method, template = data.draw(st.sampled_from(SERVICES[name][0]), label="endpoint")
    path = template.replace("{id}", requests.utils.quote(data.draw(ids, label="id"), safe=""))
    body = data.draw(bodies, label="body")
    before = _state(name, server, session)
    response = session.request(method, server.url + path, params=data.draw(queries, label="query"),
                               data=body[1] if body else None,
                               headers={"Content-Type": body[0]} if body else {}, timeout=10)
    if (name, path) in DESIGNED:
        return
    assert response.status_code < 500, (method, path, response.status_code, response.text[:200])
    if response.status_code >= 400:
        assert response.headers["Content-Type"] == "application/json", (method, path, response.text[:200])
        error = response.json()["error"]
        assert isinstance(error, str) and error
        assert _state(name, server, session) == before
