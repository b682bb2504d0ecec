"""Post-processing: the opening equals OpenCV bit for bit; facts and options behave as documented."""

import cv2
import numpy as np
import pytest
import torch

from leakseg.inference.postprocess import ellipse_kernel, open_mask, postprocess
from leakseg.schema import ClipOptions


@pytest.mark.parametrize("size", [1, 3, 5, 7, 9, 11, 15, 21, 31])
def test_ellipse_equals_opencv(size):
    assert np.array_equal(ellipse_kernel(size), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size)))


@pytest.mark.parametrize("shape", [(7, 9), (50, 61), (121, 77), (352, 352)])
@pytest.mark.parametrize("density", [0.3, 0.6, 0.85, 0.97])
@pytest.mark.parametrize("size", [3, 9, 15])
def test_opening_equals_opencv(shape, density, size):
    rng = np.random.default_rng(hash((shape, density, size)) % 2**32)
    masks = rng.random((3, *shape)) < density
    masks[1, :, :5] = True  # shapes touching the border
    masks[2] = False
    ours = open_mask(torch.from_numpy(masks), size).numpy()
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))
    for m, o in zip(masks, ours):
        assert np.array_equal(cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool), o)


def test_facts_of_a_known_blob():
    logits = torch.full((3, 1, 40, 40), -10.0)
    logits[1, 0, 10:20, 5:25] = 10.0  # a 10 x 20 block
    facts = postprocess(logits, 40, 40, ClipOptions(opening_kernel=3, normalization="absolute"))
    assert facts.area.tolist() == [0, 196, 0]  # the 3x3 ellipse is a cross: opening trims 4 corners
    assert facts.bbox[1].tolist() == [5, 10, 20, 10] and facts.bbox[0].tolist() == [0, 0, 0, 0]
    assert np.allclose(facts.centroid[1], [14.5, 14.5])
    assert facts.max_score[1] == pytest.approx(1 / (1 + np.exp(-10)), rel=1e-6)


def test_minmax_makes_leak_free_frames_noisy_and_opening_cleans_them():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(-6, 0.3, (2, 1, 64, 64)).astype(np.float32))
    raw = postprocess(logits, 64, 64, ClipOptions(opening_kernel=0))
    assert raw.area.min() > 0  # min-max: half the noise is above 0.5
    opened = postprocess(logits, 64, 64, ClipOptions())
    assert opened.area.max() == 0
    absolute = postprocess(logits, 64, 64, ClipOptions(normalization="absolute", opening_kernel=0))
    assert absolute.area.max() == 0


def test_probability_maps():
    logits = torch.zeros(2, 1, 352, 352)
    facts = postprocess(logits, 30, 40, ClipOptions(return_probabilities=True, probability_size=88))
    assert facts.probability.shape == (2, 88, 88) and facts.probability.dtype == np.uint8
    assert (facts.probability == 128).all()  # sigmoid(0) * 255 = 127.5, rounded half to even
