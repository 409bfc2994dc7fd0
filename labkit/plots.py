"""Pictures of a trace: the sequence diagram, latencies, throughput, topology.

    >>> from labkit import plots
    >>> plots.sequence(labkit.trace)        # doctest: +SKIP
    <Figure size 900x400 with 1 Axes>

Every function returns a ``matplotlib.figure.Figure`` built directly on the Agg
canvas, never through pyplot: figures are safe to draw from a background thread
and never pile up in pyplot's list of open figures. In a notebook a returned
figure shows as a PNG; its text (``<Figure size 900x400 with 1 Axes>``) depends
only on the figure's size, so nbval can compare it.

Colours follow the Okabe-Ito palette, which readers with colour-blindness can
tell apart: blue for 2xx (success), sky blue for 3xx (a redirect: look
elsewhere), orange for 4xx, vermillion for 5xx, black for a message lost or an
exchange that got no answer.

A message that never arrived keeps the slope rule of the others (the slope is
the time on the way): it is drawn along the line it would have taken and stops
with a cross where it was lost. A link sits half a lane in front of the service
it stands before (half-way between neighbouring lanes, and never on a third
lane), and what it loses on the way there or back is crossed there, at the time
the message would have reached it. A reset or a refused connection breaks at
once: a short stub from the sender, crossed. An answer that comes after its
caller gave up (a timeout) is drawn all the way to the caller's lane, where
nobody waits for it any more, and crossed there.

The sequence diagram names its artists with a ``gid`` so tests and curious
students can find them: "lanes", "messages" (arrow shafts), "heads", "pending"
(in flight), "timeouts" (dashed waits) and "crosses" (lost messages, errors).
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import math
import re
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from . import processes
from . import server as _server
from . import tracing
from .tracing import Event, Trace

# Okabe-Ito colours.
BLUE, ORANGE, VERMILLION, BLACK = "#0072B2", "#E69F00", "#D55E00", "#000000"
SKY, GREEN, PURPLE, GREY = "#56B4E9", "#009E73", "#CC79A7", "#999999"

_OUTCOMES = {  # outcome: (colour, legend text), in legend order
    "ok": (BLUE, "2xx answer"),
    "redirect": (SKY, "3xx answer (redirect)"),
    "client": (ORANGE, "4xx answer"),
    "server": (VERMILLION, "5xx answer"),
    "failed": (BLACK, "no answer"),
    "pending": (GREY, "in flight"),
}

_PRIORITY = {GREY: 0, GREEN: 0, PURPLE: 0, BLUE: 0, SKY: 0, ORANGE: 1, VERMILLION: 2, BLACK: 3}

#: Above this many messages the diagram draws no labels: they could not be read.
MAX_LABELLED = 60

_WIDTH = 9.0                 # inches; fixed so a figure's text repr is stable
_DPI = 100
_LINK_KINDS = ("delayed", "dropped", "partitioned", "reset", "answered", "duplicated")


# -- joining events into exchanges ---------------------------------------------


@dataclasses.dataclass
class _Exchange:
    """One request and its answer, pieced together from the events of both ends."""

    caller: str
    service: str
    method: str = ""
    path: str = ""
    id: int = 0
    trace_id: str = ""
    send: float | None = None       # the client sent the request
    receive: float | None = None    # the server received it
    reply: float | None = None      # the server answered
    end: float | None = None        # the client got the answer, or gave up
    status: int | None = None
    error: str = ""
    lost_request: float | None = None   # a link lost the request here
    lost_response: float | None = None  # a link lost the response here
    lost_kind: str = ""
    lost_delay: float = 0.0             # the seconds a lost message would have taken
    delay_request: float | None = None  # the seconds a link held (or would have held) the request
    delay_response: float | None = None  # ... and the answer
    reset: float | None = None          # a link reset the connection here
    reset_way: str = ""                 # "request" (on the way there) or "response" (on the way back)
    reset_by: str = ""                  # "the link", or "a partition" that rejects
    answered: float | None = None       # a link answered here, in the service's place
    copy: bool = False                  # a second copy of a request, sent by a link; its answer is discarded

    @property
    def start(self) -> float | None:
        return self.send if self.send is not None else self.receive

    @property
    def outcome(self) -> str:
        if self.error or self.lost_request is not None or self.lost_response is not None or self.reset is not None:
            return "failed"
        if self.status is None:
            return "pending"
        if self.reply is not None and self.send is not None and self.end is None and not self.copy:
            return "pending"  # the server answered; the answer is on its way
        if self.status < 300:
            return "ok"
        return "redirect" if self.status < 400 else "client" if self.status < 500 else "server"

    @property
    def fault(self) -> str:
        """What a link did to this exchange, in a few words ("" if nothing)."""
        if self.copy:
            return "a copy the link sent; the link discarded its answer"
        if self.answered is not None:
            return f"answered {self.status} by the link"
        if self.reset is not None:
            way = "on the way back" if self.reset_way == "response" or self.receive is not None else "on the way there"
            return f"reset {way} by {self.reset_by}" if self.reset_by == "a partition" else f"reset {way}"
        if self.lost_request is not None:
            return f"request {self.lost_kind}"
        if self.lost_response is not None:
            return f"answer {self.lost_kind}"
        return ""


@dataclasses.dataclass
class _Transaction:
    """One database transaction a node ran: when it began (and waited for the lock), when it ended, how."""

    caller: str          # the node that ran it
    service: str         # the database
    id: int = 0
    trace_id: str = ""
    span_id: str = ""
    begin: float = 0.0
    waited: float = 0.0
    end: float | None = None
    how: str = ""        # "commit", "rollback", or "" while it is open
    read_only: bool = False

    @property
    def outcome(self) -> str:
        return "pending" if not self.how else "committed" if self.how == "commit" else "rolled back"


_TRANSACTION_COLOURS = {"committed": GREEN, "rolled back": VERMILLION, "pending": GREY}
_TRANSACTION_KINDS = ("begin", "commit", "rollback")


def _is_timeout(error: str) -> bool:
    return "timeout" in error.lower() or "timed out" in error.lower()


def _seconds(detail: str) -> float:
    """The "N ms" a link event's detail names, in seconds (0 if none)."""
    number = detail.split(" ", 1)[0]
    return float(number) / 1000 if number.replace(".", "", 1).isdigit() else 0.0


