"""Training augmentation for frame triplets, as published: one draw of random parameters per
sample, applied identically to the three frames of the triplet (and, for the geometric part,
to the target's mask).

* horizontal flip, p = 0.5;
* rotation by a uniform angle in [-15, 15] degrees, p = 0.2 (bilinear for frames, nearest for
  the mask, corners filled with 0 / "no gas");
* brightness, contrast and sharpness jitter, each by a uniform factor in [0.8, 1.2]
  (``PIL.ImageEnhance``). The research code also jitters colour; infrared frames are grey,
  where colour saturation is the identity, so it is left out.

Frames are 2-D uint8 arrays (grey) or H x W x 3 uint8; masks 2-D bool or uint8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance


@dataclass(frozen=True)
class AugmentParams:
    flip: bool = False
    angle: float = 0.0  # degrees, counter-clockwise; 0 = no rotation
    brightness: float = 1.0
    contrast: float = 1.0
    sharpness: float = 1.0


@dataclass(frozen=True)
class AugmentConfig:
    flip_p: float = 0.5
    rotate_p: float = 0.2
    max_angle: float = 15.0
    jitter: float = 0.2  # factors drawn from [1 - jitter, 1 + jitter]

    def sample(self, rng: np.random.Generator) -> AugmentParams:
        flip = bool(rng.random() < self.flip_p)
        angle = float(rng.uniform(-self.max_angle, self.max_angle)) if rng.random() < self.rotate_p else 0.0
        lo, hi = 1.0 - self.jitter, 1.0 + self.jitter
        b, c, s = (float(rng.uniform(lo, hi)) for _ in range(3))
        return AugmentParams(flip, angle, b, c, s)


def _geometric(img: Image.Image, p: AugmentParams, resample) -> Image.Image:
    if p.flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if p.angle:
        img = img.rotate(p.angle, resample=resample, expand=False, fillcolor=0)
    return img


def apply_frame(frame: np.ndarray, p: AugmentParams) -> np.ndarray:
    img = _geometric(Image.fromarray(frame), p, Image.BILINEAR)
    if p.brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(p.brightness)
    if p.contrast != 1.0:
        img = ImageEnhance.Contrast(img).enhance(p.contrast)
    if p.sharpness != 1.0:
        img = ImageEnhance.Sharpness(img).enhance(p.sharpness)
    return np.asarray(img).copy()


def apply_mask(mask: np.ndarray, p: AugmentParams) -> np.ndarray:
    img = Image.fromarray(np.asarray(mask).astype(np.uint8) * (255 if np.asarray(mask).dtype == bool else 1))
    return np.asarray(_geometric(img, p, Image.NEAREST)).copy()


def augment_triplet(
    frames: Sequence[np.ndarray], mask: np.ndarray, params: AugmentParams
) -> Tuple[List[np.ndarray], np.ndarray]:
    """The same transform on every frame of the triplet and (geometry only) on the mask.

    The mask comes back as uint8 (0/255 for a bool input).
    """
    return [apply_frame(f, params) for f in frames], apply_mask(mask, params)
