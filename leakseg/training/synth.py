"""Synthetic, labelled infrared gas-leak clips (pure numpy).

A clip is rendered in four layers, in "apparent temperature" units (roughly 0 = clear sky, 1 = hot process pipe):

1. **Scene**: a sky gradient (cold overhead, warmer at the horizon), far silhouettes (tanks, buildings, stacks),
   textured ground, and a foreground pipe rack with flanges and valves. Clouds drift across the visible sky and
   birds fly through it: moving distractors that are *not* gas.
2. **Plume**: a leak at one flange or valve emits Gaussian puffs several times per frame. Each puff leaves with a
   decaying jet velocity, is carried by a gusty wind, rises or sinks with buoyancy, meanders with its own
   turbulent velocity, grows by diffusion and slowly dissipates. Emission is intermittent (puffing). The summed
   puffs are warped by a smooth, evolving displacement field and multiplied by advected log-normal turbulence, so
   the plume is wispy rather than a smooth cone.
3. **Radiative transfer**: the plume's optical depth ``D`` (column density times absorption) gives an opacity
   ``1 - exp(-D)``; the frame changes by ``opacity * dT`` where ``dT`` is the gas-background temperature
   difference: a per-clip signed contrast (hot or cold gas) that also depends partly on the local background,
   floored at 0.6 of its nominal size so that labelled gas is never invisible.
4. **Camera**: optics blur, slow integer camera jitter, vignetting, fixed-pattern noise (column stripes, pixel
   offsets and gains), a slow offset drift, temporal noise, then either an 8-bit AGC-stretched image (white-hot
   or black-hot) or 16-bit raw counts.

**The label.** ``mask = D > visibility_threshold`` (default :data:`VISIBILITY_THRESHOLD` = 0.1, i.e. where the
gas absorbs at least ~9.5 % of the background radiance). The plume's optical depth is scaled per clip so that
its typical peak is 5-30x the threshold (an opaque core near the source), and the contrast is chosen so that
at the threshold the intensity change is ``edge_snr`` (4-8, per clip) times the temporal noise; everywhere
inside the mask the change is at least 0.6 of that, i.e. at least 2.4 noise sigmas (before the optics blur).
Version 1 drew ``edge_snr`` from 2-5, which labelled gas at barely one noise sigma: no observer would mark it,
so the labels asked for the invisible (the datasets this imitates are labelled by eye).

Leak modes: ``"full"`` (leaking before and throughout the clip), ``"none"`` (leak-free), ``"start"`` (the leak
begins mid-clip) and ``"stop"`` (it stops mid-clip and the remaining gas drifts off and dilutes). The scene,
wind and noise of a seed do not depend on the mode, so ``leak="none"`` is the gas-free twin of the same seed.
A leak that is on at frame 0 has been running for three dissipation times, so its plume is fully developed;
after a leak stops, the gas left behind drifts on and fades below visibility within a few frames (clear_time).

**Version 3** (``version=3``; ``leakseg synth`` writes it by default, the library functions default to 2 so
that existing datasets and tests stay byte-identical) keeps all of the above and adds what real OGI footage
has and version 2 lacks. Each effect draws from its own random stream (a fifth stream of the clip seed, split
per effect), so ``effects={"name": strength}`` (0 = off, 1 = default) changes that effect alone:

* ``structures``: 3-12 static hot or cold objects of many shapes: ellipses, superellipses (stars, diamonds,
  rounded boxes), rings, triangles, boxes and thin bars (poles, cables), 0.05-0.35 hotter or colder than the
  ground, shaded; they hide the sky behind them.
* ``shimmer``: 0-2 steam-free hot exhaust outlets (a hot stack) with a rising cone of heat shimmer: the
  background behind it is displaced by a boiling random field of 0.6-2.5 px (refraction) and warmed by at
  most 0.03 (the exhaust gas itself). Plume-shaped, moving, and not the leak: a hard negative.
* ``clouds``: a second cloud layer, faster (0.5-4 px per frame) and with sharper edges than version 2's.
* ``birds``: 0-5 flapping warm birds anywhere in the view, 2-9 px per frame.
* ``insects``: 0-12 insects close to the lens: out of focus (1.5-6 px soft blobs), faint (+-0.02-0.12),
  fast and erratic; mostly warm.
* ``reflections``: 0-3 shiny panels or wet patches that mirror the cold sky (reflectivity 0.2-0.7) with a
  moving cloud texture in it.
* ``fixed_pattern``: on top of version 2's: column stripes (0.5-2.5 noise sigma), row stripes (0-1.5),
  a smooth non-uniformity residue (0.5-3) and 0.01-0.1 % hot or dead pixels (5-20 sigma).
* ``drift``: a slow per-frame gain drift (AR(1), 0.5-3 %), a larger offset drift (0.5-3 sigma) and, in
  30 % of the clips, a flat-field-correction step (1-4 sigma) at a random frame.
* ``shake``: 85 % of the cameras shake: a random walk of 0.3-2 px steps with occasional jolts, whole
  pixels, within the canvas margin (version 2: a third stand still, smaller steps). Labels move with it.
* ``distance``: 30 % far sources (every plume length and speed x 0.35-0.7), 25 % near (x 1.4-2.2).
* ``thin_faint``: 35 % thin plumes (source x 0.35-0.6, spreading x 0.15-0.4) and, independently, 35 % faint
  ones (peak optical depth only 1.5-5 x the visibility threshold, contrast at the threshold 4-5 noise sigmas
  instead of 4-8). The labelling rule is version 2's: ``mask = D > visibility_threshold``, with gas at the
  threshold at least 4 noise sigmas from the background (before the optics blur).

Both plume polarities occur (hot and cold gas, white-hot and black-hot palettes); ``meta["plume_polarity"]``
says whether the gas is brighter or darker than the background in the written frames. Leaks that start
mid-clip are leak mode "start"; a version-3 dataset is by default one third leak-free (hard negatives: the
same distractors with no gas, :data:`DEFAULT_FRACTIONS`) and one third partial (start or stop). The
distractor mix does not depend on the leak mode, so clutter is no cue for "no leak", and a leak-free clip
is still the gas-free twin of its seed. ``meta["distractors"]`` records what each effect drew.

Output follows the authors' dataset layout: ``OUT/SCENE/images/00000.png``, ``OUT/SCENE/masks/00000.png``
(0/255 uint8) and ``OUT/SCENE/meta.json``. Everything is drawn from ``numpy.random.default_rng``, so the same
seed gives byte-identical files.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

#: Default optical depth above which gas counts as visible (opacity 1 - e^-0.1 ~ 9.5 %).
VISIBILITY_THRESHOLD = 0.1
#: "burst" (a leak that starts and then stops within the clip, its gas drifting off and clearing) is
#: never drawn for datasets: it is for sequences that watch a whole leak come and go (the monitor's tests).
LEAK_MODES = ("full", "none", "start", "stop", "burst")
#: The newest generator version (what `leakseg synth` writes by default).
GENERATOR_VERSION = 3
GENERATOR_VERSIONS = (2, 3)
#: Version the library functions use when not told: 2, which existing datasets and tests were made with.
DEFAULT_LIBRARY_VERSION = 2
#: Version-3 effects, each a strength in ``simulate_clip(effects={...})``: 0 off, 1 the default mix.
V3_EFFECTS = ("structures", "shimmer", "clouds", "birds", "insects", "reflections",
              "fixed_pattern", "drift", "shake", "distance", "thin_faint")
#: Version 3 with every distractor off: a calm scene, its plume the only thing that moves (demos, monitor tests).
CALM_EFFECTS = {name: 0.0 for name in V3_EFFECTS}
#: Share of leak-free and of partial (start/stop mid-clip) clips in a dataset, per version.
DEFAULT_FRACTIONS = {2: (0.2, 0.2), 3: (1 / 3, 1 / 3)}

_MARGIN = 8  # canvas border, in pixels, that camera jitter can bring into view


@dataclass
class SynthClip:
    """Everything :func:`simulate_clip` renders. Arrays are T x H x W."""

    frames: np.ndarray  #: uint8 or uint16 sensor frames
    masks: np.ndarray  #: bool, ``density > meta["visibility_threshold"]``
    density: np.ndarray  #: float32 optical depth of the gas, in image coordinates
    background: np.ndarray  #: float32 frames without gas and without temporal noise, in output units
    meta: Dict


# ---------------------------------------------------------------- numpy building blocks


def _noise_spectrum(rng: np.random.Generator, shape: Tuple[int, int], beta: float) -> np.ndarray:
    """rfft2 spectrum of periodic noise with power ~ 1/f^beta and unit variance in space."""
    white = np.fft.rfft2(rng.standard_normal(shape))
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.sqrt(fy**2 + fx**2)
    f[0, 0] = 1.0
    spec = white * f ** (-beta / 2)
    spec[0, 0] = 0.0
    return spec / np.fft.irfft2(spec, s=shape).std()


def _noise(spec: np.ndarray, shape: Tuple[int, int], shift: Tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Noise field of a spectrum, translated by ``shift`` = (dy, dx) pixels (sub-pixel, periodic)."""
    if shift != (0.0, 0.0):  # a translation is a phase ramp, separable in y and x
        ey = np.exp(-2j * np.pi * np.fft.fftfreq(shape[0]) * shift[0])
        ex = np.exp(-2j * np.pi * np.fft.rfftfreq(shape[1]) * shift[1])
        spec = spec * ey[:, None] * ex[None, :]
    return np.fft.irfft2(spec, s=shape).astype(np.float32)


