"""COCO compressed RLE in pure numpy (no pycocotools), as ``pycocotools.mask`` writes and reads it.

Runs are counted over the mask in column-major (Fortran) order, starting with a run of zeros.
The counts string stores each count (minus the count two places earlier, from the third on)
as little-endian groups of 5 bits, each offset by 48 into printable ASCII, with bit 0x20
marking "more groups follow" and bit 0x10 of the last group carrying the sign.
"""

from __future__ import annotations

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


def decode_rle(rle: RLE) -> np.ndarray:
    """The boolean H x W mask of a COCO RLE (compressed string or uncompressed list counts)."""
    h, w = (int(v) for v in rle["size"])
    raw = rle["counts"]
    if isinstance(raw, (bytes, str)):
        counts = string_to_counts(raw.decode("ascii") if isinstance(raw, bytes) else raw)
    else:
        counts = np.asarray(raw, dtype=np.int64)
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts sum to {int(counts.sum())}, expected {h * w} for size {[h, w]}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape(w, h).T.copy()
