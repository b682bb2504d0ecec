"""From what TorchServe hands the handler to a checked request: parts -> frames, prompts, options.

How TorchServe 0.12 presents one HTTP request to ``handle(data, context)`` (read from the
frontend's ``InferenceRequestHandler.parseRequest`` and ``ts/protocol/otf_message_handler.py``):

* ``data[i]`` is a dict, name -> value, built from the request's "parameters":
  - multipart/form-data (and application/x-www-form-urlencoded): one entry per form field,
    named as the field. File parts keep their own Content-Type and are decoded by it: an
    ``application/json`` part arrives as the parsed JSON (raw bytes if it does not parse), a
    ``text/*`` part as ``str``, anything else as ``bytearray``. Plain fields (no filename)
    have no content type and arrive as ``bytearray``;
  - any other body: one entry ``"body"``, decoded by the request's mime type the same way
    (``application/json`` -> the parsed JSON, or the raw bytes when it is malformed);
  - query-string parameters never arrive: the frontend drops the query string of a request with
    a body (tested through a real TorchServe in tests/test_service_faults.py), so they are ignored;
  - with ``decode_input_request=false`` (config.properties, as leakseg ships it) TorchServe leaves
    every value as raw bytes: JSON is parsed here, after its structure is counted
    (:func:`_check_json_structure`), never by the worker before the handler runs. With TorchServe's
    default (true) JSON arrives parsed, and JSON its ``json.loads`` cannot parse (malformed,
    invalid UTF-8, nested too deep) as the raw bytes, parsed again here;
  - a repeated name keeps only its last value (the entries go through ``dict.update``).
* the request's HTTP headers (as the client spelled their names) are read with
  ``context.get_request_header(i, name)``; ``context.get_all_request_header(i)`` mixes them
  with one ``{"content-type": ...}`` dict per parameter, so :func:`content_type` looks the
  header up case-insensitively among the string values only.

Everything here is pure (no TorchServe, no model), so it is unit-tested directly.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, List, Mapping, Optional, Tuple

import numpy as np

from leakseg.io.frames import ClipLimits, decode_clip_bytes, decode_clip_images, too_many_frames
from leakseg.schema import ClipOptions, ErrorCode, InputError

MULTIPART = "multipart/form-data"
JSON = "application/json"
URLENCODED = "application/x-www-form-urlencoded"
#: Multipart part names: frame_NNNN (clip order = the number), clip, prompts, options.
FRAME_PART = re.compile(r"frame_(\d{1,6})")
JSON_FIELDS = ("frames", "prompts", "options", "describe")
HOW_TO_SEND = (
    "send multipart/form-data (parts frame_0000, frame_0001, ... or one part clip; optional parts "
    "prompts and options) or application/json ({\"frames\": [base64, ...], \"prompts\": [...], "
    "\"options\": {...}})"
)


@dataclass
class ClipRequest:
    """One parsed request: encoded frames (not decoded yet), prompts and options as sent."""

    images: List[Tuple[str, bytes]] = field(default_factory=list)  # (part name, image file) in clip order
    clip: Optional[bytes] = None  # one .npy/.npz holding the whole clip
    prompts: Any = None  # None: the model's default prompts
    options: Any = None  # None: the archive's default options
    describe: bool = False


# --- headers --------------------------------------------------------------------------------


def content_type(headers: Mapping[str, Any]) -> str:
    """The request's mime type, lower case, without parameters ('' when absent)."""
    for name, value in headers.items():
        if isinstance(value, str) and name.lower() == "content-type":
            return value.split(";", 1)[0].strip().lower()
    return ""


# --- parsing --------------------------------------------------------------------------------


