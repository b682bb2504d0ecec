"""Version 3: the distractors of real OGI footage, applied as one pass over a version-2 clip recipe.

:func:`apply_version_3` takes the recipe of a version-2 clip (its scene, plume parameters and noise
level, drawn but not yet rendered, :class:`leakseg.synth.clip.ClipRecipe`) and changes it once: it draws
into the scene, varies the plume, and hands the renderer extra background layers and sensor artefacts.
It has to act on the recipe rather than on finished frames because the distractors sit in front of the
optics (blurred, shaken and AGC-stretched with the rest) and the plume variations change the gas itself.
Each effect draws from its own random stream (a fifth stream of the clip seed, split per effect), never
from version 2's, so version 2 is exactly what it was and ``effects={"name": strength}`` (0 = off,
1 = default) changes that effect alone:

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
same distractors with no gas, :data:`leakseg.synth.dataset.DEFAULT_FRACTIONS`) and one third partial (start or
stop). The distractor mix does not depend on the leak mode, so clutter is no cue for "no leak", and a leak-free clip
is still the gas-free twin of its seed. ``meta["distractors"]`` records what each effect drew.

"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

import numpy as np

from leakseg.synth.camera import MARGIN, SensorArtefacts
from leakseg.synth.fields import ar1, noise_field, noise_spectrum, render_gaussians, sample_bilinear
from leakseg.synth.scene import Scene

if TYPE_CHECKING:
    from leakseg.synth.clip import ClipRecipe

#: Version-3 effects, each a strength in ``simulate_clip(effects={...})``: 0 off, 1 the default mix.
V3_EFFECTS = ("structures", "shimmer", "clouds", "birds", "insects", "reflections",
              "fixed_pattern", "drift", "shake", "distance", "thin_faint")
#: Version 3 with every distractor off: a calm scene, its plume the only thing that moves (demos, monitor tests).
CALM_EFFECTS = {name: 0.0 for name in V3_EFFECTS}

#: An effect's own random stream and its strength (0 = off, 1 = default).
Effect = Tuple[np.random.Generator, float]


def check_effects(effects: Optional[Dict[str, float]]) -> None:
    """ValueError for an unknown effect name or a strength that is not a number >= 0."""
    unknown = sorted(set(effects or {}) - set(V3_EFFECTS))
    if unknown:
        raise ValueError(f"unknown v3 effects {unknown}; known: {list(V3_EFFECTS)}")
    for name, value in (effects or {}).items():
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"effect {name!r}: strength must be a number >= 0, got {value!r}")


def effect_streams(seq: np.random.SeedSequence, effects: Optional[Dict[str, float]]) -> Dict[str, Effect]:
    """One independent generator per v3 effect, and each effect's strength (0 = off, 1 = default).

    Every effect draws from its own stream whether it is on or not, so switching one effect off (or
    changing its strength) leaves every other effect of the seed exactly as it was.
    """
    effects = dict(effects or {})
    rngs = {name: np.random.default_rng(s) for name, s in zip(V3_EFFECTS, seq.spawn(len(V3_EFFECTS)))}
    return {name: (rngs[name], float(effects.get(name, 1.0))) for name in V3_EFFECTS}


def apply_version_3(recipe: "ClipRecipe", effects: Optional[Dict[str, float]]) -> None:
    """Turn a version-2 clip recipe into version 3's (in place); ``effects``: name -> strength."""
    fx = effect_streams(recipe.streams.effects, effects)
    scene, spec = recipe.scene, recipe.spec
    meta: Dict = {"structures": len(_structures(*fx["structures"], scene))}
    outlets = _shimmer_sources(*fx["shimmer"], scene)
    meta["exhaust_outlets"] = len(outlets)
    meta["sky_fraction"] = float(scene.sky.mean())
    meta.update(_vary_distance(*fx["distance"], recipe.plume))
    recipe.snr_range, faint_meta = _vary_thin_faint(*fx["thin_faint"], recipe.plume)
    meta.update(faint_meta)
    layers, moving_meta = _moving_distractors(fx, scene, recipe.canvas, spec.frames)
    meta.update(moving_meta)
    shimmer = _Shimmer(*fx["shimmer"], outlets, recipe.canvas)
    recipe.add_distractors = lambda stack: shimmer(stack + layers)
    recipe.sensor, sensor_meta = _sensor_artefacts(fx, (spec.height, spec.width), spec.frames, recipe.noise_sigma)
    meta.update(sensor_meta)
    meta["strengths"] = {name: k for name, (_, k) in fx.items()}
    recipe.distractor_meta = meta


