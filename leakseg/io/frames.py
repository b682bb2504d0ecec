"""Frames in: the only code that turns bytes, files, folders and arrays into frames.

Every caller goes through here: the TorchServe handler and the KServe runtime (request bytes),
`leakseg predict` and the dataset reader behind `leakseg evaluate` and `leakseg train` (files),
the monitor's drop folders (frame files), the client and the overlays (paths, folders, arrays).
So a frame is read the same way wherever it comes from:

* image files (PNG, JPEG, TIFF, BMP): grey stays H x W, colour becomes H x W x 3 RGB; 16-bit
  grey is uint16 (also when Pillow opens it as 32-bit mode "I" and the values fit 16 bits,
  float32 otherwise); mode "F" is float32;
* only those four Pillow plugins ever open a frame (:func:`open_image`); a 16-bit colour PNG or
  TIFF is refused from its header (Pillow would keep the high byte only); any failure of a
  decoder on the bytes is the sender's: ``frame_decode_error``;
* ``.npy``/``.npz`` clips: T x H x W or T x H x W x 3, uint8, uint16 or float32, never pickled;
* limits (frame count, pixels per frame) are checked from the file headers before any pixel is
  decoded, so a decompression bomb or a lying .npy header costs nothing.

The names say what turns into what: ``read_*`` takes paths, ``decode_*`` takes bytes in memory,
``*_image_*`` is one image file, ``*_clip_*`` a whole clip.

========================  ==============================================  =====================
function                  from                                            to
========================  ==============================================  =====================
read_image_file           an image file                                   one frame
read_frame_file           an image file or a .npy of one H x W [x 3]      one frame
read_clip_file            a .npy/.npz clip file                           frames
read_clip_paths           image files, a folder of them, or a clip file   frames and names
decode_image_bytes        the bytes of an image file                      one frame
decode_frame_bytes        the bytes of a .npy/.npz of one frame           one frame
decode_clip_bytes         the bytes of a .npy/.npz clip                   frames
decode_clip_images        a clip's image files as (name, bytes)           frames
image_to_array            an opened PIL image                             one frame
clip_array_from           anything the client accepts (see sort_input)    one T x H x W [x 3] array
========================  ==============================================  =====================

:func:`sort_input` is the one rule for what a caller may hand over as a clip (a path, a folder,
a .npy/.npz path, an array, a PIL image, or a list of paths, arrays or images): the client
builds requests from its answer, :func:`clip_array_from` decodes it.

The model was trained on 8-bit frames. 16-bit and float frames (radiometric IR) are mapped by
ONE rule applied to the whole clip (:func:`to_uint8_clip`), so every frame of a clip keeps the same
scale: a percentile stretch, (x - p0.5) / (p99.5 - p0.5) over all pixels of the clip, clipped to
[0, 1] and scaled to 0..255 (rounded). A clip with p99.5 == p0.5 maps to zeros. 8-bit frames are
used as they are.

Only numpy, Pillow and pydantic are imported: the thin client uses this module too.
"""

from __future__ import annotations

import io
import math
import os
import re
import struct
import zipfile
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from leakseg.schema import ErrorCode, InputError

#: The percentiles of the clip-level stretch for 16-bit and float input.
STRETCH_PERCENTILES = (0.5, 99.5)
SUPPORTED_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
CLIP_SUFFIXES = (".npy", ".npz")

PathLike = Union[str, Path]
#: The decoded-bytes budget of one request: the largest clip the body limit admits in its densest
#: lossless form, 32 frames of 2048 x 2048 16-bit RGB (768 MiB). A compressed .npz or image that
#: inflates beyond it (e.g. float32 RGB at the frame limits, 1.5 GiB) is refused from its header.
MAX_CLIP_BYTES = 32 * 2048 * 2048 * 3 * 2
#: The largest request body the contract admits: that clip as one .npy (its header included) plus 64 KiB
#: for multipart framing, prompts and options. config.properties' max_request_size, the KServe runtime's
#: and the KServe layout's limits are this number (a test keeps them equal).
MAX_REQUEST_BYTES = MAX_CLIP_BYTES + 64 * 1024