def parse_request(parts: Mapping[str, Any], mime: str, limits: Optional[ClipLimits] = None) -> ClipRequest:
    """Dispatch on the Content-Type; raises InputError for anything but the two request forms.

    Everything countable is counted before anything is decoded or validated: frames against
    ``limits.max_frames`` (before base64 decoding or copying a part), option keys against the
    number of options (before pydantic builds an error per unknown key).
    """
    limits = limits or ClipLimits()
    if mime == MULTIPART:
        return parse_multipart(parts, limits)
    if mime == JSON:
        return parse_json(parts, limits)
    if mime == URLENCODED:
        raise InputError(
            ErrorCode.UNSUPPORTED_CONTENT_TYPE,
            f"Content-Type {URLENCODED} is not supported (curl -d sends it by default: use curl -F for "
            f"multipart, or add -H 'Content-Type: application/json'); {HOW_TO_SEND}", "Content-Type")
    shown = mime or "(none)"
    raise InputError(ErrorCode.UNSUPPORTED_CONTENT_TYPE, f"Content-Type {shown} is not supported; {HOW_TO_SEND}",
                     "Content-Type")


def parse_multipart(parts: Mapping[str, Any], limits: Optional[ClipLimits] = None) -> ClipRequest:
    request, frames = ClipRequest(), []
    for name, value in parts.items():
        match = FRAME_PART.fullmatch(name)
        if match:
            frames.append((int(match.group(1)), name, value))
        elif name == "clip":
            request.clip = _file_bytes(value, name)
        elif name == "prompts":
            request.prompts = _json_part(value, name, ErrorCode.INVALID_BODY)
        elif name == "options":
            request.options = counted_options(_json_part(value, name, ErrorCode.INVALID_OPTIONS))
        else:
            raise InputError(
                ErrorCode.INVALID_BODY,
                f"unexpected part or query parameter {name!r}; the parts are frame_NNNN (e.g. frame_0000), "
                "clip, prompts and options", name)
    if request.clip is not None and frames:
        raise InputError(ErrorCode.INVALID_BODY,
                         "send either frame_NNNN parts or one clip part, not both", "clip")
    _count_frames(frames, limits or ClipLimits())
    request.images = _ordered_frames(frames)
    return request


def _ordered_frames(frames: List[Tuple[int, str, Any]]) -> List[Tuple[str, bytes]]:
    """Frames sorted by their number; two names with one number (frame_1, frame_01) are ambiguous."""
    frames.sort(key=lambda f: f[0])
    for (a, name_a, _), (b, name_b, _) in zip(frames, frames[1:]):
        if a == b:
            raise InputError(ErrorCode.INVALID_BODY,
                             f"parts {name_a} and {name_b} have the same frame number {a}", name_b)
    return [(name, _file_bytes(value, name)) for _, name, value in frames]


def parse_json(parts: Mapping[str, Any], limits: Optional[ClipLimits] = None) -> ClipRequest:
    extra = sorted(set(parts) - {"body"})
    if extra:
        raise InputError(ErrorCode.INVALID_BODY,
                         f"unexpected query parameter(s) {extra}; a JSON request carries everything in its body",
                         extra[0])
    body = parts.get("body", b"")
    if isinstance(body, (bytes, bytearray, memoryview)):  # TorchServe could not parse it (or was told not to)
        body = _json_text(body, "body", ErrorCode.INVALID_BODY)
    if not isinstance(body, dict):
        raise InputError(ErrorCode.INVALID_BODY,
                         f"the JSON body must be an object, not {_json_type(body)}; {HOW_TO_SEND}", "body")
    unknown = [k for k in body if k not in JSON_FIELDS]
    if unknown:
        raise InputError(ErrorCode.INVALID_BODY, f"{len(unknown)} unknown field(s) {unknown[:5]}; the fields are "
                         f"{', '.join(JSON_FIELDS)}", unknown[0])
    describe = body.get("describe", False)
    if not isinstance(describe, bool):
        raise InputError(ErrorCode.INVALID_BODY, "describe must be true or false", "describe")
    if describe:
        others = [k for k in body if k != "describe"]
        if others:
            raise InputError(ErrorCode.INVALID_BODY, f"a describe request takes no other fields, got {others}",
                             others[0])
        return ClipRequest(describe=True)
    return ClipRequest(images=_base64_frames(body.get("frames", []), limits or ClipLimits()),
                       prompts=body.get("prompts"), options=counted_options(body.get("options")))


def _count_frames(frames: List[Any], limits: ClipLimits) -> None:
    if len(frames) > limits.max_frames:
        raise too_many_frames(len(frames), limits)


