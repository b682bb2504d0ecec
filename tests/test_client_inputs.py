"""The client without a model: request building, error mapping, and retries against a real loopback server.

* build_request: every input kind becomes the right multipart parts / JSON body; the checks
  parse the encoded bytes the way a server would, so "byte-identical" means on the wire.
* error_from_response: every (status, body) shape, ours and TorchServe's.
* LeakSegClient against :class:`FakeService`, an http.server on 127.0.0.1 that counts requests
  and answers from a script: retry policy, timeouts, auth refresh, ready(), segment_many order,
  and the `leakseg segment` command. No mocks of requests.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
from PIL import Image

from leakseg.client import (
    AuthError,
    ClipResult,
    ConnectionFailed,
    InvalidInput,
    LeakSegClient,
    ModelDescription,
    ModelNotFound,
    ModelNotReady,
    ServerBusy,
    ServiceError,
    ServiceUnavailable,
    Timeout,
    build_request,
    error_from_response,
    load_frames,
)
from leakseg.client.errors import BAD_REQUEST, REQUEST_TOO_LARGE
from leakseg.schema import (
    ERROR_STATUS,
    ClipInfo,
    ClipOptions,
    ErrorCode,
    FrameResult,
    ModelInfo,
    RLEMask,
    Timings,
)
from leakseg.utils.rle import encode_rle

# TorchServe 0.12's message for "no worker" AND for "job queue full" (ApiUtils, verbatim).
TS_NO_WORKER = (
    'Model "jvlgs" has no worker to serve inference request. Please use scale workers API to add workers. '
    "If this is a sequence inference, please check if it is closed, or expired; or exceeds maxSequenceJobQueueSize"
)
TS_TOKEN = "Token Authorization failed. Token either incorrect, expired, or not provided correctly"


# =============================================================================================
# helpers: a multipart parser (as a server sees the body), canned results, image files


@dataclass
class Received:
    """One request as the fake service saw it."""

    method: str
    path: str
    headers: Dict[str, str]
    body: bytes
    parts: Dict[str, Tuple[Optional[str], str, bytes]] = field(default_factory=dict)  # name -> (filename, type, data)
    json: Any = None

    def array(self) -> np.ndarray:
        """The ``clip`` part loaded with np.load."""
        return np.load(io.BytesIO(self.parts["clip"][2]), allow_pickle=False)

    def frame_count(self) -> int:
        if self.json is not None:
            return len(self.json.get("frames", []))
        if "clip" in self.parts:
            return int(self.array().shape[0])
        return sum(1 for name in self.parts if name.startswith("frame_"))


def parse_multipart(body: bytes, content_type: str) -> Dict[str, Tuple[Optional[str], str, bytes]]:
    """A strict multipart/form-data parser: split on the boundary, keep each part's bytes as sent."""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type).group(1).encode()
    chunks = body.split(b"--" + boundary)
    assert chunks[0] == b"" and chunks[-1] == b"--\r\n", "malformed multipart framing"
    parts = {}
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        disposition = headers["Content-Disposition"]
        name = re.search(r'\bname="([^"]*)"', disposition).group(1)
        filename = re.search(r'filename="([^"]*)"', disposition)
        assert name not in parts, f"duplicate part {name}"
        parts[name] = (filename.group(1) if filename else None, headers.get("Content-Type", ""), data)
    return parts


def parse_body(body: bytes, content_type: str) -> Tuple[Dict[str, Any], Any]:
    if content_type.startswith("multipart/form-data"):
        return parse_multipart(body, content_type), None
    return {}, json.loads(body)


def canned_result(t: int, h: int = 6, w: int = 8, request_id: Optional[str] = None) -> dict:
    """A valid ClipResult JSON for a T-frame clip: frame i has an (i+1)-pixel leak in row 2."""
    frames = []
    for i in range(t):
        mask = np.zeros((h, w), bool)
        mask[2, : min(w, i + 1)] = True
        frames.append(FrameResult(index=i, leak=True, area_pixels=int(mask.sum()), area_fraction=float(mask.mean()),
                                  max_score=0.8, mask=RLEMask(**encode_rle(mask))))
    return ClipResult(
        request_id=request_id,
        model=ModelInfo(name="jvlgs", version="1.0", prompts=["gas leak"]),
        clip=ClipInfo(frames=t, height=h, width=w, leak_detected=t > 0, leak_frames=list(range(t)),
                      max_leak_fraction=max((f.area_fraction for f in frames), default=0.0)),
        frames=frames,
        timings=Timings(decode_ms=1, model_ms=2, postprocess_ms=3, total_ms=6),
    ).model_dump(mode="json")


