"""The self-test's injected plumes look like the generator's real plumes of the same size and contrast.

For real generator plumes (tests/support/selftest_scenes.py: a calm scene where a plume starts leaking, and its
gas-free twin) the self-test injects a plume with the same size, contrast, polarity, start and source into the
twin. What the model can see must match: the total change the gas makes to the frames, how many pixels it
changes by at least 3 grey levels, and the sign of the change. A wrong contrast unit (e.g. the visible edge's
change instead of the opaque layer's), a wrong size or a flipped polarity breaks these bounds.

benchmarks/selftest_truth.py makes the same comparison through the default model and its alarm rule: the
detection rates per size bin are in docs/SCADA.md ("Does the self-test tell the truth?").
"""

from __future__ import annotations

import numpy as np
import pytest

from support.selftest_scenes import matched_injection, real_plume

SEEDS = (0, 2, 3, 6, 7, 10)


def _change(frames, twin, start):
    return frames[start:].astype(np.float32) - twin[start:]


@pytest.fixture(scope="module")
def pairs():
    out = []
    for seed in SEEDS:
        leak, twin, masks, facts = real_plume(seed)
        injected = matched_injection(twin, facts)
        out.append((facts, _change(leak, twin, facts["start"]), masks[facts["start"]:],
                    _change(injected.frames, twin, facts["start"]), injected.masks[facts["start"]:]))
    return out


def test_the_injected_plume_changes_the_frames_as_much_as_the_real_one(pairs):
    ratios = [np.abs(fake).sum() / np.abs(real).sum() for _, real, _, fake, _ in pairs]
    assert all(0.6 <= r <= 1.6 for r in ratios), ratios
    assert 0.8 <= float(np.median(ratios)) <= 1.25, ratios


def test_the_injected_plume_changes_as_many_pixels_visibly(pairs):
    ratios = [(np.abs(fake) >= 3).sum() / (np.abs(real) >= 3).sum() for _, real, _, fake, _ in pairs]
    assert all(0.65 <= r <= 1.5 for r in ratios), ratios


def test_the_injected_plume_has_the_real_plumes_size_and_sign(pairs):
    for facts, real, real_masks, fake, fake_masks in pairs:
        sign = 1 if facts["polarity"] == "brighter" else -1
        assert sign * real[real_masks].mean() > 0 and sign * fake[fake_masks].mean() > 0, facts
        sizes = fake_masks.reshape(len(fake_masks), -1).sum(axis=1).mean()
        assert sizes == pytest.approx(facts["size"], rel=0.15), facts
