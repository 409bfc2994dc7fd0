"""labkit.apps.kit, the service kit: apps whose errors are JSON, field checks, faults, forwarding, a clock.

Every request here goes to a real app served by labkit.serve on 127.0.0.1; the checks
and Faults are also called directly, as a service's options use them.
"""

from __future__ import annotations

import math
import random
import string
import threading
import time

import pytest
import requests
from flask import Blueprint, abort, request
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.exceptions import BadRequest

import labkit
from labkit.apps import kit
from labkit.errors import Invalid


def is_json_error(answer: requests.Response, status: int) -> str:
    """The sentence of a JSON error answer with this status (asserting that it is one)."""
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["Content-Type"] == "application/json"
    body = answer.json()
    assert list(body) == ["error"] and isinstance(body["error"], str) and body["error"].strip(), body
    return body["error"]


# -- make_app and state ------------------------------------------------------------------


class Box:
    """A service's state for these tests."""

    def __init__(self, value="boxed"):
        self.value = value


def test_make_app_keeps_the_state_and_serves_the_blueprints(lab):
    routes = Blueprint("box", __name__)

    @routes.get("/value")
    def value():
        return {"value": kit.state().value}

    other = Blueprint("other", __name__)

    @other.get("/other")
    def other_route():
        return {"state_is_none": kit.state() is None}

    box = Box("inside")
    app = kit.make_app("boxes", box, routes)
    assert app.name == "boxes"
    assert app.extensions["labkit"] is box
    assert app.config["MAX_CONTENT_LENGTH"] == kit.MAX_BODY_BYTES == 64 * 1024
    server = lab.serve(app)
    assert server.name == "boxes"
    client = lab.client("c", timeout=2)
    assert client.get(server.url + "/value").json() == {"value": "inside"}
    box.value = "changed"  # the very object, not a copy
    assert client.get(server.url + "/value").json() == {"value": "changed"}

    bare = lab.serve(kit.make_app("bare", None, other))
    assert bare.name == "bare" and "bare" in [s.name for s in labkit.running()]
    assert client.get(bare.url + "/other").json() == {"state_is_none": True}


@pytest.mark.parametrize("name", ["", "   ", 5, None, "x" * 101])
def test_make_app_refuses_a_bad_name(name):
    with pytest.raises(Invalid, match="a service's name"):
        kit.make_app(name)


def errors_app(**kwargs):
    routes = Blueprint("errors", __name__)

    @routes.get("/conflict")
    def conflict():
        abort(409, "the thing is taken; pick another")

    @routes.get("/teapot")
    def teapot():
        abort(418)

    @routes.get("/invalid")
    def invalid():
        raise Invalid("n must be a whole number, not 'x'")

    @routes.get("/bug")
    def bug():
        raise RuntimeError("a bug in the view")

    @routes.post("/read")
    def read():
        return {"bytes": len(request.get_data())}

    return kit.make_app("errors", None, routes, **kwargs)


def test_every_error_is_json_with_one_sentence(lab):
    server = lab.serve(errors_app())
    client = lab.client("c", timeout=2)
    url = server.url
    assert is_json_error(client.get(url + "/conflict"), 409) == "the thing is taken; pick another"
    assert is_json_error(client.get(url + "/invalid"), 400) == "n must be a whole number, not 'x'"
    assert is_json_error(client.get(url + "/teapot"), 418)
    assert is_json_error(client.get(url + "/bug"), 500)
    # Flask's own errors too, with sentences that say what was wrong.
    assert is_json_error(client.get(url + "/no/such/page"), 404) == "no such page: /no/such/page"
    refused = client.delete(url + "/conflict")
    assert is_json_error(refused, 405) == "DELETE is not allowed on /conflict"
    assert set(refused.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "HEAD"}  # what is allowed
    assert is_json_error(client.get(url + "/read"), 405) == "GET is not allowed on /read"


def test_a_body_above_the_limit_is_a_413_in_json(lab):
    server = lab.serve(errors_app(max_body_bytes=100))
    with requests.Session() as session:
        assert session.post(server.url + "/read", data=b"x" * 100, timeout=2).json() == {"bytes": 100}
        too_big = session.post(server.url + "/read", data=b"x" * 101, timeout=2)
        assert is_json_error(too_big, 413) == "the body is too large: send at most 100 bytes"
        # The connection still serves the next request.
        assert session.post(server.url + "/read", data=b"ok", timeout=2).json() == {"bytes": 2}


