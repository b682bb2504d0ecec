"""Property-based fuzzing of what request bytes reach: the frame decoders and the request parsers.

The property is the API's promise for bad input: whatever the bytes, the answer is frames (or a
parsed request) or an :class:`InputError` whose status is a 4xx, never another exception (which the
handler would answer as 500 ``internal_error``). In process, as the TorchServe handler runs them:
``parse_request`` on the parts TorchServe hands over, then ``decode_request_frames`` and
``check_clip``. Inputs are arbitrary bytes and JSON, and valid PNG, JPEG, TIFF, BMP, .npy and .npz
files with bytes flipped, cut, inserted or repeated.

`make test` runs each property with the default profile's fixed budget (tests/conftest.py);
`make fuzz` runs them with HYPOTHESIS_PROFILE=long.
"""

from __future__ import annotations

import base64
import io
import json
import zipfile
from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import support.bad_requests as bad
from leakseg.io.frames import ClipLimits, check_clip, decode_clip_bytes, decode_frame_bytes, decode_image_bytes
from leakseg.schema import InputError
from leakseg.serving.parse import decode_request_frames, parse_request

#: Pillow warns about what it skips in a corrupt file (EXIF, TIFF tags): expected here, not a finding.
pytestmark = [pytest.mark.fuzz, pytest.mark.filterwarnings("ignore::UserWarning:PIL")]

#: The service's limits, small enough that a mutated header within them decodes quickly.
LIMITS = ClipLimits(max_frame_pixels=256 * 256, max_clip_bytes=32 * 256 * 256 * 3 * 2)


def _image(mode: str, fmt: str, **options) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels, "RGB").convert(mode).save(buf, format=fmt, **options)
    return buf.getvalue()


def _grey16_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.arange(12 * 16, dtype=np.uint16).reshape(12, 16) * 300).save(buf, format="PNG")
    return buf.getvalue()


def _npz(array: np.ndarray, compress: bool) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compress else np.savez)(buf, clip=array)
    return buf.getvalue()


_CLIP = np.random.default_rng(1).integers(0, 255, (3, 12, 16), dtype=np.uint8)
IMAGE_SEEDS = [
    _image("L", "PNG"), _image("RGB", "PNG"), _image("P", "PNG"), _grey16_png(), _image("RGB", "JPEG"),
    _image("L", "TIFF"), _image("RGB", "TIFF", compression="tiff_deflate"), _image("RGB", "TIFF",
                                                                               compression="tiff_jpeg"),
    _image("RGB", "BMP"), bad.png_rgb16(bad.radiometric_rgb(_CLIP[0])), bad.tiff_rgb16(bad.radiometric_rgb(_CLIP[0])),
]
CLIP_SEEDS = [
    bad.npy(_CLIP), bad.npy(_CLIP.astype(np.uint16) * 200), bad.npy(_CLIP.astype(np.float32)),
    bad.npy(np.stack([bad.radiometric_rgb(f) for f in _CLIP])), _npz(_CLIP, True), _npz(_CLIP, False),
]


