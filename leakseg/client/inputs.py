"""Turn what a caller has (paths, a folder, numpy arrays, PIL images, a .npy/.npz clip) into a request body.

:func:`build_request` is pure: no network, no globals. It returns a :class:`RequestBody` whose
bytes are encoded once, so retries resend exactly the same request and the size is known
before sending (TorchServe refuses bodies over its ``max_request_size``).

Fidelity rules:

* image files travel as their original bytes (no re-encoding, no bit-depth loss);
* numpy input travels as one ``clip`` part holding an ``.npy`` file, so uint16 and float32
  arrive unchanged;
* PIL images are encoded as PNG; 16-bit grey (``I;16``) stays 16-bit;
* the JSON form can only carry image files, so arrays become PNGs there: float arrays and
  16-bit RGB arrays (the service refuses 16-bit colour images) are refused instead of silently rounded;
* image files are checked from their headers as the service checks them: a 16-bit colour PNG or
  TIFF (which would lose its low byte) raises InvalidInput ``frame_decode_error`` before sending.
"""

from __future__ import annotations

import base64
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from leakseg.client.errors import InvalidInput
from leakseg.io.frames import check_array_layout, decode_clip_bytes, image_to_array, open_image, sort_input
from leakseg.schema import ClipOptions, ErrorCode, InputError

PathLike = Union[str, "os.PathLike[str]"]
#: Anything :func:`build_request` accepts as the frames of one clip.
Frames = Union[PathLike, np.ndarray, Image.Image, Sequence[Any]]
Form = Literal["multipart", "json"]


# Magic numbers of the formats the service decodes; content decides, not the file name.
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
    (b"BM", "image/bmp"),
)


@dataclass(frozen=True)
class Part:
    """One multipart part. ``filename`` None makes it a plain form field (prompts, options)."""

    name: str
    content: bytes
    content_type: str
    filename: Optional[str] = None


@dataclass(frozen=True)
class RequestBody:
    """An encoded request: the ``data`` and ``headers`` to POST, plus what went into them."""

    form: Form
    data: bytes
    content_type: str
    parts: Tuple[Part, ...] = ()
    json: Optional[Dict[str, Any]] = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def headers(self) -> Dict[str, str]:
        return {"Content-Type": self.content_type}

    def part(self, name: str) -> Part:
        """The multipart part called ``name`` (KeyError if absent)."""
        for p in self.parts:
            if p.name == name:
                return p
        raise KeyError(name)


@dataclass(frozen=True)
class _ImageFile:
    filename: str
    content: bytes
    content_type: str


@dataclass(frozen=True)
class _ClipFile:
    filename: str
    content: bytes


_Clip = Union[List[_ImageFile], np.ndarray, _ClipFile]


# --------------------------------------------------------------------------------------------
# public entry points


def build_request(
    frames: Frames,
    prompts: Union[str, Sequence[str], None] = None,
    options: Union[ClipOptions, Mapping[str, Any], None] = None,
    form: Form = "multipart",
) -> RequestBody:
    """Encode one clip, its prompts and options as a multipart or JSON request body.

    Raises ValueError/TypeError for frames that cannot be sent, and
    :class:`~leakseg.client.errors.InvalidInput` (code ``invalid_options``) for bad options.
    """
    if form not in ("multipart", "json"):
        raise ValueError(f"form must be 'multipart' or 'json', not {form!r}")
    prompt_list = normalize_prompts(prompts)
    option_dict = validate_options(options)
    clip = _collect(frames)
    if form == "multipart":
        return _multipart(clip, prompt_list, option_dict)
    return _json_body(clip, prompt_list, option_dict)


def describe_request() -> RequestBody:
    """The body of a ``{"describe": true}`` request."""
    return _json_request({"describe": True})


def validate_options(options: Union[ClipOptions, Mapping[str, Any], None]) -> Dict[str, Any]:
    """The options the caller set, checked against :class:`ClipOptions` before anything is sent.

    Only explicitly set fields are returned, so the server's defaults apply to the rest.
    """
    if options is None:
        return {}
    if isinstance(options, ClipOptions):
        return options.model_dump(mode="json", exclude_unset=True)
    if not isinstance(options, Mapping):
        raise TypeError(f"options must be a mapping or ClipOptions, not {type(options).__name__}")
    from pydantic import ValidationError

    try:
        parsed = ClipOptions.model_validate(dict(options))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        if first.get("type") == "extra_forbidden":
            message = f"unknown option {where!r}; the options are {', '.join(ClipOptions.model_fields)}"
        else:
            message = f"invalid option {where!r}: {first['msg']}"
        raise InvalidInput(ErrorCode.INVALID_OPTIONS, message,
                           field=f"options.{where}" if where else "options") from exc
    return parsed.model_dump(mode="json", exclude_unset=True)


