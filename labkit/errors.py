"""labkit's own exceptions: one tree, and each says whether trying again can help.

    LabkitError
    ├── ServerError            a server cannot start, or was used after it stopped
    ├── LinkError              a link cannot start, or was used after it closed
    ├── Invalid                a value breaks its rule: an option, a setting, a field of a request
    ├── PaymentError           the store's payment did not go through; nothing was bought
    │   ├── PaymentDeclined        the processor said no: the same key gets the same no
    │   └── PaymentUnavailable     no answer: the same key again is safe and may succeed
    ├── KeysUnavailable        a verifier cannot fetch the signer's public keys
    ├── MergeError             a peer's merge function raised, or returned no replica
    ├── ReleaseError           a solution notebook breaks the cell conventions
    ├── GradeError             the grader cannot run at all
    └── Fail                   a hidden test found an answer wrong

Network failures are never wrapped: a client raises the requests library's own
exceptions (``ConnectionError``, ``ReadTimeout``, ...), as real code would see.
Notebook 07 says which of those a retry may follow and which are ambiguous.
"""

from werkzeug.exceptions import BadRequest


class LabkitError(Exception):
    """Something labkit itself cannot do; the message says what to do instead."""


class ServerError(LabkitError, RuntimeError):
    """A server cannot start (its name or port is taken) or was used after it stopped.

    Trying again the same way fails the same way: change the name or the port, or
    start a new server.
    """


class LinkError(LabkitError, RuntimeError):
    """A link cannot start (its target is unknown) or was used after it closed; make a new one."""


class Invalid(LabkitError, BadRequest, ValueError):
    """A value breaks its rule; the message names the value and the rule.

    Raised for a service's options, a link's settings and the fields of a request.
    Inside a request it is the service's answer: 400 with ``{"error": message}``.
    Sending the same value again is refused again; send a value the message allows.
    """

    def __init__(self, message: str):
        super().__init__(description=message)

    def __str__(self) -> str:
        return self.description


class PaymentError(LabkitError):
    """A checkout's payment did not go through: the store recorded no order and kept no stock.

    Whether the processor charged depends on the subclass: a decline did not; an
    unavailable processor may have.

    ``status`` is the HTTP status the orders service answers with. Which retry is
    right depends on the subclass.
    """

    status = 502


class PaymentDeclined(PaymentError):
    """The payment processor declined the charge (402).

    Its answer to a key is final: the same key gets the same refusal. A buyer who
    wants to try again makes a new purchase, with a new idempotency key.
    """

    status = 402


class PaymentUnavailable(PaymentError):
    """The payment processor did not answer, or answered that it cannot now (503).

    It may or may not have charged. Trying again with the SAME idempotency key is
    safe: a processor that did charge answers with that charge instead of a new one.
    """

    status = 503


class KeysUnavailable(LabkitError):
    """A verifier cannot fetch its signer's public keys (the signer is away or answered nonsense).

    Tokens signed with keys fetched before still verify; trying again later may work.
    """


class MergeError(LabkitError):
    """A peer's merge function raised, or returned something that is not a replica.

    The exchange that needed it failed and the replica is unchanged; the next
    exchange fails the same way until the merge is fixed.
    """


class ReleaseError(LabkitError, ValueError):
    """A solution notebook breaks the cell conventions; the message names the notebook and cell."""


class GradeError(LabkitError):
    """The grader cannot run at all (no such file, no solution edition); nothing was graded."""


class Fail(LabkitError):
    """A hidden test found the answer wrong: ``what`` was wrong (with the value), ``hint`` what to try."""

    def __init__(self, what: str, hint: str = ""):
        super().__init__(what)
        self.what, self.hint = what, hint
