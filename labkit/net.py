"""Links: real TCP proxies that inject faults between a caller and a service.

    >>> with serve(app, name="hello") as hello, Link(hello, seed=1) as link:  # doctest: +SKIP
    ...     link.latency_ms = 50        # every message waits 50 ms each way
    ...     alice.get(link.url + "/")   # the caller uses the link's URL, not the server's

A caller talks to the link's port; the link forwards bytes to the service and
back, so what the caller sees are real network failures:

=================  ============================================  ==============================
setting            effect                                         what the caller sees
=================  ============================================  ==============================
latency_ms         each message waits this long                   slow answers
jitter_ms          plus a random extra between 0 and this         uneven answers
bytes_per_s        a line this fast (0: no limit)                 large answers take long
drop               fraction of messages lost (the connection      a read timeout
                   then carries nothing more)
reset              fraction of messages whose connection is       ConnectionError (reset); on the
                   reset                                          response, the service did the work
duplicate          fraction of requests delivered twice           nothing: the service sees two
                   (a retrying proxy); the second answer is
                   discarded
error_rate,        that fraction of requests is answered with     an error answer the service
error_status       error_status by the link, never forwarded      never gave (nothing was done)
fail_first         ... and so are the first N requests
retry_after_s      the Retry-After header of those answers        (a 429 or 503 asks to wait)
late_rate, late_ms that fraction of answers waits late_ms more    slow headers: the work is done
down               the port is closed                             ConnectionError (refused)
=================  ============================================  ==============================

A message is what one side sends before the other side answers: an HTTP
request or response. ``latency_ms``, ``jitter_ms``, ``bytes_per_s``, ``drop`` and
``reset`` take one number for both directions or a (request, response) pair.
Randomness comes from the link's ``seed``: the same seed and the same traffic in
the same order give the same faults (callers that overlap in time can reach the
link in a different order each run). Every fault is an event in the trace.

A :class:`Network` names nodes and the links between them, and can partition
them into groups that cannot reach each other, or cut one direction only, until
``heal()``; a partition loses messages (a blackhole) or resets them at once
(reject).

All links share one asyncio event loop in one background thread, which runs
while any link is open.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import json
import logging
import math
import numbers
import random
import re
import secrets
import socket
import struct
import sys
import threading
from urllib.parse import urlsplit

from . import tracing
from .errors import Invalid, LinkError

log = logging.getLogger("labkit")

REQUEST, RESPONSE = 0, 1
_HEADER = re.compile(rb"\r\n(traceparent|labkit-caller):[ \t]*([^\r\n]*)", re.IGNORECASE)


class _LoopThread:
    """The event loop all links share; started by the first link, stopped after the last."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def acquire(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._users == 0:
                self.loop = asyncio.new_event_loop()
                ready = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(ready,), name="labkit-links", daemon=True)
                self._thread.start()
                ready.wait()
            self._users += 1
            return self.loop

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        # Whatever goes wrong in a callback is logged, never printed into a cell.
        self.loop.set_exception_handler(
            lambda loop, context: log.error("link: %s", context.get("message"), exc_info=context.get("exception")))
        self.loop.call_soon(ready.set)
        try:
            self.loop.run_forever()
        finally:
            # A name lookup (a target given as "localhost") runs in the loop's
            # default executor: end its thread too, or every link cycle leaks one.
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join()
                self._thread = self.loop = None


_loop_thread = _LoopThread()
_open: set["Link"] = set()  # the links not yet closed
_open_lock = threading.Lock()
_opened = itertools.count()  # the order links were opened in


def open_links() -> list["Link"]:
    """The links open now, oldest first."""
    with _open_lock:
        return sorted(_open, key=lambda link: link._opened)


def close_all() -> list["Link"]:
    """Close every open link; return the links closed."""
    links = open_links()
    for link in links:
        link.close()
    return links


