"""One instance of a replicated service, for notebook 05: it says who it is, and can be made slow or sick.

    GET /whoami     {"instance": label, "served": n}: which copy answered, and how many calls it served
    GET /health     {"status": "ok", "instance": label}, or 503 {"error": ...} while it is unhealthy
    GET /admin      the current settings {"instance", "slow_ms", "healthy"}
    PUT /admin      {"slow_ms": 0..10000, "healthy": true/false} (either or both): make it slow or sick

``slow_ms`` delays every /whoami and /health answer (a busy or swapping machine);
``healthy: false`` makes both answer 503 (a copy whose database is gone, say). To
kill an instance, stop its server or put its link down: a dead process answers nothing.
"""

from __future__ import annotations

import threading
import time

from flask import Flask, jsonify, request

from ._errors import json_errors

#: The slowest an instance can be made, in milliseconds.
MAX_SLOW_MS = 10_000


def create_app(label: str = "instance", slow_ms: int = 0) -> Flask:
    """An instance called ``label`` whose answers take ``slow_ms`` milliseconds more."""
    if not isinstance(label, str) or not label.strip():
        raise ValueError(f"an instance's label must be a non-empty string, not {label!r}")
    name = label
    app = json_errors(Flask("instance"))
    lock = threading.Lock()
    state = {"slow_ms": _slow(slow_ms), "healthy": True, "served": 0}

    def settings() -> dict:
        with lock:
            return {"instance": name, "slow_ms": state["slow_ms"], "healthy": state["healthy"]}

    def wait_and_check():
        """Wait slow_ms; None if healthy, else the 503 response."""
        current = settings()
        if current["slow_ms"]:
            time.sleep(current["slow_ms"] / 1000)
        if not current["healthy"]:
            return jsonify(error=f"instance {name!r} is unhealthy; ask another instance"), 503
        return None

    @app.get("/whoami")
    def whoami():
        sick = wait_and_check()
        if sick:
            return sick
        with lock:
            state["served"] += 1
            served = state["served"]
        return jsonify(instance=name, served=served)

    @app.get("/health")
    def health():
        return wait_and_check() or jsonify(status="ok", instance=name)

    @app.get("/admin")
    def show_settings():
        return jsonify(settings())

    @app.put("/admin")
    def change_settings():
        body = request.get_json(silent=True, force=True)
        if not isinstance(body, dict) or not body or set(body) - {"slow_ms", "healthy"}:
            return jsonify(error='send a JSON object with "slow_ms" (0 to 10000) and/or "healthy" '
                                 '(true or false), such as {"slow_ms": 300}'), 400
        slow, healthy = body.get("slow_ms", settings()["slow_ms"]), body.get("healthy", True)
        if isinstance(slow, bool) or not isinstance(slow, int) or not 0 <= slow <= MAX_SLOW_MS:
            return jsonify(error=f"slow_ms must be a whole number of milliseconds from 0 to "
                                 f"{MAX_SLOW_MS}, not {slow!r}"), 400
        if "healthy" in body and not isinstance(healthy, bool):
            return jsonify(error=f"healthy must be true or false, not {healthy!r}"), 400
        with lock:
            state["slow_ms"] = slow
            if "healthy" in body:
                state["healthy"] = healthy
        return jsonify(settings())

    return app


def _slow(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SLOW_MS:
        raise ValueError(f"slow_ms must be a whole number from 0 to {MAX_SLOW_MS}, not {value!r}")
    return value
