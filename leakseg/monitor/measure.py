"""From a window's ClipResult to per-frame :class:`Observation` s, after the ignore mask."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import numpy as np

from leakseg.io.frames import ClipLimits, read_image_file
from leakseg.monitor.alarm import Observation
from leakseg.monitor.config import CameraConfig
from leakseg.monitor.windows import Window
from leakseg.monitor.zones import IgnoreMask
from leakseg.schema import ClipResult


def load_ignore_mask(path: Optional[Path]) -> Optional[np.ndarray]:
    """A boolean H x W array, True where pixels are ignored (non-zero pixels of the image)."""
    if path is None:
        return None
    arr = read_image_file(path, ClipLimits())  # the documented formats only: no other Pillow plugin runs
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return arr > 0


def camera_ignore_mask(camera: CameraConfig) -> Optional[IgnoreMask]:
    """The camera's ignore_mask image and zones together, or None when it ignores nothing."""
    if camera.ignore_mask is None and camera.zones is None:
        return None
    return IgnoreMask(camera.name, load_ignore_mask(camera.ignore_mask), camera.zones)


def observations(window: Window, result: ClipResult, ignore: Optional[IgnoreMask],
                 masks: np.ndarray) -> List[Observation]:
    """One observation per *reported* frame of the window (``window.reported``).

    ``ignore``: the camera's :class:`IgnoreMask` (None: nothing ignored); ValueError when it does not fit
    the frames. ``result`` and ``masks``: the answer for the reported frames, in order (F x H x W masks, already
    checked and decoded: :func:`leakseg.monitor.segmenters.segment_window` does that once per answer)."""
    h, w = masks.shape[1:]
    if ignore is not None:
        masks = masks & ~ignore.for_frame(h, w)
    out = []
    pixels = float(h * w)
    for i, frame in enumerate(window.reported):
        m = masks[i]
        area = int(m.sum())
        bbox = centroid = None
        if area:
            ys, xs = np.nonzero(m)
            bbox = (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))
            centroid = (float(xs.mean()), float(ys.mean()))
        out.append(Observation(seq=frame.seq, time=frame.arrived, area_pixels=area, area_fraction=area / pixels,
                               score=float(result.frames[i].max_score), bbox=bbox, centroid=centroid))
    return out