@dataclasses.dataclass(frozen=True)
class Settings:
    """A link's fault settings; pairs are (request direction, response direction)."""

    latency_ms: tuple[float, float] = (0.0, 0.0)
    jitter_ms: tuple[float, float] = (0.0, 0.0)
    bytes_per_s: tuple[float, float] = (0.0, 0.0)
    drop: tuple[float, float] = (0.0, 0.0)
    reset: tuple[float, float] = (0.0, 0.0)
    duplicate: float = 0.0
    error_rate: float = 0.0
    error_status: int = 503
    fail_first: int = 0
    retry_after_s: float = 0.0
    late_rate: float = 0.0
    late_ms: float = 0.0
    down: bool = False


#: The status codes a link can answer with in the service's place, and their reasons.
STATUSES = {429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}
_MS, _P = ("milliseconds", 0, 60_000), ("probability", 0, 1)
#: setting -> (what it is, lowest, highest); a pair for the settings that have a direction
_RULES = {
    "latency_ms": _MS, "jitter_ms": _MS, "late_ms": _MS, "bytes_per_s": ("bytes per second", 0, 10**10),
    "drop": _P, "reset": _P, "duplicate": _P, "error_rate": _P, "late_rate": _P,
    "fail_first": ("whole number of requests", 0, 10**9), "retry_after_s": ("seconds", 0, 86_400),
}
_PAIRS = ("latency_ms", "jitter_ms", "bytes_per_s", "drop", "reset")


def _number(name: str, value) -> float:
    what, low, high = _RULES[name]
    try:
        good = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value) \
            and low <= value <= high and (not what.startswith("whole") or value == int(value))
    except OverflowError:  # an int too big for a float
        good = False
    if not good:
        raise Invalid(f"{name} is a {what} from {low} to {high:g}, not {value!r:.40}")
    return int(value) if what.startswith("whole") else float(value)


def _validated(current: Settings, changes: dict) -> Settings:
    """A new Settings with ``changes`` applied; Invalid (a ValueError) if any is invalid."""
    fields = {}
    for name, value in changes.items():
        if name in _PAIRS:
            pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
            if len(pair) != 2:
                raise Invalid(f"{name} takes one number or a (request, response) pair, not {value!r}")
            fields[name] = tuple(_number(name, v) for v in pair)
        elif name in _RULES:
            fields[name] = _number(name, value)
        elif name == "error_status":
            if type(value) is not int or value not in STATUSES:  # 503.0 would write "HTTP/1.1 503.0"
                raise Invalid(f"error_status is one of {', '.join(map(str, STATUSES))}, not {value!r:.40}")
            fields[name] = value
        elif name == "down":
            if not isinstance(value, bool):
                raise Invalid(f"down must be True or False, not {value!r}")
            fields[name] = value
        else:
            raise TypeError(f"a link has no setting {name!r}; the settings are "
                            f"{', '.join(f.name for f in dataclasses.fields(Settings))}")
    return dataclasses.replace(current, **fields)


def _setting(name: str, doc: str) -> property:
    """A Link attribute for one setting: reading gives its value (one number for a pair that is
    the same both ways), assigning goes through ``configure``."""

    def get(link):
        value = getattr(link._settings, name)
        return value[0] if isinstance(value, tuple) and value[0] == value[1] else value

    return property(get, lambda link, value: link.configure(**{name: value}), doc=doc)


class _Side(asyncio.Protocol):
    """One end of a proxied connection; hands what it reads to its pipe."""

    def __init__(self, pipe: "_Pipe", direction: int):
        self.pipe = pipe
        self.direction = direction  # the direction of the data this side reads
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport):
        self.transport = transport
        self.pipe.connected(self)

    def data_received(self, data):
        self.pipe.received(self.direction, data)

    def eof_received(self):
        self.pipe.eof(self.direction)
        return True

    def connection_lost(self, exc):
        self.pipe.close()

    def pause_writing(self):
        other = self.pipe.other(self)
        if other.transport is not None and not other.transport.is_closing():
            other.transport.pause_reading()

    def resume_writing(self):
        other = self.pipe.other(self)
        if other.transport is not None and not other.transport.is_closing():
            other.transport.resume_reading()


