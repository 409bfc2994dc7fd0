"""A service registry for notebook 05: instances register, heartbeat, and are forgotten.

    POST   /services/<service>/instances            {"id": "inv-1", "url": "http://...", "ttl_s": 10}
                                                    -> 201 registered (200 when it replaces the same id)
    PUT    /services/<service>/instances/<id>/heartbeat   optional {"ttl_s": 10} -> 200 the lease renewed;
                                                    404 once it expired: the instance must register again
    DELETE /services/<service>/instances/<id>       -> 200 deregistered; 404 if there is no such instance
    GET    /services/<service>                      {"service", "instances": [{"id", "url", "ttl_s",
                                                    "expires_in_s"}]}: the live ones, by id
    GET    /services                                {"services": {name: number of live instances}}
    GET    /stats                                   {"registered", "renewed", "deregistered", "expired", "live"}

Every registration is a lease of ``ttl_s`` seconds. A heartbeat renews it; an instance
that stops heartbeating (it crashed, or it cannot reach the registry) is forgotten once
its lease runs out, so clients stop being sent to it. The registry needs no thread for
that: it drops the expired leases whenever it is asked anything.

``clock`` (a function returning seconds, ``time.monotonic`` by default) can be a
:class:`labkit.apps.kit.ManualClock` moved by hand, so an experiment or a test sees the
same expiries on every run. Real registries work the same way: etcd grants leases with a
TTL that ``KeepAlive`` renews; Consul has TTL checks and sessions.
"""

from __future__ import annotations

import threading
import time

from flask import Blueprint, abort, request

from . import kit

#: The longest lease a registration may ask for, in seconds.
MAX_TTL_S = 3600.0


class Registry:
    """Leases by service and instance id; expired ones are dropped whenever the registry is asked."""

    def __init__(self, *, ttl_s: float, clock=time.monotonic):
        self.ttl_s = kit.positive(ttl_s, "ttl_s", MAX_TTL_S)
        self.clock = clock
        self.leases: dict[str, dict[str, dict]] = {}   # service -> id -> {"url", "ttl_s", "expires"}
        self.counts = {"registered": 0, "renewed": 0, "deregistered": 0, "expired": 0}
        self._lock = threading.Lock()

    def _live(self) -> float:
        """Forget every lease that ran out; the time now. Call with the lock held."""
        now = self.clock()
        for service in list(self.leases):
            instances = self.leases[service]
            for instance_id in [i for i, lease in instances.items() if lease["expires"] <= now]:
                del instances[instance_id]
                self.counts["expired"] += 1
            if not instances:
                del self.leases[service]
        return now

    @staticmethod
    def _view(instance_id: str, lease: dict, now: float) -> dict:
        return {"id": instance_id, "url": lease["url"], "ttl_s": lease["ttl_s"],
                "expires_in_s": round(lease["expires"] - now, 3)}

    def register(self, service: str, instance_id: str, url: str, ttl_s: float | None) -> tuple[dict, bool]:
        """(the lease, whether it replaced one with the same id)."""
        with self._lock:
            now = self._live()
            instances = self.leases.setdefault(service, {})
            replaced = instance_id in instances
            ttl_s = self.ttl_s if ttl_s is None else ttl_s
            lease = instances[instance_id] = {"url": url, "ttl_s": ttl_s, "expires": now + ttl_s}
            self.counts["registered"] += 1
            return self._view(instance_id, lease, now), replaced

    def renew(self, service: str, instance_id: str, ttl_s: float | None) -> dict | None:
        with self._lock:
            now = self._live()
            lease = self.leases.get(service, {}).get(instance_id)
            if lease is None:
                return None
            lease["ttl_s"] = lease["ttl_s"] if ttl_s is None else ttl_s
            lease["expires"] = now + lease["ttl_s"]
            self.counts["renewed"] += 1
            return self._view(instance_id, lease, now)

    def deregister(self, service: str, instance_id: str) -> bool:
        with self._lock:
            self._live()
            instances = self.leases.get(service, {})
            if instances.pop(instance_id, None) is None:
                return False
            if not instances:
                del self.leases[service]
            self.counts["deregistered"] += 1
            return True

    def lookup(self, service: str) -> list[dict]:
        with self._lock:
            now = self._live()
            instances = self.leases.get(service, {})
            return [self._view(i, instances[i], now) for i in sorted(instances)]

    def services(self) -> dict[str, int]:
        with self._lock:
            self._live()
            return {name: len(instances) for name, instances in sorted(self.leases.items())}

    def stats(self) -> dict:
        with self._lock:
            self._live()
            return {"live": sum(len(i) for i in self.leases.values()), **self.counts}


def _ttl(body: dict) -> float | None:
    return None if body.get("ttl_s") is None else kit.positive(body["ttl_s"], "ttl_s", MAX_TTL_S)


def _optional_body() -> dict:
    return {} if not request.get_data(cache=True).strip() else kit.body('{"ttl_s": 10}')


routes = Blueprint("registry", __name__)


@routes.get("/")
def index():
    return {"service": "registry", "endpoints": [
        "POST /services/<service>/instances", "PUT /services/<service>/instances/<id>/heartbeat",
        "DELETE /services/<service>/instances/<id>", "GET /services/<service>", "GET /services", "GET /stats"]}


@routes.post("/services/<service>/instances")
def register(service: str):
    kit.name(service, "the service")
    body = kit.body('{"id": "inv-1", "url": "http://127.0.0.1:5001", "ttl_s": 10}')
    instance_id = kit.name(body.get("id"), "the instance id")
    lease, replaced = kit.state().register(service, instance_id, kit.url(body.get("url"), "url"), _ttl(body))
    return {"service": service, **lease}, 200 if replaced else 201


@routes.put("/services/<service>/instances/<instance_id>/heartbeat")
def heartbeat(service: str, instance_id: str):
    kit.name(service, "the service")
    kit.name(instance_id, "the instance id")
    lease = kit.state().renew(service, instance_id, _ttl(_optional_body()))
    if lease is None:
        abort(404, f"the registry has no live instance {instance_id!r} of {service!r}: its lease expired "
                   f"or it never registered; register it again with POST /services/{service}/instances")
    return {"service": service, **lease}


@routes.delete("/services/<service>/instances/<instance_id>")
def deregister(service: str, instance_id: str):
    kit.name(service, "the service")
    kit.name(instance_id, "the instance id")
    if not kit.state().deregister(service, instance_id):
        abort(404, f"the registry has no live instance {instance_id!r} of {service!r} to deregister")
    return {"service": service, "deregistered": instance_id}


@routes.get("/services/<service>")
def lookup(service: str):
    return {"service": kit.name(service, "the service"), "instances": kit.state().lookup(service)}


@routes.get("/services")
def services():
    return {"services": kit.state().services()}


@routes.get("/stats")
def stats():
    return kit.state().stats()


def create_app(*, name: str = "registry", ttl_s: float = 10.0, clock=time.monotonic):
    """A registry whose leases last ``ttl_s`` seconds unless a registration says otherwise."""
    return kit.make_app(name, Registry(ttl_s=ttl_s, clock=clock), routes)
