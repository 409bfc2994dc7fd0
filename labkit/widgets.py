"""Widgets: hold the network in your hands and watch the messages move.

    >>> panel = control_panel(link)          # doctest: +SKIP
    >>> live = live_sequence(labkit.trace)   # doctest: +SKIP
    >>> for n in progress(range(100)): ...   # doctest: +SKIP

Only the core widgets of ipywidgets 8 are used, so JupyterLab 4 shows them with
no build step. Nothing here prints: problems show inside the widget or go to
the ``labkit`` logger. Each widget's text form (what nbval compares) is short
and names no port or time.
"""

from __future__ import annotations

import html
import logging
import pathlib
import sys
import threading
import time
import weakref

import anywidget
import ipywidgets as widgets
import traitlets

from . import plots
from .errors import LabkitError
from .net import STATUSES

log = logging.getLogger("labkit")

_SLIDER = dict(continuous_update=False, style={"description_width": "8em"},
               layout=widgets.Layout(width="30em"))


#: The controls of a link's panel: (attribute, setting, direction or None, tab, make the widget).
_CONTROLS = (
    ("latency_request", "latency_ms", 0, "delay", lambda: _int("latency → (ms)", 0, 2000, 10)),
    ("latency_response", "latency_ms", 1, "delay", lambda: _int("latency ← (ms)", 0, 2000, 10)),
    ("jitter_request", "jitter_ms", 0, "delay", lambda: _int("jitter → (ms)", 0, 500, 5)),
    ("jitter_response", "jitter_ms", 1, "delay", lambda: _int("jitter ← (ms)", 0, 500, 5)),
    ("late_rate", "late_rate", None, "delay", lambda: _share("late answers")),
    ("late_ms", "late_ms", None, "delay", lambda: _int("late by (ms)", 0, 10_000, 100)),
    ("bytes_request", "bytes_per_s", 0, "delay", lambda: _int("line → (B/s)", 0, 1_000_000, 1000)),
    ("bytes_response", "bytes_per_s", 1, "delay", lambda: _int("line ← (B/s)", 0, 1_000_000, 1000)),
    ("drop_request", "drop", 0, "loss", lambda: _share("drop →")),
    ("drop_response", "drop", 1, "loss", lambda: _share("drop ←")),
    ("reset_request", "reset", 0, "loss", lambda: _share("reset →")),
    ("reset_response", "reset", 1, "loss", lambda: _share("reset ←")),
    ("duplicate", "duplicate", None, "loss", lambda: _share("duplicate →")),
    ("error_rate", "error_rate", None, "errors", lambda: _share("error answers")),
    ("error_status", "error_status", None, "errors",
     lambda: widgets.Dropdown(options=list(STATUSES), description="status", **_WIDE)),
    ("retry_after_s", "retry_after_s", None, "errors", lambda: _int("Retry-After (s)", 0, 60, 1)),
)
_WIDE = dict(style={"description_width": "8em"}, layout=widgets.Layout(width="30em"))


def _int(description: str, low: int, high: int, step: int):
    return widgets.IntSlider(min=low, max=high, step=step, description=description, **_SLIDER)


def _share(description: str):
    return widgets.FloatSlider(min=0, max=1, step=0.01, readout_format=".2f", description=description, **_SLIDER)