_EOF = None  # queued in place of bytes: the sender has finished

# The event loop wakes on whole milliseconds, rounding up: a timer set for t fires
# between t and t + 1 ms. Aiming half a millisecond early centres it on t.
_HALF_TICK = 0.0005


class _Pipe:
    """One caller connection proxied to the service, with the link's faults applied.

    What each side sends waits in a first-in, first-out queue per direction until
    its time comes, so a message never overtakes an earlier one (as on TCP), and
    the end of the stream (EOF) follows the last byte. The pipe closes once both
    directions have ended, or when either side goes away.
    """

    def __init__(self, link: "Link"):
        self.link = link
        self.caller = _Side(self, REQUEST)
        self.service = _Side(self, RESPONSE)
        self.queues = (collections.deque(), collections.deque())  # (due time, bytes or _EOF)
        self.timers: list[asyncio.TimerHandle | None] = [None, None]
        self.free_at = [0.0, 0.0]       # when each direction's line is free again (bytes_per_s)
        self.ended = [False, False]     # EOF passed on, per direction
        self.turn: int | None = None    # direction of the message in flight
        self.delay = 0.0                # seconds the message in flight waits
        self.lost = False               # a message was lost: the connection carries nothing more
        self.closed = False
        self.connecting: asyncio.Task | None = None
        self.caller_name, self.trace_id, self.span_id = "client", "", ""
        self.request = bytearray()      # the request in flight, kept while the link must see all of it
        self.answering: int | None = None   # the status the link answers this request with itself
        self.duplicating = False        # this request goes to the service twice

    def other(self, side: _Side) -> _Side:
        return self.service if side is self.caller else self.caller

    def connected(self, side: _Side) -> None:
        if self.closed:  # the caller left (or the link closed) while connecting
            side.transport.close()
        elif side is self.caller:
            self.link._pipes.add(self)
            self.connecting = asyncio.get_running_loop().create_task(self._connect())
        else:
            self._flush(REQUEST)  # what the caller sent meanwhile

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.create_connection(lambda: self.service, *self.link.target)
        except OSError:
            self.abort()

    def received(self, direction: int, data: bytes) -> None:
        if self.closed or self.lost:
            return
        if direction != self.turn:
            self.turn = direction
            self.request.clear()
            if not self._begin_message(direction, data):
                return
        if direction == REQUEST and (self.answering is not None or self.duplicating):
            self.request += data
            if not _complete(self.request):
                if self.answering is None:
                    self._queue(direction, data)
                return
            if self.answering is not None:
                self._answer()
                return
            self._queue(direction, data)
            self._duplicate(bytes(self.request))
            return
        self._queue(direction, data)

    def _record(self, kind: str, direction: int, **fields) -> None:
        self.link.trace.record(kind, *self._ends(direction), trace_id=self.trace_id, span_id=self.span_id, **fields)

    def _begin_message(self, direction: int, data: bytes) -> bool:
        """Decide the fate of a new message; False if it goes no further."""
        link = self.link
        if direction == REQUEST:
            for name, value in _HEADER.findall(data[:8192]):
                if name.lower() == b"traceparent":
                    self.trace_id, self.span_id = tracing.parse_traceparent(value.decode("latin-1"))
                else:
                    self.caller_name = value.decode("latin-1")
        settings, (r_reset, r_drop, r_jitter, r_error, r_duplicate, r_late) = link._draw()
        self.answering, self.duplicating = None, False
        if link.cut[direction] is not None:
            return self._partitioned(direction)
        if r_reset < settings.reset[direction]:  # (before the delay: a reset is seen at once)  # on the response: the service did the work
            self._record("reset", direction)
            self.abort()
            return False
        self.delay = (settings.latency_ms[direction] + r_jitter * settings.jitter_ms[direction]) / 1000
        if direction == REQUEST and (link._fails_first() or r_error < settings.error_rate):
            self.answering = settings.error_status
        elif r_drop < settings.drop[direction]:
            self._lose("dropped", direction, detail=f"{self.delay * 1000:.0f} ms")  # the time it would have taken
            return False
        late = direction == RESPONSE and r_late < settings.late_rate
        if late:
            self.delay += settings.late_ms / 1000
        if self.delay:
            self._record("delayed", direction, detail=f"{self.delay * 1000:.0f} ms{' (late)' if late else ''}")
        self.duplicating = direction == REQUEST and self.answering is None and r_duplicate < settings.duplicate
        return True

    def _partitioned(self, direction: int) -> bool:
        """A partition is between the two ends: lose the message (blackhole) or reset at once (reject)."""
        if self.link.cut[direction] == "reject":
            self._record("partitioned", direction, detail="rejected")
            self.abort()
        else:
            self._lose("partitioned", direction)
        return False

    def _ends(self, direction: int) -> tuple[str, str]:
        """(sender, receiver) of a message going in ``direction``."""
        ends = (self.caller_name, self.link.dst)
        return ends if direction == REQUEST else ends[::-1]

    def _lose(self, kind: str, direction: int, detail: str = "") -> None:
        self._record(kind, direction, detail=detail)
        self.lost = True

    def _answer(self) -> None:
        """Answer the request in the service's place, after the round trip, and close."""
        status, settings = self.answering, self.link.settings
        reason = STATUSES[status]
        body = json.dumps({"error": f"{reason.lower()}: this answer came from the network (a link), not from "
                                    f"{self.link.dst}, which never saw the request"}).encode()
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n")
        if settings.retry_after_s and status in (429, 503):
            head += f"Retry-After: {math.ceil(settings.retry_after_s)}\r\n"
        self._record("answered", RESPONSE, status=status, detail="by the link")
        due = asyncio.get_running_loop().time() + self.delay + settings.latency_ms[RESPONSE] / 1000
        self.lost = True  # the service takes no part: nothing more is forwarded either way
        asyncio.get_running_loop().call_at(due, self._deliver_answer, head.encode() + b"\r\n" + body)

    def _deliver_answer(self, answer: bytes) -> None:
        transport = self.caller.transport
        if not self.closed and transport is not None and not transport.is_closing():
            transport.write(answer)
            transport.close()
        self.close()

    def _duplicate(self, request: bytes) -> None:
        """Send ``request`` to the service once more when the first copy gets there; discard its answer."""
        span = secrets.token_hex(8)  # a span of its own: the copy is an exchange of its own
        again = _SPAN.sub(lambda m: m.group(1) + span.encode() + m.group(2), request, count=1)
        loop = asyncio.get_running_loop()
        due = self.queues[REQUEST][-1][0] if self.queues[REQUEST] else loop.time() + self.delay
        self.link._copies.add(loop.call_at(due, self.link._send_copy, again))
        self.link.trace.record("duplicated", *self._ends(REQUEST), trace_id=self.trace_id, span_id=span,
                               detail=f"copy of span {self.span_id}")

    def _queue(self, direction: int, item) -> None:
        """Send ``item`` on after the current message's delay, behind what is already queued, at the
        line's speed."""
        due = asyncio.get_running_loop().time() + self.delay
        speed = self.link.settings.bytes_per_s[direction]
        if speed and item is not _EOF:
            due = max(due, self.free_at[direction]) + len(item) / speed
            self.free_at[direction] = due
        self.queues[direction].append((due, item))
        if self.timers[direction] is None:
            self._flush(direction)

    def _flush(self, direction: int) -> None:
        """Pass on every queued item whose time has come; wait for the next one."""
        timer, self.timers[direction] = self.timers[direction], None
        if timer is not None:
            timer.cancel()  # one waiting timer per direction at most
        if self.closed or self.lost or not self.queues[direction]:
            return
        if self.link.cut[direction] is not None:  # a partition began while this was in flight
            self._partitioned(direction)
            return
        side = self.service if direction == REQUEST else self.caller
        if side.transport is None:
            return  # not connected yet: connected() flushes
        loop = asyncio.get_running_loop()
        queue, now = self.queues[direction], loop.time()
        while queue and queue[0][0] <= now + _HALF_TICK:
            _, item = queue.popleft()
            if item is _EOF:
                self._end(direction, side)
                return
            try:
                side.transport.write(item)
            except OSError:  # the receiving end has gone (a caller that gave up)
                self.close()
                return
        if queue:
            self.timers[direction] = loop.call_at(queue[0][0] - _HALF_TICK, self._flush, direction)

    def eof(self, direction: int) -> None:
        """The side that sends ``direction`` has finished sending."""
        if self.closed:
            return
        if self.lost:
            # Nothing more reaches the other side, not even the end of the stream:
            # a caller waits for its timeout. Once the caller gives up, we are done.
            if direction == REQUEST and self.answering is None:
                self.close()
            return
        self._queue(direction, _EOF)

    def _end(self, direction: int, side: _Side) -> None:
        try:
            if not side.transport.is_closing() and side.transport.can_write_eof():
                side.transport.write_eof()
        except OSError:  # the receiving end has gone (a caller that gave up)
            self.close()
            return
        self.ended[direction] = True
        if all(self.ended):
            self.close()

    def abort(self) -> None:
        """Reset both connections (an RST, not a polite close)."""
        for side in (self.caller, self.service):
            if side.transport is not None:
                sock = side.transport.get_extra_info("socket")
                if sock is not None and sock.fileno() >= 0:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                side.transport.abort()
        self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.link._pipes.discard(self)
        if self.connecting is not None and not self.connecting.done():
            self.connecting.cancel()
        for timer in self.timers:
            if timer is not None:
                timer.cancel()
        for queue in self.queues:
            queue.clear()
        for side in (self.caller, self.service):
            if side.transport is not None:
                side.transport.close()


