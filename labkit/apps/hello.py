"""A greeting service: the smallest server there is, used by notebook 00.

    GET /                 a small web page
    GET /hello?name=N     {"message": "Hello, N!"}
"""

from flask import Blueprint, request

from . import kit

routes = Blueprint("hello", __name__)


@routes.get("/")
def page():
    return "<h1>Hello from a labkit server</h1><p>Try <a href='hello?name=you'>hello?name=you</a>.</p>"


@routes.get("/hello")
def hello():
    name = kit.text(request.args.get("name", "world").strip(), "name")
    return {"message": f"Hello, {name}!"}


def create_app(*, name: str = "hello"):
    return kit.make_app(name, None, routes)
