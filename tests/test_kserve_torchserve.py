"""TorchServe started exactly as KServe's TorchServe runtime starts it, answering v2 requests.

`leakseg export --kserve` / ``write_kserve_layout`` writes the storage layout; TorchServe then
runs with KServe's arguments (``--model-store=S/model-store --ts-config=S/config/config.properties``)
and KServe's environment (``TS_SERVICE_ENVELOPE=kservev2``, ``PROTOCOL_VERSION=v2``), read
because the layout's config sets ``enable_envvars_config=true``. The body posted is what KServe's
wrapper forwards to TorchServe (an OIP v2 inference request, kserve ``InferRequest.to_rest()``),
and the masks must equal those of the ordinary ``/predictions`` service (the ``served`` fixture)
and of the in-process Predictor.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from support.kserve_fixture import listening_addresses, start_torchserve_as_kserve
from test_kserve_runtime import clip, masks, same_as_predictor, tensor_body

pytestmark = pytest.mark.serve

MODEL = "tiny"


@pytest.fixture(scope="module")
def layout(onnx_archive, tmp_path_factory):
    from leakseg.export.kserve_layout import write_kserve_layout

    return write_kserve_layout(onnx_archive, tmp_path_factory.mktemp("kserve_storage"))


@pytest.fixture(scope="module")
def ts_kserve(layout, tmp_path_factory):
    server = start_torchserve_as_kserve(layout, tmp_path_factory.mktemp("kserve_torchserve"), MODEL)
    try:
        yield server
    finally:
        server.process.stop()


def test_layout_is_what_kserves_torchserve_runtime_reads(layout, onnx_archive):
    from leakseg.serving.torchserve_process import read_properties

    assert (layout / "model-store" / "tiny.mar").read_bytes() == onnx_archive.read_bytes()
    assert (layout / "config" / "metrics.yaml").is_file()
    props = read_properties(layout / "config" / "config.properties")
    assert props["enable_envvars_config"] == "true"  # how TS_SERVICE_ENVELOPE reaches TorchServe
    assert props["disable_token_authorization"] == "true"  # the wrapper has no key; the mesh authenticates
    assert props["enable_model_api"] == "false"
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["metrics_config"] == "/mnt/models/config/metrics.yaml"
    # TorchServe's own ports stay inside the pod; only metrics are scraped from outside.
    for key in ("inference_address", "management_address"):
        assert props[key].startswith("http://127.0.0.1:")
    snapshot = json.loads(props["model_snapshot"])  # the wrapper takes the model names from here
    (version,) = snapshot["models"]["tiny"].values()
    assert version["marName"] == "tiny.mar" and version["batchSize"] == 1 and version["defaultVersion"]


def test_layout_commands(onnx_archive, tmp_path, capsys):
    from leakseg.cli import build_parser, main

    assert main(["kserve", "--archive", str(onnx_archive), "--layout", str(tmp_path / "layout")]) == 0
    assert "upload" in capsys.readouterr().out
    assert (tmp_path / "layout" / "config" / "config.properties").is_file()
    assert (tmp_path / "layout" / "model-store" / "tiny.mar").is_file()
    args = build_parser().parse_args(["export", "--checkpoint", "ckpt.pth", "--kserve", str(tmp_path / "k")])
    assert args.kserve == tmp_path / "k"


def v2_answer(response) -> dict:
    """TorchServe's kservev2 envelope: one output named after the input, holding the handler's JSON."""
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["model_name"] == MODEL
    (output,) = payload["outputs"]
    assert output["datatype"] == "BYTES"
    return json.loads(output["data"][0])


def test_v2_infer_same_masks_as_predictions(ts_kserve, served, predictor):
    arr = clip(np.uint16, seed=21)
    body = tensor_body(arr)
    # The wrapper forwards to /v2/models/NAME/infer (kserve's Model._http_predict); no key needed.
    via_v2 = v2_answer(requests.post(f"{ts_kserve.inference_url}/v2/models/{MODEL}/infer", json=body, timeout=120))
    same_as_predictor(via_v2, predictor.predict(list(arr)))
    # The ordinary service, multipart with a .npy clip part, on /predictions.
    import io

    buf = io.BytesIO()
    np.save(buf, arr)
    plain = requests.post(served.prediction_url, headers=served.auth, files={"clip": ("clip.npy", buf.getvalue())},
                          timeout=120)
    assert plain.status_code == 200, plain.text
    assert masks(via_v2) == masks(plain.json())
    assert via_v2["clip"] == plain.json()["clip"]


def test_v2_parameters_describe_and_errors(ts_kserve, predictor):
    url = f"{ts_kserve.inference_url}/v2/models/{MODEL}/infer"
    arr = clip(np.uint8, seed=22)
    prompts = predictor.bank.prompts[-predictor.bank.prompt_count:]
    body = tensor_body(arr, input_parameters={"prompts": json.dumps(prompts), "threshold": 0.3, "opening_kernel": 0})
    result = v2_answer(requests.post(url, json=body, timeout=120))
    assert result["model"]["prompts"] == prompts
    same_as_predictor(result, predictor.predict(list(arr), prompts, {"threshold": 0.3, "opening_kernel": 0}))
    described = v2_answer(requests.post(url, json={"inputs": [{"name": "describe", "datatype": "BOOL", "shape": [1],
                                                                "data": [True]}]}, timeout=60))
    assert described["prompt_count"] == predictor.bank.prompt_count
    refused = requests.post(url, json=tensor_body(arr[:2]), timeout=60)
    assert refused.status_code == 400
    (output,) = refused.json()["outputs"]
    assert json.loads(output["data"][0])["error"]["code"] == "too_few_frames"


def test_client_v2_against_torchserve_runtime(ts_kserve, predictor, tmp_path):
    from PIL import Image

    from leakseg.client import InvalidInput, LeakSegClient

    arr = clip(np.float32, seed=23)
    pngs = []
    for i, frame in enumerate(clip(np.uint8, seed=24)):
        pngs.append(str(tmp_path / f"f{i}.png"))
        Image.fromarray(frame).save(pngs[-1])
    with LeakSegClient(ts_kserve.inference_url, model=MODEL, protocol="v2", retries=0) as client:
        assert client.describe().name == predictor.name
        result = client.segment(arr)
        same_as_predictor(json.loads(result.model_dump_json()), predictor.predict(list(arr)))
        with pytest.raises(InvalidInput) as info:
            client.segment(arr[:2])
        assert info.value.code == "too_few_frames" and info.value.status == 400
        # BYTES: the envelope keeps one element, so a numpy clip (one .npy element) works ...
        result = client.segment(arr, form="bytes")
        same_as_predictor(json.loads(result.model_dump_json()), predictor.predict(list(arr)))
        # ... and one encoded file per frame is refused with the reason; as a tensor they work.
        with pytest.raises(InvalidInput) as info:
            client.segment(pngs, form="bytes")
        assert info.value.status == 400 and "envelope" in str(info.value)
        same_as_predictor(json.loads(client.segment(pngs).model_dump_json()),
                          predictor.predict(list(clip(np.uint8, seed=24))))
    assert not any(ip not in ("127.0.0.1", "::ffff:127.0.0.1") for ip, _ in listening_addresses(ts_kserve.process.proc.pid))


def test_v2_envelope_refuses_nested_parameters_with_400(ts_kserve):
    """Deeply nested prompts/options on the envelope's input: the handler's 400, not a RecursionError's 500."""
    url = f"{ts_kserve.inference_url}/v2/models/{MODEL}/infer"
    arr = clip(np.uint8, seed=25)
    nested = {"prompts": "[" * 50_000 + "]" * 50_000, "options": '{"a":' * 50_000 + "1" + "}" * 50_000,
              "threshold": [[[0.5]]]}
    for name, value in nested.items():
        refused = requests.post(url, json=tensor_body(arr, input_parameters={name: value}), timeout=60)
        assert refused.status_code == 400, (name, refused.status_code, refused.text[:300])
        (output,) = refused.json()["outputs"]
        assert json.loads(output["data"][0])["error"]["code"] in ("invalid_body", "invalid_options"), name
