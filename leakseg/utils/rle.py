"""COCO compressed RLE in pure numpy (no pycocotools), as ``pycocotools.mask`` writes and reads it.

Runs are counted over the mask in column-major (Fortran) order, starting with a run of zeros.
The counts string stores each count (minus the count two places earlier, from the third on)
as little-endian groups of 5 bits, each offset by 48 into printable ASCII, with bit 0x20
marking "more groups follow" and bit 0x10 of the last group carrying the sign.
"""

from __future__ import annotations

import re
from typing import Dict, List, Union

import numpy as np

RLE = Dict[str, Union[List[int], str]]


def mask_to_counts(mask: np.ndarray) -> np.ndarray:
    """Run lengths of a 2-D mask in column-major order, the first run counting zeros."""
    flat = np.asarray(mask, dtype=bool).T.ravel()
    if flat.size == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(edges)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts.astype(np.int64)


def counts_to_string(counts: np.ndarray) -> str:
    out = bytearray()
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5  # arithmetic shift: negative deltas end at -1
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(c + 48)
    return out.decode("ascii")


def string_to_counts(s: str) -> np.ndarray:
    counts: List[int] = []
    data = s.encode("ascii")
    p = 0
    while p < len(data):
        x = 0
        k = 0
        more = True
        while more:
            c = data[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return np.asarray(counts, dtype=np.int64)


def encode_rle(mask: np.ndarray) -> Dict[str, object]:
    """A 2-D mask as ``{"size": [h, w], "counts": str}`` (COCO compressed RLE)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {mask.shape}")
    h, w = mask.shape
    return {"size": [int(h), int(w)], "counts": counts_to_string(mask_to_counts(mask))}


def checked_counts(text: str, pixels: int) -> np.ndarray:
    """The run lengths of a COCO counts string, checked to describe exactly ``pixels`` pixels.

    A ValueError for anything else, before it is decoded: a string from a proxy, another model version
    or a broken peer must never become an IndexError, a negative run or a huge array."""
    # Each character is at most one run, and a run needs at most 7 characters (35 bits, > any frame):
    # longer strings or groups cannot describe a frame.
    if not isinstance(text, str) or len(text) > pixels + 1 or not _COUNTS_TEXT.fullmatch(text):
        raise ValueError(f"not a COCO counts string of a {pixels}-pixel mask")
    counts = string_to_counts(text)
    if (counts < 0).any() or int(counts.sum()) != pixels:
        raise ValueError(f"RLE counts sum to {int(counts.sum())} (negative runs refused), expected {pixels} pixels")
    return counts


#: Groups of 5-bit digits ('0'..'o', bit 0x20 = more follow): 0-6 continued characters, then a last one.
_COUNTS_TEXT = re.compile(r"(?:[P-o]{0,6}[0-O])*")


def decode_rle(rle: RLE) -> np.ndarray:
    """The boolean H x W mask of a COCO RLE (compressed string or uncompressed list counts); a ValueError
    for counts that do not describe exactly H x W pixels."""
    h, w = (int(v) for v in rle["size"])
    if h < 0 or w < 0:
        raise ValueError(f"RLE size {[h, w]} is negative")
    raw = rle["counts"]
    if isinstance(raw, (bytes, str)):
        counts = checked_counts(raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw, h * w)
    else:
        counts = np.asarray(raw, dtype=np.int64)
    if (counts < 0).any() or counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h * w} for size {[h, w]}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T.copy()
