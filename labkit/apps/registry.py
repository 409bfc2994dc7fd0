"""A service registry for notebook 05: instances register, heartbeat, and are forgotten.

    POST   /services/<service>/instances            {"id": "inv-1", "url": "http://...", "ttl": 10}
                                                    -> 201 registered (200 when it replaces the same id)
    PUT    /services/<service>/instances/<id>/heartbeat   optional {"ttl": 10} -> 200 the lease renewed;
                                                    404 once it expired: the instance must register again
    DELETE /services/<service>/instances/<id>       -> 200 deregistered; 404 if the registry has no such instance
    GET    /services/<service>                      {"service", "instances": [{"id", "url", "ttl", "expires_in"}]}
                                                    the live instances, sorted by id (an empty list if none)
    GET    /services                                {"services": {name: number of live instances}}
    GET    /stats                                   {"registered", "renewed", "deregistered", "expired", "live"}

Every registration is a lease of ``ttl`` seconds. A heartbeat renews it; an instance
that stops heartbeating (it crashed, or it cannot reach the registry) is forgotten
once its lease runs out, so clients stop being sent to it. The registry needs no
thread for that: it drops the expired leases whenever it is asked anything.

``clock`` (a function returning seconds, ``time.monotonic`` by default) is injectable:
pass a :class:`ManualClock` and move time by hand, so an experiment or a test sees
the same expiries on every run. Real registries work the same way: etcd grants
leases with a TTL that ``KeepAlive`` renews; Consul has TTL checks and sessions.
"""

from __future__ import annotations

import math
import re
import threading
import time
from urllib.parse import urlsplit

from flask import Flask, jsonify, request

from ._errors import json_errors

#: The longest lease a registration may ask for, in seconds.
MAX_TTL_S = 3600.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class ManualClock:
    """A clock that moves only when told: ``clock()`` is the time, ``clock.advance(s)`` moves it.

        >>> clock = ManualClock()
        >>> clock.advance(1.5)
        >>> clock()
        1.5
    """

    def __init__(self, start: float = 0.0):
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
            raise ValueError(f"a clock moves forward only: advance by 0 or more seconds, not {seconds!r}")
        with self._lock:
            self._now += seconds

    def __repr__(self) -> str:
        return f"<ManualClock at {self():g} s>"


def _bad(message: str, status: int = 400):
    return jsonify(error=message), status


def _check_name(kind: str, value: str):
    """None if ``value`` is a good service or instance name, else the error response."""
    if not _NAME.fullmatch(value):
        return _bad(f"the {kind} {value[:80]!r} is not a valid name: use {_NAME_RULE}")
    return None


def _ttl(value, default: float):
    """(ttl, None) or (None, error response)."""
    if value is None:
        return default, None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_TTL_S:
        return None, _bad(f"ttl must be a number of seconds above 0 and at most {MAX_TTL_S:g}, not {value!r}")
    return float(value), None


def _url(value):
    """(url, None) or (None, error response)."""
    problem = not isinstance(value, str) or len(value) > 300
    if not problem:
        try:
            parts = urlsplit(value)
            problem = parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None \
                or parts.path not in ("", "/") or bool(parts.query or parts.fragment)
        except ValueError:
            problem = True
    if problem:
        return None, _bad(f'url must be the instance\'s base URL such as "http://10.0.0.5:5001" '
                          f"(scheme, host and port, at most 300 characters), not {str(value)[:80]!r}")
    return value.rstrip("/"), None


def _body(optional: bool):
    """(dict, None) or (None, error response). An optional body may be absent."""
    raw = request.get_data(cache=True)
    if optional and not raw.strip():
        return {}, None
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict):
        return None, _bad("send a JSON object as the body, such as "
                          '{"id": "inv-1", "url": "http://127.0.0.1:5001", "ttl": 10}')
    return body, None


