"""`leakseg kserve`: the Open Inference Protocol v2 on KServe's own model server, for real, on loopback.

Tensor form (UINT8/UINT16/FP32, JSON and the binary extension), BYTES form (encoded frames, a
.npy clip), parameters, describe, health and metadata, errors in the protocol's form with the
status of docs/API.md, the client with protocol="v2", and the same masks as the in-process
Predictor throughout. The server runs as the image runs it, with an API key.

The second half holds the line the TorchServe path holds (issue 19): only the documented routes,
the key, a body limit that counts what arrives, parsing off the event loop, bounded requests in
flight and time, readiness that follows the model, and every refusal a small 4xx (or 503/504) in
the protocol's error form. Each of those tests failed on the runtime before that work.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from support.kserve_fixture import listening_addresses, start_kserve_runtime

pytestmark = pytest.mark.serve

MODEL = "tiny"


@pytest.fixture(scope="module")
def runtime(onnx_archive, tmp_path_factory):
    server = start_kserve_runtime(onnx_archive, tmp_path_factory.mktemp("kserve_runtime"), MODEL)
    try:
        yield server
    finally:
        server.process.stop()


def clip(dtype=np.uint8, frames=4, height=40, width=56, seed=0, rgb=False):
    """A clip with structure (a bright moving blob on noise), so masks are not all empty."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for t in range(frames):
        blob = np.exp(-(((yy - height / 2) ** 2) + ((xx - width / 3 - 3 * t) ** 2)) / 60.0)
        frame = 0.6 * blob + 0.4 * rng.random((height, width))
        out.append(frame)
    arr = np.stack(out)
    if rgb:
        arr = np.stack([arr, arr * 0.9, arr * 0.8], axis=-1)
    if dtype == np.uint8:
        return (arr * 255).astype(np.uint8)
    if dtype == np.uint16:
        return (arr * 60000 + 1000).astype(np.uint16)
    return (arr * 40.0 - 5.0).astype(np.float32)


