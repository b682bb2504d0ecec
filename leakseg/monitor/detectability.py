"""Can this camera see gas at all? A cheap check of the picture of every analysed window.

A camera whose stream is fine can still be blind to gas: fog or rain on the window, a defocused lens, an
obstruction, a scene without thermal contrast. It keeps delivering frames, and without this check it keeps
reporting NORMAL. :func:`measure_window` measures a few of a window's frames (uint8 RGB H x W x 3, uint8 or
uint16 H x W; other pixel types are not judged) and :class:`PictureCheck` turns the measurements into a
verdict for :meth:`leakseg.monitor.alarm.AlarmLogic.set_degraded` (source :data:`SOURCE`).

A window fails, with this reason (thresholds: :class:`~leakseg.monitor.config.DetectabilitySettings`):

* ``flat picture``: the robust spread (p99 - p1 of the grey level, in the frame's units) is at most
  ``flat_contrast_uint8`` / ``_uint16`` (a lens cap, a dead sensor, a blank feed);
* ``low contrast``: the spread is below ``min_contrast_uint8`` / ``_uint16`` (fog, no thermal contrast);
* ``saturated``: more than ``max_saturated_fraction`` of the pixels sit at the pixel type's minimum or
  maximum (clipped: gas in front of them changes nothing);
* ``blurred``: the sharpness is below ``min_sharpness_ratio`` of the camera's own reference (defocus, water
  or dirt on the window). Sharpness is the mean squared difference between neighbouring pixels divided by
  the spread squared, so the camera's gain and AGC do not move it; the reference is the median sharpness of
  the camera's first ``reference_windows`` windows that pass the other checks, learned again after a restart,
  a change of frame size or :meth:`PictureCheck.relearn` (or fixed with ``sharpness_reference``). Until it is
  learned, blur is not judged.

Hysteresis: DEGRADED after ``bad_windows`` failing windows in a row, over after ``good_windows`` passing ones.
Frozen frames are the sources' CAMERA_FAULT (leakseg/monitor/sources.py), not a reason here.

Cost: at most :data:`SAMPLED_FRAMES` frames per window, each on a grid of at most about :data:`SAMPLED_PIXELS`
pixels (every s-th row and column, with each sampled pixel's right and lower neighbour for the gradient), so a
1080p RGB window costs a few milliseconds. It runs in the worker thread that calls the model
(:func:`leakseg.monitor.segmenters.segment_window`), never on the monitor's loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from leakseg.monitor.config import DetectabilitySettings

#: Who says "degraded" in :meth:`~leakseg.monitor.alarm.AlarmLogic.set_degraded`.
SOURCE = "picture"
#: Frames measured per window (evenly spread over it, first and last included).
SAMPLED_FRAMES = 3
#: Pixels measured per frame, about.
SAMPLED_PIXELS = 65536
#: The pixel types judged, with their units in reasons.
UNITS = {"uint8": "grey levels", "uint16": "counts"}


@dataclass(frozen=True)
class PictureMetrics:
    """What one window's picture looks like (medians over its sampled frames)."""

    dtype: str  # "uint8" or "uint16"
    shape: Tuple[int, int]  # H, W of the frames
    spread: float  # p99 - p1 of the grey level, in the frame's units
    sharpness: float  # mean squared neighbour difference / spread**2 (0 for a flat picture)
    saturated: float  # fraction of the pixels at the pixel type's minimum or maximum

    @property
    def spread_fraction(self) -> float:
        """The spread relative to the pixel type's whole range."""
        return self.spread / np.iinfo(self.dtype).max


def measure_window(frames: Sequence[np.ndarray]) -> Optional[PictureMetrics]:
    """The picture of a window, from :data:`SAMPLED_FRAMES` of its frames; None when its pixel type is not judged."""
    if len(frames) == 0 or frames[0].dtype.name not in UNITS:
        return None
    picks = sorted({round(i * (len(frames) - 1) / max(SAMPLED_FRAMES - 1, 1)) for i in range(SAMPLED_FRAMES)})
    measured = [_measure_frame(frames[i]) for i in picks]
    spread, sharpness, saturated = (float(np.median(column)) for column in zip(*measured))
    return PictureMetrics(frames[0].dtype.name, tuple(frames[0].shape[:2]), spread, sharpness, saturated)


