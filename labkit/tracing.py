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
    "reset": "a link reset a connection",
    "partitioned": "a link lost a message because of a partition",
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
        self.start = time.perf_counter() if start is None else start

    def record(self, kind: str, src: str, dst: str, **fields) -> Event:
        """Append an event of ``kind`` from ``src`` to ``dst``, stamped now."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}; use one of {', '.join(KINDS)}")
        event = Event(time.perf_counter() - self.start, kind, src, dst, **fields)
        with self._lock:
            self._events.append(event)
        return event

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

# The exchange a thread is working for: servers set it while handling a request,
# so a call the handler makes downstream carries the same trace id.
_context: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar(
    "labkit_trace_context", default=None
)


def new_ids() -> tuple[str, str]:
    """A (trace id, span id) pair: the current exchange's trace id if any, a new span."""
    current = _context.get()
    trace_id = current[0] if current else secrets.token_hex(16)
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
# nodes, not ports.
_names: dict[tuple[str, int], str] = {}
_names_lock = threading.Lock()


def register_name(address: tuple[str, int], name: str) -> None:
    with _names_lock:
        _names[address] = name


def forget_name(address: tuple[str, int]) -> None:
    with _names_lock:
        _names.pop(address, None)


def name_for(host: str, port: int) -> str:
    """The node listening at host:port, or "host:port" if labkit does not know it."""
    host = "127.0.0.1" if host == "localhost" else host
    with _names_lock:
        return _names.get((host, port), f"{host}:{port}")
