"""One instance of a replicated service, for notebook 05: it says who it is, and can be made slow or sick.

    GET /whoami     {"instance": name, "served": n}: which copy answered, and how many calls it served
    GET /health     {"status": "ok", "instance": name}, or 503 {"error": ...} while it is unhealthy
    GET /faults     {"work_ms", "healthy"}: its fault settings
    PUT /faults     {"work_ms": 0..10000, "healthy": true/false} (either or both): make it slow or sick

``work_ms`` delays every /whoami and /health answer (a busy or swapping machine);
``healthy: false`` makes both answer 503 (a copy whose database is gone, say). To
kill an instance, stop its server or put its link down: a dead process answers nothing.
"""

from __future__ import annotations

import threading
import time

from flask import Blueprint, abort

from . import kit

#: The slowest an instance can be made, in milliseconds.
MAX_WORK_MS = 10_000

RULES = {"work_ms": (0.0, lambda v, f: kit.number(v, f, 0, MAX_WORK_MS, unit="milliseconds")),
         "healthy": (True, kit.flag)}


class Instance:
    """An instance's state: its name, its faults, and how many calls it served."""

    def __init__(self, name: str, **faults):
        self.name = name
        self.faults = kit.Faults(RULES, faults)
        self.served = 0
        self._lock = threading.Lock()

    def work(self) -> None:
        """Take work_ms, then refuse with 503 if unhealthy."""
        settings = self.faults.snapshot()
        time.sleep(settings["work_ms"] / 1000)
        if not settings["healthy"]:
            abort(503, f"instance {self.name!r} is unhealthy; ask another instance")

    def serve_one(self) -> int:
        with self._lock:
            self.served += 1
            return self.served


routes = Blueprint("instance", __name__)


@routes.get("/whoami")
def whoami():
    state = kit.state()
    state.work()
    return {"instance": state.name, "served": state.serve_one()}


@routes.get("/health")
def health():
    state = kit.state()
    state.work()
    return {"status": "ok", "instance": state.name}


def create_app(*, name: str = "instance", **faults):
    """An instance called ``name``; ``faults`` are ``work_ms`` and ``healthy``."""
    return kit.make_app(name, Instance(kit.name(name, "an instance's name"), **faults), routes, kit.faults)
