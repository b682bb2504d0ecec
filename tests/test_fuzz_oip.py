"""Property-based fuzzing of the v2 request parsers (leakseg/serving/oip.py), in-process.

Whatever the bytes, :func:`parse_v2_json` and :func:`parse_v2_binary` (the KServe runtime's) and
:func:`request_from_envelope_input` (what TorchServe's kservev2 envelope hands the handler) give a
request or an :class:`InputError` with a 4xx status and a short message, never another exception
(a 500 with exception text, as KServe's own parsers gave). The budget is the hypothesis profile
of tests/conftest.py (`make test`: fixed; HYPOTHESIS_PROFILE=long for more).
"""

from __future__ import annotations

import json
import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from leakseg.schema import InputError
from leakseg.serving import oip

pytestmark = pytest.mark.fuzz

NAMES = st.sampled_from(["frames", "describe", "image", ""]) | st.text(max_size=8)
DATATYPES = st.sampled_from(["UINT8", "UINT16", "FP32", "BYTES", "BOOL", "INT64", "FP16", "uint8", ""])
SCALARS = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=12)
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20)
SHAPES = st.lists(st.integers(-2, 2**64) | st.booleans(), max_size=5) | JSON_VALUES
PARAMETER_KEYS = st.sampled_from(["prompts", "options", "threshold", "opening_kernel", "normalization",
                                  "return_masks", "binary_data_size", "content_type", "colour"])
NESTED_TEXT = st.integers(1, 5000).map(lambda n: "[" * n + "]" * n) | st.integers(1, 5000).map(
    lambda n: '{"a":' * n + "1" + "}" * n)
PARAMETER_VALUES = JSON_VALUES | NESTED_TEXT | st.lists(st.text(max_size=10), max_size=5).map(json.dumps)
PARAMETERS = st.dictionaries(PARAMETER_KEYS, PARAMETER_VALUES, max_size=4) | JSON_VALUES


@st.composite
def v2_inputs(draw):
    """One input, mostly well-formed in shape so the checks behind the first ones are reached too."""
    item = {"name": draw(NAMES), "datatype": draw(DATATYPES), "shape": draw(st.lists(st.integers(0, 6), max_size=4))}
    if draw(st.booleans()):
        item["shape"] = draw(SHAPES)
    size = max(0, min(64, math.prod(s for s in item["shape"] if isinstance(s, int)))) if isinstance(
        item["shape"], list) else 0
    item["data"] = draw(st.lists(st.integers(-1, 300) | st.floats(allow_nan=False), min_size=size, max_size=size)
                        | st.lists(st.text(alphabet="QUJDRA==%", max_size=12), max_size=4) | JSON_VALUES)
    if draw(st.booleans()):
        item["parameters"] = draw(PARAMETERS)
    for key in draw(st.sets(st.sampled_from(["name", "datatype", "shape", "data"]), max_size=1)):
        del item[key]
    return item


REQUESTS = st.fixed_dictionaries({"inputs": st.lists(v2_inputs(), max_size=3) | JSON_VALUES},
                                 optional={"id": JSON_VALUES | st.text(), "parameters": PARAMETERS,
                                           "outputs": JSON_VALUES}) | JSON_VALUES


def parsed_or_4xx(parse, *args):
    """``parse(*args)`` and its ClipRequest; an InputError must be a 4xx with a short message."""
    try:
        request = parse(*args)
        if isinstance(request, oip.V2Request):
            assert request.request_id is None or len(request.request_id) <= oip.MAX_REQUEST_ID_CHARS
            request.clip_request()
    except InputError as exc:
        assert 400 <= exc.status < 500 and len(exc.message) < 1100, (exc.status, exc.message[:200])


@given(st.binary(max_size=400))
def test_any_bytes_as_json(body):
    parsed_or_4xx(oip.parse_v2_json, body)


@given(REQUESTS)
def test_v2_json_requests(doc):
    parsed_or_4xx(oip.parse_v2_json, json.dumps(doc).encode())


@given(NESTED_TEXT, st.sampled_from(["body", "prompts", "options", "data"]))
def test_deep_nesting_anywhere(nested, where):
    frames = {"name": "frames", "datatype": "UINT8", "shape": [3, 1, 1], "data": [1, 2, 3]}
    if where == "body":
        body = nested.encode()
    elif where == "data":
        body = json.dumps({"inputs": [{**frames, "data": "X"}]}).encode().replace(b'"X"', nested.encode())
    else:
        body = json.dumps({"inputs": [{**frames, "parameters": {where: nested}}]}).encode()
    parsed_or_4xx(oip.parse_v2_json, body)


def _bytes_elements(elements, lie):
    out = b""
    for i, element in enumerate(elements):
        out += struct.pack("<I", len(element) + (lie if i == 0 else 0)) + element
    return out


@given(st.lists(v2_inputs(), min_size=1, max_size=2), st.data())
def test_v2_binary_requests(inputs, data):
    """A header announcing binary data per input, then a tail that is right, short, long or lying."""
    tail = b""
    for item in inputs:
        if data.draw(st.booleans()):
            item.pop("data", None)
            chunk = (_bytes_elements(data.draw(st.lists(st.binary(max_size=8), max_size=3)),
                                     data.draw(st.integers(-3, 2**32 - 1)) if data.draw(st.booleans()) else 0)
                     if item.get("datatype") == "BYTES" else data.draw(st.binary(max_size=64)))
            item.setdefault("parameters", {})
            if isinstance(item["parameters"], dict):
                item["parameters"]["binary_data_size"] = data.draw(st.just(len(chunk)) | st.integers(-2, 100))
            tail += chunk
    header = json.dumps({"inputs": inputs}).encode()
    length = data.draw(st.just(str(len(header))) | st.integers(-5, len(header) + 50).map(str)
                       | st.text(max_size=6))
    parsed_or_4xx(oip.parse_v2_binary, header + tail + data.draw(st.binary(max_size=4)), length)


@given(st.binary(max_size=300), st.text(max_size=8) | st.integers(-10, 400).map(str))
def test_any_bytes_as_binary(body, length):
    parsed_or_4xx(oip.parse_v2_binary, body, length)


@given(st.dictionaries(st.sampled_from(["name", "datatype", "shape", "data", "parameters"]), JSON_VALUES)
       .map(lambda d: {"name": "frames", "datatype": "UINT8", **d}) | v2_inputs())
def test_envelope_inputs(item):
    """What TorchServe's kservev2 envelope hands the handler: one input, parsed by TorchServe's JSON."""
    parsed_or_4xx(oip.request_from_envelope_input, item)


@given(st.text(max_size=300) | JSON_VALUES)
def test_request_ids_are_safe_to_echo_and_log(value):
    rid = oip.safe_request_id(value)
    assert rid is None or (0 < len(rid) <= oip.MAX_REQUEST_ID_CHARS and rid.isprintable() and " " not in rid
                           and rid.isascii())