def test_the_default_body_limit_is_max_body_bytes(lab):
    server = lab.serve(errors_app())
    client = lab.client("c", timeout=5)
    assert client.post(server.url + "/read", data=b"x" * kit.MAX_BODY_BYTES).json() == {"bytes": kit.MAX_BODY_BYTES}
    sentence = is_json_error(client.post(server.url + "/read", data=b"x" * (kit.MAX_BODY_BYTES + 1)), 413)
    assert str(kit.MAX_BODY_BYTES) in sentence


# -- refuse ------------------------------------------------------------------------------


def test_refuse_answers_with_the_status_the_sentence_and_the_headers(lab):
    routes = Blueprint("refusing", __name__)

    @routes.get("/busy")
    def busy():
        kit.refuse(429, "too many requests; try again in 3 s", **{"Retry-After": "3"})

    @routes.get("/private")
    def private():
        kit.refuse(401, "send a token", **{"WWW-Authenticate": 'Bearer realm="notes"'})

    @routes.get("/other")
    def other():
        kit.refuse(503, "down for a moment", **{"Retry-After": "1", "X-Reason": "maintenance"})

    server = lab.serve(kit.make_app("refusing", None, routes))
    client = lab.client("c", timeout=2)
    busy_answer = client.get(server.url + "/busy")
    assert is_json_error(busy_answer, 429) == "too many requests; try again in 3 s"
    assert busy_answer.headers["Retry-After"] == "3"
    private_answer = client.get(server.url + "/private")
    assert is_json_error(private_answer, 401) == "send a token"
    assert private_answer.headers["WWW-Authenticate"] == 'Bearer realm="notes"'
    other_answer = client.get(server.url + "/other")
    assert is_json_error(other_answer, 503) == "down for a moment"
    assert (other_answer.headers["Retry-After"], other_answer.headers["X-Reason"]) == ("1", "maintenance")


# -- the field checks, called directly ---------------------------------------------------------


def refused(check, value, *args, **kwargs) -> Invalid:
    """The Invalid that ``check(value, "the_field", *args)`` raises (asserting that it raises)."""
    with pytest.raises(Invalid) as caught:
        check(value, "the_field", *args, **kwargs)
    error = caught.value
    assert isinstance(error, ValueError) and isinstance(error, BadRequest) and isinstance(error, labkit.LabkitError)
    assert error.code == 400
    message = str(error)
    assert message.startswith("the_field must be"), message
    assert message.endswith(f"not {kit.short(value)}"), message  # it names the value refused
    return error


@pytest.mark.parametrize("value", ["hello", "a", "x" * 100, " padded ", "ünïcode ✓"])
def test_text_passes_printable_text(value):
    assert kit.text(value, "the_field") is value


@pytest.mark.parametrize("value", ["", "   ", "x" * 101, "tab\there", "line\nbreak", 5, None, b"bytes", ["a"]])
def test_text_refuses_what_is_not_printable_text_within_the_limit(value):
    error = refused(kit.text, value)
    assert "1 to 100 printable characters" in str(error)


def test_text_takes_its_limit():
    assert kit.text("x" * 1000, "the_field", limit=1000) == "x" * 1000
    assert "1 to 3 printable" in str(refused(kit.text, "abcd", limit=3))


@pytest.mark.parametrize("value", ["a", "inv-1", "peer_2.local", "A" * 64, "9lives"])
def test_name_passes_names(value):
    assert kit.name(value, "the_field") is value


@pytest.mark.parametrize("value", ["", "-lead", ".hidden", "two words", "a" * 65, "naïve", "slash/ed", 7, None])
def test_name_refuses_what_is_not_a_name(value):
    assert kit.NAME_RULE in str(refused(kit.name, value))


@pytest.mark.parametrize("value", [0, 1, 7, 10])
def test_whole_passes_whole_numbers_in_range(value):
    assert kit.whole(value, "the_field", 0, 10) is value


@pytest.mark.parametrize("value", [-1, 11, 1.0, 2.5, True, False, "3", None, float("nan")])
def test_whole_refuses_everything_else(value):
    assert "a whole number from 0 to 10" in str(refused(kit.whole, value, 0, 10))


