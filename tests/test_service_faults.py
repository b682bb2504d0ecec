"""Hardening (issue 15): bad input through a real TorchServe, faults, and what the service leaves behind.

* every malformed request of tests/support/bad_requests.py (truncated and lying headers, decompression
  bombs, pickled .npy, every dtype and rank, zero and huge sizes, deep and huge JSON, huge part
  counts, invalid UTF-8, every option out of range, unknown and malicious model names, methods)
  gets its 4xx with a small JSON body, the worker keeps its pid, and a good request afterwards
  is still exactly the in-process ``Predictor.predict``;
* raw-socket requests whose HTTP framing lies get a 4xx or a closed connection, never a 5xx;
* query-string parameters are dropped by TorchServe (ignored, as docs/API.md says);
* the SDK loses no clip when the worker is SIGKILLed under a batch, nor across a restart of the
  whole service (``leakseg serve``'s start/stop);
* ``leakseg export`` never touches ``$TMPDIR/NAME``; loading a .mar in process leaves no
  ``leakseg-model-*`` folder behind.

The unit checks of the readers themselves (limits from headers, the clip stretch) are in
tests/test_frames.py.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

import support.bad_requests as bad
from leakseg.client import LeakSegClient
from leakseg.inference.manifest import MANIFEST_FILE, ArchiveManifest
from leakseg.schema import ClipResult
from leakseg.serving import torchserve_process as serve
from support.torchserve_fixture import loopback_overrides, with_model_config

TIMEOUT = 300  # seconds per request: 2 shared cores, a busy machine
CASE_NAMES = [case.name for case in bad.catalogue()]


def small_clip(seed: int = 0, t: int = 3, h: int = 40, w: int = 56):
    rng = np.random.default_rng(seed)
    base = rng.random((h, w)) * 255
    return [np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8) for _ in range(t)]


def comparable(result) -> dict:
    data = result.model_dump() if isinstance(result, ClipResult) else ClipResult.model_validate(result).model_dump()
    return {k: v for k, v in data.items() if k not in ("timings", "request_id")}


def send(served, wire: bad.Wire, url: str = "") -> requests.Response:
    base = url or served.inference_url
    return requests.request(wire.method, base + (wire.path or f"/predictions/{served.model}"), data=wire.body,
                            headers={**served.auth, **wire.headers}, timeout=TIMEOUT)


@pytest.fixture(scope="module")
def worker_pids_at_start(served):
    served.server.wait_ready(TIMEOUT)
    return served.server.worker_pids()


@pytest.fixture(scope="module")
def catalogue(served):
    return {case.name: case for case in bad.catalogue(served.model)}


# --- bad input ---------------------------------------------------------------------------------


@pytest.mark.serve
@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_request_gets_a_small_4xx_and_the_worker_lives(served, catalogue, worker_pids_at_start, name):
    case = catalogue[name]
    response = send(served, case.build(small_clip()))
    assert response.status_code == case.status, response.content[:300]
    assert len(response.content) < bad.SMALL_BODY
    body = response.json()
    if case.code is None:  # TorchServe's own answer
        assert body["code"] == case.status
    else:
        assert body["error"]["code"] == case.code
        assert body["error"]["request_id"] == response.headers["x-request-id"]
        assert body["error"]["message"]
    assert served.server.worker_pids() == worker_pids_at_start  # the worker did not die


@pytest.mark.serve
def test_good_requests_are_exact_after_the_bad_ones(served, predictor, worker_pids_at_start):
    frames = small_clip(seed=7, t=4)
    expected = comparable(predictor.predict(frames))
    for wire in (bad.good_multipart(frames), bad.good_json(frames)):
        response = send(served, wire)
        assert response.status_code == 200, response.text
        assert comparable(response.json()) == expected
    assert served.server.worker_pids() == worker_pids_at_start


def raw_exchange(served, request: bytes, half_close: bool = False) -> bytes:
    """Send raw bytes to the inference port; what comes back before the server closes (or 10 s pass)."""
    host = urlsplit(served.inference_url)
    with socket.create_connection((host.hostname, host.port), timeout=TIMEOUT) as sock:
        try:
            sock.sendall(request)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed first (ENOTCONN, EPIPE, ECONNRESET): read what came
            pass
        sock.settimeout(10)
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return data


def _http(served, head_lines, body: bytes) -> bytes:
    path = f"/predictions/{served.model}"
    head = [f"POST {path} HTTP/1.1", f"Host: {urlsplit(served.inference_url).netloc}",
            f"Authorization: Bearer {served.inference_token}", *head_lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.serve
@pytest.mark.parametrize("kind", ["length_short", "length_long", "length_negative", "length_garbage",
                                  "chunked_bad_size", "header_100k", "request_line_garbage", "nul_bytes"])
def test_lying_http_framing_gets_a_4xx_or_a_close_never_a_5xx(served, worker_pids_at_start, kind):
    body = b'{"frames": []}'
    json_type = "Content-Type: application/json"
    requests_by_kind = {
        "length_short": (_http(served, [json_type, "Content-Length: 5"], body), False),
        "length_long": (_http(served, [json_type, "Content-Length: 100000"], body), True),
        "length_negative": (_http(served, [json_type, "Content-Length: -7"], body), True),
        "length_garbage": (_http(served, [json_type, "Content-Length: 12abc"], body), True),
        "chunked_bad_size": (_http(served, [json_type, "Transfer-Encoding: chunked"], b"zz\r\n{}\r\n0\r\n\r\n"), True),
        "header_100k": (_http(served, [json_type, "X-Big: " + "a" * 100_000, f"Content-Length: {len(body)}"], body),
                        True),
        "request_line_garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(200) + b"\r\n\r\n", True),
        "nul_bytes": (b"POST /predictions/\x00\x00 HTTP/1.1\r\nHost: x\r\n\r\n", True),
    }
    request, half_close = requests_by_kind[kind]
    answer = raw_exchange(served, request, half_close)
    if answer:
        status_line = answer.split(b"\r\n", 1)[0]
        status = int(status_line.split()[1])
        assert 400 <= status < 500, status_line
        head, _, rest = answer.partition(b"\r\n\r\n")
        assert len(rest) < bad.SMALL_BODY
    assert served.server.worker_pids() == worker_pids_at_start


@pytest.mark.serve
def test_query_string_parameters_are_ignored(served, predictor):
    """TorchServe drops the query string before the handler sees the request (docs/API.md says so)."""
    frames = small_clip(seed=3)
    expected = comparable(predictor.predict(frames))
    wire = bad.good_multipart(frames)
    response = send(served, bad.Wire(path=f"/predictions/{served.model}?threshold=0.99&opening_kernel=0&junk=%00",
                                     headers=wire.headers, body=wire.body))
    assert response.status_code == 200, response.text
    assert comparable(response.json()) == expected


@pytest.mark.serve
def test_deep_json_in_every_place_is_a_400_not_a_500(served):
    frames = [bad.png(f) for f in small_clip()]
    deep = bad.deep_json(50_000)
    for wire, field in [
        (bad.json_wire(deep), "body"),
        (bad.multipart([(f"frame_{i}".encode(), b"f.png", b"image/png", f) for i, f in enumerate(frames)]
                       + [(b"prompts", b"p.json", b"application/json", deep)]), "prompts"),
        (bad.multipart([(f"frame_{i}".encode(), None, None, f) for i, f in enumerate(frames)]
                       + [(b"options", None, None, deep)]), "options"),
    ]:
        response = send(served, wire)
        assert response.status_code == 400, response.text[:300]
        assert response.json()["error"]["field"] == field
        assert "nested too deep" in response.json()["error"]["message"]


@pytest.mark.serve
@pytest.mark.parametrize("form", ["multipart", "json"])
def test_an_eps_frame_never_reaches_ghostscript(served, worker_pids_at_start, form):
    """Pillow hands EPS to Ghostscript, and -dSAFER still lets PostScript write under the worker's temp folder
    (the run folder's tmp/, where TorchServe unpacks the handler module every worker start imports)."""
    target = served.server.run_dir / "tmp" / f"eps-{uuid.uuid4().hex}.txt"
    files = [bad.eps_writing(str(target))] + [bad.png(f) for f in small_clip()[1:]]
    wire = bad.multipart([(f"frame_{i}".encode(), b"f.png", b"image/png", data) for i, data in enumerate(files)]) \
        if form == "multipart" else bad.json_wire(json.dumps({"frames": [base64.b64encode(f).decode()
                                                                          for f in files]}).encode())
    response = send(served, wire)
    assert response.status_code == 400, response.text[:300]
    assert response.json()["error"]["code"] == "frame_decode_error"
    assert response.json()["error"]["field"] in ("frame_0", "frames[0]")
    assert not target.exists()
    assert served.server.worker_pids() == worker_pids_at_start


@pytest.mark.serve
@pytest.mark.parametrize("where", ["body", "prompts_part"])
def test_wide_json_costs_the_worker_about_its_size_not_24_times(served, worker_pids_at_start, where):
    """JSON of empty arrays costs Python some 24 times its size once parsed. TorchServe's worker parsed every
    JSON body and part before the handler ran; now the handler gets the bytes and counts their structure first."""
    wide = b"[" + b"[]," * 8_000_000 + b"[]]"  # 24 MB: 0.5 GB and more of lists once parsed
    wire = bad.json_wire(wide) if where == "body" else bad.good_multipart(
        small_clip(), [(b"prompts", b"p.json", b"application/json", wide)])
    with bad.PeakRSS(worker_pids_at_start[0]) as rss:
        before = rss.peak
        response = send(served, wire)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_body", response.text[:300]
    assert "brackets, braces, commas and colons" in response.json()["error"]["message"]
    assert rss.peak - before < 4 * len(wide), (rss.peak - before) / len(wide)
    assert served.server.worker_pids() == worker_pids_at_start


@pytest.mark.serve
def test_megabyte_prompts_get_a_whole_small_answer(served):
    """TorchServe closes the connection after a 4xx; an error body of megabytes (the prompts echoed) was cut off
    by that close, and the client saw a reset. Every error body is small now, so the answer arrives whole."""
    frames = small_clip()
    for _ in range(3):
        prompts = ["x" * 1_000_000] * 4
        for wire in (bad.good_json(frames, prompts=prompts),
                     bad.good_multipart(frames, [(b"prompts", None, None, json.dumps(prompts).encode())])):
            response = send(served, wire)
            assert response.status_code == 400
            assert response.json()["error"]["code"] == "unknown_prompt"
            assert len(response.content) < 1024


# --- faults: the SDK loses nothing -------------------------------------------------------------


def _batches_logged(served) -> int:
    path = served.log_dir / "model_log.log"
    return path.read_text(errors="replace").count("batch of ") if path.is_file() else 0


@pytest.mark.serve
def test_sigkilled_worker_loses_no_clip_through_the_sdk(served, predictor, caplog):
    caplog.set_level(logging.WARNING, logger="leakseg.client.client")
    served.server.wait_ready(TIMEOUT)
    clips = [small_clip(seed=20 + i, t=8, h=96, w=128) for i in range(4)]
    expected = [comparable(predictor.predict(c)) for c in clips]
    before, pids = _batches_logged(served), served.server.worker_pids()
    client = LeakSegClient(served.inference_url, model=served.model, key_file=served.key_file, timeout=TIMEOUT,
                           retries=20, retry_time=600, backoff=0.5)
    with client, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.segment, c) for c in clips]
        deadline = time.monotonic() + TIMEOUT
        while _batches_logged(served) == before and time.monotonic() < deadline:
            time.sleep(0.05)  # the worker has started on the batch
        time.sleep(0.2)
        assert not any(f.done() for f in futures), "the clips were answered before the worker could be killed"
        os.kill(pids[0], signal.SIGKILL)
        results = [f.result(timeout=TIMEOUT * 2) for f in futures]
    assert [comparable(r) for r in results] == expected  # every clip answered, by the new worker, exactly
    assert served.server.worker_pids() != pids
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert any("Worker died" in m for m in retries), retries
    served.server.wait_ready(TIMEOUT)


