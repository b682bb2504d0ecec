"""Synthetic, labelled infrared gas-leak clips (pure numpy): the demo's and the monitor tests' footage,
the benchmarks' and the default model's training data.

A clip is rendered in four layers, in "apparent temperature" units (roughly 0 = clear sky, 1 = hot process pipe):

1. **Scene** (:mod:`leakseg.synth.scene`): a sky gradient (cold overhead, warmer at the horizon), far
   silhouettes (tanks, buildings, stacks), textured ground, and a foreground pipe rack with flanges and valves.
   Clouds drift across the visible sky and birds fly through it: moving distractors that are *not* gas.
2. **Plume** (:mod:`leakseg.synth.plume`): a leak at one flange or valve emits Gaussian puffs several times per
   frame. Each puff leaves with a decaying jet velocity, is carried by a gusty wind, rises or sinks with
   buoyancy, meanders with its own turbulent velocity, grows by diffusion and slowly dissipates. Emission is
   intermittent (puffing). The summed puffs are warped by a smooth, evolving displacement field and multiplied
   by advected log-normal turbulence, so the plume is wispy rather than a smooth cone.
3. **Radiative transfer** (:func:`leakseg.synth.camera.gas_contrast`): the plume's optical depth ``D`` (column
   density times absorption) gives an opacity ``1 - exp(-D)``; the frame changes by ``opacity * dT`` where
   ``dT`` is the gas-background temperature difference: a per-clip signed contrast (hot or cold gas) that also
   depends partly on the local background, floored at 0.6 of its nominal size so that labelled gas is never
   invisible.
4. **Camera** (:mod:`leakseg.synth.camera`): optics blur, slow integer camera jitter, vignetting, fixed-pattern
   noise (column stripes, pixel offsets and gains), a slow offset drift, temporal noise, then either an 8-bit
   AGC-stretched image (white-hot or black-hot) or 16-bit raw counts.

**The label.** ``mask = D > visibility_threshold`` (default :data:`VISIBILITY_THRESHOLD` = 0.1, i.e. where the
gas absorbs at least ~9.5 % of the background radiance). The plume's optical depth is scaled per clip so that
its typical peak is 5-30x the threshold (an opaque core near the source), and the contrast is chosen so that
at the threshold the intensity change is ``edge_snr`` (4-8, per clip) times the temporal noise; everywhere
inside the mask the change is at least 0.6 of that, i.e. at least 2.4 noise sigmas (before the optics blur).
Version 1 drew ``edge_snr`` from 2-5, which labelled gas at barely one noise sigma: no observer would mark it,
so the labels asked for the invisible (the datasets this imitates are labelled by eye).

Leak modes: ``"full"`` (leaking before and throughout the clip), ``"none"`` (leak-free), ``"start"`` (the leak
begins mid-clip), ``"stop"`` (it stops mid-clip and the remaining gas drifts off and dilutes) and ``"burst"``
(it starts and stops within the clip; never drawn for datasets). The scene, wind and noise of a seed do not
depend on the mode, so ``leak="none"`` is the gas-free twin of the same seed. A leak that is on at frame 0 has
been running for three dissipation times, so its plume is fully developed; after a leak stops, the gas left
behind drifts on and fades below visibility within a few frames (clear_time).

**Version 3** (:mod:`leakseg.synth.effects`; ``leakseg synth`` writes it by default, the library functions
default to 2 so that existing datasets and tests stay the same) keeps all of the above and adds what real OGI
footage has and version 2 lacks: structures, exhaust shimmer, faster clouds, birds anywhere, insects,
reflections, stronger fixed patterns, drift, shake, far and near, thin and faint plumes
(:data:`V3_EFFECTS`). It is one pass over the version-2 clip recipe (:mod:`leakseg.synth.clip`) and draws
from random streams of its own, so version 2 is unchanged by it.

Output (:mod:`leakseg.synth.dataset`) follows the authors' dataset layout: ``OUT/SCENE/images/00000.png``,
``OUT/SCENE/masks/00000.png`` (0/255 uint8) and ``OUT/SCENE/meta.json``. Everything is drawn from
``numpy.random.default_rng``, so the same seed gives byte-identical files with the same numpy build
(docs/DEFAULT_MODEL.md, "Reproducing the synthetic data": across builds, numpy's SIMD code for ``exp``,
``log`` and ``power`` may differ in the last bit, which can move a pixel by one grey level).
"""

from leakseg.synth.clip import (DEFAULT_LIBRARY_VERSION, GENERATOR_VERSION, GENERATOR_VERSIONS, LEAK_MODES,
                                VISIBILITY_THRESHOLD, ClipSpec, SynthClip, generate_clip, simulate_clip)
from leakseg.synth.dataset import DEFAULT_FRACTIONS, clip_plan, write_clip, write_dataset
from leakseg.synth.effects import CALM_EFFECTS, V3_EFFECTS
from leakseg.synth.fields import blur

__all__ = [
    "CALM_EFFECTS", "DEFAULT_FRACTIONS", "DEFAULT_LIBRARY_VERSION", "GENERATOR_VERSION", "GENERATOR_VERSIONS",
    "LEAK_MODES", "V3_EFFECTS", "VISIBILITY_THRESHOLD", "ClipSpec", "SynthClip", "blur", "clip_plan",
    "generate_clip", "simulate_clip", "write_clip", "write_dataset",
]