def _gaussian_kernel(sigma: float) -> np.ndarray:
    r = max(1, int(math.ceil(3 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    return k / k.sum()


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the last two axes, edges reflected (no scipy)."""
    if sigma <= 0:
        return img
    k = _gaussian_kernel(sigma).astype(np.float32)  # float32 weights keep the sums in float32
    r = len(k) // 2
    out = img
    for axis in (img.ndim - 2, img.ndim - 1):
        pad = [(0, 0)] * img.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        acc = np.zeros_like(out, dtype=np.float32)
        for i, w in enumerate(k):
            sl = [slice(None)] * img.ndim
            sl[axis] = slice(i, i + n)
            acc += w * padded[tuple(sl)]
        out = acc
    return out


def _bilinear(img: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample a 2-D image at float coordinates, clamped to the border."""
    h, w = img.shape
    y = np.clip(y, 0, h - 1.001)
    x = np.clip(x, 0, w - 1.001)
    y0 = y.astype(np.intp)
    x0 = x.astype(np.intp)
    fy, fx = y - y0, x - x0
    flat = img.ravel()
    i = y0 * w + x0
    top = flat[i] * (1 - fx) + flat[i + 1] * fx
    bottom = flat[i + w] * (1 - fx) + flat[i + w + 1] * fx
    return (top * (1 - fy) + bottom * fy).astype(np.float32)


def _render_gaussians(cy, cx, sy, sx, mass, shape: Tuple[int, int]) -> np.ndarray:
    """Sum of axis-aligned normalised 2-D Gaussians as one matrix product: (H x N) @ (N x W)."""
    if len(mass) == 0:
        return np.zeros(shape, np.float32)
    cy, cx, sy, sx, mass = (np.asarray(a, np.float32) for a in (cy, cx, sy, sx, mass))
    out = np.zeros(shape, np.float32)
    # Only the rows and columns within 4 sigma of some puff can be non-zero: render just that window.
    y0, y1 = max(int(np.min(cy - 4 * sy)), 0), min(int(np.max(cy + 4 * sy)) + 2, shape[0])
    x0, x1 = max(int(np.min(cx - 4 * sx)), 0), min(int(np.max(cx + 4 * sx)) + 2, shape[1])
    if y0 >= y1 or x0 >= x1:
        return out
    ys = np.arange(y0, y1, dtype=np.float32)[:, None]
    xs = np.arange(x0, x1, dtype=np.float32)[:, None]
    gy = np.exp(-0.5 * ((ys - cy) / sy) ** 2) * (mass / (np.float32(2 * math.pi) * sy * sx))
    gx = np.exp(-0.5 * ((xs - cx) / sx) ** 2)
    out[y0:y1, x0:x1] = gy @ gx.T
    return out


def _ar1(rng: np.random.Generator, n: int, phi: float, std: float, dims: int = 1) -> np.ndarray:
    """Stationary AR(1) series (n x dims): smooth random processes for gusts, drift and puffing."""
    eps = rng.standard_normal((n, dims)) * std * math.sqrt(1 - phi**2)
    out = np.empty((n, dims))
    out[0] = rng.standard_normal(dims) * std
    for t in range(1, n):
        out[t] = phi * out[t - 1] + eps[t]
    return out


# ---------------------------------------------------------------- the scene


@dataclass
class _Scene:
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


def _render_scene(rng: np.random.Generator, shape: Tuple[int, int]) -> _Scene:
    """A static plant scene on the canvas, back to front; returns it with the leak-source candidates."""
    h = shape[0]
    horizon = 0 if rng.random() < 0.2 else int(rng.uniform(0.25, 0.65) * h)  # 20 %: close-up, no sky
    ground = rng.uniform(0.45, 0.65)
    img, sky = _sky_and_ground(rng, shape, horizon, ground)
    _draw_silhouettes(rng, img, sky, horizon, ground)
    _draw_equipment(rng, img, sky, horizon, ground)
    sources = _draw_pipe_rack(rng, img, sky, horizon, ground)
    return _Scene(img, sky, float(np.median(img)), sources)


def _sky_and_ground(rng: np.random.Generator, shape, horizon: int, ground: float):
    """Sky cold overhead and warmer towards the horizon; ground warmer towards the camera, softly patchy."""
    h = shape[0]
    ys = np.arange(h, dtype=np.float32)[:, None]
    sky_top, sky_low = rng.uniform(0.02, 0.15), rng.uniform(0.25, 0.4)
    gy = np.clip(ys / max(horizon, 1), 0, 1) ** rng.uniform(1.0, 2.5)
    depth = np.clip((ys - horizon) / max(h - horizon, 1), 0, 1)
    texture = (rng.uniform(0.005, 0.03) * _noise(_noise_spectrum(rng, shape, 3.0), shape)
               + 0.006 * _noise(_noise_spectrum(rng, shape, 1.5), shape))
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


def _clouds(rng: np.random.Generator, shape, frames: int, sky: np.ndarray) -> np.ndarray:
    """Slowly drifting warm clouds (T x H x W), only where open sky shows."""
    if not sky.any() or rng.random() < 0.3:
        return np.zeros((frames,) + shape, np.float32)
    spec = _noise_spectrum(rng, shape, rng.uniform(3.5, 4.5))
    cover, softness, amp = rng.uniform(-0.5, 1.0), rng.uniform(0.6, 1.5), rng.uniform(0.03, 0.15)
    vel = rng.uniform(-0.8, 0.8), rng.uniform(0.2, 1.2) * rng.choice([-1, 1])
    out = np.empty((frames,) + shape, np.float32)
    for t in range(frames):
        n = _noise(spec, shape, (vel[0] * t * 0.2, vel[1] * t))
        out[t] = amp * np.clip((n - cover) / softness, 0, 1) ** 1.5 * sky
    return out


def _birds(rng: np.random.Generator, shape, frames: int, horizon_rows: int) -> np.ndarray:
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
        out[t] = _render_gaussians(y0 + vy * t, (x0 + vx * t) % shape[1], size * 0.7, size * flap, peak, shape)
    return out


# ---------------------------------------------------------------- the plume


def _emission_window(rng: np.random.Generator, leak: str, frames: int) -> Tuple[Optional[int], Optional[int]]:
    """(first, stop) frame of emission, None meaning "before the clip" / "after it". None for a leak-free clip."""
    start = int(rng.integers(frames // 4, max(3 * frames // 4, frames // 4 + 1)))
    stop = int(rng.integers(max(frames // 5, 1), max(frames // 2, frames // 5 + 2)))
    if leak == "burst":  # drawn only here, so the other modes' streams stay what they were
        start = int(rng.integers(frames // 6, max(frames // 4, frames // 6 + 1) + 1))
        stop = int(rng.integers(max(frames // 3, start + 1), max(frames // 2, start + 2)))
        return start, stop
    return {"full": (None, None), "none": None, "start": (start, None), "stop": (None, stop)}[leak]


def _sample_plume(rng: np.random.Generator, scene: _Scene, canvas, crop) -> Dict[str, float]:
    """Per-clip plume physics. Sources well inside the visible crop are preferred, so the gas is seen."""
    (h, w), (ch, cw) = canvas, crop
    inside = [(y, x, a) for y, x, a in scene.sources
              if 0.15 * ch < y - _MARGIN < 0.85 * ch and 0.15 * cw < x - _MARGIN < 0.85 * cw]
    pool = inside or scene.sources or [(h / 2, w / 2, -math.pi / 2)]
    sy, sx, normal = pool[int(rng.integers(len(pool)))]
    # Lengths and speeds are drawn for a 352-pixel view of a leak at a typical distance, then scaled:
    # "zoom" is how close the camera is (a close leak is big and crosses the view fast).
    zoom = math.exp(rng.uniform(math.log(1.0), math.log(3.5))) * min(ch, cw) / 352
    wind_dir = rng.uniform(0, 2 * math.pi)
    wind = rng.uniform(0.3, 2.0) * zoom
    dissipation = rng.uniform(15, 50)  # frames for the gas to mix below visibility, dilution aside
    return dict(
        source_y=float(sy), source_x=float(sx), zoom=zoom,
        jet_angle=float(normal + rng.normal(0, 0.6)), jet_speed=rng.uniform(0.5, 4.0) * zoom,
        jet_decay=rng.uniform(2, 8),
        wind_x=wind * math.cos(wind_dir), wind_y=0.3 * wind * math.sin(wind_dir),  # mostly horizontal in view
        gust=rng.uniform(0.1, 0.5), rise=rng.uniform(-0.3, 1.2) * zoom, rise_time=rng.uniform(3, 12),
        turbulence=rng.uniform(0.2, 0.6) * zoom, sigma0=max(rng.uniform(2.0, 4.0) * zoom, 1.0),
        diffusivity=rng.uniform(0.5, 2.0) * (wind + 0.5 * zoom) * zoom,  # a cone, not a ball
        dissipation=dissipation, preroll=min(3 * dissipation, 150), puffing=rng.uniform(0.0, 1.0),
        warp=rng.uniform(1.5, 5.0) * zoom, wisp=rng.uniform(0.3, 0.7), wisp_beta=rng.uniform(2.8, 3.6),
        boil=rng.uniform(0.05, 0.2), clear_time=rng.uniform(1.5, 4),
        strength=math.exp(rng.uniform(math.log(5), math.log(30))),
    )


def _puff_tracks(rng: np.random.Generator, p: Dict[str, float], window, frames: int):
    """Integrate puffs on sub-steps; returns one (cy, cx, sigma, mass) tuple of arrays per output frame.

    A leak that is on at frame 0 has been running for ``preroll`` frames (three dissipation times), so the
    plume reaches its steady length instead of ending in the front of the first puff.
    """
    empty = np.zeros(0)
    if window is None:  # leak-free: nothing is ever emitted
        return [(empty, empty, empty, empty)] * frames
    first, stop = window
    n_sub = int(np.clip(math.ceil(1.5 * (abs(p["wind_x"]) + p["jet_speed"]) / p["sigma0"]), 2, 8))
    t0 = -int(p["preroll"])
    steps = (frames - 1 - t0) * n_sub  # the last snapshot is at time frames - 1
    speed = math.hypot(p["wind_x"], p["wind_y"])
    gusts = _ar1(rng, frames - t0, 0.9, p["gust"] * speed + 0.05, 2)
    # Puffing: a smooth random rate; high "puffing" makes emission bursty (log-normal with a big variance).
    rate = np.exp(2.0 * p["puffing"] * _ar1(rng, frames - t0, 0.8, 1.0)[:, 0])
    jet = np.array([math.sin(p["jet_angle"]), math.cos(p["jet_angle"])]) * p["jet_speed"]
    source = np.array([p["source_y"], p["source_x"]])
    pos = np.zeros((steps, 2))
    vel_t = np.zeros((steps, 2))  # each puff's own turbulent velocity, AR(1) across sub-steps
    born = np.zeros(steps)
    mass = np.zeros(steps)
    n = 0
    dt = 1.0 / n_sub
    out = []
    for step in range(steps):
        t = t0 + step * dt
        f = step // n_sub  # whole frames since t0: indexes the per-frame gusts and rate
        # Emission over (first - 1, stop - 1]: frame `first` is the first to show gas, `stop` the first without.
        if (first is None or t >= first - 1) and (stop is None or t < stop - 1):
            pos[n], born[n], mass[n] = source, t, rate[f] * dt
            n += 1
        age = t - born[:n]
        vel_t[:n] = 0.9 * vel_t[:n] + rng.standard_normal((n, 2)) * (p["turbulence"] * math.sqrt(1 - 0.81))
        v = gusts[f] + np.array([p["wind_y"], p["wind_x"]]) + jet * np.exp(-age / p["jet_decay"])[:, None]
        v[:, 0] -= p["rise"] * (1 - np.exp(-age / p["rise_time"]))  # buoyancy: negative y is up
        pos[:n] += (v + vel_t[:n]) * dt
        now = t0 + (step + 1) // n_sub
        if (step + 1) % n_sub == 0 and now >= 0:  # a snapshot at each whole frame time
            fade = math.exp(-max(now - stop, 0) / p["clear_time"]) if stop is not None else 1.0
            out.append(_thinned(pos[:n], now - born[:n], mass[:n] * fade, p, (speed + p["turbulence"]) * dt))
    return out


def _thinned(pos, age, mass, p, spacing):
    """Puffs at frame time, old wide puffs thinned: where sigma >> spacing, every k-th puff with k-fold mass."""
    sigma = np.sqrt(p["sigma0"] ** 2 + p["diffusivity"] * age)
    stride = 2 ** np.clip(np.floor(np.log2(sigma / (2 * spacing + 1e-6))), 0, 4).astype(np.int64)
    keep = np.arange(len(age)) % stride == 0
    m = mass * np.exp(-age / p["dissipation"]) * stride
    return pos[keep, 0].copy(), pos[keep, 1].copy(), sigma[keep], m[keep]


def _plume_density(rng: np.random.Generator, p: Dict[str, float], window, frames: int, canvas) -> np.ndarray:
    """Optical depth (T x canvas), before the per-clip scaling to the visibility threshold."""
    tracks = _puff_tracks(rng, p, window, frames)
    wisp_spec = _noise_spectrum(rng, canvas, p["wisp_beta"]), _noise_spectrum(rng, canvas, p["wisp_beta"])
    warp_spec = [_noise_spectrum(rng, canvas, 3.5) for _ in range(4)]
    yy, xx = np.mgrid[0:canvas[0], 0:canvas[1]].astype(np.float32)
    g = p["wisp"]
    out = np.zeros((frames,) + canvas, np.float32)
    for t, (cy, cx, sigma, mass) in enumerate(tracks):
        keep = mass > 1e-4 * max(mass.max(initial=0), 1e-12)
        if not keep.any():
            continue
        dens = _render_gaussians(cy[keep], cx[keep], sigma[keep], sigma[keep] * 1.15, mass[keep], canvas)
        # Turbulence evolves (rotating between two independent fields) while the mean wind carries it.
        # Mixing and shifting are linear, so they are done on the spectra: one inverse FFT per field.
        phase, shift = p["boil"] * t, (p["wind_y"] * t, p["wind_x"] * t)
        c, s = math.cos(phase), math.sin(phase)
        dy = _noise(c * warp_spec[0] + s * warp_spec[1], canvas, shift)
        dx = _noise(c * warp_spec[2] + s * warp_spec[3], canvas, shift)
        dens = _bilinear(dens, yy + p["warp"] * dy, xx + p["warp"] * dx)
        n = _noise(c * wisp_spec[0] + s * wisp_spec[1], canvas, shift)
        out[t] = dens * np.exp(g * n - g * g / 2)  # log-normal with mean 1: wisps and holes
    return out


# ---------------------------------------------------------------- the camera


def _jitter(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Slow integer camera shake (T x 2), within the canvas margin; a third of the cameras sit still."""
    if rng.random() < 0.33:
        return np.zeros((frames, 2), np.intp)
    walk = np.cumsum(_ar1(rng, frames, 0.7, rng.uniform(0.2, 0.8), 2), axis=0)
    return np.clip(np.rint(walk), -_MARGIN, _MARGIN).astype(np.intp)


class _Camera:
    """Optics, shake and the sensor's fixed patterns; temporal noise and quantisation come after."""

    def __init__(self, rng: np.random.Generator, frames: int, height: int, width: int, noise_sigma: float):
        self.size = (height, width)
        self.psf = rng.uniform(0.5, 1.1)
        self.shifts = _jitter(rng, frames)
        self.drift = _ar1(rng, frames, 0.95, rng.uniform(0, 0.5) * noise_sigma)[:, 0]  # slow offset drift
        yy, xx = np.mgrid[0:height, 0:width]
        r2 = ((yy - height / 2) / height) ** 2 + ((xx - width / 2) / width) ** 2
        self.vignette = 1 - rng.uniform(0, 0.16) * r2
        # Fixed-pattern noise belongs to the sensor, so it does not move with the shake.
        self.fpn = (rng.standard_normal(width)[None, :] * rng.uniform(0.2, 1.0)
                    + rng.standard_normal((height, width)) * 0.3) * noise_sigma
        self.pixel_gain = 1 + rng.standard_normal((height, width)) * 0.005
        self.gain = np.ones(frames)  # per-frame gain drift (version 3)

    def crop(self, canvas_stack: np.ndarray) -> np.ndarray:
        """The part of each canvas frame the shaken camera sees."""
        h, w = self.size
        return np.stack([canvas_stack[t, _MARGIN + dy:_MARGIN + dy + h, _MARGIN + dx:_MARGIN + dx + w]
                         for t, (dy, dx) in enumerate(self.shifts)])

    def __call__(self, scene_stack: np.ndarray) -> np.ndarray:
        seen = self.crop(blur(scene_stack, self.psf))
        seen = seen * self.vignette * self.pixel_gain * self.gain[:, None, None]
        return (seen + self.fpn + self.drift[:, None, None]).astype(np.float32)

    def meta(self) -> Dict:
        return {"psf_sigma": float(self.psf), "jitter": self.shifts.tolist()}


def _output_map(rng: np.random.Generator, bit_depth: int, ref: np.ndarray, gas: np.ndarray) -> Dict:
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


# ---------------------------------------------------------------- version 3: the distractors of real footage


def _effect_streams(seq: np.random.SeedSequence, effects: Optional[Dict[str, float]]):
    """One independent generator per v3 effect, and each effect's strength (0 = off, 1 = default).

    Every effect draws from its own stream whether it is on or not, so switching one effect off (or
    changing its strength) leaves every other effect of the seed exactly as it was.
    """
    effects = dict(effects or {})
    unknown = sorted(set(effects) - set(V3_EFFECTS))
    if unknown:
        raise ValueError(f"unknown v3 effects {unknown}; known: {list(V3_EFFECTS)}")
    for name, value in effects.items():
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"effect {name!r}: strength must be a number >= 0, got {value!r}")
    rngs = {name: np.random.default_rng(s) for name, s in zip(V3_EFFECTS, seq.spawn(len(V3_EFFECTS)))}
    return {name: (rngs[name], float(effects.get(name, 1.0))) for name in V3_EFFECTS}


def _coverage(kind: str, u: np.ndarray, v: np.ndarray, a: float, b: float, extra: float) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a shape centred at u = v = 0, half sizes a (along u) and b (along v)."""
    if kind == "ellipse":
        d = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * min(a, b)
    elif kind == "superellipse":  # extra = exponent: < 1 star-like, 1 diamond, 2 ellipse, > 2 rounded box
        d = ((np.abs(u / a) ** extra + np.abs(v / b) ** extra) ** (1 / extra) - 1) * min(a, b)
    elif kind == "ring":  # extra = wall thickness in pixels
        d = np.abs(np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1) * min(a, b) - extra
    elif kind == "triangle":  # apex at v = -b, base at v = +b from u = -a to a
        d = np.maximum(v - b, (2 * b * np.abs(u) - a * (v + b)) / math.hypot(a, 2 * b))
    else:  # "box" (tanks seen side-on, cabinets, panels, poles and cables when thin)
        d = np.maximum(np.abs(u) - a, np.abs(v) - b)
    return np.clip(0.5 - d, 0.0, 1.0).astype(np.float32)


_SHAPES = ("ellipse", "superellipse", "ring", "triangle", "box", "bar")


def _structures(rng: np.random.Generator, strength: float, scene: _Scene) -> List[Dict]:
    """Static hot and cold structures of many shapes drawn into the scene (in place).

    Ellipses (tank ends, insulated vessels), superellipses (diamonds, stars, rounded boxes), rings
    (flanged openings, coils), triangles (roofs, supports), boxes (cabinets, panels) and thin bars (poles,
    cables), each hotter (process equipment, motors, sun-heated metal) or colder (cryogenic lines, shaded
    or sky-reflecting metal) than the ground by 0.05-0.35, with a shading gradient. They hide the sky behind
    them. ``strength`` scales their contrast; 0 draws none.
    """
    img, sky = scene.image, scene.sky
    h, w = img.shape
    n = int(rng.integers(3, 13))
    drawn = []
    for _ in range(n):
        kind = _SHAPES[int(rng.integers(len(_SHAPES)))]
        cy, cx = rng.uniform(0.05, 0.95) * h, rng.uniform(0.05, 0.95) * w
        a, b = rng.uniform(0.02, 0.12) * w, rng.uniform(0.02, 0.12) * h
        if kind == "bar":
            kind, a, b = "box", rng.uniform(0.1, 0.45) * w, rng.uniform(0.6, 2.5)
        extra = rng.uniform(0.6, 4.0) if kind == "superellipse" else rng.uniform(1.0, 4.0)
        angle = rng.uniform(0, math.pi)
        sign = 1.0 if rng.random() < 0.55 else -1.0
        temp = scene.ground_level + strength * sign * rng.uniform(0.05, 0.35)
        shade = rng.uniform(-0.04, 0.04) * strength
        r = int(max(a, b)) + 3
        y0, y1, x0, x1 = max(int(cy) - r, 0), min(int(cy) + r + 1, h), max(int(cx) - r, 0), min(int(cx) + r + 1, w)
        drawn.append({"kind": kind, "y": float(cy), "x": float(cx), "temp": float(temp)})
        if strength == 0 or y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        c, s = math.cos(angle), math.sin(angle)
        u, v = c * (xx - cx) + s * (yy - cy), -s * (xx - cx) + c * (yy - cy)
        cover = _coverage(kind, u, v, max(a, 1.0), max(b, 0.6), extra)
        fill = temp + shade * np.clip(v / max(b, 1.0), -1, 1)
        img[y0:y1, x0:x1] = img[y0:y1, x0:x1] * (1 - cover) + fill * cover
        sky[y0:y1, x0:x1] *= (cover < 0.5)
    return drawn


def _shimmer_sources(rng: np.random.Generator, strength: float, scene: _Scene) -> List[Dict]:
    """0-2 hot exhaust outlets (engine, heater or flare stacks, steam-free), drawn as hot stacks."""
    img, sky = scene.image, scene.sky
    h, w = img.shape
    outlets = []
    for _ in range(int(rng.choice([0, 1, 1, 2]))):
        y, x = rng.uniform(0.2, 0.8) * h, rng.uniform(0.1, 0.9) * w
        half, tall = int(rng.integers(2, 7)), int(rng.integers(8, 40))
        if strength > 0:
            sl = slice(int(y), min(int(y) + tall, h)), slice(max(int(x) - half, 0), int(x) + half + 1)
            img[sl] = rng.uniform(0.8, 1.0)
            sky[sl] = 0
        else:
            rng.uniform(0.8, 1.0)
        outlets.append(dict(y=float(y), x=float(x), length=rng.uniform(0.2, 0.5) * h,
                            spread=rng.uniform(0.15, 0.35), lean=rng.uniform(-0.5, 0.5),
                            amp=rng.uniform(0.6, 2.5), heat=rng.uniform(0.0, 0.03),
                            rise=rng.uniform(2.0, 8.0)))
    return outlets


def _apply_shimmer(rng: np.random.Generator, strength: float, outlets: List[Dict], stack: np.ndarray) -> np.ndarray:
    """Heat shimmer above each outlet: the background seen through hot turbulent air is displaced by a
    rising, boiling random field of ``amp`` pixels (refraction), and warmed by at most ``heat`` (the hot
    exhaust gas itself; no steam, no condensation plume). Not labelled: it is not the leaking gas."""
    frames, h, w = stack.shape
    if not outlets or strength == 0:
        for _ in outlets:  # keep the stream's position independent of the strength
            [_noise_spectrum(rng, (h, w), 2.2) for _ in range(3)]
        return stack
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    weight = np.zeros((h, w), np.float32)
    fields = []
    for o in outlets:
        along = o["y"] - yy  # height above the outlet
        across = (xx - o["x"]) - o["lean"] * along  # the hot air leans with the wind
        width = 3 + o["spread"] * np.maximum(along, 0)
        cone = np.exp(-0.5 * (across / width) ** 2) * (along > -2) * np.exp(-np.maximum(along, 0) / o["length"])
        weight = np.maximum(weight, cone.astype(np.float32))
        fields.append((cone.astype(np.float32), o, [_noise_spectrum(rng, (h, w), 2.2) for _ in range(3)]))
    out = stack.copy()
    for t in range(frames):
        dy = np.zeros((h, w), np.float32)
        dx = np.zeros((h, w), np.float32)
        warm = np.zeros((h, w), np.float32)
        for cone, o, (sy, sx, sh) in fields:
            shift = (-o["rise"] * t, 0.0)  # the hot air rises; a new pattern every frame
            dy += strength * o["amp"] * cone * _noise(sy, (h, w), shift)
            dx += strength * o["amp"] * cone * _noise(sx, (h, w), shift)
            warm += strength * o["heat"] * cone * np.exp(0.5 * _noise(sh, (h, w), shift))
        out[t] = _bilinear(stack[t], yy + dy, xx + dx) + warm
    return out


def _moving_distractors(fx, scene: _Scene, canvas, frames: int) -> Tuple[np.ndarray, Dict]:
    """Clouds, birds, insects and reflections of v3 (T x canvas), each scaled by its strength."""
    h, w = canvas
    out = np.zeros((frames,) + canvas, np.float32)
    meta = {}
    # Clouds: more of them than v2, faster, with sharper edges; also cold gaps (clear sky) inside a warm deck.
    rng, k = fx["clouds"]
    spec = _noise_spectrum(rng, canvas, rng.uniform(3.0, 4.5))
    cover, softness, amp = rng.uniform(-0.8, 0.8), rng.uniform(0.3, 1.2), rng.uniform(0.05, 0.25)
    vel = rng.uniform(-1.0, 1.0), rng.uniform(0.5, 4.0) * rng.choice([-1, 1])
    if k > 0 and scene.sky.any():
        for t in range(frames):
            n = _noise(spec, canvas, (vel[0] * t * 0.3, vel[1] * t))
            out[t] += k * amp * np.clip((n - cover) / softness, 0, 1) ** 1.5 * scene.sky
    meta["clouds"] = {"amplitude": float(k * amp), "speed_px": float(abs(vel[1]))}
    # Birds: anywhere in the view (gulls over a plant), flapping, warm.
    rng, k = fx["birds"]
    n = int(rng.integers(0, 6))
    y0, x0 = rng.uniform(0, h, n), rng.uniform(0, w, n)
    vy, vx = rng.uniform(-2, 2, n), rng.uniform(2, 9, n) * rng.choice([-1, 1], n)
    size, heat, phase = rng.uniform(0.8, 3.0, n), rng.uniform(0.1, 0.4, n), rng.uniform(0, 6.3, n)
    if k > 0 and n:
        for t in range(frames):
            flap = 1 + 0.6 * np.sin(1.7 * t + phase)
            out[t] += _render_gaussians(y0 + vy * t, (x0 + vx * t) % w, size * 0.7, size * flap,
                                        2 * math.pi * size * size * heat * k, canvas)
    meta["birds"] = n
    # Insects: close to the lens, so out of focus (soft, 1.5-6 px), faint, fast and erratic; warm or cool.
    rng, k = fx["insects"]
    n = int(rng.choice([0, 0, 2, 5, 12]))
    pos = np.stack([rng.uniform(0, h, n), rng.uniform(0, w, n)], 1)
    steps = np.cumsum(rng.normal(0, 4.0, (frames, n, 2)) + rng.normal(0, 4.0, (1, n, 2)), axis=0)
    size = rng.uniform(1.5, 6.0, n)
    heat = rng.uniform(0.02, 0.12, n) * np.where(rng.random(n) < 0.75, 1.0, -1.0)
    if k > 0 and n:
        for t in range(frames):
            p = pos + steps[t]
            out[t] += _render_gaussians(p[:, 0] % h, p[:, 1] % w, size, size,
                                        2 * math.pi * size * size * heat * k, canvas)
    meta["insects"] = n
    # Reflections: shiny panels, wet ground or windows mirror the cold sky and its moving clouds.
    rng, k = fx["reflections"]
    n = int(rng.choice([0, 1, 1, 2, 3]))
    meta["reflections"] = n
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.95) * h, rng.uniform(0.05, 0.95) * w
        a, b = rng.uniform(0.04, 0.15) * w, rng.uniform(0.02, 0.08) * h
        refl, sky_temp = rng.uniform(0.2, 0.7), rng.uniform(0.05, 0.3)
        spec = _noise_spectrum(rng, canvas, rng.uniform(3.0, 4.0))
        amp, vel = rng.uniform(0.02, 0.1), rng.uniform(0.5, 3.0) * rng.choice([-1, 1])
        if k == 0:
            continue
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        patch = _coverage("box", xx - cx, yy - cy, a, b, 0)
        static = patch * refl * (sky_temp - scene.image)
        for t in range(frames):
            out[t] += k * (static + patch * refl * amp * _noise(spec, canvas, (0.0, vel * t)))
    return out, meta


def _vary_plume(fx, p: Dict[str, float]) -> Tuple[Tuple[float, float], Dict]:
    """Far and near sources, thin and faint plumes (in place on the plume parameters).

    distance: 30 % far (every length and speed x 0.35-0.7), 25 % near (x 1.4-2.2), else as v2.
    thin_faint: 35 % thin (source size x 0.35-0.6, spreading x 0.15-0.4: a narrow jet or wisp); 35 % faint
    (peak optical depth only 1.5-5 x the visibility threshold, so most of the gas is near it, and the
    contrast at the threshold 4-5 noise sigmas, the low end of v2's 4-8: still visible, by v2's rule).
    Returns the range the per-clip edge SNR is drawn from.
    """
    rng, k = fx["distance"]
    u, scale = rng.random(), 1.0
    far, near = rng.uniform(0.35, 0.7), rng.uniform(1.4, 2.2)
    if k > 0:
        scale = far if u < 0.3 else near if u < 0.55 else 1.0
    for key in ("zoom", "jet_speed", "wind_x", "wind_y", "rise", "turbulence", "warp"):
        p[key] *= scale
    p["sigma0"] = max(p["sigma0"] * scale, 0.7)
    p["diffusivity"] *= scale * scale
    rng, k = fx["thin_faint"]
    thin, faint = rng.random() < 0.35, rng.random() < 0.35
    narrow, spread = rng.uniform(0.35, 0.6), rng.uniform(0.15, 0.4)
    weak = math.exp(rng.uniform(math.log(1.5), math.log(5.0)))
    thin, faint = thin and k > 0, faint and k > 0
    if thin:
        p["sigma0"] = max(p["sigma0"] * narrow, 0.7)
        p["diffusivity"] *= spread
        p["warp"] *= 0.6
    if faint:
        p["strength"] = weak
    return ((4.0, 5.0) if faint else (4.0, 8.0)), {"distance_scale": scale, "thin": thin, "faint": faint}


def _camera_v3(fx, camera: "_Camera", frames: int, noise_sigma: float) -> Dict:
    """Stronger sensor artefacts than v2 (in place on the camera): fixed patterns, gain/offset drift, shake.

    fixed_pattern: column stripes (0.5-2.5 sigma), row stripes (0-1.5 sigma), a smooth non-uniformity
    residue (0.5-3 sigma) and 0.01-0.1 % hot or dead pixels (5-20 sigma). drift: a slow gain drift
    (AR(1), 0.5-3 %) and offset drift (0.5-3 sigma), plus, in 30 % of the clips, a flat-field
    correction step (1-4 sigma) at a random frame. shake: 85 % of the cameras shake, a random walk of
    0.3-2 px steps with occasional jolts, within the canvas margin (whole pixels).
    """
    h, w = camera.size
    rng, k = fx["fixed_pattern"]
    cols = rng.standard_normal(w)[None, :] * rng.uniform(0.5, 2.5)
    rows = rng.standard_normal(h)[:, None] * rng.uniform(0.0, 1.5)
    smooth = _noise(_noise_spectrum(rng, (h, w), 3.0), (h, w)) * rng.uniform(0.5, 3.0)
    bad = rng.random((h, w)) < rng.uniform(1e-4, 1e-3)
    bad_val = rng.uniform(5, 20, (h, w)) * np.where(rng.random((h, w)) < 0.5, 1, -1)
    camera.fpn = camera.fpn + k * noise_sigma * (cols + rows + smooth + bad * bad_val)
    rng, k = fx["drift"]
    gain = _ar1(rng, frames, 0.95, rng.uniform(0.005, 0.03))[:, 0]
    offset = _ar1(rng, frames, 0.95, rng.uniform(0.5, 3.0) * noise_sigma)[:, 0]
    if rng.random() < 0.3 and frames > 1:
        offset[int(rng.integers(1, frames)):] += rng.uniform(1, 4) * noise_sigma * rng.choice([-1, 1])
    camera.gain = 1 + k * gain
    camera.drift = camera.drift + k * offset
    rng, k = fx["shake"]
    still = rng.random() < 0.15
    walk = np.cumsum(_ar1(rng, frames, 0.5, rng.uniform(0.3, 2.0), 2), axis=0)
    jolts = (rng.random((frames, 1)) < 0.1) * rng.normal(0, 4, (frames, 2))
    if k > 0 and not still:
        camera.shifts = np.clip(np.rint(k * (walk + jolts)), -_MARGIN, _MARGIN).astype(np.intp)
    return {"gain_drift": float(np.abs(camera.gain - 1).max()), "still": bool(still or k == 0)}


# ---------------------------------------------------------------- public API


def simulate_clip(
    seed: int,
    frames: int = 24,
    height: int = 352,
    width: int = 352,
    leak: Union[str, bool] = "full",
    bit_depth: int = 8,
    visibility_threshold: float = VISIBILITY_THRESHOLD,
    version: int = DEFAULT_LIBRARY_VERSION,
    effects: Optional[Dict[str, float]] = None,
) -> SynthClip:
    """Render one clip with all its layers. ``leak``: one of :data:`LEAK_MODES` (or True / False).

    ``version`` 2 renders exactly what generator version 2 rendered; 3 adds the distractors of
    :data:`V3_EFFECTS`, whose strengths ``effects`` sets (name -> factor, 0 = off; version 3 only).
    """
    leak = {True: "full", False: "none"}.get(leak, leak) if isinstance(leak, bool) else leak
    if leak not in LEAK_MODES:
        raise ValueError(f"leak must be one of {LEAK_MODES}, got {leak!r}")
    if bit_depth not in (8, 16):
        raise ValueError(f"bit_depth must be 8 or 16, got {bit_depth}")
    if frames < 1 or height < 16 or width < 16:
        raise ValueError("need frames >= 1 and a size of at least 16 x 16")
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"version must be one of {GENERATOR_VERSIONS}, got {version!r}")
    if effects and version < 3:
        raise ValueError("effects need version 3")
    # Independent streams: the scene, wind and noise of a seed stay the same whatever the leak mode.
    # Version 3's effects draw from a fifth stream (one sub-stream per effect), so the first four are v2's.
    seqs = np.random.SeedSequence(seed).spawn(5)
    r_scene, r_plume, r_time, r_cam = (np.random.default_rng(s) for s in seqs[:4])
    fx = _effect_streams(seqs[4], effects) if version >= 3 else None
    canvas = (height + 2 * _MARGIN, width + 2 * _MARGIN)
    scene = _render_scene(r_scene, canvas)
    v3_meta: Dict = {}
    if fx:
        v3_meta["structures"] = len(_structures(*fx["structures"], scene))
        outlets = _shimmer_sources(*fx["shimmer"], scene)
        v3_meta["exhaust_outlets"] = len(outlets)
    horizon_rows = int(scene.sky.any(axis=1).sum())
    if fx:
        v3_meta["sky_fraction"] = float(scene.sky.mean())
    moving = _clouds(r_scene, canvas, frames, scene.sky) + _birds(r_scene, canvas, frames, horizon_rows)
    p = _sample_plume(r_plume, scene, canvas, (height, width))
    snr_range = (4.0, 8.0)
    if fx:
        snr_range, plume_meta = _vary_plume(fx, p)
        v3_meta.update(plume_meta)
    window = _emission_window(r_time, leak, frames)
    density = _scaled_density(_plume_density(r_plume, p, window, frames, canvas), window, p, visibility_threshold)

    noise_sigma = r_cam.uniform(0.004, 0.012)
    dtemp, contrast_meta = _gas_contrast(r_cam, scene, noise_sigma, visibility_threshold, snr_range)
    camera = _Camera(r_cam, frames, height, width, noise_sigma)
    bg_scene = scene.image[None] + moving
    if fx:
        extra, moving_meta = _moving_distractors(fx, scene, canvas, frames)
        bg_scene = _apply_shimmer(*fx["shimmer"], outlets, bg_scene + extra)
        v3_meta.update(moving_meta)
        v3_meta.update(_camera_v3(fx, camera, frames, noise_sigma))
        v3_meta["strengths"] = {name: k for name, (_, k) in fx.items()}
    clean = camera(bg_scene)
    gassy = camera(bg_scene + dtemp * (1 - np.exp(-density)))
    temporal = r_cam.standard_normal(gassy.shape).astype(np.float32) * noise_sigma
    out_map = _output_map(r_cam, bit_depth, clean[0], dtemp)
    out = out_map["offset"] + out_map["gain"] * (gassy + temporal)
    dtype, top = (np.uint8, 255) if bit_depth == 8 else (np.uint16, 65535)

    density = camera.crop(density)  # the label moves with the shaken view, but is not blurred
    masks = density > visibility_threshold
    meta = {
        "generator": "leakseg.training.synth", "version": version, "seed": int(seed),
        "frames": frames, "height": height, "width": width, "bit_depth": bit_depth, "leak": leak,
        "visibility_threshold": visibility_threshold,
        "emission": {"first_frame": window[0], "stop_frame": window[1]} if window else None,
        "leak_frames": [int(t) for t in np.flatnonzero(masks.any(axis=(1, 2)))],
        "source_xy": [p["source_x"] - _MARGIN, p["source_y"] - _MARGIN],
        "plume": {k: float(v) for k, v in p.items()},
        "camera": {"noise_sigma": float(noise_sigma), **contrast_meta, **camera.meta(), **out_map},
    }
    if fx:
        # brighter / darker than the background in the written frames: the gas contrast's sign times the
        # output map's (black-hot palettes flip it)
        meta["plume_polarity"] = "brighter" if contrast_meta["gas_contrast"] * out_map["gain"] > 0 else "darker"
        meta["distractors"] = v3_meta
    return SynthClip(
        frames=np.clip(np.rint(out), 0, top).astype(dtype),
        masks=masks,
        density=density.astype(np.float32),
        background=(out_map["offset"] + out_map["gain"] * clean).astype(np.float32),
        meta=meta,
    )


def _scaled_density(raw: np.ndarray, window, p: Dict[str, float], threshold: float) -> np.ndarray:
    """Scale the optical depth so that the typical peak while the leak is on is `strength` x the threshold."""
    peaks = raw.reshape(len(raw), -1).max(axis=1)
    on = peaks[slice(window[0] or 0, window[1])] if window else peaks[:0]
    ref = np.median(on) if on.size and on.max() > 0 else 1.0
    return raw * np.float32(p["strength"] * threshold / ref)


def _gas_contrast(rng: np.random.Generator, scene: _Scene, noise_sigma: float, threshold: float,
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
    dtemp = delta - coupling * (scene.image - scene.ground_level)
    dtemp = sign * np.maximum(sign * dtemp, 0.6 * abs(delta))
    meta = {"edge_snr": float(edge_snr), "gas_contrast": float(delta), "contrast_coupling": float(coupling)}
    return dtemp.astype(np.float32), meta


def generate_clip(
    seed: int,
    frames: int = 24,
    height: int = 352,
    width: int = 352,
    leak: Union[str, bool] = "full",
    bit_depth: int = 8,
    visibility_threshold: float = VISIBILITY_THRESHOLD,
    version: int = DEFAULT_LIBRARY_VERSION,
    effects: Optional[Dict[str, float]] = None,
) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """(frames T x H x W uint8/uint16, masks T x H x W bool, meta) for one clip.

    :func:`simulate_clip` takes the same arguments and also returns the gas density and the gas-free,
    noise-free background.
    """
    clip = simulate_clip(seed, frames, height, width, leak, bit_depth, visibility_threshold, version, effects)
    return clip.frames, clip.masks, clip.meta


def write_clip(scene_dir: Union[str, Path], frames: np.ndarray, masks: np.ndarray, meta: Dict) -> Path:
    """Write SCENE/images/00000.png, SCENE/masks/00000.png (0/255) and SCENE/meta.json."""
    from PIL import Image

    scene_dir = Path(scene_dir)
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    (scene_dir / "masks").mkdir(parents=True, exist_ok=True)
    for t, (frame, mask) in enumerate(zip(frames, masks)):
        Image.fromarray(frame).save(scene_dir / "images" / f"{t:05d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(scene_dir / "masks" / f"{t:05d}.png")
    text = json.dumps(meta, indent=1, sort_keys=True)
    # Keep lists of numbers (leak frames, jitter) on one line each, for a readable file.
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    (scene_dir / "meta.json").write_text(text + "\n")
    return scene_dir


def clip_plan(n_clips: int, seed: int, leak_free_fraction: float = 0.2, partial_fraction: float = 0.2):
    """(clip seed, leak mode) for each clip: exact shares of each mode, shuffled by ``seed``."""
    if not 0 <= leak_free_fraction <= 1 or not 0 <= partial_fraction <= 1 - leak_free_fraction:
        raise ValueError("need 0 <= leak_free_fraction and 0 <= partial_fraction with a sum of at most 1")
    n_free = round(n_clips * leak_free_fraction)
    n_partial = min(round(n_clips * partial_fraction), n_clips - n_free)
    modes = ["none"] * n_free + ["start", "stop"] * (n_partial // 2) + ["start"] * (n_partial % 2)
    modes += ["full"] * (n_clips - len(modes))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    modes = [modes[i] for i in rng.permutation(n_clips)]
    seeds = np.random.SeedSequence([seed, 0]).generate_state(n_clips).tolist() if n_clips else []
    return list(zip(seeds, modes))


def write_dataset(
    out_dir: Union[str, Path],
    n_clips: int,
    seed: int,
    frames: int = 24,
    height: int = 352,
    width: int = 352,
    leak_free_fraction: Optional[float] = None,
    partial_fraction: Optional[float] = None,
    bit_depth: int = 8,
    visibility_threshold: float = VISIBILITY_THRESHOLD,
    progress: bool = True,
    version: int = DEFAULT_LIBRARY_VERSION,
    effects: Optional[Dict[str, float]] = None,
) -> List[Path]:
    """Write ``n_clips`` clips as OUT/synth_00000/... ; returns the scene folders.

    The shares of leak-free and partial clips default to the version's :data:`DEFAULT_FRACTIONS`.
    """
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"version must be one of {GENERATOR_VERSIONS}, got {version!r}")
    free_default, partial_default = DEFAULT_FRACTIONS[version]
    leak_free_fraction = free_default if leak_free_fraction is None else leak_free_fraction
    partial_fraction = partial_default if partial_fraction is None else partial_fraction
    plan = clip_plan(n_clips, seed, leak_free_fraction, partial_fraction)
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=n_clips, unit="clip", desc="synth")
        except ImportError:  # tqdm ships with the [export] extra; the bar is a nicety
            pass
    scenes = []
    for i, (clip_seed, mode) in enumerate(plan):
        f, m, meta = generate_clip(clip_seed, frames, height, width, mode, bit_depth, visibility_threshold,
                                   version, effects)
        meta["dataset"] = {"seed": int(seed), "index": i}
        scenes.append(write_clip(Path(out_dir) / f"synth_{i:05d}", f, m, meta))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return scenes