DESCRIPTION = ModelDescription(
    name="jvlgs", version="1.0", backbone="segformer", input_size=352, prompt_count=2,
    default_prompts=["gas leak", "smoke"], available_prompts=["gas leak", "smoke", "steam"],
    min_frames=1, max_frames=64, max_frame_pixels=4096 * 4096, defaults=ClipOptions(), runtime="onnxruntime cpu",
).model_dump(mode="json")


def image_bytes(array: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> Tuple[Path, List[bytes]]:
    """frame1..frame10 PNG files (natural order differs from plain sort) and their bytes in order."""
    folder = tmp_path / "frames"
    folder.mkdir()
    contents = []
    for i in range(1, 11):
        data = image_bytes(np.full((6, 8), i * 20, np.uint8), "PNG")
        (folder / f"frame{i}.png").write_bytes(data)
        contents.append(data)
    (folder / "notes.txt").write_text("not a frame")
    return folder, contents


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
    with pytest.raises(ValueError, match="16-bit RGB"):
        build_request(np.zeros((2, 4, 4, 3), np.uint16), form="json")
    with pytest.raises(ValueError, match="form must be"):
        build_request(np.zeros((2, 4, 4), np.uint8), form="xml")


def test_load_frames_decodes_every_kind(tmp_path, image_folder):
    folder, _ = image_folder
    assert load_frames(folder).shape == (10, 6, 8)
    grey16 = np.arange(48, dtype=np.uint16).reshape(6, 8) * 1000
    (tmp_path / "a.tif").write_bytes(image_bytes(grey16, "TIFF"))
    loaded = load_frames([tmp_path / "a.tif"])
    assert loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded[0], grey16)
    np.save(tmp_path / "c.npy", np.stack([grey16, grey16]))
    assert load_frames(tmp_path / "c.npy").shape == (2, 6, 8)


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
        (500, {"code": 500, "type": "InternalServerException", "message": "Worker died."}, ServiceError, None),
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


# =============================================================================================
# the fake service


Answer = Tuple[int, Any]  # (status, JSON-able body, or bytes/str sent as is)


class FakeService:
    """A real HTTP/1.1 server on 127.0.0.1 (port 0) answering POST /predictions/<model> from a script.

    ``script(received, n)`` returns (status, body) for the n-th request (0-based); it may sleep.
    """

    def __init__(self, script: Callable[[Received, int], Answer]):
        self.script = script
        self.received: List[Received] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def count(self) -> int:
        return len(self.received)

    def __enter__(self) -> "FakeService":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _answer(self, received: Received) -> Answer:
        with self._lock:
            n = len(self.received)
            self.received.append(received)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return self.script(received, n)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _handler_class(self):
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like TorchServe

            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                ctype = self.headers.get("Content-Type", "")
                parts, parsed = parse_body(body, ctype)
                received = Received("POST", self.path, dict(self.headers), body, parts, parsed)
                status, answer = service._answer(received)
                if isinstance(answer, (dict, list)):
                    data, ctype = json.dumps(answer).encode(), "application/json"
                elif isinstance(answer, bytes):
                    data, ctype = answer, "text/plain"
                else:
                    data, ctype = str(answer or "").encode(), "text/plain"
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:  # the client gave up (read timeout tests)
                    pass

            def log_message(self, *args):  # keep test output clean
                pass

        return Handler


def answer_clip(received: Received, n: int) -> Answer:
    """Segment-like answer: a canned result with as many frames (and the size) of what was sent."""
    if received.json is not None and received.json.get("describe"):
        return 200, DESCRIPTION
    h, w = received.array().shape[1:3] if "clip" in received.parts else (6, 8)
    return 200, canned_result(received.frame_count(), h, w)


