"""JSON errors for every reference service: a client always gets ``{"error": "..."}``.

Flask answers its own errors (404 unknown page, 405 wrong method, 413 body too large,
400 bad request) with HTML. :func:`json_errors` makes them JSON like the services'
own errors, and caps request bodies, so malformed input always gets a JSON 4xx.
"""

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

#: The largest request body a reference service reads, in bytes.
MAX_BODY_BYTES = 64 * 1024


def json_errors(app: Flask) -> Flask:
    """Answer every HTTP error of ``app`` with ``{"error": sentence}``; cap bodies at MAX_BODY_BYTES."""
    app.config.setdefault("MAX_CONTENT_LENGTH", MAX_BODY_BYTES)

    @app.errorhandler(HTTPException)
    def _as_json(error: HTTPException):
        messages = {
            404: f"no such page: {request.path}",
            405: f"{request.method} is not allowed on {request.path}",
            413: f"the body is too large: send at most {app.config['MAX_CONTENT_LENGTH']} bytes",
        }
        response = jsonify(error=messages.get(error.code, error.description))
        return response, error.code

    return app