@pytest.mark.parametrize("value, expected", [(0, 0.0), (3, 3.0), (2.5, 2.5), (10, 10.0), (-0.0, 0.0)])
def test_number_passes_finite_numbers_in_range_as_floats(value, expected):
    result = kit.number(value, "the_field", 0, 10)
    assert result == expected and type(result) is float


@pytest.mark.parametrize("value", [-0.5, 10.01, math.nan, math.inf, -math.inf, True, "5", None])
def test_number_refuses_everything_else(value):
    assert "a number from 0 to 10" in str(refused(kit.number, value, 0, 10))


def test_number_names_its_unit():
    assert "a number of milliseconds from 0 to 100" in str(refused(kit.number, 200, 0, 100, unit="milliseconds"))


@pytest.mark.parametrize("value", [0.001, 1, 30, 29.5])
def test_positive_passes_numbers_above_0_up_to_the_limit(value):
    result = kit.positive(value, "the_field", 30)
    assert result == value and type(result) is float


@pytest.mark.parametrize("value", [0, -1, 30.001, math.nan, math.inf, True, "1", None])
def test_positive_refuses_everything_else(value):
    assert "a number of seconds above 0 and at most 30" in str(refused(kit.positive, value, 30))


def test_positive_names_its_unit():
    assert "a number of bytes above 0" in str(refused(kit.positive, 0, 10, unit="bytes"))


@pytest.mark.parametrize("value", [0, 0.0, 0.25, 1, 1.0])
def test_probability_passes_0_to_1(value):
    assert kit.probability(value, "the_field") == float(value)
    assert type(kit.probability(value, "the_field")) is float


@pytest.mark.parametrize("value", [-0.01, 1.01, 2, math.nan, True, "0.5", None])
def test_probability_refuses_everything_else(value):
    assert "from 0 to 1" in str(refused(kit.probability, value))


@pytest.mark.parametrize("value", [True, False])
def test_flag_passes_true_and_false(value):
    assert kit.flag(value, "the_field") is value


@pytest.mark.parametrize("value", [1, 0, "true", "false", None, [], 1.0])
def test_flag_refuses_everything_else(value):
    assert "true or false" in str(refused(kit.flag, value))


@pytest.mark.parametrize("value, expected", [
    ("http://127.0.0.1:5001", "http://127.0.0.1:5001"),
    ("http://127.0.0.1:5001/", "http://127.0.0.1:5001"),
    ("https://example.com:443", "https://example.com:443"),
    ("http://[::1]:8080/", "http://[::1]:8080"),
])
def test_url_passes_a_base_url_without_its_trailing_slash(value, expected):
    assert kit.url(value, "the_field") == expected


@pytest.mark.parametrize("value", [
    "http://127.0.0.1", "127.0.0.1:5001", "ftp://127.0.0.1:21", "http://:5001", "http://127.0.0.1:5001/path",
    "http://127.0.0.1:5001?q=1", "http://127.0.0.1:5001#top", "http://127.0.0.1:99999", "http://[::1:80",
    "http://" + "a" * 300 + ":1", "", 5001, None,
])
def test_url_refuses_what_is_not_a_base_url(value):
    assert "a base URL" in str(refused(kit.url, value))


def test_short_quotes_a_value_cut_to_its_limit():
    assert kit.short("abc") == "'abc'"
    assert kit.short(5) == "5"
    long = kit.short("x" * 200)
    assert len(long) == 60 and long.startswith("'xxx") and long.endswith("...")
    assert len(kit.short(list(range(100)), limit=20)) == 20
    assert len(refused(kit.text, "x" * 500).description) < 200  # a refusal never quotes a huge value whole


# -- properties of the checks -----------------------------------------------------------------

ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=120),
                     st.binary(max_size=5), st.lists(st.integers(), max_size=2))


@settings(max_examples=300, deadline=None)
@given(value=ANYTHING, low=st.integers(-1000, 1000), span=st.integers(0, 2000))
def test_whole_accepts_exactly_the_ints_in_range_and_never_bools(value, low, span):
    high = low + span
    if type(value) is int and low <= value <= high:
        assert kit.whole(value, "n", low, high) is value
    else:
        with pytest.raises(Invalid, match=r"^n must be a whole number"):
            kit.whole(value, "n", low, high)