# --- static: structures and exhaust outlets drawn into the scene ----------------------------------


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


def _structures(rng: np.random.Generator, strength: float, scene: Scene) -> List[Dict]:
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


def _shimmer_sources(rng: np.random.Generator, strength: float, scene: Scene) -> List[Dict]:
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


class _Shimmer:
    """Heat shimmer above each outlet: the background seen through hot turbulent air is displaced by a
    rising, boiling random field of ``amp`` pixels (refraction), and warmed by at most ``heat`` (the hot
    exhaust gas itself; no steam, no condensation plume). Not labelled: it is not the leaking gas."""

    def __init__(self, rng: np.random.Generator, strength: float, outlets: List[Dict], shape: Tuple[int, int]):
        h, w = shape
        self.strength, self.fields = strength, []
        if strength == 0:
            for _ in outlets:  # keep the stream's position independent of the strength
                [noise_spectrum(rng, (h, w), 2.2) for _ in range(3)]
            return
        self.yy, self.xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for o in outlets:
            along = o["y"] - self.yy  # height above the outlet
            across = (self.xx - o["x"]) - o["lean"] * along  # the hot air leans with the wind
            width = 3 + o["spread"] * np.maximum(along, 0)
            cone = np.exp(-0.5 * (across / width) ** 2) * (along > -2) * np.exp(-np.maximum(along, 0) / o["length"])
            self.fields.append((cone.astype(np.float32), o, [noise_spectrum(rng, (h, w), 2.2) for _ in range(3)]))

    def __call__(self, stack: np.ndarray) -> np.ndarray:
        if not self.fields:
            return stack
        frames, h, w = stack.shape
        out = stack.copy()
        for t in range(frames):
            dy = np.zeros((h, w), np.float32)
            dx = np.zeros((h, w), np.float32)
            warm = np.zeros((h, w), np.float32)
            for cone, o, (sy, sx, sh) in self.fields:
                shift = (-o["rise"] * t, 0.0)  # the hot air rises; a new pattern every frame
                dy += self.strength * o["amp"] * cone * noise_field(sy, (h, w), shift)
                dx += self.strength * o["amp"] * cone * noise_field(sx, (h, w), shift)
                warm += self.strength * o["heat"] * cone * np.exp(0.5 * noise_field(sh, (h, w), shift))
            out[t] = sample_bilinear(stack[t], self.yy + dy, self.xx + dx) + warm
        return out


# --- moving: clouds, birds, insects and reflections, added into one layer stack -----------------------


def _moving_distractors(fx: Dict[str, Effect], scene: Scene, canvas, frames: int) -> Tuple[np.ndarray, Dict]:
    """Clouds, birds, insects and reflections (T x canvas), each scaled by its strength.

    They are summed into one stack in this order (float32 sums depend on it).
    """
    out = np.zeros((frames,) + canvas, np.float32)
    meta: Dict = {"clouds": _add_clouds(out, *fx["clouds"], scene.sky)}
    meta["birds"] = _add_birds(out, *fx["birds"])
    meta["insects"] = _add_insects(out, *fx["insects"])
    meta["reflections"] = _add_reflections(out, *fx["reflections"], scene)
    return out, meta


def _add_clouds(out: np.ndarray, rng: np.random.Generator, k: float, sky: np.ndarray) -> Dict:
    """More clouds than v2, faster, with sharper edges; also cold gaps (clear sky) inside a warm deck."""
    frames, canvas = len(out), out.shape[1:]
    spec = noise_spectrum(rng, canvas, rng.uniform(3.0, 4.5))
    cover, softness, amp = rng.uniform(-0.8, 0.8), rng.uniform(0.3, 1.2), rng.uniform(0.05, 0.25)
    vel = rng.uniform(-1.0, 1.0), rng.uniform(0.5, 4.0) * rng.choice([-1, 1])
    if k > 0 and sky.any():
        for t in range(frames):
            n = noise_field(spec, canvas, (vel[0] * t * 0.3, vel[1] * t))
            out[t] += k * amp * np.clip((n - cover) / softness, 0, 1) ** 1.5 * sky
    return {"amplitude": float(k * amp), "speed_px": float(abs(vel[1]))}


