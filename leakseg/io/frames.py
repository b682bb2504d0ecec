"""Frames in: the only code that turns bytes, files, folders and arrays into frames.

Every caller goes through here: the TorchServe handler and the KServe runtime (request bytes),
`leakseg predict` and the dataset reader behind `leakseg evaluate` and `leakseg train` (files),
the client and the overlays (paths, folders, arrays). So a frame is read the same way wherever
it comes from:

* image files (PNG, JPEG, TIFF, BMP): grey stays H x W, colour becomes H x W x 3 RGB; 16-bit
  grey is uint16 (also when Pillow opens it as 32-bit mode "I" and the values fit 16 bits,
  float32 otherwise); mode "F" is float32;
* ``.npy``/``.npz`` clips: T x H x W or T x H x W x 3, uint8, uint16 or float32, never pickled;
* limits (frame count, pixels per frame) are checked from the file headers before any pixel is
  decoded, so a decompression bomb or a lying .npy header costs nothing.

The model was trained on 8-bit frames. 16-bit and float frames (radiometric IR) are mapped by
ONE rule applied to the whole clip (:func:`to_uint8_clip`), so every frame of a clip keeps the same
scale: a percentile stretch, (x - p0.5) / (p99.5 - p0.5) over all pixels of the clip, clipped to
[0, 1] and scaled to 0..255 (rounded). A clip with p99.5 == p0.5 maps to zeros. 8-bit frames are
used as they are.

Only numpy, Pillow and pydantic are imported: the thin client uses this module too.
"""

from __future__ import annotations

import io
import re
import zipfile
from concurrent.futures import Executor
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

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
    return unreadable(name, f"has dtype {dtype}; use uint8, uint16 or float32")


def bad_shape(name: str, shape, expected: str) -> InputError:
    return unreadable(name, f"has shape {tuple(shape)}; expected {expected}")


# --- files and folders ------------------------------------------------------------------------


def natural_key(path: Path) -> list:
    """Sort key for file names with numbers in them: frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_image_files(folder: PathLike) -> List[Path]:
    """Image files (PNG, JPEG, TIFF, BMP) in a folder, in natural order; [] for a missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=natural_key)


def read_image(path: PathLike, limits: Optional[ClipLimits] = None) -> np.ndarray:
    """One image file's pixels, exactly as the service decodes them."""
    return decode_image(Path(path).read_bytes(), str(path), limits)


def read_frames(paths: Union[PathLike, Sequence[PathLike]], limits: Optional[ClipLimits] = None,
                ) -> Tuple[List[np.ndarray], List[str]]:
    """Frames and their names from image files, one folder of them, or one .npy/.npz clip."""
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        paths = list_image_files(folder)
        if not paths:
            raise ValueError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {folder}")
    if len(paths) == 1 and paths[0].suffix.lower() in CLIP_SUFFIXES:
        frames = decode_clip_array(paths[0].read_bytes(), paths[0].name, limits)
        return frames, [f"{paths[0].name}[{i}]" for i in range(len(frames))]
    for p in paths:
        if p.is_dir() or p.suffix.lower() in CLIP_SUFFIXES:
            raise ValueError(f"{p}: a folder or .npy/.npz clip must be passed on its own, not in a list")
    if limits is not None and len(paths) > limits.max_frames:
        raise too_many_frames(len(paths), limits)
    return [read_image(p, limits) for p in paths], [str(p) for p in paths]


def load_clip(frames) -> np.ndarray:
    """Any accepted input as one T x H x W [x 3] array (keeps uint16/float32): a T x H x W [x 3] array,
    a path (image file, folder of them, .npy/.npz), a PIL image, or a list of arrays, images or paths."""
    if isinstance(frames, np.ndarray):
        return frames if frames.ndim in (3, 4) else stack_frames([frames])
    if isinstance(frames, Image.Image):
        return stack_frames([image_to_array(frames)])
    if isinstance(frames, (str, Path)) or hasattr(frames, "__fspath__"):
        return stack_frames(read_frames(Path(frames))[0])
    items = list(frames)
    if items and all(isinstance(f, Image.Image) for f in items):
        return stack_frames([image_to_array(f) for f in items])
    if items and all(isinstance(f, np.ndarray) for f in items):
        return stack_frames(items)
    return stack_frames(read_frames([Path(f) for f in items])[0])


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


def decode_image(data: bytes, name: str, limits: Optional[ClipLimits] = None) -> np.ndarray:
    """An image file's pixels; with ``limits``, an oversized frame is refused from its header."""
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # Pillow refuses > ~179 Mpx already when opening
        limit = limits.max_frame_pixels if limits is not None else ClipLimits().max_frame_pixels
        raise InputError(ErrorCode.FRAME_TOO_LARGE, f"{name}: {str(exc)[:200]}; the limit is {limit} pixels per frame",
                         name) from exc
    except _DECODE_ERRORS as exc:
        raise _not_an_image(name, exc) from exc
    with img:
        if limits is not None and img.size[0] * img.size[1] > limits.max_frame_pixels:
            raise frame_too_large(name, *img.size, limits)
        try:
            img.load()
            return image_to_array(img)
        except _DECODE_ERRORS as exc:
            raise _not_an_image(name, exc) from exc


