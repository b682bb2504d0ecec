"""One clip: its settings (:class:`ClipSpec`), its version-2 recipe, the version-3 pass, the rendering.

:func:`simulate_clip` draws a version-2 recipe (:func:`plan_clip`: the scene, the plume's parameters,
the emission window, the noise level), lets version 3 change it in one pass
(:func:`leakseg.synth.effects.apply_version_3`), then renders it (:func:`render_clip`): clouds and
birds, the gas and its contrast, the camera, temporal noise and the output map.

The clip seed is split into independent streams (scene, plume, emission timing, camera, and a fifth
that version 3 splits per effect), so the scene, wind and noise of a seed do not depend on the leak
mode, and version 3 never draws from version 2's streams.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple, Union

import numpy as np

from leakseg.synth.camera import MARGIN, Camera, SensorArtefacts, gas_contrast, output_map
from leakseg.synth.effects import apply_version_3, check_effects
from leakseg.synth.plume import emission_window, plume_density, sample_plume, scaled_density
from leakseg.synth.scene import Scene, drifting_clouds, flying_birds, render_scene

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


@dataclass
class ClipSpec:
    """What to render, the seed aside: the settings :func:`simulate_clip`, :func:`generate_clip` and
    :func:`leakseg.synth.dataset.write_dataset` share. Checked when made (ValueError)."""

    frames: int = 24
    height: int = 352
    width: int = 352
    leak: Union[str, bool] = "full"  #: one of :data:`LEAK_MODES`; True / False mean "full" / "none"
    bit_depth: int = 8  #: 8: AGC-stretched uint8, white-hot or black-hot; 16: raw-like uint16 counts
    visibility_threshold: float = VISIBILITY_THRESHOLD
    #: 2 renders exactly what generator version 2 rendered; 3 adds the distractors of real footage
    version: int = DEFAULT_LIBRARY_VERSION
    #: version 3 only: effect name (:data:`leakseg.synth.effects.V3_EFFECTS`) -> strength, 0 = off, 1 = default
    effects: Optional[Dict[str, float]] = None

    def __post_init__(self):
        if isinstance(self.leak, bool):
            self.leak = "full" if self.leak else "none"
        if self.leak not in LEAK_MODES:
            raise ValueError(f"leak must be one of {LEAK_MODES}, got {self.leak!r}")
        if self.bit_depth not in (8, 16):
            raise ValueError(f"bit_depth must be 8 or 16, got {self.bit_depth}")
        if self.frames < 1 or self.height < 16 or self.width < 16:
            raise ValueError("need frames >= 1 and a size of at least 16 x 16")
        if self.version not in GENERATOR_VERSIONS:
            raise ValueError(f"version must be one of {GENERATOR_VERSIONS}, got {self.version!r}")
        if self.effects and self.version < 3:
            raise ValueError("effects need version 3")
        check_effects(self.effects)

    @property
    def canvas(self) -> Tuple[int, int]:
        """The view plus the margin camera shake can bring into it."""
        return self.height + 2 * MARGIN, self.width + 2 * MARGIN


@dataclass
class SynthClip:
    """Everything :func:`simulate_clip` renders. Arrays are T x H x W."""

    frames: np.ndarray  #: uint8 or uint16 sensor frames
    masks: np.ndarray  #: bool, ``density > meta["visibility_threshold"]``
    density: np.ndarray  #: float32 optical depth of the gas, in image coordinates
    background: np.ndarray  #: float32 frames without gas and without temporal noise, in output units
    meta: Dict


@dataclass
class ClipStreams:
    """The independent random streams of one clip seed."""

    scene: np.random.Generator
    plume: np.random.Generator
    timing: np.random.Generator  #: when the leak emits
    camera: np.random.Generator
    effects: np.random.SeedSequence  #: version 3 splits it, one stream per effect

    @classmethod
    def of_seed(cls, seed: int) -> "ClipStreams":
        seqs = np.random.SeedSequence(seed).spawn(5)
        return cls(*(np.random.default_rng(s) for s in seqs[:4]), seqs[4])


@dataclass
class ClipRecipe:
    """A clip drawn but not yet rendered: what version 3's pass changes before :func:`render_clip`.

    The streams stay where drawing stopped; rendering draws on from there (clouds and birds from the
    scene stream, the puffs from the plume stream, contrast, camera and noise from the camera stream).
    """

    seed: int
    spec: ClipSpec
    streams: ClipStreams
    scene: Scene
    plume: Dict[str, float]  #: the plume's physics, :func:`leakseg.synth.plume.sample_plume`
    window: Optional[Tuple[Optional[int], Optional[int]]]  #: :func:`leakseg.synth.plume.emission_window`
    noise_sigma: float  #: temporal noise, in apparent temperature
    snr_range: Tuple[float, float] = (4.0, 8.0)  #: what the gas's edge SNR is drawn from
    #: background stack (T x canvas) -> the same with version 3's distractors in it
    add_distractors: Optional[Callable[[np.ndarray], np.ndarray]] = None
    sensor: Optional[SensorArtefacts] = None  #: version 3's sensor artefacts
    distractor_meta: Optional[Dict] = None  #: what version 3 drew (meta["distractors"])

    @property
    def canvas(self) -> Tuple[int, int]:
        return self.spec.canvas


def simulate_clip(seed: int, spec: Optional[ClipSpec] = None, **settings) -> SynthClip:
    """Render one clip with all its layers; ``settings``: :class:`ClipSpec` fields (over ``spec``'s)."""
    spec = ClipSpec(**settings) if spec is None else replace(spec, **settings)
    recipe = plan_clip(seed, spec)
    if spec.version >= 3:
        apply_version_3(recipe, spec.effects)
    return render_clip(recipe)


def generate_clip(seed: int, spec: Optional[ClipSpec] = None, **settings) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """(frames T x H x W uint8/uint16, masks T x H x W bool, meta) of :func:`simulate_clip`'s clip."""
    clip = simulate_clip(seed, spec, **settings)
    return clip.frames, clip.masks, clip.meta


def plan_clip(seed: int, spec: ClipSpec) -> ClipRecipe:
    """The version-2 recipe: the static scene, the plume's physics, the emission window, the noise level."""
    streams = ClipStreams.of_seed(seed)
    scene = render_scene(streams.scene, spec.canvas)
    return ClipRecipe(
        seed=seed, spec=spec, streams=streams, scene=scene,
        plume=sample_plume(streams.plume, scene, spec.canvas, (spec.height, spec.width)),
        window=emission_window(streams.timing, spec.leak, spec.frames),
        noise_sigma=streams.camera.uniform(0.004, 0.012),
    )


def render_clip(recipe: ClipRecipe) -> SynthClip:
    """Frames, labels and metadata of a recipe: the gas over the moving background, seen by the camera."""
    spec, streams = recipe.spec, recipe.streams
    background = _background(recipe)
    density = scaled_density(plume_density(streams.plume, recipe.plume, recipe.window, spec.frames, spec.canvas),
                             recipe.window, recipe.plume, spec.visibility_threshold)
    dtemp, contrast_meta = gas_contrast(streams.camera, recipe.scene, recipe.noise_sigma,
                                        spec.visibility_threshold, recipe.snr_range)
    camera = Camera(streams.camera, spec.frames, spec.height, spec.width, recipe.noise_sigma)
    if recipe.sensor is not None:
        camera.add(recipe.sensor)
    clean = camera(background)
    gassy = camera(background + dtemp * (1 - np.exp(-density)))  # opacity times the gas-background contrast
    temporal = streams.camera.standard_normal(gassy.shape).astype(np.float32) * recipe.noise_sigma
    out_map = output_map(streams.camera, spec.bit_depth, clean[0], dtemp)
    out = out_map["offset"] + out_map["gain"] * (gassy + temporal)
    dtype, top = (np.uint8, 255) if spec.bit_depth == 8 else (np.uint16, 65535)

    density = camera.crop(density)  # the label moves with the shaken view, but is not blurred
    masks = density > spec.visibility_threshold
    return SynthClip(
        frames=np.clip(np.rint(out), 0, top).astype(dtype),
        masks=masks,
        density=density.astype(np.float32),
        background=(out_map["offset"] + out_map["gain"] * clean).astype(np.float32),
        meta=_clip_meta(recipe, masks, {"noise_sigma": float(recipe.noise_sigma), **contrast_meta,
                                        **camera.meta(), **out_map}),
    )


def _background(recipe: ClipRecipe) -> np.ndarray:
    """The gas-free scene over time (T x canvas): the static scene, clouds and birds, version 3's distractors."""
    spec, scene = recipe.spec, recipe.scene
    horizon_rows = int(scene.sky.any(axis=1).sum())
    moving = (drifting_clouds(recipe.streams.scene, spec.canvas, spec.frames, scene.sky)
              + flying_birds(recipe.streams.scene, spec.canvas, spec.frames, horizon_rows))
    background = scene.image[None] + moving
    return background if recipe.add_distractors is None else recipe.add_distractors(background)


def _clip_meta(recipe: ClipRecipe, masks: np.ndarray, camera_meta: Dict) -> Dict:
    spec, p, window = recipe.spec, recipe.plume, recipe.window
    meta = {
        "generator": "leakseg.synth", "version": spec.version, "seed": int(recipe.seed),
        "frames": spec.frames, "height": spec.height, "width": spec.width, "bit_depth": spec.bit_depth,
        "leak": spec.leak, "visibility_threshold": spec.visibility_threshold,
        "emission": {"first_frame": window[0], "stop_frame": window[1]} if window else None,
        "leak_frames": [int(t) for t in np.flatnonzero(masks.any(axis=(1, 2)))],
        "source_xy": [p["source_x"] - MARGIN, p["source_y"] - MARGIN],
        "plume": {k: float(v) for k, v in p.items()},
        "camera": camera_meta,
    }
    if recipe.distractor_meta is not None:
        # brighter / darker than the background in the written frames: the gas contrast's sign times the
        # output map's (black-hot palettes flip it)
        brighter = camera_meta["gas_contrast"] * camera_meta["gain"] > 0
        meta["plume_polarity"] = "brighter" if brighter else "darker"
        meta["distractors"] = recipe.distractor_meta
    return meta