def _measure_frame(pixels: np.ndarray) -> Tuple[float, float, float]:
    """(spread, sharpness, saturated fraction) of one frame, on a sparse grid of pixels and their neighbours."""
    height, width = pixels.shape[:2]
    step = max(1, math.ceil(math.sqrt(height * width / SAMPLED_PIXELS)))
    here = grey_levels(pixels[0:height - 1:step, 0:width - 1:step])
    right = grey_levels(pixels[0:height - 1:step, 1:width:step])
    below = grey_levels(pixels[1:height:step, 0:width - 1:step])
    low, high = np.percentile(here, [1, 99])
    spread = float(high - low)
    energy = float(np.mean((right - here) ** 2) + np.mean((below - here) ** 2))
    sharpness = energy / spread ** 2 if spread > 0 else 0.0
    top = np.iinfo(pixels.dtype).max
    saturated = float(np.mean((here <= 0) | (here >= top)))
    return spread, sharpness, saturated


def grey_levels(pixels: np.ndarray) -> np.ndarray:
    """float32 grey level: an RGB pixel is the mean of its channels (at an extreme only when all three are)."""
    if pixels.ndim == 3:
        return pixels.mean(axis=2, dtype=np.float32)
    return pixels.astype(np.float32)


class PictureCheck:
    """One camera's picture verdict: what fails in each window, the sharpness reference, the hysteresis.

    :meth:`judge` takes each window's :class:`PictureMetrics` (in stream order) and returns the camera's
    verdict: the reason it cannot see gas while DEGRADED, else None."""

    def __init__(self, settings: DetectabilitySettings):
        self.settings = settings
        self.reference: Optional[float] = settings.sharpness_reference
        self.reference_shape: Optional[Tuple[int, int]] = None
        self.samples: List[float] = []  # passing windows' sharpness while the reference is learned
        self.failing = 0  # failing windows in a row
        self.passing = 0  # passing windows in a row
        self.verdict: Optional[str] = None  # the reason while DEGRADED

    @property
    def degraded(self) -> bool:
        return self.verdict is not None

    def relearn(self) -> None:
        """Forget the learned sharpness reference: the next passing windows teach it again (after a lens was
        cleaned or the camera re-aimed). A configured ``sharpness_reference`` stays."""
        self.reference, self.reference_shape, self.samples = self.settings.sharpness_reference, None, []

    def judge(self, metrics: PictureMetrics) -> Optional[str]:
        """Count the window in; the camera's verdict after it."""
        if metrics.shape != self.reference_shape:  # another resolution is another picture
            self.relearn()
            self.reference_shape = metrics.shape
        problems = self.problems(metrics)
        if not problems:
            self._learn(metrics.sharpness)
        self._count(problems)
        return self.verdict

    def problems(self, metrics: PictureMetrics) -> List[str]:
        """Why this window's picture cannot show gas (empty when it can)."""
        s = self.settings
        units = UNITS[metrics.dtype]
        flat, low = s.contrast_levels(metrics.dtype)
        contrast = f"p99-p1 {metrics.spread:.0f} {units} ({metrics.spread_fraction:.1%} of the range)"
        problems = []
        if metrics.saturated > s.max_saturated_fraction:
            problems.append(f"saturated: {metrics.saturated:.0%} of the pixels at the minimum or maximum "
                            f"(limit {s.max_saturated_fraction:.0%})")
        if metrics.spread <= flat:
            return problems + [f"flat picture: {contrast}, limit {flat:g}"]
        if metrics.spread < low:
            problems.append(f"low contrast: {contrast}, below {low:g}")
        ratio = self.sharpness_ratio(metrics)
        if ratio is not None and ratio < s.min_sharpness_ratio:
            problems.append(f"blurred: sharpness {ratio:.2f} of the camera's reference (limit {s.min_sharpness_ratio:g})")
        return problems

    def sharpness_ratio(self, metrics: PictureMetrics) -> Optional[float]:
        """The window's sharpness relative to the reference (None while it is learned)."""
        return metrics.sharpness / self.reference if self.reference else None

    def _learn(self, sharpness: float) -> None:
        if self.reference is not None:
            return
        self.samples.append(sharpness)
        if len(self.samples) >= self.settings.reference_windows:
            self.reference = float(np.median(self.samples))

    def _count(self, problems: List[str]) -> None:
        """Hysteresis: DEGRADED after ``bad_windows`` failing windows in a row, over after ``good_windows``
        passing ones. While DEGRADED the reason follows the latest failing window."""
        if problems:
            self.failing, self.passing = self.failing + 1, 0
            if self.degraded or self.failing >= self.settings.bad_windows:
                self.verdict = "; ".join(problems)
        else:
            self.failing, self.passing = 0, self.passing + 1
            if self.passing >= self.settings.good_windows:
                self.verdict = None