class ClipLimits(BaseModel):
    """What one request may hold; an archive carries its own (the manifest's ``limits``)."""

    model_config = ConfigDict(extra="forbid")

    min_frames: int = 3
    max_frames: int = Field(32, description="Frames per request; the body limit is config.properties' max_request_size.")
    max_frame_pixels: int = Field(2048 * 2048, description="Height x width of one frame.")
    max_clip_bytes: int = Field(
        MAX_CLIP_BYTES, description="Decoded pixel bytes of one request (frames x height x width x channels x "
        "bytes per value), checked from the file headers before decoding: bounds a request's memory.")


# --- the error messages, one per code ---------------------------------------------------------


def too_many_frames(count: int, limits: ClipLimits, field: str = "frames", frame_bytes: int = 0) -> InputError:
    """More frames than the limit, or (``frame_bytes``: decoded bytes of one frame) than the decoded-bytes budget."""
    allowed = limits.max_frames if not frame_bytes else min(limits.max_frames, limits.max_clip_bytes // frame_bytes)
    why = "" if not frame_bytes else (f" of this size and type ({frame_bytes} bytes each decoded; at most "
                                      f"{limits.max_clip_bytes} bytes per request)")
    return InputError(ErrorCode.TOO_MANY_FRAMES, f"at most {allowed} frames{why} per request, got {count}", field)


def frame_too_large(name: str, width: int, height: int, limits: ClipLimits, field: Optional[str] = None) -> InputError:
    return InputError(ErrorCode.FRAME_TOO_LARGE,
                      f"{name} is {width}x{height} pixels; the limit is {limits.max_frame_pixels} pixels per frame",
                      field or name)


def unreadable(name: str, why: str) -> InputError:
    return InputError(ErrorCode.FRAME_DECODE_ERROR, f"{name} {why}", name)


def bad_dtype(name: str, dtype) -> InputError:
    return unreadable(name, f"has unsupported dtype {dtype}; use uint8, uint16 or float32")


def bad_shape(name: str, shape, expected: str) -> InputError:
    return unreadable(name, f"has shape {tuple(shape)}; expected {expected}")


# --- what a caller hands over -----------------------------------------------------------------


@dataclass(frozen=True)
class ClipInput:
    """One clip as a caller gave it, sorted by kind, nothing decoded: exactly one field is set."""

    array: Optional[np.ndarray] = None  # one array as given, or a list of frame arrays stacked
    images: Tuple[Image.Image, ...] = ()  # PIL images
    image_files: Tuple[Path, ...] = ()  # image files in clip order (a folder's in natural order)
    clip_file: Optional[Path] = None  # one .npy/.npz holding the whole clip


def sort_input(frames) -> ClipInput:
    """What ``frames`` is: a path (image file, folder of them, .npy/.npz), an array, a PIL image, or a
    list of one kind of paths, arrays or PIL images. ValueError/TypeError for anything else."""
    if isinstance(frames, np.ndarray):
        return ClipInput(array=frames)
    if isinstance(frames, Image.Image):
        return ClipInput(images=(frames,))
    if _is_path(frames):
        return _sort_path(Path(frames))
    if isinstance(frames, (bytes, bytearray)) or not isinstance(frames, Sequence):
        raise TypeError("frames must be a path, a folder, a .npy/.npz path, a numpy array, a PIL image, "
                        f"or a list of paths, arrays or PIL images; got {type(frames).__name__}")
    return _sort_list(list(frames))


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


def _sort_path(path: Path) -> ClipInput:
    if path.is_dir():
        files = list_image_files(path)
        if not files:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
        return ClipInput(image_files=tuple(files))
    if path.suffix.lower() in CLIP_SUFFIXES:
        return ClipInput(clip_file=path)
    return ClipInput(image_files=(path,))


def _sort_list(items: list) -> ClipInput:
    if not items:
        raise ValueError("no frames given")
    kinds = {_item_kind(item) for item in items}
    if len(kinds) > 1:
        raise TypeError(f"frames mix {' and '.join(sorted(kinds))}; give one kind")
    kind = kinds.pop()
    if kind == "array":
        return ClipInput(array=stack_frames(items))
    if kind == "PIL image":
        return ClipInput(images=tuple(items))
    paths = tuple(Path(p) for p in items)
    for p in paths:
        if p.is_dir() or p.suffix.lower() in CLIP_SUFFIXES:
            raise ValueError(f"{p}: a folder or .npy/.npz clip must be passed on its own, not in a list")
    return ClipInput(image_files=paths)


def _item_kind(item) -> str:
    if isinstance(item, np.ndarray):
        return "array"
    if isinstance(item, Image.Image):
        return "PIL image"
    if _is_path(item):
        return "path"
    raise TypeError(f"unsupported frame type {type(item).__name__}")


def clip_array_from(frames) -> np.ndarray:
    """Anything :func:`sort_input` accepts (or one H x W array) as one T x H x W [x 3] array, exactly as
    the service decodes it; keeps uint16/float32, and arrays of other dtypes as they are (overlays)."""
    given = sort_input(frames)
    if given.array is not None:
        return given.array if given.array.ndim in (3, 4) else stack_frames([given.array])
    if given.images:
        return stack_frames([image_to_array(img) for img in given.images])
    if given.clip_file is not None:
        return stack_frames(read_clip_file(given.clip_file))
    return stack_frames([read_image_file(p) for p in given.image_files])


def stack_frames(arrays: Sequence[np.ndarray], what: str = "frame") -> np.ndarray:
    """Frames of one size and dtype (H x W or H x W x 3) as one T x ... array; ValueError naming the odd one."""
    if not len(arrays):
        raise ValueError("no frames given")
    first = arrays[0]
    for i, a in enumerate(arrays):
        if a.shape != first.shape or a.dtype != first.dtype:
            raise ValueError(f"{what} {i} is {a.shape} {a.dtype} but {what} 0 is {first.shape} {first.dtype}: "
                             "all frames of a clip need one size and type")
    if first.ndim not in (2, 3):
        raise ValueError(f"each frame must be H x W or H x W x 3, got shape {first.shape}")
    return np.stack(arrays)


# --- files and folders ------------------------------------------------------------------------


def natural_key(path: Path) -> list:
    """Sort key for file names with numbers in them: frame2 before frame10. Only decimal digits count as a
    number (``isdecimal``): a superscript such as '1²1.png' is text, never a crash of the sort."""
    return [int(t) if t.isdecimal() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_image_files(folder: PathLike) -> List[Path]:
    """Image files (PNG, JPEG, TIFF, BMP) in a folder, in natural order; [] for a missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=natural_key)


def read_image_file(path: PathLike, limits: Optional[ClipLimits] = None) -> np.ndarray:
    """One image file's pixels, exactly as the service decodes them."""
    return decode_image_bytes(Path(path).read_bytes(), str(path), limits)


def read_clip_file(path: PathLike, limits: Optional[ClipLimits] = None) -> List[np.ndarray]:
    """The frames of a .npy/.npz clip file, checked as a request's ``clip`` part is."""
    path = Path(path)
    return decode_clip_bytes(path.read_bytes(), path.name, limits)


def read_frame_file(path: PathLike, limits: Optional[ClipLimits] = None) -> np.ndarray:
    """One frame from a file: an image, or a .npy/.npz holding one H x W [x 3] array (a drop folder's);
    with ``limits``, a frame whose header announces more pixels or bytes is refused before it is decoded."""
    path = Path(path)
    if path.suffix.lower() in CLIP_SUFFIXES:
        return decode_frame_bytes(path.read_bytes(), path.name, limits)
    return decode_image_bytes(path.read_bytes(), path.name, limits)


def read_clip_paths(paths: Union[PathLike, Sequence[PathLike]], limits: Optional[ClipLimits] = None,
                    ) -> Tuple[List[np.ndarray], List[str]]:
    """Frames and their names from the paths of a command line: image files, or one folder of them, or
    one .npy/.npz clip (one path is the whole clip, so a folder or a clip file must come alone)."""
    paths = [paths] if _is_path(paths) else list(paths)
    given = sort_input(paths[0] if len(paths) == 1 else paths)
    if given.clip_file is not None:
        frames = read_clip_file(given.clip_file, limits)
        return frames, [f"{given.clip_file.name}[{i}]" for i in range(len(frames))]
    if limits is not None and len(given.image_files) > limits.max_frames:
        raise too_many_frames(len(given.image_files), limits)
    return [read_image_file(p, limits) for p in given.image_files], [str(p) for p in given.image_files]


# --- image files ------------------------------------------------------------------------------


def image_to_array(img: Image.Image) -> np.ndarray:
    """The pixels of an opened image by the one rule (see the module docstring)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img).astype(np.uint16)
    if img.mode == "I":  # 16-bit PNGs often open as 32-bit int
        arr = np.asarray(img)
        return arr.astype(np.uint16) if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535 else arr.astype(np.float32)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    if img.mode in ("L", "RGB"):
        return np.asarray(img)
    if img.mode in ("1", "LA"):
        return np.asarray(img.convert("L"))
    return np.asarray(img.convert("RGB"))  # P, RGBA, CMYK, YCbCr, ...: the model sees RGB


def decode_image_bytes(data: bytes, name: str, limits: Optional[ClipLimits] = None) -> np.ndarray:
    """An image file's pixels; with ``limits``, an oversized frame is refused from its header."""
    with open_image(data, name, limits) as img:
        if limits is not None and img.size[0] * img.size[1] > limits.max_frame_pixels:
            raise frame_too_large(name, *img.size, limits)
        with _decoder_errors(name, _IMAGE_KINDS):
            img.load()
            return image_to_array(img)


def open_image(data: bytes, name: str, limits: Optional[ClipLimits] = None) -> Image.Image:
    """The image file's header, opened by the plugins of :data:`IMAGE_FORMATS` only, nothing decoded.

    Pillow would otherwise try every format it knows: an EPS frame runs Ghostscript on the sender's
    bytes, and other plugins have their own failure modes. A 16-bit colour image is refused here,
    before decoding, because Pillow would keep only the high byte of each value (see
    :func:`_refuse_lossy_colour`).
    """
    with _decoder_errors(name, _IMAGE_KINDS):
        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
        except Image.DecompressionBombError as exc:  # Pillow refuses > ~179 Mpx already when opening
            limit = (limits or ClipLimits()).max_frame_pixels
            raise InputError(ErrorCode.FRAME_TOO_LARGE, f"{name}: {str(exc)[:200]}; the limit is {limit} pixels "
                             "per frame", name) from exc
        except UnidentifiedImageError as exc:  # its own message names the BytesIO object: say what matters
            raise unreadable(name, f"is not a readable {_IMAGE_KINDS} (its content is none of these formats)") from exc
    try:
        _refuse_lossy_colour(img, name)
    except InputError:
        img.close()
        raise
    return img


#: The image formats the API documents; no other Pillow plugin ever sees a frame.
IMAGE_FORMATS = ("PNG", "JPEG", "TIFF", "BMP")
_IMAGE_KINDS = "PNG, JPEG, TIFF or BMP image"
#: Modes that hold more than 8 bits per value (grey only: Pillow has no 16-bit colour mode).
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")


def _refuse_lossy_colour(img: Image.Image, name: str) -> None:
    """A PNG or TIFF with 16-bit colour samples (48-bit RGB, 64-bit RGBA, 16-bit grey + alpha).

    Pillow opens them as 8-bit modes and keeps each value's high byte: radiometric values 7000-7300
    all become 27 or 28, a flat frame in which no leak shows. Refused, never degraded.
    """
    if img.format not in ("PNG", "TIFF") or img.mode in _WIDE_MODES:
        return
    if any(";16" in _tile_rawmode(tile) for tile in img.tile):
        raise unreadable(name, f"has 16-bit colour samples (decoded as {img.mode}, they would lose their low byte); "
                         "send 16-bit colour frames as one uint16 T x H x W x 3 .npy (the clip part), or as "
                         "16-bit grey images")


def _tile_rawmode(tile) -> str:
    """The raw mode of one tile of an opened image (its args are the raw mode, or a tuple starting with it)."""
    args = tile.args
    first = args[0] if isinstance(args, tuple) and args else args
    return first if isinstance(first, str) else ""


@contextmanager
def _decoder_errors(name: str, kinds: str):
    """Any failure of a decoder on the sender's bytes is the sender's problem: 400 ``frame_decode_error``.

    Pillow's plugins, zipfile, zlib and numpy's .npy reader raise whatever they meet (NotImplementedError
    for an unknown pixel format or zip method, RuntimeError for an encrypted member, zlib.error,
    struct.error, ...); none of it is the service's fault. Our own InputErrors pass through, and so
    does MemoryError: memory is the server's to provide (the limits keep requests within it).
    """
    try:
        yield
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - see above: every decoder failure, whatever its type
        raise unreadable(name, f"is not a readable {kinds} ({type(exc).__name__}: {str(exc)[:200]})") from exc


#: Bytes per pixel of an opened image's mode as decoded (other modes are converted to RGB).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "RGB": 3, "I": 4, "F": 4}


def image_decoded_bytes(data: bytes) -> int:
    """Decoded bytes of an image file, from its header only (0 when unreadable: decoding reports that)."""
    try:
        with open_image(data, "frame") as img:
            return img.size[0] * img.size[1] * _MODE_BYTES.get(img.mode, 4)
    except InputError:
        return 0


def check_decoded_bytes(frame_bytes: Sequence[int], limits: ClipLimits, field: str = "frames") -> None:
    """The decoded bytes of a clip's frames (from headers) against the request budget ``max_clip_bytes``."""
    if sum(frame_bytes) > limits.max_clip_bytes:
        raise too_many_frames(len(frame_bytes), limits, field, frame_bytes=max(frame_bytes))


def decode_clip_images(files: Sequence[Tuple[str, bytes]], limits: ClipLimits, pool: Optional[Executor] = None,
                       ) -> List[np.ndarray]:
    """A clip sent as image files (name, bytes), in parallel on ``pool`` (Pillow releases the GIL)."""
    if len(files) > limits.max_frames:
        raise too_many_frames(len(files), limits)
    check_decoded_bytes([image_decoded_bytes(data) for _, data in files], limits)
    if pool is None or len(files) < 2:
        return [decode_image_bytes(data, name, limits) for name, data in files]
    return list(pool.map(lambda f: decode_image_bytes(f[1], f[0], limits), files))


# --- .npy / .npz arrays -----------------------------------------------------------------------


def decode_clip_bytes(data: bytes, name: str = "clip", limits: Optional[ClipLimits] = None) -> List[np.ndarray]:
    """Frames of a .npy or .npz clip; header, dtype, rank, count, pixels and length checked before loading."""
    return list(_decode_array(data, name, lambda shape, dtype: check_array_layout(shape, dtype, name, limits)))


def decode_frame_bytes(data: bytes, name: str, limits: Optional[ClipLimits] = None) -> np.ndarray:
    """One frame stored as a .npy or .npz array (H x W or H x W x 3); its layout (and, with ``limits``, its
    size) checked from the header before loading."""
    return _decode_array(data, name, lambda shape, dtype: check_frame_layout(shape, dtype, name, limits))


def _decode_array(data: bytes, name: str, check_layout: Callable[[Tuple[int, ...], np.dtype], None]) -> np.ndarray:
    """A .npy/.npz array whose header passed ``check_layout``, in native byte order.

    numpy allocates the whole array its header announces before reading, so a few bytes
    announcing a huge array are stopped by the header checks.
    """
    with _decoder_errors(name, _ARRAY_KINDS):
        if data[:4] == _ZIP_MAGIC:
            arr = _decode_npz(data, name, check_layout)
        else:
            arr = _decode_npy(data, name, check_layout)
    return arr.astype(arr.dtype.newbyteorder("="), copy=False)  # big-endian files too


_ARRAY_KINDS = ".npy/.npz array"
_ZIP_MAGIC = b"PK\x03\x04"


def _decode_npy(data: bytes, name: str, check_layout: Callable[[Tuple[int, ...], np.dtype], None]) -> np.ndarray:
    fp = io.BytesIO(data)
    shape, dtype = _npy_header(fp)
    check_layout(shape, dtype)
    needed, held = math.prod(shape) * dtype.itemsize, len(data) - fp.tell()
    if held < needed:
        raise unreadable(name, f"is truncated: its header announces {needed} bytes of data, it holds {held}")
    fp.seek(0)
    return np.lib.format.read_array(fp, allow_pickle=False)


def _decode_npz(data: bytes, name: str, check_layout: Callable[[Tuple[int, ...], np.dtype], None]) -> np.ndarray:
    """The one array of a .npz; its directory is checked from the zip's end records before zipfile reads it."""
    check_npz_directory(data, name)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = zf.infolist()
        if len(members) != 1:
            raise _not_one_array(name, len(members))
        member = members[0]
        if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise unreadable(name, f"uses zip compression method {member.compress_type}; a .npz is stored or "
                             "deflated (np.savez, np.savez_compressed)")
        with zf.open(member) as fp:
            check_layout(*_npy_header(fp))
        with zf.open(member) as fp:
            return np.lib.format.read_array(fp, allow_pickle=False)


#: The end-of-central-directory record of a zip, and zip64's locator and record (zipfile's layouts).
_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
#: A one-array .npz's central directory is about 100 bytes; zipfile turns all of it into objects.
MAX_NPZ_DIRECTORY_BYTES = 64 * 1024


def check_npz_directory(data: bytes, name: str) -> None:
    """Refuse a .npz whose end records announce other than one entry, or a large central directory.

    zipfile reads the whole central directory into one ZipInfo per entry before anyone can count
    them (500,000 entries: 2.3 s and 180 MiB), so the count and size are read here first, from the
    same records zipfile trusts.
    """
    entries, directory_bytes = zip_directory_extent(data)
    if entries != 1:
        raise _not_one_array(name, entries)
    if directory_bytes > MAX_NPZ_DIRECTORY_BYTES:
        raise unreadable(name, f"has a zip directory of {directory_bytes} bytes for one array (at most "
                         f"{MAX_NPZ_DIRECTORY_BYTES})")


def _not_one_array(name: str, entries: int) -> InputError:
    return unreadable(name, f"is not a .npz of one array: expected one array in the .npz, found {entries} zip entries")


def zip_directory_extent(data: bytes) -> Tuple[int, int]:
    """(entries, central directory bytes) a zip announces, found as zipfile finds them: the record at the
    very end, else the last one in the final 64 KiB (a comment follows it); zip64's record when present."""
    end = len(data) - _EOCD.size
    if end < 0 or data[end:end + 4] != b"PK\x05\x06":
        end = data.rfind(b"PK\x05\x06", max(0, len(data) - _EOCD.size - 0xFFFF))
    if end < 0 or end + _EOCD.size > len(data):
        raise ValueError("no end-of-central-directory record: not a zip file")
    _, _, _, _, entries, directory_bytes, _, _ = _EOCD.unpack_from(data, end)
    locator = end - _EOCD64_LOCATOR.size
    record = locator - _EOCD64.size
    if locator >= 0 and data[locator:locator + 4] == b"PK\x06\x07" and record >= 0 \
            and data[record:record + 4] == b"PK\x06\x06":
        fields = _EOCD64.unpack_from(data, record)
        entries, directory_bytes = fields[7], fields[8]
    return entries, directory_bytes


def check_array_layout(shape: Tuple[int, ...], dtype: np.dtype, name: str, limits: Optional[ClipLimits]) -> None:
    """A clip array's dtype, rank, frame count and frame size against the limits."""
    _check_dtype(dtype, name)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 3):
        one_frame = " (an H x W array is one frame, not a clip: add a time axis, e.g. arr[None])" if len(shape) == 2 else ""
        raise bad_shape(name, shape, f"T x H x W or T x H x W x 3{one_frame}")
    frames, height, width = shape[:3]
    if limits is None:
        return
    if frames > limits.max_frames:
        raise too_many_frames(frames, limits, name)
    if height * width > limits.max_frame_pixels:
        raise frame_too_large(f"each frame of {name}", width, height, limits, field=name)
    frame_bytes = math.prod(shape[1:]) * np.dtype(dtype).itemsize
    check_decoded_bytes([frame_bytes] * frames, limits, name)


def check_frame_layout(shape: Tuple[int, ...], dtype: np.dtype, name: str,
                       limits: Optional[ClipLimits] = None) -> None:
    """One frame's dtype and rank (H x W or H x W x 3, uint8, uint16 or float32) and, with ``limits``, its size."""
    _check_dtype(dtype, name)
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 3):
        raise bad_shape(name, shape, "H x W or H x W x 3")
    if limits is not None:
        check_array_layout((1, *shape), dtype, name, limits)


