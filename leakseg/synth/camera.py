"""Layers 3 and 4: the gas's contrast against the scene, and the camera (optics, shake, fixed patterns,
vignetting, drift) with its output mapping (8-bit AGC in either palette, or 16-bit raw counts).

Temporal noise and quantisation are applied by :mod:`leakseg.synth.clip`, after the camera.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from leakseg.synth.fields import ar1, blur
from leakseg.synth.scene import Scene

#: Canvas border, in pixels, that camera shake can bring into view.
MARGIN = 8


def _jitter(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Slow integer camera shake (T x 2), within the canvas margin; a third of the cameras sit still."""
    if rng.random() < 0.33:
        return np.zeros((frames, 2), np.intp)
    walk = np.cumsum(ar1(rng, frames, 0.7, rng.uniform(0.2, 0.8), 2), axis=0)
    return np.clip(np.rint(walk), -MARGIN, MARGIN).astype(np.intp)


@dataclass
class SensorArtefacts:
    """Sensor faults on top of a camera's own (version 3's fixed_pattern, drift and shake effects)."""

    fixed_pattern: np.ndarray  #: H x W, added to the camera's fixed-pattern noise
    gain: np.ndarray  #: T, the per-frame gain (the camera's own is 1)
    offset: np.ndarray  #: T, added to the camera's offset drift
    shifts: Optional[np.ndarray]  #: T x 2 shake replacing the camera's own; None keeps it


class Camera:
    """Optics, shake and the sensor's fixed patterns; temporal noise and quantisation come after."""

    def __init__(self, rng: np.random.Generator, frames: int, height: int, width: int, noise_sigma: float):
        self.size = (height, width)
        self.psf = rng.uniform(0.5, 1.1)
        self.shifts = _jitter(rng, frames)
        self.drift = ar1(rng, frames, 0.95, rng.uniform(0, 0.5) * noise_sigma)[:, 0]  # slow offset drift
        yy, xx = np.mgrid[0:height, 0:width]
        r2 = ((yy - height / 2) / height) ** 2 + ((xx - width / 2) / width) ** 2
        self.vignette = 1 - rng.uniform(0, 0.16) * r2
        # Fixed-pattern noise belongs to the sensor, so it does not move with the shake.
        self.fpn = (rng.standard_normal(width)[None, :] * rng.uniform(0.2, 1.0)
                    + rng.standard_normal((height, width)) * 0.3) * noise_sigma
        self.pixel_gain = 1 + rng.standard_normal((height, width)) * 0.005
        self.gain = np.ones(frames)  # per-frame gain drift (version 3)

    def add(self, artefacts: SensorArtefacts) -> None:
        """Degrade the sensor further (before it renders anything)."""
        self.fpn = self.fpn + artefacts.fixed_pattern
        self.gain = artefacts.gain
        self.drift = self.drift + artefacts.offset
        if artefacts.shifts is not None:
            self.shifts = artefacts.shifts

    def crop(self, canvas_stack: np.ndarray) -> np.ndarray:
        """The part of each canvas frame the shaken camera sees."""
        h, w = self.size
        return np.stack([canvas_stack[t, MARGIN + dy:MARGIN + dy + h, MARGIN + dx:MARGIN + dx + w]
                         for t, (dy, dx) in enumerate(self.shifts)])

    def __call__(self, scene_stack: np.ndarray) -> np.ndarray:
        seen = self.crop(blur(scene_stack, self.psf))
        seen = seen * self.vignette * self.pixel_gain * self.gain[:, None, None]
        return (seen + self.fpn + self.drift[:, None, None]).astype(np.float32)

    def meta(self) -> Dict:
        return {"psf_sigma": float(self.psf), "jitter": self.shifts.tolist()}


def output_map(rng: np.random.Generator, bit_depth: int, ref: np.ndarray, gas: np.ndarray) -> Dict:
    """Apparent temperature -> sensor units (offset + gain * x): 8-bit AGC in either palette, or 16-bit raw.

    The AGC range is the background's, widened by the gas contrast so that gas does not saturate; it does
    not depend on whether gas is present, so a leak-free clip and its leaking twin share one mapping.
    """
    if bit_depth == 8:
        lo, hi = np.percentile(ref, [0.5, 99.5])
        lo, hi = lo + min(float(gas.min()), 0.0), hi + max(float(gas.max()), 0.0)
        gain = 224.0 / max(hi - lo, 1e-3)
        if rng.random() < 0.25:  # black-hot palette
            return {"polarity": "black-hot", "offset": float(240.0 + gain * lo), "gain": float(-gain)}
        return {"polarity": "white-hot", "offset": float(16.0 - gain * lo), "gain": float(gain)}
    # Raw radiometric counts are always "white-hot"; 14-bit-like range inside uint16.
    return {"polarity": "white-hot", "offset": rng.uniform(5000, 20000), "gain": rng.uniform(2000, 8000)}


def gas_contrast(rng: np.random.Generator, scene: Scene, noise_sigma: float, threshold: float,
                 snr_range: Tuple[float, float] = (4.0, 8.0)):
    """Signed gas-minus-background temperature per pixel (canvas), and its parameters.

    Nominally ``delta``, sized so that gas at the threshold changes the frame by ``edge_snr`` noise sigmas;
    it follows the local background with ``coupling`` (hot gas shows less against a hot pipe), but never
    falls below 0.6 of ``delta`` nor flips sign, so labelled gas always shows.
    """
    edge_snr = rng.uniform(*snr_range)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    delta = sign * edge_snr * noise_sigma / (1 - math.exp(-threshold))
    coupling = rng.uniform(0.0, 0.6)
    dtemp = following_background(delta, coupling, scene.image - scene.ground_level)
    meta = {"edge_snr": float(edge_snr), "gas_contrast": float(delta), "contrast_coupling": float(coupling)}
    return dtemp.astype(np.float32), meta


#: The gas's contrast never falls below this fraction of its nominal value, however the background runs.
MIN_CONTRAST_FRACTION = 0.6


def following_background(delta: float, coupling: float, offset: np.ndarray) -> np.ndarray:
    """The signed contrast ``delta`` where the background is ``offset`` above its reference level: gas of one
    temperature shows less against a background nearer its own temperature, by ``coupling`` of the offset;
    clamped to at least :data:`MIN_CONTRAST_FRACTION` of ``delta`` and never flipping its sign, so gas always
    shows. Shared by the generator and the self-test's injection (:mod:`leakseg.selftest.inject`)."""
    sign = math.copysign(1.0, delta)
    dtemp = delta - coupling * offset
    return sign * np.maximum(sign * dtemp, MIN_CONTRAST_FRACTION * abs(delta))