class _Joiner:
    """Joins events into exchanges, one event at a time (the live diagram feeds it as they come)."""

    def __init__(self, *, keep_orphans: bool = True):
        self.exchanges: list[_Exchange] = []
        self.orphans: list[Event] = []       # link events no exchange claimed (kept only if keep_orphans)
        self._keep_orphans = keep_orphans
        self._by_span: dict[tuple[str, str], _Exchange] = {}
        self._by_trace: dict[str, list[_Exchange]] = {}
        self._unkeyed: dict[tuple, list[_Exchange]] = {}  # FIFO of open exchanges without ids
        self._ids = itertools.count()

    def _new(self, e: Event, caller: str, service: str) -> _Exchange:
        x = _Exchange(caller, service, e.method, e.path, id=next(self._ids), trace_id=e.trace_id)
        self.exchanges.append(x)
        self._by_trace.setdefault(e.trace_id, []).append(x)
        return x

    def forget(self, exchange_id: int) -> None:
        """Forget the exchange ``exchange_id`` (the oldest, in a bounded live diagram)."""
        index = next((i for i, x in enumerate(self.exchanges) if x.id == exchange_id), None)
        if index is None:
            return
        x = self.exchanges.pop(index)
        for key in [k for k, v in self._by_span.items() if v is x]:
            del self._by_span[key]
        peers = self._by_trace.get(x.trace_id, [])
        if x in peers:
            peers.remove(x)
            if not peers:
                del self._by_trace[x.trace_id]
        for key, queue in list(self._unkeyed.items()):
            if x in queue:
                queue.remove(x)
            if not queue:
                del self._unkeyed[key]

    def add(self, e: Event) -> _Exchange | _Transaction | None:
        """Join ``e``; the exchange (or transaction) it changed (None for an event that belongs to none)."""
        if e.kind in _TRANSACTION_KINDS:
            return self._transaction(e)
        if e.kind in _LINK_KINDS:
            if e.kind == "delayed":  # how long the message spends on its way: the slope of its arrow
                x, direction = _claim(self._by_trace.get(e.trace_id, ()), e)
                if x is None:
                    return None
                if direction == "request":
                    x.delay_request = _seconds(e.detail)
                else:
                    x.delay_response = _seconds(e.detail)
                return x
            if e.kind == "duplicated":  # the copy has a span of its own
                key = (e.trace_id, e.span_id)
                x = self._by_span.get(key) or self._by_span.setdefault(key, self._new(e, e.src, e.dst))
                x.copy, x.send = True, e.t
                return x
            x, direction = _claim(self._by_trace.get(e.trace_id, ()), e)
            if x is None:
                if self._keep_orphans:
                    self.orphans.append(e)
            elif e.kind == "reset" or (e.kind == "partitioned" and e.detail == "rejected"):
                x.reset, x.reset_by = e.t, "a partition" if e.kind == "partitioned" else "the link"
                x.reset_way = direction
            elif e.kind == "answered":
                x.answered, x.status = e.t, e.status
            elif direction == "request":
                x.lost_request, x.lost_kind, x.lost_delay = e.t, e.kind, _seconds(e.detail)
                if e.detail:  # a drop says how long the message would have taken; a partition does not
                    x.delay_request = x.lost_delay
            else:
                x.lost_response, x.lost_kind, x.lost_delay = e.t, e.kind, _seconds(e.detail)
                if e.detail:
                    x.delay_response = x.lost_delay
            return x
        if e.kind not in ("send", "receive", "reply", "response", "error"):
            return None
        outbound = e.kind in ("send", "receive")
        caller, service = (e.src, e.dst) if outbound else (e.dst, e.src)
        if e.trace_id and e.span_id:
            x = self._by_span.get((e.trace_id, e.span_id))
            if x is None:
                x = self._by_span[(e.trace_id, e.span_id)] = self._new(e, caller, service)
        else:
            # No ids (a browser, curl): pair the server's events first come, first served.
            side = "client" if e.kind in ("send", "response", "error") else "server"
            key = (side, caller, service, e.method, e.path)
            queue = self._unkeyed.get(key)
            if outbound:
                x = self._new(e, caller, service)
                self._unkeyed.setdefault(key, []).append(x)
            elif queue:
                x = queue.pop(0)
                if not queue:
                    del self._unkeyed[key]
            else:
                x = self._new(e, caller, service)
        if e.kind == "send":
            x.send, x.caller = e.t, e.src
        elif e.kind == "receive":
            # The server knows its own name; the client may only know an address.
            x.receive, x.service = e.t, e.dst
        elif e.kind == "reply":
            x.reply, x.status = e.t, e.status
        elif e.kind == "response":
            x.end, x.status = e.t, e.status
        else:
            x.end, x.error = e.t, e.error or "error"
        return x


    def _transaction(self, e: Event) -> _Transaction | None:
        key = ("tx", e.src, e.dst, e.trace_id, e.span_id)
        if e.kind == "begin":
            waited = re.search(r"(\d+) ms", e.detail)
            x = _Transaction(e.src, e.dst, id=next(self._ids), trace_id=e.trace_id, span_id=e.span_id, begin=e.t,
                             waited=int(waited.group(1)) / 1000 if waited else 0.0)
            self.exchanges.append(x)
            self._unkeyed.setdefault(key, []).append(x)
            return x
        open_ones = self._unkeyed.get(key)
        if not open_ones:
            return None
        x = open_ones.pop(0)
        if not open_ones:
            del self._unkeyed[key]
        x.end, x.how, x.read_only = e.t, e.kind, e.detail == "read only"
        return x