@settings(max_examples=300, deadline=None)
@given(value=ANYTHING, low=st.floats(-1e6, 1e6), span=st.floats(0, 1e6))
def test_number_accepts_exactly_the_finite_numbers_in_range(value, low, span):
    high = low + span
    if type(value) in (int, float) and math.isfinite(value) and low <= value <= high:
        assert kit.number(value, "x", low, high) == float(value)
    else:
        with pytest.raises(Invalid, match=r"^x must be a number"):
            kit.number(value, "x", low, high)


@settings(max_examples=300, deadline=None)
@given(value=ANYTHING)
def test_positive_and_probability_accept_exactly_their_ranges(value):
    real = type(value) in (int, float) and math.isfinite(value)
    if real and 0 < value <= 5:
        assert kit.positive(value, "s", 5) == float(value)
    else:
        with pytest.raises(Invalid):
            kit.positive(value, "s", 5)
    if real and 0 <= value <= 1:
        assert kit.probability(value, "p") == float(value)
    else:
        with pytest.raises(Invalid):
            kit.probability(value, "p")


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(max_size=120), ANYTHING))
def test_text_accepts_exactly_short_printable_text(value):
    if isinstance(value, str) and value.strip() and len(value) <= 100 and value.isprintable():
        assert kit.text(value, "t") is value
    else:
        with pytest.raises(Invalid, match=r"^t must be 1 to 100 printable characters"):
            kit.text(value, "t")


NAME_CHARS = string.ascii_letters + string.digits + "._-"


@settings(max_examples=300, deadline=None)
@given(value=st.one_of(st.text(alphabet=NAME_CHARS + " /é\n", max_size=70), ANYTHING))
def test_name_accepts_exactly_the_names_of_the_rule(value):
    rule = (isinstance(value, str) and 1 <= len(value) <= 64 and all(c in NAME_CHARS for c in value)
            and value[0] in string.ascii_letters + string.digits)
    if rule:
        assert kit.name(value, "n") is value
    else:
        with pytest.raises(Invalid, match=r"^n must be 1 to 64 letters"):
            kit.name(value, "n")


@settings(max_examples=200, deadline=None)
@given(scheme=st.sampled_from(["http", "https"]),
       host=st.sampled_from(["127.0.0.1", "localhost", "example.com", "10.0.0.7", "[::1]"]),
       port=st.integers(0, 65535), slash=st.booleans())
def test_url_accepts_every_base_url_and_strips_its_slash(scheme, host, port, slash):
    base = f"{scheme}://{host}:{port}"
    assert kit.url(base + ("/" if slash else ""), "u") == base


# -- the checks inside a request ---------------------------------------------------------------

CHECKS = {
    "text": lambda v: kit.text(v, "value"),
    "name": lambda v: kit.name(v, "value"),
    "whole": lambda v: kit.whole(v, "value", 1, 5),
    "number": lambda v: kit.number(v, "value", 0, 10),
    "positive": lambda v: kit.positive(v, "value", 10),
    "probability": lambda v: kit.probability(v, "value"),
    "flag": lambda v: kit.flag(v, "value"),
    "url": lambda v: kit.url(v, "value"),
}


@pytest.fixture
def checker(lab):
    routes = Blueprint("checks", __name__)

    @routes.post("/check/<kind>")
    def check(kind):
        return {"value": CHECKS[kind](kit.body('{"value": 1}').get("value"))}

    @routes.post("/key")
    def key():
        return {"key": kit.idempotency_key()}

    server = lab.serve(kit.make_app("checks", None, routes))
    client = lab.client("c", timeout=2)
    return lambda path, **kwargs: client.post(server.url + path, **kwargs)


@pytest.mark.parametrize("kind, good, result", [
    ("text", "hi", "hi"), ("name", "inv-1", "inv-1"), ("whole", 3, 3), ("number", 2, 2.0),
    ("positive", 0.5, 0.5), ("probability", 1, 1.0), ("flag", False, False),
    ("url", "http://127.0.0.1:80/", "http://127.0.0.1:80"),
])
def test_a_good_field_passes_through_a_request(checker, kind, good, result):
    answer = checker(f"/check/{kind}", json={"value": good})
    assert (answer.status_code, answer.json()) == (200, {"value": result})


@pytest.mark.parametrize("kind, bad", [
    ("text", ""), ("name", "two words"), ("whole", 6), ("whole", True), ("number", "5"), ("positive", 0),
    ("probability", 1.5), ("flag", "yes"), ("url", "http://nowhere"), ("text", None),
])
def test_a_bad_field_is_a_400_naming_the_field_and_the_value(checker, kind, bad):
    sentence = is_json_error(checker(f"/check/{kind}", json={"value": bad}), 400)
    assert sentence.startswith("value must be") and sentence.endswith(f"not {kit.short(bad)}"), sentence