@pytest.mark.serve
def test_sdk_loses_no_clip_across_a_service_restart(onnx_archive, predictor, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="leakseg.client.client")
    store = tmp_path / "model_store"
    archive = with_model_config(onnx_archive, store, batchSize=4, maxBatchDelay=50)
    overrides = loopback_overrides()  # the same ports after the restart: clients keep their URL

    def start():
        return serve.start(store, [f"{archive.stem}={archive.name}"], serve.REPO_CONFIG, tmp_path / "logs",
                           tmp_path / "run", overrides, timeout=TIMEOUT)

    server = start()
    clips = [small_clip(seed=40 + i) for i in range(6)]
    expected = [comparable(predictor.predict(c)) for c in clips]
    client = LeakSegClient(server.inference_url, model=archive.stem, key_file=server.key_file, timeout=TIMEOUT,
                           retries=50, retry_time=600, backoff=0.5, max_backoff=4)
    answers = {}

    def send_all(indices):
        for i in indices:
            answers[i] = client.segment(clips[i])

    try:
        threads = [threading.Thread(target=send_all, args=(range(k, 6, 2),)) for k in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        while not answers and time.monotonic() < deadline:
            time.sleep(0.05)
        server.stop()  # what `leakseg serve --stop` does; keys change at the next start
        server = start()
        for t in threads:
            t.join(TIMEOUT * 2)
        assert sorted(answers) == list(range(6))
        assert [comparable(answers[i]) for i in range(6)] == expected
        assert any("retry" in r.getMessage() for r in caplog.records)  # the restart was ridden out, not missed
    finally:
        client.close()
        server.stop()


# --- what the service leaves behind ------------------------------------------------------------


def _manifest_of(archive: Path, name: str) -> ArchiveManifest:
    with zipfile.ZipFile(archive) as zf:
        manifest = ArchiveManifest.model_validate_json(zf.read(MANIFEST_FILE))
    return manifest.model_copy(update={"name": name})


_EXPORT_SCRIPT = """
import sys
from pathlib import Path
from leakseg.export.archive import write_archive
from leakseg.inference.manifest import ArchiveManifest
graph, bank, manifest, out = sys.argv[1:5]
write_archive(Path(graph), Path(bank), ArchiveManifest.model_validate_json(Path(manifest).read_text()), Path(out))
"""


def test_export_never_touches_the_temp_folder_of_its_name(onnx_archive, tmp_path):
    """torch-model-archiver stages in $TMPDIR/NAME and deletes it; leakseg's export must stage privately.
    Two exports of one name at once (two processes) must not destroy each other's staging either."""
    name = f"victim-{uuid.uuid4().hex[:8]}"
    planted = Path(tempfile.gettempdir()) / name
    planted.mkdir()
    (planted / "keep.txt").write_text("precious")
    try:
        graph, bank = tmp_path / "graph.onnx", tmp_path / "bank.safetensors"
        graph.write_bytes(os.urandom(3_000_000))  # large enough for the two archivers to overlap
        bank.write_bytes(b"bank")
        manifest = tmp_path / "manifest.json"
        manifest.write_text(_manifest_of(onnx_archive, name).model_dump_json())
        procs = [subprocess.Popen([sys.executable, "-c", _EXPORT_SCRIPT, str(graph), str(bank), str(manifest),
                                   str(tmp_path / f"out{i}")], stderr=subprocess.PIPE) for i in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, err.decode()[-2000:]
        assert (planted / "keep.txt").read_text() == "precious"
        for i in range(2):
            with zipfile.ZipFile(tmp_path / f"out{i}" / f"{name}.mar") as zf:
                assert zf.read("graph.onnx") == graph.read_bytes()
                assert json.loads(zf.read(MANIFEST_FILE))["name"] == name
    finally:
        for f in planted.iterdir():
            f.unlink()
        planted.rmdir()


def test_loading_an_archive_in_process_leaves_nothing_behind(onnx_archive, tmp_path, monkeypatch):
    from PIL import Image

    from leakseg.inference.predictor import Predictor

    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    frames = small_clip()
    Predictor.from_archive(onnx_archive, device="cpu").predict(frames)
    # `leakseg predict` and `leakseg evaluate` (a scene with images and masks), in their own processes
    scene = tmp_path / "data" / "scene0"
    for sub in ("images", "masks"):
        (scene / sub).mkdir(parents=True)
    for i, f in enumerate(frames):
        Image.fromarray(f).save(scene / "images" / f"{i:05d}.png")
        Image.fromarray((f > 128).astype(np.uint8) * 255).save(scene / "masks" / f"{i:05d}.png")
    env = {**os.environ, "TMPDIR": str(private_tmp)}
    leakseg = [sys.executable, "-m", "leakseg.cli"]
    for args in (["predict", "--archive", str(onnx_archive), "--device", "cpu", str(scene / "images"),
                  "--output", str(tmp_path / "r.json")],
                 ["evaluate", "--archive", str(onnx_archive), "--device", "cpu", "--data", str(tmp_path / "data"),
                  "--no-progress", "--summary-only"]):
        done = subprocess.run(leakseg + args, env=env, capture_output=True, timeout=TIMEOUT)
        assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads((tmp_path / "r.json").read_text())["clip"]["frames"] == 3
    assert sorted(p.name for p in private_tmp.iterdir() if p.name.startswith("leakseg-model-")) == []
