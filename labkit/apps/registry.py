"""A service registry for notebook 05: instances register, heartbeat, and are forgotten.

    POST   /services/<service>/instances            {"id": "inv-1", "url": "http://...", "ttl_s": 10}
                                                    -> 201 registered (200 when it replaces the same id)
    PUT    /services/<service>/instances/<id>/heartbeat   optional {"ttl_s": 10} -> 200 the lease renewed;
                                                    404 once it expired: the instance must register again
    DELETE /services/<service>/instances/<id>       -> 200 deregistered; 404 if there is no such instance
    GET    /services/<service>                      {"service", "instances": [{"id", "url", "ttl_s",
                                                    "expires_in_s"}]}: the live ones, by id
    GET    /services                                {"services": {name: number of live instances}}
    GET    /stats                                   {"registered", "renewed", "deregistered", "expired", "live",
                                                    "refused"}

Who may register? By default anyone: any caller can list any address under any name, or
replace an existing id and take its traffic (notebook 05 shows that hijack). ``keys``
(``{service: key}``) closes it for the services it names: their register, heartbeat and
deregister requests must carry ``Authorization: Bearer <key>``, or they are refused with
401 (no key, or a key the registry does not know) or 403 (a key of another service).
Every other service stays open, unless ``closed=True``: then a change to a service that
``keys`` does not name is refused with 403 (default-deny, as Consul's ACLs with
``default_policy = "deny"``). Lookups stay open either way: anyone who can reach the
registry can read every listed address. This is the idea of Consul's ACL tokens with
``service:write`` on one service name, with one static key per service; the key travels
in plain HTTP here, so anyone on the path can copy it: TLS (notebook 06) is the usual
cure, and a signed request (an HMAC of it under the key) would keep the key itself off
the wire.

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

import hmac
import threading
import time

from flask import Blueprint, abort, request

from . import kit

#: The longest lease a registration may ask for, in seconds.
MAX_TTL_S = 3600.0


class Registry:
    """Leases by service and instance id; expired ones are dropped whenever the registry is asked."""

    def __init__(self, *, ttl_s: float, clock=time.monotonic, keys: dict[str, str] | None = None,
                 closed: bool = False):
        self.ttl_s = kit.positive(ttl_s, "ttl_s", MAX_TTL_S)
        self.clock = clock
        self.keys = _keys(keys)  # service -> the key its instances must present
        if not isinstance(closed, bool):
            raise ValueError(f"closed is True (refuse services without a key) or False, not {closed!r}")
        self.closed = closed  # True: services that keys does not name are refused; False: they are open
        self.leases: dict[str, dict[str, dict]] = {}   # service -> id -> {"url", "ttl_s", "expires"}
        self.counts = {"registered": 0, "renewed": 0, "deregistered": 0, "expired": 0, "refused": 0}
        self._lock = threading.Lock()

    def authorize(self, service: str, key: str | None) -> tuple[int, str] | None:
        """None if ``key`` may change the instances of ``service``; else (401 or 403, why)."""
        wanted = self.keys.get(service)
        if wanted is None and self.closed:
            with self._lock:
                self.counts["refused"] += 1
            return 403, (f"this registry is closed: it holds no key for {service!r}, so nobody may register, "
                         f"renew or remove its instances")
        if wanted is None or (key is not None and hmac.compare_digest(key.encode(), wanted.encode())):
            return None
        with self._lock:
            self.counts["refused"] += 1
        if key is None:
            return 401, (f"registering, renewing or removing an instance of {service!r} needs its key: "
                         f"send the header 'Authorization: Bearer <key>'")
        if any(hmac.compare_digest(key.encode(), other.encode()) for other in self.keys.values()):
            return 403, f"this key belongs to another service: it may not change the instances of {service!r}"
        return 401, f"the registry knows no such key; instances of {service!r} need their service's key"

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


def _keys(keys) -> dict[str, str]:
    if keys is None:
        return {}
    if not isinstance(keys, dict):
        raise ValueError(f"keys maps a service's name to its key, such as {{'inventory': 'k3y'}}, not {keys!r}")
    for service, key in keys.items():
        kit.name(service, "a service in keys")
        if not isinstance(key, str) or len(key) < 8:
            raise ValueError(f"the key of {service!r} must be a string of at least 8 characters, not {key!r}")
    return dict(keys)


def _authorize(service: str) -> None:
    """Refuse (401/403) a change to ``service``'s instances without its key, when the registry has one."""
    header = request.headers.get("Authorization", "")
    key = header[len("Bearer "):].strip() if header.startswith("Bearer ") else None
    refused = kit.state().authorize(service, key or None)
    if refused is not None:
        status, why = refused
        if status == 401:
            kit.refuse(401, why, **{"WWW-Authenticate": 'Bearer realm="registry"'})
        abort(403, why)


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
    _authorize(service)
    body = kit.body('{"id": "inv-1", "url": "http://127.0.0.1:5001", "ttl_s": 10}')
    instance_id = kit.name(body.get("id"), "the instance id")
    lease, replaced = kit.state().register(service, instance_id, kit.url(body.get("url"), "url"), _ttl(body))
    return {"service": service, **lease}, 200 if replaced else 201


@routes.put("/services/<service>/instances/<instance_id>/heartbeat")
def heartbeat(service: str, instance_id: str):
    kit.name(service, "the service")
    kit.name(instance_id, "the instance id")
    _authorize(service)
    lease = kit.state().renew(service, instance_id, _ttl(_optional_body()))
    if lease is None:
        abort(404, f"the registry has no live instance {instance_id!r} of {service!r}: its lease expired "
                   f"or it never registered; register it again with POST /services/{service}/instances")
    return {"service": service, **lease}


@routes.delete("/services/<service>/instances/<instance_id>")
def deregister(service: str, instance_id: str):
    kit.name(service, "the service")
    kit.name(instance_id, "the instance id")
    _authorize(service)
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


def create_app(*, name: str = "registry", ttl_s: float = 10.0, clock=time.monotonic, keys=None,
               closed: bool = False):
    """A registry whose leases last ``ttl_s`` seconds unless a registration says otherwise.

    ``keys`` ({service: key}) makes the instances of those services prove who they are
    (``Authorization: Bearer <key>``) to register, heartbeat or deregister; with
    ``closed=True`` every other service is refused (403) instead of open.
    """
    return kit.make_app(name, Registry(ttl_s=ttl_s, clock=clock, keys=keys, closed=closed), routes)
