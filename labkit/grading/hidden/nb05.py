"""Hidden tests for notebook 05 (discovery).

q5.1 call_service: a client that survives dying instances and a registry that goes away. It
must give every request a short timeout and the whole call a deadline of DEADLINE_S, try
another instance when one fails, ask the registry again when all failed, keep the last list
the registry gave and use it while the registry cannot be reached or lists nobody, spread the calls, and raise
TimeoutError when the deadline passes with no answer.

q5.2 keep_registered: an instance's heartbeat loop (register, renew every ttl_s / 3, register
again on 404, survive an unreachable registry, deregister at the end).
"""

import time

import requests

from labkit.apps import create
from labkit import Link
from labkit.grading.authoring import AnswerRaised, Fail, Question, describe_error, is_a, show

#: The service the registry lists, and the path every call asks for.
SERVICE, PATH = "inventory", "/whoami"
#: The deadline the statement gives for one whole call, in seconds.
DEADLINE_S = 2.5
#: The longest one call may take: the deadline and a margin for a busy machine.
CALL_S = 3.0
#: A call that raises before this many seconds gave up before its deadline.
EARLIEST_GIVE_UP_S = 2.0
#: Seconds after the call starts when a replacement instance registers (test "every listed instance is dead").
REPLACEMENT_AT_S = 0.3

q51 = Question(
    "q5.1", "call_service", params=("client", "registry_url", "service", "path"),
    hint=("ask the registry for the instances (GET registry_url + '/services/' + service), try them one after "
          "another with a short timeout, and ask the registry again when every one of them failed"),
    hang_hint=("give every request a timeout, such as client.get(url, timeout=0.5): without one, an instance "
               "whose link drops every message holds your call forever"),
    time_limit=10,
)

_TRY_ANOTHER = ("catch requests.exceptions.RequestException around the call to one instance, then try the next "
                "instance in the list")
_NOT_THE_SAME = ("a dead instance stays dead for a while: after a connection error or a timeout move on to a "
                 "DIFFERENT instance instead of asking the same one again")
_RESOLVE_AGAIN = ("when every instance you know failed, pause briefly (0.2 s) and ask the registry again: "
                  "instances come and go, and a new one may have registered")
_ASK_REGISTRY = ("ask the registry for the current list on every call (or at least after a failure): the "
                 "instances you remember may be gone, and their replacements are elsewhere")
_TIMEOUT = ("give each request a short timeout, such as timeout=0.5: then an instance that does not answer "
            "costs half a second before you try another")
_STATUS = ("an unhealthy instance answers 503: call response.raise_for_status() inside your try, so an error "
           "answer counts as a failure and you try another instance")
_SPREAD = "spread the calls: start at a different instance each call (round robin, or at random)"
_LAST_KNOWN = ("keep the last list the registry gave you (in a dict at module level, keyed by registry_url and "
               "service); when the registry cannot be reached or answers with an error, call the instances of "
               "that list: they may well be alive")
_NON_EMPTY = ("keep only a non-empty list: a registry that lists nobody while instances answered a moment ago "
              "has more likely restarted and lost its memory; call the instances of the last non-empty list")
_DEADLINE = (f"give the whole call a deadline (time.monotonic() + {DEADLINE_S:g}): keep trying until it passes, "
             f"then raise TimeoutError")


def _label(name: str) -> str:
    return name.split("·")[0]


