"""The thin client and `leakseg segment` end to end, against a REAL TorchServe (tests/support/torchserve_fixture.py).

Every result is compared with the in-process :class:`leakseg.inference.predictor.Predictor` on the same
frames: whatever the input kind or request form, the client must deliver the frames unchanged
and hand back exactly what the model computes. Errors come from the real server and must
arrive as the client's typed exceptions; retries are counted where the server records them
(TorchServe's access log). No mocks: the only stand-in is a plain TCP relay that starts
listening late, to let a refused connection be retried into a real answer.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import requests
from PIL import Image

from support.blockers import NOT_IN_THIN_CLIENT, run_python
from support.loopback import pipe
from leakseg.client import (
    AuthError,
    ClipOptions,
    ClipResult,
    ConnectionFailed,
    InvalidInput,
    LeakSegClient,
    ModelNotFound,
)
from leakseg.schema import ErrorCode, ErrorResponse


T, H, W = 4, 64, 80
TIMEOUT = 180.0  # seconds per request: 2 shared cores, a busy machine
#: Under these options the random test model's masks are neither empty nor full.
NO_OPENING = {"opening_kernel": 0}


# --- fixtures and helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(served):
    with LeakSegClient(served.inference_url, token=served.inference_token, model=served.model,
                       timeout=TIMEOUT) as c:
        yield c


def make_clip(seed: int, t: int = T, h: int = H, w: int = W, dtype=np.uint8, channels: int = 0) -> List[np.ndarray]:
    """Noisy frames around one random background, so the clip's frames differ but belong together."""
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels else (h, w)
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1000.0}[dtype]
    base = rng.random(shape) * top
    return [np.clip(base + rng.normal(0, top / 12, shape), 0, top).astype(dtype) for _ in range(t)]


#: The clips the input kinds are made of; each kind's reference is the in-process result on these arrays.
CLIPS: Dict[str, List[np.ndarray]] = {
    "grey8": make_clip(1),
    "rgb8": make_clip(2, channels=3),
    "grey16": make_clip(3, dtype=np.uint16),
    "float32": make_clip(4, dtype=np.float32),
}


@pytest.fixture(scope="module")
def reference(predictor):
    """clip name -> the in-process ClipResult under NO_OPENING (computed once)."""
    cache: Dict[str, ClipResult] = {}

    def get(name: str) -> ClipResult:
        if name not in cache:
            cache[name] = predictor.predict(CLIPS[name], options=NO_OPENING)
            assert nontrivial(cache[name]), f"the model's masks for {name} are trivial: the comparison proves nothing"
        return cache[name]

    return get


def comparable(result) -> dict:
    """Everything but the per-request timings and request id."""
    data = result.model_dump() if isinstance(result, ClipResult) else ClipResult.model_validate(result).model_dump()
    return {k: v for k, v in data.items() if k not in ("timings", "request_id")}


def nontrivial(result: ClipResult) -> bool:
    masks = result.masks()
    return bool(masks.any() and not masks.all())


def save_png(frame: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame).save(path)
    return path


def access_log_lines(served, status: int) -> List[str]:
    """TorchServe's access-log lines of POSTs to the model that were answered ``status``."""
    text = (served.log_dir / "access_log.log").read_text(errors="replace")
    needle = f'"POST /predictions/{served.model} HTTP/1.1" {status} '
    return [line for line in text.splitlines() if needle in line]


def access_log_grows(served, status: int, before: int, settle: float = 1.5, timeout: float = 30.0) -> int:
    """How many ``status`` POST lines the access log gained since ``before``, once it stops changing."""
    deadline = time.monotonic() + timeout
    while len(access_log_lines(served, status)) <= before and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(settle)  # a retry, had there been one, would be logged by now (backoff is 10-20 ms)
    return len(access_log_lines(served, status)) - before


# --- every input kind, both request forms --------------------------------------------------------


def _png_paths(d: Path):
    # Names in reverse alphabetical order: the list's order is the clip order, never the names'.
    return [save_png(f, d / f"{name}.png") for f, name in zip(CLIPS["grey8"], "zyxw")], "grey8"