def _exchanges(events: list[Event]) -> tuple[list[_Exchange], list[Event]]:
    """Join events into exchanges; also return the link events no exchange claimed."""
    joiner = _Joiner()
    for e in events:
        joiner.add(e)
    return joiner.exchanges, joiner.orphans


def _claim(candidates, e: Event) -> tuple[_Exchange | None, str]:
    """The latest exchange a link event belongs to, and the message's direction."""
    for x in reversed(candidates):
        if getattr(x, "copy", False):  # a link's copy meets no fault of its own: its events are the original's
            continue
        start = x.start
        if start is not None and start > e.t:
            continue
        if (x.caller, x.service) == (e.src, e.dst):
            return x, "request"
        if (x.caller, x.service) == (e.dst, e.src):
            return x, "response"
    return None, ""


# -- the layout of a sequence diagram ---------------------------------------------
#
# One layout for both pictures: the PNG (sequence) and the live widget draw the
# same arrows, crosses, dashed waits and labels, in lane units (x) and seconds (y).


class _Drawing:
    """The arrows, crosses, dashed waits and labels of a sequence diagram, in lanes and seconds."""

    def __init__(self, lane: dict[str, int], labelled: bool = True):
        self.lane = lane
        self.labelled = labelled
        self.arrows: list[dict] = []
        self.pending: list[tuple] = []       # ((x0, y0), (x1, y1)): in flight
        self.waits: list[tuple] = []         # ((x0, y0), (x1, y1)): a caller waiting until its timeout
        self.crosses: list[tuple] = []       # (x, y): a message lost, or a connection broken
        self.marks: list[tuple] = []         # (x, y, side, text, colour): a label beside a point
        self.spans: list[tuple] = []         # ((x, y0), (x, y1), colour): an open transaction on a database's lane
        self.links: list[tuple] = []         # (x, y): a link answered in the service's place
        self.outcomes: set[str] = set()

    def arrow(self, x0, y0, x1, y1, colour, label="", where="above", head=True):
        self.arrows.append(dict(x0=x0, y0=y0, x1=x1, y1=y1, colour=colour, label=label, where=where, head=head))

    def mark(self, x, y, sign, text, colour=BLACK):
        """A label beside a point, on the side ``sign`` points to."""
        self.marks.append((x, y, sign, text, colour))

    @property
    def messages(self) -> int:
        return len(self.arrows) + len(self.pending)


def _draw_transaction(draw: _Drawing, x: _Transaction, labelled: bool) -> None:
    """A transaction: BEGIN to the database, the time it is open as a bar on the database's lane, COMMIT or
    ROLLBACK; a dotted line on the node's lane while it waited for the lock."""
    node, database = draw.lane[x.caller], draw.lane[x.service]
    colour = _TRANSACTION_COLOURS[x.outcome]
    draw.outcomes.add(f"transaction {x.outcome}")
    if x.waited:
        draw.pending.append(((node, x.begin - x.waited), (node, x.begin)))
        draw.outcomes.add("lock wait")
    draw.arrow(node, x.begin, database, x.begin, GREY, "BEGIN" if labelled else "", head=True)
    end = x.end if x.end is not None else x.begin
    draw.spans.append(((database, x.begin), (database, end), colour))
    if x.how:
        draw.arrow(node, end, database, end, colour, x.how.upper() if labelled else "", where="below")


def _draw(draw: _Drawing, x, labelled: bool) -> None:
    (_draw_transaction if isinstance(x, _Transaction) else _draw_exchange)(draw, x, labelled)


#: How far (in lanes) from its sender a connection that broke at once (reset, refused) is drawn.
_STUB = 0.3


def _link_x(caller: float, service: float) -> float:
    """Where a link in front of ``service`` is drawn: half a lane before it, so half-way between
    neighbouring lanes and never on a third lane between them."""
    if caller == service:
        return caller
    return service - 0.5 if service > caller else service + 0.5


def _passes(x0: float, t0: float, x1: float, duration: float, at: float) -> float:
    """When a message that left lane ``x0`` at ``t0`` and takes ``duration`` to reach lane ``x1``
    passes the point ``at`` between them: the slope of its arrow is its time on the way."""
    return t0 + duration * ((at - x0) / (x1 - x0) if x1 != x0 else 1.0)


