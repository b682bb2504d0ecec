"""Synthetic plumes blended into a camera's own frames, with the generator's physics (:mod:`leakseg.synth`).

A plume is drawn exactly as the generator draws one (:func:`leakseg.synth.plume.plume_physics`: puffs on a
gusty wind, a decaying jet, buoyancy, growth, warped and log-normal turbulence, puffing), with its
source in the middle of a square working canvas and an emission window, so the gas appears, runs for
the leak's duration, stops and clears, its strength (peak optical depth) drawn as the generator draws it.
Of :data:`CANDIDATES` such plumes the one whose own size in the frame is nearest the size asked for is
resampled around the source position in the frame (:func:`leakseg.synth.fields.sample_bilinear`) with the
one scale that makes the mean visible area while the leak runs the size asked for. Shape, texture, motion
and strength are the generator's; the scale is chosen, and stays near the plume's own.

Blending follows the generator's radiative transfer: a pixel behind gas of optical depth ``tau``
changes by ``contrast_local * (1 - exp(-tau))``. ``contrast_local`` is the spec's contrast with the
polarity's sign, following the real background like the generator's gas contrast
(:func:`leakseg.synth.camera.following_background`): it shrinks by :data:`COUPLING` times how far the
pixel lies above the frame's median towards the gas, never below 60 % of the contrast, never flipping.
Grey frames (H x W, uint8 or uint16) change directly. RGB frames (H x W x 3, 8-bit video) get the
same change on all three channels, the way the model's preprocessing sees grey: a colour palette is
not re-rendered, so on a false-colour (e.g. ironbow) video the injected plume is a grey shift of the
colours, not the palette's colour for that temperature; the self-test of such a camera measures a
plume the camera itself would have drawn differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from leakseg.synth.camera import following_background
from leakseg.synth.fields import sample_bilinear
from leakseg.synth.plume import plume_density, plume_physics, scaled_density

#: Candidate plumes drawn per injected plume; the one whose own size is nearest the size asked for is used.
CANDIDATES = 8
#: How much of the background's offset from its median the gas contrast gives up (the generator draws 0-0.6).
COUPLING = 0.3
#: The working canvas the plume is simulated on (square), and the view its physics are drawn for: the
#: canvas is twice the view, so the drifting plume stays on it.
WORK_VIEW = 128
WORK_CANVAS = 2 * WORK_VIEW
#: The visible area is matched to this relative tolerance (the resampling is repeated at most SCALE_STEPS times).
SIZE_TOLERANCE = 0.05
SCALE_STEPS = 5
#: Sources keep this fraction of the frame's shorter side from its border.
BORDER_MARGIN = 0.1

POLARITY_SIGN = {"brighter": 1.0, "darker": -1.0}


@dataclass(frozen=True)
class PlumeSpec:
    """One plume to inject: its mean visible area while the leak runs (pixels), its contrast in the frame's
    units, brighter or darker, how many frames it emits, its source (x, y) in the frame, and its seed."""

    size_pixels: int
    contrast: float
    polarity: str
    duration_frames: int
    position: Tuple[int, int]
    seed: int


@dataclass
class Injected:
    """The frames with the plume in them (the input's shape and dtype), its visible pixels (T x H x W bool:
    optical depth above the visibility threshold), its optical depth (T x H x W float32) and its mean
    visible area over the frames in which the leak runs."""

    frames: np.ndarray
    masks: np.ndarray
    density: np.ndarray
    measured_size_pixels: float


def inject_plume(frames: np.ndarray, spec: PlumeSpec, start: int, visibility_threshold: float = 0.1) -> Injected:
    """Blend the plume of ``spec`` into ``frames`` (T x H x W or T x H x W x 3, uint8 or uint16): it emits
    from frame ``start`` for ``spec.duration_frames`` frames, then clears. Deterministic per ``spec.seed``."""
    if spec.polarity not in POLARITY_SIGN:
        raise ValueError(f"polarity must be one of {sorted(POLARITY_SIGN)}, got {spec.polarity!r}")
    frames = np.asarray(frames)
    window = (start, start + spec.duration_frames)
    work, natural = _natural_plume(spec, window, len(frames), frames.shape[1:3], visibility_threshold)
    density = _placed_to_size(work, natural, window, spec, frames.shape[1:3], visibility_threshold)
    masks = density > visibility_threshold
    return Injected(frames=_blended(frames, density, spec), masks=masks, density=density,
                    measured_size_pixels=_mean_visible_area(masks, window))


def _natural_plume(spec: PlumeSpec, window: Tuple[int, int], frames: int, size: Tuple[int, int],
                   threshold: float) -> Tuple[np.ndarray, float]:
    """Of :data:`CANDIDATES` plumes drawn with the generator's physics, the one whose own size in this frame
    is nearest the size asked for (in log size), and the scale that gives it that own size.

    A plume drawn for the working view looks in the frame like one drawn for the frame when magnified by
    ``frame view / working view``. Choosing among natural sizes, instead of shrinking or blowing up one
    plume, keeps what makes real plumes small or large: a small plume is a weak or quickly mixing one with
    thin wisps, like the generator's small plumes, not a distant copy of a big one."""
    view_scale = min(size) / WORK_VIEW
    best = None
    for k in range(CANDIDATES):
        seed = int(np.random.SeedSequence([spec.seed, k]).generate_state(1)[0])
        work = _working_density(seed, window, frames, threshold)
        area = _mean_visible_area(work > threshold, window) * view_scale ** 2
        miss = abs(math.log(max(area, 1e-3) / spec.size_pixels))
        if best is None or miss < best[0]:
            best = (miss, work, view_scale)
    return best[1], best[2]


