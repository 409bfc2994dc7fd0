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

from . import trace as _trace

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
                 trace: _trace.Trace | None = None):
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a client's name must be a non-empty string, not {name!r}")
        self.name = name
        self.timeout = timeout
        self.base_url = base_url
        self.trace = _trace.default if trace is None else trace
        # One session per client keeps connections alive between calls; closing
        # the client closes them (see close()), so no socket outlives it.
        self._session = requests.Session()
        self._session.trust_env = False  # loopback services: no proxies or .netrc from the environment
        adapter = HTTPAdapter(pool_connections=8, pool_maxsize=256, max_retries=0)
        self._session.mount("http://", adapter)

    def request(self, method: str, url: str, **kwargs) -> requests.Response:
        """Send a request; return the response or raise what requests raises."""
        url = urljoin(self.base_url, url) if self.base_url else url
        parts = urlsplit(url)
        service = _trace.name_for(parts.hostname or "", parts.port or 80)
        trace_id, span_id = _trace.new_ids()
        headers = dict(kwargs.pop("headers", None) or {})
        headers["traceparent"] = _trace.traceparent(trace_id, span_id)
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
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> requests.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs) -> requests.Response:
        return self.request("PUT", url, **kwargs)

    def delete(self, url: str, **kwargs) -> requests.Response:
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
