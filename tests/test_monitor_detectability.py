"""DEGRADED, "cannot see gas now": the picture check (leakseg/monitor/detectability.py) on synthetic infrared
scenes and on pictures that cannot show gas, and a real Monitor on a drop folder whose picture turns flat,
then blurred, then healthy again (the fake service answers: the model is not what is tested here)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from leakseg.monitor.config import DetectabilitySettings, parse_config
from leakseg.monitor.detectability import PictureCheck, measure_window
from leakseg.monitor.sinks import build_sinks
from leakseg.synth import blur, generate_clip
from support.fake_service import FakeService, answer_clip
from support.monitor_runs import Recorded, drop, folder_camera

SEEDS = (0, 1, 2, 3)
WINDOW = 4  # frames per window in these tests


def settings(**kw) -> DetectabilitySettings:
    return DetectabilitySettings(**{"reference_windows": 2, "bad_windows": 1, "good_windows": 1, **kw})


def windows(frames: np.ndarray):
    return [list(frames[i:i + WINDOW]) for i in range(0, len(frames) - WINDOW + 1, WINDOW)]


def scene(seed: int, bits: int, version: int = 2, frames: int = 16, size=(240, 320)) -> np.ndarray:
    """A leak-free synthetic infrared scene: generator v2, or v3 with every effect at its default strength."""
    clip, _, _ = generate_clip(seed, leak="none", frames=frames, height=size[0], width=size[1], bit_depth=bits,
                               version=version)
    return clip


def top(frames: np.ndarray) -> int:
    return int(np.iinfo(frames.dtype).max)


def blurred(frames: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    return np.clip(np.rint(blur(frames.astype(np.float32), sigma)), 0, top(frames)).astype(frames.dtype)


def flat(frames: np.ndarray) -> np.ndarray:
    return np.full_like(frames, top(frames) // 3)


def low_contrast(frames: np.ndarray) -> np.ndarray:
    """The scene squeezed to a tenth of the low-contrast limit around its mean (fog, no thermal contrast)."""
    limit = DetectabilitySettings().contrast_levels(frames.dtype.name)[1]
    spread = np.percentile(frames, 99) - np.percentile(frames, 1)
    mean = frames.mean()
    return np.rint(mean + (frames - mean) * (limit / 2) / spread).astype(frames.dtype)


def saturated(frames: np.ndarray) -> np.ndarray:
    """The scene at a gain so high that most of it clips at black or white."""
    mean = frames.mean()
    spread = np.percentile(frames, 99) - np.percentile(frames, 1)
    stretched = mean + (frames - mean) * (4 * top(frames) / spread)
    return np.clip(np.rint(stretched), 0, top(frames)).astype(frames.dtype)


def learned_check(healthy: np.ndarray, **kw) -> PictureCheck:
    """A check that learned its sharpness reference on ``healthy``'s windows (and found nothing wrong)."""
    check = PictureCheck(settings(**kw))
    for window in windows(healthy):
        assert check.judge(measure_window(window)) is None
    assert check.reference is not None
    return check


# -- healthy scenes pass ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("version", [2, 3])
def test_healthy_synthetic_scenes_pass_every_check_in_8_and_16_bit(bits, version):
    for seed in SEEDS:
        frames = scene(seed, bits, version)
        check = PictureCheck(settings())
        for i, window in enumerate(windows(frames)):
            metrics = measure_window(window)
            assert check.problems(metrics) == [], (seed, i, metrics)
            check.judge(metrics)
        ratio = check.sharpness_ratio(measure_window(windows(frames)[-1]))
        assert check.reference is not None and 0.7 < ratio < 1.4, (seed, ratio)
        assert check.verdict is None


def test_an_rgb_scene_passes_and_a_clipped_rgb_scene_is_saturated():
    grey = scene(0, 8, frames=4)
    rgb = np.repeat(grey[..., None], 3, axis=3)
    check = PictureCheck(settings())
    assert check.problems(measure_window(list(rgb))) == []
    assert check.problems(measure_window(list(np.repeat(saturated(grey)[..., None], 3, axis=3))))[0].startswith(
        "saturated: ")


# -- pictures that cannot show gas fail, with their reason -------------------------------------------------


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("spoil, reason", [(flat, "flat picture: "), (blurred, "blurred: "),
                                           (low_contrast, "low contrast: "), (saturated, "saturated: ")])
