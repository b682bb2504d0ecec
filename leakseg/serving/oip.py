"""The Open Inference Protocol (KServe v2) form of a leakseg request, shared by both servers.

Pure numpy/pydantic (no ``kserve``, no TorchServe), so the TorchServe handler (behind KServe's
``kservev2`` envelope) and the KServe runtime (:mod:`leakseg.serving.kserve_runtime`) read requests the
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

:func:`parse_v2_json` and :func:`parse_v2_binary` read a whole request body (the KServe runtime's
own parsers: KServe's would answer malformed framing with a 500). Every input, however hostile,
gives a :class:`V2Request` or an :class:`InputError` (a 4xx), nothing else: tests/test_fuzz_oip.py
holds them to that.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import struct
from dataclasses import dataclass, field
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
#: Bounds that keep a hostile request's cost small before the real checks run: a request has at most
#: two inputs (frames, describe) and a clip at most 4 dimensions; the rest is head-room.
MAX_INPUTS = 8
MAX_RANK = 8
MAX_PARAMETERS = 64
#: A request id is echoed in every answer and written to the log: printable ASCII without spaces
#: (a newline would forge log lines), at most this long (a 200 kB id would make a 200 kB error body).
MAX_REQUEST_ID_CHARS = 128
_NOT_ID_CHARACTER = re.compile(r"[^\x21-\x7e]")


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
        if not isinstance(item, Mapping):
            raise InputError(ErrorCode.INVALID_BODY, f"every input is an object; {HOW_TO_SEND_V2}", "inputs")
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
    merged = {**_parameters(parameters, "the request"), **_parameters(item.get("parameters"), "input frames")}
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
            prompts = _prompt_list(_json_param(value, "prompts", ErrorCode.INVALID_BODY))
        elif key == "options":
            options.update(_option_object(_json_param(value, "options", ErrorCode.INVALID_OPTIONS)))
        elif key in OPTION_FIELDS:
            options[key] = _option_value(key, value)
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
    except RecursionError:
        raise InputError(code, f"parameter {name} is nested too deeply", name) from None
    except ValueError:
        if name == "prompts":  # one prompt, given as a plain string
            return value
        raise InputError(code, f"parameter {name} is not valid JSON", name) from None


def _prompt_list(prompts: Any) -> List[str]:
    """Prompts as a list of strings; anything else (a nested list, numbers) is refused here, not deeper down."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise InputError(ErrorCode.INVALID_BODY, "parameter prompts must be a JSON list of strings", "prompts")
    return prompts


def _option_object(parsed: Any) -> Dict[str, Any]:
    if not isinstance(parsed, dict):
        raise InputError(ErrorCode.INVALID_OPTIONS, "parameter options must be a JSON object", "options")
    if len(parsed) > len(OPTION_FIELDS):  # so at least one is unknown: refuse before validating thousands
        raise InputError(ErrorCode.INVALID_OPTIONS, f"parameter options has {len(parsed)} keys; the options are "
                         f"{', '.join(OPTION_FIELDS)}", "options")
    return {str(k): _option_value(str(k), v) for k, v in parsed.items()}


def _option_value(key: str, value: Any) -> Any:
    """Every option is a scalar: a nested value would only reach the validator to make it recurse."""
    if value is not None and not isinstance(value, (str, int, float, bool)):
        raise InputError(ErrorCode.INVALID_OPTIONS, f"option {key!r} must be a number, a string or a boolean", key)
    return value


