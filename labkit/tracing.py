"""Trace: one thread-safe log of every message between nodes.

Clients record what they send and what comes back, servers record what they
receive and answer, links record what they delay, drop or reset. Events of one
exchange share a trace id carried in the W3C ``traceparent`` header, so both
ends of a request join up on a sequence diagram.

    >>> log = Trace()
    >>> log.record("send", "alice", "hello", method="GET", path="/")
    >>> [e.kind for e in log]
    ['send']
"""

from __future__ import annotations

import collections
import contextvars
import itertools
import dataclasses
import json
import secrets
import threading
import time
from typing import Iterator

#: What each kind of event means, in the order an exchange produces them.
KINDS = {
    "send": "a client sent a request",
    "receive": "a server received a request",
    "reply": "a server answered (status)",
    "response": "the client got the answer (status)",
    "error": "the client got no answer (error: timeout, refused, reset, ...)",
    "delayed": "a link held a message back (detail: how long)",
    "dropped": "a link lost a message",
    "reset": "a link reset a connection (on the response: the service did the work)",
    "partitioned": "a partition lost a message (detail: rejected, if it reset the connection at once)",
    "duplicated": "a link delivered a request a second time",
    "answered": "a link answered in the service's place (status), without forwarding",
    "begin": "a node began a database transaction (detail: how long it waited for the lock)",
    "commit": "a node's transaction committed",
    "rollback": "a node's transaction rolled back",
}


@dataclasses.dataclass(frozen=True)
class Event:
    """One thing that happened on the wire; ``t`` is seconds since the trace began."""

    t: float
    kind: str
    src: str
    dst: str
    method: str = ""
    path: str = ""
    status: int | None = None
    error: str = ""
    trace_id: str = ""
    span_id: str = ""
    detail: str = ""


class Trace:
    """A thread-safe, append-only list of events with filters and export.

    ``max_events`` keeps only the newest that many (a long-running process's trace
    stays bounded); None keeps every event.
    """

    def __init__(self, events=(), *, start: float | None = None, max_events: int | None = None):
        if max_events is not None and (isinstance(max_events, bool) or not isinstance(max_events, int)
                                       or max_events < 1):
            raise ValueError(f"max_events is a whole number of events from 1, or None for all, not {max_events!r}")
        self._lock = threading.Lock()
        self._events: collections.deque[Event] = collections.deque(events, maxlen=max_events)
        self._recorded = len(self._events)  # every event ever recorded here, dropped ones too
        self.generation = 0                 # how many times it was cleared
        self.start = time.perf_counter() if start is None else start
        #: Called with each event recorded and the trace's start (a spawned service sends it to its parent).
        self.tee = None

    def record(self, kind: str, src: str, dst: str, *, at: float | None = None, **fields) -> Event:
        """Append an event of ``kind`` from ``src`` to ``dst``, stamped now (or at ``at``, a perf_counter time).

        ``perf_counter`` is the system's monotonic clock, one for every process on the
        machine: an event another process stamped lands on the same time axis.
        """
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; use one of {', '.join(KINDS)}")
        event = Event((time.perf_counter() if at is None else at) - self.start, kind, src, dst, **fields)
        with self._lock:
            self._events.append(event)
            self._recorded += 1
        if self.tee is not None:
            self.tee(event, self.start)
        return event

    def since(self, mark: int) -> tuple[list[Event], int]:
        """The events recorded after ``mark`` (0: from the start) still kept, and the mark to ask with next.

            >>> log = Trace(); new, mark = log.since(0); log.record("send", "a", "b"); len(log.since(mark)[0])
            1
        """
        with self._lock:
            first = self._recorded - len(self._events)   # the mark of the oldest event kept
            skip = max(mark - first, 0)
            return list(itertools.islice(self._events, skip, None)), self._recorded

    def events(self) -> list[Event]:
        """A snapshot of the events, in the order they were recorded."""
        with self._lock:
            return list(self._events)

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events())

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def __repr__(self) -> str:
        return f"<Trace: {len(self)} events>"

    def clear(self) -> None:
        """Forget every event and restart the clock."""
        with self._lock:
            self._events.clear()
            self.generation += 1  # a live view starts again
            self.start = time.perf_counter()

    def filter(self, *, kind=None, node=None, trace_id=None, path=None) -> "Trace":
        """A new Trace with the events that match every given criterion.

        ``kind`` is a kind or a collection of kinds; ``node`` matches either end.
        """
        kinds = {kind} if isinstance(kind, str) else set(kind) if kind else None
        chosen = [
            e for e in self.events()
            if (kinds is None or e.kind in kinds)
            and (node is None or node in (e.src, e.dst))
            and (trace_id is None or e.trace_id == trace_id)
            and (path is None or e.path == path)
        ]
        return Trace(chosen, start=self.start)

    def nodes(self) -> list[str]:
        """Node names in the order they first appear."""
        seen: dict[str, None] = {}
        for e in self.events():
            seen.setdefault(e.src)
            seen.setdefault(e.dst)
        return list(seen)

    def to_dicts(self) -> list[dict]:
        """The events as plain dictionaries."""
        return [dataclasses.asdict(e) for e in self.events()]

    def to_json(self, **kwargs) -> str:
        """The events as a JSON array."""
        return json.dumps(self.to_dicts(), **kwargs)


