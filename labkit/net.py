"""Links: real TCP proxies that inject faults between a caller and a service.

    >>> with serve(app, name="hello") as hello, Link(hello, seed=1) as link:  # doctest: +SKIP
    ...     link.latency_ms = 50        # every message waits 50 ms each way
    ...     alice.get(link.url + "/")   # the caller uses the link's URL, not the server's

A caller talks to the link's port; the link forwards bytes to the service and
back, so what the caller sees are real network failures:

==============  ===============================================  =====================
setting         effect                                           what the caller sees
==============  ===============================================  =====================
latency_ms      each message waits this long (each direction)     slow answers
jitter_ms       plus a random extra between 0 and this            uneven answers
drop            fraction of messages lost (the connection then    a read timeout
                carries nothing more)
reset           fraction of requests whose connection is reset    ConnectionError (reset)
down            the port is closed                                ConnectionError (refused)
==============  ===============================================  =====================

A message is what one side sends before the other side answers: an HTTP
request or response. ``latency_ms``, ``jitter_ms`` and ``drop`` take one number
for both directions or a (request, response) pair. Randomness comes from the
link's ``seed``: the same seed and the same traffic give the same faults.

A :class:`Network` names nodes and the links between them, and can partition
them into groups that cannot reach each other until ``heal()``.

All links share one asyncio event loop in one background thread, which runs
while any link is open.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import logging
import math
import numbers
import random
import re
import socket
import struct
import sys
import threading
from urllib.parse import urlsplit

from . import tracing
from .errors import LinkError

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
    drop: tuple[float, float] = (0.0, 0.0)
    reset: float = 0.0
    down: bool = False


def _pair(name: str, value, *, probability: bool) -> tuple[float, float]:
    pair = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(pair) != 2:
        raise ValueError(f"{name} takes one number or a (request, response) pair, not {value!r}")
    return tuple(_number(name, v, probability=probability) for v in pair)


def _number(name: str, value, *, probability: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, not {value!r}")
    if probability and not 0 <= value <= 1:
        raise ValueError(f"{name} is a probability between 0 and 1, not {value!r}")
    if not probability and value < 0:
        raise ValueError(f"{name} cannot be negative ({value!r} ms)")
    return float(value)


def _validated(current: Settings, changes: dict) -> Settings:
    """A new Settings with ``changes`` applied; ValueError if any is invalid."""
    fields = {}
    for name, value in changes.items():
        if name in ("latency_ms", "jitter_ms"):
            fields[name] = _pair(name, value, probability=False)
        elif name == "drop":
            fields[name] = _pair(name, value, probability=True)
        elif name == "reset":
            fields[name] = _number(name, value, probability=True)
        elif name == "down":
            if not isinstance(value, bool):
                raise ValueError(f"down must be True or False, not {value!r}")
            fields[name] = value
        else:
            raise TypeError(f"a link has no setting {name!r}; the settings are {', '.join(f.name for f in dataclasses.fields(Settings))}")
    return dataclasses.replace(current, **fields)


def _one_or_pair(pair: tuple[float, float]):
    return pair[0] if pair[0] == pair[1] else pair


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
        self.ended = [False, False]     # EOF passed on, per direction
        self.turn: int | None = None    # direction of the message in flight
        self.delay = 0.0                # seconds the message in flight waits
        self.lost = False               # a message was lost: the connection carries nothing more
        self.closed = False
        self.connecting: asyncio.Task | None = None
        self.caller_name, self.trace_id, self.span_id = "client", "", ""

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
            if not self._begin_message(direction, data):
                return
        self._queue(direction, data)

    def _begin_message(self, direction: int, data: bytes) -> bool:
        """Decide the fate of a new message; False if it is lost."""
        link = self.link
        if direction == REQUEST:
            for name, value in _HEADER.findall(data[:8192]):
                if name.lower() == b"traceparent":
                    self.trace_id, self.span_id = tracing.parse_traceparent(value.decode("latin-1"))
                else:
                    self.caller_name = value.decode("latin-1")
        ends = self._ends(direction)
        settings, (r_reset, r_drop, r_jitter) = link._draw()
        if link.cut:
            self._lose("partitioned", direction)
            return False
        if direction == REQUEST and r_reset < settings.reset:
            link.trace.record("reset", *ends, trace_id=self.trace_id, span_id=self.span_id)
            self.abort()
            return False
        if r_drop < settings.drop[direction]:
            self._lose("dropped", direction)
            return False
        self.delay = (settings.latency_ms[direction] + r_jitter * settings.jitter_ms[direction]) / 1000
        if self.delay:
            link.trace.record("delayed", *ends, trace_id=self.trace_id, span_id=self.span_id,
                              detail=f"{self.delay * 1000:.0f} ms")
        return True

    def _ends(self, direction: int) -> tuple[str, str]:
        """(sender, receiver) of a message going in ``direction``."""
        ends = (self.caller_name, self.link.dst)
        return ends if direction == REQUEST else ends[::-1]

    def _lose(self, kind: str, direction: int) -> None:
        self.link.trace.record(kind, *self._ends(direction), trace_id=self.trace_id, span_id=self.span_id)
        self.lost = True

    def _queue(self, direction: int, item) -> None:
        """Send ``item`` on after the current message's delay, behind what is already queued."""
        due = asyncio.get_running_loop().time() + self.delay
        self.queues[direction].append((due, item))
        if self.timers[direction] is None:
            self._flush(direction)

    def _flush(self, direction: int) -> None:
        """Pass on every queued item whose time has come; wait for the next one."""
        timer, self.timers[direction] = self.timers[direction], None
        if timer is not None:
            timer.cancel()  # one waiting timer per direction at most
        if self.closed or self.lost:
            return
        if self.link.cut:  # a partition began while this was in flight
            self._lose("partitioned", direction)
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
            if direction == REQUEST:
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
        self.cut = False  # set by a Network partition
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

    latency_ms = property(lambda self: _one_or_pair(self._settings.latency_ms),
                          lambda self, v: self.configure(latency_ms=v),
                          doc="Milliseconds each message waits: a number, or a (request, response) pair.")
    jitter_ms = property(lambda self: _one_or_pair(self._settings.jitter_ms),
                         lambda self, v: self.configure(jitter_ms=v),
                         doc="Up to this many more milliseconds, at random, per message.")
    drop = property(lambda self: _one_or_pair(self._settings.drop),
                    lambda self, v: self.configure(drop=v),
                    doc="Probability that a message is lost: a number, or a (request, response) pair.")
    reset = property(lambda self: self._settings.reset,
                     lambda self, v: self.configure(reset=v),
                     doc="Probability that a request's connection is reset.")
    down = property(lambda self: self._settings.down,
                    lambda self, v: self.configure(down=v),
                    doc="True closes the link's port: callers are refused.")

    def _draw(self) -> tuple[Settings, tuple[float, float, float]]:
        """The settings now and three random numbers for one message."""
        with self._lock:
            rng = self._rng
            return self._settings, (rng.random(), rng.random(), rng.random())

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
        state = "closed" if self.closed else "down" if s.down else "cut" if self.cut else "up"
        return (f"<Link to {self.dst!r} {state}: latency_ms={self.latency_ms} jitter_ms={self.jitter_ms} "
                f"drop={self.drop} reset={s.reset}>")


