"""A small forecast service for notebook 01: answers, errors and silence.

    GET /forecast?city=NAME   {"city", "sky", "temperature_c"}: the same city, the same forecast
    GET /broken               503 {"error": ...}: the service is up but cannot serve
    anything else             404 {"error": ...}

Error answers carry a JSON body, as many real services do: a client that reads
the body without looking at the status gets an error dressed as data.
"""

import zlib

from flask import Flask, jsonify, request

from ._errors import json_errors

_SKIES = ["sunny", "cloudy", "rain", "snow", "fog", "wind"]


def create_app() -> Flask:
    app = json_errors(Flask("weather"))

    @app.get("/forecast")
    def forecast():
        city = request.args.get("city", "Oslo").strip()
        if not city or len(city) > 100:
            return jsonify(error="city must be 1 to 100 characters"), 400
        n = zlib.crc32(city.lower().encode())
        return jsonify(city=city, sky=_SKIES[n % len(_SKIES)], temperature_c=n % 41 - 10)

    @app.get("/broken")
    def broken():
        return jsonify(error="the forecast model is being updated; try again later"), 503

    return app