#: The trace every labkit server, client and link records to unless given another.
default = Trace()

@dataclasses.dataclass(frozen=True)
class Context:
    """The request a thread is serving: its trace and parent span ids, the node serving it, its trace."""

    trace_id: str
    span_id: str
    node: str
    trace: "Trace"


# The exchange a thread is working for: servers set it while handling a request,
# so a call the handler makes downstream carries the same trace id, and a database
# transaction it runs is recorded as the node's.
_context: contextvars.ContextVar[Context | None] = contextvars.ContextVar("labkit_trace_context", default=None)


def current() -> Context | None:
    """The request this thread is serving now, or None."""
    return _context.get()


def new_ids() -> tuple[str, str]:
    """A (trace id, span id) pair: the current exchange's trace id if any, a new span."""
    serving = _context.get()
    trace_id = serving.trace_id if serving else secrets.token_hex(16)
    return trace_id, secrets.token_hex(8)


def traceparent(trace_id: str, span_id: str) -> str:
    """The W3C ``traceparent`` header value for these ids."""
    return f"00-{trace_id}-{span_id}-01"


def parse_traceparent(value: str | None) -> tuple[str, str]:
    """(trace id, parent span id) from a ``traceparent`` value, or ("", "")."""
    parts = (value or "").strip().split("-")
    if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
        return parts[1], parts[2]
    return "", ""


# Who listens where: servers and links register their address so events name
# nodes, not ports. A stopped server's address keeps its name (until something else
# listens there), so a caller that calls it still sees the name on a diagram.
_names: dict[tuple[str, int], str] = {}
_former: dict[tuple[str, int], str] = {}
_served: set[str] = set()   # names a server of this process has had
_names_lock = threading.Lock()


def register_name(address: tuple[str, int], name: str, *, server: bool = False) -> None:
    with _names_lock:
        _names[address] = name
        _former.pop(address, None)
        if server:
            _served.add(name)


def forget_name(address: tuple[str, int]) -> None:
    with _names_lock:
        name = _names.pop(address, None)
        if name is not None:
            _former[address] = name


def name_for(host: str, port: int) -> str:
    """The node listening at host:port (or that last did), or "host:port" if labkit does not know it."""
    host = "127.0.0.1" if host == "localhost" else host
    with _names_lock:
        return _names.get((host, port)) or _former.get((host, port), f"{host}:{port}")


def names() -> dict[str, str]:
    """Every "host:port" this process knows a node's name for (those that stopped too) -> the name."""
    with _names_lock:
        return {f"{host}:{port}": name for (host, port), name in {**_former, **_names}.items()}


def was_served(name: str) -> bool:
    """Whether a server of this process has been called ``name``."""
    with _names_lock:
        return name in _served