class ControlPanel(widgets.VBox):
    """Controls bound to every setting of one :class:`labkit.Link`; changes apply at once.

    Make one with :func:`control_panel`. The controls are attributes named after the
    settings, one per direction where a setting has two (``latency_request``,
    ``latency_response``, ``drop_request``, ..., ``error_rate``, ``down``); moving one
    changes that setting (and direction) only. ``fail_next`` and the ``arm`` button set
    ``fail_first``: the link's own error answers for the next N requests, counted from the
    press. ``message`` shows why a change was refused; ``refresh()`` reads the link's
    settings again after code changed them (a slider widens to show a value beyond its end).
    """

    def __init__(self, link):
        self.link = link
        self._syncing = False
        self._controls = {}
        tabs = {"delay": [], "loss": [], "errors": []}
        for attribute, setting, direction, tab, make in _CONTROLS:
            control = make()
            self._controls[attribute] = (setting, direction, control)
            setattr(self, attribute, control)
            tabs[tab].append(control)
        title = widgets.HTML(f"<b>link to {html.escape(str(link.dst))}</b>")
        self.down = widgets.ToggleButton(description="down", tooltip="close the link: callers are refused",
                                         icon="power-off", layout=widgets.Layout(width="8em", margin="2px 0 2px 8em"))
        self.message = widgets.HTML("")
        self.fail_next = _int("fail the next", 0, 100, 1)
        self.arm = widgets.Button(description="arm", tooltip="the link answers the next N requests itself",
                                  layout=widgets.Layout(width="6em", margin="2px 0 2px 8em"))
        self.arm.on_click(lambda _: self._apply({"fail_first": self.fail_next.value}))
        tabs["errors"].append(widgets.HBox([self.fail_next, self.arm]))
        self.tabs = widgets.Tab(children=[widgets.VBox(controls) for controls in tabs.values()])
        for number, name in enumerate(tabs):
            self.tabs.set_title(number, name)
        super().__init__(children=[title, self.down, self.tabs, self.message])
        self.refresh()
        for _, _, control in self._controls.values():
            control.observe(self._changed, names="value")
        self.down.observe(self._changed, names="value")

    def refresh(self) -> None:
        """Set the controls from the link's current settings (no change is sent back)."""
        s = self.link.settings
        self._syncing = True
        try:
            for setting, direction, control in self._controls.values():
                value = getattr(s, setting)
                value = value[direction] if direction is not None else value
                if isinstance(control, (widgets.IntSlider, widgets.FloatSlider)) and value > control.max:
                    control.max = value  # show what the link does, not the end of the slider
                control.value = round(value) if isinstance(control, widgets.IntSlider) else value
            self.fail_next.max = max(self.fail_next.max, s.fail_first)
            self.fail_next.value = s.fail_first
            self.down.value = s.down
        finally:
            self._syncing = False

    def _changed(self, change) -> None:
        if self._syncing:
            return
        owner = change["owner"]
        if owner is self.down:
            self._apply({"down": change["new"]})
            return
        setting, direction = next((s, d) for s, d, control in self._controls.values() if control is owner)
        value = change["new"]
        if direction is not None:  # this direction only: the other keeps what the link has
            pair = list(getattr(self.link.settings, setting))
            pair[direction] = value
            value = tuple(pair)
        self._apply({setting: value})

    def _apply(self, settings: dict) -> None:
        try:
            self.link.configure(**settings)
        except (ValueError, TypeError, LabkitError) as exc:
            self.message.value = f'<span style="color:#D55E00;font-size:small">{html.escape(str(exc))}</span>'
            self.refresh()  # the controls show what the link really does
        else:
            self.message.value = ""

    def __repr__(self) -> str:
        return f"<ControlPanel for the link to {self.link.dst!r}>"


def control_panel(link) -> ControlPanel:
    """A panel of controls for every setting of ``link``, applied while traffic flows.

    Delay (latency each way, jitter, late answers, the line's speed), loss (drop and
    reset each way, duplicates) and errors (the link's own error answers, their
    status and Retry-After, failing the next N requests), and a down toggle.

        >>> with labkit.Link(hello) as link:       # doctest: +SKIP
        ...     control_panel(link)
    """
    return ControlPanel(link)


