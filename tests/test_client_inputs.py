"""The client without a server: request building and error mapping.

* build_request: every input kind becomes the right multipart parts / JSON body; the checks
  parse the encoded bytes the way a server would, so "byte-identical" means on the wire.
* error_from_response: every (status, body) shape, ours and TorchServe's.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from leakseg.client import (
    AuthError,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    ServerBusy,
    ServiceError,
    ServiceUnavailable,
    Timeout,
    build_request,
    error_from_response,
)
import support.bad_requests as bad
from leakseg.client.errors import BAD_REQUEST, REQUEST_TOO_LARGE, WorkerDied
from leakseg.schema import (
    ERROR_STATUS,
    ErrorCode,
)

from support.fake_service import (  # noqa: F401
    DESCRIPTION, TS_NO_WORKER, TS_TOKEN, canned_result, image_bytes, parse_body, parse_multipart,
)

# =============================================================================================
# build_request: multipart


def test_numpy_uint16_clip_is_one_lossless_npy_part():
    clip = np.random.default_rng(0).integers(0, 65536, (5, 7, 9), dtype=np.uint16)
    body = build_request(clip)
    parts = parse_multipart(body.data, body.content_type)
    assert list(parts) == ["clip"]
    filename, ctype, data = parts["clip"]
    assert filename == "clip.npy" and ctype == "application/octet-stream"
    received = np.load(io.BytesIO(data), allow_pickle=False)
    assert received.dtype == np.uint16
    assert received.tobytes() == clip.tobytes() and received.shape == clip.shape


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("rgb", [False, True], ids=["grey", "rgb"])
def test_list_of_arrays_is_stacked_losslessly(dtype, rgb):
    rng = np.random.default_rng(1)
    shape = (6, 5, 3) if rgb else (6, 5)
    frames = [(rng.random(shape) * 1000).astype(dtype) for _ in range(4)]
    body = build_request(frames)
    received = np.load(io.BytesIO(parse_multipart(body.data, body.content_type)["clip"][2]))
    assert received.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(received, np.stack(frames))


def test_non_native_and_non_contiguous_arrays_arrive_little_endian():
    clip = np.arange(2 * 3 * 4, dtype=">u2").reshape(2, 3, 4)[:, :, ::2]
    received = np.load(io.BytesIO(build_request(clip).part("clip").content))
    assert received.dtype.str == "<u2"
    np.testing.assert_array_equal(received, clip)


def test_float32_survives_multipart_exactly():
    clip = np.random.default_rng(2).normal(300, 20, (3, 4, 5)).astype(np.float32)
    received = np.load(io.BytesIO(build_request(clip).part("clip").content))
    assert received.dtype == np.float32 and received.tobytes() == clip.tobytes()


def test_image_paths_are_sent_as_their_original_bytes(tmp_path):
    grey16 = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    files = {
        "a.png": image_bytes(grey16, "PNG"),
        "b.jpg": image_bytes(np.zeros((6, 8, 3), np.uint8), "JPEG"),
        "c.tif": image_bytes(grey16, "TIFF"),
        "d.bmp": image_bytes(np.zeros((6, 8), np.uint8), "BMP"),
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    body = build_request([tmp_path / n for n in files], prompts=["gas leak"])
    parts = parse_multipart(body.data, body.content_type)
    assert list(parts) == ["frame_0000", "frame_0001", "frame_0002", "frame_0003", "prompts"]
    expected_types = ["image/png", "image/jpeg", "image/tiff", "image/bmp"]
    for (name, data), key, ctype in zip(files.items(), sorted(p for p in parts if p.startswith("frame_")),
                                        expected_types):
        assert parts[key] == (name, ctype, data)
    assert parts["prompts"][0] is None  # a plain form field
    assert json.loads(parts["prompts"][2]) == ["gas leak"]


def test_folder_is_read_in_natural_order(image_folder):
    folder, contents = image_folder
    body = build_request(folder)
    parts = parse_multipart(body.data, body.content_type)
    assert [parts[f"frame_{i:04d}"][0] for i in range(10)] == [f"frame{i}.png" for i in range(1, 11)]
    assert [parts[f"frame_{i:04d}"][2] for i in range(10)] == contents


def test_npy_and_npz_paths_are_sent_as_is(tmp_path):
    clip = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    np.save(tmp_path / "clip.npy", clip)
    np.savez_compressed(tmp_path / "clip.npz", frames=clip)
    for name in ("clip.npy", "clip.npz"):
        part = build_request(str(tmp_path / name)).part("clip")
        assert part.filename == name and part.content == (tmp_path / name).read_bytes()


def test_pil_images_become_png_and_i16_stays_16_bit():
    grey16 = np.random.default_rng(3).integers(0, 65536, (6, 8), dtype=np.uint16)
    images = [Image.fromarray(grey16), Image.fromarray(grey16[::-1].copy())]
    assert images[0].mode == "I;16"
    body = build_request(images)
    parts = parse_multipart(body.data, body.content_type)
    for i, original in enumerate([grey16, grey16[::-1]]):
        filename, ctype, data = parts[f"frame_{i:04d}"]
        assert ctype == "image/png" and data.startswith(b"\x89PNG")
        decoded = Image.open(io.BytesIO(data))
        assert decoded.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(decoded), original)


def test_pil_modes_are_normalised():
    rgba = Image.new("RGBA", (4, 3), (10, 20, 30, 40))
    mode_i = Image.fromarray(np.full((3, 4), 40000, np.int32))
    body = build_request([rgba, Image.new("P", (4, 3)), mode_i])
    modes = [Image.open(io.BytesIO(body.part(f"frame_{i:04d}").content)).mode for i in range(3)]
    assert modes == ["RGB", "RGB", "I;16"]
    assert np.asarray(Image.open(io.BytesIO(body.part("frame_0002").content))).max() == 40000
    with pytest.raises(ValueError, match="mode 'F'"):
        build_request([Image.fromarray(np.zeros((3, 4), np.float32))])


def test_options_are_validated_and_only_set_fields_sent():
    body = build_request(np.zeros((2, 4, 4), np.uint8), options={"threshold": 0.3, "opening_kernel": 0})
    assert json.loads(body.part("options").content) == {"threshold": 0.3, "opening_kernel": 0}
    assert "options" not in {p.name for p in build_request(np.zeros((2, 4, 4), np.uint8)).parts}
    with pytest.raises(InvalidInput) as info:
        build_request(np.zeros((2, 4, 4), np.uint8), options={"threshhold": 0.3})
    assert info.value.code == ErrorCode.INVALID_OPTIONS and info.value.field == "options.threshhold"
    assert info.value.status is None and "threshold" in str(info.value)
    with pytest.raises(InvalidInput, match="threshold"):
        build_request(np.zeros((2, 4, 4), np.uint8), options={"threshold": 1.5})
    with pytest.raises(ValueError):  # InvalidInput is a ValueError too
        build_request(np.zeros((2, 4, 4), np.uint8), options={"normalization": "zscore"})


def test_prompts_string_is_one_prompt():
    body = build_request(np.zeros((2, 4, 4), np.uint8), prompts="gas leak")
    assert json.loads(body.part("prompts").content) == ["gas leak"]


@pytest.mark.parametrize(
    "frames, error, match",
    [
        (np.zeros((4, 4), np.uint8), ValueError, "one frame"),
        (np.zeros((2, 4, 4, 4), np.uint8), ValueError, "T x H x W"),
        (np.zeros((2, 4, 4), np.int32), ValueError, "unsupported dtype"),
        (np.zeros((2, 4, 4), np.float64), ValueError, "float32"),
        ([], ValueError, "no frames"),
        ([np.zeros((4, 4), np.uint8), np.zeros((4, 5), np.uint8)], ValueError, "one size"),
        ([np.zeros((4, 4), np.uint8), Image.new("L", (4, 4))], TypeError, "mix"),
        (b"\x89PNG", TypeError, "frames must be"),
        (42, TypeError, "frames must be"),
    ],
    ids=["2d", "rgba", "int32", "float64", "empty", "sizes", "mixed", "bytes", "int"],
)
def test_bad_frames_raise_before_sending(frames, error, match):
    with pytest.raises(error, match=match):
        build_request(frames)


def test_non_image_file_and_clip_in_list_are_refused(tmp_path):
    (tmp_path / "x.png").write_text("not really a png")
    with pytest.raises(ValueError, match="not a PNG"):
        build_request([tmp_path / "x.png"])
    np.save(tmp_path / "c.npy", np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(ValueError, match="on its own"):
        build_request([tmp_path / "c.npy"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        build_request(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        build_request([tmp_path / "missing.png"])


@pytest.mark.parametrize("form", ["multipart", "json"])
@pytest.mark.parametrize("encode, suffix", [(bad.png_rgb16, "png"), (bad.tiff_rgb16, "tif")], ids=["png", "tiff"])
def test_sixteen_bit_colour_files_are_refused_before_sending_as_the_service_would(tmp_path, encode, suffix, form):
    """The service refuses 16-bit colour images (Pillow would keep only the high byte); the client says so first."""
    radiometric = bad.radiometric_rgb(np.arange(48, dtype=np.uint8).reshape(6, 8))
    paths = [tmp_path / f"f{i}.{suffix}" for i in range(3)]
    for path in paths:
        path.write_bytes(encode(radiometric))
    with pytest.raises(InvalidInput, match="16-bit colour") as info:
        build_request(paths, form=form)
    assert info.value.code == ErrorCode.FRAME_DECODE_ERROR and info.value.field == "f0." + suffix
    body = build_request(np.stack([radiometric] * 3))  # the lossless way: the array as .npy
    np.testing.assert_array_equal(np.load(io.BytesIO(body.part("clip").content)), np.stack([radiometric] * 3))


def test_body_bytes_are_built_once():
    body = build_request(np.zeros((2, 4, 4), np.uint8))
    assert body.size == len(body.data) and body.headers["Content-Type"].startswith("multipart/form-data; boundary=")


# =============================================================================================
# build_request: JSON form


def test_json_form_base64s_image_files_unchanged(image_folder):
    folder, contents = image_folder
    body = build_request(folder, prompts=["smoke"], options={"threshold": 0.4}, form="json")
    sent = json.loads(body.data)
    assert body.content_type == "application/json" and sent == body.json
    assert [base64.b64decode(f) for f in sent["frames"]] == contents
    assert sent["prompts"] == ["smoke"] and sent["options"] == {"threshold": 0.4}


@pytest.mark.parametrize("shape, dtype, mode", [((3, 5, 7), np.uint8, "L"), ((3, 5, 7, 3), np.uint8, "RGB"),
                                                 ((3, 5, 7), np.uint16, "I;16")])
def test_json_form_turns_arrays_into_lossless_pngs(shape, dtype, mode):
    clip = np.random.default_rng(4).integers(0, np.iinfo(dtype).max, shape).astype(dtype)
    sent = json.loads(build_request(clip, form="json").data)
    assert len(sent["frames"]) == 3
    for frame, encoded in zip(clip, sent["frames"]):
        image = Image.open(io.BytesIO(base64.b64decode(encoded)))
        assert image.format == "PNG" and image.mode == mode
        np.testing.assert_array_equal(np.asarray(image), frame)


def test_json_form_of_a_npy_clip(tmp_path):
    clip = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(2, 3, 4) * 999
    np.savez(tmp_path / "clip.npz", clip)
    sent = json.loads(build_request(tmp_path / "clip.npz", form="json").data)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(base64.b64decode(sent["frames"][1])))), clip[1])


def test_json_form_refuses_float_and_16_bit_rgb():
    with pytest.raises(ValueError, match="float32.*multipart"):
        build_request(np.zeros((2, 4, 4), np.float32), form="json")
    with pytest.raises(InvalidInput, match="16-bit RGB") as info:  # typed as the service would answer it
        build_request(np.zeros((2, 4, 4, 3), np.uint16), form="json")
    assert info.value.code == ErrorCode.FRAME_DECODE_ERROR
    with pytest.raises(ValueError, match="form must be"):
        build_request(np.zeros((2, 4, 4), np.uint8), form="xml")


# =============================================================================================
# error_from_response


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.value)
def test_every_leakseg_error_code_maps(code):
    status = ERROR_STATUS[code]
    body = {"error": {"code": code.value, "message": "m", "field": "frames", "request_id": "req-1"}}
    error = error_from_response(status, body)
    if code == ErrorCode.INTERNAL_ERROR:
        assert type(error) is ServiceError and error.code == "internal_error"
    else:
        assert type(error) is InvalidInput
        assert error.code == code and error.code is code and error.field == "frames"
    assert error.status == status and error.request_id == "req-1"


@pytest.mark.parametrize(
    "status, body, expected, check",
    [
        (503, {"code": 503, "type": "ServiceUnavailableException", "message": TS_NO_WORKER}, ModelNotReady,
         lambda e: "still loading" in str(e)),
        (503, {"code": 503, "type": "ServiceUnavailableException", "message": "Model jvlgs: job queue is full"},
         ServerBusy, None),
        (503, {"code": 503, "type": "ServiceUnavailableException", "message": "queue_full"}, ServerBusy, None),
        (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: jvlgs"}, ModelNotFound,
         None),
        (400, {"code": 400, "type": "InvalidKeyException", "message": TS_TOKEN}, AuthError, None),
        (401, {"code": 401, "type": "InvalidKeyException", "message": TS_TOKEN}, AuthError, None),
        (400, {"code": 400, "type": "BadRequestException", "message": "Token Authentication failed"}, AuthError,
         None),
        (401, {"code": 401, "type": "Unauthorized", "message": "authorization required"}, AuthError, None),
        (400, {"code": 400, "type": "BadRequestException", "message": "Invalid HTTP message."}, InvalidInput,
         lambda e: e.code == BAD_REQUEST),
        (405, {"code": 405, "type": "MethodNotAllowedException", "message": "Requested method is not allowed"},
         InvalidInput, lambda e: e.code == BAD_REQUEST),
        (413, {"code": 413, "type": "RequestEntityTooLarge", "message": "too large"}, InvalidInput,
         lambda e: e.code == REQUEST_TOO_LARGE and "max_request_size" in str(e)),
        (503, {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}, ServiceError,
         lambda e: e.status == 503),
        (507, {"code": 507, "type": "InternalServerException", "message": "Out of resources"}, ServiceError, None),
        (500, {"code": 500, "type": "InternalServerException", "message": "Worker died."}, WorkerDied, None),
        (408, {"code": 408, "type": "RequestTimeoutException", "message": "timed out"}, Timeout, None),
    ],
    ids=["no-worker", "queue-full", "queue_full", "not-found", "token-400", "token-401", "token-text",
         "401-other", "bad-request", "405", "413-json", "prediction-failed", "507", "worker-died", "408"],
)
def test_torchserve_error_shapes_map(status, body, expected, check):
    error = error_from_response(status, body)
    assert type(error) is expected and error.status == status
    if check:
        assert check(error), str(error)


@pytest.mark.parametrize(
    "status, body, expected",
    [(413, "", InvalidInput), (413, None, InvalidInput), (401, "", AuthError), (403, "Forbidden", AuthError),
     (404, "<html>Not Found</html>", ModelNotFound), (503, "", ServerBusy), (504, "Gateway Timeout", Timeout),
     (502, "<html>Bad Gateway</html>", ServiceError), (500, "", ServiceError), (418, "teapot", InvalidInput)],
)
def test_bare_statuses_map(status, body, expected):
    error = error_from_response(status, body, request_bytes=12_000_000)
    assert type(error) is expected and error.status == status
    if status == 413:
        assert error.code == REQUEST_TOO_LARGE and "12.0 MB" in str(error)


def test_error_hierarchy():
    assert issubclass(ServerBusy, ServiceUnavailable) and issubclass(ModelNotReady, ServiceUnavailable)
    assert not issubclass(ModelNotFound, ServiceUnavailable) and issubclass(InvalidInput, ValueError)
    unknown = error_from_response(400, {"error": {"code": "frame_too_dark", "message": "m"}})
    assert type(unknown) is InvalidInput and unknown.code == "frame_too_dark"
    message = str(error_from_response(400, {"error": {"code": "no_frames", "message": "send frames",
                                                      "field": "frames", "request_id": "r9"}}))
    assert message == "[no_frames] (field 'frames') send frames (HTTP 400) [request_id r9]"


