"""The Open Inference Protocol (KServe v2) form of a leakseg request, shared by both servers.

Pure numpy/pydantic (no ``kserve``, no TorchServe), so the TorchServe handler (behind KServe's
``kservev2`` envelope) and the KServe runtime (:mod:`leakseg.serving.kserve`) read requests the
same way and the client (:mod:`leakseg.client.protocols`) writes them. See docs/DEPLOY.md.

A v2 inference request carries ONE clip in ONE input named ``frames``, in one of two forms:

* tensor: ``datatype`` UINT8, UINT16 or FP32, ``shape`` [T, H, W] or [T, H, W, 3], the pixels
  in row-major order (JSON ``data``, or the binary tensor extension on the KServe runtime);
* BYTES: ``shape`` [T], one encoded image file (PNG, JPEG, TIFF, BMP) per frame, as base64
  strings in JSON (raw bytes with the binary extension); or ``shape`` [1] holding one whole
  ``.npy``/``.npz`` clip.

Prompts and options are ``parameters`` (OIP parameters are scalars): ``prompts`` is a JSON list
in a string (``"[\\"white steam\\", ...]"``), each option is its own parameter (``threshold``,
``opening_kernel``, ...), or ``options`` holds them all as a JSON object in a string. They may
sit on the request or on the ``frames`` input; the input's win. (TorchServe's kservev2 envelope
forwards only the inputs, so the client puts them on the input.) An input named ``describe``
(BOOL [1], true) asks for the model description instead.

The answer has one output ``result``: BYTES [1] holding the same JSON a ``/predictions`` call
returns (a ClipResult, or a ModelDescription). Errors use the protocol's form,
``{"error": "<message>"}``, with leakseg's ``code``, ``field`` and ``request_id`` beside it.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from leakseg.schema import ClipOptions, ErrorCode, InputError
from leakseg.serving.parse import ClipRequest

#: The input that carries the clip, the one that asks for the description, the output.
FRAMES_INPUT = "frames"
DESCRIBE_INPUT = "describe"
RESULT_OUTPUT = "result"

#: OIP datatypes of the tensor form and their numpy dtypes.
TENSOR_DATATYPES = {"UINT8": np.dtype(np.uint8), "UINT16": np.dtype(np.uint16), "FP32": np.dtype(np.float32)}
DATATYPE_OF = {v: k for k, v in TENSOR_DATATYPES.items()}
OPTION_FIELDS = tuple(ClipOptions.model_fields)
_NPY_MAGIC = b"\x93NUMPY"
_NPZ_MAGIC = b"PK\x03\x04"
HOW_TO_SEND_V2 = (
    "send one input named 'frames': a UINT8/UINT16/FP32 tensor of shape [T, H, W] or [T, H, W, 3], "
    "or BYTES of shape [T] holding one encoded image file per frame (base64 in JSON), or BYTES [1] holding "
    "one .npy/.npz clip; prompts and options go in 'parameters'"
)


def is_v2_input(item: Any) -> bool:
    """True for one input of a v2 request as TorchServe's kservev2 envelope hands it to a handler."""
    return isinstance(item, Mapping) and "datatype" in item and "name" in item and "body" not in item


# --- requests --------------------------------------------------------------------------------