class Experiment(widgets.VBox):
    """An experiment the student runs from controls: parameters, Run, the result redrawn in place.

    Make one with :func:`experiment`. ``run(**parameters)`` does the experiment and
    returns a dict of numbers (its result); each run is kept, so runs at different
    settings can be compared (a sweep by hand), until Clear. ``results`` lists the
    runs kept, each a dict of the parameters and the result. ``plot(results)``, if
    given, returns a figure of them, redrawn after every run.
    """

    def __init__(self, run, controls: dict, *, plot=None, title: str = ""):
        if not callable(run):
            raise TypeError(f"run must be a function of the controls' values, not {run!r}")
        if not controls:
            raise ValueError("an experiment needs at least one control: {name: (low, high, step), ...}")
        self._run, self._plot, self.title = run, plot, title
        self.controls = {name: _control(name, spec) for name, spec in controls.items()}
        self.results: list[dict] = []
        self.button = widgets.Button(description="Run", button_style="primary", icon="play")
        self.clear_button = widgets.Button(description="Clear", icon="trash")
        self.keep = widgets.Checkbox(value=True, description="keep runs", indent=False,
                                     layout=widgets.Layout(width="8em"))
        self.bar = widgets.IntProgress(value=0, min=0, max=100, layout=widgets.Layout(width="12em", visibility="hidden"))
        self.status = widgets.HTML("")
        self.table = widgets.HTML("")
        self.figure = widgets.Image(format="png", layout=widgets.Layout(max_width="100%"))
        self.button.on_click(lambda _: self.run())
        self.clear_button.on_click(lambda _: self.clear())
        head = [widgets.HTML(f"<b>{html.escape(title)}</b>")] if title else []
        super().__init__(children=[*head, *self.controls.values(),
                                   widgets.HBox([self.button, self.clear_button, self.keep, self.bar]),
                                   self.status, self.table, *([self.figure] if plot is not None else [])])
        self.add_class("labkit-experiment")

    @property
    def values(self) -> dict:
        """The controls' values now, by name."""
        return {name: control.value for name, control in self.controls.items()}

    def run(self, **overrides) -> dict:
        """Run once with the controls' values (and ``overrides``); the result, also kept in ``results``."""
        for name, value in overrides.items():
            if name not in self.controls:
                raise TypeError(f"the experiment has no control {name!r}; its controls are {', '.join(self.controls)}")
            control = self.controls[name]
            low, high = getattr(control, "min", None), getattr(control, "max", None)
            if low is not None and not low <= value <= high:
                raise ValueError(f"{name} is from {low} to {high} on its control, not {value!r}")
        for name, value in overrides.items():
            self.controls[name].value = value
        parameters = self.values
        self.button.disabled = True
        self.bar.value, self.bar.layout.visibility = 0, "visible"
        self.status.value = "running..."
        try:
            result = self._call(parameters)
        except Exception as error:
            self.status.value = (f'<span style="color:#D55E00">the run failed: '
                                 f"{html.escape(type(error).__name__)}: {html.escape(str(error))}</span>")
            raise
        finally:
            self.button.disabled = False
            self.bar.layout.visibility = "hidden"
        problem = None
        if not isinstance(result, dict):
            problem = TypeError(f"run must return a dict of results, such as {{'seconds': 1.2}}, not {result!r:.80}")
        elif set(result) & set(parameters):
            problem = ValueError(f"the result names {sorted(set(result) & set(parameters))}, which are controls too; "
                                 f"give the results other names")
        if problem is not None:
            self.status.value = f'<span style="color:#D55E00">{html.escape(str(problem))}</span>'
            raise problem
        if not self.keep.value:
            self.results.clear()
        self.results.append({**parameters, **result})
        self.status.value = f"{len(self.results)} run{'s' if len(self.results) != 1 else ''} kept"
        self._show()
        return result

    def _call(self, parameters: dict):
        import inspect

        try:
            takes_progress = "progress" in inspect.signature(self._run).parameters
        except (TypeError, ValueError):
            takes_progress = False
        if not takes_progress:
            return self._run(**parameters)

        def progress(done: float, total: float = 1.0) -> None:
            self.bar.value = int(100 * min(max(done / total, 0), 1)) if total else 0

        return self._run(**parameters, progress=progress)

    def clear(self) -> None:
        """Forget every run kept."""
        self.results.clear()
        self.status.value = ""
        self._show()

    def _show(self) -> None:
        self.table.value = _table(self.results)
        if self._plot is not None and self.results:
            self.figure.value = plots.png(self._plot(list(self.results)))
        elif not self.results:
            self.figure.value = b""

    def __repr__(self) -> str:
        title = f" {self.title!r}" if self.title else ""
        runs = len(self.results)
        return f"<Experiment{title}: {', '.join(self.controls)}; {runs} run{'s' if runs != 1 else ''} kept>"


