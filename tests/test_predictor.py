"""The in-process pipeline: masks equal a research-style reference; errors are InputErrors."""

import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from leakseg.schema import InputError
from leakseg.model.checkpoint import import_authors_checkpoint
from leakseg.io.frames import to_uint8_clip
from leakseg.model import triplet_neighbours
from leakseg.utils.rle import decode_rle


def _clip(seed, t=5, h=72, w=96):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w)).astype(np.float32)
    return [np.clip(base + rng.normal(0, 20, (h, w)), 0, 255).astype(np.uint8) for _ in range(t)]


def _research_masks(model, bank_matrix, frames):
    """The authors' recipe, written out independently: PIL resize, triplets, cv2 opening."""
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = [((np.asarray(Image.fromarray(f).convert("RGB").resize((352, 352), Image.BILINEAR)) / 255.0 - mean) / std)
         for f in frames]
    x = torch.tensor(np.stack(x).transpose(0, 3, 1, 2), dtype=torch.float32)
    text = torch.from_numpy(bank_matrix)[None]
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    out = []
    for t, (a, b) in enumerate(triplet_neighbours(len(frames))):
        with torch.no_grad():
            logits, _, _ = model.forward_triplet(x[[t, a, b]][None], text)
        p = torch.sigmoid(F.interpolate(logits, size=frames[0].shape[:2], mode="bilinear", align_corners=False))[0, 0]
        p = ((p - p.min()) / (p.max() - p.min() + 1e-8)).numpy()
        out.append(cv2.morphologyEx((p > 0.5).astype(np.uint8), cv2.MORPH_OPEN, kernel).astype(bool))
    return np.stack(out)


def test_masks_equal_the_research_recipe(predictor, authors_checkpoint):
    model, _ = import_authors_checkpoint(authors_checkpoint)
    frames = _clip(0)
    result = predictor.predict(frames)
    expected = _research_masks(model, predictor.bank.matrix(), frames)
    assert expected.any() and not expected.all()  # a non-trivial comparison
    assert np.array_equal(result.masks(), expected)
    for f, m in zip(result.frames, expected):
        assert f.area_pixels == m.sum() and f.leak == bool(m.any())
    assert result.clip.leak_frames == [i for i, m in enumerate(expected) if m.any()]


def test_batched_run_equals_separate_predictions(predictor):
    clips = [_clip(1, t=3), _clip(2, t=6, h=50, w=40), _clip(3, t=4)]
    prompts = [None, ["gas plume", "white steam", "vapour cloud", "flowing smoke"], None]
    together = predictor.run([predictor.prepare(c, predictor.settings(p)) for c, p in zip(clips, prompts)])
    for c, p, r in zip(clips, prompts, together):
        alone = predictor.predict(c, p)
        assert [f.mask for f in r.frames] == [f.mask for f in alone.frames]
        assert r.model.prompts == alone.model.prompts


def test_result_fields(predictor):
    r = predictor.predict(_clip(4), options={"return_probabilities": True, "probability_size": 16})
    assert r.clip.frames == 5 and (r.clip.height, r.clip.width) == (72, 96)
    assert r.timings.total_ms >= r.timings.model_ms > 0
    assert all(0 <= f.max_score <= 1 for f in r.frames)
    assert r.frames[0].probability.size == [16, 16]
    for f in r.frames:
        m = decode_rle(f.mask.model_dump())
        if f.leak:
            ys, xs = np.nonzero(m)
            assert (f.bbox.x, f.bbox.y, f.bbox.width, f.bbox.height) == (
                xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert f.centroid.x == pytest.approx(xs.mean()) and f.centroid.y == pytest.approx(ys.mean())
    assert r.clip.max_leak_fraction == max(f.area_fraction for f in r.frames)


def test_sixteen_bit_clip_uses_the_clip_level_stretch(predictor):
    """The predictor maps a 16-bit clip by to_uint8_clip (the stretch itself: tests/test_frames.py)."""
    rng = np.random.default_rng(5)
    clip16 = [(rng.random((40, 50)) * 3000 + 20000 + 500 * i).astype(np.uint16) for i in range(4)]
    as8 = to_uint8_clip(clip16)
    assert [f.mask for f in predictor.predict(clip16).frames] == [f.mask for f in predictor.predict(as8).frames]


@pytest.mark.parametrize("frames,kwargs,code,field", [
    ([], {}, "no_frames", "frames"),
    (_clip(0, t=2), {}, "too_few_frames", "frames"),
    (_clip(0, t=33), {}, "too_many_frames", "frames"),
    (_clip(0, t=2) + _clip(0, t=1, h=10), {}, "frame_size_mismatch", "frame 2"),
    ([np.zeros((2049, 2049), np.uint8)] * 3, {}, "frame_too_large", "frame 0"),
    (_clip(0), {"prompts": ["white steam"]}, "wrong_prompt_count", "prompts"),
    (_clip(0), {"prompts": ["a", "b", "c", "d"]}, "unknown_prompt", "prompts"),
    (_clip(0), {"options": {"threshold": 2}}, "invalid_options", "options.threshold"),
    (_clip(0), {"options": {"opening_kernel": 4}}, "invalid_options", "options.opening_kernel"),
    (_clip(0), {"options": {"tresh": 0.4}}, "invalid_options", "options.tresh"),
    ([np.zeros((8, 8), np.int64)] * 3, {}, "frame_decode_error", "frame 0"),
])
def test_bad_requests(predictor, frames, kwargs, code, field):
    with pytest.raises(InputError) as err:
        predictor.predict(frames, **kwargs)
    assert err.value.code.value == code and err.value.field == field
    assert 400 <= err.value.status < 500


def test_unknown_prompt_lists_the_available_ones(predictor):
    with pytest.raises(InputError, match="gas plume"):
        predictor.settings(["nope", "white steam", "floating steam", "flowing smoke"])


def test_predict_command_writes_the_api_json(onnx_archive, tmp_path, predictor):
    from leakseg.cli import main

    paths = []
    for i, f in enumerate(_clip(7)):
        paths.append(tmp_path / f"{i:05d}.png")
        Image.fromarray(f).save(paths[-1])
    out = tmp_path / "r.json"
    assert main(["predict", "--archive", str(onnx_archive), *map(str, paths), "-o", str(out)]) == 0
    data = json.loads(out.read_text())
    expected = predictor.predict(_clip(7)).model_dump(mode="json")
    for d in (data, expected):
        d.pop("timings")
    assert data == expected
