"""J, F, J&F as published (both-empty frames skipped, pooled over frames), false alarms, clip P/R, the plot."""

import numpy as np
import pytest
from PIL import Image

from leakseg.training.metrics import SegmentationMetrics, format_table, frame_scores, plot_metrics


def masks(*frames):
    """T x H x W bool from nested lists of 0/1."""
    return np.array(frames, dtype=bool)


EMPTY = [[0, 0, 0], [0, 0, 0]]


def test_hand_computed_frames_with_the_both_empty_skip():
    pred = masks([[1, 1, 0], [0, 0, 0]], EMPTY, EMPTY, [[1, 1, 1], [1, 0, 0]])
    gt = masks([[0, 1, 1], [0, 0, 0]], EMPTY, [[1, 0, 0], [0, 0, 0]], [[1, 1, 1], [1, 0, 0]])
    j, f, scored = frame_scores(pred, gt)
    assert scored.tolist() == [True, False, True, True]
    # Frame 0: intersection 1, union 3 -> J 1/3, F 2*1/(2+2) = 1/2. Frame 2: a missed leak. Frame 3: exact.
    assert np.allclose(j[scored], [1 / 3, 0, 1]) and np.allclose(f[scored], [1 / 2, 0, 1])
    assert np.isnan(j[1]) and np.isnan(f[1])

    m = SegmentationMetrics()
    m.update("clip", pred, gt)
    s = m.summary()
    assert s["J"] == pytest.approx(100 * (1 / 3 + 0 + 1) / 3)
    assert s["F"] == pytest.approx(100 * (1 / 2 + 0 + 1) / 3)
    assert s["J&F"] == pytest.approx((s["J"] + s["F"]) / 2)
    assert (s["frames"], s["scored_frames"], s["leak_free_frames"], s["false_alarm_frames"]) == (4, 3, 1, 0)
    assert s["false_alarm_rate"] == 0.0


def test_averaged_over_frames_not_videos():
    one = SegmentationMetrics()
    one.update("good", masks([[1, 0, 0], [0, 0, 0]]), masks([[1, 0, 0], [0, 0, 0]]))  # J = 1
    bad = masks(*[[[0, 0, 1], [0, 0, 0]]] * 3)
    one.update("bad", bad, ~bad)  # three frames with J = 0
    assert one.summary()["J"] == pytest.approx(25.0)  # (1 + 0 + 0 + 0) / 4, not (1 + 0) / 2
    per = one.per_video()
    assert per["good"]["J&F"] == pytest.approx(100.0) and per["bad"]["J&F"] == pytest.approx(0.0)
    assert per["bad"]["scored_frames"] == 3


def test_all_frames_skipped():
    m = SegmentationMetrics()
    m.update("quiet", masks(EMPTY, EMPTY), masks(EMPTY, EMPTY))
    s = m.summary()
    assert s["J"] is None and s["F"] is None and s["J&F"] is None
    assert s["scored_frames"] == 0 and s["frames"] == 2
    assert s["false_alarm_rate"] == 0.0 and s["leak_free_frames"] == 2
    assert s["clip_precision"] is None and s["clip_recall"] is None  # nothing detected, nothing to find
    assert s["clip_tn"] == 1
    assert m.per_video()["quiet"]["J&F"] is None
    assert "n/a" in format_table(s, m.per_video())


def test_false_alarms():
    m = SegmentationMetrics()
    blip = [[0, 0, 0], [0, 1, 0]]
    gas = [[1, 1, 0], [0, 0, 0]]
    m.update("a", masks(blip, EMPTY, gas, EMPTY), masks(EMPTY, EMPTY, gas, EMPTY))  # 3 leak-free, 1 alarm
    m.update("b", masks(blip, blip), masks(EMPTY, EMPTY))  # 2 leak-free, 2 alarms
    s = m.summary()
    assert (s["leak_free_frames"], s["false_alarm_frames"]) == (5, 3)
    assert s["false_alarm_rate"] == pytest.approx(3 / 5)
    assert m.per_video()["b"]["false_alarm_frames"] == 2
    # A false alarm is also a scored frame with J = F = 0.
    assert s["scored_frames"] == 4 and s["J"] == pytest.approx(25.0)
    # On the frames with gas only (one frame, exact), the alarms do not count.
    assert s["leak_frames"] == 1 and s["leak_J"] == s["leak_F"] == s["leak_J&F"] == pytest.approx(100.0)
    assert "on the 1 frames with gas: J 100.00" in format_table(s)


def test_scores_on_frames_with_gas():
    """Frames 0 and 2 have gas (J 1/3, F 1/2; a miss: 0, 0); frame 1 is a false alarm; frame 3 is skipped."""
    pred = masks([[1, 1, 0], [0, 0, 0]], [[0, 0, 1], [0, 0, 0]], EMPTY, EMPTY)
    gt = masks([[0, 1, 1], [0, 0, 0]], EMPTY, [[1, 0, 0], [0, 0, 0]], EMPTY)
    m = SegmentationMetrics()
    m.update("clip", pred, gt)
    s = m.summary()
    assert s["leak_frames"] == 2
    assert s["leak_J"] == pytest.approx(100 * (1 / 3) / 2) and s["leak_F"] == pytest.approx(100 * (1 / 2) / 2)
    assert s["leak_J&F"] == pytest.approx((s["leak_J"] + s["leak_F"]) / 2)
    assert s["J"] == pytest.approx(100 * (1 / 3) / 3)  # overall: three scored frames, the alarm at 0