_HEAD_END = re.compile(rb"\r\n\r\n")
_SPAN = re.compile(rb"(\r\ntraceparent:[ \t]*[0-9a-f]{2}-[0-9a-f]{32}-)[0-9a-f]{16}(-)", re.IGNORECASE)
_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[^\r\n]*chunked", re.IGNORECASE)


def _complete(request: bytes) -> bool:
    """Whether ``request`` holds a whole HTTP request: its head, and the body its head announces."""
    end = _HEAD_END.search(request)
    if end is None:
        return False
    head = request[: end.start()]
    if _CHUNKED.search(head):
        return request.endswith(b"0\r\n\r\n")
    length = _LENGTH.search(head)
    return len(request) - end.end() >= (int(length.group(1)) if length else 0)


class _Discard(asyncio.Protocol):
    """The link's own connection for a duplicated request: sends it, reads the answer, drops it."""

    def __init__(self, link: "Link", request: bytes):
        self.link, self.request = link, request
        self.transport = None

    def connection_made(self, transport):
        self.transport = transport
        self.link._extras.add(self)
        transport.write(self.request)
        if transport.can_write_eof():
            transport.write_eof()  # one request only: the service closes after its answer

    def data_received(self, data):
        pass

    def eof_received(self):
        self.close()

    def connection_lost(self, exc):
        self.link._extras.discard(self)

    def close(self):
        if self.transport is not None:
            self.transport.close()


