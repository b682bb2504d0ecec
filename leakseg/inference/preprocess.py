"""Pre-processing as the research code does it: RGB, PIL bilinear resize, ImageNet normalisation."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def preprocess_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """One uint8 frame (H x W or H x W x 3) -> 3 x size x size float32, normalised."""
    img = Image.fromarray(frame)
    img = img.convert("RGB")  # grey frames are repeated to 3 channels
    img = img.resize((size, size), Image.BILINEAR)  # antialiased, as the reference
    x = np.asarray(img, dtype=np.float32) / 255.0
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def preprocess_clip(frames: Sequence[np.ndarray], size: int, pool: Optional[ThreadPoolExecutor] = None) -> np.ndarray:
    """T uint8 frames -> (T, 3, size, size). PIL releases the GIL, so a thread pool helps."""
    if pool is None:
        out = [preprocess_frame(f, size) for f in frames]
    else:
        out = list(pool.map(lambda f: preprocess_frame(f, size), frames))
    return np.stack(out).astype(np.float32, copy=False)