def test_flat_blurred_low_contrast_and_saturated_pictures_fail_with_their_reason(bits, spoil, reason):
    for seed in SEEDS[:2]:
        healthy = scene(seed, bits)
        check = learned_check(healthy)
        spoilt = spoil(healthy[:WINDOW])
        problems = check.problems(measure_window(list(spoilt)))
        assert problems and problems[0].startswith(reason), (seed, problems)
        assert check.judge(measure_window(list(spoilt))).startswith(reason)  # bad_windows 1


def test_reasons_give_the_numbers_in_the_frames_units():
    eight = learned_check(scene(0, 8)).problems(measure_window(list(flat(scene(0, 8, frames=4)))))
    sixteen = learned_check(scene(0, 16)).problems(measure_window(list(low_contrast(scene(0, 16, frames=4)))))
    assert eight == ["flat picture: p99-p1 0 grey levels (0.0% of the range), limit 3"]
    assert sixteen[0].startswith("low contrast: p99-p1 ") and "counts" in sixteen[0] and sixteen[0].endswith("below 200")


def test_a_lightly_blurred_picture_still_passes_a_heavily_blurred_one_fails():
    healthy = scene(1, 8)
    check = learned_check(healthy)
    light = check.sharpness_ratio(measure_window(list(blurred(healthy[:WINDOW], 0.5))))
    heavy = check.sharpness_ratio(measure_window(list(blurred(healthy[:WINDOW], 4))))
    print(f"\n[figure] sharpness ratio to the reference: blur sigma 0.5 {light:.2f}, sigma 4 {heavy:.2f}")
    assert light > DetectabilitySettings().min_sharpness_ratio > heavy


def test_float_frames_are_not_judged():
    assert measure_window([np.zeros((8, 8), np.float32)] * 3) is None


# -- the sharpness reference --------------------------------------------------------------------------------


def test_blur_is_not_judged_until_the_reference_is_learned_from_passing_windows_only():
    healthy = scene(2, 8)
    check = PictureCheck(settings(reference_windows=2))
    blurry = measure_window(list(blurred(healthy[:WINDOW])))
    assert check.problems(blurry) == []  # no reference yet: nothing to compare with
    check.judge(measure_window(list(flat(healthy[:WINDOW]))))  # a failing window teaches nothing
    assert check.samples == [] and check.reference is None
    first, second = (measure_window(w) for w in windows(healthy)[:2])
    check.judge(first)
    assert check.reference is None
    check.judge(second)
    assert check.reference == pytest.approx(np.median([first.sharpness, second.sharpness]))
    assert check.problems(blurry)[0].startswith("blurred: ")


def test_relearn_a_new_frame_size_and_a_pinned_reference():
    healthy = scene(0, 8)
    check = learned_check(healthy)
    check.relearn()
    assert check.reference is None and check.samples == []
    learned = learned_check(healthy)
    small = scene(0, 8, frames=4, size=(120, 160))
    learned.judge(measure_window(list(small)))  # another resolution: learned again from its own windows
    assert learned.reference is None and len(learned.samples) == 1
    pinned = PictureCheck(settings(sharpness_reference=1.0))  # far sharper than any real picture
    assert pinned.problems(measure_window(list(healthy[:WINDOW])))[0].startswith("blurred: ")
    pinned.relearn()
    assert pinned.reference == 1.0


# -- hysteresis -------------------------------------------------------------------------------------------


def test_degraded_after_bad_windows_in_a_row_and_back_after_good_windows():
    healthy = scene(3, 8)
    good, bad = measure_window(list(healthy[:WINDOW])), measure_window(list(flat(healthy[:WINDOW])))
    check = PictureCheck(settings(bad_windows=3, good_windows=2))
    story = [good, bad, bad, good, bad, bad, bad, bad, good, bad, good, good, good]
    verdicts = [check.judge(m) is not None for m in story]
    # two bad windows, then one good: not degraded; three in a row: degraded; one good among bad: still
    # degraded; two good in a row: back
    assert verdicts == [False, False, False, False, False, False, True, True, True, True, True, False, False]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="flat_contrast_uint8 .* must be <= min_contrast_uint8"):
        DetectabilitySettings(flat_contrast_uint8=30)
    assert DetectabilitySettings().enabled  # on by default


