"""A message board for notebook 01: polling against long polling.

    POST /messages            {"text": ...} -> {"id": n}
    GET  /messages?after=N    messages with id > N, at once (polling)
    GET  /messages?after=N&wait=S
                              the same, but if there are none yet the server holds the
                              request up to S seconds until one arrives (long polling)

A server cannot start a conversation: long polling is how it answers "as soon
as there is news" inside request-response.
"""

import threading

from flask import Flask, jsonify, request

from ..server import ON_STOP
from ._errors import json_errors

MAX_WAIT_S = 30.0


def create_app() -> Flask:
    app = json_errors(Flask("chat"))
    messages: list[dict] = []
    news = threading.Condition()
    closing = threading.Event()

    def close():
        """Answer every long poll at once: the server is stopping."""
        with news:
            closing.set()
            news.notify_all()

    app.extensions[ON_STOP] = [close]

    @app.post("/messages")
    def post():
        body = request.get_json(silent=True)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str) or not text or len(text) > 1000:
            return jsonify(error='send JSON {"text": "..."} with 1 to 1000 characters'), 400
        with news:
            message = {"id": len(messages) + 1, "text": text}
            messages.append(message)
            news.notify_all()
        return jsonify(id=message["id"]), 201

    @app.get("/messages")
    def get():
        try:
            after = int(request.args.get("after", 0))
            wait = float(request.args.get("wait", 0))
        except ValueError:
            return jsonify(error="after must be an integer and wait a number of seconds"), 400
        if not 0 <= wait <= MAX_WAIT_S:
            return jsonify(error=f"wait must be between 0 and {MAX_WAIT_S:g} seconds"), 400
        with news:
            news.wait_for(lambda: len(messages) > after or closing.is_set(), timeout=wait)
            return jsonify(messages=messages[max(after, 0):])

    return app