def _control(name: str, spec):
    """A widget for one parameter: a (low, high, step[, start]) slider, a list of choices, a flag, or a widget."""
    if isinstance(spec, widgets.ValueWidget):
        return spec
    label = name.replace("_", " ")
    if isinstance(spec, bool):
        return widgets.Checkbox(value=spec, description=label, indent=False)
    if isinstance(spec, list) and spec:
        return widgets.Dropdown(options=spec, value=spec[0], description=label, **_WIDE)
    if isinstance(spec, tuple) and len(spec) in (3, 4) and all(isinstance(v, (int, float)) for v in spec):
        low, high, step, *start = spec
        kind = widgets.IntSlider if all(isinstance(v, int) for v in spec) else widgets.FloatSlider
        return kind(min=low, max=high, step=step, value=start[0] if start else low, description=label, **_SLIDER)
    raise TypeError(f"the control {name!r} must be (low, high, step[, start]), a list of choices, True/False "
                    f"or an ipywidget, not {spec!r}")


def _table(rows: list[dict]) -> str:
    if not rows:
        return ""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    cell = 'style="padding:0.15em 0.7em;text-align:right"'
    head = "".join(f"<th {cell}>{html.escape(str(c))}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td {cell}>{html.escape(_shown(row.get(c, '')))}</td>" for c in columns)
                   + "</tr>" for row in rows)
    return f'<table class="labkit-results"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _shown(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def experiment(run, controls: dict, *, plot=None, title: str = "") -> Experiment:
    """An experiment panel: controls for ``run``'s parameters, a Run button, the runs kept and drawn.

        >>> def waits(latency_ms, calls):                  # doctest: +SKIP
        ...     ...
        ...     return {"seconds": took}
        >>> labkit.experiment(waits, {"latency_ms": (0, 200, 10, 50), "calls": [1, 5, 20]},
        ...                   plot=lambda runs: labkit.plots.throughput_curve(...))   # doctest: +SKIP

    A control is ``(low, high, step)`` or ``(low, high, step, start)`` for a slider, a
    list for a choice, True or False for a checkbox, or any ipywidget. ``run`` may
    take a ``progress(done, total)`` argument to move the panel's progress bar.
    """
    return Experiment(run, controls, plot=plot, title=title)


class Predict(widgets.VBox):
    """A "predict, then run" question: the student picks an answer, then sees the explanation.

    Make one with :func:`predict`. Nothing is graded: ``choice`` remembers what was
    picked (None before), and ``correct`` whether it was the right one.
    """

    def __init__(self, question: str, choices: list[str], answer: str, explanation: str):
        if answer not in choices:
            raise ValueError(f"the answer {answer!r} is not one of the choices {choices!r}")
        self.question, self.answer = question, answer
        self.options = widgets.RadioButtons(options=list(choices), value=None, layout=widgets.Layout(width="auto"))
        self.button = widgets.Button(description="Check my prediction", disabled=True)
        self.explanation = widgets.HTML("")
        self._explanation = explanation
        self.options.observe(lambda change: setattr(self.button, "disabled", change["new"] is None), names="value")
        self.button.on_click(lambda _: self.reveal())
        super().__init__(children=[widgets.HTML(f"<b>Predict:</b> {html.escape(question)}"), self.options,
                                   self.button, self.explanation])

    @property
    def choice(self) -> str | None:
        return self.options.value

    @property
    def correct(self) -> bool | None:
        return None if self.choice is None else self.choice == self.answer

    def reveal(self) -> None:
        """Show whether the prediction was right, and why."""
        verdict = ("Right." if self.correct else f"Not quite: the answer is {html.escape(self.answer)}.") \
            if self.choice is not None else f"The answer is {html.escape(self.answer)}."
        self.explanation.value = f"<p><b>{verdict}</b> {html.escape(self._explanation)}</p>"

    def __repr__(self) -> str:
        return f"<Predict: {self.question}>"


def predict(question: str, choices: list[str], answer: str, explanation: str) -> Predict:
    """A multiple-choice question to answer before an experiment; the explanation shows after.

        >>> predict("Ten calls, 50 ms each way: how long in all?",          # doctest: +SKIP
        ...         ["about 0.1 s", "about 0.5 s", "about 1 s"], "about 1 s",
        ...         "each call waits a round trip, 100 ms, and they go one after another")
    """
    return Predict(question, choices, answer, explanation)


