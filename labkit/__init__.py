"""labkit: real servers, real networks and their faults, inside a notebook.

    >>> import labkit
    >>> hello = labkit.serve(app, name="hello")       # doctest: +SKIP
    >>> alice = labkit.Client("alice")                # doctest: +SKIP
    >>> link = labkit.Link(hello, latency_ms=50)      # doctest: +SKIP
    >>> shop = labkit.spawn("shop")                   # doctest: +SKIP  (its own process)

The core (servers, links, the trace, the client) loads at once; pictures, widgets,
services and checks load on first use, so ``import labkit`` stays fast and works
headless. ``labkit.trace`` is the trace everything records to by default (a
:class:`Trace`; the module that defines it is ``labkit.tracing``).
"""

import logging as _logging

from .client import Client as Client, describe as describe
from .errors import Invalid as Invalid, LabkitError as LabkitError, LinkError as LinkError, ServerError as ServerError
from .net import Link as Link, Network as Network, open_links as open_links
from .processes import Process as Process, spawn as spawn, spawned as spawned
from .server import Server as Server, running as running, serve as serve, stop_all as stop_all
from .tracing import Trace as Trace, default as trace

# Silent unless asked: diagnostics go to the "labkit" logger, never to a cell.
_logging.getLogger("labkit").addHandler(_logging.NullHandler())

_LAZY = {
    "apps": ("labkit.apps", None),
    "etcd": ("labkit.etcd", None),
    "plots": ("labkit.plots", None),
    "postgres": ("labkit.postgres", None),
    "widgets": ("labkit.widgets", None),
    "sequence": ("labkit.plots", "sequence"),
    "control_panel": ("labkit.widgets", "control_panel"),
    "experiment": ("labkit.widgets", "experiment"),
    "predict": ("labkit.widgets", "predict"),
    "live_sequence": ("labkit.widgets", "live_sequence"),
    "progress": ("labkit.widgets", "progress"),
    "check": ("labkit.grading.checker", "check"),
}


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'labkit' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