def fail_then(status_body: Answer, failures: int) -> Callable[[Received, int], Answer]:
    return lambda received, n: status_body if n < failures else answer_clip(received, n)


def client_for(service_or_url, **kwargs) -> LeakSegClient:
    url = service_or_url.url if isinstance(service_or_url, FakeService) else service_or_url
    kwargs.setdefault("backoff", 0.01)
    kwargs.setdefault("timeout", 10.0)
    return LeakSegClient(url, **kwargs)


CLIP = np.zeros((3, 6, 8), np.uint8)
OURS_400 = (400, {"error": {"code": "too_few_frames", "message": "need 2 frames", "field": "frames",
                            "request_id": "req-7"}})
TS_503 = (503, {"code": 503, "type": "ServiceUnavailableException", "message": TS_NO_WORKER})


# =============================================================================================
# retries, timeouts, auth


def test_success_returns_typed_result_and_sends_auth_header():
    with FakeService(answer_clip) as service, client_for(service, token="secret") as client:
        result = client.segment(CLIP, ["gas leak"], threshold=0.4)
    assert isinstance(result, ClipResult) and result.leak_frames == [0, 1, 2]
    assert result.frames[1].area_pixels == 2 and result.frames[1].bbox is None
    assert result.masks().shape == (3, 6, 8)
    (received,) = service.received
    assert received.path == "/predictions/jvlgs"
    assert received.headers["Authorization"] == "Bearer secret"
    assert json.loads(received.parts["options"][2]) == {"threshold": 0.4}
    assert received.array().shape == (3, 6, 8)


def test_our_400_is_sent_exactly_once():
    with FakeService(lambda r, n: OURS_400) as service, client_for(service, retries=3) as client:
        with pytest.raises(InvalidInput) as info:
            client.segment(CLIP)
    assert service.count == 1
    error = info.value
    assert (error.code, error.field, error.status) == (ErrorCode.TOO_FEW_FRAMES, "frames", 400)
    assert error.request_id == "req-7"


@pytest.mark.parametrize("answer, expected", [
    (TS_503, ModelNotReady),
    ((503, {"code": 503, "type": "ServiceUnavailableException", "message": "job queue is full"}), ServerBusy),
])
def test_503_is_retried_then_raised(answer, expected):
    with FakeService(lambda r, n: answer) as service, client_for(service, retries=2) as client:
        with pytest.raises(expected):
            client.segment(CLIP)
    assert service.count == 3  # the first try and 2 retries


def test_503_then_success():
    with FakeService(fail_then(TS_503, 2)) as service, client_for(service, retries=3) as client:
        assert client.segment(CLIP).clip.frames == 3
    assert service.count == 3


@pytest.mark.parametrize("answer", [
    (500, {"error": {"code": "internal_error", "message": "boom", "request_id": "r1"}}),
    (503, {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}),
    (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found"}),
    (413, b""),
], ids=["internal-error", "prediction-failed", "not-found", "bare-413"])
def test_failures_that_would_repeat_are_not_retried(answer):
    with FakeService(lambda r, n: answer) as service, client_for(service, retries=3) as client:
        with pytest.raises((ServiceError, ModelNotFound, InvalidInput)):
            client.segment(CLIP)
    assert service.count == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retried_then_raises():
    delays = []
    client = client_for(f"http://127.0.0.1:{closed_port()}", retries=2)
    client._delay = lambda attempt: delays.append(attempt) or 0.0  # count the retries, skip the waits
    with client, pytest.raises(ConnectionFailed, match="cannot reach"):
        client.segment(CLIP)
    assert delays == [0, 1]


def test_dropped_connections_are_retried_and_counted():
    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def accept_and_drop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn.recv(65536)[:4])
            conn.close()

    threading.Thread(target=accept_and_drop, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with client_for(url, retries=2) as client, pytest.raises(ConnectionFailed):
            client.segment(CLIP)
        assert accepted == [b"POST"] * 3
        # An upload cut off half-way may be TorchServe refusing an oversized body: say so.
        with client_for(url, retries=0) as client:
            with pytest.raises(ConnectionFailed, match="8.0 MB: check the service's max_request_size"):
                client.segment(np.zeros((2, 2000, 2000), np.uint8))
    finally:
        server.close()


def test_read_timeout_raises_timeout_without_retry():
    def slow(received, n):
        time.sleep(1.0)
        return answer_clip(received, n)

    with FakeService(slow) as service, client_for(service, timeout=0.2, retries=3) as client:
        with pytest.raises(Timeout, match="within 0.2 s"):
            client.segment(CLIP)
        time.sleep(0.1)
    assert service.count == 1


def test_auth_error_rereads_the_key_file(tmp_path):
    key_file = tmp_path / "key_file.json"

    def write_key(key):
        key_file.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": key, "expiration time": "x"},
                                        "API": {"key": "a"}}))

    def check_token(received, n):
        if received.headers.get("Authorization") != "Bearer fresh":
            return 400, {"code": 400, "type": "InvalidKeyException", "message": TS_TOKEN}
        return answer_clip(received, n)

    write_key("stale")
    with FakeService(check_token) as service, client_for(service, key_file=key_file) as client:
        write_key("fresh")  # TorchServe renewed the key after the client started
        assert client.segment(CLIP).clip.frames == 3
        assert [r.headers["Authorization"] for r in service.received] == ["Bearer stale", "Bearer fresh"]
    with FakeService(check_token) as service, client_for(service, token="wrong", key_file=key_file) as client:
        with pytest.raises(AuthError, match="Token Authorization failed"):
            client.segment(CLIP)
        assert service.count == 1  # an explicit token is not replaced by the file's


