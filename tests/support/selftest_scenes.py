"""Real generator plumes and the self-test's injected twins of them, for the claim that the self-test tells the
truth (tests/test_selftest_truth.py, benchmarks/selftest_truth.py).

A calm generator-v3 scene (every distractor off, 240 x 320) in which a real plume starts leaking (leak mode
"start": its gas runs to the end of the clip), and the scene's leak-free twin: the same scene, camera and noise,
since the generator's random streams do not depend on the leak. The real plume's labels give its size (mean
visible area while it leaks), contrast (the generator's gas-to-background contrast in grey levels,
``gas_contrast * gain``), polarity, start and source; :func:`matched_injection` blends a self-test plume with
those facts into the twin.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np

H, W = 240, 320
FRAMES = 32


def real_plume(seed: int, frames: int = FRAMES) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray, Dict]]:
    """(leak frames, twin frames, gas masks, the plume's facts), or None when the plume never shows."""
    from leakseg.synth import CALM_EFFECTS, generate_clip

    calm = dict(frames=frames, height=H, width=W, version=3, effects=CALM_EFFECTS)
    leak, masks, meta = generate_clip(seed, leak="start", **calm)
    twin, none, _ = generate_clip(seed, leak="none", **calm)
    assert not none.any()
    start = meta["emission"]["first_frame"]
    running = masks[start:].reshape(frames - start, -1).sum(axis=1)
    if not running.any():
        return None
    camera = meta["camera"]
    x, y = meta["source_xy"]
    facts = {"seed": seed, "start": start, "duration": frames - start, "size": float(running.mean()),
             "contrast": abs(camera["gas_contrast"] * camera["gain"]), "polarity": meta["plume_polarity"],
             "position": [int(np.clip(round(x), 0, W - 1)), int(np.clip(round(y), 0, H - 1))]}
    return leak, twin, masks, facts


def matched_injection(twin: np.ndarray, facts: Dict):
    """The self-test's plume with the real plume's size, contrast, polarity, start, duration and source."""
    from leakseg.selftest.inject import PlumeSpec, inject_plume

    spec = PlumeSpec(max(1, round(facts["size"])), facts["contrast"], facts["polarity"], facts["duration"],
                     tuple(facts["position"]), facts["seed"])
    return inject_plume(twin, spec, facts["start"])
