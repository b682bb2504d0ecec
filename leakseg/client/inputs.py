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
  16-bit RGB arrays (PNG readers disagree on those) are refused instead of silently rounded.
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
from leakseg.io.frames import (
    CLIP_SUFFIXES, IMAGE_SUFFIXES, SUPPORTED_DTYPES, decode_clip_array, list_image_files, load_clip, stack_frames,
)
from leakseg.schema import ClipOptions, ErrorCode

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


def load_frames(frames: Frames) -> np.ndarray:
    """Decode any accepted input into one T x H x W [x 3] array (keeps uint16/float32), exactly as the
    service decodes it (:func:`leakseg.io.frames.load_clip`). Used to draw overlays; a request itself
    never re-encodes image files."""
    return load_clip(frames)


# --------------------------------------------------------------------------------------------
# collecting frames


def _collect(frames: Frames) -> _Clip:
    if isinstance(frames, np.ndarray):
        return _check_clip_array(frames)
    if isinstance(frames, Image.Image):
        return [_encode_pil(frames, 0)]
    if isinstance(frames, (str, os.PathLike)):
        return _collect_path(Path(frames))
    if isinstance(frames, (bytes, bytearray)) or not isinstance(frames, Sequence):
        raise TypeError(
            "frames must be a path, a folder, a .npy/.npz path, a numpy array, a PIL image, "
            f"or a list of paths, arrays or PIL images; got {type(frames).__name__}"
        )
    return _collect_list(list(frames))


def _collect_path(path: Path) -> _Clip:
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return [_read_image_file(p) for p in files]
    if path.suffix.lower() in CLIP_SUFFIXES:
        return _ClipFile(path.name, path.read_bytes())
    return [_read_image_file(path)]


def _collect_list(items: List[Any]) -> _Clip:
    if not items:
        raise ValueError("no frames given")
    kinds = {_kind(item) for item in items}
    if len(kinds) > 1:
        raise TypeError(f"frames mix {' and '.join(sorted(kinds))}; give one kind")
    kind = kinds.pop()
    if kind == "array":
        return _check_clip_array(stack_frames([np.asarray(a) for a in items], "array"))
    if kind == "PIL image":
        return [_encode_pil(img, i) for i, img in enumerate(items)]
    paths = [Path(p) for p in items]
    for p in paths:
        if p.suffix.lower() in CLIP_SUFFIXES or p.is_dir():
            raise ValueError(f"{p}: a folder or .npy/.npz clip must be passed on its own, not in a list")
    return [_read_image_file(p) for p in paths]


def _kind(item: Any) -> str:
    if isinstance(item, np.ndarray):
        return "array"
    if isinstance(item, Image.Image):
        return "PIL image"
    if isinstance(item, (str, os.PathLike)):
        return "path"
    raise TypeError(f"unsupported frame type {type(item).__name__}")


def _check_clip_array(arr: np.ndarray) -> np.ndarray:
    """A T x H x W or T x H x W x 3 array in a supported dtype, little-endian and contiguous."""
    if arr.ndim == 2:
        raise ValueError(
            f"a {arr.shape} array is one frame; a clip is T x H x W [x 3] (use arr[None] or a list)"
        )
    if not (arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] == 3)):
        raise ValueError(f"a clip array must be T x H x W or T x H x W x 3, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"empty clip array {arr.shape}")
    native = arr.dtype.newbyteorder("=")
    if native not in SUPPORTED_DTYPES:
        raise ValueError(
            f"unsupported dtype {arr.dtype}: use uint8, uint16 or float32 (e.g. arr.astype(np.float32))"
        )
    return np.ascontiguousarray(arr, dtype=native.newbyteorder("<"))


def _read_image_file(path: Path) -> _ImageFile:
    if path.is_dir():
        raise ValueError(f"{path} is a folder; pass it on its own, not in a list")
    content = path.read_bytes()
    return _ImageFile(path.name, content, _sniff(content, str(path)))


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
    """The image in a mode PNG stores without loss of what the model sees."""
    mode = img.mode
    if mode in ("L", "RGB", "I;16"):
        return img
    if mode in ("I;16B", "I;16L", "I;16N"):
        return Image.fromarray(np.asarray(img).astype(np.uint16))
    if mode == "I":  # 32-bit int, as some readers open 16-bit files: keep it if it fits 16 bits
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise ValueError("a mode 'I' image with values outside 0..65535 cannot be sent as a PNG")
        return Image.fromarray(arr.astype(np.uint16))
    if mode == "F":
        raise ValueError("float PIL images (mode 'F') cannot be PNG-encoded; pass np.asarray(img) instead")
    if mode in ("1", "LA"):
        return img.convert("L")
    return img.convert("RGB")  # P, RGBA, CMYK, YCbCr, ...: the model sees RGB


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
    if frame.dtype == np.uint16 and frame.ndim == 3:
        raise ValueError("16-bit RGB frames cannot be sent in the JSON form; use form='multipart'")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame.astype(frame.dtype.newbyteorder("=")))).save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------------------------
# decoding (the JSON form of .npy clips)


def _load_clip_file(clip: _ClipFile) -> np.ndarray:
    return np.stack(decode_clip_array(clip.content, clip.filename))