def _add_birds(out: np.ndarray, rng: np.random.Generator, k: float) -> int:
    """Birds anywhere in the view (gulls over a plant), flapping, warm; returns how many."""
    frames, (h, w) = len(out), out.shape[1:]
    n = int(rng.integers(0, 6))
    y0, x0 = rng.uniform(0, h, n), rng.uniform(0, w, n)
    vy, vx = rng.uniform(-2, 2, n), rng.uniform(2, 9, n) * rng.choice([-1, 1], n)
    size, heat, phase = rng.uniform(0.8, 3.0, n), rng.uniform(0.1, 0.4, n), rng.uniform(0, 6.3, n)
    if k > 0 and n:
        for t in range(frames):
            flap = 1 + 0.6 * np.sin(1.7 * t + phase)
            out[t] += render_gaussians(y0 + vy * t, (x0 + vx * t) % w, size * 0.7, size * flap,
                                       2 * math.pi * size * size * heat * k, (h, w))
    return n


def _add_insects(out: np.ndarray, rng: np.random.Generator, k: float) -> int:
    """Insects close to the lens, so out of focus (soft, 1.5-6 px), faint, fast and erratic; warm or cool."""
    frames, (h, w) = len(out), out.shape[1:]
    n = int(rng.choice([0, 0, 2, 5, 12]))
    pos = np.stack([rng.uniform(0, h, n), rng.uniform(0, w, n)], 1)
    steps = np.cumsum(rng.normal(0, 4.0, (frames, n, 2)) + rng.normal(0, 4.0, (1, n, 2)), axis=0)
    size = rng.uniform(1.5, 6.0, n)
    heat = rng.uniform(0.02, 0.12, n) * np.where(rng.random(n) < 0.75, 1.0, -1.0)
    if k > 0 and n:
        for t in range(frames):
            p = pos + steps[t]
            out[t] += render_gaussians(p[:, 0] % h, p[:, 1] % w, size, size,
                                       2 * math.pi * size * size * heat * k, (h, w))
    return n


def _add_reflections(out: np.ndarray, rng: np.random.Generator, k: float, scene: Scene) -> int:
    """Shiny panels, wet ground or windows that mirror the cold sky and its moving clouds."""
    frames, canvas = len(out), out.shape[1:]
    h, w = canvas
    n = int(rng.choice([0, 1, 1, 2, 3]))
    for _ in range(n):
        cy, cx = rng.uniform(0.3, 0.95) * h, rng.uniform(0.05, 0.95) * w
        a, b = rng.uniform(0.04, 0.15) * w, rng.uniform(0.02, 0.08) * h
        refl, sky_temp = rng.uniform(0.2, 0.7), rng.uniform(0.05, 0.3)
        spec = noise_spectrum(rng, canvas, rng.uniform(3.0, 4.0))
        amp, vel = rng.uniform(0.02, 0.1), rng.uniform(0.5, 3.0) * rng.choice([-1, 1])
        if k == 0:
            continue
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        patch = _coverage("box", xx - cx, yy - cy, a, b, 0)
        static = patch * refl * (sky_temp - scene.image)
        for t in range(frames):
            out[t] += k * (static + patch * refl * amp * noise_field(spec, canvas, (0.0, vel * t)))
    return n


# --- the plume: far and near sources, thin and faint plumes -------------------------------------------


def _vary_distance(rng: np.random.Generator, k: float, p: Dict[str, float]) -> Dict:
    """30 % far sources (every plume length and speed x 0.35-0.7), 25 % near (x 1.4-2.2), else as v2
    (in place on the plume parameters)."""
    u, scale = rng.random(), 1.0
    far, near = rng.uniform(0.35, 0.7), rng.uniform(1.4, 2.2)
    if k > 0:
        scale = far if u < 0.3 else near if u < 0.55 else 1.0
    for key in ("zoom", "jet_speed", "wind_x", "wind_y", "rise", "turbulence", "warp"):
        p[key] *= scale
    p["sigma0"] = max(p["sigma0"] * scale, 0.7)
    p["diffusivity"] *= scale * scale
    return {"distance_scale": scale}


