"""The client's v2 encoding against the server's v2 decoding (no server), and the thin-client promise.

The bodies LeakSegClient(protocol="v2") sends are read back with leakseg/serving/oip.py, the
code both servers use, so what the client encodes is what the servers decode, bit for bit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from support.blockers import NOT_IN_THIN_CLIENT, run_python


def server_side(body_bytes: bytes):
    from leakseg.inference.manifest import ClipLimits
    from leakseg.serving.oip import request_from_v2
    from leakseg.serving.parse import decode_request_frames

    body = json.loads(body_bytes)
    request = request_from_v2(body["inputs"], body.get("parameters"))
    frames, names = decode_request_frames(request, ClipLimits(), None)
    return request, np.stack(frames), names


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
@pytest.mark.parametrize("form", ["tensor", "bytes"])
def test_client_v2_bodies_decode_to_the_same_pixels(dtype, form):
    from leakseg.client.protocols import v2_segment_request

    rng = np.random.default_rng(0)
    arr = (rng.random((3, 5, 7)) * (200 if dtype != np.float32 else 3.5)).astype(dtype)
    body = v2_segment_request(arr, ["white steam"] * 4, {"threshold": 0.25, "return_masks": False}, form)
    request, frames, _ = server_side(body.data)
    assert frames.dtype == arr.dtype and np.array_equal(frames, arr)
    assert request.prompts == ["white steam"] * 4
    assert request.options == {"threshold": 0.25, "return_masks": False}


def test_client_v2_image_files_keep_their_bytes_and_bit_depth(tmp_path):
    from PIL import Image

    from leakseg.client.protocols import v2_segment_request

    arr = (np.arange(3 * 6 * 8).reshape(3, 6, 8) * 700).astype(np.uint16)
    paths = []
    for i, frame in enumerate(arr):
        paths.append(tmp_path / f"f{i}.png")
        Image.fromarray(frame).save(paths[-1])
    for form in ("tensor", "bytes"):
        request, frames, names = server_side(v2_segment_request([str(p) for p in paths], None, {}, form).data)
        assert np.array_equal(frames.astype(np.uint16), arr), form
    request, _, names = server_side(v2_segment_request([str(p) for p in paths], None, {}, "bytes").data)
    assert [data for _, data in request.images] == [p.read_bytes() for p in paths]
    assert names == ["frames[0]", "frames[1]", "frames[2]"]


def test_v2_error_bodies_become_typed_errors():
    from leakseg.client.errors import InvalidInput, ModelNotFound, ModelNotReady, ServiceError, error_from_response
    from leakseg.client.protocols import v2_error_body

    leakseg = {"error": "unknown_prompt: unknown prompt(s) ['x']", "code": "unknown_prompt", "field": "prompts",
               "request_id": "r1"}
    err = error_from_response(400, v2_error_body(leakseg))
    assert isinstance(err, InvalidInput) and err.code == "unknown_prompt" and err.field == "prompts"
    assert err.request_id == "r1" and "] (field 'prompts') unknown prompt(s)" in str(err)
    assert isinstance(error_from_response(404, v2_error_body({"error": "Model with name x does not exist."})),
                      ModelNotFound)
    assert isinstance(error_from_response(503, v2_error_body({"error": "Model with name x is not ready."})),
                      ModelNotReady)  # retried, like TorchServe's 503
    envelope = {"id": "1", "model_name": "m", "outputs": [{"name": "frames", "datatype": "BYTES", "shape": [1],
                "data": [json.dumps({"error": {"code": "too_few_frames", "message": "3 needed", "field": "frames"}})]}]}
    err = error_from_response(400, v2_error_body(envelope))
    assert isinstance(err, InvalidInput) and err.code == "too_few_frames"
    assert isinstance(error_from_response(500, v2_error_body({"error": "boom"})), ServiceError)


def test_protocol_setting():
    from leakseg.client import LeakSegClient

    assert LeakSegClient("http://h:1").url == "http://h:1/predictions/jvlgs"
    assert LeakSegClient("http://h:1", protocol="v2", model="m").url == "http://h:1/v2/models/m/infer"
    with pytest.raises(ValueError):
        LeakSegClient("http://h:1", protocol="grpc")


V2_THIN = """
import json, sys
import numpy as np
from leakseg.client import LeakSegClient
from leakseg.client.protocols import v2_document, v2_segment_request, v2_describe_request
body = v2_segment_request(np.zeros((3, 8, 8), np.uint16), ["a"], {"threshold": 0.4})
bytes_body = v2_segment_request(np.zeros((3, 8, 8), np.uint8), None, {}, "bytes")
doc = v2_document({"outputs": [{"name": "result", "datatype": "BYTES", "shape": [1], "data": ["{\\"a\\": 1}"]}]})
LeakSegClient("http://127.0.0.1:9", protocol="v2").close()
import _leakseg_blocker
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in _leakseg_blocker.blocked)
print(json.dumps({"doc": doc, "attempts": _leakseg_blocker.attempts, "loaded": heavy}))
"""


def test_v2_client_needs_only_the_thin_client():
    proc = run_python(V2_THIN, blocked=NOT_IN_THIN_CLIENT)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"doc": {"a": 1}, "attempts": [], "loaded": []}


def test_key_files_the_client_and_leakseg_kserve_read(tmp_path, monkeypatch):
    """One reader for both: a one-line file (a mounted Secret, `leakseg kserve --api-key-file`) or
    TorchServe's key_file.json; the client sends what it finds as Authorization: Bearer."""
    from leakseg.client import AuthError, LeakSegClient, read_inference_key

    plain = tmp_path / "api-key"
    plain.write_text("s3cr3t-Key_1\n")
    torchserve = tmp_path / "key_file.json"
    torchserve.write_text(json.dumps({"inference": {"key": "ts-key"}, "management": {"key": "m"}}))
    assert read_inference_key(plain) == "s3cr3t-Key_1" and read_inference_key(torchserve) == "ts-key"
    for bad in ("", "two words", "{}", '{"inference": "x"}'):
        (tmp_path / "bad").write_text(bad)
        with pytest.raises(AuthError):
            read_inference_key(tmp_path / "bad")
    monkeypatch.delenv("LEAKSEG_TOKEN", raising=False)
    monkeypatch.setenv("LEAKSEG_KEY_FILE", str(plain))
    client = LeakSegClient("http://h:1", protocol="v2", model="m")
    assert client._token == "s3cr3t-Key_1" and "s3cr3t" not in repr(client)