def _address(target) -> tuple[str, int]:
    """(host, port) of a Server, a Link, a URL or a (host, port) pair."""
    if hasattr(target, "url"):
        target = target.url
    if isinstance(target, str):
        parts = urlsplit(target if "//" in target else f"//{target}")
        if not parts.hostname or not parts.port:
            raise ValueError(f"a link target needs a host and a port, such as http://127.0.0.1:5000, not {target!r}")
        return (parts.hostname, parts.port)
    if isinstance(target, tuple) and len(target) == 2:
        return (str(target[0]), int(target[1]))
    raise TypeError(f"a link's target is a server, a URL or a (host, port) pair, not {target!r}")


class Link:
    """A TCP proxy on 127.0.0.1 in front of ``target``, with live fault settings.

    ``target`` is a server from :func:`labkit.serve`, a URL or a (host, port) pair.
    Callers use ``link.url`` instead of the server's URL. ``seed`` fixes the
    random faults. Settings are attributes, changeable while traffic flows;
    an invalid value raises ValueError and changes nothing.
    """

    def __init__(self, target, *, seed: int | str = 0, trace: tracing.Trace | None = None,
                 **settings):
        self.target = _address(target)
        self.dst = tracing.name_for(*self.target)
        self.trace = tracing.default if trace is None else trace
        self._settings = _validated(Settings(), settings)
        self._lock = threading.Lock()       # guards the settings and the random numbers
        self._changing = threading.Lock()   # one change of state (up, down, closed) at a time
        self._rng = random.Random(seed)
        self._pipes: set[_Pipe] = set()
        self._extras: set[_Discard] = set()  # connections of duplicated requests
        self._copies: set[asyncio.TimerHandle] = set()  # duplicated requests waiting for their time
        self._first = 0                      # requests since fail_first was set
        self.cut: list[str | None] = [None, None]  # per direction: set by a Network ("blackhole" or "reject")
        self._listener: asyncio.base_events.Server | None = None
        self._loop = _loop_thread.acquire()
        self.closed = False
        try:
            self.port = 0
            self._listen()
            if self._settings.down:  # keep the port number, but refuse callers from the start
                self._loop_thread_run(self._go_down())
        except BaseException:
            self.closed = True
            _loop_thread.release()
            raise
        self.url = f"http://127.0.0.1:{self.port}"
        tracing.register_name(("127.0.0.1", self.port), self.dst)
        with _open_lock:
            self._opened = next(_opened)
            _open.add(self)

    # -- settings -----------------------------------------------------------

    def configure(self, **settings) -> None:
        """Change several settings at once; all or none are applied."""
        with self._changing:
            self._check_open()
            with self._lock:
                old = self._settings
                new = self._settings = _validated(old, settings)
                if "fail_first" in settings:
                    self._first = 0  # the first N from now on
            if new.down == old.down:
                return
            try:
                self._loop_thread_run(self._go_down() if new.down else self._go_up())
            except OSError as exc:
                with self._lock:
                    self._settings = dataclasses.replace(self._settings, down=old.down)
                raise LinkError(f"the link cannot listen on 127.0.0.1:{self.port} again "
                                f"({exc.strerror}); make a new Link") from exc

    @property
    def settings(self) -> Settings:
        """The current settings (a frozen snapshot)."""
        return self._settings

    latency_ms = _setting("latency_ms", "Milliseconds each message waits: a number, or a (request, response) pair.")
    jitter_ms = _setting("jitter_ms", "Up to this many more milliseconds, at random, per message.")
    bytes_per_s = _setting("bytes_per_s", "The line's speed in bytes per second, each way (0: no limit).")
    drop = _setting("drop", "Probability that a message is lost: a number, or a (request, response) pair.")
    reset = _setting(
        "reset", "Probability that a message's connection is reset: a number, or a (request, response) pair.")
    duplicate = _setting("duplicate", "Probability that a request reaches the service twice.")
    error_rate = _setting("error_rate", "Probability that the link answers a request with error_status itself.")
    error_status = _setting("error_status", "The status of the link's own error answers (429, 500, 502, 503 or 504).")
    fail_first = _setting("fail_first", "The link answers the next N requests with error_status itself.")
    retry_after_s = _setting("retry_after_s", "The Retry-After of the link's 429 and 503 answers (0: none).")
    late_rate = _setting("late_rate", "Probability that an answer waits late_ms more.")
    late_ms = _setting("late_ms", "How much later a late answer comes, in milliseconds.")
    down = _setting("down", "True closes the link's port: callers are refused.")

    def _draw(self) -> tuple[Settings, tuple]:
        """The settings now and six random numbers for one message (reset, drop, jitter, error, duplicate,
        late). The last three are drawn only while one of their faults is on, so the first three follow
        the seed as they did before those faults existed."""
        with self._lock:
            rng, s = self._rng, self._settings
            base = (rng.random(), rng.random(), rng.random())
            extra = (rng.random(), rng.random(), rng.random()) if s.error_rate or s.duplicate or s.late_rate \
                else (1.0, 1.0, 1.0)
            return s, base + extra

    def _fails_first(self) -> bool:
        """True for each of the first fail_first requests since it was set."""
        with self._lock:
            if self._first < self._settings.fail_first:
                self._first += 1
                return True
            return False

    def _send_copy(self, request: bytes) -> None:
        self._copies = {handle for handle in self._copies if not handle.cancelled() and handle.when() > self._loop.time()}
        self._loop.create_task(self._send_duplicate(request))

    def _drop_copies(self) -> None:
        """Forget the duplicated requests not sent yet, and break those on their way (the link is down or closed)."""
        for handle in self._copies:
            handle.cancel()
        self._copies.clear()
        for extra in list(self._extras):
            extra.close()

    async def _send_duplicate(self, request: bytes) -> None:
        try:
            await self._loop.create_connection(lambda: _Discard(self, request), *self.target)
        except OSError:
            log.debug("a duplicated request could not reach %s", self.dst)

    # -- lifecycle ----------------------------------------------------------

    def _loop_thread_run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _listen(self) -> None:
        try:
            self._loop_thread_run(self._go_up())
        except OSError as exc:
            raise LinkError(f"the link cannot listen on 127.0.0.1:{self.port}: {exc.strerror}") from exc
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _go_down(self) -> None:
        self._listener.close()
        self._drop_copies()
        for pipe in list(self._pipes):
            pipe.abort()
        await self._listener.wait_closed()

    async def _go_up(self) -> None:
        self._listener = await self._loop.create_server(
            lambda: _Pipe(self).caller, "127.0.0.1", self.port, reuse_address=True, backlog=1024)

    def _check_open(self) -> None:
        if self.closed:
            raise LinkError(f"the link to {self.dst!r} is closed; make a new Link")

    def close(self) -> None:
        """Close the port and every connection through it. Closing twice does nothing."""
        with self._changing:
            if self.closed:
                return
            self.closed = True
            try:
                self._loop_thread_run(self._shut())
            finally:
                tracing.forget_name(("127.0.0.1", self.port))
                with _open_lock:
                    _open.discard(self)
                _loop_thread.release()

    async def _shut(self) -> None:
        self._listener.close()
        pipes = list(self._pipes)
        for pipe in pipes:
            pipe.close()
        self._drop_copies()
        try:
            # Python 3.12+ waits here for every accepted connection to finish closing;
            # one whose peer reads nothing could keep it waiting forever.
            await asyncio.wait_for(self._listener.wait_closed(), 1.0)
        except asyncio.TimeoutError:
            for pipe in pipes:
                pipe.abort()
        await asyncio.sleep(0)  # let the transports finish closing

    def __enter__(self) -> "Link":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # A forgotten link closes itself, but never here: close() waits for the
        # loop's thread and takes locks this thread may hold (the collector runs
        # anywhere), and at interpreter exit that thread is frozen. A thread of
        # its own does it instead.
        if getattr(self, "closed", True) or sys.is_finalizing():
            return
        try:
            threading.Thread(target=self.close, name="labkit-link-close", daemon=True).start()
        except RuntimeError:  # no new threads at interpreter exit
            pass

    def __repr__(self) -> str:
        s = self._settings
        state = "closed" if self.closed else "down" if s.down else "cut" if any(self.cut) else "up"
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(Settings)
                   if f.name != "down" and getattr(s, f.name) != f.default]
        return f"<Link to {self.dst!r} {state}{': ' + ' '.join(changed) if changed else ''}>"