def _working_density(seed: int, window: Tuple[int, int], frames: int, threshold: float) -> np.ndarray:
    """The plume's optical depth on the working canvas (T x WORK_CANVAS x WORK_CANVAS), source in the middle,
    its strength (peak optical depth over the threshold) drawn as the generator draws it."""
    rng = np.random.default_rng(seed)
    centre = WORK_CANVAS / 2
    physics = plume_physics(rng, (centre, centre, rng.uniform(0, 2 * math.pi)), (WORK_VIEW, WORK_VIEW))
    raw = plume_density(rng, physics, window, frames, (WORK_CANVAS, WORK_CANVAS))
    return scaled_density(raw, window, physics, threshold)


def _placed_to_size(work: np.ndarray, scale: float, window, spec: PlumeSpec, size: Tuple[int, int],
                    threshold: float) -> np.ndarray:
    """The working plume resampled into the frame around the source, starting from ``scale``, at the scale
    whose mean visible area (in the frame, so a plume cut by the border is measured as seen) is the spec's."""
    placed = _resampled(work, spec.position, size, scale)
    for _ in range(SCALE_STEPS):
        area = _mean_visible_area(placed > threshold, window)
        if area > 0 and abs(area / spec.size_pixels - 1) <= SIZE_TOLERANCE:
            break
        scale *= math.sqrt(spec.size_pixels / area) if area > 0 else 2.0
        placed = _resampled(work, spec.position, size, scale)
    return placed


def _resampled(work: np.ndarray, position: Tuple[int, int], size: Tuple[int, int], scale: float) -> np.ndarray:
    """Each working frame magnified by ``scale`` about its source, which lands on ``position`` (x, y)."""
    height, width = size
    x0, y0 = position
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    wy = WORK_CANVAS / 2 + (yy - y0) / scale
    wx = WORK_CANVAS / 2 + (xx - x0) / scale
    on_canvas = (wy >= 0) & (wy <= WORK_CANVAS - 1) & (wx >= 0) & (wx <= WORK_CANVAS - 1)
    out = np.zeros((len(work), height, width), np.float32)
    for t, layer in enumerate(work):
        if layer.any():
            out[t] = np.where(on_canvas, sample_bilinear(layer, wy, wx), 0.0)
    return out


def _mean_visible_area(masks: np.ndarray, window: Tuple[int, int]) -> float:
    """Visible pixels per frame, averaged over the frames in which the leak emits (the size's definition)."""
    running = masks[window[0]:window[1]]
    return float(running.reshape(len(running), -1).sum(axis=1).mean()) if len(running) else 0.0