@pytest.mark.parametrize("data", [b"[1, 2]", b'"text"', b"5", b"null", b"{not json", b""])
def test_a_body_that_is_not_a_json_object_is_a_400(checker, data):
    sentence = is_json_error(checker("/check/whole", data=data), 400)
    assert sentence == 'send a JSON object such as {"value": 1}'


def test_body_reads_an_object_whatever_the_content_type(checker):
    answer = checker("/check/whole", data=b'{"value": 4}', headers={"Content-Type": "text/plain"})
    assert answer.json() == {"value": 4}


@pytest.mark.parametrize("key", ["k", "order-42/retry", "x" * 100, "!~"])
def test_a_good_idempotency_key_is_read(checker, key):
    assert checker("/key", headers={"Idempotency-Key": key}).json() == {"key": key}


def test_no_idempotency_key_is_none(checker):
    assert checker("/key").json() == {"key": None}


@pytest.mark.parametrize("key", ["two words", "x" * 101, "", "caf\xe9"])
def test_a_malformed_idempotency_key_is_a_400(checker, key):
    sentence = is_json_error(checker("/key", headers={"Idempotency-Key": key}), 400)
    assert "Idempotency-Key" in sentence


# -- Faults ------------------------------------------------------------------------------------


def rules():
    return {
        "work_ms": (0.0, lambda v, f: kit.number(v, f, 0, 10_000, unit="milliseconds")),
        "error_rate": (0.0, kit.probability),
        "healthy": (True, kit.flag),
    }


def test_faults_start_at_their_defaults_and_change_with_checked_values():
    faults = kit.Faults(rules())
    assert faults.snapshot() == {"work_ms": 0.0, "error_rate": 0.0, "healthy": True}
    now = faults.configure(work_ms=50, healthy=False)
    assert now == {"work_ms": 50.0, "error_rate": 0.0, "healthy": False}
    assert type(now["work_ms"]) is float  # as the check returned it
    assert faults["work_ms"] == 50.0 and faults["healthy"] is False
    assert faults.snapshot() == now
    copy = faults.snapshot()
    copy["work_ms"] = 1
    assert faults["work_ms"] == 50.0  # a snapshot is a copy
    assert faults.configure() == now  # no change: the settings as they are


def test_faults_take_their_first_values_and_check_them():
    assert kit.Faults(rules(), {"error_rate": 0.5}).snapshot() == {"work_ms": 0.0, "error_rate": 0.5, "healthy": True}
    assert kit.Faults(rules(), None).snapshot() == kit.Faults(rules()).snapshot()
    with pytest.raises(Invalid, match="error_rate must be a number from 0 to 1, not 2"):
        kit.Faults(rules(), {"error_rate": 2})
    with pytest.raises(Invalid, match="'colour' is not a fault setting"):
        kit.Faults(rules(), {"colour": "red"})


def test_a_setting_may_have_any_name():
    odd = {name: (0, lambda v, f: kit.whole(v, f, 0, 9)) for name in ("self", "values", "on_change", "changes")}
    faults = kit.Faults(odd, {"values": 1, "on_change": 2})
    assert faults.configure(self=3, changes=4) == {"self": 3, "values": 1, "on_change": 2, "changes": 4}


def watched(values=None):
    """Faults whose on_change notes the settings it sees, and that list (emptied after construction)."""
    seen, made = [], []
    faults = kit.Faults(rules(), values, on_change=lambda: seen.append(made[0].snapshot() if made else None))
    made.append(faults)
    seen.clear()
    return faults, seen


def test_one_bad_value_in_a_change_changes_nothing():
    faults, changes = watched()
    faults.configure(work_ms=10)
    before = faults.snapshot()
    assert changes == [before]
    with pytest.raises(Invalid, match=r"error_rate must be a number from 0 to 1, not 1\.5"):
        faults.configure(work_ms=99, error_rate=1.5, healthy=False)
    with pytest.raises(Invalid, match="healthy must be true or false"):
        faults.configure(healthy="no", work_ms=1)
    assert faults.snapshot() == before
    assert changes == [before]  # on_change runs only after a change


