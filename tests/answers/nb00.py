"""Answers to notebook 00: wrong answers with the words their verdict must hold."""

import requests


def greet_hard_coded(client, base_url, name):
    return f"Hello, {name}!"


def greet_without_client(client, base_url, name):
    return requests.get(base_url + "/hello", params={"name": name}, timeout=5).json()["message"]


def greet_whole_body(client, base_url, name):
    return client.get(base_url + "/hello", params={"name": name}).json()


def greet_body_text(client, base_url, name):
    # Subtle: a str, from the service, asked by the right client; but the whole JSON text, not the message.
    return client.get(base_url + "/hello", params={"name": name}).text


WRONG = [
    ("q0.1", greet_hard_coded, ["without asking the service", "client.get("]),
    ("q0.1", greet_without_client, ["did not come from the client you were given", "from 'client'"]),
    ("q0.1", greet_whole_body, ["not a string", "{'message': 'Hello, Ada!'}", '.json()["message"]']),
    ("q0.1", greet_body_text, ["but the service says 'Hello, Ada!'", '"message"', "unchanged"]),
]