def request_from_v2(inputs: Sequence[Mapping[str, Any]], parameters: Optional[Mapping[str, Any]] = None,
                    arrays: Optional[Mapping[str, np.ndarray]] = None) -> ClipRequest:
    """A :class:`ClipRequest` from the inputs (and request parameters) of one v2 request.

    ``inputs`` are dicts with ``name``, ``datatype``, ``shape``, ``data`` and optional
    ``parameters``. ``arrays`` may give an input's data already as a numpy array (the KServe
    runtime decodes the binary extension that way); else ``data`` is read (flat, or nested as
    the kservev2 envelope reshapes it). Raises :class:`InputError`.
    """
    by_name: Dict[str, Mapping[str, Any]] = {}
    for item in inputs:
        name = item.get("name")
        if name not in (FRAMES_INPUT, DESCRIBE_INPUT):
            raise InputError(ErrorCode.INVALID_BODY, f"unexpected input {name!r}; {HOW_TO_SEND_V2}", str(name))
        if name in by_name:
            raise InputError(ErrorCode.INVALID_BODY, f"input {name!r} given twice", str(name))
        by_name[name] = item
    if DESCRIBE_INPUT in by_name:
        if len(by_name) > 1:
            raise InputError(ErrorCode.INVALID_BODY, "a describe request takes no other input", DESCRIBE_INPUT)
        return ClipRequest(describe=True)
    if FRAMES_INPUT not in by_name:
        raise InputError(ErrorCode.NO_FRAMES, f"the request has no input named 'frames'; {HOW_TO_SEND_V2}",
                         FRAMES_INPUT)
    item = by_name[FRAMES_INPUT]
    merged = {**dict(parameters or {}), **dict(item.get("parameters") or {})}
    request = ClipRequest()
    request.prompts, request.options = prompts_and_options(merged)
    array = arrays.get(FRAMES_INPUT) if arrays else None
    _fill_frames(request, item, array)
    return request


def request_from_envelope_input(item: Mapping[str, Any]) -> ClipRequest:
    """What the kservev2 envelope hands the handler for one input (the request's parameters are lost there)."""
    return request_from_v2([item])


def prompts_and_options(params: Mapping[str, Any]):
    """(prompts, options) from v2 parameters; unknown parameter names are refused."""
    prompts = None
    options: Dict[str, Any] = {}
    for key, value in params.items():
        if key == "prompts":
            prompts = _json_param(value, "prompts", ErrorCode.INVALID_BODY)
            if isinstance(prompts, str):
                prompts = [prompts]
        elif key == "options":
            parsed = _json_param(value, "options", ErrorCode.INVALID_OPTIONS)
            if not isinstance(parsed, dict):
                raise InputError(ErrorCode.INVALID_OPTIONS, "parameter options must be a JSON object", "options")
            options.update(parsed)
        elif key in OPTION_FIELDS:
            options[key] = value
        elif key in ("binary_data_size", "content_type"):  # the binary extension's own, per input
            continue
        else:
            raise InputError(ErrorCode.INVALID_BODY,
                             f"unknown parameter {key!r}; the parameters are prompts, options and "
                             f"{', '.join(OPTION_FIELDS)}", key)
    return prompts, (options or None)


def _json_param(value: Any, name: str, code: ErrorCode) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        if name == "prompts":  # one prompt, given as a plain string
            return value
        raise InputError(code, f"parameter {name} is not valid JSON", name) from None


def _fill_frames(request: ClipRequest, item: Mapping[str, Any], array: Optional[np.ndarray]) -> None:
    datatype = str(item.get("datatype", "")).upper()
    shape = _shape(item.get("shape"))
    data = item.get("data")
    if datatype == "BYTES":
        elements = _bytes_elements(data if array is None else list(array.ravel()), shape)
        if any(_is_array_file(e) for e in elements):
            if len(elements) != 1:
                raise InputError(ErrorCode.INVALID_BODY, "a .npy/.npz clip must be the only BYTES element",
                                 FRAMES_INPUT)
            request.clip = elements[0]
        else:
            request.images = [(f"frames[{i}]", b) for i, b in enumerate(elements)]
        return
    if datatype not in TENSOR_DATATYPES:
        raise InputError(ErrorCode.FRAME_DECODE_ERROR,
                         f"input frames has datatype {datatype or '(none)'}; use UINT8, UINT16, FP32 or BYTES",
                         FRAMES_INPUT)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 3):
        raise InputError(ErrorCode.FRAME_DECODE_ERROR,
                         f"input frames has shape {shape}; expected [T, H, W] or [T, H, W, 3]", FRAMES_INPUT)
    dtype = TENSOR_DATATYPES[datatype]
    if array is None:
        try:
            array = np.asarray(data, dtype=dtype)
        except (TypeError, ValueError, OverflowError) as exc:
            raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"input frames: data is not {datatype} ({exc})",
                             FRAMES_INPUT) from exc
    if array.size != int(np.prod(shape)):
        raise InputError(ErrorCode.FRAME_DECODE_ERROR,
                         f"input frames holds {array.size} values but its shape {shape} needs {int(np.prod(shape))}",
                         FRAMES_INPUT)
    # The handler reads the clip through the same .npy path as a multipart clip part (header checks, limits).
    request.clip = npy_bytes(np.ascontiguousarray(array.astype(dtype, copy=False).reshape(shape)))