class Network:
    """Named nodes and the links between them; partition them, or cut one direction, and heal.

        >>> net = Network(seed=7)                          # doctest: +SKIP
        >>> to_b = net.link("a", server_b)                 # node a calls b through this link
        >>> net.partition(["a"], ["b", "c"])               # a can no longer reach b or c, nor they a
        >>> net.cut(["b"], ["a"], kind="reject")           # one way: b's messages to a are reset at once
        >>> net.heal()

    A cut direction loses every message that goes that way (``kind="blackhole"``, the
    default: callers time out) or resets it at once (``kind="reject"``, as a router
    that answers "unreachable"). A one-way cut also loses the *answers* that would
    travel that way: if b cannot reach a, a's requests to b arrive and b does the
    work, but a never hears back. Each link's seed derives from the network's seed
    and its ends.
    """

    KINDS = ("blackhole", "reject")

    def __init__(self, *, seed: int = 0, trace: tracing.Trace | None = None):
        self.seed = seed
        self.trace = tracing.default if trace is None else trace
        self.links: dict[tuple[str, str], Link] = {}
        self._cuts: dict[tuple[str, str], str] = {}  # (from, to) -> kind: messages from -> to are cut

    def link(self, src: str, target, **settings) -> Link:
        """A link that node ``src`` uses to reach ``target`` (a server or URL)."""
        dst = tracing.name_for(*_address(target))
        if (src, dst) in self.links and not self.links[(src, dst)].closed:
            raise LinkError(f"the network already has a link from {src!r} to {dst!r}: net.links[({src!r}, {dst!r})]")
        link = Link(target, seed=f"{self.seed}:{src}->{dst}", trace=self.trace, **settings)
        self.links[(src, dst)] = link
        self._apply_to(src, dst, link)
        return link

    def partition(self, *groups, kind: str = "blackhole") -> None:
        """Split the named nodes into groups; messages between different groups are cut, both ways.

        The names are those the network's links are made with (``link(src, ...)``), and
        the partition replaces every earlier partition and cut."""
        sets = [set(g) for g in groups]
        if len(sets) < 2:
            raise Invalid("a partition needs at least two groups of node names")
        seen: set[str] = set()
        for group in sets:
            if seen & group:
                raise Invalid(f"node(s) {sorted(seen & group)} appear in more than one group")
            seen |= group
        self._check_kind(kind)
        self._cuts = {(a, b): kind for i, one in enumerate(sets) for j, other in enumerate(sets) if i != j
                      for a in one for b in other}
        self._apply()

    def cut(self, senders, receivers, *, kind: str = "blackhole") -> None:
        """Cut one direction: messages from any of ``senders`` to any of ``receivers`` (the way back works)."""
        self._check_kind(kind)
        senders, receivers = [senders] if isinstance(senders, str) else list(senders), \
            [receivers] if isinstance(receivers, str) else list(receivers)
        if set(senders) & set(receivers):
            raise Invalid(f"node(s) {sorted(set(senders) & set(receivers))} are on both sides of the cut")
        self._cuts.update({(a, b): kind for a in senders for b in receivers})
        self._apply()

    def heal(self) -> None:
        """End every partition and cut: every link carries traffic again."""
        self._cuts = {}
        self._apply()

    def _check_kind(self, kind) -> None:
        if kind not in self.KINDS:
            raise Invalid(f"a cut's kind is one of {', '.join(self.KINDS)}, not {kind!r}")

    def _apply_to(self, src: str, dst: str, link: Link) -> None:
        link.cut = [self._cuts.get((src, dst)), self._cuts.get((dst, src))]  # the request goes src -> dst

    def _apply(self) -> None:
        for (src, dst), link in self.links.items():
            self._apply_to(src, dst, link)

    def close(self) -> None:
        """Close every link of the network."""
        for link in self.links.values():
            link.close()

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