def tensor_body(arr, parameters=None, input_parameters=None):
    datatype = {np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16", np.dtype(np.float32): "FP32"}[arr.dtype]
    frames = {"name": "frames", "datatype": datatype, "shape": list(arr.shape), "data": arr.ravel().tolist()}
    if input_parameters:
        frames["parameters"] = input_parameters
    body = {"inputs": [frames]}
    if parameters:
        body["parameters"] = parameters
    return body


def png(frame) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def infer(runtime, body, **kwargs):
    headers = {**runtime.auth, **kwargs.pop("headers", {})}
    return requests.post(f"{runtime.url}/v2/models/{runtime.model}/infer", json=body, timeout=120, headers=headers,
                         **kwargs)


def post_raw(runtime, data: bytes, headers=None, path=None):
    """POST bytes as they are (no JSON encoding) with the key, to the infer URL or ``path``."""
    url = f"{runtime.url}{path or f'/v2/models/{runtime.model}/infer'}"
    return requests.post(url, data=data, timeout=120, headers={**runtime.auth, **(headers or {})})


def result_of(response) -> dict:
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model_name"] == MODEL
    (output,) = payload["outputs"]
    assert output["name"] == "result" and output["datatype"] == "BYTES" and output["shape"] == [1]
    return json.loads(output["data"][0])


def masks(result: dict):
    return [(f["mask"]["size"], f["mask"]["counts"]) if f["mask"] else None for f in result["frames"]]


def same_as_predictor(result: dict, reference) -> None:
    ref = json.loads(reference.model_dump_json())
    assert masks(result) == masks(ref)
    assert result["clip"] == ref["clip"]
    assert [f["area_pixels"] for f in result["frames"]] == [f["area_pixels"] for f in ref["frames"]]
    assert np.allclose([f["max_score"] for f in result["frames"]], [f["max_score"] for f in ref["frames"]], atol=1e-6)


# --- health, metadata -----------------------------------------------------------------------------


def test_health_metadata_and_loopback_only(runtime):
    assert requests.get(f"{runtime.url}/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(f"{runtime.url}/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(f"{runtime.url}/v2/models/{MODEL}/ready", timeout=10).json() == {"name": MODEL, "ready": True}
    meta = requests.get(f"{runtime.url}/v2/models/{MODEL}", timeout=10, headers=runtime.auth).json()
    assert meta["name"] == MODEL
    assert {i["name"] for i in meta["inputs"]} == {"frames", "describe"}
    assert [o["name"] for o in meta["outputs"]] == ["result"]
    missing = requests.get(f"{runtime.url}/v2/models/nope/ready", timeout=10)
    assert missing.status_code == 404 and "error" in missing.json()
    # Nothing but the one HTTP port, and only on loopback (KServe binds 0.0.0.0 and gRPC by default).
    addresses = listening_addresses(runtime.process.proc.pid)
    assert addresses and all(ip == "127.0.0.1" for ip, _ in addresses), addresses
    assert {port for _, port in addresses} == {int(runtime.url.rsplit(":", 1)[1])}


def test_describe_input_returns_the_model_description(runtime, predictor):
    body = {"inputs": [{"name": "describe", "datatype": "BOOL", "shape": [1], "data": [True]}]}
    described = result_of(infer(runtime, body))
    expected = json.loads(predictor.describe().model_dump_json())
    for key in ("name", "version", "prompt_count", "default_prompts", "available_prompts", "min_frames",
                "max_frames", "max_frame_pixels", "defaults", "input_size"):
        assert described[key] == expected[key], key


# --- the same masks as Predictor ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32], ids=["uint8", "uint16", "float32"])
def test_tensor_form_same_masks_as_predictor(runtime, predictor, dtype):
    arr = clip(dtype, seed=1)
    result = result_of(infer(runtime, tensor_body(arr)))
    same_as_predictor(result, predictor.predict(list(arr)))
    assert result["clip"]["frames"] == 4 and result["clip"]["height"] == 40 and result["clip"]["width"] == 56


def test_rgb_tensor_and_parameters(runtime, predictor):
    arr = clip(np.uint8, seed=2, rgb=True)
    prompts = predictor.bank.prompts[-predictor.bank.prompt_count:]
    options = {"threshold": 0.3, "opening_kernel": 0, "normalization": "minmax"}
    # prompts on the input, options as request parameters: both places are read, the input's win.
    body = tensor_body(arr, parameters={"threshold": 0.9, "opening_kernel": 0, "normalization": "minmax"},
                       input_parameters={"prompts": json.dumps(prompts), "threshold": 0.3})
    result = result_of(infer(runtime, body))
    assert result["model"]["prompts"] == prompts
    same_as_predictor(result, predictor.predict(list(arr), prompts, options))


def test_binary_tensor_extension(runtime, predictor):
    arr = clip(np.uint16, seed=3)
    header = json.dumps({"inputs": [{"name": "frames", "datatype": "UINT16", "shape": list(arr.shape),
                                     "parameters": {"binary_data_size": arr.nbytes}}]}).encode()
    response = post_raw(runtime, header + arr.tobytes(), {"Content-Type": "application/octet-stream",
                                                          "Inference-Header-Content-Length": str(len(header))})
    same_as_predictor(result_of(response), predictor.predict(list(arr)))


def test_bytes_form_encoded_frames(runtime, predictor):
    arr = clip(np.uint8, seed=4)
    files = [png(f) for f in arr]
    body = {"inputs": [{"name": "frames", "datatype": "BYTES", "shape": [len(files)],
                        "data": [base64.b64encode(f).decode() for f in files]}]}
    same_as_predictor(result_of(infer(runtime, body)), predictor.predict(list(arr)))


def test_bytes_form_npy_clip(runtime, predictor):
    arr = clip(np.float32, seed=5)
    buf = io.BytesIO()
    np.save(buf, arr)
    body = {"inputs": [{"name": "frames", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(buf.getvalue()).decode()]}]}
    same_as_predictor(result_of(infer(runtime, body)), predictor.predict(list(arr)))


def test_concurrent_requests_are_batched_and_correct(runtime, predictor):
    clips = [clip(np.uint8, seed=10 + i) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda a: result_of(infer(runtime, tensor_body(a))), clips))
    for arr, result in zip(clips, results):
        same_as_predictor(result, predictor.predict(list(arr)))


# --- errors: the protocol's form, leakseg's codes and statuses -----------------------------------


def _error(response, status, code):
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]  # the OIP error form
    assert body["code"] == code, body
    return body


