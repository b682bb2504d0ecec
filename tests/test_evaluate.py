"""leakseg evaluate: its numbers equal J, F, false alarms and clip detection computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest

from leakseg.synth import write_clip, write_dataset
from leakseg.training.dataset import list_scenes, load_scene


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


# --- threshold sweep -------------------------------------------------------------------------------

S = 352  # frames at the network's input size: the logits need no resampling, so by hand is exact


@pytest.fixture(scope="module")
def labelled_352(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_data")
    write_dataset(root, 3, seed=5, frames=4, height=S, width=S, leak_free_fraction=1 / 3, partial_fraction=1 / 3,
                  progress=False, version=3)
    return root


class _CountingGraph:
    """Delegates to the real graph and counts the calls (how often the network ran)."""

    def __init__(self, graph):
        self.graph, self.calls = graph, 0

    def __call__(self, *args):
        self.calls += 1
        return self.graph(*args)

    def __getattr__(self, name):
        return getattr(self.graph, name)


def _probabilities(predictor, frames):
    """The sigmoid of the network's logits, by hand (numpy, float64)."""
    logits = predictor.logits(list(frames)).numpy().astype(np.float64)[:, 0]
    assert logits.shape == (len(frames), S, S)
    return 1 / (1 + np.exp(-logits))


def test_sweep_equals_hand_thresholding_and_runs_the_network_once_per_clip(onnx_archive, labelled_352):
    from leakseg.inference.predictor import Predictor
    from leakseg.training.evaluate import sweep_predictor

    predictor = Predictor.from_archive(onnx_archive, device="cpu")
    scenes = list_scenes(labelled_352)
    probs = {s.name: _probabilities(predictor, load_scene(s)[0]) for s in scenes}
    # thresholds in the middle of gaps of at least 1e-6 (ten float32 steps) between probabilities, so float32 (the service)
    # against float64 (here) cannot flip a pixel
    levels = np.unique(np.concatenate([p.ravel() for p in probs.values()]))
    wide = np.flatnonzero(np.diff(levels) > 1e-6)
    assert len(wide) >= 3
    picks = [wide[len(wide) // 4], wide[len(wide) // 2], wide[3 * len(wide) // 4]]
    thresholds = [float(levels[i] + levels[i + 1]) / 2 for i in picks]
    counting = _CountingGraph(predictor.graph)
    predictor.graph = counting
    report = sweep_predictor(predictor, labelled_352, thresholds=thresholds, normalizations=["absolute"],
                             opening_kernel=0, budget=0.5)
    assert counting.calls == len(scenes) == 3
    assert len(report.points) == len(thresholds)
    for point in report.points:
        pairs = [(probs[s.name] > point["threshold"], load_scene(s)[1]) for s in scenes]
        expected = _by_hand(pairs)
        assert point["false_alarm_rate"] == pytest.approx(expected["false_alarm_rate"], abs=1e-9)
        if expected["scored_frames"]:
            assert point["J&F"] == pytest.approx(expected["J&F"], abs=1e-6)
    # the operating point is the best J&F on gas frames among the points within the budget
    within = [p for p in report.points if p["false_alarm_rate"] <= 0.5]
    if within:
        assert report.chosen["meets_budget"] and report.chosen["false_alarm_rate"] <= 0.5
        assert (report.chosen["leak_J&F"] or 0) == max(p["leak_J&F"] or 0 for p in within)
    assert report.postprocess()["opening_kernel"] == 0


def test_sweep_equals_evaluate_at_each_setting(predictor, labelled_352):
    """The sweep thresholds the same float logits a request post-processes (one grey-level opening serves
    every threshold): each of its points is exactly what evaluate reports at that setting."""
    from leakseg.training.evaluate import evaluate_predictor, sweep_predictor

    report = sweep_predictor(predictor, labelled_352, thresholds=[0.3, 0.5, 0.7], budget=0.05)
    assert len(report.points) == 6
    for point in report.points:
        options = {"threshold": point["threshold"], "normalization": point["normalization"]}
        direct = evaluate_predictor(predictor, labelled_352, options).summary
        for key, value in direct.items():
            if isinstance(value, float):
                assert point[key] == pytest.approx(value, abs=1e-9), (point["normalization"], point["threshold"], key)
            else:
                assert point[key] == value, (point["normalization"], point["threshold"], key)


def test_evaluate_sweep_command_prints_plots_and_saves(onnx_archive, labelled_352, tmp_path, capsys):
    from PIL import Image

    from leakseg.cli import main

    out_json, out_png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    assert main(["evaluate", "--archive", str(onnx_archive), "--data", str(labelled_352), "--device", "cpu",
                 "--sweep", "--thresholds", "0.3", "0.6", "0.9", "--budget", "1", "--plot", str(out_png),
                 "--json", str(out_json), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "operating point" in text and "minmax" in text and "absolute" in text
    saved = json.loads(out_json.read_text())
    assert len(saved["points"]) == 6 and saved["operating_point"]["meets_budget"]  # a budget of 100 % always holds
    best = max(p["leak_J&F"] or 0 for p in saved["points"])
    assert (saved["operating_point"]["leak_J&F"] or 0) == best
    assert saved["postprocess"]["normalization"] == saved["operating_point"]["normalization"]
    with Image.open(out_png) as img:
        assert img.format == "PNG" and img.size[0] > 500
    for bad in (["--thresholds", "1.5"], ["--budget", "2"], ["--threshold", "0.4"]):
        with pytest.raises(SystemExit):
            main(["evaluate", "--archive", str(onnx_archive), "--data", str(labelled_352), "--sweep", "--no-progress",
                  *bad])


@pytest.mark.parametrize("normalization", ["absolute", "minmax"])
@pytest.mark.parametrize("kernel", [9, 5, 0])
def test_one_grey_opening_gives_the_serving_masks_at_every_threshold(normalization, kernel):
    """The sweep thresholds one grey-level opening per clip; that is exactly the serving post-processing
    (threshold, then binary opening) at each threshold, border pixels included."""
    import torch

    from leakseg.inference.postprocess import postprocess
    from leakseg.schema import ClipOptions
    from leakseg.training.evaluate import _opened_scores

    torch.manual_seed(0)
    logits = torch.nn.functional.avg_pool2d(torch.randn(3, 1, 96, 96) * 8, 9, 1)  # smooth blobs, 88 x 88
    opened = _opened_scores(logits, 60, 80, normalization, kernel)
    for t in (0.1, 0.3, 0.5, 0.7, 0.93):
        served = postprocess(logits, 60, 80, ClipOptions(normalization=normalization, threshold=t,
                                                         opening_kernel=kernel)).masks
        assert np.array_equal(served, opened > t), t
    assert 0.05 < (opened > 0.5).mean() < 0.95  # a real mix of set and unset pixels