class LiveSequence(anywidget.AnyWidget):
    """A sequence diagram in the browser that follows its trace as it grows.

    Make one with :func:`live_sequence`. A daemon thread reads the trace's new events
    every ``interval`` seconds, joins them into exchanges with the layout the PNG
    diagrams use (:func:`labkit.plots.layout`), and sends only the exchanges that
    changed; the browser draws each once and scrolls. It keeps the newest
    ``max_exchanges``, and draws database transactions as ``labkit.sequence`` does
    (``transactions``: "writes", "all" or "none"); link events that belong to no exchange
    are left out. Hover or click a message for its details, tick lanes off, drag the
    time slider back. ``stop()`` (or leaving a ``with`` block, or closing the widget)
    ends the thread after a last update; stopping twice does nothing. A new live
    diagram of the same trace stops the one before (a cell run again leaves no thread).
    """

    _esm = pathlib.Path(__file__).with_name("live_sequence.js")
    title = traitlets.Unicode("").tag(sync=True)
    window_s = traitlets.Float(10.0).tag(sync=True)
    hidden = traitlets.List(traitlets.Unicode()).tag(sync=True)   # the lanes the student ticked off

    _following: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()   # trace -> its live diagram

    def __init__(self, trace, *, interval: float = 0.2, max_exchanges: int = 300, window_s: float = 10.0,
                 nodes=(), title: str = "", transactions: str = "writes"):
        if transactions not in ("writes", "all", "none"):
            raise ValueError(f'transactions is "writes", "all" or "none", not {transactions!r}')
        if not interval > 0:
            raise ValueError(f"interval is the seconds between updates and must be positive, not {interval!r}")
        if isinstance(max_exchanges, bool) or not isinstance(max_exchanges, int) or max_exchanges < 1:
            raise ValueError(f"max_exchanges must be a whole number of exchanges from 1, not {max_exchanges!r}")
        super().__init__(title=title, window_s=float(window_s))
        self.trace, self.interval, self.max_exchanges = trace, interval, max_exchanges
        self._nodes, self._transactions = list(nodes), transactions
        self._states: dict[str, str] = {}
        self._lock = threading.Lock()    # the thread and the browser's "ready" both send
        self._reset()
        self.on_msg(self._on_message)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="labkit-live-sequence", daemon=True)
        before = LiveSequence._following.get(trace)
        if before is not None:
            before.stop()
        LiveSequence._following[trace] = self
        self._thread.start()

    def _reset(self) -> None:
        self._joiner = plots._Joiner(keep_orphans=False)
        self._mark, self._generation = 0, self.trace.generation
        self._lanes: dict[str, int] = {name: i for i, name in enumerate(self._nodes)}
        self._services: set[str] = set()  # lanes called as a service: only those can be "stopped"
        self._latest = 0.0

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    @property
    def exchanges(self) -> int:
        """How many exchanges the diagram holds now."""
        with self._lock:
            return len(self._joiner.exchanges)

    def update(self) -> int:
        """Read the trace's new events and send what changed; how many exchanges changed."""
        with self._lock:
            if self.trace.generation != self._generation:  # cleared: start again
                self._reset()
                self._send_all()
            events, self._mark = self.trace.since(self._mark)
            changed, hidden = {}, []
            for event in events:
                exchange = self._joiner.add(event)
                self._latest = max(self._latest, event.t)
                if exchange is None:
                    continue
                if self._visible(exchange):
                    changed[exchange.id] = exchange
                    for name in (exchange.caller, exchange.service):
                        self._lanes.setdefault(name, len(self._lanes))
                    self._services.add(exchange.service)
                else:  # a transaction that turned out to read only
                    changed.pop(exchange.id, None)
                    hidden.append(exchange.id)
            dropped = [x.id for x in self._joiner.exchanges[: max(0, len(self._joiner.exchanges) - self.max_exchanges)]]
            for gone in dropped:
                self._joiner.forget(gone)
                changed.pop(gone, None)
            states = plots._states(list(self._lanes), self._services)
            if changed or dropped or hidden or states != self._states:
                self._push("update", list(changed.values()), dropped + hidden)
            return len(changed)

    def _visible(self, x) -> bool:
        if not isinstance(x, plots._Transaction):
            return True
        return self._transactions == "all" or (self._transactions == "writes" and not x.read_only)

    def _push(self, kind: str, exchanges, dropped=()) -> None:
        lanes = list(self._lanes)
        self._states = plots._states(lanes, self._services)
        self.send({"type": kind, "lanes": lanes, "states": self._states, "now": self._latest,
                   "exchanges": [plots.layout(x, self._lanes) for x in exchanges], "drop": list(dropped)})

    def _send_all(self) -> None:
        self._push("snapshot", [x for x in self._joiner.exchanges if self._visible(x)])

    def _on_message(self, _widget, content, _buffers) -> None:
        if isinstance(content, dict) and content.get("type") == "ready":  # a new view: everything so far
            with self._lock:
                self._send_all()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            if self.comm is None:  # the widget was closed
                break
            try:
                self.update()
            except Exception:
                log.exception("the live sequence diagram could not be updated")

    def stop(self) -> None:
        """End the updating thread and wait for it, then send what is new: the picture stays complete."""
        stopping = getattr(self, "_stopping", None)  # None if __init__ failed early
        if stopping is None or stopping.is_set():
            return
        stopping.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        if self.comm is not None:
            self.update()

    def close(self) -> None:
        self.stop()
        super().close()

    def __enter__(self) -> "LiveSequence":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LiveSequence {'running' if self.running else 'stopped'}>"