def test_a_full_hd_rgb_window_costs_milliseconds():
    frames = [np.random.default_rng(i).integers(0, 256, (1080, 1920, 3), np.uint8) for i in range(8)]
    measure_window(frames)
    start = time.perf_counter()
    for _ in range(5):
        measure_window(frames)
    ms = (time.perf_counter() - start) / 5 * 1000
    print(f"\n[figure] picture check of an 8-frame 1080p RGB window: {ms:.1f} ms")
    assert ms < 250  # in the worker thread that calls the model; generous for a shared 2-core machine


# -- a real Monitor ----------------------------------------------------------------------------------------


def picture_story(folder: Path, parts) -> int:
    """Drop ``parts`` [(frames, spoil)] as one replay (END there at the start); returns the frame count."""
    folder.mkdir()
    i = 0
    for frames, spoil in parts:
        for pixels in spoil(frames):
            pixels = pixels.copy()
            pixels[0, 0] = i % 256  # never frozen (identical frames are a CAMERA_FAULT of their own)
            drop(folder, f"f{i:03d}.png", pixels)
            i += 1
    (folder / "END").touch()
    return i


def run_with_log(service, camera, tmp_path):
    rec = Recorded(service, [camera])
    log = tmp_path / "events.jsonl"
    rec.monitor.sinks = build_sinks(parse_config({"cameras": [camera], "sinks": {"jsonl": {"path": str(log),
                                                                                           "states": True}}}))
    rec.run()
    return rec, [json.loads(line) for line in log.read_text().splitlines()]


def last_before_offline(states):
    return [s for s in states if s["state"] != "OFFLINE"][-1]


def keep(frames):
    return frames


PICTURE = {"reference_windows": 2, "bad_windows": 2, "good_windows": 2}


def test_a_camera_whose_picture_turns_flat_then_blurred_is_degraded_until_it_is_sharp_again(tmp_path):
    healthy = scene(1, 8, frames=16, size=(96, 128))
    count = picture_story(tmp_path / "drop", [(healthy, keep), (healthy[:8], flat), (healthy[8:], blurred),
                                              (healthy, keep)])
    camera = folder_camera(tmp_path / "drop", detectability=PICTURE)
    with FakeService(answer_clip) as service:
        rec, lines = run_with_log(service, camera, tmp_path)

    changes = [(e.previous_state.value, e.state.value) for _, e in rec.events if e.type == "state_changed"]
    assert changes[:2] == [("NORMAL", "DEGRADED"), ("DEGRADED", "NORMAL")], rec.summary()
    (_, raised), = rec.raised("DEGRADED")
    (_, cleared), = rec.cleared("DEGRADED")
    assert raised.reason.startswith("picture: flat picture: ") and cleared.id == raised.id
    states = [e for e in lines if e["type"] == "state"]
    reasons = [s["degraded_reason"] for s in states if s["degraded"]]
    assert all(s["state"] == "DEGRADED" for s in states if s["degraded"])  # never NORMAL while it cannot see
    assert any("flat picture" in r for r in reasons) and any("blurred" in r for r in reasons), reasons
    assert last_before_offline(states)["state"] == "NORMAL" and last_before_offline(states)["degraded"] is False
    assert rec.monitor.cameras["cam"].logic.frames_analysed == count  # still analysed while degraded


def test_a_degraded_camera_that_sees_a_leak_reports_leak(tmp_path):
    healthy = scene(2, 8, frames=8, size=(96, 128))
    picture_story(tmp_path / "drop", [(healthy, keep), (healthy, flat), (healthy, flat)])
    camera = folder_camera(tmp_path / "drop", detectability=PICTURE,  # every canned frame is a leak frame
                           alarm={"min_area_pixels": 1, "k": 1, "n": 1, "clear_frames": 1000})
    with FakeService(answer_clip) as service:
        rec, lines = run_with_log(service, camera, tmp_path)

    assert rec.raised("LEAK") and rec.raised("DEGRADED") and not rec.cleared("LEAK"), rec.summary()
    states = [e for e in lines if e["type"] == "state"]
    last = last_before_offline(states)
    assert last["state"] == "LEAK" and last["state_code"] == 1 and last["degraded"] is True
    assert last["degraded_reason"].startswith("picture: flat picture")
    assert "DEGRADED" not in [e["state"] for e in lines if e["type"] == "state_changed"]