class _Setup:
    """A registry, instances behind links, an operator client, and the client the answer gets."""

    def __init__(self, run, count: int, ttl: float = 60, client_timeout=None):
        self.run = run
        self.registry = run.serve(create("registry"), "registry·check")
        # the answer reaches the registry through a link, so a test can take the registry away
        self.registry_link = Link(self.registry, seed=f"{run.seed}:registry", trace=run.trace)
        run.on_close(self.registry_link.close)
        self.operator = run.client("operator", timeout=5)
        self.client = run.client("you", timeout=client_timeout)
        self.servers, self.links, self.ttl = {}, {}, ttl
        for n in range(1, count + 1):
            self.add(f"inv-{n}")

    def add(self, label: str, register: bool = True) -> None:
        server = self.run.serve(create("instance", name=label), f"{label}·check")
        # Each link draws its own random faults: seeded by the run's seed and the instance.
        link = Link(server, seed=f"{self.run.seed}:{label}", trace=self.run.trace)
        self.run.on_close(link.close)
        self.servers[label], self.links[label] = server, link
        if register:
            self.register(label)

    def register(self, label: str) -> None:
        self.operator.post(f"{self.registry.url}/services/{SERVICE}/instances",
                           json={"id": label, "url": self.links[label].url, "ttl_s": self.ttl}).raise_for_status()

    def deregister(self, label: str) -> None:
        self.operator.delete(f"{self.registry.url}/services/{SERVICE}/instances/{label}").raise_for_status()

    def sick(self, label: str) -> None:
        self.operator.put(self.servers[label].url + "/faults", json={"healthy": False}).raise_for_status()

    def call(self, number: int, live, dead=(), expect_resolve_again: bool = False) -> str:
        """Call the answer once; return the label of the instance that answered, or raise Fail."""
        run, start = self.run, len(self.run.told)
        try:
            call = run.call(self.client, self.registry_link.url, SERVICE, PATH)
        except AnswerRaised as raised:
            if isinstance(raised.error, NotImplementedError):
                raise  # still the stub: "not attempted yet"
            raise self._explain(number, raised.error, run.told[start:], set(dead),
                                expect_resolve_again) from None
        if call.seconds > CALL_S:
            raise Fail(f"call {number} took more than {CALL_S:g} s to return", _TIMEOUT)
        value = call.value
        if is_a(value, requests.Response):
            raise Fail(f"call {number} returned the response object {show(value)}, not its JSON body",
                       "return response.json()")
        if isinstance(value, dict) and "error" in value:
            raise Fail(f"call {number} returned the error answer {show(value)}; expected the answer of a "
                       f"healthy instance", _STATUS)
        if not isinstance(value, dict) or value.get("instance") not in live:
            raise Fail(f"call {number} returned {show(value)}; expected the JSON answer of a live instance, "
                       f"one of {sorted(live)}, such as {{'instance': 'inv-1', 'served': 1}}",
                       "return response.json() of the instance that answered")
        return value["instance"]

    def _explain(self, number: int, error, events, dead: set, expect_resolve_again: bool) -> Fail:
        """Why the answer failed, from the sends its client says it made (they explain; they decide nothing)."""
        sent = [e.dst for e in events if e.kind == "send" and e.src == self.client.name]
        lookups = sent.count(self.registry.name)
        tried = [_label(d) for d in sent if d != self.registry.name]
        raised = f"then raised {describe_error(error)}"
        if len(tried) > 1 and len(set(tried)) == 1 and tried[0] in dead:
            return Fail(f"call {number}: it tried the dead instance {tried[0]} {len(tried)} times and no other, "
                        f"{raised}", _NOT_THE_SAME)
        if len(tried) == 1 and tried[0] in dead:
            return Fail(f"call {number}: the instance it picked ({tried[0]}) was dead and it tried no other; "
                        f"it raised {describe_error(error)}", _TRY_ANOTHER)
        if tried and set(tried) <= dead and lookups == 0:
            return Fail(f"call {number}: it did not ask the registry, tried only instances that are gone "
                        f"({', '.join(sorted(set(tried)))}), {raised}", _ASK_REGISTRY)
        if expect_resolve_again and lookups <= 1:
            return Fail(f"call {number}: it asked the registry once, found only dead instances, and gave up "
                        f"although a new instance registered {REPLACEMENT_AT_S:g} s later; it raised "
                        f"{describe_error(error)}", _RESOLVE_AGAIN)
        hint = _STATUS if isinstance(error, requests.exceptions.HTTPError) else q51.hint
        return Fail(f"call {number}: your answer raised {describe_error(error)}", hint)


@q51.test("three healthy instances, 12 calls")
def _(run):
    setup = _Setup(run, 3)
    served = [setup.call(n, {"inv-1", "inv-2", "inv-3"}) for n in range(1, 13)]
    busiest = max(sorted(set(served)), key=served.count)
    if served.count(busiest) > 10:
        raise Fail(f"instance {busiest} served {served.count(busiest)} of the 12 calls: the load is not spread",
                   _SPREAD)


@q51.test("one instance is down (connection refused) but still listed")
def _(run):
    setup = _Setup(run, 3)
    setup.links["inv-2"].down = True
    for n in range(1, 7):
        setup.call(n, {"inv-1", "inv-3"}, dead={"inv-2"})


@q51.test("an instance dies mid-run (its connections are reset)")
def _(run):
    setup = _Setup(run, 3)
    for n in range(1, 3):
        setup.call(n, {"inv-1", "inv-2", "inv-3"})
    setup.links["inv-2"].reset = 1.0
    for n in range(3, 7):
        setup.call(n, {"inv-1", "inv-3"}, dead={"inv-2"})


@q51.test("an instance stops answering mid-run (every message dropped)")
def _(run):
    setup = _Setup(run, 3)
    for n in range(1, 3):
        setup.call(n, {"inv-1", "inv-2", "inv-3"})
    setup.links["inv-3"].drop = 1.0
    for n in range(3, 7):
        setup.call(n, {"inv-1", "inv-2"}, dead={"inv-3"})