def _draw_exchange(draw: _Drawing, x: _Exchange, labelled: bool) -> None:
    """Add the arrows, crosses and dashed waits of one exchange."""
    caller, service = draw.lane[x.caller], draw.lane[x.service]
    outcome = x.outcome
    if not x.copy:
        draw.outcomes.add(outcome)
    colour = _OUTCOMES[outcome][0]
    link = _link_x(caller, service)
    direction = 1 if service >= caller else -1
    start = x.start
    request = f"{x.method} {_short(x.path)}".strip() if labelled else ""
    arrived = x.status is not None and not x.error and x.reply is None  # answered, by a server that records nothing
    timed_out = bool(x.error) and _is_timeout(x.error)
    there = x.delay_request or 0.0   # seconds on the way there, as far as the trace tells
    back = x.delay_response or 0.0   # ... and on the way back
    status = str(x.status) if labelled and x.status is not None else ""

    # The request.
    if x.copy:  # sent by the link, answered back to it, and the answer dropped there
        draw.outcomes.add("copy")
        if x.receive is not None:
            draw.arrow(link, x.send, service, x.receive, PURPLE, f"{request} (copy)" if request else "")
        if x.reply is not None:
            trip = x.reply + (x.receive - x.send if x.receive is not None else 0.0)  # as long as the way there
            draw.arrow(service, x.reply, link, trip, PURPLE, status, where="below")
        return
    if x.answered is not None and x.receive is None:  # the network answered: the service never saw it
        draw.outcomes.add("answered")
        draw.links.append((link, x.answered))
        label = f"{x.status} (link)" if labelled else ""
        if start is not None:
            draw.arrow(caller, start, link, x.answered, colour, request)
        draw.arrow(link, x.answered, caller, x.end if x.end is not None else x.answered, colour, label,
                   where="below")
        return
    # A server that records nothing (not a labkit server) behind a link: the link saw its answer.
    receive, reply = x.receive, x.reply
    answer_at_link = x.reset if x.reset_way == "response" else x.lost_response
    if reply is None and answer_at_link is not None and start is not None:
        reply = answer_at_link
        receive = receive if receive is not None else min(start + there, reply)
    if start is not None:
        if receive is not None:
            draw.arrow(caller, start, service, receive, colour, request)
        elif arrived:  # answered by a server that records nothing: after the link's delay, else half-way
            draw.arrow(caller, start, service, start + there if there else (start + x.end) / 2, colour, request)
        elif x.reset is not None or (x.error and not timed_out):
            # Reset or refused on the way there: the connection broke at once, next to the caller,
            # before the request got anywhere (the service never saw it).
            at = x.reset if x.reset is not None else x.end
            tip = caller + _STUB * direction
            draw.arrow(caller, start, tip, at, colour, head=False)
            draw.crosses.append((tip, at))
            draw.outcomes.add("reset" if x.reset is not None else "refused")
            if labelled:
                draw.mark(tip, at, direction, x.error or "reset")
        elif x.lost_request is not None or timed_out:
            # Lost on the way there: along the line it would have taken, up to the link, crossed there.
            at = _passes(caller, start, service, there, link)
            draw.arrow(caller, start, link, at, colour, request, head=False)
            draw.crosses.append((link, at))
            draw.outcomes.add("lost")
        else:  # still on its way
            draw.pending.append(((caller, start), (link, _passes(caller, start, service, there, link))))

    # The response.
    if reply is not None:
        if x.send is None:  # a caller that records nothing (a browser): it got the answer at once
            draw.arrow(service, reply, caller, reply, colour, status, where="below")
        elif x.end is not None and not x.error and x.lost_response is None:
            draw.arrow(service, reply, caller, x.end, colour, status, where="below")
        elif x.reset is not None:
            # Reset on the way back: the service did the work; its answer broke at once, next to it.
            at = max(x.reset, reply)
            tip = service - _STUB * direction
            draw.arrow(service, reply, tip, at, colour, status, where="below", head=False)
            draw.crosses.append((tip, at))
            draw.outcomes.add("reset")
            if labelled:
                draw.mark(tip, at, -direction, x.error or "reset")
        elif x.lost_response is not None:
            # Lost on the way back: along the line it would have taken, up to the link, crossed there.
            at = _passes(service, reply, caller, back, link)
            draw.arrow(service, reply, link, at, colour, status, where="below", head=False)
            draw.crosses.append((link, at))
            draw.outcomes.add("lost")
        elif timed_out:
            # The caller gave up first: the answer still travels, and reaches a caller no longer listening.
            at = max(reply + back, x.end if x.end is not None else reply)
            draw.arrow(service, reply, caller, at, colour, status, where="below", head=False)
            draw.crosses.append((caller, at))
            draw.outcomes.add("lost")
            if labelled:
                draw.mark(caller, at, direction, "too late")
        elif x.error:  # the connection broke while the answer was on its way
            at = max(x.end if x.end is not None else reply, reply)
            draw.arrow(service, reply, link, at, colour, status, where="below", head=False)
            draw.crosses.append((link, at))
            draw.outcomes.add("reset" if "reset" in x.error else "lost")
            if labelled:
                draw.mark(link, at, -direction, x.error)
        else:  # still on its way
            draw.pending.append(((service, reply), (link, _passes(service, reply, caller, back, link))))
    elif x.end is not None and not x.error and x.status is not None:
        status = str(x.status) if labelled else ""
        if start is None:
            draw.arrow(service, x.end, caller, x.end, colour, status, where="below")
        else:
            draw.arrow(service, max(x.end - back, start + there) if back else (start + x.end) / 2, caller, x.end,
                       colour, status, where="below")

    # The caller's side of a failure.
    if x.error and start is not None and x.end is not None:
        offset = caller + 0.04 * direction
        if timed_out:
            draw.waits.append(((offset, start), (offset, x.end)))
            draw.outcomes.add("timeout")
            if labelled:
                draw.mark(offset, (start + x.end) / 2, direction, x.error)
        elif receive is not None and reply is None and x.reset is None:
            # The request arrived, then the connection broke before any answer (a crash, a link gone down).
            draw.crosses.append((link, x.end))
            draw.outcomes.add("reset" if "reset" in x.error else "lost")
            if labelled:
                draw.mark(link, x.end, -direction, x.error)


