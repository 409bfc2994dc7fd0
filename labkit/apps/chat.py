"""A message board for notebook 01: polling against long polling.

    POST /messages                 {"text": ...} -> 201 {"id": n}
    GET  /messages?after=N         messages with id > N, at once (polling)
    GET  /messages?after=N&wait_s=S
                                   the same, but if there are none yet the server holds the
                                   request up to S seconds until one arrives (long polling)

A server cannot start a conversation: long polling is how it answers "as soon
as there is news" inside request-response.
"""

import threading

from flask import Blueprint, request

from ..errors import Invalid
from . import kit

MAX_WAIT_S = 30.0


class Board:
    """The messages, and a condition that wakes long polls when one arrives."""

    def __init__(self):
        self.messages: list[dict] = []
        self._news = threading.Condition()
        self._closing = False

    def post(self, text: str) -> dict:
        with self._news:
            message = {"id": len(self.messages) + 1, "text": text}
            self.messages.append(message)
            self._news.notify_all()
        return message

    def after(self, after: int, wait_s: float = 0.0) -> list[dict]:
        """The messages with an id above ``after``; wait up to ``wait_s`` for one if there are none."""
        with self._news:
            self._news.wait_for(lambda: len(self.messages) > after or self._closing, timeout=wait_s)
            return self.messages[max(after, 0):]

    def close(self) -> None:
        """Answer every long poll at once: the server is stopping."""
        with self._news:
            self._closing = True
            self._news.notify_all()


routes = Blueprint("chat", __name__)


@routes.post("/messages")
def post():
    text = kit.text(kit.body('{"text": "hello"}').get("text"), "text", limit=1000)
    return {"id": kit.state().post(text)["id"]}, 201


@routes.get("/messages")
def get():
    try:
        after, wait_s = int(request.args.get("after", 0)), float(request.args.get("wait_s", 0))
    except ValueError:
        raise Invalid("after must be a whole number and wait_s a number of seconds") from None
    return {"messages": kit.state().after(after, kit.number(wait_s, "wait_s", 0, MAX_WAIT_S, unit="seconds"))}


def create_app(*, name: str = "chat"):
    return kit.make_app(name, Board(), routes)
