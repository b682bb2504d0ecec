"""A real loopback HTTP server that answers like leakseg's TorchServe from a script, and wire helpers.

:class:`FakeService` is an http.server on 127.0.0.1 that counts requests and answers from a script,
for the client's retry policy, timeouts and auth refresh without a model. :func:`parse_body` reads
a request body the way a server would. No mocks of requests.
"""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
from PIL import Image

from leakseg.client import (
    ClipResult,
    LeakSegClient,
    ModelDescription,
)
from leakseg.schema import (
    ClipInfo,
    ClipOptions,
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