def _vary_thin_faint(rng: np.random.Generator, k: float, p: Dict[str, float]) -> Tuple[Tuple[float, float], Dict]:
    """35 % thin plumes (source size x 0.35-0.6, spreading x 0.15-0.4: a narrow jet or wisp); 35 % faint
    (peak optical depth only 1.5-5 x the visibility threshold, so most of the gas is near it, and the
    contrast at the threshold 4-5 noise sigmas, the low end of v2's 4-8: still visible, by v2's rule).

    In place on the plume parameters; returns the range the per-clip edge SNR is drawn from.
    """
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
    return ((4.0, 5.0) if faint else (4.0, 8.0)), {"thin": thin, "faint": faint}


# --- the sensor: fixed patterns, gain and offset drift, shake ------------------------------------------


def _sensor_artefacts(fx: Dict[str, Effect], size: Tuple[int, int], frames: int,
                      noise_sigma: float) -> Tuple[SensorArtefacts, Dict]:
    """Stronger sensor artefacts than v2's, for :meth:`leakseg.synth.camera.Camera.add`."""
    gain, offset = _drift(*fx["drift"], frames, noise_sigma)
    shifts, still = _shake(*fx["shake"], frames)
    artefacts = SensorArtefacts(_fixed_pattern(*fx["fixed_pattern"], size, noise_sigma), gain, offset, shifts)
    return artefacts, {"gain_drift": float(np.abs(gain - 1).max()), "still": still}


def _fixed_pattern(rng: np.random.Generator, k: float, size: Tuple[int, int], noise_sigma: float) -> np.ndarray:
    """Column stripes (0.5-2.5 sigma), row stripes (0-1.5 sigma), a smooth non-uniformity residue
    (0.5-3 sigma) and 0.01-0.1 % hot or dead pixels (5-20 sigma)."""
    h, w = size
    cols = rng.standard_normal(w)[None, :] * rng.uniform(0.5, 2.5)
    rows = rng.standard_normal(h)[:, None] * rng.uniform(0.0, 1.5)
    smooth = noise_field(noise_spectrum(rng, (h, w), 3.0), (h, w)) * rng.uniform(0.5, 3.0)
    bad = rng.random((h, w)) < rng.uniform(1e-4, 1e-3)
    bad_val = rng.uniform(5, 20, (h, w)) * np.where(rng.random((h, w)) < 0.5, 1, -1)
    return k * noise_sigma * (cols + rows + smooth + bad * bad_val)


def _drift(rng: np.random.Generator, k: float, frames: int, noise_sigma: float) -> Tuple[np.ndarray, np.ndarray]:
    """(per-frame gain, added offset): a slow gain drift (AR(1), 0.5-3 %) and offset drift (0.5-3 sigma),
    plus, in 30 % of the clips, a flat-field correction step (1-4 sigma) at a random frame."""
    gain = ar1(rng, frames, 0.95, rng.uniform(0.005, 0.03))[:, 0]
    offset = ar1(rng, frames, 0.95, rng.uniform(0.5, 3.0) * noise_sigma)[:, 0]
    if rng.random() < 0.3 and frames > 1:
        offset[int(rng.integers(1, frames)):] += rng.uniform(1, 4) * noise_sigma * rng.choice([-1, 1])
    return 1 + k * gain, k * offset


def _shake(rng: np.random.Generator, k: float, frames: int) -> Tuple[Optional[np.ndarray], bool]:
    """(shifts or None for version 2's, whether the camera stands still): 85 % of the cameras shake, a
    random walk of 0.3-2 px steps with occasional jolts, within the canvas margin (whole pixels)."""
    still = rng.random() < 0.15
    walk = np.cumsum(ar1(rng, frames, 0.5, rng.uniform(0.3, 2.0), 2), axis=0)
    jolts = (rng.random((frames, 1)) < 0.1) * rng.normal(0, 4, (frames, 2))
    if k > 0 and not still:
        return np.clip(np.rint(k * (walk + jolts)), -MARGIN, MARGIN).astype(np.intp), False
    return None, bool(still or k == 0)