def live_sequence(trace, *, interval: float = 0.2, max_exchanges: int = 300, window_s: float = 10.0,
                  nodes=(), title: str = "", transactions: str = "writes") -> LiveSequence:
    """A live, interactive sequence diagram of ``trace`` (a browser widget).

    ``nodes`` orders the first lanes; ``window_s`` is how many seconds it shows at once;
    it keeps the newest ``max_exchanges`` exchanges.

        >>> with live_sequence(labkit.trace, title="gossip") as live:  # doctest: +SKIP
        ...     display(live)
        ...     alice.get(hello.url + "/hello")
    """
    return LiveSequence(trace, interval=interval, max_exchanges=max_exchanges, window_s=window_s, nodes=nodes,
                        title=title, transactions=transactions)


def progress(iterable, *, total: int | None = None, description: str = ""):
    """Yield the items of ``iterable`` while a progress bar counts them.

    The bar is shown only in a notebook, and with no text form, so nbval has
    nothing to compare; elsewhere the items are simply yielded.

        >>> [n * n for n in progress(range(3), description="squares")]
        [0, 1, 4]
    """
    if total is None:
        try:
            total = len(iterable)
        except TypeError:
            total = None
    shell = _kernel_shell()
    if shell is None:
        yield from iterable
        return
    from IPython.display import display

    bar = widgets.IntProgress(value=0, min=0, max=max(total or 0, 1), description=description,
                              bar_style="" if total else "info")
    label = widgets.Label(f"0/{total}" if total else "0")
    box = widgets.HBox([bar, label])
    display({"application/vnd.jupyter.widget-view+json": {
        "model_id": box.model_id, "version_major": 2, "version_minor": 0}}, raw=True)
    count, shown = 0, 0.0
    try:
        for item in iterable:
            yield item
            count += 1
            now = time.monotonic()
            if now - shown > 0.1:  # a message per item would flood the browser
                shown = now
                _show(bar, label, count, total)
    except GeneratorExit:
        _show(bar, label, count, total)
        raise
    except BaseException:
        bar.bar_style = "danger"
        raise
    _show(bar, label, count, total)
    bar.value, bar.bar_style = bar.max, "success"


def _show(bar, label, count: int, total: int | None) -> None:
    bar.value = min(count, bar.max) if total else 0
    label.value = f"{count}/{total}" if total else str(count)


def _kernel_shell():
    """The IPython shell of a running Jupyter kernel, or None."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell if getattr(shell, "kernel", None) is not None else None