def _folder(d: Path):
    # f8, f9, f10, f11: natural order differs from the alphabetical one (f10, f11, f8, f9).
    for i, f in enumerate(CLIPS["rgb8"]):
        save_png(f, d / "frames" / f"f{8 + i}.png")
    return d / "frames", "rgb8"


def _pil_i16(d: Path):
    images = [Image.fromarray(f) for f in CLIPS["grey16"]]
    assert {im.mode for im in images} == {"I;16"}
    return images, "grey16"


def _npy(d: Path):
    np.save(d / "clip.npy", np.stack(CLIPS["grey16"]))
    return str(d / "clip.npy"), "grey16"


def _npz(d: Path):
    np.savez_compressed(d / "clip.npz", frames=np.stack(CLIPS["rgb8"]))
    return d / "clip.npz", "rgb8"


INPUT_KINDS = {
    "png_paths": _png_paths,
    "folder": _folder,
    "array_uint8": lambda d: (np.stack(CLIPS["grey8"]), "grey8"),
    "list_rgb_uint8": lambda d: (list(CLIPS["rgb8"]), "rgb8"),
    "array_uint16": lambda d: (np.stack(CLIPS["grey16"]), "grey16"),
    "array_float32": lambda d: (np.stack(CLIPS["float32"]), "float32"),
    "pil_8bit": lambda d: ([Image.fromarray(f) for f in CLIPS["grey8"]], "grey8"),
    "pil_i16": _pil_i16,
    "npy_path": _npy,
    "npz_path": _npz,
}
#: The JSON form carries image files only: float32 would be rounded, so the client refuses it.
JSON_REFUSED = {"array_float32"}


@pytest.mark.parametrize("form", ["multipart", "json"])
@pytest.mark.parametrize("kind", list(INPUT_KINDS))
def test_every_input_kind_matches_in_process(client, reference, kind, form, tmp_path):
    frames, clip_name = INPUT_KINDS[kind](tmp_path)
    if form == "json" and kind in JSON_REFUSED:
        with pytest.raises(ValueError, match="multipart"):
            client.segment(frames, form=form, **NO_OPENING)
        return
    expected = reference(clip_name)
    result = client.segment(frames, form=form, options=ClipOptions(**NO_OPENING))
    assert result.request_id  # assigned by the server
    assert comparable(result) == comparable(expected)
    np.testing.assert_array_equal(result.masks(), expected.masks())