@q51.test("an unhealthy instance answers 503")
def _(run):
    setup = _Setup(run, 3)
    setup.sick("inv-1")
    for n in range(1, 5):
        setup.call(n, {"inv-2", "inv-3"}, dead={"inv-1"})


@q51.test("the instances are replaced between calls")
def _(run):
    setup = _Setup(run, 2)
    for n in range(1, 3):
        setup.call(n, {"inv-1", "inv-2"})
    for label in ("inv-1", "inv-2"):
        setup.links[label].down = True
        setup.deregister(label)
    setup.add("inv-3")
    for n in range(3, 6):
        setup.call(n, {"inv-3"}, dead={"inv-1", "inv-2"})


@q51.test("every listed instance is dead; a replacement registers while you call")
def _(run):
    setup = _Setup(run, 2)
    for label in ("inv-1", "inv-2"):
        setup.links[label].down = True
    setup.add("inv-3", register=False)
    run.later(REPLACEMENT_AT_S, lambda: setup.register("inv-3"))
    setup.call(1, {"inv-3"}, dead={"inv-1", "inv-2"}, expect_resolve_again=True)


def _registry_gone(setup, how: str, fault: str, calls: int) -> None:
    """Three calls while all is well, then the registry goes (``fault`` on its link) and ``calls`` more."""
    live = {"inv-1", "inv-2", "inv-3"}
    for n in range(1, 4):
        setup.call(n, live)
    if fault == "down":
        setup.registry_link.down = True
    else:
        setup.registry_link.drop = 1.0
    for n in range(4, 4 + calls):
        try:
            setup.call(n, live)
        except Fail as failure:
            raise Fail(f"the registry {how} while every instance was alive: {failure.what}", _LAST_KNOWN) from None


@q51.test("the registry goes down (connection refused); the instances stay up")
def _(run):
    _registry_gone(_Setup(run, 3), "went down (connection refused)", "down", 6)


@q51.test("the registry loses every message; the instances stay up")
def _(run):
    _registry_gone(_Setup(run, 3), "lost every message", "drop", 3)


@q51.test("no instance answers at all: the call raises TimeoutError at its deadline")
def _(run):
    setup = _Setup(run, 2)
    for label in ("inv-1", "inv-2"):
        setup.links[label].down = True
    started = time.perf_counter()
    try:
        call = run.call(setup.client, setup.registry_link.url, SERVICE, PATH)
    except AnswerRaised as raised:
        seconds = time.perf_counter() - started
        if isinstance(raised.error, NotImplementedError):
            raise
        if not isinstance(raised.error, TimeoutError):
            raise Fail(f"with every instance dead it raised {describe_error(raised.error)}; expected TimeoutError",
                       f"when the deadline passes with no answer, raise TimeoutError(f\"no instance of "
                       f"{{service!r}} answered within {DEADLINE_S:g} s\")") from None
        if seconds < EARLIEST_GIVE_UP_S:
            raise Fail(f"it raised TimeoutError after {seconds:.1f} s, before its {DEADLINE_S:g} s deadline: "
                       f"an instance may still register in that time", _DEADLINE) from None
        if seconds > CALL_S:
            raise Fail(f"it raised TimeoutError only after {seconds:.1f} s", _DEADLINE) from None
        return
    raise Fail(f"with every instance dead it returned {show(call.value)} instead of raising TimeoutError",
               _DEADLINE)


@q51.test("random connection resets on every instance (30%)", seeds=(1, 2, 3))
def _(run):
    setup = _Setup(run, 3)
    for link in setup.links.values():
        link.reset = 0.3
    for n in range(1, 5):
        setup.call(n, {"inv-1", "inv-2", "inv-3"})


@q51.test("the registry lists nobody (it restarted with an empty memory); the instances stay up")
def _(run):
    setup = _Setup(run, 3)
    live = {"inv-1", "inv-2", "inv-3"}
    for n in range(1, 4):
        setup.call(n, live)
    for label in sorted(live):
        setup.deregister(label)  # what a registry restarted with an empty memory answers: nobody
    for n in range(4, 7):
        try:
            setup.call(n, live)
        except Fail as failure:
            raise Fail(f"the registry listed nobody while every instance was alive: {failure.what}",
                       _NON_EMPTY) from None


# -- q5.2: an instance that keeps itself registered ------------------------------------------------

#: The lease the instance asks for (seconds).
TTL_S = 1.0

