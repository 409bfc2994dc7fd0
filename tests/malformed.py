"""Malformed input for the services' property tests (hypothesis strategies), shared by every test_<service>.py.

A service must answer each of these with a JSON 4xx and leave its state as it was, or
accept it when it happens to be valid. ``fields`` are the names a service's bodies use,
so generated objects often look nearly right: the cases that slip through checks.
"""

from __future__ import annotations

import json

from hypothesis import strategies as st

from labkit.apps.kit import MAX_BODY_BYTES

#: Text that parses as something else, or nearly does.
ODD_TEXT = ["", " ", "-1", "0", "1", "nan", "inf", "1e400", "true", "null", "0x10", "١٢", "9" * 40, "\x00", "é" * 200]


def json_values(fields=(), samples=()):
    """Any JSON value: leaves of every type (and ``samples``), lists, and objects keyed by ``fields`` or anything."""
    leaves = (st.none() | st.booleans() | st.integers(-10**30, 10**30) | st.floats(allow_nan=False)
              | st.text(max_size=20) | st.sampled_from([*ODD_TEXT, *samples]))
    keys = st.sampled_from(list(fields)) | st.text(max_size=8) if fields else st.text(max_size=8)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
                        max_leaves=12)


def bodies(fields=(), samples=()):
    """None or (content type, bytes): JSON of any shape, objects holding some of ``fields`` with values of
    any type, bytes that are not JSON or not UTF-8, plain text, and a body over the services' size limit."""
    values = json_values(fields, samples)
    as_json = values.map(lambda v: ("application/json", json.dumps(v).encode()))
    options = [st.none(), as_json,
               st.binary(max_size=200).map(lambda b: ("application/json", b)),
               st.binary(min_size=1, max_size=50).map(lambda b: ("application/json", b"\xff\xfe" + b)),  # not UTF-8
               st.text(max_size=50).map(lambda t: ("text/plain", t.encode())),
               st.just(("application/json", b'{"x": "' + b"x" * (MAX_BODY_BYTES + 10) + b'"}'))]  # too large
    if fields:
        options.append(st.fixed_dictionaries({}, optional={f: values for f in fields}).map(
            lambda d: ("application/json", json.dumps(d).encode())))
    return st.one_of(options)


def path_ids(samples=()):
    """One path segment: huge and negative integers, ``samples``, any text without a slash."""
    return st.one_of(st.integers(-10**20, 10**20).map(str), st.sampled_from([*ODD_TEXT[1:6], *samples]),
                     st.text(min_size=1, max_size=20).filter(lambda t: "/" not in t and t not in (".", "..")))
