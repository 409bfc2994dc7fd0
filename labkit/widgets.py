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
import sys
import threading
import time

import ipywidgets as widgets

from . import plots
from .errors import LabkitError

log = logging.getLogger("labkit")

_SLIDER = dict(continuous_update=False, style={"description_width": "8em"},
               layout=widgets.Layout(width="30em"))


class ControlPanel(widgets.VBox):
    """Sliders and a toggle bound to one :class:`labkit.Link`; changes apply at once.

    Make one with :func:`control_panel`. The controls are attributes
    (``latency_request``, ``latency_response``, ``jitter``, ``drop``, ``reset``,
    ``down``); ``message`` shows why a change was refused; ``refresh()`` reads
    the link's settings again after code changed them.
    """

    def __init__(self, link):
        self.link = link
        self._syncing = False
        title = widgets.HTML(f"<b>link to {html.escape(str(link.dst))}</b>")
        self.latency_request = widgets.IntSlider(min=0, max=2000, step=10, description="latency → (ms)", **_SLIDER)
        self.latency_response = widgets.IntSlider(min=0, max=2000, step=10, description="latency ← (ms)", **_SLIDER)
        self.jitter = widgets.IntSlider(min=0, max=500, step=5, description="jitter (ms)", **_SLIDER)
        self.drop = widgets.FloatSlider(min=0, max=1, step=0.01, readout_format=".2f", description="drop", **_SLIDER)
        self.reset = widgets.FloatSlider(min=0, max=1, step=0.01, readout_format=".2f", description="reset", **_SLIDER)
        self.down = widgets.ToggleButton(description="down", tooltip="close the link: callers are refused",
                                         icon="power-off", layout=widgets.Layout(width="8em", margin="2px 0 2px 8em"))
        self.message = widgets.HTML("")
        super().__init__(children=[title, self.latency_request, self.latency_response, self.jitter,
                                   self.drop, self.reset, self.down, self.message])
        self.refresh()
        for control in (self.latency_request, self.latency_response, self.jitter, self.drop, self.reset, self.down):
            control.observe(self._changed, names="value")

    def refresh(self) -> None:
        """Set the controls from the link's current settings (no change is sent back)."""
        s = self.link.settings
        self._syncing = True
        try:
            self.latency_request.value = round(s.latency_ms[0])
            self.latency_response.value = round(s.latency_ms[1])
            self.jitter.value = round(max(s.jitter_ms))
            self.drop.value = max(s.drop)
            self.reset.value = s.reset
            self.down.value = s.down
        finally:
            self._syncing = False

    def _changed(self, change) -> None:
        if self._syncing:
            return
        owner = change["owner"]
        if owner in (self.latency_request, self.latency_response):
            settings = {"latency_ms": (self.latency_request.value, self.latency_response.value)}
        else:
            name = {id(self.jitter): "jitter_ms", id(self.drop): "drop",
                    id(self.reset): "reset", id(self.down): "down"}[id(owner)]
            settings = {name: change["new"]}
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

    Latency each way (0-2000 ms), jitter (0-500 ms), drop and reset
    probabilities (0-1) and a down toggle.

        >>> with labkit.Link(hello) as link:       # doctest: +SKIP
        ...     control_panel(link)
    """
    return ControlPanel(link)


class LiveSequence(widgets.Image):
    """A sequence diagram that redraws itself while its trace grows.

    Make one with :func:`live_sequence`. A daemon thread checks the trace every
    ``interval`` seconds and redraws only when it has new events. ``stop()``
    (or leaving a ``with`` block, or closing the widget) ends the thread;
    stopping twice does nothing.
    """

    def __init__(self, trace, *, interval: float = 0.5, **sequence_kwargs):
        if not interval > 0:
            raise ValueError(f"interval is the seconds between redraws and must be positive, not {interval!r}")
        super().__init__(format="png")
        self.trace = trace
        self.interval = interval
        self._kwargs = sequence_kwargs
        self._drawn = -1
        self._stopping = threading.Event()
        self.redraw()  # a first picture now; also checks the arguments before any thread starts
        self._thread = threading.Thread(target=self._run, name="labkit-live-sequence", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopping.is_set()

    def redraw(self, force: bool = False) -> bool:
        """Draw the diagram again if the trace grew (or ``force``); True if it drew."""
        count = len(self.trace)
        if count == self._drawn and not force:
            return False
        self._drawn = count
        self.value = plots.png(plots.sequence(self.trace, **self._kwargs))
        return True

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            if self.comm is None:  # the widget was closed
                break
            try:
                self.redraw()
            except Exception:
                log.exception("the live sequence diagram could not be redrawn")

    def stop(self) -> None:
        """End the redrawing thread and wait for it; the last picture stays."""
        stopping = getattr(self, "_stopping", None)  # None if __init__ failed early
        if stopping is not None:
            stopping.set()
        thread = getattr(self, "_thread", None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def close(self) -> None:
        self.stop()
        super().close()

    def __enter__(self) -> "LiveSequence":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<LiveSequence {'running' if self.running else 'stopped'}>"


def live_sequence(trace, *, interval: float = 0.5, **sequence_kwargs) -> LiveSequence:
    """A widget showing ``plots.sequence(trace)``, redrawn as the trace grows.

    Other keyword arguments go to :func:`labkit.plots.sequence`.

        >>> with live_sequence(labkit.trace, max_events=200) as live:  # doctest: +SKIP
        ...     display(live)
        ...     alice.get(hello.url + "/hello")
    """
    return LiveSequence(trace, interval=interval, **sequence_kwargs)


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