def normalize_prompts(prompts: Union[str, Sequence[str], None]) -> Optional[List[str]]:
    """``None``, a list of strings, or one string (taken as a one-prompt list, not as characters)."""
    if prompts is None:
        return None
    if isinstance(prompts, str):
        return [prompts]
    result = list(prompts)
    bad = [p for p in result if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {type(bad[0]).__name__}")
    return result


# --------------------------------------------------------------------------------------------
# collecting frames: what the caller handed over is sorted by leakseg.io.frames.sort_input, the
# rule the overlays and the service's own readers follow too; the client only encodes each kind


def _collect(frames: Frames) -> _Clip:
    given = sort_input(frames)
    if given.array is not None:
        return _check_clip_array(given.array)
    if given.images:
        return [_encode_pil(img, i) for i, img in enumerate(given.images)]
    if given.clip_file is not None:
        return _ClipFile(given.clip_file.name, given.clip_file.read_bytes())
    return [_read_image_file(p) for p in given.image_files]


def _check_clip_array(arr: np.ndarray) -> np.ndarray:
    """A clip array the service takes as a ``clip`` part (its rule for .npy clips), little-endian and contiguous."""
    check_array_layout(arr.shape, arr.dtype, "frames", limits=None)
    if arr.size == 0:  # the service would answer no_frames; say so before sending
        raise ValueError(f"empty clip array {arr.shape}")
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<"))


def _read_image_file(path: Path) -> _ImageFile:
    content = path.read_bytes()
    mime = _sniff(content, str(path))
    _check_image_header(content, path.name)
    return _ImageFile(path.name, content, mime)


def _check_image_header(content: bytes, name: str) -> None:
    """What the service refuses from an image's header (a 16-bit colour PNG or TIFF: Pillow would keep only
    each value's high byte) is refused here, before sending, with the service's code and message."""
    try:
        open_image(content, name).close()
    except InputError as exc:
        raise InvalidInput(exc.code, exc.message, field=exc.field) from exc


def _sniff(content: bytes, name: str) -> str:
    for magic, mime in _MAGIC:
        if content.startswith(magic):
            return mime
    raise ValueError(f"{name} is not a PNG, JPEG, TIFF or BMP file")


def _encode_pil(img: Image.Image, index: int) -> _ImageFile:
    buf = io.BytesIO()
    _png_ready(img).save(buf, format="PNG")
    return _ImageFile(f"frame_{index:04d}.png", buf.getvalue(), "image/png")


def _png_ready(img: Image.Image) -> Image.Image:
    """The pixels the service would decode from ``img`` (leakseg.io.frames.image_to_array), in an image
    mode PNG stores without loss; float pixels are refused, PNG cannot hold them."""
    if img.mode == "F":
        raise ValueError("float PIL images (mode 'F') cannot be PNG-encoded; pass np.asarray(img) instead")
    pixels = image_to_array(img)
    if pixels.dtype == np.float32:  # mode "I" (32-bit int) beyond 16 bits
        raise ValueError("a mode 'I' image with values outside 0..65535 cannot be sent as a PNG")
    return Image.fromarray(pixels)


# --------------------------------------------------------------------------------------------
# encoding


def _multipart(clip: _Clip, prompts: Optional[List[str]], options: Dict[str, Any]) -> RequestBody:
    from urllib3.fields import RequestField
    from urllib3.filepost import encode_multipart_formdata

    parts = _frame_parts(clip) + _extra_parts(prompts, options)
    fields = []
    for p in parts:
        rf = RequestField(name=p.name, data=p.content, filename=p.filename)
        rf.make_multipart(content_type=p.content_type)
        fields.append(rf)
    data, content_type = encode_multipart_formdata(fields)
    return RequestBody("multipart", data, content_type, parts=tuple(parts))


def _frame_parts(clip: _Clip) -> List[Part]:
    if isinstance(clip, np.ndarray):
        return [Part("clip", _npy_bytes(clip), "application/octet-stream", "clip.npy")]
    if isinstance(clip, _ClipFile):
        return [Part("clip", clip.content, "application/octet-stream", clip.filename)]
    return [Part(f"frame_{i:04d}", f.content, f.content_type, f.filename) for i, f in enumerate(clip)]


def _extra_parts(prompts: Optional[List[str]], options: Dict[str, Any]) -> List[Part]:
    parts = []
    if prompts is not None:
        parts.append(Part("prompts", json.dumps(prompts).encode(), "application/json"))
    if options:
        parts.append(Part("options", json.dumps(options).encode(), "application/json"))
    return parts


def _json_body(clip: _Clip, prompts: Optional[List[str]], options: Dict[str, Any]) -> RequestBody:
    if isinstance(clip, _ClipFile):
        clip = _check_clip_array(_load_clip_file(clip))
    files = [f.content for f in clip] if isinstance(clip, list) else [_png_bytes(a) for a in clip]
    body: Dict[str, Any] = {"frames": [base64.b64encode(b).decode("ascii") for b in files]}
    if prompts is not None:
        body["prompts"] = prompts
    if options:
        body["options"] = options
    return _json_request(body)


def _json_request(body: Dict[str, Any]) -> RequestBody:
    data = json.dumps(body, separators=(",", ":")).encode()
    return RequestBody("json", data, "application/json", json=body)


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _png_bytes(frame: np.ndarray) -> bytes:
    """One frame as PNG for the JSON form; refuses what PNG would change."""
    if frame.dtype == np.float32:
        raise ValueError(
            "float32 frames cannot be sent in the JSON form without rounding; "
            "use form='multipart' (sends the array losslessly) or convert to uint8/uint16"
        )
    if frame.dtype == np.uint16 and frame.ndim == 3:  # the service refuses 16-bit colour PNGs (they would lose bits)
        raise InvalidInput(ErrorCode.FRAME_DECODE_ERROR, "16-bit RGB frames cannot be sent in the JSON form (as "
                           "PNG they would lose their low byte); use form='multipart', which sends them as .npy")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("=")))).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# decoding (the JSON form of .npy clips)


def _load_clip_file(clip: _ClipFile) -> np.ndarray:
    return np.stack(decode_clip_bytes(clip.content, clip.filename))
