"""The two wire protocols the client speaks: TorchServe's ``/predictions`` and the Open Inference Protocol v2.

``LeakSegClient(url, protocol="torchserve")`` (the default) posts multipart or JSON to
``/predictions/MODEL`` (docs/API.md). ``protocol="v2"`` posts an OIP v2 inference request to
``/v2/models/MODEL/infer``: the KServe runtime (``leakseg kserve``), KServe's TorchServe runtime
with ``protocolVersion: v2``, or anything in between that speaks the protocol (docs/DEPLOY.md).
Both return the same :class:`~leakseg.schema.ClipResult`.

The v2 request (leakseg/serving/oip.py has the server side): one input ``frames``,

* ``form="tensor"`` (the default): the clip decoded here into a T x H x W [x 3] UINT8, UINT16
  or FP32 tensor (image files keep their bit depth); every leakseg v2 server takes it;
* ``form="bytes"``: the image files themselves, base64 (or a numpy clip as one .npy element):
  smaller on the wire; the leakseg KServe runtime takes it, TorchServe's kservev2 envelope
  keeps only one BYTES element, so there only a numpy clip works in this form.

Prompts and options travel as the input's ``parameters`` (TorchServe's envelope drops the
request's own parameters but keeps the inputs'). Both protocols carry the same token as
``Authorization: Bearer``: TorchServe's inference key, or `leakseg kserve`'s API key (``token=``,
``$LEAKSEG_TOKEN``, or ``key_file=``/``$LEAKSEG_KEY_FILE``, a one-line key file or TorchServe's
key_file.json).
"""

from __future__ import annotations

import base64
import json
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np

from leakseg.client.inputs import (
    _ClipFile, _collect, _load_clip_file, _npy_bytes, Frames, RequestBody, normalize_prompts, validate_options,
)
from leakseg.io.frames import clip_array_from

TORCHSERVE = "torchserve"
V2 = "v2"
PROTOCOLS = (TORCHSERVE, V2)
V2_FORMS = ("tensor", "bytes")
_DATATYPES = {np.dtype(np.uint8): "UINT8", np.dtype(np.uint16): "UINT16", np.dtype(np.float32): "FP32"}


def check_protocol(protocol: str) -> str:
    name = str(protocol).lower()
    aliases = {"predictions": TORCHSERVE, "oip": V2, "kserve": V2, "v2": V2, "torchserve": TORCHSERVE}
    if name not in aliases:
        raise ValueError(f"protocol must be 'torchserve' or 'v2', not {protocol!r}")
    return aliases[name]


# --- requests --------------------------------------------------------------------------------


def v2_segment_request(frames: Frames, prompts: Union[str, Sequence[str], None], options: Mapping[str, Any],
                       form: str = "tensor") -> RequestBody:
    """The v2 inference request for one clip (``form``: "tensor" or "bytes"; "multipart"/"json" mean "tensor")."""
    form = "tensor" if form in ("multipart", "json", None) else form
    if form not in V2_FORMS:
        raise ValueError(f"form must be 'tensor' or 'bytes' with the v2 protocol, not {form!r}")
    params: Dict[str, Any] = {}
    prompt_list = normalize_prompts(prompts)
    if prompt_list is not None:
        params["prompts"] = json.dumps(prompt_list)
    params.update(validate_options(options))  # every option is a scalar: one parameter each
    frames_input = _tensor_input(frames) if form == "tensor" else _bytes_input(frames)
    if params:
        frames_input["parameters"] = params
    return _v2_body({"inputs": [frames_input]})


def v2_describe_request() -> RequestBody:
    return _v2_body({"inputs": [{"name": "describe", "datatype": "BOOL", "shape": [1], "data": [True]}]})


def _tensor_input(frames: Frames) -> Dict[str, Any]:
    arr = np.asarray(clip_array_from(frames))
    if arr.dtype not in _DATATYPES:
        if np.issubdtype(arr.dtype, np.integer) and arr.size and arr.min() >= 0 and arr.max() <= 65535:
            arr = arr.astype(np.uint16)  # 16-bit PNGs open as 32-bit ints
        else:
            arr = arr.astype(np.float32)
    arr = arr.astype(arr.dtype.newbyteorder("="), copy=False)
    return {"name": "frames", "datatype": _DATATYPES[arr.dtype], "shape": list(arr.shape),
            "data": arr.ravel().tolist()}


def _bytes_input(frames: Frames) -> Dict[str, Any]:
    clip = _collect(frames)
    if isinstance(clip, np.ndarray):
        files: List[bytes] = [_npy_bytes(clip)]
    elif isinstance(clip, _ClipFile):
        files = [_npy_bytes(np.asarray(_load_clip_file(clip)))]
    else:
        files = [f.content for f in clip]
    return {"name": "frames", "datatype": "BYTES", "shape": [len(files)],
            "data": [base64.b64encode(b).decode("ascii") for b in files]}


def _v2_body(body: Dict[str, Any]) -> RequestBody:
    data = json.dumps(body, separators=(",", ":")).encode()
    return RequestBody("json", data, "application/json", json=None)


# --- answers ---------------------------------------------------------------------------------


def v2_document(payload: Any) -> Any:
    """The leakseg JSON document inside a v2 inference response (ValueError if there is none)."""
    if not isinstance(payload, Mapping):
        raise ValueError("the answer is not a v2 inference response")
    return json.loads(_result_text(payload))


def _result_text(response: Mapping[str, Any]) -> str:
    """The JSON document of a v2 answer: the ``result`` output (leakseg's KServe runtime), else the only
    BYTES output (TorchServe's kservev2 envelope names it after the input, ``frames``)."""
    outputs = response.get("outputs") or []
    chosen = [o for o in outputs if o.get("name") == "result"] or [o for o in outputs if o.get("datatype") == "BYTES"]
    if len(chosen) != 1:
        raise ValueError(f"expected one 'result' output, got {[o.get('name') for o in outputs]}")
    data = chosen[0].get("data")
    while isinstance(data, list) and len(data) == 1:
        data = data[0]
    if isinstance(data, (bytes, bytearray)):
        data = data.decode("utf-8")
    if not isinstance(data, str):
        raise ValueError("the result output holds no string")
    return data


def v2_error_body(body: Any) -> Any:
    """A v2 error answer in the shapes :func:`leakseg.client.errors.error_from_response` knows.

    * the leakseg KServe runtime: ``{"error": "code: message", "code", "field", "request_id"}``;
    * KServe's own errors (unknown model, not ready, ...): ``{"error": "message"}``;
    * TorchServe behind the kservev2 envelope: a v2 response whose output holds leakseg's error JSON.
    """
    if not isinstance(body, Mapping):
        return body
    if isinstance(body.get("error"), str):
        if body.get("code"):
            message = body["error"]
            prefix = f"{body['code']}: "
            return {"error": {"code": body["code"], "message": message[len(prefix):] if message.startswith(prefix)
                              else message, "field": body.get("field"), "request_id": body.get("request_id")}}
        return {"type": "", "message": body["error"]}
    if "outputs" in body:
        try:
            return v2_document(body)
        except (ValueError, TypeError):
            return body
    return body


__all__ = ["PROTOCOLS", "TORCHSERVE", "V2", "check_protocol", "v2_describe_request", "v2_document",
           "v2_error_body", "v2_segment_request"]