def _parameters(value: Any, where: str) -> Dict[str, Any]:
    """The ``parameters`` of a request or an input: an object (OIP parameters are named scalars)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InputError(ErrorCode.INVALID_BODY, f"the parameters of {where} must be an object", "parameters")
    if len(value) > MAX_PARAMETERS:
        raise InputError(ErrorCode.INVALID_BODY, f"the parameters of {where} hold {len(value)} entries; at most "
                         f"{MAX_PARAMETERS}", "parameters")
    return dict(value)


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
        array = tensor_from_json(data, datatype)
    if array.size != math.prod(shape):
        raise InputError(ErrorCode.FRAME_DECODE_ERROR,
                         f"input frames holds {array.size} values but its shape {shape} needs {math.prod(shape)}",
                         FRAMES_INPUT)
    # The handler reads the clip through the same .npy path as a multipart clip part (header checks, limits).
    request.clip = npy_bytes(np.ascontiguousarray(array.astype(dtype, copy=False).reshape(shape)))


def tensor_from_json(data: Any, datatype: str) -> np.ndarray:
    """The JSON ``data`` of a tensor input (flat, or nested as the kservev2 envelope reshapes it) as an array."""
    if not isinstance(data, list):
        raise InputError(ErrorCode.FRAME_DECODE_ERROR, "input frames: data must be a list", FRAMES_INPUT)
    try:
        return np.asarray(data, dtype=TENSOR_DATATYPES[datatype])
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"input frames: data is not {datatype} ({exc})",
                         FRAMES_INPUT) from None


def _is_array_file(data: bytes) -> bool:
    return data[:6] == _NPY_MAGIC or data[:4] == _NPZ_MAGIC


def _shape(shape: Any, name: str = FRAMES_INPUT) -> List[int]:
    """A shape: a short list of sizes (JSON booleans are ints to Python, and are not sizes)."""
    if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_RANK
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)):
        raise InputError(ErrorCode.INVALID_BODY, f"input {name}: shape must be a list of at most {MAX_RANK} sizes, "
                         f"got {shape!r}", name)
    return list(shape)


def _bytes_elements(data: Any, shape: List[int]) -> List[bytes]:
    """BYTES elements as raw bytes: bytes stay, strings are base64 (the JSON form)."""
    if isinstance(data, (str, bytes, bytearray)):  # the kservev2 envelope keeps only data[0]
        if shape and math.prod(shape) > 1:
            raise InputError(
                ErrorCode.INVALID_BODY,
                f"input frames has shape {shape} but one element arrived: TorchServe's kservev2 envelope forwards only "
                "the first BYTES element; send the clip as a tensor, or as one BYTES element holding a .npy/.npz",
                FRAMES_INPUT)
        data = [data]
    if not isinstance(data, (list, tuple)):
        raise InputError(ErrorCode.INVALID_BODY, "input frames: data must be a list", FRAMES_INPUT)
    flat = _flatten(data)
    if shape and len(flat) != math.prod(shape):
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


def _flatten(data: list) -> list:
    """Nested lists (the kservev2 envelope reshapes BYTES data to the shape) flattened, at most MAX_RANK deep."""
    flat, level = list(data), 0
    while any(isinstance(e, list) for e in flat):
        level += 1
        if level >= MAX_RANK:
            raise InputError(ErrorCode.INVALID_BODY, "input frames: data is nested too deeply", FRAMES_INPUT)
        flat = [x for e in flat for x in (e if isinstance(e, list) else [e])]
    return flat


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


# --- whole bodies (the KServe runtime) ---------------------------------------------------------


@dataclass
class V2Request:
    """One v2 inference request as read from its body: inputs as dicts (``name``, ``datatype``, ``shape``,
    ``parameters``, ``data``), tensor data already as arrays, and the request's id if it gave a usable one."""

    inputs: List[Dict[str, Any]]
    parameters: Dict[str, Any] = field(default_factory=dict)
    request_id: Optional[str] = None
    arrays: Dict[str, np.ndarray] = field(default_factory=dict)

    def clip_request(self) -> ClipRequest:
        return request_from_v2(self.inputs, self.parameters, self.arrays)


def parse_v2_json(body: bytes) -> V2Request:
    """A v2 inference request in JSON. Tensor data becomes a compact array here (one copy, not a
    Python list per pixel, travels on). Raises :class:`InputError`."""
    request = _v2_request(_load_json(body, "body"))
    for item in request.inputs:
        if item["data"] is None:
            raise InputError(ErrorCode.INVALID_BODY, f"input {item['name']!r} has no 'data' (binary data needs the "
                             "Inference-Header-Content-Length header)", item["name"])
        if item["datatype"] in TENSOR_DATATYPES and item["name"] == FRAMES_INPUT:
            request.arrays[FRAMES_INPUT] = tensor_from_json(item.pop("data"), item["datatype"])
            item["data"] = None
    return request


def parse_v2_binary(body: bytes, header_length: Any) -> V2Request:
    """A request in the binary tensor extension: ``header_length`` bytes of JSON (the
    ``Inference-Header-Content-Length`` header), then each input's ``binary_data_size`` raw bytes, in
    order (little-endian tensors; BYTES as 4-byte length prefixes). Raises :class:`InputError`."""
    length = _header_length(header_length, len(body))
    request = _v2_request(_load_json(body[:length], "inference header"))
    offset = length
    for item in request.inputs:
        size = _binary_size(item)
        if size is None:
            if item["data"] is None:
                raise InputError(ErrorCode.INVALID_BODY, f"input {item['name']!r} has neither 'data' nor "
                                 "parameters.binary_data_size", item["name"])
            continue
        chunk = body[offset:offset + size]
        if len(chunk) != size:
            raise InputError(ErrorCode.INVALID_BODY, f"input {item['name']!r} announces {size} bytes of binary data "
                             f"but {len(chunk)} follow", item["name"])
        offset += size
        array = _binary_array(item, chunk)
        if array is not None:
            request.arrays[item["name"]] = array
    if offset != len(body):
        raise InputError(ErrorCode.INVALID_BODY, f"{len(body) - offset} bytes after the last input's binary data",
                         "body")
    return request


def parse_v2_body(body: bytes, header_length: Optional[str] = None) -> V2Request:
    """The binary extension when ``header_length`` (``Inference-Header-Content-Length``) is given, else JSON."""
    return parse_v2_json(body) if header_length is None else parse_v2_binary(body, header_length)


def parse_v2_body_outcome(body: bytes, header_length: Optional[str] = None):
    """(request, None) or (None, (code, message, field)): :func:`parse_v2_body` for a parser process, whose
    answer is pickled (an InputError does not survive pickling)."""
    try:
        return parse_v2_body(body, header_length), None
    except InputError as exc:
        return None, (exc.code.value, exc.message, exc.field)


