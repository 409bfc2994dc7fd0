"""A greeting service: the smallest server there is, used by notebook 00."""

from flask import Flask, jsonify, request

from ._errors import json_errors


def create_app() -> Flask:
    """GET /hello?name=N answers {"message": "Hello, N!"}; GET / is a small web page."""
    app = json_errors(Flask("hello"))

    @app.get("/")
    def page():
        return "<h1>Hello from a labkit server</h1><p>Try <a href='hello?name=you'>hello?name=you</a>.</p>"

    @app.get("/hello")
    def hello():
        name = request.args.get("name", "world").strip()
        if not name or len(name) > 100:
            return jsonify(error="name must be 1 to 100 characters"), 400
        return jsonify(message=f"Hello, {name}!")

    return app