def test_token_resolution_order(tmp_path, monkeypatch):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "from-file"}}))
    monkeypatch.delenv("LEAKSEG_TOKEN", raising=False)
    monkeypatch.setenv("LEAKSEG_KEY_FILE", str(key_file))
    assert LeakSegClient()._token == "from-file"
    monkeypatch.setenv("LEAKSEG_TOKEN", "from-env")
    assert LeakSegClient(key_file=key_file)._token == "from-env"
    assert LeakSegClient(token="from-arg")._token == "from-arg"
    assert "from-arg" not in repr(LeakSegClient(token="from-arg"))
    monkeypatch.delenv("LEAKSEG_TOKEN")
    monkeypatch.delenv("LEAKSEG_KEY_FILE")
    assert LeakSegClient()._token is None
    key_file.write_text("{}")
    with pytest.raises(AuthError, match="no inference key"):
        LeakSegClient(key_file=key_file)


# =============================================================================================
# ready, describe, segment_many, json form on the wire


def test_ready_and_describe():
    with FakeService(answer_clip) as service, client_for(service) as client:
        assert client.ready() is True
        description = client.describe()
        assert isinstance(description, ModelDescription) and description.max_frames == 64
        assert service.received[0].json == {"describe": True}
    for answer in (TS_503, (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found"})):
        with FakeService(lambda r, n, answer=answer: answer) as service, client_for(service, retries=3) as client:
            assert client.ready() is False
            assert service.count == 1  # a probe does not retry
    with client_for(f"http://127.0.0.1:{closed_port()}") as client:
        assert client.ready() is False
    with FakeService(lambda r, n: (400, {"code": 400, "type": "InvalidKeyException", "message": TS_TOKEN})) as service:
        with client_for(service) as client, pytest.raises(AuthError):
            client.ready()


def test_wait_until_ready_polls():
    with FakeService(fail_then(TS_503, 2)) as service, client_for(service) as client:
        assert client.wait_until_ready(timeout=10, interval=0.05).name == "jvlgs"
    assert service.count == 3


def test_segment_many_keeps_input_order_under_concurrency():
    def shuffled(received, n):
        t = received.frame_count()
        time.sleep(0.02 * (8 - t))  # bigger clips answer first
        return 200, canned_result(t, request_id=f"clip-{t}")

    clips = (np.zeros((t, 6, 8), np.uint8) for t in range(1, 9))  # lazy input
    with FakeService(shuffled) as service, client_for(service) as client:
        results = list(client.segment_many(clips, concurrency=4))
    assert [r.clip.frames for r in results] == list(range(1, 9))
    assert [r.request_id for r in results] == [f"clip-{t}" for t in range(1, 9)]
    assert service.max_in_flight > 1


def test_segment_many_errors_raise_in_order_or_are_returned():
    def fail_two(received, n):
        return OURS_400 if received.frame_count() == 2 else answer_clip(received, n)

    clips = [np.zeros((t, 6, 8), np.uint8) for t in (1, 2, 3)]
    with FakeService(fail_two) as service, client_for(service) as client:
        outcomes = list(client.segment_many(clips, concurrency=2, return_exceptions=True))
        assert [type(o) for o in outcomes] == [ClipResult, InvalidInput, ClipResult]
        results = client.segment_many(clips, concurrency=2)
        assert next(results).clip.frames == 1
        with pytest.raises(InvalidInput):
            next(results)


def test_json_form_on_the_wire(image_folder):
    folder, contents = image_folder
    with FakeService(answer_clip) as service, client_for(service) as client:
        assert client.segment(folder, form="json", opening_kernel=0).clip.frames == 10
    sent = service.received[0]
    assert sent.headers["Content-Type"] == "application/json"
    assert [base64.b64decode(f) for f in sent.json["frames"]] == contents
    assert sent.json["options"] == {"opening_kernel": 0}


def test_bad_options_never_reach_the_server():
    with FakeService(answer_clip) as service, client_for(service) as client:
        with pytest.raises(InvalidInput, match="unknown option 'thresold'"):
            client.segment(CLIP, thresold=0.5)
        with pytest.raises(InvalidInput, match="opening_kernel"):
            client.segment(CLIP, options=ClipOptions(threshold=0.3), opening_kernel=-1)
    assert service.count == 0


# =============================================================================================
# `leakseg segment`


def run_segment(argv: List[str]) -> int:
    from leakseg.commands import segment

    parser = argparse.ArgumentParser(prog="leakseg segment")
    segment.add_arguments(parser)
    return segment.run(parser.parse_args(argv))


def test_segment_command_writes_json_and_overlay(tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((3, 48, 64), np.uint16))
    out, gif = tmp_path / "result.json", tmp_path / "overlay.gif"
    with FakeService(answer_clip) as service:
        code = run_segment(["--url", service.url, "--token", "t", "--clip", str(tmp_path / "clip.npy"),
                            "--threshold", "0.4", "--out", str(out), "--overlay", str(gif)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "leak in 3 of 3 frames: 0-2" in printed and "largest leak: frame 2, 3 px" in printed
    assert ClipResult.model_validate_json(out.read_text()).clip.frames == 3
    assert Image.open(gif).n_frames == 3
    assert json.loads(service.received[0].parts["options"][2]) == {"threshold": 0.4}


def test_segment_command_errors_are_readable(tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((3, 6, 8), np.uint8))
    with FakeService(lambda r, n: OURS_400) as service:
        assert run_segment(["--url", service.url, "--clip", str(tmp_path / "clip.npy")]) == 1
    err = capsys.readouterr().err
    assert "invalid input [too_few_frames, field frames] (HTTP 400): need 2 frames" in err
    assert "Traceback" not in err
    assert run_segment(["--url", f"http://127.0.0.1:{closed_port()}", "--retries", "0",
                        "--clip", str(tmp_path / "clip.npy")]) == 1
    assert "ConnectionFailed" in capsys.readouterr().err
    assert run_segment(["--url", "http://127.0.0.1:1"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert run_segment(["--clip", str(tmp_path / "missing.npy")]) == 2
    assert run_segment(["--clip", str(tmp_path / "clip.npy"), "--threshold", "2"]) == 2
    assert "invalid input [invalid_options, field options.threshold] (before sending)" in capsys.readouterr().err


def test_sample_frames_and_frame_ranges():
    from leakseg.commands.segment import frame_ranges, sample_frames

    assert list(sample_frames(range(10), native_fps=30, fps=10)) == [0, 3, 6, 9]
    assert list(sample_frames(range(10), native_fps=25, fps=10)) == [0, 3, 5, 8]
    assert list(sample_frames(range(10), native_fps=None, fps=5, max_frames=4)) == [0, 1, 2, 3]
    assert list(sample_frames(range(5), native_fps=10, fps=30)) == [0, 1, 2, 3, 4]
    assert frame_ranges([9, 1, 2, 3, 7, 10]) == "1-3, 7, 9-10" and frame_ranges([]) == ""