def _check_dtype(dtype: np.dtype, name: str) -> None:
    if np.dtype(dtype).newbyteorder("=") not in SUPPORTED_DTYPES:
        raise bad_dtype(name, dtype)


def _npy_header(fp) -> Tuple[Tuple[int, ...], np.dtype]:
    major, _ = np.lib.format.read_magic(fp)
    read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
    shape, _, dtype = read(fp)
    return tuple(int(s) for s in shape), np.dtype(dtype)


# --- a clip as a whole ------------------------------------------------------------------------


def check_clip(frames: Sequence[np.ndarray], limits: ClipLimits, names: Optional[Sequence[str]] = None) -> None:
    """Count, dtype, shape, finiteness, the pixel limit and one size for all; InputError names the frame."""
    if len(frames) == 0:
        raise InputError(ErrorCode.NO_FRAMES, "the request holds no frames", "frames")
    if len(frames) < limits.min_frames:
        raise InputError(
            ErrorCode.TOO_FEW_FRAMES,
            f"a clip needs at least {limits.min_frames} frames (each frame is segmented with its two "
            f"neighbours), got {len(frames)}", "frames")
    if len(frames) > limits.max_frames:
        raise too_many_frames(len(frames), limits)
    names = list(names) if names is not None else [f"frame {i}" for i in range(len(frames))]
    size = frames[0].shape[:2]
    for name, frame in zip(names, frames):
        check_frame(frame, name)
        if frame.shape[0] * frame.shape[1] > limits.max_frame_pixels:
            raise frame_too_large(name, frame.shape[1], frame.shape[0], limits)
        if frame.shape[:2] != size:
            raise InputError(
                ErrorCode.FRAME_SIZE_MISMATCH,
                f"{name} is {frame.shape[1]}x{frame.shape[0]} but {names[0]} is {size[1]}x{size[0]}; "
                "all frames of a clip must have one size", name)


