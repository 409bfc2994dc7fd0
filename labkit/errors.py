"""labkit's own exceptions.

    LabkitError
    ├── ServerError      a server cannot start or is used after stop
    └── LinkError        a link cannot start or is used after close

Network failures are never wrapped: a client raises the ``requests`` library's
own exceptions (``ConnectionError``, ``ReadTimeout``, ...), as real code would see.
Bad settings raise ``ValueError``; bad arguments raise ``TypeError``.
"""


class LabkitError(Exception):
    """Something labkit itself cannot do; the message says what to do instead."""


class ServerError(LabkitError, RuntimeError):
    """A server cannot start (its name is taken) or was used after it stopped."""


class LinkError(LabkitError, RuntimeError):
    """A link cannot start (its target is unknown) or was used after it closed."""
