"""An FGSTP archive and a JVLGS archive served side by side by one real TorchServe, each answering its own
requests through the same handler, API and client; prompts sent to FGSTP get the documented error."""

import base64
import io
import shutil

import numpy as np
import pytest
import requests
from PIL import Image

from support.fgstp_format import fgstp_archive, fgstp_checkpoint
from support.torchserve_fixture import loopback_overrides, with_model_config

pytestmark = pytest.mark.serve

T, H, W = 5, 48, 64


def _clip(seed):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (H, W)).astype(np.float32)
    return [np.clip(base + rng.normal(0, 25, (H, W)), 0, 255).astype(np.uint8) for _ in range(T)]


def _png(frame) -> str:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def two_models(onnx_archive, tmp_path_factory):
    """One TorchServe serving tiny (JVLGS) and fgstp (FGSTP)."""
    from leakseg.serving import server as serve

    root = tmp_path_factory.mktemp("two_models")
    fgstp_mar = fgstp_archive(fgstp_checkpoint(tmp_path_factory.mktemp("ck")), tmp_path_factory.mktemp("fg"))
    store = root / "model_store"
    with_model_config(onnx_archive, store, batchSize=2, maxBatchDelay=50)
    shutil.copy(fgstp_mar, store / fgstp_mar.name)
    server = serve.start(store, ["tiny=tiny.mar", "fgstp=fgstp.mar"], serve.REPO_CONFIG, root / "logs", root / "run",
                         loopback_overrides(), timeout=300)
    try:
        yield server
    finally:
        server.stop()


def _post(server, model, body):
    return requests.post(server.prediction_url(model), json=body, timeout=120,
                         headers={"Authorization": f"Bearer {server.inference_key}"})


def test_each_model_answers_its_own_requests(two_models, onnx_archive, tmp_path):
    from leakseg.inference.predictor import Predictor

    frames = _clip(0)
    body = {"frames": [_png(f) for f in frames]}
    for name, family, archive in [("tiny", "jvlgs", onnx_archive), ("fgstp", "fgstp", None)]:
        described = _post(two_models, name, {"describe": True})
        assert described.status_code == 200, described.text
        d = described.json()
        assert d["name"] == name and d["family"] == family
        got = _post(two_models, name, body)
        assert got.status_code == 200, got.text
        result = got.json()
        assert result["model"]["name"] == name and result["model"]["family"] == family
        assert len(result["frames"]) == T
    fg = _post(two_models, "fgstp", {"describe": True}).json()
    assert fg["prompt_count"] == 0 and fg["default_prompts"] == [] and fg["defaults"]["opening_kernel"] == 0
    # the served masks are the in-process archive's
    from leakseg.schema import ClipResult
    tiny = ClipResult.model_validate(_post(two_models, "tiny", body).json())
    expected = Predictor.from_archive(onnx_archive, device="cpu").predict(frames)
    assert np.array_equal(tiny.masks(), expected.masks())


def test_prompts_to_fgstp_get_the_documented_error(two_models):
    body = {"frames": [_png(f) for f in _clip(1)], "prompts": ["white steam", "floating steam", "billowing smoke",
                                                               "flowing smoke"]}
    refused = _post(two_models, "fgstp", body)
    assert refused.status_code == 400
    error = refused.json()["error"]
    assert error["code"] == "prompts_not_supported" and error["field"] == "prompts"
    assert "takes no prompts" in error["message"]
    # the same prompts are fine for the JVLGS model beside it
    assert _post(two_models, "tiny", body).status_code == 200


def test_client_speaks_to_both(two_models):
    from leakseg.client import InvalidInput, LeakSegClient

    token = two_models.inference_key
    with LeakSegClient(two_models.inference_url, token=token, model="fgstp") as fg, \
            LeakSegClient(two_models.inference_url, token=token, model="tiny") as tiny:
        assert fg.describe().family == "fgstp" and tiny.describe().family == "jvlgs"
        result = fg.segment(_clip(2))
        assert result.model.family == "fgstp" and result.masks().shape == (T, H, W)
        with pytest.raises(InvalidInput) as err:
            fg.segment(_clip(2), prompts=["white steam"])
        assert err.value.code == "prompts_not_supported"
