"""leakseg evaluate: its numbers equal J, F, false alarms and clip detection computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leakseg.training.dataset import list_scenes, load_scene
from leakseg.training.synth import write_clip, write_dataset


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_data")
    write_dataset(root, 3, seed=11, frames=4, height=40, width=48, leak_free_fraction=1 / 3,
                  partial_fraction=1 / 3, progress=False)
    # one clip with a large static "leak" so that some frames surely overlap the prediction
    frames = np.full((4, 40, 48), 90, np.uint8)
    masks = np.zeros((4, 40, 48), bool)
    masks[:, 5:35, 4:44] = True
    write_clip(root / "synth_big", frames, masks, {})
    return root


def _by_hand(pairs):
    """pairs: [(pred T x H x W, gt T x H x W)] -> the published numbers, computed without leakseg.training.metrics."""
    js, fs, free, alarms, tp, fp, fn = [], [], 0, 0, 0, 0, 0
    for pred, gt in pairs:
        for p, g in zip(pred, gt):
            if not p.any() and not g.any():
                continue
            inter, union = np.logical_and(p, g).sum(), np.logical_or(p, g).sum()
            js.append(inter / union)
            fs.append(2 * inter / (p.sum() + g.sum()))
        for p, g in zip(pred, gt):
            if not g.any():
                free += 1
                alarms += bool(p.any())
        leak, found = gt.any(), pred.any()
        tp += leak and found
        fp += (not leak) and found
        fn += leak and not found
    j, f = 100 * np.mean(js), 100 * np.mean(fs)
    return {"J": j, "F": f, "J&F": (j + f) / 2, "scored_frames": len(js), "false_alarm_rate": alarms / free,
            "clip_precision": tp / (tp + fp) if tp + fp else None, "clip_recall": tp / (tp + fn) if tp + fn else None}


def test_evaluate_matches_hand_metrics(onnx_archive, labelled, tmp_path):
    from leakseg.cli import main
    from leakseg.training.evaluate import evaluate_predictor
    from leakseg.inference.predictor import Predictor

    predictor = Predictor.from_archive(onnx_archive, device="cpu")
    pairs = []
    for scene in list_scenes(labelled):
        frames, gt = load_scene(scene)
        pairs.append((predictor.predict(list(frames)).masks(), gt))
    expected = _by_hand(pairs)
    assert expected["scored_frames"] > 0
    assert any(g.any() for _, g in pairs) and any(not g.any() for _, g in pairs)

    report = evaluate_predictor(predictor, labelled)
    for key, value in expected.items():
        if value is None:
            assert report.summary[key] is None
        else:
            assert report.summary[key] == pytest.approx(value, abs=1e-9), key
    assert report.summary["videos"] == 4 and report.summary["frames"] == 16
    assert set(report.per_video) == {s.name for s in list_scenes(labelled)}

    # the command: same numbers in the JSON, a table on stdout and a PNG plot
    out_json, out_png = tmp_path / "eval.json", tmp_path / "eval.png"
    assert main(["evaluate", "--archive", str(onnx_archive), "--data", str(labelled), "--device", "cpu",
                 "--plot", str(out_png), "--json", str(out_json), "--no-progress"]) == 0
    saved = json.loads(out_json.read_text())["summary"]
    assert saved["J&F"] == pytest.approx(expected["J&F"], abs=1e-9)
    from PIL import Image

    with Image.open(out_png) as img:
        assert img.format == "PNG" and img.size[1] > 30 + 22 * 4

    # options reach post-processing: with the opening off, no fewer pixels are predicted
    loose = evaluate_predictor(predictor, labelled, {"opening_kernel": 0})
    assert loose.summary["false_alarm_frames"] >= report.summary["false_alarm_frames"]