def _is_array_file(data: bytes) -> bool:
    return data[:6] == _NPY_MAGIC or data[:4] == _NPZ_MAGIC


def _shape(shape: Any) -> List[int]:
    if not isinstance(shape, (list, tuple)) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise InputError(ErrorCode.INVALID_BODY, f"input frames: shape must be a list of sizes, got {shape!r}",
                         FRAMES_INPUT)
    return list(shape)


def _bytes_elements(data: Any, shape: List[int]) -> List[bytes]:
    """BYTES elements as raw bytes: bytes stay, strings are base64 (the JSON form)."""
    if isinstance(data, (str, bytes, bytearray)):  # the kservev2 envelope keeps only data[0]
        if shape and int(np.prod(shape)) > 1:
            raise InputError(
                ErrorCode.INVALID_BODY,
                f"input frames has shape {shape} but one element arrived: TorchServe's kservev2 envelope forwards only "
                "the first BYTES element; send the clip as a tensor, or as one BYTES element holding a .npy/.npz",
                FRAMES_INPUT)
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise InputError(ErrorCode.INVALID_BODY, "input frames: data must be a list", FRAMES_INPUT)
    flat = list(np.asarray(data, dtype=object).ravel()) if data and isinstance(data[0], list) else list(data)
    if shape and len(flat) != int(np.prod(shape)):
        raise InputError(ErrorCode.INVALID_BODY,
                         f"input frames holds {len(flat)} elements but its shape is {shape}", FRAMES_INPUT)
    out = []
    for i, element in enumerate(flat):
        if isinstance(element, (bytes, bytearray, memoryview)):
            out.append(bytes(element))
        elif isinstance(element, str):
            try:
                out.append(base64.b64decode(element, validate=True))
            except (binascii.Error, ValueError) as exc:
                raise InputError(ErrorCode.FRAME_DECODE_ERROR,
                                 f"frames[{i}] is not valid base64 ({exc}); BYTES in JSON are base64-encoded files",
                                 f"frames[{i}]") from exc
        else:
            raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"frames[{i}] is not a string", f"frames[{i}]")
    if not out:
        raise InputError(ErrorCode.NO_FRAMES, "input frames holds no elements", FRAMES_INPUT)
    return out


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# --- answers ---------------------------------------------------------------------------------


def result_output(body_json: str) -> Dict[str, Any]:
    """The ``result`` output holding a response JSON document."""
    return {"name": RESULT_OUTPUT, "datatype": "BYTES", "shape": [1], "data": [body_json]}


def error_body(error: InputError, request_id: Optional[str] = None) -> Dict[str, Any]:
    """The protocol's error form, ``{"error": message}``, with leakseg's code, field and request id beside it
    (InputError keeps message and field short, whatever the request quoted)."""
    return {"error": f"{error.code.value}: {error.message}", "code": error.code.value, "field": error.field,
            "request_id": request_id}


def model_metadata_inputs() -> List[Dict[str, Any]]:
    """The inputs a v2 metadata request lists (variable sizes are -1)."""
    return [{"name": FRAMES_INPUT, "datatype": "UINT8", "shape": [-1, -1, -1]},
            {"name": DESCRIBE_INPUT, "datatype": "BOOL", "shape": [1]}]


def model_metadata_outputs() -> List[Dict[str, Any]]:
    return [{"name": RESULT_OUTPUT, "datatype": "BYTES", "shape": [1]}]


__all__ = [
    "DESCRIBE_INPUT", "FRAMES_INPUT", "RESULT_OUTPUT", "TENSOR_DATATYPES", "error_body", "is_v2_input",
    "model_metadata_inputs", "model_metadata_outputs", "npy_bytes", "prompts_and_options", "request_from_v2",
    "request_from_envelope_input", "result_output",
]