def safe_request_id(value: Any) -> Optional[str]:
    """A request id fit to echo and to log (see MAX_REQUEST_ID_CHARS); None when nothing usable is left."""
    if not isinstance(value, str):
        return None
    return _NOT_ID_CHARACTER.sub("", value[:4 * MAX_REQUEST_ID_CHARS])[:MAX_REQUEST_ID_CHARS] or None


def _load_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except RecursionError:
        raise InputError(ErrorCode.INVALID_BODY, f"the {where} is nested too deeply", "body") from None
    except ValueError as exc:  # UnicodeDecodeError is one too
        raise InputError(ErrorCode.INVALID_BODY, f"the {where} is not JSON: {str(exc)[:200]}", "body") from None


def _v2_request(doc: Any) -> V2Request:
    if not isinstance(doc, dict):
        raise InputError(ErrorCode.INVALID_BODY, f"a v2 inference request is a JSON object; {HOW_TO_SEND_V2}", "body")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not 1 <= len(inputs) <= MAX_INPUTS:
        raise InputError(ErrorCode.INVALID_BODY, f"'inputs' must be a list of 1 to {MAX_INPUTS} inputs; "
                         f"{HOW_TO_SEND_V2}", "inputs")
    return V2Request([_input_header(item) for item in inputs], _parameters(doc.get("parameters"), "the request"),
                     safe_request_id(doc.get("id")))


def _input_header(item: Any) -> Dict[str, Any]:
    """One input with its fields type-checked (name, datatype, shape, parameters; data as given, or None)."""
    if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("datatype"), str):
        raise InputError(ErrorCode.INVALID_BODY, f"every input is an object with a string name and datatype; "
                         f"{HOW_TO_SEND_V2}", "inputs")
    name = item["name"]
    return {"name": name, "datatype": item["datatype"].upper(), "shape": _shape(item.get("shape"), name),
            "parameters": _parameters(item.get("parameters"), f"input {name[:64]!r}"), "data": item.get("data")}


def _header_length(value: Any, body_size: int) -> int:
    text = str(value).strip()
    if not text.isdecimal() or not text.isascii() or len(text) > 20 or int(text) > body_size:
        raise InputError(ErrorCode.INVALID_BODY, f"Inference-Header-Content-Length must be a byte count of at most "
                         f"the body's {body_size} bytes, got {text[:40]!r}", "Inference-Header-Content-Length")
    return int(text)


def _binary_size(item: Mapping[str, Any]) -> Optional[int]:
    size = item["parameters"].get("binary_data_size")
    if size is None:
        return None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InputError(ErrorCode.INVALID_BODY, f"input {item['name']!r}: binary_data_size must be a byte count",
                         item["name"])
    if item["data"] is not None:
        raise InputError(ErrorCode.INVALID_BODY, f"input {item['name']!r} has both 'data' and binary data",
                         item["name"])
    return size


def _binary_array(item: Mapping[str, Any], chunk: bytes) -> Optional[np.ndarray]:
    """Raw binary data as an array: little-endian values of a tensor datatype, or BYTES elements; None for
    other datatypes (the request checks refuse those by name and datatype)."""
    if item["datatype"] == "BYTES":
        return _length_prefixed(chunk, item["name"])
    dtype = TENSOR_DATATYPES.get(item["datatype"])
    if dtype is None:
        return None
    if len(chunk) % dtype.itemsize:
        raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"input {item['name']!r}: {len(chunk)} bytes is not a whole "
                         f"number of {item['datatype']} values", item["name"])
    return np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)


def _length_prefixed(chunk: bytes, name: str) -> np.ndarray:
    """BYTES elements of the binary extension: each a little-endian uint32 length, then that many bytes."""
    elements, offset = [], 0
    while offset < len(chunk):
        if offset + 4 > len(chunk):
            raise InputError(ErrorCode.INVALID_BODY, f"input {name!r}: a BYTES length prefix is cut off", name)
        (size,) = struct.unpack_from("<I", chunk, offset)
        offset += 4
        if offset + size > len(chunk):
            raise InputError(ErrorCode.INVALID_BODY, f"input {name!r}: a BYTES element announces {size} bytes but "
                             f"{len(chunk) - offset} remain", name)
        elements.append(chunk[offset:offset + size])
        offset += size
    array = np.empty(len(elements), dtype=object)
    array[:] = elements
    return array


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
    "DESCRIBE_INPUT", "FRAMES_INPUT", "RESULT_OUTPUT", "TENSOR_DATATYPES", "V2Request", "error_body", "is_v2_input",
    "model_metadata_inputs", "model_metadata_outputs", "npy_bytes", "parse_v2_binary", "parse_v2_body",
    "parse_v2_body_outcome", "parse_v2_json",
    "prompts_and_options", "request_from_v2", "request_from_envelope_input", "result_output", "safe_request_id",
    "tensor_from_json",
]