def check_frame(frame: np.ndarray, name: str) -> None:
    """One decoded frame: its layout, at least one pixel, and finite values."""
    check_frame_layout(frame.shape, frame.dtype, name)
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise bad_shape(name, frame.shape, "a frame of at least 1 x 1 pixels")
    if frame.dtype.kind == "f" and not np.isfinite(frame).all():
        raise unreadable(name, "contains NaN or infinite values")


def to_uint8_clip(frames: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The clip in 8 bits: uint8 frames unchanged, anything else by the clip-level stretch.

    Percentiles come from the clip's finite values; NaN and -inf map to 0 and +inf to 255 (the
    service refuses non-finite frames before this; overlays of arbitrary arrays rely on it).
    """
    if all(f.dtype == np.uint8 for f in frames):
        return list(frames)
    # The percentiles come from the whole clip at once (all dtypes promoted to float32), in one
    # float32 buffer partitioned in place; each frame's float32 copy exists only while it is mapped.
    # (Peak memory: the frames, plus 4 bytes per value once; not the 3 copies a plain concatenate
    # and np.percentile would take: 3 GiB instead of 6 for the largest 16-bit RGB clip.)
    sample = np.empty(sum(f.size for f in frames), np.float32)
    start = 0
    for f in frames:
        sample[start:start + f.size] = f.ravel()
        start += f.size
    finite = np.isfinite(sample)
    if not finite.all():
        sample = sample[finite]
    del finite
    lo, hi = np.percentile(sample, STRETCH_PERCENTILES, overwrite_input=True) if sample.size else (0.0, 0.0)
    del sample
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return [
        np.clip(np.rint(np.nan_to_num((f.astype(np.float32, copy=False) - lo) * scale, nan=0.0, posinf=255.0,
                                      neginf=0.0)), 0, 255).astype(np.uint8)
        for f in frames
    ]