def test_sixteen_bit_input_reaches_the_server_unchanged(client, predictor):
    """A clip in a narrow 16-bit band: any 8-bit conversion on the way would collapse it."""
    rng = np.random.default_rng(16)
    base = rng.random((H, W)) * 180
    clip16 = np.stack([np.clip(30000 + base + rng.normal(0, 15, (H, W)), 30000, 30180) for _ in range(T)])
    clip16 = clip16.round().astype(np.uint16)
    assert len(np.unique(clip16 >> 8)) == 1  # the high byte is one value for the whole clip

    expected = predictor.predict(list(clip16), options=NO_OPENING)
    assert nontrivial(expected)
    for lossy in (clip16 >> 8, clip16 & 0xFF, clip16 // 257):  # what 8-bit shortcuts would send
        other = predictor.predict(list(lossy.astype(np.uint8)), options=NO_OPENING)
        assert not np.array_equal(other.masks(), expected.masks())

    for frames, form in ((clip16, "multipart"), (clip16, "json"), ([Image.fromarray(f) for f in clip16], "multipart")):
        result = client.segment(frames, form=form, **NO_OPENING)
        assert comparable(result) == comparable(expected), form


# --- server errors become typed exceptions -------------------------------------------------------


def _mismatched_paths(d: Path):
    frames = CLIPS["grey8"][:2] + [np.zeros((H // 2, W), np.uint8)]
    return [save_png(f, d / f"m{i}.png") for i, f in enumerate(frames)]


ERROR_CASES = {
    # name: (frames(tmp_path), prompts, code, status, field)
    "unknown prompt": (lambda d: CLIPS["grey8"], ["gas leak", "gas plume", "white steam", "flowing smoke"],
                       ErrorCode.UNKNOWN_PROMPT, 400, "prompts"),
    "wrong prompt count": (lambda d: CLIPS["grey8"], ["gas plume"], ErrorCode.WRONG_PROMPT_COUNT, 400, "prompts"),
    "too few frames": (lambda d: np.stack(CLIPS["grey8"][:2]), None, ErrorCode.TOO_FEW_FRAMES, 400, "frames"),
    # an array travels as one part "clip", which the server names; image files are "frames"
    "too many frames (array)": (lambda d: np.zeros((33, 8, 8), np.uint8), None, ErrorCode.TOO_MANY_FRAMES, 413,
                                "clip"),
    "too many frames (images)": (lambda d: [Image.new("L", (8, 8))] * 33, None, ErrorCode.TOO_MANY_FRAMES, 413,
                                 "frames"),
    "frame size mismatch": (_mismatched_paths, None, ErrorCode.FRAME_SIZE_MISMATCH, 400, "frame_0002"),
    "frame size mismatch (PIL)": (lambda d: [Image.fromarray(f) for f in CLIPS["grey8"][:2]]
                                  + [Image.new("L", (W, H + 1))], None, ErrorCode.FRAME_SIZE_MISMATCH, 400,
                                  "frame_0002"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_server_refusals_are_invalid_input_with_code_and_field(client, case, tmp_path):
    make_frames, prompts, code, status, field = ERROR_CASES[case]
    with pytest.raises(InvalidInput) as info:
        client.segment(make_frames(tmp_path), prompts)
    error = info.value
    assert (error.code, error.status, error.field) == (code, status, field)
    assert error.request_id  # the server's id, to quote in a report
    if code == ErrorCode.UNKNOWN_PROMPT:
        assert "gas plume" in error.message  # the server's message lists the available prompts


def test_options_the_server_would_refuse_are_refused_alike_before_sending(served, client):
    """ClipOptions is the server's own validator, so no valid-per-ClipOptions value is refused by the
    server: client-side validation cannot be bypassed through segment(). The client's error must name
    the same code and field as the real server's answer to the same raw options."""
    before = len(access_log_lines(served, 400))
    with pytest.raises(InvalidInput) as info:
        client.segment(np.stack(CLIPS["grey8"]), threshold=2)
    assert info.value.status is None  # refused before sending
    raw = requests.post(served.prediction_url, headers=served.auth, timeout=TIMEOUT,
                        json={"frames": [], "options": {"threshold": 2}})
    assert raw.status_code == 400
    server_error = ErrorResponse.model_validate(raw.json()).error
    assert (info.value.code, info.value.field) == (server_error.code, server_error.field) \
        == (ErrorCode.INVALID_OPTIONS, "options.threshold")
    assert access_log_grows(served, 400, before) == 1  # the raw request only


def test_wrong_token_is_auth_error(served):
    with LeakSegClient(served.inference_url, token="not-the-key", model=served.model, timeout=TIMEOUT) as bad:
        with pytest.raises(AuthError) as info:
            bad.segment(np.stack(CLIPS["grey8"]))
        assert info.value.status in (400, 401)
        with pytest.raises(AuthError):  # waiting would not fix it, so ready() does not say False
            bad.ready()


def test_key_file_token_works(served, reference, monkeypatch):
    monkeypatch.delenv("LEAKSEG_TOKEN", raising=False)
    with LeakSegClient(served.inference_url, key_file=served.key_file, model=served.model, timeout=TIMEOUT) as c:
        assert comparable(c.segment(CLIPS["grey8"], **NO_OPENING)) == comparable(reference("grey8"))


def test_unknown_model_is_model_not_found_and_not_ready(served, predictor):
    with LeakSegClient(served.inference_url, token=served.inference_token, model="no-such-model",
                       timeout=TIMEOUT) as unknown:
        with pytest.raises(ModelNotFound) as info:
            unknown.segment(np.stack(CLIPS["grey8"]))
        assert info.value.status == 404
        assert unknown.ready() is False
    with LeakSegClient(served.inference_url, token=served.inference_token, model=served.model,
                       timeout=TIMEOUT) as known:
        assert known.ready() is True
        described = known.wait_until_ready(timeout=60)
        assert described.model_dump(exclude={"runtime"}) == predictor.describe().model_dump(exclude={"runtime"})


# --- retries -------------------------------------------------------------------------------------


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RetryLog(logging.Handler):
    """Collects the client's "retry n/m" debug lines; ``first`` is set at the first one."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []
        self.first = threading.Event()

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("retry "):
            self.messages.append(message)
            self.first.set()


@pytest.fixture
def retry_log():
    logger = logging.getLogger("leakseg.client.client")
    handler, level = _RetryLog(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _relay(listener: socket.socket, target: tuple, stop: threading.Event, accepted: List[int]) -> None:
    """Accept connections on ``listener`` and pipe each to ``target`` (a plain TCP relay)."""
    listener.settimeout(0.2)
    while not stop.is_set():
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        except OSError:
            return
        accepted.append(1)
        upstream = socket.create_connection(target)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def test_connection_refused_is_retried_until_the_retries_run_out(retry_log):
    port = _unused_port()
    with LeakSegClient(f"http://127.0.0.1:{port}", token="t", retries=3, backoff=0.01) as c:
        with pytest.raises(ConnectionFailed, match="cannot reach"):
            c.segment(np.stack(CLIPS["grey8"]))
    assert [m.split(" in ")[0] for m in retry_log.messages] == ["retry 1/3", "retry 2/3", "retry 3/3"]


def test_a_refused_connection_is_retried_into_a_real_answer(served, reference, retry_log):
    """Nothing listens at first; the port opens (relaying to TorchServe) during the first backoff."""
    port = _unused_port()
    target = ("127.0.0.1", int(served.inference_url.rsplit(":", 1)[1]))
    stop, accepted = threading.Event(), []

    def open_late():
        if retry_log.first.wait(timeout=60):
            listener = socket.create_server(("127.0.0.1", port))
            _relay(listener, target, stop, accepted)
            listener.close()

    thread = threading.Thread(target=open_late, daemon=True)
    thread.start()
    try:
        # backoff 1 s: the first wait is 0.5-1 s, normally ample time to open the port
        with LeakSegClient(f"http://127.0.0.1:{port}", token=served.inference_token, model=served.model,
                           timeout=TIMEOUT, retries=3, backoff=1.0) as c:
            result = c.segment(np.stack(CLIPS["grey8"]), **NO_OPENING)
    finally:
        stop.set()
        thread.join(timeout=10)
    retries = [m.split(" in ")[0] for m in retry_log.messages]
    assert retries[:1] == ["retry 1/3"]  # (a stalled machine may need a second one)
    assert accepted  # the answer came through the port that refused the first try
    assert comparable(result) == comparable(reference("grey8"))


def test_a_400_from_the_server_is_sent_once(served, retry_log):
    before = len(access_log_lines(served, 400))
    with LeakSegClient(served.inference_url, token=served.inference_token, model=served.model,
                       timeout=TIMEOUT, retries=5, backoff=0.01) as c:
        with pytest.raises(InvalidInput) as info:
            c.segment(np.stack(CLIPS["grey8"][:2]))
    assert info.value.code == ErrorCode.TOO_FEW_FRAMES
    assert access_log_grows(served, 400, before) == 1
    assert retry_log.messages == []


def test_an_auth_failure_is_sent_once(served, retry_log):
    statuses = (400, 401)
    before = {s: len(access_log_lines(served, s)) for s in statuses}
    with LeakSegClient(served.inference_url, token="wrong", model=served.model, timeout=TIMEOUT,
                       retries=5, backoff=0.01) as c:
        with pytest.raises(AuthError) as info:
            c.segment(np.stack(CLIPS["grey8"]))
    status = info.value.status
    assert status in statuses
    assert access_log_grows(served, status, before[status]) == 1
    assert retry_log.messages == []


# --- segment_many ----------------------------------------------------------------------------------


def test_segment_many_keeps_order_with_concurrency(client, predictor):
    clips = [make_clip(200 + i, h=48 + 4 * i) for i in range(6)]  # distinct sizes: a mix-up cannot pass
    expected = predictor.run([predictor.prepare(c, predictor.settings(options=NO_OPENING)) for c in clips])
    assert all(nontrivial(e) for e in expected)
    results = list(client.segment_many((np.stack(c) for c in clips), concurrency=4, **NO_OPENING))
    assert len(results) == len(clips)
    for got, want in zip(results, expected):
        assert comparable(got) == comparable(want)
    assert len({r.request_id for r in results}) == len(clips)


# --- the `leakseg segment` command ------------------------------------------------------------------


def _ranges(indices: List[int]) -> str:
    runs: List[List[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def test_segment_command_against_the_server(served, client, predictor, tmp_path):
    frames = make_clip(300)
    paths = [save_png(f, tmp_path / "in" / f"frame_{i}.png") for i, f in enumerate(frames)]
    out, gif = tmp_path / "result.json", tmp_path / "overlay.gif"
    proc = subprocess.run(
        [sys.executable, "-m", "leakseg.cli", "segment", *map(str, paths), "--url", served.inference_url,
         "--token", served.inference_token, "--model", served.model, "--opening-kernel", "0",
         "--out", str(out), "--overlay", str(gif)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr

    via_client = client.segment(paths, **NO_OPENING)
    assert comparable(via_client) == comparable(predictor.predict(frames, options=NO_OPENING))
    leak_frames = via_client.leak_frames
    assert leak_frames and nontrivial(via_client)
    assert f"leak in {len(leak_frames)} of {T} frames: {_ranges(leak_frames)}" in proc.stdout.splitlines()
    written = json.loads(out.read_text())
    assert comparable(written) == comparable(via_client)
    assert written["request_id"] and written["request_id"] != via_client.request_id

    masks = via_client.masks()
    with Image.open(gif) as im:
        assert im.format == "GIF" and im.n_frames == T and im.size == (W, H)
        rendered = []
        for i in range(T):
            im.seek(i)
            rendered.append(np.asarray(im.convert("RGB")).astype(int))
    below_label = np.zeros((H, W), bool)
    below_label[20:] = True  # the top rows hold the frame's label
    for i, rgb in enumerate(rendered):
        red_minus_blue = rgb[..., 0] - rgb[..., 2]
        inside, outside = masks[i] & below_label, ~masks[i] & below_label
        assert inside.sum() > 20 and outside.sum() > 20
        # The tint (255, 80, 0) at alpha 0.45 lifts red over blue by ~115, the outline (255, 230, 0) by 255;
        # the grey frame outside the mask has none (the GIF palette aside).
        assert np.mean(red_minus_blue[inside] > 60) > 0.95, i
        assert np.mean(np.abs(red_minus_blue[outside]) < 30) > 0.95, i


# --- without torch & co. -------------------------------------------------------------------------------

BLOCKED_SEGMENT = """
import json, sys
import numpy as np
import _leakseg_blocker
from leakseg.client import LeakSegClient

url, token, model, path = sys.argv[1:5]
with LeakSegClient(url, token=token, model=model, timeout=180) as client:
    described = client.describe()
    result = client.segment(path, opening_kernel=0)
loaded = sorted(m for m in sys.modules if m.partition(".")[0] in _leakseg_blocker.blocked)
print(json.dumps({"result": json.loads(result.model_dump_json()), "masks_sum": int(result.masks().sum()),
                  "name": described.name, "attempts": _leakseg_blocker.attempts, "loaded": loaded}))
"""


def test_segment_with_heavy_packages_unimportable(served, predictor, tmp_path):
    clip = np.stack(make_clip(400, dtype=np.uint16))
    np.save(tmp_path / "clip.npy", clip)
    proc = run_python(BLOCKED_SEGMENT, blocked=NOT_IN_THIN_CLIENT, timeout=300,
                      args=[served.inference_url, served.inference_token, served.model, str(tmp_path / "clip.npy")])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["attempts"] == [] and report["loaded"] == []
    assert report["name"] == served.model
    expected = predictor.predict(list(clip), options=NO_OPENING)
    assert nontrivial(expected)
    got = ClipResult.model_validate(report["result"])
    assert comparable(got) == comparable(expected)
    np.testing.assert_array_equal(got.masks(), expected.masks())
    assert report["masks_sum"] == int(expected.masks().sum())


def test_the_blocker_is_in_force():
    """The check above proves something only if the blocked interpreter really cannot import torch."""
    proc = run_python("import torch", blocked=NOT_IN_THIN_CLIENT)
    assert proc.returncode != 0 and re.search(r"blocked by tests/support/blockers\.py", proc.stderr)