@st.composite
def mutated(draw, seeds) -> bytes:
    """One of ``seeds`` with a few bytes flipped, a cut, an insertion or a repeated slice."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:at + draw(st.integers(1, max(1, len(data) - at)))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        else:
            data[at:at] = data[at:at + draw(st.integers(1, 64))]
    return bytes(data)


FILE_BYTES = st.one_of(st.binary(max_size=512), mutated(IMAGE_SEEDS), mutated(CLIP_SEEDS),
                       st.sampled_from(IMAGE_SEEDS + CLIP_SEEDS))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20)


def frames_or_4xx(call: Callable[[], Any]) -> Any:
    """What ``call`` returns, or None when it refused with a 4xx InputError; any other exception fails."""
    try:
        return call()
    except InputError as exc:
        assert 400 <= exc.status < 500, (exc.code, exc.message)
        return None


def served(parts: dict, mime: str) -> None:
    """What the handler does with one request up to the model: parse, decode, check the clip."""
    request = frames_or_4xx(lambda: parse_request(parts, mime, LIMITS))
    if request is None or request.describe:
        return
    decoded = frames_or_4xx(lambda: decode_request_frames(request, LIMITS))
    if decoded is not None:
        frames, names = decoded
        frames_or_4xx(lambda: check_clip(frames, LIMITS, names))


# --- the decoders --------------------------------------------------------------------------------


@given(FILE_BYTES)
def test_any_bytes_as_an_image_give_a_frame_or_a_4xx(data):
    frame = frames_or_4xx(lambda: decode_image_bytes(data, "frame_0000", LIMITS))
    assert frame is None or (frame.ndim in (2, 3) and frame.dtype in (np.uint8, np.uint16, np.float32))


@given(FILE_BYTES)
def test_any_bytes_as_a_clip_give_frames_or_a_4xx(data):
    frames = frames_or_4xx(lambda: decode_clip_bytes(data, "clip", LIMITS))
    assert frames is None or len(frames) <= LIMITS.max_frames


@given(FILE_BYTES)
def test_any_bytes_as_a_drop_folder_frame_give_a_frame_or_a_4xx(data):
    frames_or_4xx(lambda: decode_frame_bytes(data, "frame.npy"))


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 2 ** 32 - 1), st.booleans())
def test_npz_end_records_with_any_counts_give_frames_or_a_4xx(flags, method, directory_bytes, zip64):
    """The end-of-central-directory fields zipfile trusts, and a member's flags and method, set at random."""
    data = bad.npz_patched(CLIP_SEEDS[4], flags, method)
    end = data.rfind(b"PK\x05\x06")
    patched = bytearray(data)
    patched[end + 12:end + 16] = directory_bytes.to_bytes(4, "little")
    if zip64:
        patched[end + 8:end + 12] = b"\xff" * 4
    frames_or_4xx(lambda: decode_clip_bytes(bytes(patched), "clip", LIMITS))


# --- the request parsers -------------------------------------------------------------------------

PART_NAMES = st.one_of(st.sampled_from(["clip", "prompts", "options", "body"]),
                       st.from_regex(r"frame_\d{1,7}", fullmatch=True), st.text(max_size=12))
PART_VALUES = st.one_of(FILE_BYTES, FILE_BYTES.map(bytearray), st.text(max_size=64), JSON_VALUES,
                        JSON_VALUES.map(lambda v: json.dumps(v).encode()))


@given(st.dictionaries(PART_NAMES, PART_VALUES, max_size=8))
def test_any_multipart_parts_give_a_request_or_a_4xx(parts):
    served(parts, "multipart/form-data")


@given(st.lists(mutated(IMAGE_SEEDS), min_size=1, max_size=5))
def test_multipart_clips_of_mutated_images_give_frames_or_a_4xx(files):
    served({f"frame_{i:04d}": bytearray(data) for i, data in enumerate(files)}, "multipart/form-data")


JSON_BODIES = st.one_of(
    JSON_VALUES,
    st.binary(max_size=256),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({}, optional={
        "frames": st.lists(st.one_of(FILE_BYTES.map(lambda b: base64.b64encode(b).decode()), st.text(max_size=20)),
                           max_size=6) | JSON_VALUES,
        "prompts": JSON_VALUES, "options": JSON_VALUES, "describe": JSON_VALUES}),
)


@given(JSON_BODIES, st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=2))
def test_any_json_body_gives_a_request_or_a_4xx(body, query):
    served({"body": body, **query}, "application/json")


@given(st.text(max_size=40), st.dictionaries(PART_NAMES, PART_VALUES, max_size=3))
def test_any_content_type_gives_a_request_or_a_4xx(mime, parts):
    served(parts, mime.lower())


def test_the_seeds_decode():
    """The mutations start from files the service takes (or refuses for a reason, the 16-bit colour ones)."""
    for data in IMAGE_SEEDS[:-2]:
        assert decode_image_bytes(data, "seed", LIMITS).shape[:2] == (12, 16)
    for data in CLIP_SEEDS:
        assert len(decode_clip_bytes(data, "seed", LIMITS)) == 3
    assert zipfile.is_zipfile(io.BytesIO(CLIP_SEEDS[4]))