q52 = Question(
    "q5.2", "keep_registered", params=("client", "registry_url", "service", "instance_id", "url", "ttl_s", "seconds"),
    hint=("register (POST registry_url + '/services/' + service + '/instances'), then until `seconds` have passed "
          "send a heartbeat every ttl_s / 3 seconds, register again when a heartbeat answers 404, and deregister "
          "(DELETE) before returning"),
    hang_hint=("give every request a timeout, such as timeout=ttl_s / 3: a registry that loses your heartbeat must not "
               "hold your instance forever"),
    time_limit=6,
)

_EARLY = "heartbeat every ttl_s / 3 seconds, so that one late or lost heartbeat does not end the lease"
_AGAIN = ("a heartbeat answered 404 means the registry forgot you (your lease ran out, or an operator removed you): "
          "register again at once, then go on heartbeating")
_LEAVE = "deregister before returning: DELETE registry_url + '/services/' + service + '/instances/' + instance_id"
_CATCH = ("catch requests.exceptions.RequestException around each heartbeat: a registry that cannot be reached for "
          "a moment must not stop the instance; try again at the next heartbeat")


class _Instance:
    """A registry (maybe behind a link) and the arguments of one keep_registered call."""

    def __init__(self, run, behind_link: bool = False):
        self.run = run
        self.registry = run.serve(create("registry"), "registry·check")
        self.link = run.link(self.registry) if behind_link else None
        self.operator = run.client("operator", timeout=5)
        self.instance = run.serve(create("instance", name="inv-1"), "inv-1·check")

    @property
    def instances_url(self) -> str:
        return f"{self.registry.url}/services/{SERVICE}/instances"

    def listed(self) -> bool:
        answer = self.operator.get(f"{self.registry.url}/services/{SERVICE}").json()
        return any(i["id"] == "inv-1" for i in answer["instances"])

    def stats(self) -> dict:
        return self.operator.get(self.registry.url + "/stats").json()

    def call(self, seconds: float) -> dict:
        """Call the answer; return the registry's stats after it, or raise Fail."""
        registry_url = (self.link or self.registry).url
        try:
            call = self.run.call(self.run.client("inv-1", timeout=None), registry_url, SERVICE, "inv-1",
                                 self.instance.url, TTL_S, seconds)
        except AnswerRaised as raised:
            if isinstance(raised.error, NotImplementedError):
                raise
            hint = _CATCH if isinstance(raised.error, requests.exceptions.RequestException) else q52.hint
            raise Fail(f"your answer raised {describe_error(raised.error)}", hint) from None
        if call.seconds < seconds - 0.2:
            raise Fail(f"it returned before the {seconds:g} s were over",
                       "keep heartbeating until `seconds` have passed (time.monotonic() tells how long)")
        if call.seconds > seconds + 1.5:
            raise Fail(f"it returned more than 1.5 s after the {seconds:g} s were over",
                       "stop heartbeating once `seconds` have passed, deregister, and return")
        stats = self.stats()
        if stats["registered"] == 0:
            raise Fail("the instance never registered", "start with POST registry_url + '/services/' + service "
                       "+ '/instances' and the JSON {'id': instance_id, 'url': url, 'ttl_s': ttl_s}")
        if self.listed():
            raise Fail("the instance was still listed after your function returned", _LEAVE)
        return stats


@q52.test("an instance that stays up for 1.2 s (lease of 1 s)")
def _(run):
    stats = _Instance(run).call(1.2)
    if stats["expired"]:
        raise Fail(f"the registry forgot the instance while your function ran: its lease ({TTL_S:g} s) ran out "
                   f"before a heartbeat renewed it", _EARLY)
    if stats["renewed"] == 0:
        raise Fail("it sent no heartbeat (PUT .../heartbeat) while it ran", _EARLY)


@q52.test("an operator removes the instance midway")
def _(run):
    setup = _Instance(run)
    run.later(0.3, lambda: setup.operator.delete(f"{setup.instances_url}/inv-1"))
    stats = setup.call(1.2)
    if stats["registered"] < 2:
        raise Fail("after the registry forgot the instance, it never registered again", _AGAIN)


@q52.test("the registry loses every message for 0.4 s")
def _(run):
    setup = _Instance(run, behind_link=True)
    healed = []

    def heal():
        setup.link.drop = 0.0
        healed.append(setup.stats())

    run.later(0.2, lambda: setattr(setup.link, "drop", 1.0))
    run.later(0.6, heal)
    stats = setup.call(1.5)
    if healed and stats["registered"] + stats["renewed"] == healed[0]["registered"] + healed[0]["renewed"]:
        raise Fail("once the registry could be reached again, the instance neither heartbeated nor registered "
                   "again", _AGAIN)
