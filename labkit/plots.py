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
tell apart: blue for 2xx/3xx, orange for 4xx, vermillion for 5xx, black for a
message lost or an exchange that got no answer.

The sequence diagram names its artists with a ``gid`` so tests and curious
students can find them: "lanes", "messages" (arrow shafts), "heads", "pending"
(in flight), "timeouts" (dashed waits) and "crosses" (lost messages, errors).
"""

from __future__ import annotations

import dataclasses
import io
import math
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .tracing import Event, Trace

# Okabe-Ito colours.
BLUE, ORANGE, VERMILLION, BLACK = "#0072B2", "#E69F00", "#D55E00", "#000000"
SKY, GREEN, PURPLE, GREY = "#56B4E9", "#009E73", "#CC79A7", "#999999"

_OUTCOMES = {  # outcome: (colour, legend text), in legend order
    "ok": (BLUE, "2xx/3xx answer"),
    "client": (ORANGE, "4xx answer"),
    "server": (VERMILLION, "5xx answer"),
    "failed": (BLACK, "no answer"),
    "pending": (GREY, "in flight"),
}

_PRIORITY = {GREY: 0, BLUE: 0, ORANGE: 1, VERMILLION: 2, BLACK: 3}

#: Above this many messages the diagram draws no labels: they could not be read.
MAX_LABELLED = 60

_WIDTH = 9.0                 # inches; fixed so a figure's text repr is stable
_DPI = 100
_LINK_KINDS = ("delayed", "dropped", "partitioned", "reset")


# -- joining events into exchanges ---------------------------------------------


@dataclasses.dataclass
class _Exchange:
    """One request and its answer, pieced together from the events of both ends."""

    caller: str
    service: str
    method: str = ""
    path: str = ""
    send: float | None = None       # the client sent the request
    receive: float | None = None    # the server received it
    reply: float | None = None      # the server answered
    end: float | None = None        # the client got the answer, or gave up
    status: int | None = None
    error: str = ""
    lost_request: float | None = None   # a link lost the request here
    lost_response: float | None = None  # a link lost the response here
    lost_kind: str = ""
    reset: float | None = None          # a link reset the connection here

    @property
    def start(self) -> float | None:
        return self.send if self.send is not None else self.receive

    @property
    def outcome(self) -> str:
        if self.error or self.lost_request is not None or self.lost_response is not None or self.reset is not None:
            return "failed"
        if self.status is None:
            return "pending"
        if self.reply is not None and self.send is not None and self.end is None:
            return "pending"  # the server answered; the answer is on its way
        return "ok" if self.status < 400 else "client" if self.status < 500 else "server"


def _is_timeout(error: str) -> bool:
    return "timeout" in error.lower() or "timed out" in error.lower()


def _exchanges(events: list[Event]) -> tuple[list[_Exchange], list[Event]]:
    """Join events into exchanges; also return the link events no exchange claimed."""
    exchanges: list[_Exchange] = []
    by_span: dict[tuple[str, str], _Exchange] = {}
    by_trace: dict[str, list[_Exchange]] = {}
    unkeyed: dict[tuple, list[_Exchange]] = {}  # FIFO of open exchanges without ids
    orphans: list[Event] = []

    def new(e: Event, caller: str, service: str) -> _Exchange:
        x = _Exchange(caller, service, e.method, e.path)
        exchanges.append(x)
        by_trace.setdefault(e.trace_id, []).append(x)
        return x

    for e in events:
        if e.kind in _LINK_KINDS:
            if e.kind == "delayed":
                continue
            x, direction = _claim(by_trace.get(e.trace_id, ()), e)
            if x is None:
                orphans.append(e)
            elif e.kind == "reset":
                x.reset = e.t
            elif direction == "request":
                x.lost_request, x.lost_kind = e.t, e.kind
            else:
                x.lost_response, x.lost_kind = e.t, e.kind
            continue
        if e.kind not in ("send", "receive", "reply", "response", "error"):
            continue
        outbound = e.kind in ("send", "receive")
        caller, service = (e.src, e.dst) if outbound else (e.dst, e.src)
        if e.trace_id and e.span_id:
            x = by_span.get((e.trace_id, e.span_id))
            if x is None:
                x = by_span[(e.trace_id, e.span_id)] = new(e, caller, service)
        else:
            # No ids (a browser, curl): pair the server's events first come, first served.
            side = "client" if e.kind in ("send", "response", "error") else "server"
            queue = unkeyed.setdefault((side, caller, service, e.method, e.path), [])
            if outbound:
                x = new(e, caller, service)
                queue.append(x)
            elif queue:
                x = queue.pop(0)
            else:
                x = new(e, caller, service)
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
    return exchanges, orphans


def _claim(candidates, e: Event) -> tuple[_Exchange | None, str]:
    """The latest exchange a link event belongs to, and the message's direction."""
    for x in reversed(candidates):
        start = x.start
        if start is not None and start > e.t:
            continue
        if (x.caller, x.service) == (e.src, e.dst):
            return x, "request"
        if (x.caller, x.service) == (e.dst, e.src):
            return x, "response"
    return None, ""