def _lanes(exchanges, orphans, nodes=()) -> list[str]:
    names: dict[str, None] = dict.fromkeys(nodes or ())
    for x in exchanges:
        names.setdefault(x.caller)
        names.setdefault(x.service)
    for e in orphans:
        names.setdefault(e.src)
        names.setdefault(e.dst)
    return list(names)


def _states(lanes, services) -> dict[str, str]:
    """Each lane called as a service on the diagram (in ``services``) that names a server of this
    kernel not running now ("stopped"), or a spawned service not running ("killed", "paused").
    A lane only ever seen calling is a client's, whatever a server of that name once did."""
    running = {server.name for server in _server.running()}
    states = {name: "stopped" for name in lanes
              if name in services and tracing.was_served(name) and name not in running}
    states.update({child.name: child.state for child in processes.spawned()
                   if child.name in lanes and child.name in services and child.state != "running"})
    return states


def layout(x, lane: dict[str, int]) -> dict:
    """One exchange (or transaction) as the live diagram draws it: its shapes in lanes and seconds, and its details."""
    draw = _Drawing(lane)
    _draw(draw, x, labelled=True)
    if isinstance(x, _Transaction):
        details = {"request": f"transaction of {x.caller}", "status": x.how or "open", "error": "",
                   "fault": f"waited {x.waited * 1000:.0f} ms for the lock" if x.waited else "",
                   "sent": x.begin, "arrived": None, "answered": None, "back": x.end, "trace_id": x.trace_id}
    else:
        details = {"request": f"{x.method} {x.path}".strip(), "status": x.status, "error": x.error,
                   "fault": x.fault, "sent": x.send, "arrived": x.receive, "answered": x.reply,
                   "back": x.end, "trace_id": x.trace_id}
    return {"id": x.id, "caller": x.caller, "service": x.service, "outcome": x.outcome, "arrows": draw.arrows,
            "pending": draw.pending, "waits": draw.waits, "crosses": draw.crosses, "marks": draw.marks,
            "spans": draw.spans, "links": draw.links, "kinds": sorted(draw.outcomes), "details": details}


# -- the sequence diagram ------------------------------------------------------