def test_bad_inputs_get_protocol_errors_with_4xx(runtime, predictor):
    arr = clip(np.uint8, seed=6)
    _error(infer(runtime, tensor_body(arr[:2])), 400, "too_few_frames")
    many = np.repeat(arr, 9, axis=0)[: predictor.limits.max_frames + 1]
    _error(infer(runtime, tensor_body(many)), 413, "too_many_frames")
    body = tensor_body(arr, input_parameters={"prompts": json.dumps(["no such prompt"] * predictor.bank.prompt_count)})
    _error(infer(runtime, body), 400, "unknown_prompt")
    _error(infer(runtime, tensor_body(arr, parameters={"threshold": 7})), 400, "invalid_options")
    _error(infer(runtime, tensor_body(arr, parameters={"colour": "red"})), 400, "invalid_body")
    wrong_type = {"inputs": [{"name": "frames", "datatype": "INT64", "shape": [3, 4, 4], "data": [0] * 48}]}
    _error(infer(runtime, wrong_type), 400, "frame_decode_error")
    wrong_shape = {"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [3, 4, 4], "data": [0] * 47}]}
    assert infer(runtime, wrong_shape).status_code == 400
    _error(infer(runtime, {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1], "data": [0]}]}),
           400, "invalid_body")
    not_png = {"inputs": [{"name": "frames", "datatype": "BYTES", "shape": [3],
                           "data": [base64.b64encode(b"not an image").decode()] * 3}]}
    body = _error(infer(runtime, not_png), 400, "frame_decode_error")
    assert body["field"] == "frames[0]"
    not_base64 = {"inputs": [{"name": "frames", "datatype": "BYTES", "shape": [3], "data": ["%%%"] * 3}]}
    _error(infer(runtime, not_base64), 400, "frame_decode_error")
    # Not a v2 request at all: still the protocol's form, and a 4xx.
    garbage = post_raw(runtime, b"{not json", {"Content-Type": "application/json"})
    assert 400 <= garbage.status_code < 500 and "error" in garbage.json()
    _error(infer(runtime, {"inputs": "frames"}), 400, "invalid_body")
    unknown_model = requests.post(f"{runtime.url}/v2/models/nope/infer", json=tensor_body(arr), timeout=30,
                                  headers=runtime.auth)
    assert unknown_model.status_code == 404 and isinstance(unknown_model.json()["error"], str)


# --- the client, protocol="v2" ---------------------------------------------------------------------


def test_client_v2_end_to_end(runtime, predictor, tmp_path):
    from leakseg.client import AuthError, InvalidInput, LeakSegClient

    arr = clip(np.uint8, seed=7)
    paths = []
    for i, frame in enumerate(arr):
        paths.append(tmp_path / f"f{i:02d}.png")
        paths[-1].write_bytes(png(frame))
    # The key from the runtime's own key file (a one-line file, as a mounted Secret), as the client finds it.
    with LeakSegClient(runtime.url, model=MODEL, protocol="v2", retries=0, key_file=runtime.key_file) as client:
        assert client.url.endswith(f"/v2/models/{MODEL}/infer")
        assert client.ready() and client.server_ready()
        assert client.metadata()["name"] == MODEL
        assert client.describe().prompt_count == predictor.bank.prompt_count
        reference = predictor.predict(list(arr))
        for form in ("tensor", "bytes"):
            result = client.segment([str(p) for p in paths], form=form)
            same_as_predictor(json.loads(result.model_dump_json()), reference)
            assert np.array_equal(result.masks(), reference.masks())
        result = client.segment(clip(np.uint16, seed=8), threshold=0.4, opening_kernel=0)
        same_as_predictor(json.loads(result.model_dump_json()),
                          predictor.predict(list(clip(np.uint16, seed=8)), None, {"threshold": 0.4, "opening_kernel": 0}))
        with pytest.raises(InvalidInput) as info:
            client.segment(arr[:2])
        assert info.value.code == "too_few_frames" and info.value.status == 400
    with LeakSegClient(runtime.url, model="nope", protocol="v2", retries=0, token=runtime.key) as missing:
        assert not missing.ready()
    with LeakSegClient(runtime.url, model=MODEL, protocol="v2", retries=0, token="wrong") as keyless:
        with pytest.raises(AuthError):
            keyless.segment(arr)


def test_oversized_body_is_refused_unread(runtime):
    import http.client

    host, port = runtime.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:  # announce 1 TB and send nothing: the answer must come from the headers alone
        conn.putrequest("POST", f"/v2/models/{MODEL}/infer")
        conn.putheader("Authorization", f"Bearer {runtime.key}")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(10**12))
        conn.endheaders()
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413
    assert isinstance(body["error"], str) and body["field"] == "body"


