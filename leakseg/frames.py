"""Frames in: decoding image files and .npy/.npz clips, and the clip-level mapping to 8 bits.

The model was trained on 8-bit frames. 16-bit and float frames (radiometric IR) are mapped by
ONE rule applied to the whole clip, so every frame of a clip keeps the same scale:
a percentile stretch, (x - p0.5) / (p99.5 - p0.5) over all pixels of the clip, clipped to
[0, 1] and scaled to 0..255 (rounded). A clip with p99.5 == p0.5 maps to zeros. 8-bit frames
are used as they are. Only numpy and Pillow are needed here.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from leakseg.errors import InputError
from leakseg.schema import ErrorCode

#: The percentiles of the clip-level stretch for 16-bit and float input.
STRETCH_PERCENTILES = (0.5, 99.5)
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.float32)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def natural_key(path: Path) -> list:
    """Sort key for file names with numbers in them: frame2 before frame10."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_image_files(folder: Union[str, Path]) -> List[Path]:
    """Image files (PNG, JPEG, TIFF, BMP) in a folder, in natural order; [] for a missing folder."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    return sorted(files, key=natural_key)


def _image_to_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.uint16)
    if img.mode == "I":  # 16-bit PNGs often open as 32-bit int
        arr = np.asarray(img)
        return arr.astype(np.uint16) if arr.min() >= 0 and arr.max() <= 65535 else arr.astype(np.float32)
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)
    if img.mode in ("L", "RGB"):
        return np.asarray(img)
    return np.asarray(img.convert("RGB"))


def decode_image(data: bytes, field: str) -> np.ndarray:
    """An image file's pixels: H x W (grey) or H x W x 3, uint8/uint16/float32."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return _image_to_array(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise InputError(
            ErrorCode.FRAME_DECODE_ERROR,
            f"{field} is not a readable PNG, JPEG, TIFF or BMP image ({type(exc).__name__}: {exc})",
            field,
        ) from exc


def decode_clip_array(data: bytes, field: str = "clip") -> List[np.ndarray]:
    """Frames of a .npy or .npz clip (T x H x W or T x H x W x 3; uint8, uint16 or float32)."""
    try:
        if data[:4] == b"PK\x03\x04":  # .npz is a zip
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                if len(npz.files) != 1:
                    raise ValueError(f"expected one array in the .npz, found {npz.files}")
                arr = npz[npz.files[0]]
        else:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"{field} is not a readable .npy/.npz array: {exc}", field) from exc
    if arr.dtype not in SUPPORTED_DTYPES:
        raise InputError(
            ErrorCode.FRAME_DECODE_ERROR, f"{field} has dtype {arr.dtype}; use uint8, uint16 or float32", field
        )
    if arr.ndim not in (3, 4) or (arr.ndim == 4 and arr.shape[-1] != 3):
        raise InputError(
            ErrorCode.FRAME_DECODE_ERROR, f"{field} has shape {arr.shape}; expected T x H x W or T x H x W x 3", field
        )
    return list(arr)


def check_frame(frame: np.ndarray, field: str) -> None:
    if frame.dtype not in SUPPORTED_DTYPES:
        raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"{field} has unsupported dtype {frame.dtype}", field)
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"{field} has shape {frame.shape}; expected H x W or H x W x 3", field)
    if frame.dtype == np.float32 and not np.isfinite(frame).all():
        raise InputError(ErrorCode.FRAME_DECODE_ERROR, f"{field} contains NaN or infinite values", field)


def to_uint8_clip(frames: Sequence[np.ndarray]) -> List[np.ndarray]:
    """The clip in 8 bits: uint8 frames unchanged, anything else by the clip-level stretch.

    Percentiles come from the clip's finite values; NaN and -inf map to 0 and +inf to 255 (the
    service refuses non-finite frames before this; overlays of arbitrary arrays rely on it).
    """
    if all(f.dtype == np.uint8 for f in frames):
        return list(frames)
    # The percentiles come from the whole clip at once (all dtypes promoted to float32).
    stack = [f.astype(np.float32, copy=False) for f in frames]
    sample = np.concatenate([s.ravel() for s in stack])
    sample = sample[np.isfinite(sample)]
    lo, hi = np.percentile(sample, STRETCH_PERCENTILES) if sample.size else (0.0, 0.0)
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    return [
        np.clip(np.rint(np.nan_to_num((s - lo) * scale, nan=0.0, posinf=255.0, neginf=0.0)), 0, 255).astype(np.uint8)
        for s in stack
    ]
