"""Layer 1, the scene: a static plant view (sky, silhouettes, ground, equipment, a pipe rack whose flanges
and valves are the leak-source candidates) and version 2's moving distractors, clouds and birds.

Everything is drawn on the canvas, the view plus the margin camera shake can bring in
(:data:`leakseg.synth.camera.MARGIN`), in apparent-temperature units (0 = clear sky, 1 = hot pipe).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from leakseg.synth.fields import noise_field, noise_spectrum, render_gaussians


@dataclass
class Scene:
    """A static plant view on the canvas and where it can leak."""

    image: np.ndarray  # static background, canvas size
    sky: np.ndarray  # 1 where open sky is visible (clouds are drawn there)
    ground_level: float  # median scene temperature, the reference for the gas contrast
    sources: List[Tuple[float, float, float]]  # (y, x, outward normal angle) of flanges and valves


def _pipe_profile(n: int, temp: float, shade: float, tilt: float) -> np.ndarray:
    """Temperature across a cylinder: brighter middle, one side reflecting the cold sky."""
    u = np.linspace(-1, 1, n)
    return temp + shade * (np.sqrt(np.clip(1 - u**2, 0, 1)) - 0.7) + tilt * u


def _draw_pipe(img, sky, rng, horizontal: bool, pos: int, start: int, stop: int, radius: int, temp: float):
    """Draw a pipe with flanges (some with valves) and return them as leak sources (y, x, outward angle).

    A vertical pipe is drawn as a horizontal one on the transposed views, so "across" is the image row
    for a horizontal pipe and the image column for a vertical one.
    """
    view, sky_view = (img, sky) if horizontal else (img.T, sky.T)
    n_across = view.shape[0]

    def band(centre, half, profile, along0, along1):  # one cylinder section, clipped to the canvas
        a0, a1 = max(centre - half, 0), min(centre + half + 1, n_across)
        view[a0:a1, along0:along1] = profile[a0 - (centre - half):a1 - (centre - half), None]
        sky_view[a0:a1, along0:along1] = 0

    band(pos, radius, _pipe_profile(2 * radius + 1, temp, rng.uniform(0.03, 0.08), rng.uniform(0.0, 0.05)),
         start, stop)
    sources = []
    for _ in range(rng.integers(1, 4)):
        along = int(rng.uniform(start + 0.1 * (stop - start), stop - 0.1 * (stop - start)))
        width, rim = int(rng.integers(3, 7)), int(rng.integers(2, 6))
        flange = _pipe_profile(2 * (radius + rim) + 1, temp + rng.uniform(-0.05, 0.05), 0.05, 0.03)
        band(pos, radius + rim, flange, along, along + width)
        top = max(pos - radius - rim, 0)
        if rng.random() < 0.4:  # a valve: a stem and a handwheel seen edge-on
            wheel = max(top - int(rng.integers(6, 14)), 0)
            view[wheel:top, along + width // 2 - 1:along + width // 2 + 1] = temp - 0.05
            view[wheel:wheel + 2, max(along - 4, 0):along + width + 4] = temp - 0.08
            sky_view[wheel:top, max(along - 4, 0):along + width + 4] = 0
        side = 1 if rng.random() < 0.5 else -1  # which side of the flange gasket leaks
        across, mid = pos + side * (radius + 1), along + width / 2
        if horizontal:  # image y grows downwards: side -1 leaks upwards
            sources.append((float(across), float(mid), math.pi / 2 * side))
        else:
            sources.append((float(mid), float(across), 0.0 if side > 0 else math.pi))
    return sources


def render_scene(rng: np.random.Generator, shape: Tuple[int, int]) -> Scene:
    """A static plant scene on the canvas, back to front; returns it with the leak-source candidates."""
    h = shape[0]
    horizon = 0 if rng.random() < 0.2 else int(rng.uniform(0.25, 0.65) * h)  # 20 %: close-up, no sky
    ground = rng.uniform(0.45, 0.65)
    img, sky = _sky_and_ground(rng, shape, horizon, ground)
    _draw_silhouettes(rng, img, sky, horizon, ground)
    _draw_equipment(rng, img, sky, horizon, ground)
    sources = _draw_pipe_rack(rng, img, sky, horizon, ground)
    return Scene(img, sky, float(np.median(img)), sources)


def _sky_and_ground(rng: np.random.Generator, shape, horizon: int, ground: float):
    """Sky cold overhead and warmer towards the horizon; ground warmer towards the camera, softly patchy."""
    h = shape[0]
    ys = np.arange(h, dtype=np.float32)[:, None]
    sky_top, sky_low = rng.uniform(0.02, 0.15), rng.uniform(0.25, 0.4)
    gy = np.clip(ys / max(horizon, 1), 0, 1) ** rng.uniform(1.0, 2.5)
    depth = np.clip((ys - horizon) / max(h - horizon, 1), 0, 1)
    texture = (rng.uniform(0.005, 0.03) * noise_field(noise_spectrum(rng, shape, 3.0), shape)
               + 0.006 * noise_field(noise_spectrum(rng, shape, 1.5), shape))
    img = np.where(ys >= horizon, ground + rng.uniform(0.0, 0.1) * depth + texture,
                   sky_top + (sky_low - sky_top) * gy)
    sky = np.zeros(shape, np.float32)
    sky[:horizon] = 1
    return img.astype(np.float32), sky


def _draw_silhouettes(rng: np.random.Generator, img, sky, horizon: int, ground: float) -> None:
    """Far tanks, buildings and stacks standing on the horizon."""
    w = img.shape[1]
    for _ in range(rng.integers(0, 7) if horizon else 0):
        bw = int(rng.uniform(0.03, 0.2) * w)
        bh = int(rng.uniform(0.05, 0.5) * horizon) if rng.random() < 0.8 else int(rng.uniform(0.3, 0.9) * horizon)
        if rng.random() < 0.3:
            bw = max(bw // 5, 3)  # a stack: thin and tall
        x0, top = int(rng.integers(0, w - bw)), horizon - bh
        temp = ground + rng.uniform(-0.15, 0.1)
        img[top:horizon + 2, x0:x0 + bw] = _pipe_profile(bw, temp, rng.uniform(0, 0.05), 0)
        sky[top:horizon + 2, x0:x0 + bw] = 0


def _draw_equipment(rng: np.random.Generator, img, sky, horizon: int, ground: float) -> None:
    """Foreground skids, motors and cabinets; warm or at ambient, lit from above."""
    h, w = img.shape
    for _ in range(rng.integers(0, 4)):
        bh, bw = int(rng.uniform(0.08, 0.3) * h), int(rng.uniform(0.08, 0.35) * w)
        y0, x0 = int(rng.uniform(max(horizon, 0.3 * h), h - bh)), int(rng.integers(0, w - bw))
        temp = ground + rng.uniform(-0.1, 0.25)
        img[y0:y0 + bh, x0:x0 + bw] = (temp + rng.uniform(-0.04, 0.04) * np.linspace(-1, 1, bh))[:, None]
        sky[y0:y0 + bh, x0:x0 + bw] = 0


def _draw_pipe_rack(rng: np.random.Generator, img, sky, horizon: int, ground: float):
    """Horizontal pipes on posts and vertical risers, hot or at ambient; returns their flanges and valves."""
    h, w = img.shape
    scale = min(h, w) / 352  # pipe sizes are drawn for a 352-pixel view
    sources: List[Tuple[float, float, float]] = []
    for _ in range(rng.integers(1, 5)):
        horizontal = rng.random() < 0.7
        n_across, n_along = (h, w) if horizontal else (w, h)
        radius = max(int(rng.integers(3, 12) * scale), 1)
        pos = int(rng.uniform(max(0.2, horizon / h if horizontal else 0.2), 0.85) * n_across)
        start = int(rng.uniform(0, 0.3) * n_along)
        stop = n_along - int(rng.uniform(0, 0.3) * n_along)
        temp = rng.uniform(0.75, 0.95) if rng.random() < 0.5 else ground + rng.uniform(-0.1, 0.1)
        if horizontal:  # posts down to the ground, drawn first so the pipe sits in front
            for x in rng.integers(start, max(stop - 4, start + 1), int(rng.integers(0, 3))):
                img[pos:, x:x + 4] = _pipe_profile(4, ground + rng.uniform(-0.08, 0.04), 0.02, 0)[None, :]
                sky[pos:, x:x + 4] = 0
        sources += _draw_pipe(img, sky, rng, horizontal, pos, start, stop, radius, temp)
    return sources


def drifting_clouds(rng: np.random.Generator, shape, frames: int, sky: np.ndarray) -> np.ndarray:
    """Slowly drifting warm clouds (T x H x W), only where open sky shows."""
    if not sky.any() or rng.random() < 0.3:
        return np.zeros((frames,) + shape, np.float32)
    spec = noise_spectrum(rng, shape, rng.uniform(3.5, 4.5))
    cover, softness, amp = rng.uniform(-0.5, 1.0), rng.uniform(0.6, 1.5), rng.uniform(0.03, 0.15)
    vel = rng.uniform(-0.8, 0.8), rng.uniform(0.2, 1.2) * rng.choice([-1, 1])
    out = np.empty((frames,) + shape, np.float32)
    for t in range(frames):
        n = noise_field(spec, shape, (vel[0] * t * 0.2, vel[1] * t))
        out[t] = amp * np.clip((n - cover) / softness, 0, 1) ** 1.5 * sky
    return out


def flying_birds(rng: np.random.Generator, shape, frames: int, horizon_rows: int) -> np.ndarray:
    """A few small warm flapping blobs crossing the upper image."""
    out = np.zeros((frames,) + shape, np.float32)
    if horizon_rows == 0 or rng.random() < 0.5:
        return out
    n = int(rng.integers(1, 4))
    y0 = rng.uniform(0, horizon_rows, n)
    x0 = rng.uniform(0, shape[1], n)
    vy, vx = rng.uniform(-1, 1, n), rng.uniform(2, 6, n) * rng.choice([-1, 1], n)
    size, heat, phase = rng.uniform(1.0, 2.5, n), rng.uniform(0.15, 0.35, n), rng.uniform(0, 6.3, n)
    for t in range(frames):
        flap = 1 + 0.6 * np.sin(1.7 * t + phase)  # wings: wide, then narrow
        peak = 2 * math.pi * size * size * heat  # mass for a blob about `heat` high (normalised Gaussians)
        out[t] = render_gaussians(y0 + vy * t, (x0 + vx * t) % shape[1], size * 0.7, size * flap, peak, shape)
    return out
