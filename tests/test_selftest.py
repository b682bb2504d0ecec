"""The in-field self-test (leakseg.selftest): plume injection physics, source positions, the production path with
the bundled default model, false-alarm counting, the operating point, examples and stopping.

The model tests run the real default model (tests/conftest.py: default_archive) in process, with the camera
settings docs/SCADA.md gives for it, on a calm generator-v3 scene without gas (the twin of
tests/support/monitor_media.py's leak_and_twin). They are kept to one small self-test (four short trials)
and one stopped one: the model analyses a few frames per second on a CPU.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from leakseg.monitor.alarm import Observation
from leakseg.monitor.config import AlarmSettings, CameraConfig, Zones
from leakseg.monitor.segmenters import Segmenter
from leakseg.monitor.zones import IgnoreMask
from leakseg.selftest import Cell, CleanResult, PlumeGrid, SelfTestResult, SelfTestTarget, TrialResult
from leakseg.selftest.detection import detection_limit, pod_at, reference_contrast
from leakseg.selftest.inject import PlumeSpec, inject_plume, source_positions
from leakseg.selftest.operating_point import recommend
from leakseg.selftest.result import FrameSeen
from leakseg.selftest.run import clean_result, ping_pong, run_selftest
from leakseg.selftest.trials import Alarms, SelfTestError, SelfTestStopped, alarm_replay, judge
from support.monitor_media import leak_and_twin

H, W = 240, 320
OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}  # docs/SCADA.md, default model
ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}
#: The region of interest leaves out the bottom rows (ground); an ignore zone covers a stack at the top left.
ZONES = {"region_of_interest": [[0, 0], [319, 0], [319, 199], [0, 199]],
         "ignore": [[[0, 0], [60, 0], [60, 60], [0, 60]]]}


def _grey(frames=36, level=100.0, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.rint(level + rng.normal(0, 2, (frames, H, W))), 0, 255).astype(np.uint8)


def _inject(frames, size=1000, contrast=40.0, polarity="darker", duration=16, seed=3, start=8, position=(160, 120)):
    return inject_plume(frames, PlumeSpec(size, contrast, polarity, duration, position, seed), start)


# -- injection physics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [150, 1000, 5000])
def test_injected_plume_has_the_size_asked_for(size):
    out = _inject(_grey(), size=size)
    running = out.masks[8:24].reshape(16, -1).sum(axis=1)
    assert out.measured_size_pixels == pytest.approx(running.mean())
    assert abs(out.measured_size_pixels / size - 1) <= 0.15
    assert out.masks.dtype == bool and np.array_equal(out.masks, out.density > 0.1)


def test_plume_near_the_border_is_measured_as_seen_in_the_frame():
    out = _inject(_grey(), size=2000, position=(20, 20))
    assert abs(out.measured_size_pixels / 2000 - 1) <= 0.15


@pytest.mark.parametrize("polarity, sign", [("brighter", 1), ("darker", -1)])
def test_polarity_sets_the_sign_and_a_flat_background_changes_by_contrast_times_opacity(polarity, sign):
    flat = np.full((36, H, W), 100, np.uint8)
    out = _inject(flat, contrast=40.0, polarity=polarity)
    change = out.frames.astype(float) - flat
    expected = sign * 40.0 * (1 - np.exp(-out.density))
    assert np.abs(change - expected).max() <= 0.5 + 1e-3  # rounding only
    assert (sign * change[out.masks] >= 3).all()  # the visible edge: 9.5 % of 40 rounds to at least 4


def test_contrast_follows_the_background_but_stays_above_0_6_of_it():
    """Brighter gas over a cold half (offset -100 from the median) shows 40 + 0.3 * 100; over a hot half it
    would show 40 - 30 = 10, clamped to 0.6 * 40 = 24."""
    frames = np.full((36, H, W), 20, np.uint8)
    frames[:, :, W // 2:] = 220
    out = _inject(frames, size=5000, contrast=40.0, polarity="brighter")
    opacity = 1 - np.exp(-out.density)
    dense = opacity > 0.5
    ratio = (out.frames.astype(float) - frames) / np.where(dense, opacity, 1)
    cold, hot = dense.copy(), dense.copy()
    cold[..., W // 2:] = False
    hot[..., : W // 2] = False
    assert cold.any() and hot.any()
    assert np.abs(ratio[cold] - 70).max() <= 1.01
    assert np.abs(ratio[hot] - 24).max() <= 1.01


def test_gas_appears_runs_stops_and_clears():
    frames = _grey(44)
    out = _inject(frames, duration=12, start=8)
    area = out.masks.reshape(44, -1).sum(axis=1)
    assert np.array_equal(out.frames[:8], frames[:8]) and not area[:8].any()  # nothing before the leak
    assert (area[9:20] > 0).all()  # it runs
    assert not area[-6:].any() and np.array_equal(out.frames[-6:], frames[-6:])  # gone, the frames untouched


def test_injection_is_deterministic_per_seed():
    frames = _grey()
    a, b, c = _inject(frames, seed=5), _inject(frames, seed=5), _inject(frames, seed=6)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.density, b.density)
    assert not np.array_equal(a.masks, c.masks)


def test_16_bit_counts_saturate_without_wrapping():
    rng = np.random.default_rng(1)
    frames = np.clip(rng.normal(20000, 20, (36, H, W)), 0, 65535).astype(np.uint16)
    frames[:, :, W // 2:] = 65400
    out = _inject(frames, size=5000, contrast=600.0, polarity="brighter")
    assert out.frames.dtype == np.uint16
    change = out.frames.astype(float) - frames
    assert (change[out.masks] >= 0).all() and change.max() > 300
    assert out.frames[..., W // 2:].min() >= 65400  # clipped at 65535, never wrapped to small counts
    assert out.frames[..., W // 2:].max() == 65535


def test_rgb_frames_get_the_same_change_on_every_channel():
    grey = _grey().astype(np.int32)
    # every channel stays above the contrast (40), so no channel clips at 0 and the changes are comparable
    rgb = np.stack([grey // 2 + 60, grey // 2 + 45, grey // 3 + 50], axis=-1).astype(np.uint8)
    out = _inject(rgb, contrast=40.0, polarity="darker")
    change = out.frames.astype(int) - rgb
    assert out.frames.shape == rgb.shape and out.frames.dtype == np.uint8
    assert np.array_equal(change[..., 0], change[..., 1]) and np.array_equal(change[..., 0], change[..., 2])
    assert (change[..., 0][out.masks] < 0).all()


# -- source positions -------------------------------------------------------------------------------------


def test_positions_stay_in_the_region_of_interest_and_out_of_ignore_zones():
    ignored = IgnoreMask("cam", None, Zones(**ZONES)).for_frame(H, W)
    positions = source_positions(ignored, (H, W), 8, seed=0)
    assert len(positions) == 8 and len(set(positions)) == 8
    for x, y in positions:
        assert not ignored[y, x]
        assert y <= 199 and not (x <= 60 and y <= 60)
    gaps = [math.dist(p, q) for i, p in enumerate(positions) for q in positions[i + 1:]]
    assert min(gaps) > 30  # spread, not clumped


def test_positions_without_zones_keep_off_the_border_and_spread():
    positions = source_positions(None, (H, W), 4, seed=1)
    assert all(24 <= x < W - 24 and 24 <= y < H - 24 for x, y in positions)
    assert min(math.dist(p, q) for i, p in enumerate(positions) for q in positions[i + 1:]) > 50


def test_no_allowed_pixel_is_a_clear_error():
    with pytest.raises(ValueError, match="region of interest minus the ignore zones is empty"):
        source_positions(np.ones((H, W), bool), (H, W), 2, seed=0)


# -- pure pieces: background extension, false alarms, judging, probabilities --------------------------------


def test_short_background_is_extended_by_ping_pong():
    assert ping_pong(4, 0, 10).tolist() == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert ping_pong(4, 5, 4).tolist() == [1, 0, 1, 2]
    assert ping_pong(1, 3, 3).tolist() == [0, 0, 0]


def _obs(seq, area, score=0.95):
    return Observation(seq=seq, time=float(seq), area_pixels=area, area_fraction=area / (H * W), score=score)


def test_false_alarms_are_counted_per_hour_of_clean_footage():
    leak_frames = {10, 11, 12, 30, 31, 32, 33}
    seen = [(_obs(i, 500 if i in leak_frames else 0), None) for i in range(60)]
    camera = CameraConfig(name="cam", source="x", kind="stream", alarm=ALARM)
    clean = clean_result(seen, camera, fps=5.0)
    assert clean.false_alarms == 2  # raised at frames 12 and 32
    assert clean.hours == pytest.approx(60 / 5 / 3600)
    assert clean.false_alarms_per_hour == pytest.approx(2 / clean.hours)
    assert clean.leak_frame_fraction == pytest.approx(7 / 60)


def test_a_trial_is_detected_only_when_leak_is_raised_within_the_bound():
    alarms = alarm_replay([_obs(i, 500 if 10 <= i < 20 else 0) for i in range(40)], AlarmSettings(**ALARM))
    assert alarms.raised == [12] and alarms.cleared == [24]
    assert judge(alarms, gas_first=10, bound=3).detected
    late = judge(alarms, gas_first=10, bound=2)
    assert not late.detected and late.alarm_frame == 12  # raised, but too late to count
    early = judge(Alarms(raised=[7], cleared=[30]), gas_first=10, bound=20)
    assert not early.detected and early.alarm_before_gas
    ahead = judge(Alarms(raised=[8], cleared=[30]), gas_first=10, bound=20)  # frame 8's triplet holds frame 10
    assert ahead.detected and not ahead.alarm_before_gas and ahead.alarm_frame == 8


def test_detection_limit_and_reference_probability():
    assert detection_limit({100: 1.0, 300: 0.5, 1000: 1.0, 3000: 1.0}, 0.9) == 1000  # a lucky small one does not count
    assert detection_limit({100: 0.0, 300: 0.5}, 0.9) is None
    pod = {100: 0.0, 10000: 1.0}
    assert pod_at(pod, 1000) == pytest.approx(0.5)  # linear in log size
    assert pod_at(pod, 50) == 0.0 and pod_at(pod, 20000) == 1.0
    assert reference_contrast([80, 20, 40], SelfTestTarget()) == 40
    assert reference_contrast([20, 40, 80], SelfTestTarget(reference_contrast=60)) == 40  # the fainter neighbour


# -- the operating point on a hand-built result -----------------------------------------------------------


def _trial(areas, gas_first=4, size=1000, polarity="darker"):
    frames = [FrameSeen(a, 0.95, 500 if gas_first <= i < gas_first + 8 else 0) for i, a in enumerate(areas)]
    return TrialResult(cell=Cell(size, 40.0, polarity, 8), position=(50, 50), seed=0, gas_first=gas_first, gas_stop=12,
                       measured_size_pixels=float(size), detected=False, frames=frames)


def _result(trials, clean_areas):
    clean_frames = [FrameSeen(a, 0.95, 0) for a in clean_areas]
    hours = len(clean_frames) / 5 / 3600
    clean = CleanResult(frames=len(clean_frames), hours=hours, false_alarms=0, false_alarms_per_hour=0.0,
                        leak_frame_fraction=0.0, frames_seen=clean_frames)
    return SelfTestResult(camera="cam", started=0.0, finished=1.0, frame_size=(100, 100), bit_depth=8,
                          analysis_fps=5.0, background_frames=len(clean_frames), settings={}, cells=[],
                          trials=trials, clean=clean, detection_limit_pixels={}, detection_limit_at_reference=None,
                          probability_at_reference=0.0, passed=False, reason="")


def _weak_plume():
    """The model marks the plume at 120 px in every gas frame and at 300 px in every third: the camera's rule
    (200 px, 3 of 5) never raises, (1, 1) raises at once."""
    return [0] * 4 + [300 if i % 3 == 0 else 120 for i in range(8)] + [0] * 12


def _clean_with_blips():
    """Single 300 px blips (any 1-of-1 rule alarms) and pairs of 120 px frames (2 of 3 at <= 120 px alarms)."""
    areas = [0] * 300
    for i in (20, 90, 160):
        areas[i] = 300
    for i in (50, 51, 200, 201):
        areas[i] = 120
    return areas


def test_operating_point_is_the_quietest_rule_that_reaches_the_target_nearest_the_cameras():
    result = _result([_trial(_weak_plume(), polarity=p) for p in ("darker", "brighter")], _clean_with_blips())
    point = recommend(result, AlarmSettings(**ALARM), SelfTestTarget(probability=0.9, reference_size_pixels=1000))
    # 100 px keeps every gas frame (3 of 5 raises 2 frames in); 1-of-1 and 2-of-3 alarm on the clean blips;
    # min_score and k/n stay the camera's, and 100 px is the nearest area to its 200 that works.
    assert (point.min_score, point.min_area_pixels, point.k, point.n, point.clear_frames) == (0.0, 100, 3, 5, 5)
    assert point.meets_target and point.probability_at_reference == 1.0 and point.false_alarms_per_day == 0.0
    assert "min_area_pixels: 100" in point.yaml_block("cam")


def test_operating_point_says_when_no_rule_reaches_the_target():
    trials = [_trial(_weak_plume()), _trial([0] * 24)]  # the second plume is never marked
    point = recommend(_result(trials, _clean_with_blips()), AlarmSettings(**ALARM),
                      SelfTestTarget(probability=0.9, reference_size_pixels=1000))
    assert not point.meets_target and point.probability_at_reference == 0.5
    assert point.false_alarms_per_day <= 1.0 and "no rule reaches 90%" in point.note


# -- with the default model -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter(default_archive):
    from leakseg.monitor.segmenters import ArchiveSegmenter

    seg = ArchiveSegmenter(str(default_archive))
    yield seg
    seg.close()


@pytest.fixture(scope="module")
def background():
    _, twin, _, _ = leak_and_twin(4)
    return twin[:20]


def _camera():
    return CameraConfig(name="cam", source="x", kind="stream", options=OPTIONS, alarm=ALARM, zones=ZONES)


@pytest.fixture(scope="module")
def selftest(segmenter, background):
    """A big bright plume and a tiny faint one (and the other two corners), one position each, short trials."""
    grid = PlumeGrid(sizes_pixels=[30, 4000], contrasts=[3, 80], polarities=["brighter"], durations_frames=[8],
                     positions=1, lead_frames=2, tail_frames=6)
    calls = []
    run = run_selftest(background, _camera(), segmenter, grid, SelfTestTarget(reference_size_pixels=4000),
                       fps=5.0, progress=lambda done, total: calls.append((done, total)))
    return run, calls


def _trial_of(result, size, contrast):
    return next(t for t in result.trials if (t.cell.size_pixels, t.cell.contrast) == (size, contrast))


def test_default_model_detects_a_big_bright_plume_and_misses_a_tiny_faint_one(selftest):
    run, calls = selftest
    result = run.result
    big, tiny = _trial_of(result, 4000, 80), _trial_of(result, 30, 3)
    assert big.detected and big.alarm_frame >= big.gas_first - 2 and big.time_to_alarm_s is not None
    assert max(f.area_pixels for f in big.frames) >= 1000
    assert not tiny.detected and tiny.alarm_frame is None
    assert len(big.frames) == 2 + 8 + 6 and big.gas_stop == 10
    assert abs(big.measured_size_pixels / 4000 - 1) <= 0.15
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.detection_limit_pixels["80 brighter"] == 4000 and result.detection_limit_pixels["3 brighter"] is None


def test_clean_twin_raises_no_false_alarm_and_the_result_round_trips(selftest, background):
    result = selftest[0].result
    assert result.clean.false_alarms == 0 and result.clean.frames >= len(background) - 2
    assert result.frame_size == (H, W) and result.bit_depth == 8 and result.analysis_fps == 5.0
    assert result.recommendation is not None and result.recommendation.false_alarms_per_day == 0.0
    assert "probability of detection" in result.reason
    again = SelfTestResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again == result


def test_trials_stay_in_the_region_of_interest_and_examples_show_gas_and_model(selftest):
    run = selftest[0]
    ignored = IgnoreMask("cam", None, Zones(**ZONES)).for_frame(H, W)
    for trial in run.result.trials:
        x, y = trial.position
        assert not ignored[y, x]
    detected = [e for e in run.examples if e.detected]
    missed = [e for e in run.examples if not e.detected]
    assert detected and missed and len(detected) <= 2 and len(missed) <= 2
    for example in run.examples:
        trial = run.result.trials[example.trial]
        assert trial.detected == example.detected
        assert example.frame.shape == (H, W) and example.frame.dtype == np.uint8
        assert example.true_mask.sum() == max(f.true_area_pixels for f in trial.frames)
        assert not (example.model_mask & ignored).any()  # after the ignore mask, as production sees it
    assert any(e.model_mask.sum() >= 1000 for e in detected)


def test_should_stop_ends_the_selftest_between_windows(segmenter, background):
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) >= 3

    grid = PlumeGrid(sizes_pixels=[1000], contrasts=[40], polarities=["darker"], durations_frames=[8], positions=1)
    with pytest.raises(SelfTestStopped):
        run_selftest(background[:8], _camera(), segmenter, grid, SelfTestTarget(), should_stop=should_stop)
    assert len(asked) == 3  # two windows ran (the clean one, the trial's first), the third was refused


class _Relay(Segmenter):
    """The real model behind a wrapper that acts as the monitor's idle-waiting segmenter or a broken proxy."""

    def __init__(self, model, change):
        self.model, self.change = model, change

    def segment(self, clip, prompts, options):
        return self.change(self.model, clip, prompts, options)


