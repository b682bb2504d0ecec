"""`leakseg kserve`: the Open Inference Protocol v2 on KServe's own model server, for real, on loopback.

Tensor form (UINT8/UINT16/FP32, JSON and the binary extension), BYTES form (encoded frames, a
.npy clip), parameters, describe, health and metadata, errors in the protocol's form with the
status of docs/API.md, the client with protocol="v2", and the same masks as the in-process
Predictor throughout.
"""

from __future__ import annotations

import base64
import io
import json
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
    return requests.post(f"{runtime.url}/v2/models/{runtime.model}/infer", json=body, timeout=120, **kwargs)


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
    meta = requests.get(f"{runtime.url}/v2/models/{MODEL}", timeout=10).json()
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
    response = requests.post(
        f"{runtime.url}/v2/models/{MODEL}/infer", data=header + arr.tobytes(), timeout=120,
        headers={"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
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
    garbage = requests.post(f"{runtime.url}/v2/models/{MODEL}/infer", data=b"{not json", timeout=30,
                            headers={"Content-Type": "application/json"})
    assert 400 <= garbage.status_code < 500 and "error" in garbage.json()
    _error(infer(runtime, {"inputs": "frames"}), 400, "invalid_body")
    unknown_model = requests.post(f"{runtime.url}/v2/models/nope/infer", json=tensor_body(arr), timeout=30)
    assert unknown_model.status_code == 404 and isinstance(unknown_model.json()["error"], str)


# --- the client, protocol="v2" ---------------------------------------------------------------------


def test_client_v2_end_to_end(runtime, predictor, tmp_path):
    from leakseg.client import InvalidInput, LeakSegClient

    arr = clip(np.uint8, seed=7)
    paths = []
    for i, frame in enumerate(arr):
        paths.append(tmp_path / f"f{i:02d}.png")
        paths[-1].write_bytes(png(frame))
    with LeakSegClient(runtime.url, model=MODEL, protocol="v2", retries=0) as client:
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
    with LeakSegClient(runtime.url, model="nope", protocol="v2", retries=0) as missing:
        assert not missing.ready()


def test_oversized_body_is_refused_unread(runtime):
    import http.client

    host, port = runtime.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:  # announce 1 TB and send nothing: the answer must come from the headers alone
        conn.putrequest("POST", f"/v2/models/{MODEL}/infer")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(10**12))
        conn.endheaders()
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 413
    assert isinstance(body["error"], str) and body["field"] == "body"
