"""Layer 2, the plume: when the leak emits, its physics per clip, the puffs' tracks and the optical depth.

Gaussian puffs leave a flange or valve with a decaying jet velocity, ride a gusty wind, rise or sink,
meander and grow; the sum is warped by an evolving displacement field and multiplied by advected
log-normal turbulence. The optical depth is then scaled per clip relative to the visibility threshold.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import numpy as np

from leakseg.synth.camera import MARGIN
from leakseg.synth.fields import ar1, noise_field, noise_spectrum, render_gaussians, sample_bilinear
from leakseg.synth.scene import Scene


def emission_window(rng: np.random.Generator, leak: str, frames: int) -> Tuple[Optional[int], Optional[int]]:
    """(first, stop) frame of emission, None meaning "before the clip" / "after it". None for a leak-free clip."""
    start = int(rng.integers(frames // 4, max(3 * frames // 4, frames // 4 + 1)))
    stop = int(rng.integers(max(frames // 5, 1), max(frames // 2, frames // 5 + 2)))
    if leak == "burst":  # drawn only here, so the other modes' streams stay what they were
        start = int(rng.integers(frames // 6, max(frames // 4, frames // 6 + 1) + 1))
        stop = int(rng.integers(max(frames // 3, start + 1), max(frames // 2, start + 2)))
        return start, stop
    return {"full": (None, None), "none": None, "start": (start, None), "stop": (None, stop)}[leak]


def sample_plume(rng: np.random.Generator, scene: Scene, canvas, crop) -> Dict[str, float]:
    """Per-clip plume physics. Sources well inside the visible crop are preferred, so the gas is seen."""
    (h, w), (ch, cw) = canvas, crop
    inside = [(y, x, a) for y, x, a in scene.sources
              if 0.15 * ch < y - MARGIN < 0.85 * ch and 0.15 * cw < x - MARGIN < 0.85 * cw]
    pool = inside or scene.sources or [(h / 2, w / 2, -math.pi / 2)]
    return plume_physics(rng, pool[int(rng.integers(len(pool)))], crop)


def plume_physics(rng: np.random.Generator, source: Tuple[float, float, float], crop) -> Dict[str, float]:
    """The plume's physics for one source (y, x on the canvas, outward normal angle) seen in a view of
    ``crop`` (height, width) pixels: wind, jet, buoyancy, growth, turbulence, puffing. The self-test
    (:mod:`leakseg.selftest.inject`) draws its plumes here too, at a source it chooses."""
    sy, sx, normal = source
    ch, cw = crop
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
    gusts = ar1(rng, frames - t0, 0.9, p["gust"] * speed + 0.05, 2)
    # Puffing: a smooth random rate; high "puffing" makes emission bursty (log-normal with a big variance).
    rate = np.exp(2.0 * p["puffing"] * ar1(rng, frames - t0, 0.8, 1.0)[:, 0])
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


def plume_density(rng: np.random.Generator, p: Dict[str, float], window, frames: int, canvas) -> np.ndarray:
    """Optical depth (T x canvas), before the per-clip scaling to the visibility threshold."""
    tracks = _puff_tracks(rng, p, window, frames)
    wisp_spec = noise_spectrum(rng, canvas, p["wisp_beta"]), noise_spectrum(rng, canvas, p["wisp_beta"])
    warp_spec = [noise_spectrum(rng, canvas, 3.5) for _ in range(4)]
    yy, xx = np.mgrid[0:canvas[0], 0:canvas[1]].astype(np.float32)
    g = p["wisp"]
    out = np.zeros((frames,) + canvas, np.float32)
    for t, (cy, cx, sigma, mass) in enumerate(tracks):
        keep = mass > 1e-4 * max(mass.max(initial=0), 1e-12)
        if not keep.any():
            continue
        dens = render_gaussians(cy[keep], cx[keep], sigma[keep], sigma[keep] * 1.15, mass[keep], canvas)
        # Turbulence evolves (rotating between two independent fields) while the mean wind carries it.
        # Mixing and shifting are linear, so they are done on the spectra: one inverse FFT per field.
        phase, shift = p["boil"] * t, (p["wind_y"] * t, p["wind_x"] * t)
        c, s = math.cos(phase), math.sin(phase)
        dy = noise_field(c * warp_spec[0] + s * warp_spec[1], canvas, shift)
        dx = noise_field(c * warp_spec[2] + s * warp_spec[3], canvas, shift)
        dens = sample_bilinear(dens, yy + p["warp"] * dy, xx + p["warp"] * dx)
        n = noise_field(c * wisp_spec[0] + s * wisp_spec[1], canvas, shift)
        out[t] = dens * np.exp(g * n - g * g / 2)  # log-normal with mean 1: wisps and holes
    return out


def scaled_density(raw: np.ndarray, window, p: Dict[str, float], threshold: float) -> np.ndarray:
    """Scale the optical depth so that the typical peak while the leak is on is `strength` x the threshold."""
    peaks = raw.reshape(len(raw), -1).max(axis=1)
    on = peaks[slice(window[0] or 0, window[1])] if window else peaks[:0]
    ref = np.median(on) if on.size and on.max() > 0 else 1.0
    return raw * np.float32(p["strength"] * threshold / ref)
