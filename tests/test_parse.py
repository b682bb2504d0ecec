"""Request parsing (leakseg.serving.parse) without TorchServe: parts shaped as TorchServe 0.12 hands them over."""

import base64
import io
import json
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from leakseg.schema import InputError
from leakseg.serving.parse import ClipRequest, content_type, decode_request_frames, parse_request
from leakseg.io.frames import ClipLimits

LIMITS = ClipLimits()


def png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def png_header_only(width, height) -> bytes:
    """A PNG announcing width x height whose pixel data is a few bytes (a decompression bomb's shape)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def error_of(fn, *args):
    with pytest.raises(InputError) as info:
        fn(*args)
    return info.value


FRAMES = [np.full((6, 8), v, np.uint8) for v in (10, 20, 30)]


# --- Content-Type --------------------------------------------------------------------------------


def test_content_type_is_case_insensitive_without_parameters_and_ignores_part_entries():
    headers = {"frame_0000": {"content-type": "image/png"}, "CONTENT-TYPE": "Multipart/Form-Data; boundary=x"}
    assert content_type(headers) == "multipart/form-data"
    assert content_type({"content-type": "application/json; charset=utf-8"}) == "application/json"
    assert content_type({"frame_0000": {"content-type": "image/png"}}) == ""


@pytest.mark.parametrize("mime, hint", [
    ("text/plain", "text/plain"),
    ("application/octet-stream", "application/octet-stream"),
    ("", "(none)"),
    ("application/x-www-form-urlencoded", "curl -F"),
])
def test_other_content_types_are_415(mime, hint):
    err = error_of(parse_request, {"body": b"x"}, mime)
    assert (err.code.value, err.status, err.field) == ("unsupported_content_type", 415, "Content-Type")
    assert hint in err.message


# --- multipart -----------------------------------------------------------------------------------


def test_frames_are_ordered_by_their_number_and_every_value_type_is_read():
    parts = {"frame_10": bytearray(b"ten"), "frame_0002": b"two", "frame_1": "one"}  # str: a text/* part
    request = parse_request(parts, "multipart/form-data")
    assert request.images == [("frame_1", b"one"), ("frame_0002", b"two"), ("frame_10", b"ten")]
    assert request.clip is None and request.prompts is None and request.options is None


@pytest.mark.parametrize("value", [b'["a", "b"]', bytearray(b'["a", "b"]'), '["a", "b"]', ["a", "b"]])
def test_prompts_part_as_plain_field_text_part_or_parsed_json(value):
    assert parse_request({"frame_0": b"x", "prompts": value}, "multipart/form-data").prompts == ["a", "b"]


@pytest.mark.parametrize("value", [b'{"threshold": 0.3}', {"threshold": 0.3}])
def test_options_part_as_text_or_parsed_json(value):
    assert parse_request({"frame_0": b"x", "options": value}, "multipart/form-data").options == {"threshold": 0.3}


@pytest.mark.parametrize("parts, code, field, words", [
    ({"frame_0": b"x", "prompts": b"gas leak"}, "invalid_body", "prompts", "not valid JSON"),
    ({"frame_0": b"x", "prompts": b""}, "invalid_body", "prompts", "empty"),
    ({"frame_0": b"x", "options": b"{threshold: 1}"}, "invalid_options", "options", "not valid JSON"),
    ({"frame_0": b"x", "clip": b"npy"}, "invalid_body", "clip", "not both"),
    ({"frame_0": b"x", "image": b"y"}, "invalid_body", "image", "unexpected part"),
    ({"frame_0001": b"x", "frame_1": b"y"}, "invalid_body", "frame_1", "same frame number 1"),
    ({"frame_0": {"a": 1}}, "frame_decode_error", "frame_0", "sent as JSON"),
    ({"frame_x": b"x"}, "invalid_body", "frame_x", "frame_NNNN"),
])
def test_bad_multipart_requests(parts, code, field, words):
    err = error_of(parse_request, parts, "multipart/form-data")
    assert (err.code.value, err.field) == (code, field)
    assert words in err.message and err.status == 400


def test_clip_part():
    request = parse_request({"clip": bytearray(b"\x93NUMPY"), "prompts": None}, "multipart/form-data")
    assert request.clip == b"\x93NUMPY" and request.images == []


def test_no_parts_is_an_empty_request():  # the pipeline answers no_frames
    request = parse_request({}, "multipart/form-data")
    assert request == ClipRequest()


# --- JSON ----------------------------------------------------------------------------------------


def test_json_request_parsed_by_torchserve_or_left_as_bytes():
    body = {"frames": [base64.b64encode(b"img0").decode(), base64.b64encode(b"img1").decode()],
            "prompts": ["p"], "options": {"threshold": 0.2}}
    for value in (body, json.dumps(body).encode()):  # TorchServe parsed it / TS_DECODE_INPUT_REQUEST=false
        request = parse_request({"body": value}, "application/json")
        assert request.images == [("frames[0]", b"img0"), ("frames[1]", b"img1")]
        assert (request.prompts, request.options, request.describe) == (["p"], {"threshold": 0.2}, False)


def test_describe():
    assert parse_request({"body": {"describe": True}}, "application/json").describe is True
    assert parse_request({"body": {"describe": False, "frames": []}}, "application/json").describe is False


@pytest.mark.parametrize("body, code, field, words", [
    (b'{"frames": [', "invalid_body", "body", "not valid JSON"),
    (b"", "invalid_body", "body", "empty"),
    ([1, 2], "invalid_body", "body", "not a list"),
    ("frames", "invalid_body", "body", "not a string"),
    ({"frames": [], "prompt": ["a"]}, "invalid_body", "prompt", "unknown field"),
    ({"frames": "abc"}, "invalid_body", "frames", "list of base64"),
    ({"frames": ["aGVsbG8=", "not base64!"]}, "frame_decode_error", "frames[1]", "not valid base64"),
    ({"describe": "yes"}, "invalid_body", "describe", "true or false"),
    ({"describe": True, "frames": []}, "invalid_body", "frames", "no other fields"),
])
def test_bad_json_requests(body, code, field, words):
    err = error_of(parse_request, {"body": body}, "application/json")
    assert (err.code.value, err.field) == (code, field)
    assert words in err.message


def test_query_parameters_are_refused_in_json_requests():
    err = error_of(parse_request, {"body": {"frames": []}, "threshold": "0.3"}, "application/json")
    assert (err.code.value, err.field) == ("invalid_body", "threshold")


# --- counted before anything is decoded or validated --------------------------------------------


@pytest.mark.parametrize("mime, parts", [
    ("application/json", {"body": {"frames": ["!!! not base64 !!!"] * 5000}}),
    ("multipart/form-data", {f"frame_{i}": {"sent": "as JSON"} for i in range(5000)}),
], ids=["json_base64", "multipart_parts"])
def test_frames_are_counted_before_any_is_decoded(mime, parts):
    """5,000 frames are refused for their count, not after base64-decoding (or copying) every one of them."""
    err = error_of(parse_request, parts, mime, ClipLimits(max_frames=32))
    assert (err.code.value, err.status) == ("too_many_frames", 413) and "5000" in err.message


@pytest.mark.parametrize("mime, parts", [
    ("application/json", {"body": {"frames": [], "options": {f"option_{i}": i for i in range(200_000)}}}),
    ("multipart/form-data", {"options": {f"option_{i}": i for i in range(200_000)}}),
], ids=["json", "multipart"])
def test_option_keys_are_counted_before_validation(mime, parts):
    """pydantic builds one error per unknown key (200,000 keys: 0.7 s); more keys than options is refused first."""
    err = error_of(parse_request, parts, mime)
    assert (err.code.value, err.field) == ("invalid_options", "options") and "200000 keys" in err.message


def test_as_many_option_keys_as_options_pass_to_validation():
    from leakseg.schema import ClipOptions

    options = {name: None for name in ClipOptions.model_fields}
    assert parse_request({"body": {"options": options}}, "application/json").options == options


# --- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [None, ThreadPoolExecutor(2)])
def test_decoded_frames_equal_the_originals(pool):
    grey16 = (np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000)
    rgb = np.random.default_rng(0).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    request = ClipRequest(images=[("frame_0", png(FRAMES[0])), ("frame_1", png(grey16)), ("frame_2", png(rgb))])
    frames, names = decode_request_frames(request, LIMITS, pool)
    assert names == ["frame_0", "frame_1", "frame_2"]
    for got, want in zip(frames, [FRAMES[0], grey16, rgb]):
        assert got.dtype == want.dtype and np.array_equal(got, want)


def test_too_many_frames_are_refused_before_decoding():
    request = ClipRequest(images=[(f"frame_{i}", b"not an image") for i in range(LIMITS.max_frames + 1)])
    err = error_of(decode_request_frames, request, LIMITS)
    assert (err.code.value, err.status) == ("too_many_frames", 413)


def test_undecodable_frame_names_its_part():
    request = ClipRequest(images=[("frame_0", png(FRAMES[0])), ("frame_7", b"GIF89a garbage")])
    err = error_of(decode_request_frames, request, LIMITS, ThreadPoolExecutor(2))
    assert (err.code.value, err.field) == ("frame_decode_error", "frame_7") and "frame_7" in err.message


@pytest.mark.parametrize("width, height", [(2049, 2048), (20000, 20000)])  # the second is a Pillow "bomb"
def test_oversized_frames_are_refused_from_their_header(width, height):
    request = ClipRequest(images=[("frame_0", png_header_only(width, height))])
    err = error_of(decode_request_frames, request, LIMITS)
    assert (err.code.value, err.status, err.field) == ("frame_too_large", 413, "frame_0")
    assert str(LIMITS.max_frame_pixels) in err.message


def test_npy_and_npz_clips():
    clip = np.random.default_rng(1).random((4, 6, 8)).astype(np.float32)
    buf = io.BytesIO()
    np.savez_compressed(buf, clip=clip)
    for data in (npy(clip), buf.getvalue()):
        frames, names = decode_request_frames(ClipRequest(clip=data), LIMITS)
        assert names == ["clip[0]", "clip[1]", "clip[2]", "clip[3]"]
        assert np.array_equal(np.stack(frames), clip)


def header_only_npy(shape, dtype="<u1") -> bytes:
    """A .npy header announcing ``shape`` followed by a few bytes: np.load would allocate it all."""
    header = {"descr": dtype, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    return buf.getvalue() + b"\x00" * 16


@pytest.mark.parametrize("data, code, status", [
    (header_only_npy((33, 8, 8)), "too_many_frames", 413),
    (header_only_npy((4, 4096, 4096)), "frame_too_large", 413),
    (header_only_npy((4, 8, 8)), "frame_decode_error", 400),  # truncated
    (header_only_npy((4, 8, 8), "<f8"), "frame_decode_error", 400),  # float64
    (header_only_npy((4, 8, 8, 4)), "frame_decode_error", 400),  # 4 channels
    (b"\x93NUMPY garbage", "frame_decode_error", 400),
])
def test_bad_clips_are_refused_before_loading(data, code, status):
    err = error_of(decode_request_frames, ClipRequest(clip=data), LIMITS)
    assert (err.code.value, err.status, err.field) == (code, status, "clip")