class Network:
    """Named nodes and the links between them; partition them into groups and heal.

        >>> net = Network(seed=7)                          # doctest: +SKIP
        >>> to_b = net.link("a", server_b)                 # node a calls b through this link
        >>> net.partition(["a"], ["b", "c"])               # a can no longer reach b or c
        >>> net.heal()

    A partitioned link loses every message, as a real partition does: callers
    time out. Each link's seed derives from the network's seed and its ends.
    """

    def __init__(self, *, seed: int = 0, trace: tracing.Trace | None = None):
        self.seed = seed
        self.trace = tracing.default if trace is None else trace
        self.links: dict[tuple[str, str], Link] = {}
        self._groups: list[set[str]] = []

    def link(self, src: str, target, **settings) -> Link:
        """A link that node ``src`` uses to reach ``target`` (a server or URL)."""
        dst = tracing.name_for(*_address(target))
        if (src, dst) in self.links and not self.links[(src, dst)].closed:
            raise LinkError(f"the network already has a link from {src!r} to {dst!r}: net.links[({src!r}, {dst!r})]")
        link = Link(target, seed=f"{self.seed}:{src}->{dst}", trace=self.trace, **settings)
        self.links[(src, dst)] = link
        link.cut = self._separated(src, dst)
        return link

    def _separated(self, a: str, b: str) -> bool:
        group_of = {node: i for i, group in enumerate(self._groups) for node in group}
        return a in group_of and b in group_of and group_of[a] != group_of[b]

    def partition(self, *groups) -> None:
        """Split the named nodes into groups; links between different groups lose everything."""
        sets = [set(g) for g in groups]
        if len(sets) < 2:
            raise ValueError("a partition needs at least two groups of node names")
        seen: set[str] = set()
        for group in sets:
            if seen & group:
                raise ValueError(f"node(s) {sorted(seen & group)} appear in more than one group")
            seen |= group
        self._groups = sets
        self._apply()

    def heal(self) -> None:
        """End the partition: every link carries traffic again."""
        self._groups = []
        self._apply()

    def _apply(self) -> None:
        for (src, dst), link in self.links.items():
            link.cut = self._separated(src, dst)

    def close(self) -> None:
        """Close every link of the network."""
        for link in self.links.values():
            link.close()

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