def sequence(trace, *, nodes=None, title: str | None = None, max_events: int | None = None,
             transactions: str = "writes") -> Figure:
    """A swimlane diagram: one lane per node, time flowing down, an arrow per message.

    ``trace`` is a :class:`labkit.Trace` or a list of its events. ``nodes``
    orders the lanes (others follow in order of appearance); ``max_events``
    draws only the most recent events. An arrow's slope is the time the message
    spent on its way; a message that never arrived keeps the slope it would have
    had and stops with a cross where it was lost: at the link (half a lane before
    the service) if a link lost it on the way there or back, next to the sender
    if the connection was reset or refused at once, on the caller's lane if it
    came after the caller gave up. A dashed line is a caller waiting until it
    timed out. Method, path and status label the arrows when there are at most
    60 messages. A lane whose server has stopped says so.
    ``transactions`` draws the database transactions services ran ("writes": those
    that wrote; "all"; "none"): BEGIN, the time it holds the database (a bar on the
    database's lane), COMMIT or ROLLBACK, and any wait for the lock.

        >>> fig = sequence(labkit.trace)                      # doctest: +SKIP
        >>> fig = sequence(labkit.trace.filter(node="hello"))  # doctest: +SKIP
    """
    events = trace.events() if isinstance(trace, Trace) else list(trace)
    if max_events is not None:
        if max_events < 1:
            raise ValueError(f"max_events must be a positive number of events, not {max_events!r}")
        events = events[-max_events:]
    if transactions not in ("writes", "all", "none"):
        raise ValueError(f'transactions is "writes", "all" or "none", not {transactions!r}')
    exchanges, orphans = _exchanges(events)
    exchanges = [x for x in exchanges if not isinstance(x, _Transaction) or transactions == "all"
                 or (transactions == "writes" and not x.read_only)]
    lanes = _lanes(exchanges, orphans, nodes)
    lane = {name: i for i, name in enumerate(lanes)}
    states = _states(lanes, {x.service for x in exchanges} | {e.dst for e in orphans})

    times = [e.t for e in events] or [0.0]
    n_messages = sum(2 if isinstance(x, _Transaction) else (x.start is not None) + (x.reply is not None
                     or x.end is not None) for x in exchanges)
    labelled = n_messages <= MAX_LABELLED
    draw = _Drawing(lane, labelled)
    for x in exchanges:
        _draw(draw, x, labelled)
    for e in orphans:  # lost by a link, in an exchange the trace does not hold: crossed at the link
        if e.kind in ("dropped", "partitioned"):
            a, b = lane[e.src], lane[e.dst]
            # Half-way between neighbouring lanes, else half a lane before the receiver: never on a third lane.
            at = _link_x(a, b)
            draw.crosses.append((at, _passes(a, e.t, b, _seconds(e.detail), at)))
            draw.outcomes.add("lost")
    times += [y for _, y in draw.crosses] + [y for segment in draw.pending for _, y in segment]
    t_min, t_max = min(times), max(times)
    pad = max((t_max - t_min) * 0.06, 0.002)
    y_top, y_bottom = t_min - pad, t_max + pad

    handles = _legend(draw)
    rows = math.ceil(len(handles) / _LEGEND_COLUMNS)
    height = min(8.0, max(3.0, 1.7 + 0.28 * n_messages)) + 0.2 * max(rows - 1, 0)
    margins = dict(left=0.8, right=0.25, top=0.5 + (0.3 if title else 0) + (0.15 if states else 0),
                   bottom=0.35 + 0.2 * rows)
    fig = Figure(figsize=(_WIDTH, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax_w = _WIDTH - margins["left"] - margins["right"]
    ax_h = height - margins["top"] - margins["bottom"]
    ax = fig.add_axes((margins["left"] / _WIDTH, margins["bottom"] / height, ax_w / _WIDTH, ax_h / height))
    n_lanes = max(len(lanes), 1)
    x_left, x_right = -0.4, n_lanes - 0.6
    ax.set_xlim(x_left, x_right)
    ax.set_ylim(y_bottom, y_top)   # inverted: time flows down
    sx, sy = ax_w / (x_right - x_left), ax_h / (y_bottom - y_top)   # inches per lane, per second

    # Lanes, then messages, then heads and crosses on top.
    lane_lines = LineCollection([((i, y_top), (i, y_bottom)) for i in range(len(lanes))],
                                colors=["#DDDDDD" if lanes[i] in states else "#BBBBBB" for i in range(len(lanes))],
                                linewidths=1.0, linestyles=[(0, (2, 2)) if lanes[i] in states else "solid"
                                                            for i in range(len(lanes))], zorder=1)
    lane_lines.set_gid("lanes")
    ax.add_collection(lane_lines)
    # Failures last, so a crowded diagram still shows them on top.
    arrows = sorted(draw.arrows, key=lambda a: _PRIORITY[a["colour"]])
    shafts = LineCollection([((a["x0"], a["y0"]), (a["x1"], a["y1"])) for a in arrows],
                            colors=[a["colour"] for a in arrows] or BLUE, linewidths=1.4 if labelled else 0.8, zorder=3)
    shafts.set_gid("messages")
    ax.add_collection(shafts)
    pending = LineCollection(draw.pending, colors=GREY, linewidths=1.2, linestyles=":", zorder=3)
    pending.set_gid("pending")
    ax.add_collection(pending)
    waits = LineCollection(draw.waits, colors=BLACK, linewidths=1.3, linestyles=(0, (4, 3)), zorder=2)
    waits.set_gid("timeouts")
    ax.add_collection(waits)
    spans = LineCollection([(a, b) for a, b, _ in draw.spans], colors=[c for _, _, c in draw.spans] or GREEN,
                           linewidths=7, alpha=0.45, zorder=2)
    spans.set_gid("transactions")
    ax.add_collection(spans)
    size = (0.07, 0.025) if not labelled else (0.11, 0.04)
    with_heads = [a for a in arrows if a["head"]]
    heads = PolyCollection([_head(a, sx, sy, size) for a in with_heads], facecolors=[a["colour"] for a in with_heads]
                           or BLUE, edgecolors="none", zorder=4)
    heads.set_gid("heads")
    ax.add_collection(heads)
    crosses = ax.scatter([c[0] for c in draw.crosses], [c[1] for c in draw.crosses],
                         marker="x", s=70 if labelled else 40, linewidths=2.2 if labelled else 1.6,
                         color=BLACK, zorder=5)
    crosses.set_gid("crosses")
    links = ax.scatter([p[0] for p in draw.links], [p[1] for p in draw.links], marker="D", s=36 if labelled else 20,
                       color=BLACK, zorder=5)
    links.set_gid("link answers")

    if labelled:
        labels = [(a["where"], a["x0"], a["y0"], a["x1"], a["y1"], a["label"], a["colour"])
                  for a in draw.arrows if a["label"]]
        labels += [("beside", x, y, x + sign, y, text, colour) for x, y, sign, text, colour in draw.marks]
        _place_labels(ax, labels, sx, sy, x_left, y_top)

    ax.xaxis.tick_top()
    ax.set_xticks(range(len(lanes)), [f"{name}\n({states[name]})" if name in states else name for name in lanes],
                  fontsize=10, fontweight="bold")
    for tick, name in zip(ax.get_xticklabels(), lanes):
        if name in states:
            tick.set_color(GREY)
    ax.tick_params(axis="x", length=0, pad=6)
    ax.tick_params(axis="y", labelsize=8)
    ax.set_ylabel("seconds since the trace began", fontsize=9)
    for side in ("top", "right", "bottom"):
        ax.spines[side].set_visible(False)
    ax.spines["left"].set_color("#BBBBBB")
    if title:
        fig.text(0.5, 1 - 0.12 / height, title, ha="center", va="top", fontsize=11)
    if not exchanges and not orphans:
        ax.text(0.5, 0.5, "no messages yet", transform=ax.transAxes, ha="center", va="center", color=GREY)
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.04 / height),
                   ncol=min(len(handles), _LEGEND_COLUMNS), frameon=False, fontsize=8, handlelength=2.2,
                   columnspacing=1.6)
    return fig