_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
#: Bytes per pixel of an opened image's mode as decoded (other modes are converted to RGB).
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "LA": 2, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "RGB": 3, "I": 4, "F": 4}


def image_bytes(data: bytes) -> int:
    """Decoded bytes of an image file, from its header only (0 when unreadable: decoding reports that)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.size[0] * img.size[1] * _MODE_BYTES.get(img.mode, 4)
    except _DECODE_ERRORS:
        return 0


def check_decoded_bytes(frame_bytes: Sequence[int], limits: ClipLimits, field: str = "frames") -> None:
    """The decoded bytes of a clip's frames (from headers) against the request budget ``max_clip_bytes``."""
    if sum(frame_bytes) > limits.max_clip_bytes:
        raise too_many_frames(len(frame_bytes), limits, field, frame_bytes=max(frame_bytes))


def _not_an_image(name: str, exc: Exception) -> InputError:
    return unreadable(name, f"is not a readable PNG, JPEG, TIFF or BMP image ({type(exc).__name__}: {str(exc)[:200]})")


def decode_images(files: Sequence[Tuple[str, bytes]], limits: ClipLimits, pool: Optional[Executor] = None,
                  ) -> List[np.ndarray]:
    """Several image files (name, bytes), in parallel on ``pool`` (Pillow releases the GIL)."""
    if len(files) > limits.max_frames:
        raise too_many_frames(len(files), limits)
    check_decoded_bytes([image_bytes(data) for _, data in files], limits)
    if pool is None or len(files) < 2:
        return [decode_image(data, name, limits) for name, data in files]
    return list(pool.map(lambda f: decode_image(f[1], f[0], limits), files))


# --- .npy / .npz clips ------------------------------------------------------------------------


def decode_clip_array(data: bytes, name: str = "clip", limits: Optional[ClipLimits] = None) -> List[np.ndarray]:
    """Frames of a .npy or .npz clip; header, dtype, rank, count, pixels and length checked before loading.

    ``np.load`` allocates the whole array its header announces before reading, so a few bytes
    announcing a huge array are stopped by the header checks.
    """
    try:
        shape, dtype, payload, member = _array_header(data)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise unreadable(name, f"is not a readable .npy/.npz array: {str(exc)[:200]}") from exc
    check_array_layout(shape, dtype, name, limits)
    needed = int(np.prod(shape)) * dtype.itemsize
    if payload is not None and payload < needed:
        raise unreadable(name, f"is truncated: its header announces {needed} bytes of data, it holds {payload}")
    try:
        if member is None:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arr = npz[member]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise unreadable(name, f"is not a readable .npy/.npz array: {str(exc)[:200]}") from exc
    return list(arr.astype(arr.dtype.newbyteorder("="), copy=False))  # big-endian files too


def check_array_layout(shape: Tuple[int, ...], dtype: np.dtype, name: str, limits: Optional[ClipLimits]) -> None:
    """A clip array's dtype, rank, frame count and frame size against the limits."""
    if np.dtype(dtype).newbyteorder("=") not in SUPPORTED_DTYPES:
        raise bad_dtype(name, dtype)
    if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] != 3):
        raise bad_shape(name, shape, "T x H x W or T x H x W x 3")
    frames, height, width = shape[:3]
    if limits is None:
        return
    if frames > limits.max_frames:
        raise too_many_frames(frames, limits, name)
    if height * width > limits.max_frame_pixels:
        raise frame_too_large(f"each frame of {name}", width, height, limits, field=name)
    frame_bytes = int(np.prod(shape[1:])) * np.dtype(dtype).itemsize
    check_decoded_bytes([frame_bytes] * frames, limits, name)


def _array_header(data: bytes) -> Tuple[Tuple[int, ...], np.dtype, Optional[int], Optional[str]]:
    """(shape, dtype, bytes of data after the header or None when zipped, the .npz member or None)."""
    if data[:4] == b"PK\x03\x04":  # .npz is a zip
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            members = zf.namelist()
            if len(members) != 1:
                raise ValueError(f"expected one array in the .npz, found {len(members)}")
            with zf.open(members[0]) as fp:
                shape, dtype = _npy_header(fp)
        return shape, dtype, None, members[0][:-4] if members[0].endswith(".npy") else members[0]
    fp = io.BytesIO(data)
    shape, dtype = _npy_header(fp)
    return shape, dtype, len(data) - fp.tell(), None


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
    if frame.dtype not in SUPPORTED_DTYPES:
        raise bad_dtype(name, frame.dtype)
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise bad_shape(name, frame.shape, "H x W or H x W x 3")
    if frame.shape[0] == 0 or frame.shape[1] == 0:
        raise bad_shape(name, frame.shape, "a frame of at least 1 x 1 pixels")
    if frame.dtype == np.float32 and not np.isfinite(frame).all():
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