def create_app(clock=None, default_ttl: float = 10.0) -> Flask:
    """A registry whose leases last ``default_ttl`` seconds unless a registration says otherwise.

    ``clock`` is a function returning seconds (default ``time.monotonic``); a
    :class:`ManualClock` makes expiry happen exactly when the caller moves time.
    """
    now = time.monotonic if clock is None else clock
    app = json_errors(Flask("registry"))
    lock = threading.Lock()
    leases: dict[str, dict[str, dict]] = {}   # service -> id -> {"url", "ttl", "expires"}
    stats = {"registered": 0, "renewed": 0, "deregistered": 0, "expired": 0}
    app.config["registry"] = leases

    def forget_expired(t: float) -> None:
        """Drop every lease that ran out (the caller holds the lock)."""
        for service in list(leases):
            instances = leases[service]
            for instance_id in [i for i, lease in instances.items() if lease["expires"] <= t]:
                del instances[instance_id]
                stats["expired"] += 1
            if not instances:
                del leases[service]

    def view(instance_id: str, lease: dict, t: float) -> dict:
        return {"id": instance_id, "url": lease["url"], "ttl": lease["ttl"],
                "expires_in": round(lease["expires"] - t, 3)}

    @app.get("/")
    def index():
        return jsonify(service="registry", endpoints=[
            "POST /services/<service>/instances", "PUT /services/<service>/instances/<id>/heartbeat",
            "DELETE /services/<service>/instances/<id>", "GET /services/<service>", "GET /services", "GET /stats"])

    @app.post("/services/<service>/instances")
    def register(service: str):
        bad = _check_name("service", service)
        if bad:
            return bad
        body, bad = _body(optional=False)
        if bad:
            return bad
        instance_id = body.get("id")
        if not isinstance(instance_id, str):
            return _bad(f'id must be a string naming the instance, such as "inv-1", not {instance_id!r}')
        bad = _check_name("instance id", instance_id)
        if bad:
            return bad
        url, bad = _url(body.get("url"))
        if bad:
            return bad
        ttl, bad = _ttl(body.get("ttl"), default_ttl)
        if bad:
            return bad
        with lock:
            t = now()
            forget_expired(t)
            instances = leases.setdefault(service, {})
            replaced = instance_id in instances
            lease = instances[instance_id] = {"url": url, "ttl": ttl, "expires": t + ttl}
            stats["registered"] += 1
            answer = view(instance_id, lease, t)
        return jsonify(service=service, **answer), 200 if replaced else 201

    @app.put("/services/<service>/instances/<instance_id>/heartbeat")
    def heartbeat(service: str, instance_id: str):
        bad = _check_name("service", service) or _check_name("instance id", instance_id)
        if bad:
            return bad
        body, bad = _body(optional=True)
        if bad:
            return bad
        with lock:
            t = now()
            forget_expired(t)
            lease = leases.get(service, {}).get(instance_id)
            if lease is None:
                return _bad(f"the registry has no live instance {instance_id!r} of {service!r}: its lease "
                            f"expired or it never registered; register it again with "
                            f"POST /services/{service}/instances", 404)
            ttl, bad = _ttl(body.get("ttl"), lease["ttl"])
            if bad:
                return bad
            lease["ttl"], lease["expires"] = ttl, t + ttl
            stats["renewed"] += 1
            answer = view(instance_id, lease, t)
        return jsonify(service=service, **answer)

    @app.delete("/services/<service>/instances/<instance_id>")
    def deregister(service: str, instance_id: str):
        bad = _check_name("service", service) or _check_name("instance id", instance_id)
        if bad:
            return bad
        with lock:
            forget_expired(now())
            instances = leases.get(service, {})
            if instance_id not in instances:
                return _bad(f"the registry has no live instance {instance_id!r} of {service!r} to deregister", 404)
            del instances[instance_id]
            if not instances:
                del leases[service]
            stats["deregistered"] += 1
        return jsonify(service=service, deregistered=instance_id)

    @app.get("/services/<service>")
    def lookup(service: str):
        bad = _check_name("service", service)
        if bad:
            return bad
        with lock:
            t = now()
            forget_expired(t)
            instances = leases.get(service, {})
            answer = [view(i, instances[i], t) for i in sorted(instances)]
        return jsonify(service=service, instances=answer)

    @app.get("/services")
    def services():
        with lock:
            forget_expired(now())
            answer = {name: len(instances) for name, instances in sorted(leases.items())}
        return jsonify(services=answer)

    @app.get("/stats")
    def statistics():
        with lock:
            forget_expired(now())
            return jsonify(live=sum(len(i) for i in leases.values()), **stats)

    return app
