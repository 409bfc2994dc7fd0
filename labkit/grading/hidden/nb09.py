"""Hidden tests for notebook 09 (comparing styles): q9.1 replicated, client-server that survives its server's crash.

The student's ``replicated(client, urls, key, value=None)`` writes to every copy of the
key-value store and reads from the first copy that has the key. Each test serves real
copies of :mod:`labkit.apps.kv` behind links, breaks one or all of them (refused, silent,
restarted with an empty memory), and judges what came back and what each copy holds.
"""

from __future__ import annotations

import random

import requests

from labkit.apps import create
from labkit.grading.authoring import Fail, Question, show

#: A call must return within this many seconds even with one copy silent (one 1 s timeout, plus the
#: healthy copies' answers on a loaded machine); a client without a timeout waits its default 5 s.
GIVE_UP_S = 3.0

q91 = Question(
    "q9.1", "replicated", params=("client", "urls", "key", "value"),
    hint=("for a write, PUT to every copy in a try/except requests.exceptions.RequestException and return whether "
          "any answered 200; for a read, GET from each copy in turn and return the first 200's value"),
    hang_hint="give every request timeout=1.0, so a silent copy cannot hold you",
)

_EVERY_COPY = ("write to every copy in urls, not only the first that answers: a copy that missed the write "
               "cannot serve it when the others are gone")
_NOT_FINAL = ("a 404 from one copy is not the end: that copy may have restarted with an empty memory, so ask "
              "the next copy in urls")
_CATCH = ("a copy that is down, resets or does not answer makes the client raise: catch "
          "requests.exceptions.RequestException and go on with the next copy")
_TIMEOUT = "pass timeout=1.0 to every request, or a silent copy holds each call for the client's default 5 s"
_TRUE_FALSE = "return True when at least one copy answered 200 to the PUT, and False when none did"


def _copies(run, count: int = 2):
    """``count`` copies of the store, each behind a link: (their apps, their links' URLs, the links)."""
    apps, links = [], []
    for number in range(1, count + 1):
        app = create("kv", name=f"copy-{number}·check")
        apps.append(app)
        links.append(run.link(run.serve(app, f"copy-{number}·check")))
    return apps, [link.url for link in links], links


def _held(app, key: str):
    """What one copy holds for ``key`` (asked in-process, outside the trace); ``_MISSING`` if nothing."""
    return app.extensions["labkit"].memory.get(key, _MISSING)


_MISSING = object()


def _timed(run, situation: str, *args):
    call = run.call(*args)
    if call.seconds > GIVE_UP_S:
        raise Fail(f"with {situation} one call took more than {GIVE_UP_S:g} s to return", _TIMEOUT)
    return call


def _write(run, situation, client, urls, key, value, expected=True):
    call = _timed(run, situation, client, urls, key, value)
    if call.value is not expected:
        raise Fail(f"with {situation} writing {key!r} returned {show(call.value)}; expected {expected}", _TRUE_FALSE)
    return call


def _read(run, situation, client, urls, key, expected, hint=""):
    call = _timed(run, situation, client, urls, key, None)
    if call.value != expected or type(call.value) is not type(expected):
        raise Fail(f"with {situation} reading {key!r} returned {show(call.value)}; expected {show(expected)}", hint)
    return call


@q91.test("two healthy copies: a write reaches both, a read answers")
def _(run):
    apps, urls, _ = _copies(run)
    client = run.client(timeout=5)
    _write(run, "two healthy copies", client, urls, "colour", "teal")
    for number, app in enumerate(apps, 1):
        if _held(app, "colour") != "teal":
            raise Fail(f"after the write, copy {number} of 2 does not hold the value", _EVERY_COPY)
    _read(run, "two healthy copies", client, urls, "colour", "teal", "return response.json()[\"value\"]")


@q91.test("the first copy is down (connection refused)", raise_hints={requests.exceptions.ConnectionError: _CATCH})
def _(run):
    apps, urls, links = _copies(run)
    links[0].configure(down=True)
    client = run.client(timeout=5)
    _write(run, "the first copy down", client, urls, "size", 42)
    if _held(apps[1], "size") != 42:
        raise Fail("with the first copy down, the second copy does not hold the value written", _EVERY_COPY)
    _read(run, "the first copy down", client, urls, "size", 42, _CATCH)


@q91.test("the first copy is silent (every message lost)", raise_hints={requests.exceptions.Timeout: _CATCH})
def _(run):
    apps, urls, links = _copies(run)
    links[0].configure(drop=1.0)
    client = run.client(timeout=5)
    _write(run, "the first copy silent", client, urls, "city", "Oslo")
    _read(run, "the first copy silent", client, urls, "city", "Oslo", _CATCH)


@q91.test("the first copy restarted with an empty memory")
def _(run):
    apps, urls, _ = _copies(run)
    client = run.client(timeout=5)
    _write(run, "two healthy copies", client, urls, "plan", {"step": 3})
    apps[0].extensions["labkit"].memory.clear()  # a crash and a restart: what it kept in memory is gone
    _read(run, "the first copy restarted empty (it answers 404)", client, urls, "plan", {"step": 3}, _NOT_FINAL)


@q91.test("every copy is down", raise_hints={requests.exceptions.ConnectionError: _CATCH})
def _(run):
    _, urls, links = _copies(run)
    for link in links:
        link.configure(down=True)
    client = run.client(timeout=5)
    _write(run, "every copy down", client, urls, "lost", 1, expected=False)
    call = _timed(run, "every copy down", client, urls, "lost", None)
    if call.value is not None:
        raise Fail(f"with every copy down, a read returned {show(call.value)}; expected None",
                   "return None when no copy answers 200")


@q91.test("a key no copy has")
def _(run):
    _, urls, _ = _copies(run)
    call = _timed(run, "two healthy copies", run.client(timeout=5), urls, "never-written", None)
    if call.value is not None:
        raise Fail(f"for a key no copy holds (each answers 404), a read returned {show(call.value)}; expected None",
                   "return None when no copy answers 200")


@q91.test("a crash in the middle of 16 writes and reads, three copies", seeds=(1, 2),
          raise_hints={requests.exceptions.ConnectionError: _CATCH, requests.exceptions.Timeout: _CATCH})
def _(run):
    apps, urls, links = _copies(run, 3)
    rng = random.Random(run.seed)
    client = run.client(timeout=5)
    crash_at = rng.randrange(4, 12)
    victim = (run.seed - 1) % 3  # the first copy with seed 1, the second with seed 2
    written = {}
    for turn in range(16):
        if turn == crash_at:  # one copy crashes: refused from now on, and its memory gone
            links[victim].configure(down=True)
            apps[victim].extensions["labkit"].memory.clear()
        if turn == crash_at + 2:  # it comes back, empty
            links[victim].configure(down=False)
        situation = f"copy {victim + 1} of 3 crashed at turn {crash_at + 1} and back, empty, at turn {crash_at + 3}"
        _write(run, situation, client, urls, f"key-{turn % 4}", turn)
        written[f"key-{turn % 4}"] = turn
        older = f"key-{(turn + 1) % 4}"  # written three turns ago (or never)
        _read(run, situation, client, urls, older, written.get(older), _NOT_FINAL)