# -- the sequence diagram ------------------------------------------------------


class _Drawing:
    """Collects the segments, heads, crosses and labels of a sequence diagram."""

    def __init__(self, lane: dict[str, int], sx: float, sy: float, dense: bool):
        self.lane = lane
        self.head_size = (0.07, 0.025) if dense else (0.11, 0.04)  # length, half width (inches)
        self.sx, self.sy = sx, sy            # inches per lane, inches per second
        self.segments, self.colours = [], []
        self.heads, self.head_colours = [], []
        self.pending = []
        self.waits, self.wait_colours = [], []
        self.crosses = []
        self.labels = []                     # (where, x0, y0, x1, y1, text, colour)
        self.messages = 0
        self.outcomes: set[str] = set()

    def arrow(self, x0, y0, x1, y1, colour, label="", where="above", head=True):
        self.messages += 1
        self.segments.append(((x0, y0), (x1, y1)))
        self.colours.append(colour)
        if head:
            self._head(x0, y0, x1, y1, colour)
        if label:
            self.labels.append((where, x0, y0, x1, y1, label, colour))

    def mark(self, x, y, sign, text, colour=BLACK):
        """A label beside a point, on the side ``sign`` points to."""
        self.labels.append(("beside", x, y, x + sign, y, text, colour))

    def _head(self, x0, y0, x1, y1, colour):
        length, half_width = self.head_size
        dx, dy = (x1 - x0) * self.sx, (y1 - y0) * self.sy    # inches
        norm = math.hypot(dx, dy)
        if norm == 0:
            return
        ux, uy = dx / norm, dy / norm
        length = min(length, norm * 0.6)
        bx, by = -ux * length, -uy * length                   # from tip back to base
        px, py = -uy * half_width, ux * half_width            # across the shaft
        self.heads.append((
            (x1, y1),
            (x1 + (bx + px) / self.sx, y1 + (by + py) / self.sy),
            (x1 + (bx - px) / self.sx, y1 + (by - py) / self.sy),
        ))
        self.head_colours.append(colour)