def _head(arrow: dict, sx: float, sy: float, size) -> tuple:
    """The triangle of an arrow's head, in data units, ``size`` (length, half width) inches."""
    x0, y0, x1, y1 = arrow["x0"], arrow["y0"], arrow["x1"], arrow["y1"]
    dx, dy = (x1 - x0) * sx, (y1 - y0) * sy    # inches
    norm = math.hypot(dx, dy) or 1e-9
    ux, uy = dx / norm, dy / norm
    length, half_width = min(size[0], norm * 0.6), size[1]
    bx, by = -ux * length, -uy * length                   # from tip back to base
    px, py = -uy * half_width, ux * half_width            # across the shaft
    return ((x1, y1), (x1 + (bx + px) / sx, y1 + (by + py) / sy), (x1 + (bx - px) / sx, y1 + (by - py) / sy))


def _short(path: str, limit: int = 22) -> str:
    return path if len(path) <= limit else path[: limit - 1] + "…"


def _place_labels(ax, labels, sx: float, sy: float, x_left: float, y_top: float, fontsize: float = 8) -> None:
    """Put each label on its arrow where it overlaps no other label, if it can."""
    per_x, per_y = sx * 72, sy * 72    # points per lane, per second (downwards)
    char_w, line_h = fontsize * 0.62, fontsize * 1.35
    placed: list[tuple[float, float, float, float]] = []

    def box(px, py, text, where, sign):
        w = char_w * len(text) + 4
        if where == "beside":
            left = px + 5 if sign > 0 else px - 5 - w
            return (left, py - line_h / 2, left + w, py + line_h / 2)
        top = py - line_h - 1 if where == "above" else py + 1
        return (px - w / 2, top, px + w / 2, top + line_h)

    def overlap(a, b):
        return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))

    for where, x0, y0, x1, y1, text, colour in labels:
        sign = 1 if x1 >= x0 else -1
        best = None
        for f in (0.5, 0.3, 0.7, 0.18, 0.82) if where != "beside" else (0.0,):
            px = (x0 + (x1 - x0) * f - x_left) * per_x
            py = (y0 + (y1 - y0) * f - y_top) * per_y
            b = box(px, py, text, where, sign)
            cost = sum(overlap(b, p) for p in placed)
            if best is None or cost < best[0]:
                best = (cost, f, b)
            if cost == 0:
                break
        _, f, b = best
        placed.append(b)
        lx, ly = x0 + (x1 - x0) * f, y0 + (y1 - y0) * f
        if where == "beside":
            ax.annotate(text, (lx, ly), xytext=(5 * sign, 0), textcoords="offset points", fontsize=fontsize,
                        color=colour, va="center", ha="left" if sign > 0 else "right", zorder=6)
        else:
            ax.text(lx, ly, text, fontsize=fontsize, color=colour, ha="center",
                    va="bottom" if where == "above" else "top", zorder=6,
                    bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8))


_LEGEND_COLUMNS = 5


def _legend(draw: _Drawing) -> list[Line2D]:
    """The legend's entries: only what the diagram shows."""
    handles = [Line2D([], [], color=colour, linewidth=2, label=text)
               for outcome, (colour, text) in _OUTCOMES.items() if outcome in draw.outcomes]
    broken = [text for kind, text in (("lost", "lost"), ("reset", "reset"), ("refused", "refused"))
              if kind in draw.outcomes]
    if draw.crosses:
        handles.append(Line2D([], [], color=BLACK, marker="x", linestyle="none", markersize=7,
                              markeredgewidth=2, label=" / ".join(broken) or "lost"))
    if draw.links:
        handles.append(Line2D([], [], color=BLACK, marker="D", linestyle="none", markersize=5,
                              label="answered by the link"))
    if "copy" in draw.outcomes:
        handles.append(Line2D([], [], color=PURPLE, linewidth=2, label="copy sent by the link"))
    if "timeout" in draw.outcomes:
        handles.append(Line2D([], [], color=BLACK, linestyle=(0, (4, 3)), linewidth=1.3,
                              label="waiting until timeout"))
    for outcome, colour in (("transaction committed", GREEN), ("transaction rolled back", VERMILLION)):
        if outcome in draw.outcomes:
            handles.append(Line2D([], [], color=colour, linewidth=6, alpha=0.45, label=outcome))
    if "lock wait" in draw.outcomes:
        handles.append(Line2D([], [], color=GREY, linestyle=":", linewidth=1.2, label="waiting for the lock"))
    return handles


# -- latency, throughput, topology -------------------------------------------


def latencies(trace) -> list[float]:
    """Milliseconds from each request's send to its response or error, in order."""
    events = trace.events() if isinstance(trace, Trace) else list(trace)
    exchanges, _ = _exchanges(events)
    return [(x.end - x.send) * 1000 for x in exchanges if x.send is not None and x.end is not None]


