"""A small forecast service for notebook 01: answers, errors and silence.

    GET /forecast?city=NAME   {"city", "sky", "temperature_c"}: the same city, the same forecast
    GET /broken               503 {"error": ...}: the service is up but cannot serve
    anything else             404 {"error": ...}

Error answers carry a JSON body, as many real services do: a client that reads
the body without looking at the status gets an error dressed as data.
"""

import zlib

from flask import Blueprint, abort, request

from . import kit

SKIES = ["sunny", "cloudy", "rain", "snow", "fog", "wind"]

routes = Blueprint("weather", __name__)


@routes.get("/forecast")
def forecast():
    city = kit.text(request.args.get("city", "Oslo").strip(), "city")
    n = zlib.crc32(city.lower().encode())
    return {"city": city, "sky": SKIES[n % len(SKIES)], "temperature_c": n % 41 - 10}


@routes.get("/broken")
def broken():
    abort(503, "the forecast model is being updated; try again later")


def create_app(*, name: str = "weather"):
    return kit.make_app(name, None, routes)