def counted_options(options: Any) -> Any:
    """``options`` as sent; an object with more keys than there are options is refused before validation
    (pydantic would build one error per unknown key: 200,000 keys cost 0.7 s)."""
    known = ClipOptions.model_fields
    if isinstance(options, dict) and len(options) > len(known):
        raise InputError(ErrorCode.INVALID_OPTIONS, f"options has {len(options)} keys; there are {len(known)} "
                         f"options: {', '.join(known)}", "options")
    return options


def _base64_frames(frames: Any, limits: ClipLimits) -> List[Tuple[str, bytes]]:
    if not isinstance(frames, list) or not all(isinstance(f, str) for f in frames):
        raise InputError(ErrorCode.INVALID_BODY, "frames must be a list of base64-encoded image files", "frames")
    _count_frames(frames, limits)  # before decoding any of them
    decoded = []
    for i, text in enumerate(frames):
        name = f"frames[{i}]"
        try:
            decoded.append((name, base64.b64decode(text, validate=True)))
        except (binascii.Error, ValueError) as exc:
            raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"{name} is not valid base64 ({exc})", name) from exc
    return decoded


def _file_bytes(value: Any, name: str) -> bytes:
    """A file part's bytes, however TorchServe typed it."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):  # a text/* part TorchServe decoded as UTF-8: encoding it back is lossless
        return value.encode("utf-8")
    raise InputError(ErrorCode.FRAME_DECODE_ERROR,
                     f"{name} was sent as JSON ({_json_type(value)}), not as an image or .npy/.npz file", name)


def _json_part(value: Any, name: str, code: ErrorCode) -> Any:
    """prompts/options: JSON text (plain field or text/* part), or what TorchServe parsed (application/json part)."""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        return _json_text(value, name, code)
    return value


def _json_text(value: Any, name: str, code: ErrorCode) -> Any:
    text = value if isinstance(value, (str, bytes, bytearray)) else bytes(value)  # no copy of a big body
    if not text or text.isspace():
        raise InputError(code, f"{name} is empty; expected JSON", name)
    _check_json_structure(text, name, code)
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(code, f"{name} is not valid JSON ({str(exc)[:200]})", name) from exc
    except RecursionError as exc:  # TorchServe's own json.loads gave up on it too and forwarded the bytes
        raise InputError(code, f"{name} is JSON nested too deep (arrays or objects within each other "
                         "about a thousand levels or more)", name) from exc


def _check_json_structure(text: Any, name: str, code: ErrorCode) -> None:
    """Refuse JSON with more structure than any request needs, before parsing it.

    Parsing costs an object per array, object, element and key: ``[[],[],...]`` takes some 24 times
    its size (an empty list is 56 bytes for 3 bytes of JSON). Strings cost about their size. So the
    brackets, braces, commas and colons are counted first (a request holds about 60: 32 frames, a
    few prompts, six options); at most MAX_JSON_STRUCTURE of them bound the objects to some 64 MB.
    """
    marks = _STRUCTURE if isinstance(text, str) else _STRUCTURE.encode()
    count = sum(text.count(marks[i:i + 1]) for i in range(len(marks)))
    if count > MAX_JSON_STRUCTURE:
        raise InputError(code, f"{name} is JSON with {count} brackets, braces, commas and colons; a request "
                         f"needs far fewer (at most {MAX_JSON_STRUCTURE})", name)


#: See _check_json_structure: the structural characters that cost the JSON parser an object each.
_STRUCTURE = "[{,:"
MAX_JSON_STRUCTURE = 1_000_000


def _json_type(value: Any) -> str:
    names = {list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number",
             type(None): "null", dict: "an object"}
    return names.get(type(value), type(value).__name__)


# --- decoding -------------------------------------------------------------------------------


def decode_request_frames(request: ClipRequest, limits: ClipLimits, pool: Optional[Executor] = None,
                          ) -> Tuple[List[np.ndarray], List[str]]:
    """The request's frames as arrays and their names, by :mod:`leakseg.io.frames` (limits from headers first)."""
    if request.clip is not None:
        frames = decode_clip_bytes(request.clip, "clip", limits)
        return frames, [f"clip[{i}]" for i in range(len(frames))]
    return decode_clip_images(request.images, limits, pool), [name for name, _ in request.images]