def test_a_segmenter_giving_up_because_the_selftest_stops_reads_as_a_stop(segmenter, background):
    stopping = []

    def give_up(model, clip, prompts, options):  # the monitor's IdleSegmenter when the monitor stops
        stopping.append(True)
        raise SelfTestStopped("the monitor is stopping")

    grid = PlumeGrid(sizes_pixels=[1000], contrasts=[40], positions=1)
    with pytest.raises(SelfTestStopped):
        run_selftest(background[:8], _camera(), _Relay(segmenter, give_up), grid, SelfTestTarget(),
                     should_stop=lambda: bool(stopping))


def test_an_answer_that_does_not_fit_the_window_is_a_selftest_error(segmenter, background):
    def short(model, clip, prompts, options):  # a proxy that loses a frame
        return model.segment(clip[:-1], prompts, options)

    grid = PlumeGrid(sizes_pixels=[1000], contrasts=[40], positions=1)
    with pytest.raises(SelfTestError, match="invalid answer: 7 frame results"):
        run_selftest(background[:8], _camera(), _Relay(segmenter, short), grid, SelfTestTarget())


def test_the_false_alarm_rate_carries_its_poisson_upper_bound():
    from leakseg.selftest.run import poisson_upper

    # the exact one-sided 95 % bounds (chi-squared tables): none seen still allows 3.0, one allows 4.74
    assert [round(poisson_upper(k), 2) for k in (0, 1, 2, 5)] == [3.0, 4.74, 6.3, 10.51]