def test_clip_level_precision_and_recall():
    gas = masks(EMPTY, [[0, 1, 0], [0, 0, 0]])
    hit = masks([[1, 0, 0], [0, 0, 0]], EMPTY)  # detected, even though on the wrong frame and pixel
    m = SegmentationMetrics()
    m.update("tp1", hit, gas)
    m.update("tp2", gas, gas)
    m.update("fn", masks(EMPTY, EMPTY), gas)
    m.update("fp", hit, masks(EMPTY, EMPTY))
    m.update("tn", masks(EMPTY, EMPTY), masks(EMPTY, EMPTY))
    s = m.summary()
    assert (s["clip_tp"], s["clip_fp"], s["clip_fn"], s["clip_tn"]) == (2, 1, 1, 1)
    assert s["clip_precision"] == pytest.approx(2 / 3) and s["clip_recall"] == pytest.approx(2 / 3)
    assert s["videos"] == 5


def test_updating_a_video_twice_extends_it():
    m = SegmentationMetrics()
    gas = masks([[1, 0, 0], [0, 0, 0]])
    m.update("v", masks(EMPTY), masks(EMPTY))
    m.update("v", gas, gas)
    v = m.per_video()["v"]
    assert (v["frames"], v["scored_frames"], v["has_leak"], v["detected"]) == (2, 1, True, True)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        SegmentationMetrics().update("v", np.zeros((2, 4, 4), bool), np.zeros((2, 4, 5), bool))
    with pytest.raises(ValueError):
        frame_scores(np.zeros((4, 4), bool), np.zeros((4, 4), bool))


def test_table_lists_videos_and_rates():
    m = SegmentationMetrics()
    m.update("leaky_valve", masks([[1, 1, 0], [0, 0, 0]]), masks([[1, 0, 0], [0, 0, 0]]))
    m.update("quiet_sky", masks([[0, 0, 1], [0, 0, 0]]), masks(EMPTY))
    text = format_table(m.summary(), m.per_video())
    assert "leaky_valve" in text and "quiet_sky" in text
    assert "false-alarm rate 100.00% (1 of 1 leak-free frames)" in text
    # leaky_valve: J = 1/2, F = 2/3; quiet_sky: J = F = 0 -> mean J 25.00, mean F 33.33.
    assert "J 25.00  F 33.33  J&F 29.17" in text


def test_plot_draws_bars_to_scale(tmp_path):
    path = plot_metrics({"full": {"J&F": 100.0}, "none": {"J&F": 0.0}, "skipped": {"J&F": None}},
                        0.5, tmp_path / "metrics.png")
    img = np.asarray(Image.open(path).convert("RGB")).astype(int)

    def bars(colour):  # (number of bars, longest bar in pixels) drawn in a colour
        per_row = (np.abs(img - np.array(colour)).sum(axis=2) == 0).sum(axis=1)
        rows = per_row > 0
        return int((rows[1:] & ~rows[:-1]).sum() + rows[0]), int(per_row.max())

    blue_bars, blue_len = bars((66, 133, 244))
    red_bars, red_len = bars((219, 68, 55))
    assert blue_bars == 1 and red_bars == 1  # "none" (0) and "skipped" (n/a) draw no bar
    assert blue_len > 100 and red_len == pytest.approx(blue_len / 2, abs=2)
    assert Image.open(path).format == "PNG"


def test_operating_point_is_the_best_gas_score_within_the_budget():
    from leakseg.training.metrics import operating_point

    pts = [
        {"normalization": "absolute", "threshold": 0.5, "false_alarm_rate": 0.20, "leak_J&F": 80.0},
        {"normalization": "absolute", "threshold": 0.7, "false_alarm_rate": 0.05, "leak_J&F": 60.0},
        {"normalization": "absolute", "threshold": 0.9, "false_alarm_rate": 0.01, "leak_J&F": 60.0},
        {"normalization": "minmax", "threshold": 0.9, "false_alarm_rate": 0.04, "leak_J&F": 55.0},
        {"normalization": "minmax", "threshold": 0.5, "false_alarm_rate": None, "leak_J&F": 99.0},  # no leak-free frames
    ]
    chosen = operating_point(pts, 0.05)
    # 0.7 and 0.9 tie on J&F (60); the one with fewer false alarms wins
    assert (chosen["threshold"], chosen["meets_budget"], chosen["budget"]) == (0.9, True, 0.05)
    assert operating_point(pts, 0.25)["threshold"] == 0.5
    none_fit = operating_point(pts, 0.001)
    assert not none_fit["meets_budget"] and none_fit["false_alarm_rate"] == 0.01
    assert operating_point([], 0.05) is None
    # a model that never fires on gas: J&F None counts as 0 and the quietest point wins the tie
    quiet = [{"normalization": "absolute", "threshold": t, "false_alarm_rate": fa, "leak_J&F": None}
             for t, fa in ((0.5, 0.0), (0.9, 0.0))]
    assert operating_point(quiet, 0.05)["threshold"] == 0.9


def test_sweep_plot_is_a_png(tmp_path):
    from PIL import Image

    from leakseg.training.metrics import format_sweep, operating_point, plot_sweep

    pts = [{"normalization": n, "threshold": t, "false_alarm_rate": fa, "leak_J&F": jf, "J&F": jf,
            "clip_recall": 1.0}
           for n, rows in (("absolute", ((0.3, 0.5, 70.0), (0.6, 0.1, 50.0))), ("minmax", ((0.5, 1.0, 40.0),)))
           for t, fa, jf in rows]
    chosen = operating_point(pts, 0.2)
    path = plot_sweep(pts, tmp_path / "s.png", chosen, 0.2)
    with Image.open(path) as img:
        assert img.format == "PNG"
        pixels = np.asarray(img.convert("RGB"))
    assert (pixels == (66, 133, 244)).all(axis=2).sum() > 50  # the absolute curve is drawn
    table = format_sweep(pts, chosen)
    assert "<- operating point" in table and "0.600" in table and "meets" in table