# --- holding the line (issue 19) -------------------------------------------------------------------

SMALL_BODY = 4096  # an error body larger than this is a finding (as for TorchServe, tests/support/bad_requests.py)


def refused(response, statuses=range(400, 500)):
    """A refusal in the protocol's error form: the status, ``{"error": str}``, a small body, no FastAPI ``detail``."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert len(response.content) < SMALL_BODY, len(response.content)
    body = response.json()
    assert isinstance(body["error"], str) and body["error"] and "detail" not in body, body
    return body


@pytest.fixture(scope="module")
def tight(onnx_archive, tmp_path_factory):
    """A runtime with small limits: 1 MB bodies, one request in flight, 1 s per request."""
    server = start_kserve_runtime(onnx_archive, tmp_path_factory.mktemp("kserve_tight"), MODEL,
                                  ["--max-request-size", "1000000", "--max-in-flight", "1", "--request-timeout", "1"])
    try:
        yield server
    finally:
        server.process.stop()


def test_only_the_documented_routes_answer(runtime):
    # KServe's model repository would unload the model (200, then every infer 404, while live and ready stay 200).
    for method, path in [("POST", f"/v2/repository/models/{MODEL}/unload"), ("POST", f"/v2/repository/models/{MODEL}/load"),
                         ("POST", "/v2/repository/index"), ("POST", f"/v1/models/{MODEL}:predict"),
                         ("GET", f"/v1/models/{MODEL}"), ("GET", "/v2/models"), ("GET", "/docs"),
                         ("GET", "/openapi.json"), ("GET", "/"), ("POST", f"/v2/models/{MODEL}/versions/1/infer"),
                         ("GET", f"/v2/models/{MODEL}/versions/1/ready"), ("DELETE", f"/v2/models/{MODEL}")]:
        refused(requests.request(method, f"{runtime.url}{path}", headers=runtime.auth, timeout=30), [404])
    assert requests.get(f"{runtime.url}/v2/health/live", timeout=10).status_code == 200
    assert requests.get(f"{runtime.url}/v2/health/ready", timeout=10).status_code == 200
    result_of(infer(runtime, tensor_body(clip(np.uint8, seed=30))))  # the model is still there


def test_the_api_key_guards_everything_but_health(runtime):
    body = tensor_body(clip(np.uint8, seed=31))
    url = f"{runtime.url}/v2/models/{MODEL}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {runtime.key}"}):
        for response in (requests.post(f"{url}/infer", json=body, headers=headers, timeout=30),
                         requests.get(url, headers=headers, timeout=30), requests.get(f"{runtime.url}/v2", headers=headers),
                         requests.get(f"{runtime.url}/metrics", headers=headers, timeout=30)):
            refused(response, [401])
            assert response.headers["WWW-Authenticate"] == "Bearer"
    for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{MODEL}/ready"):  # probes carry no key
        assert requests.get(f"{runtime.url}{path}", timeout=10).status_code == 200
    assert requests.get(f"{runtime.url}/metrics", headers=runtime.auth, timeout=30).status_code == 200
    result_of(infer(runtime, body))


def test_no_key_off_loopback_refuses_to_start(onnx_archive, tmp_path):
    from support.kserve_fixture import kserve_python
    from support.loopback import free_ports

    (port,) = free_ports(1)
    done = subprocess.run([kserve_python(), "-m", "leakseg.cli", "kserve", "--archive", str(onnx_archive),
                           "--host", "0.0.0.0", "--http-port", str(port)], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("LEAKSEG_API_KEY")})
    assert done.returncode == 2 and "--no-api-key" in done.stderr, done.stderr[-2000:]


def test_api_key_choices_are_checked_before_the_model_loads(tmp_path, monkeypatch):
    from leakseg.cli import build_parser
    from leakseg.commands.kserve import _api_key

    for name in ("LEAKSEG_API_KEY", "LEAKSEG_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "key").write_text("k3y\n")
    (tmp_path / "ts.json").write_text('{"inference": {"key": "ts"}}')

    def key(*argv):
        return _api_key(build_parser().parse_args(["kserve", "--archive", "a.mar", *argv]))

    assert key() is None  # loopback, no key: a developer's server
    assert key("--host", "0.0.0.0", "--api-key-file", str(tmp_path / "key")) == "k3y"
    assert key("--api-key-file", str(tmp_path / "ts.json")) == "ts"  # TorchServe's key file works too
    assert key("--host", "0.0.0.0", "--no-api-key") is None  # the mesh authenticates
    monkeypatch.setenv("LEAKSEG_API_KEY", "from-env")
    assert key("--host", "0.0.0.0") == "from-env"
    for argv in (["--host", "0.0.0.0", "--no-api-key"], ["--api-key-file", str(tmp_path / "missing")]):
        with pytest.raises((ValueError, OSError)):
            key(*argv)
    monkeypatch.delenv("LEAKSEG_API_KEY")
    with pytest.raises(ValueError, match="--no-api-key"):
        key("--host", "::")


def chunked_post(runtime, total: int, chunk: int = 64 * 1024):
    """POST ``total`` bytes chunked (no Content-Length) until the server answers; (bytes sent, status, body)."""
    import select
    import socket

    host, port = runtime.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall((f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {runtime.key}"
                      "\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        sent, piece = 0, b"0," * (chunk // 2)
        while sent < total and not select.select([sock], [], [], 0.01)[0]:  # stop once the answer is there
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < 20:
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    return sent, int(head.split()[1]), body


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(tight):
    sent, status, body = chunked_post(tight, 5_000_000)
    assert status == 413 and json.loads(body)["code"] == "frame_too_large", body
    assert sent < 2_000_000, sent  # refused at the limit, not after reading all 5 MB


def test_health_answers_while_a_big_json_body_is_parsed(runtime):
    # 13 M pixel values, ~40 MB of JSON; the shape is wrong, so the answer is a 400 after the whole parse.
    values = np.random.default_rng(0).integers(0, 255, 13_000_000, dtype=np.uint8)
    body = json.dumps({"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, 1, 1],
                                   "data": values.tolist()}]}).encode()
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(post_raw, runtime, body, {"Content-Type": "application/json"})
        worst = 0.0
        while not answer.done():
            t0 = time.perf_counter()
            assert requests.get(f"{runtime.url}/v2/health/live", timeout=60).status_code == 200
            worst = max(worst, time.perf_counter() - t0)
            time.sleep(0.02)
    assert answer.result().status_code == 400
    print(f"{len(body) / 1e6:.0f} MB body: slowest liveness answer {worst:.3f} s")
    assert worst < 0.5, f"liveness took {worst:.2f} s while the body was parsed"  # 1.4 s when parsed on the loop


def test_requests_in_flight_and_their_time_are_bounded(tight):
    import http.client

    host, port = tight.url.split("//")[1].split(":")
    slow = http.client.HTTPConnection(host, int(port), timeout=30)
    try:  # announce 1000 bytes, send 10: it holds the only slot until its time runs out
        slow.putrequest("POST", f"/v2/models/{MODEL}/infer")
        slow.putheader("Authorization", f"Bearer {tight.key}")
        slow.putheader("Content-Length", "1000")
        slow.endheaders(b'{"inputs":')
        time.sleep(0.3)
        busy = infer(tight, tensor_body(clip(np.uint8, seed=32)))
        body = refused(busy, [503])
        assert busy.headers["Retry-After"] == "1" and "in flight" in body["error"]
        late = slow.getresponse()
        assert late.status == 408 and "error" in json.loads(late.read())
    finally:
        slow.close()


def ready_status(server) -> int:
    return requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code


def test_readiness_is_false_while_the_model_cannot_answer(tight):
    # 16 frames take seconds in the model thread here; the request times out after 1 s, the forward pass goes on.
    answer = infer(tight, tensor_body(clip(np.uint8, frames=16, height=64, width=64, seed=33)))
    if answer.status_code == 200:
        pytest.skip("this machine ran a 16-frame clip within the 1 s request timeout")
    refused(answer, [504])
    t0 = time.monotonic()
    while ready_status(tight) != 503:  # busy past the request timeout: unready (Knative stops routing to it)
        if time.monotonic() - t0 > 5:
            pytest.skip("the forward pass ended before readiness was asked")
        time.sleep(0.1)
    refused(infer(tight, tensor_body(clip(np.uint8, seed=34))), [503])  # the model cannot answer: 503 at once
    assert requests.get(f"{tight.url}/v2/health/live", timeout=10).status_code == 200  # not yet a restart
    while ready_status(tight) != 200:  # and ready again once the pass is over
        assert time.monotonic() - t0 < 240
        time.sleep(0.5)


def test_request_ids_are_bounded_and_cannot_forge_log_lines(runtime):
    forged = "FORGED 400 invalid_body: " + "y" * 200_000
    body = json.loads(json.dumps(tensor_body(clip(np.uint8, frames=2, seed=35))))  # too few frames: an error
    body["id"] = "client-7\n" + forged
    answer = refused(infer(runtime, body), [400])
    assert answer["request_id"] == "client-7FORGED400invalid_body:" + "y" * 98 and len(answer["request_id"]) == 128
    answer = refused(infer(runtime, tensor_body(clip(np.uint8, frames=2)), headers={"X-Request-Id": "h" * 100_000}), [400])
    assert answer["request_id"] == "h" * 128
    time.sleep(0.5)
    assert not any(line.startswith("FORGED") for line in runtime.process.tail(10**6).splitlines())


def deep(levels: int) -> str:
    return "[" * levels + "]" * levels


def binary(header: dict, tail: bytes, header_length=None):
    data = json.dumps(header).encode()
    length = str(len(data)) if header_length is None else header_length
    return data + tail, {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": length}


FRAMES_U8 = {"name": "frames", "datatype": "UINT8", "shape": [3, 4, 4]}
MALFORMED = {
    "deep prompts": (json.dumps({"inputs": [{**FRAMES_U8, "data": [0] * 48, "parameters": {"prompts": deep(100_000)}}]}).encode(), {}),
    "deep options": (json.dumps({"inputs": [{**FRAMES_U8, "data": [0] * 48}], "parameters": {"options": deep(100_000)}}).encode(), {}),
    "deep body": (deep(100_000).encode(), {"Content-Type": "application/json"}),
    "deep data": (('{"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1], "data": ' + deep(900) + "}]}").encode(), {}),
    "options list": (json.dumps({"inputs": [{**FRAMES_U8, "data": [0] * 48, "parameters": {"threshold": [[0.5]]}}]}).encode(), {}),
    "parameters list": (json.dumps({"inputs": [{**FRAMES_U8, "data": [0] * 48}], "parameters": [1, 2]}).encode(), {}),
    "input parameters string": (json.dumps({"inputs": [{**FRAMES_U8, "data": [0] * 48, "parameters": "x"}]}).encode(), {}),
    "shape overflow": (json.dumps({"inputs": [{**FRAMES_U8, "shape": [2**62, 2**62, 2**62], "data": [0]}]}).encode(), {}),
    "shape of booleans": (json.dumps({"inputs": [{**FRAMES_U8, "shape": [True, 4, 4], "data": [0] * 16}]}).encode(), {}),
    "header length not a number": binary({"inputs": [{**FRAMES_U8, "parameters": {"binary_data_size": 48}}]}, bytes(48), "abc"),
    "header length past the body": binary({"inputs": [{**FRAMES_U8, "parameters": {"binary_data_size": 48}}]}, bytes(48), "999999"),
    "header length cuts the JSON": binary({"inputs": [{**FRAMES_U8, "parameters": {"binary_data_size": 48}}]}, bytes(48), "7"),
    "binary without inputs": binary({"parameters": {}}, bytes(48)),
    "binary data short": binary({"inputs": [{**FRAMES_U8, "parameters": {"binary_data_size": 48}}]}, bytes(20)),
    "binary size negative": binary({"inputs": [{**FRAMES_U8, "parameters": {"binary_data_size": -5}}]}, bytes(48)),
    "lying BYTES prefix": binary({"inputs": [{"name": "frames", "datatype": "BYTES", "shape": [1],
                                              "parameters": {"binary_data_size": 12}}]}, struct.pack("<I", 10**9) + bytes(8)),
    "binary input without data": binary({"inputs": [FRAMES_U8]}, b""),
    "binary shape overflow": binary({"inputs": [{**FRAMES_U8, "shape": [2**62, 2**62, 2**62],
                                                 "parameters": {"binary_data_size": 48}}]}, bytes(48)),
    "binary parameters list": binary({"inputs": [{**FRAMES_U8, "parameters": {"binary_data_size": 48}}],
                                      "parameters": [1, 2]}, bytes(48)),
    "binary input parameters list": binary({"inputs": [{**FRAMES_U8, "parameters": [1]}]}, bytes(48)),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_requests_get_small_protocol_4xx(runtime, case):
    data, headers = MALFORMED[case]
    refused(post_raw(runtime, data, {"Content-Type": "application/json", **headers}))
