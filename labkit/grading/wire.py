"""What crosses between the examiner and the student's process: values as tagged JSON, one message a line.

The examiner (:mod:`labkit.grading.examiner`) runs the hidden tests; every call of the
student's function goes to the student's process (:mod:`labkit.grading.answering`) as
data, and only data comes back. Nothing the answer does can reach the examiner's
objects: what it returns is decoded into plain values (``None``, bools, numbers,
strings, lists, tuples, dicts, sets, bytes, ``Headers``); anything else becomes a
:class:`Foreign` that equals nothing; an exception becomes a :class:`RemoteError` (or,
for the exceptions of Python, ``requests`` and ``labkit.errors``, an instance of the same
class, carrying its message only).

The examiner also sends what an answer needs and the student's process rebuilds: a
``labkit.Client`` (by its name and options), a database engine (by its URL), and a
callback (a function of the test, such as ``pay``, whose calls come back to the
examiner). A list, dict or set sent twice in one run is one object on the answer's
side, so an answer may keep state in it (a cache).
"""

from __future__ import annotations

import base64
import builtins
import inspect
import json
import socket
import threading

import requests

from .. import errors

#: The longest message either side accepts, in bytes: a bigger answer is refused.
MAX_MESSAGE = 8 * 1024 * 1024
#: The deepest nesting of a value either side decodes.
MAX_DEPTH = 64


class WireError(Exception):
    """A message that cannot be read: too big, not JSON, or not a value this protocol knows."""


class Channel:
    """JSON messages over a connected socket, one per line; ``send`` may be called from any thread."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self._reader = sock.makefile("rb")
        self._lock = threading.Lock()

    def send(self, message: dict) -> None:
        data = json.dumps(message, separators=(",", ":"), allow_nan=True).encode() + b"\n"
        if len(data) > MAX_MESSAGE:
            raise WireError(f"a message of {len(data)} bytes is more than the {MAX_MESSAGE} allowed")
        with self._lock:
            self.sock.sendall(data)

    def receive(self) -> dict | None:
        """The next message, or None when the other side has gone."""
        line = self._reader.readline(MAX_MESSAGE + 1)
        if not line:
            return None
        if len(line) > MAX_MESSAGE:
            raise WireError(f"a message of more than {MAX_MESSAGE} bytes")
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise WireError(f"a message that is not JSON, or nested too deeply ({type(error).__name__})") from None
        if not isinstance(message, dict) or not isinstance(message.get("op"), str):
            raise WireError("a message without an operation")
        return message

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it, and tells the other side
        except OSError:
            pass
        for part in (self._reader, self.sock):
            try:
                part.close()
            except OSError:
                pass


# -- what the answer sends back -----------------------------------------------------------------


class Foreign:
    """A value the answer returned that is not plain data: its type's name and its repr, nothing else.

    It equals nothing but itself, so no answer passes by returning an object that claims
    to equal everything.
    """

    def __init__(self, type_name: str, mro: list[str], text: str):
        self.type_name, self.mro, self._text = type_name, list(mro), text

    def __repr__(self) -> str:
        return self._text

    __hash__ = object.__hash__

    def __eq__(self, other) -> bool:
        return self is other


class RemoteError(Exception):
    """An exception the answer raised, of a class the examiner does not rebuild."""

    def __init__(self, type_name: str, mro: list[str], message: str, described: str):
        super().__init__(message)
        self.type_name, self.mro, self.described = type_name, list(mro), described


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def is_a(value, cls) -> bool:
    """``isinstance(value, cls)``, also for a :class:`Foreign` or :class:`RemoteError` that was a ``cls``."""
    classes = cls if isinstance(cls, tuple) else (cls,)
    if isinstance(value, (Foreign, RemoteError)):
        return any(qualified(c) in value.mro for c in classes)
    return isinstance(value, classes)


def type_name(value) -> str:
    """The short name of ``value``'s type, as the answer had it."""
    if isinstance(value, (Foreign, RemoteError)):
        return value.type_name.rpartition(".")[2]
    return type(value).__name__


def _rebuildable() -> dict[str, type]:
    """The exception classes either side rebuilds as themselves: Python's, requests' and labkit's."""
    found = {}
    for module in (builtins, requests.exceptions, errors):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module.__name__:
                found[qualified(value)] = value
    for cls in (KeyboardInterrupt, SystemExit, GeneratorExit):
        found.pop(qualified(cls), None)  # these end things: never rebuilt
    return found


REBUILT = _rebuildable()


def error_to_wire(error: BaseException, described: str) -> dict:
    cls = type(error)
    return {"type": qualified(cls), "mro": [qualified(c) for c in cls.__mro__[:-1]],
            "message": _text(error), "described": described[:400]}


def _text(error: BaseException) -> str:
    try:
        return str(error)[:2000]
    except Exception:  # noqa: BLE001 - a __str__ that raises
        return ""


