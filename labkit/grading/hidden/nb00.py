"""Hidden tests for notebook 00 (start here): q0.1 greet."""

from labkit.apps import create
from labkit.grading.authoring import Fail, Question, show

q01 = Question(
    "q0.1", "greet", params=("client", "base_url", "name"),
    hint='ask the service and return what it says: client.get(base_url + "/hello", params={"name": name}).json()["message"]',
)

_CALL_IT = ('call the service with the client you are given, '
            'client.get(base_url + "/hello", params={"name": name}), and return the "message" of its JSON')


def _expected(app, name: str) -> str:
    """What the hello service says to ``name`` (asked in-process, outside the trace)."""
    return app.test_client().get("/hello", query_string={"name": name}).get_json()["message"]


def _greet(run, app, server, client, base_url: str, name: str) -> None:
    call = run.call(client, base_url, name)
    expected = _expected(app, name)
    asked = call.receives(server, path="/hello")
    if not asked:
        raise Fail(f"for {name!r} it returned {show(call.value)} without asking the service (no request reached it)", _CALL_IT)
    if not any(e.src == client.name for e in asked):
        raise Fail(f"the request for {name!r} did not come from the client you were given "
                   f"(it came from {asked[0].src!r})", _CALL_IT)
    if not isinstance(call.value, str):
        raise Fail(f"for {name!r} it returned {show(call.value)}, not a string; the service says {expected!r}",
                   'return the message itself: response.json()["message"]')
    if call.value != expected:
        raise Fail(f"for {name!r} it returned {call.value!r}, but the service says {expected!r}",
                   'return the service\'s message unchanged: response.json()["message"]')


@q01.test("one name, straight to the service")
def _(run):
    app = create("hello")
    server = run.serve(app, "hello·check")
    _greet(run, app, server, run.client(), server.url, "Ada")


@q01.test("names with spaces and accents, through a link with 50 ms latency")
def _(run):
    app = create("hello")
    server = run.serve(app, "hello·check")
    link = run.link(server, latency_ms=50)
    client = run.client()
    for name in ("Grace Hopper", "Zoë", "Søren Ørsted", "李雷"):
        _greet(run, app, server, client, link.url, name)
