"""An HTTP client that names its caller and records every exchange in the trace.

    >>> alice = Client("alice")          # doctest: +SKIP
    >>> alice.get(hello.url + "/").json()  # doctest: +SKIP

It is a thin layer over a ``requests.Session``: it adds a W3C ``traceparent``
header and a ``Labkit-Caller`` header, applies a timeout by default (a call
with no timeout can wait forever), and raises the requests library's own
exceptions, which are what a real network produces.
"""

from __future__ import annotations

import errno
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter

from . import tracing

#: Seconds a call waits for a connection and then for each read, unless told otherwise.
DEFAULT_TIMEOUT = 5.0


def describe(exc: BaseException) -> str:
    """A short, stable name for what went wrong: "timeout", "refused", "reset", ..."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout"
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout"
    cause = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError) or getattr(cause, "errno", None) == errno.ECONNREFUSED:
            return "refused"
        if isinstance(cause, ConnectionResetError) or getattr(cause, "errno", None) == errno.ECONNRESET:
            return "reset"
        if isinstance(cause, (ConnectionAbortedError, BrokenPipeError)):
            return "reset"
        nested = cause.args[0] if cause.args and isinstance(cause.args[0], BaseException) else None
        cause = nested or cause.__cause__ or cause.__context__
        if cause is None:
            break
    text = str(exc)
    if "refused" in text:
        return "refused"
    if "reset" in text or "aborted" in text.lower():
        return "reset"
    return type(exc).__name__


class Client:
    """An HTTP client called ``name`` on diagrams; a context manager.

    ``timeout`` (seconds, or a (connect, read) pair) applies to every call that
    does not pass its own. ``base_url`` lets calls name only a path.
    """

    def __init__(self, name: str, *, timeout=DEFAULT_TIMEOUT, base_url: str = "",
                 trace: tracing.Trace | None = None):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a client's name must be a non-empty string, not {name!r}")
        self.name = name
        self.timeout = timeout
        self.base_url = base_url
        self.trace = tracing.default if trace is None else trace
        # One session per client keeps connections alive between calls; closing
        # the client closes them (see close()), so no socket outlives it.
        self._session = requests.Session()
        self._session.trust_env = False  # loopback services: no proxies or .netrc from the environment
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=256, max_retries=0)
        self._session.mount("http://", adapter)

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        """Send a request; return the response or raise what requests raises.

        ``kwargs`` are those of ``requests.request`` (``json``, ``params``, ``headers``,
        ``timeout``, ...). Every call is two events in the trace: "send", then
        "response" (with the status) or "error" (with :func:`describe` of what went wrong).
        """
        url = urljoin(self.base_url, url) if self.base_url else url
        parts = urlsplit(url)
        service = tracing.name_for(parts.hostname or "", parts.port or 80)
        trace_id, span_id = tracing.new_ids()
        headers = dict(kwargs.pop("headers", None) or {})
        headers["traceparent"] = tracing.traceparent(trace_id, span_id)
        headers["Labkit-Caller"] = self.name
        kwargs.setdefault("timeout", self.timeout)
        fields = dict(method=method.upper(), path=parts.path or "/", trace_id=trace_id, span_id=span_id)
        self.trace.record("send", self.name, service, **fields)
        try:
            response = self._session.request(method, url, headers=headers, **kwargs)
        except requests.exceptions.RequestException as exc:
            self.trace.record("error", service, self.name, error=describe(exc), **fields)
            raise
        self.trace.record("response", service, self.name, status=response.status_code, **fields)
        return response

    def get(self, url: str, **kwargs) -> requests.Response:
        """GET: read a resource. Safe and idempotent: a retry changes nothing on the server."""
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs) -> requests.Response:
        """HEAD: like GET, but the answer has headers and no body (does it exist, how large?)."""
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:
        """POST: ask the server to act (create, charge, run). Not idempotent: a blind retry may act twice."""
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs) -> requests.Response:
        """PUT: replace a resource with the body sent. Idempotent: the same PUT twice leaves the same state."""
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs) -> requests.Response:
        """PATCH: change part of a resource. Idempotent only if the change is (set a field, not add one)."""
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs) -> requests.Response:
        """DELETE: remove a resource. Idempotent: it is gone after one call or two (the second may be 404)."""
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._session.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.name!r}>"