def error_from_wire(data) -> BaseException:
    """The exception ``data`` describes: a rebuilt one of a known class, else a RemoteError."""
    if not isinstance(data, dict):
        raise WireError("an error that is not described")
    type_name, message = str(data.get("type", "")), str(data.get("message", ""))[:2000]
    mro = [str(name) for name in data.get("mro", [])][:64] if isinstance(data.get("mro"), list) else []
    described = str(data.get("described", ""))[:400]
    cls = REBUILT.get(type_name)
    if cls is None:
        return RemoteError(type_name, mro or [type_name], message, described)
    try:
        error = cls.__new__(cls)
        BaseException.__init__(error, message)
    except Exception:  # a class that cannot be made this way (ExceptionGroup wants its exceptions)
        return RemoteError(type_name, mro or [type_name], message, described)
    error.labkit_described = described
    return error


# -- values -------------------------------------------------------------------------------------------


def plain(value, depth: int = 0, *, custom=None):
    """``value`` as tagged JSON: plain data, anything else a Foreign. ``custom(value, depth)`` may
    encode a value first (the examiner's clients, engines, callbacks and shared containers)."""
    if depth > MAX_DEPTH:
        return _foreign(value, "too deeply nested")
    if custom is not None:
        found = custom(value, depth)
        if found is not None:
            return found
    kind = type(value)
    if value is None or kind in (bool, str, int, float):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(int.__repr__(value))        # a subclass of int: its number, not its methods
    if isinstance(value, float):
        return float(float.__repr__(value))
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, (bytes, bytearray)):
        return {"$": "bytes", "b64": base64.b64encode(bytes(memoryview(value))).decode()}
    more = lambda item: plain(item, depth + 1, custom=custom)  # noqa: E731
    if isinstance(value, list):
        return [more(item) for item in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"$": "tuple", "items": [more(item) for item in tuple.__iter__(value)]}
    if isinstance(value, (set, frozenset)):
        return {"$": "set", "items": [more(item) for item in frozenset.__iter__(frozenset(value))]}
    if isinstance(value, dict):
        return {"$": "dict", "items": [[more(k), more(v)] for k, v in dict.items(value)]}
    if _is_headers(value):
        return {"$": "headers", "items": [[str(k), str(v)] for k, v in value.items()]}
    return _foreign(value)


def _foreign(value, why: str = "") -> dict:
    cls = type(value)
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - a __repr__ that raises
        text = f"<{cls.__name__}>"
    return {"$": "foreign", "type": qualified(cls), "mro": [qualified(c) for c in cls.__mro__[:-1]],
            "repr": (why or text)[:400]}


def _is_headers(value) -> bool:
    from werkzeug.datastructures import Headers

    return isinstance(value, Headers)


def unplain(data, depth: int = 0, *, extra=None):
    """The value tagged JSON ``data`` stands for. ``extra(tag, data)`` reads tags beyond plain data."""
    if depth > MAX_DEPTH:
        raise WireError("a value nested too deeply")
    if data is None or isinstance(data, (bool, int, float, str)):
        return data
    if isinstance(data, list):
        return [unplain(item, depth + 1, extra=extra) for item in data]
    if not isinstance(data, dict):
        raise WireError(f"a value of JSON type {type(data).__name__}")
    tag = data.get("$")
    items = data.get("items", [])
    if tag in ("tuple", "set", "dict", "headers") and not isinstance(items, list):
        raise WireError(f"a {tag} without items")
    if tag == "tuple":
        return tuple(unplain(item, depth + 1, extra=extra) for item in items)
    if tag == "set":
        return set(_hashable(unplain(item, depth + 1, extra=extra)) for item in items)
    if tag == "dict":
        return {_hashable(unplain(_pair(item)[0], depth + 1, extra=extra)): unplain(_pair(item)[1], depth + 1, extra=extra)
                for item in items}
    if tag == "bytes":
        try:
            return base64.b64decode(str(data.get("b64", "")), validate=True)
        except ValueError:
            raise WireError("bytes that are not base64") from None
    if tag == "headers":
        from werkzeug.datastructures import Headers

        return Headers([(str(_pair(item)[0]), str(_pair(item)[1])) for item in items])
    if tag == "foreign":
        mro = data.get("mro") if isinstance(data.get("mro"), list) else []
        return Foreign(str(data.get("type", "object")), [str(name) for name in mro][:64], str(data.get("repr", ""))[:400])
    if extra is not None:
        return extra(tag, data)
    raise WireError(f"a value tagged {tag!r}")


def _pair(item):
    if not isinstance(item, list) or len(item) != 2:
        raise WireError("a dict item that is not a pair")
    return item


def _hashable(value):
    try:
        hash(value)
    except TypeError:
        raise WireError(f"a dict key or set item of type {type(value).__name__}, which cannot be one") from None
    return value


def parameters(function) -> list | None:
    """The parameters of ``function`` as [name, kind, has a default] lists (None if it has no signature)."""
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return None
    return [[p.name, int(p.kind), p.default is not p.empty] for p in signature.parameters.values()]


def signature_of(data) -> inspect.Signature | None:
    """The signature ``parameters`` described (None if it cannot be read)."""
    if not isinstance(data, list):
        return None
    try:
        return inspect.Signature([inspect.Parameter(str(name), inspect._ParameterKind(int(kind)),
                                                    default=None if has_default else inspect.Parameter.empty)
                                  for name, kind, has_default in data])
    except (TypeError, ValueError):
        return None