def sequence(trace, *, nodes=None, title: str | None = None, max_events: int | None = None) -> Figure:
    """A swimlane diagram: one lane per node, time flowing down, an arrow per message.

    ``trace`` is a :class:`labkit.Trace` or a list of its events. ``nodes``
    orders the lanes (others follow in order of appearance); ``max_events``
    draws only the most recent events. A cross marks a message lost on the way,
    a dashed line a caller waiting until it timed out. Method, path and status
    label the arrows when there are at most 60 messages.

        >>> fig = sequence(labkit.trace)                      # doctest: +SKIP
        >>> fig = sequence(labkit.trace.filter(node="hello"))  # doctest: +SKIP
    """
    events = trace.events() if isinstance(trace, Trace) else list(trace)
    if max_events is not None:
        if max_events < 1:
            raise ValueError(f"max_events must be a positive number of events, not {max_events!r}")
        events = events[-max_events:]
    exchanges, orphans = _exchanges(events)

    names: dict[str, None] = dict.fromkeys(nodes or ())
    for x in exchanges:
        names.setdefault(x.caller)
        names.setdefault(x.service)
    for e in orphans:
        names.setdefault(e.src)
        names.setdefault(e.dst)
    lanes = list(names)
    lane = {name: i for i, name in enumerate(lanes)}

    times = [e.t for e in events] or [0.0]
    t_min, t_max = min(times), max(times)
    span = t_max - t_min
    pad = max(span * 0.06, 0.002)
    y_top, y_bottom = t_min - pad, t_max + pad

    n_messages = sum((x.start is not None) + (x.reply is not None or x.end is not None) for x in exchanges)
    height = min(8.0, max(3.0, 1.7 + 0.28 * n_messages))
    margins = dict(left=0.8, right=0.25, top=0.5 + (0.3 if title else 0), bottom=0.55)
    fig = Figure(figsize=(_WIDTH, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax_w = _WIDTH - margins["left"] - margins["right"]
    ax_h = height - margins["top"] - margins["bottom"]
    ax = fig.add_axes((margins["left"] / _WIDTH, margins["bottom"] / height, ax_w / _WIDTH, ax_h / height))
    n_lanes = max(len(lanes), 1)
    x_left, x_right = -0.4, n_lanes - 0.6
    ax.set_xlim(x_left, x_right)
    ax.set_ylim(y_bottom, y_top)   # inverted: time flows down

    labelled = n_messages <= MAX_LABELLED
    draw = _Drawing(lane, ax_w / (x_right - x_left), ax_h / (y_bottom - y_top), dense=not labelled)
    for x in exchanges:
        _draw_exchange(draw, x, labelled)
    for e in orphans:
        if e.kind in ("dropped", "partitioned"):
            a, b = lane[e.src], lane[e.dst]
            draw.crosses.append(((a + b) / 2, e.t))
            draw.outcomes.add("failed")

    # Lanes, then messages, then heads and crosses on top.
    lane_lines = LineCollection([((i, y_top), (i, y_bottom)) for i in range(len(lanes))],
                                colors="#BBBBBB", linewidths=1.0, zorder=1)
    lane_lines.set_gid("lanes")
    ax.add_collection(lane_lines)
    # Failures last, so a crowded diagram still shows them on top.
    order = sorted(range(len(draw.segments)), key=lambda i: _PRIORITY[draw.colours[i]])
    shafts = LineCollection([draw.segments[i] for i in order], colors=[draw.colours[i] for i in order] or BLUE,
                            linewidths=1.4 if labelled else 0.8, zorder=3)
    shafts.set_gid("messages")
    ax.add_collection(shafts)
    pending = LineCollection(draw.pending, colors=GREY, linewidths=1.2, linestyles=":", zorder=3)
    pending.set_gid("pending")
    ax.add_collection(pending)
    waits = LineCollection(draw.waits, colors=draw.wait_colours or BLACK, linewidths=1.3,
                           linestyles=(0, (4, 3)), zorder=2)
    waits.set_gid("timeouts")
    ax.add_collection(waits)
    order = sorted(range(len(draw.heads)), key=lambda i: _PRIORITY[draw.head_colours[i]])
    heads = PolyCollection([draw.heads[i] for i in order], facecolors=[draw.head_colours[i] for i in order] or BLUE,
                           edgecolors="none", zorder=4)
    heads.set_gid("heads")
    ax.add_collection(heads)
    crosses = ax.scatter([c[0] for c in draw.crosses], [c[1] for c in draw.crosses],
                         marker="x", s=70 if labelled else 40, linewidths=2.2 if labelled else 1.6,
                         color=BLACK, zorder=5)
    crosses.set_gid("crosses")

    if labelled:
        _place_labels(ax, draw, x_left, y_top)

    ax.xaxis.tick_top()
    ax.set_xticks(range(len(lanes)), lanes, fontsize=10, fontweight="bold")
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
    _legend(fig, draw, height)
    return fig


def _draw_exchange(draw: _Drawing, x: _Exchange, labelled: bool) -> None:
    """Add the arrows, crosses and dashed waits of one exchange."""
    caller, service = draw.lane[x.caller], draw.lane[x.service]
    outcome = x.outcome
    draw.outcomes.add(outcome)
    colour = _OUTCOMES[outcome][0]
    middle = (caller + service) / 2
    direction = 1 if service >= caller else -1
    start = x.start
    request = f"{x.method} {_short(x.path)}".strip() if labelled else ""
    arrived = x.receive is not None or (x.status is not None and not x.error and x.reply is None)

    # The request.
    if start is not None:
        if x.receive is not None:
            draw.arrow(caller, start, service, x.receive, colour, request)
        elif arrived:  # answered by a server that records nothing: arrival unknown, draw it half-way
            draw.arrow(caller, start, service, (start + x.end) / 2, colour, request)
        elif x.lost_request is not None or (x.error and _is_timeout(x.error)):
            at = x.lost_request if x.lost_request is not None else start
            draw.arrow(caller, start, middle, at, colour, request, head=False)
            draw.crosses.append((middle, at))
        elif x.error or x.reset is not None:
            # Refused or reset: the caller hardly got going.
            at = x.end if x.end is not None else x.reset
            tip = caller + min(0.45 / draw.sx, 0.3) * direction   # about half an inch
            draw.arrow(caller, start, tip, at, colour, head=False)
            draw.crosses.append((tip, at))
            if labelled:
                draw.mark(tip, at, direction, x.error or "reset")
        else:  # still on its way
            draw.pending.append(((caller, start), (middle, start)))
            draw.messages += 1

    # The response.
    if x.reply is not None:
        status = str(x.status) if labelled and x.status is not None else ""
        if x.send is None:  # a caller that records nothing (a browser): it got the answer at once
            draw.arrow(service, x.reply, caller, x.reply, colour, status, where="below")
        elif x.end is not None and not x.error and x.lost_response is None:
            draw.arrow(service, x.reply, caller, x.end, colour, status, where="below")
        elif x.lost_response is not None or x.error:
            at = x.lost_response if x.lost_response is not None else x.reply
            draw.arrow(service, x.reply, middle, max(at, x.reply), colour, status, where="below", head=False)
            draw.crosses.append((middle, max(at, x.reply)))
        else:
            draw.pending.append(((service, x.reply), (middle, x.reply)))
            draw.messages += 1
    elif x.end is not None and not x.error and x.status is not None:
        status = str(x.status) if labelled else ""
        if start is None:
            draw.arrow(service, x.end, caller, x.end, colour, status, where="below")
        else:
            draw.arrow(service, (start + x.end) / 2, caller, x.end, colour, status, where="below")

    # The caller's side of a failure.
    if x.error and start is not None and x.end is not None:
        offset = caller + 0.04 * direction
        if _is_timeout(x.error):
            draw.waits.append(((offset, start), (offset, x.end)))
            draw.wait_colours.append(BLACK)
            draw.outcomes.add("timeout")
            if labelled:
                draw.mark(offset, (start + x.end) / 2, direction, x.error)
        elif x.receive is not None:  # the request arrived, then the connection broke
            draw.crosses.append((caller, x.end))
            if labelled:
                draw.mark(caller, x.end, direction, x.error)
    if x.lost_request is not None or x.lost_response is not None:
        draw.outcomes.add("lost")


def _short(path: str, limit: int = 22) -> str:
    return path if len(path) <= limit else path[: limit - 1] + "…"


def _place_labels(ax, draw: _Drawing, x_left: float, y_top: float, fontsize: float = 8) -> None:
    """Put each label on its arrow where it overlaps no other label, if it can."""
    per_x, per_y = draw.sx * 72, draw.sy * 72    # points per lane, per second (downwards)
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

    for where, x0, y0, x1, y1, text, colour in draw.labels:
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


def _legend(fig: Figure, draw: _Drawing, height: float) -> None:
    handles = [Line2D([], [], color=colour, linewidth=2, label=text)
               for outcome, (colour, text) in _OUTCOMES.items() if outcome in draw.outcomes]
    if draw.crosses:
        handles.append(Line2D([], [], color=BLACK, marker="x", linestyle="none", markersize=7,
                              markeredgewidth=2, label="lost or refused"))
    if "timeout" in draw.outcomes:
        handles.append(Line2D([], [], color=BLACK, linestyle=(0, (4, 3)), linewidth=1.3,
                              label="waiting until timeout"))
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.04 / height),
                   ncol=len(handles), frameon=False, fontsize=8, handlelength=2.2, columnspacing=1.6)


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
