"""Golden fingerprints of synthetic clips, stable across numpy builds (tests/test_synth.py).

Exact bytes hold only within one numpy build. numpy picks SIMD code for ``exp``, ``log`` and ``power`` per
CPU when it is imported (AVX-512 or not) and per release, and those paths may differ in the last bit;
the generator's float32 ``x ** 1.5`` (its clouds) then moves a pixel across a rounding edge now and then:
version-2 clip (seed 1, "full") is sha256 830231e1... with numpy's AVX2 code and 2e4c7a29... with its
AVX-512 code, on numpy 1.26.4, 2.3.5, 2.4.5 and 2.4.6 alike. A digest of rounded values has the same
weakness (a value near a rounding edge), so a fingerprint is numbers with tolerances instead: per frame, means over 32 x 32 blocks
of the frames, the gas-free background and the gas density, mask pixel counts per block, and the metadata.
A last-bit difference moves a block mean by hundredths of a grey level at most; a change of the generator
(another random draw, another constant) moves it by tenths to tens.

Re-record only for an intended change of the generator, which needs a new generator version anyway:
``cd tests && ../.venv/bin/python -m support.synth_golden``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Dict, List

import numpy as np

GOLDEN_FILE = Path(__file__).resolve().parent.parent / "data" / "synth_golden.json"
#: The clips, all 6 frames of 96 x 128. The version-2 ones are the four whose exact digests were pinned
#: before version 3 existed.
GOLDEN_SIZE = dict(frames=6, height=96, width=128)
GOLDEN_CLIPS = {
    "v2 1 full": dict(seed=1, leak="full", version=2),
    "v2 2 none": dict(seed=2, leak="none", version=2),
    "v2 3 start": dict(seed=3, leak="start", version=2),
    "v2 4 stop": dict(seed=4, leak="stop", version=2),
    "v2 5 full 16-bit": dict(seed=5, leak="full", version=2, bit_depth=16),
    "v3 5 full": dict(seed=5, leak="full", version=3),
    "v3 6 start": dict(seed=6, leak="start", version=3),
}
BLOCK = 32
#: Largest accepted differences: (absolute, relative) per entry; block means of the frames in output units
#: (grey levels or 16-bit counts), of the float background and density relative, mask pixels per block.
TOLERANCE = {"frames": (0.02, 0), "background": (1e-4, 1e-5), "density": (1e-9, 1e-3), "masks": (2, 0)}
META_RTOL = 1e-6


def _block_means(stack: np.ndarray) -> np.ndarray:
    t, h, w = stack.shape
    return stack.astype(np.float64).reshape(t, h // BLOCK, BLOCK, w // BLOCK, BLOCK).mean(axis=(2, 4))


def fingerprint(clip) -> Dict:
    """What the golden test compares: block statistics of a :class:`leakseg.synth.SynthClip` and its meta."""
    meta = {k: v for k, v in clip.meta.items() if k != "generator"}  # the module's name, not the clip
    t, h, w = clip.masks.shape
    counts = clip.masks.reshape(t, h // BLOCK, BLOCK, w // BLOCK, BLOCK).sum(axis=(2, 4))
    return {"frames": np.round(_block_means(clip.frames), 4).tolist(),
            "background": np.round(_block_means(clip.background), 5).tolist(),
            "density": [float(f"{v:.7g}") for v in _block_means(clip.density).ravel()],
            "masks": counts.tolist(), "meta": meta}


def mismatches(expected: Dict, actual: Dict) -> List[str]:
    """Where ``actual`` is further from ``expected`` than a numpy build can move it (empty: a match)."""
    out = []
    for key, (atol, rtol) in TOLERANCE.items():
        want, got = np.asarray(expected[key], float), np.asarray(actual[key], float)
        if want.shape != got.shape or not np.allclose(got, want, rtol=rtol, atol=atol):
            worst = np.abs(got - want).max() if want.shape == got.shape else "shape"
            out.append(f"{key}: largest difference {worst} (allowed {atol} + {rtol} x value)")
    out += _meta_mismatches(expected["meta"], actual["meta"], "meta")
    return out


def _meta_mismatches(want, got, where: str) -> List[str]:
    if isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            return [f"{where}: keys {sorted(set(want) ^ set(got))} differ"]
        return [m for k in want for m in _meta_mismatches(want[k], got[k], f"{where}.{k}")]
    if isinstance(want, list) and isinstance(got, list) and len(want) == len(got):
        return [m for i, (a, b) in enumerate(zip(want, got)) for m in _meta_mismatches(a, b, f"{where}[{i}]")]
    both_float = isinstance(want, float) and isinstance(got, float)
    if both_float and math.isclose(want, got, rel_tol=META_RTOL, abs_tol=1e-12):
        return []
    return [] if want == got else [f"{where}: {got!r}, expected {want!r}"]


def golden() -> Dict[str, Dict]:
    return json.loads(GOLDEN_FILE.read_text())


def record() -> None:
    from leakseg.synth import simulate_clip

    prints = {name: fingerprint(simulate_clip(**kw, **GOLDEN_SIZE)) for name, kw in GOLDEN_CLIPS.items()}
    text = json.dumps(prints, indent=1, sort_keys=True)
    # one line per innermost list of numbers, not one per number
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    GOLDEN_FILE.write_text(text + "\n")
    print(f"wrote {GOLDEN_FILE}")


if __name__ == "__main__":
    record()