def _blended(frames: np.ndarray, density: np.ndarray, spec: PlumeSpec) -> np.ndarray:
    """frame + contrast_local * opacity, the change rounded, the result clipped to the dtype (grey, or all three
    RGB channels)."""
    grey = frames.mean(axis=3) if frames.ndim == 4 else frames
    grey = grey.astype(np.float32)
    offset = grey - np.median(grey.reshape(len(grey), -1), axis=1)[:, None, None]
    delta = POLARITY_SIGN[spec.polarity] * float(spec.contrast)
    # rounded once, so every channel of an RGB pixel changes by the same whole number
    change = np.rint(following_background(delta, COUPLING, offset) * (1 - np.exp(-density)))
    if frames.ndim == 4:
        change = change[..., None]
    top = np.iinfo(frames.dtype).max
    return np.clip(frames.astype(np.float32) + change, 0, top).astype(frames.dtype)


def source_positions(ignore: Optional[np.ndarray], size: Tuple[int, int], count: int,
                     seed: int) -> List[Tuple[int, int]]:
    """``count`` leak sources (x, y), spread over the allowed pixels: not ignored (``ignore``: H x W bool, True
    for pixels outside the region of interest or inside an ignore zone; None: nothing ignored) and at least
    :data:`BORDER_MARGIN` of the frame from its border. Farthest-point: each source is the allowed pixel
    farthest from the forbidden pixels and the sources already chosen (``seed`` breaks ties), so the first
    is the deepest point of the region of interest. ValueError when no pixel is allowed."""
    height, width = size
    allowed = _allowed(ignore, height, width)
    step = max(1, math.ceil(max(height, width) / 64))  # a coarse grid keeps the distances cheap
    grid = allowed[::step, ::step]
    ys, xs = np.nonzero(grid)
    if not len(ys):
        raise ValueError("no pixel can hold a leak source: the region of interest minus the ignore zones is empty "
                         f"(or lies within {BORDER_MARGIN:.0%} of the frame's border)")
    candidates = np.stack([ys, xs], axis=1) * step
    fy, fx = np.nonzero(_edge(~grid))
    taken = np.stack([fy, fx], axis=1) * step
    jitter = np.random.default_rng(seed).random(len(candidates)) * 0.5 * step
    chosen: List[Tuple[int, int]] = []
    nearest = _nearest(candidates, taken)
    for _ in range(count):
        best = int(np.argmax(nearest + jitter))
        y, x = candidates[best]
        chosen.append((int(x), int(y)))
        nearest = np.minimum(nearest, _nearest(candidates, candidates[best:best + 1]))
    return chosen


def _allowed(ignore: Optional[np.ndarray], height: int, width: int) -> np.ndarray:
    """Pixels a source may sit on: not ignored and inside the border margin (without the margin when the
    region of interest lies wholly within it)."""
    free = np.ones((height, width), bool) if ignore is None else ~np.asarray(ignore, bool)
    if free.shape != (height, width):
        raise ValueError(f"the ignore mask is {free.shape[1]}x{free.shape[0]}, the frames are {width}x{height}")
    margin = int(BORDER_MARGIN * min(height, width))
    inner = np.zeros_like(free)
    inner[margin:height - margin, margin:width - margin] = True
    return free & inner if (free & inner).any() else free


def _edge(forbidden: np.ndarray) -> np.ndarray:
    """The forbidden cells beside an allowed one, and the grid's own border: all the distances need."""
    padded = np.pad(forbidden, 1, constant_values=True)
    beside_allowed = ~(padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:])
    edge = forbidden & beside_allowed
    border = np.zeros_like(forbidden)
    border[[0, -1], :] = border[:, [0, -1]] = True
    return edge | border


def _nearest(points: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Each point's distance to the nearest of ``others`` (inf when there are none)."""
    if not len(others):
        return np.full(len(points), np.inf)
    out = np.full(len(points), np.inf)
    for chunk in np.array_split(np.arange(len(others)), max(1, len(others) // 256)):
        d = np.hypot(*(points[:, None, :] - others[None, chunk, :]).transpose(2, 0, 1))
        out = np.minimum(out, d.min(axis=1))
    return out