def test_an_unknown_setting_is_refused_and_nothing_changes():
    faults = kit.Faults(rules())
    with pytest.raises(Invalid) as caught:
        faults.configure(work_ms=5, slow_ms=100)
    assert str(caught.value) == ("'slow_ms' is not a fault setting of this service; "
                                 "the settings are work_ms, error_rate, healthy")
    assert faults["work_ms"] == 0.0


def test_on_change_is_called_after_each_change_and_sees_it():
    faults, seen = watched({"work_ms": 1})
    faults.configure(work_ms=2)
    faults.configure(work_ms=3, error_rate=0.1)
    assert [s["work_ms"] for s in seen] == [2.0, 3.0]
    assert seen[-1] == {"work_ms": 3.0, "error_rate": 0.1, "healthy": True}


def test_faults_change_all_at_once_under_concurrent_configure_and_snapshot():
    """Two settings changed together are never seen half-changed; no change is lost."""
    calls = []
    both = {"a": (0, lambda v, f: kit.whole(v, f, 0, 10**6)), "b": (0, lambda v, f: kit.whole(v, f, 0, 10**6))}
    faults = kit.Faults(both, on_change=lambda: calls.append(1))
    calls.clear()
    writers, readers, rounds = 6, 6, 2000
    start = threading.Barrier(writers + readers)
    torn, last = [], {}

    def write(n):
        rng = random.Random(n)
        start.wait()
        for _ in range(rounds):
            value = rng.randrange(10**6)
            now = faults.configure(a=value, b=value)
            if now["a"] != now["b"]:
                torn.append(now)
        last[n] = value

    def read():
        start.wait()
        for _ in range(rounds):
            snapshot = faults.snapshot()
            if snapshot["a"] != snapshot["b"]:
                torn.append(snapshot)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    threads += [threading.Thread(target=read) for _ in range(readers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads)
    assert torn == []
    assert len(calls) == writers * rounds
    final = faults.snapshot()
    assert final["a"] == final["b"] and final["a"] in last.values()


# -- the faults blueprint ----------------------------------------------------------------------


class Faulty:
    def __init__(self):
        self.faults = kit.Faults(rules())


def test_the_faults_routes_read_and_change_the_settings(lab):
    state = Faulty()
    server = lab.serve(kit.make_app("faulty", state, kit.faults))
    client = lab.client("operator", timeout=2)
    url = server.url + "/faults"
    assert client.get(url).json() == {"work_ms": 0.0, "error_rate": 0.0, "healthy": True}
    changed = client.put(url, json={"work_ms": 25, "healthy": False})
    assert (changed.status_code, changed.json()) == (200, {"work_ms": 25.0, "error_rate": 0.0, "healthy": False})
    assert state.faults.snapshot() == changed.json()
    state.faults.configure(error_rate=0.5)  # a change made in code shows at once
    assert client.get(url).json()["error_rate"] == 0.5


def test_a_bad_put_to_faults_is_a_400_and_changes_nothing(lab):
    state = Faulty()
    server = lab.serve(kit.make_app("faulty", state, kit.faults))
    client = lab.client("operator", timeout=2)
    url = server.url + "/faults"
    before = client.get(url).json()
    assert "error_rate must be a number from 0 to 1" in is_json_error(
        client.put(url, json={"work_ms": 5, "error_rate": 3}), 400)
    assert "'slow_ms' is not a fault setting" in is_json_error(client.put(url, json={"slow_ms": 5}), 400)
    assert "send a JSON object" in is_json_error(client.put(url, json=[1]), 400)
    assert is_json_error(client.post(url, json={}), 405) == "POST is not allowed on /faults"
    assert client.get(url).json() == before == state.faults.snapshot()


# -- forward -----------------------------------------------------------------------------------


def upstream_app():
    routes = Blueprint("upstream", __name__)

    @routes.route("/thing", methods=["GET", "POST", "PUT"])
    def thing():
        body = f"{request.method} {request.get_data(as_text=True)} {request.headers.get('X-Asked', '-')}"
        return body, 201, {"Content-Type": "text/plain; charset=utf-8", "Location": "/thing/7",
                           "Idempotent-Replayed": "true", "Retry-After": "2",
                           "WWW-Authenticate": "Bearer", "X-Internal": "secret"}

    @routes.get("/missing")
    def missing():
        abort(404, "no thing 8")

    return kit.make_app("upstream", None, routes)


def front_app(upstream_url: str, client: labkit.Client):
    routes = Blueprint("front", __name__)

    @routes.route("/<path:rest>", methods=["GET", "POST", "PUT"])
    def passed_on(rest):
        return kit.forward(kit.state(), request.method, f"{upstream_url}/{rest}", service="the upstream",
                           data=request.get_data(), headers={"X-Asked": request.headers.get("X-Asked", "")})

    return kit.make_app("front", client, routes)  # a Client is a state: the server closes it


def test_forward_passes_the_status_the_body_and_the_listed_headers_back(lab):
    upstream = lab.serve(upstream_app())
    front = lab.serve(front_app(upstream.url, labkit.Client("front", timeout=2, trace=lab.trace)))
    client = lab.client("alice", timeout=5)
    answer = client.post(front.url + "/thing", data=b"payload", headers={"X-Asked": "yes"})
    assert answer.status_code == 201
    assert answer.text == "POST payload yes"  # the method, the body and the headers went on
    assert answer.headers["Content-Type"] == "text/plain; charset=utf-8"
    for header in ("Location", "Idempotent-Replayed", "Retry-After", "WWW-Authenticate"):
        assert answer.headers[header] == {"Location": "/thing/7", "Idempotent-Replayed": "true",
                                          "Retry-After": "2", "WWW-Authenticate": "Bearer"}[header]
    assert set(kit.PASSED_BACK) == {"Content-Type", "Idempotent-Replayed", "Retry-After", "WWW-Authenticate",
                                    "Location"}
    assert "X-Internal" not in answer.headers  # only the listed headers
    missing = client.get(front.url + "/missing")
    assert is_json_error(missing, 404) == "no thing 8"  # an error answer passes back as it is
    # The front called the upstream as "front", inside alice's trace.
    [inner] = lab.trace.filter(kind="send", node="upstream").filter(path="/thing")
    [outer] = lab.trace.filter(kind="send", node="alice").filter(path="/thing")
    assert (inner.src, inner.trace_id) == ("front", outer.trace_id)


def test_forward_answers_504_when_the_upstream_is_slow(lab):
    upstream = lab.serve(upstream_app())
    slow = lab.link(upstream, latency_ms=(0, 1500))
    front = lab.serve(front_app(slow.url, labkit.Client("front", timeout=0.3, trace=lab.trace)))
    client = lab.client("alice", timeout=5)
    start = time.perf_counter()
    answer = client.get(front.url + "/thing")
    assert time.perf_counter() - start < 1.2
    assert is_json_error(answer, 504) == "the upstream did not answer in time; try again"
    assert [e.error for e in lab.trace.filter(kind="error", node="front")] == ["timeout"]


def test_forward_answers_502_when_the_upstream_is_down(lab):
    upstream = lab.serve(upstream_app())
    down = lab.link(upstream, down=True)
    front = lab.serve(front_app(down.url, labkit.Client("front", timeout=2, trace=lab.trace)))
    client = lab.client("alice", timeout=5)
    answer = client.get(front.url + "/thing")
    assert is_json_error(answer, 502) == "the upstream could not be reached (refused); try again"
    down.down = False  # back up: forwarded again
    assert client.get(front.url + "/thing").status_code == 201


# -- ManualClock -------------------------------------------------------------------------------


def test_a_manual_clock_moves_only_when_told():
    clock = kit.ManualClock()
    assert clock() == 0.0 and type(clock()) is float
    time.sleep(0.01)
    assert clock() == 0.0
    clock.advance(1.5)
    assert clock() == 1.5
    clock.advance(0)
    assert clock() == 1.5
    assert repr(clock) == "<ManualClock at 1.5 s>"
    later = kit.ManualClock(start=100)
    assert later() == 100.0 and type(later()) is float
    later.advance(2)
    assert later() == 102.0


@pytest.mark.parametrize("seconds", [-1, -0.001, math.nan, math.inf, "1", None, True])
def test_a_manual_clock_refuses_to_move_back_or_by_nonsense(seconds):
    clock = kit.ManualClock(start=5)
    with pytest.raises(Invalid, match="a clock moves forward only"):
        clock.advance(seconds)
    assert clock() == 5.0


def test_a_manual_clock_loses_no_advance_across_threads():
    clock = kit.ManualClock()
    threads = [threading.Thread(target=lambda: [clock.advance(1) for _ in range(2000)]) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert clock() == 16000.0
