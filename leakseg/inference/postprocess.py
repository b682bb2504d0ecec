"""Post-processing as the authors evaluate, vectorised in torch on the model's device.

logits -> bilinear resize to H x W -> sigmoid -> per-frame min-max (or absolute) -> threshold
-> morphological opening with an elliptical kernel, bit-exact with OpenCV (the image border
never erodes or dilates anything) -> per-frame facts (area, box, centroid, highest score).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from leakseg.schema import ClipOptions


@lru_cache(maxsize=32)
def ellipse_kernel(size: int) -> np.ndarray:
    """``cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))``, reimplemented."""
    r = c = size // 2
    inv_r2 = 1.0 / (r * r) if r else 0.0
    kernel = np.zeros((size, size), dtype=np.uint8)
    for i in range(size):
        dy = i - r
        if abs(dy) <= r:
            dx = int(np.rint(c * np.sqrt((r * r - dy * dy) * inv_r2)))
            kernel[i, max(c - dx, 0) : min(c + dx + 1, size)] = 1
    return kernel


def _count_under_kernel(mask: torch.Tensor, kernel: torch.Tensor, border: float) -> torch.Tensor:
    pad = kernel.shape[-1] // 2
    padded = F.pad(mask, (pad, pad, pad, pad), value=border)
    return F.conv2d(padded, kernel)


def open_mask(mask: torch.Tensor, size: int = 9) -> torch.Tensor:
    """Opening (erosion, then dilation) of boolean masks (T, H, W) with an ellipse of ``size``.

    Counts under the kernel are small integers, exact in float32, so erosion is "all kernel
    pixels set" and dilation "any set". Padding with 1 (erosion) and 0 (dilation) is OpenCV's
    default border: pixels outside the image never erode or dilate anything.
    """
    if size <= 1:
        return mask
    kernel = torch.from_numpy(ellipse_kernel(size)).to(device=mask.device, dtype=torch.float32)[None, None]
    full = kernel.sum()
    x = mask[:, None].to(torch.float32)
    eroded = (_count_under_kernel(x, kernel, 1.0) == full).to(torch.float32)
    return (_count_under_kernel(eroded, kernel, 0.0) > 0)[:, 0]


@dataclass
class FrameFacts:
    """Post-processed clip on the CPU: masks and per-frame facts as numpy arrays."""

    masks: np.ndarray  # (T, H, W) bool
    area: np.ndarray  # (T,) int
    bbox: np.ndarray  # (T, 4) x, y, w, h (zeros where empty)
    centroid: np.ndarray  # (T, 2) x, y
    max_score: np.ndarray  # (T,) float
    probability: Optional[np.ndarray]  # (T, s, s) uint8 or None


def _boxes(mask: torch.Tensor):
    t, h, w = mask.shape
    rows = mask.any(dim=2)
    cols = mask.any(dim=1)
    ys = torch.arange(h, device=mask.device)
    xs = torch.arange(w, device=mask.device)
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1)
    bbox = torch.stack([x0, y0, x1 - x0 + 1, y1 - y0 + 1], dim=1)
    bbox[~rows.any(1)] = 0
    area = mask.sum(dim=(1, 2))
    m = mask.to(torch.float32)
    safe = area.clamp(min=1).to(torch.float32)
    cx = (m.sum(1) * xs.to(torch.float32)).sum(1) / safe
    cy = (m.sum(2) * ys.to(torch.float32)).sum(1) / safe
    return area, bbox, torch.stack([cx, cy], dim=1)


@torch.no_grad()
def score_map(logits: torch.Tensor, height: int, width: int, normalization: str):
    """(T, 1, S, S) logits -> (the (T, H, W) map the threshold applies to, each frame's highest probability):
    the sigmoid of the logits resized to the frame, min-max normalised per frame or used as is."""
    prob = torch.sigmoid(F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False))[:, 0]
    max_score = prob.amax(dim=(1, 2))
    if normalization == "minmax":
        lo = prob.amin(dim=(1, 2), keepdim=True)
        return (prob - lo) / (max_score[:, None, None] - lo + 1e-8), max_score
    return prob, max_score


def postprocess(logits: torch.Tensor, height: int, width: int, options: ClipOptions) -> FrameFacts:
    """(T, 1, S, S) logits of one clip -> masks of the frames' size and their facts."""
    logits = logits.to(torch.float32)
    score, max_score = score_map(logits, height, width, options.normalization)
    mask = open_mask(score > options.threshold, options.opening_kernel)
    area, bbox, centroid = _boxes(mask)
    probability = None
    if options.return_probabilities:
        s = options.probability_size
        small = torch.sigmoid(F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False))[:, 0]
        probability = (small * 255.0).round().to(torch.uint8).cpu().numpy()
    return FrameFacts(
        masks=mask.cpu().numpy(),
        area=area.cpu().numpy(),
        bbox=bbox.cpu().numpy(),
        centroid=centroid.cpu().numpy(),
        max_score=max_score.cpu().numpy(),
        probability=probability,
    )