def latency_histogram(latencies_ms, *, title: str | None = None) -> Figure:
    """A histogram of latencies in milliseconds, median and 99th percentile marked.

    ``latencies_ms`` is a list of milliseconds, or a Trace (or its events), from
    which each exchange's latency is taken: its response or error time minus
    its send time.

        >>> fig = latency_histogram([12, 15, 11, 240, 13])
    """
    if isinstance(latencies_ms, Trace):
        values = latencies(latencies_ms)
    else:
        items = list(latencies_ms)
        values = latencies(items) if items and isinstance(items[0], Event) else items
    data = np.asarray(values, dtype=float)
    fig = Figure(figsize=(7, 3.5), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.16, 0.86, 0.72 if title else 0.78))
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("requests")
    if title:
        ax.set_title(title, fontsize=11)
    if data.size == 0:
        ax.text(0.5, 0.5, "no latencies yet", transform=ax.transAxes, ha="center", va="center", color=GREY)
        return fig
    bins = min(50, max(5, int(np.sqrt(data.size)) + 1))
    ax.hist(data, bins=bins, color=SKY, edgecolor="white")
    median, p99 = np.percentile(data, [50, 99])
    ax.axvline(median, color=BLUE, linewidth=2, label=f"median {median:.1f} ms")
    ax.axvline(p99, color=VERMILLION, linewidth=2, linestyle="--", label=f"p99 {p99:.1f} ms")
    ax.legend(frameon=False, fontsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    return fig


def throughput_curve(concurrency, throughput, *, latency_ms=None, title: str | None = None) -> Figure:
    """Requests per second against the number of concurrent clients.

    With ``latency_ms`` (one median per point) a second axis shows latency, so
    the knee where more clients only mean more waiting is plain to see.

        >>> fig = throughput_curve([1, 2, 4, 8], [95, 180, 310, 320], latency_ms=[10, 11, 13, 25])
    """
    xs, ys = list(concurrency), list(throughput)
    if len(xs) != len(ys):
        raise ValueError(f"concurrency has {len(xs)} values but throughput has {len(ys)}; give one throughput per level")
    fig = Figure(figsize=(7, 3.5), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.1, 0.16, 0.78, 0.72 if title else 0.78))
    ax.plot(xs, ys, marker="o", color=BLUE, label="throughput")
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests per second", color=BLUE)
    ax.set_ylim(bottom=0)
    if title:
        ax.set_title(title, fontsize=11)
    if latency_ms is not None:
        lat = list(latency_ms)
        if len(lat) != len(xs):
            raise ValueError(f"latency_ms has {len(lat)} values but concurrency has {len(xs)}; give one per level")
        ax2 = ax.twinx()
        ax2.plot(xs, lat, marker="s", linestyle="--", color=VERMILLION, label="median latency")
        ax2.set_ylabel("median latency (ms)", color=VERMILLION)
        ax2.set_ylim(bottom=0)
        ax.legend(handles=ax.get_lines() + ax2.get_lines(), frameon=False, fontsize=8, loc="upper left")
    return fig


def topology(nodes, edges, *, down=(), cut=()) -> Figure:
    """Nodes on a circle and the links between them; down nodes and cut links marked.

    ``edges`` are (a, b) pairs of node names; ``cut`` lists edges that carry
    nothing (a partition), ``down`` names nodes that are not running.

        >>> fig = topology(["a", "b", "c"], [("a", "b"), ("b", "c")], down=["c"])
    """
    nodes = list(nodes)
    known = set(nodes)
    edges = [tuple(edge) for edge in edges]
    for a, b in edges + [tuple(c) for c in cut]:
        for name in (a, b):
            if name not in known:
                raise ValueError(f"edge ({a!r}, {b!r}) names {name!r}, which is not among the nodes {nodes}")
    down, cut = set(down), {frozenset(c) for c in cut}
    n = len(nodes)
    angles = [math.pi / 2 - 2 * math.pi * i / max(n, 1) for i in range(n)]
    where = {name: (0.0, 0.0) if n == 1 else (math.cos(a), math.sin(a)) for name, a in zip(nodes, angles)}

    fig = Figure(figsize=(5, 4), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96))
    ax.set_xlim(-1.5, 1.5)
    ax.set_ylim(-1.3, 1.3)
    ax.set_aspect("equal")
    ax.set_axis_off()
    whole = [(where[a], where[b]) for a, b in edges if frozenset((a, b)) not in cut]
    broken = [(where[a], where[b]) for a, b in edges if frozenset((a, b)) in cut]
    ax.add_collection(LineCollection(whole, colors=GREY, linewidths=2, zorder=1, gid="edges"))
    ax.add_collection(LineCollection(broken, colors=VERMILLION, linewidths=2, linestyles="--", zorder=1, gid="cut"))
    if broken:
        mids = [((p[0] + q[0]) / 2, (p[1] + q[1]) / 2) for p, q in broken]
        ax.scatter(*zip(*mids), marker="x", s=80, linewidths=2.5, color=VERMILLION, zorder=2)
    up_nodes = [name for name in nodes if name not in down]
    down_nodes = [name for name in nodes if name in down]
    for group, face, edge in ((up_nodes, SKY, BLUE), (down_nodes, "#DDDDDD", GREY)):
        if group:
            ax.scatter([where[m][0] for m in group], [where[m][1] for m in group], s=900,
                       facecolor=face, edgecolor=edge, linewidths=2, zorder=3,
                       gid="up" if face == SKY else "down")
    for name in nodes:
        px, py = where[name]
        ax.text(px, py, name, ha="center", va="center", fontsize=9, zorder=4,
                color=GREY if name in down else BLACK)
        if name in down:
            ax.text(px, py - 0.24, "down", ha="center", va="top", fontsize=8, color=GREY, zorder=4)
    return fig


# -- notebooks -------------------------------------------------------------------


def png(fig: Figure, **savefig_kwargs) -> bytes:
    """The figure as PNG bytes (tightly cropped)."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    savefig_kwargs.setdefault("bbox_inches", "tight")
    fig.savefig(buffer, format="png", **savefig_kwargs)
    return buffer.getvalue()


def _register_with_ipython() -> None:
    """Show figures as PNG in IPython, since no pyplot backend is there to do it."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    if shell is not None:
        shell.display_formatter.formatters["image/png"].for_type(Figure, png)


_register_with_ipython()
