"""The change gate (leakseg/monitor/gate.py; docs/SCADA.md, "Change gate: still scenes skip the model"): a still
scene skips the model, gas never does.

The unit tests run the gate on calm generator-v3 scenes (every distractor off). Scene seed 14 has no sky, so
no clouds or birds: only the sensor's noise moves, a still plant scene. Its model there is an *oracle* that
marks the true gas (the scene's labels): the gate's decisions and the alarm rule are real, the question is
only what the gate lets the model see. The self-test and the monitor run use the bundled default model.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import pytest

from leakseg.monitor.alarm import AlarmLogic, Observation
from leakseg.monitor.config import AlarmSettings, CameraConfig, ChangeGateSettings, parse_config
from leakseg.monitor.gate import ChangeGate, GateDecision, measure_change, still_observations
from leakseg.monitor.runner import Monitor
from leakseg.monitor.segmenters import ArchiveSegmenter, Segmenter
from leakseg.monitor.sinks import build_sinks
from leakseg.monitor.windows import Frame, Window, WindowBuilder
from leakseg.selftest.inject import PlumeSpec, inject_plume
from leakseg.selftest.run import run_selftest
from leakseg.selftest.settings import PlumeGrid, SelfTestTarget
from leakseg.selftest.trials import alarm_replay
from leakseg.synth import CALM_EFFECTS, generate_clip
from support.monitor_runs import drop

STILL_SEED = 14
H, W = 240, 320
#: docs/SCADA.md's settings for the default model.
OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}
ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}
GATE = {"enabled": True, "learn_windows": 3, "max_skipped_windows": 3}


def scene(leak: str = "none", frames: int = 62, seed: int = STILL_SEED, **effects):
    """(frames, gas masks) of a calm 240 x 320 8-bit scene; ``effects`` turn distractors back on."""
    pixels, masks, _ = generate_clip(seed, leak=leak, frames=frames, height=H, width=W, version=3,
                                     effects={**CALM_EFFECTS, **effects})
    return pixels, masks


@pytest.fixture(scope="module")
def still():
    return scene()[0]


def windows(frames: np.ndarray, length: int = 8) -> List[Window]:
    builder = WindowBuilder("cam", length)
    out = [builder.push(Frame(seq=i, pixels=p, arrived=float(i))) for i, p in enumerate(frames)]
    return [w for w in out if w is not None]


def oracle(window: Window, masks: Optional[np.ndarray]) -> List[Observation]:
    """What a perfect model reports for the window's frames: the true gas."""
    out = []
    for frame in window.reported:
        area = int(masks[frame.seq].sum()) if masks is not None else 0
        out.append(Observation(seq=frame.seq, time=float(frame.seq), area_pixels=area, area_fraction=area / (H * W),
                               score=1.0 if area else 0.0))
    return out


class Gated:
    """Windows through a gate and an alarm logic as the monitor runs them, the oracle as the model."""

    def __init__(self, alarm=ALARM, length: int = 8, **gate):
        self.length = length  # the window length: 8 through the service, 3 for a streaming model
        self.gate = ChangeGate(ChangeGateSettings(**{**GATE, **gate}))
        self.logic = AlarmLogic("cam", AlarmSettings(**alarm), clock=lambda: 0.0)
        self.decisions: List[GateDecision] = []
        self.observed: List[Observation] = []

    def run(self, frames: np.ndarray, masks: Optional[np.ndarray] = None) -> "Gated":
        for window in windows(frames, self.length):
            decision = self.gate.decide(self.gate.measure(window), self.logic)
            observed = still_observations(window) if decision.skip else oracle(window, masks)
            for obs in observed:
                self.logic.observe(obs)
            self.gate.note(observed)
            self.decisions.append(decision)
            self.observed += observed
        return self

    @property
    def skipped(self) -> List[bool]:
        return [d.skip for d in self.decisions]


# -- still scenes ----------------------------------------------------------------------------------------


def test_a_still_scene_is_skipped_after_learning_and_analysed_every_max_skipped_windows(still):
    run = Gated().run(still)
    # 4 learning windows (3, and one more for the drift floor, which needs a reference), then 3 skipped, 1 forced
    assert run.skipped == [False] * 4 + [True] * 3 + [False] + [True] * 2, [d.reason for d in run.decisions]
    assert [d.reason for d in run.decisions][:4] == ["learning the noise floor"] * 4
    assert run.decisions[7].reason == "3 windows skipped in a row"
    assert len(run.observed) == 60 and not any(o.area_pixels for o in run.observed)
    motion, drift = (run.gate.floors[k].value for k in ("motion", "drift"))
    assert motion.shape == drift.shape == (H // 16, W // 16)
    assert 1.0 < float(np.median(motion)) < 6.0 and 0.1 < float(np.median(drift)) < 1.0, run.gate.describe_floor()


def test_the_floor_is_measured_on_the_camera_not_guessed(still):
    """A noisier camera learns a higher floor and its still scene is skipped too; judged with the quiet camera's
    floor, every window of the noisy one moves."""
    rng = np.random.default_rng(0)
    noisy = np.clip(still + rng.normal(0, 3.0, still.shape), 0, 255).astype(np.uint8)
    quiet, loud = Gated(max_skipped_windows=100).run(still), Gated(max_skipped_windows=100).run(noisy)
    assert np.median(loud.gate.floors["motion"].value) > 3 * np.median(quiet.gate.floors["motion"].value)
    assert loud.skipped[4:] == [True] * 6
    quiet.gate.restart()
    judged = [quiet.gate.decide(quiet.gate.measure(w), quiet.logic) for w in windows(noisy)]
    assert not any(d.skip for d in judged[1:]), [d.reason for d in judged]
    assert all(d.reason.startswith(("motion", "drift")) for d in judged[1:])


# -- gas is never skipped ----------------------------------------------------------------------------------


def injected(contrast: float, size: int, start: int = 32, frames: int = 92):
    """A faint, slow plume from the self-test's injector on the still scene: it starts at ``start`` and runs
    to the end."""
    background = scene(frames=frames)[0]
    plume = inject_plume(background, PlumeSpec(size, contrast, "brighter", frames - start, (160, 150), 3), start,
                         0.095)
    return plume.frames, plume.masks


PLUMES = {
    "generator plume": lambda: scene("start", frames=92),
    "injected, contrast 10, 300 px": lambda: injected(10, 300),
    "injected, contrast 20, 300 px": lambda: injected(20, 300),
    "injected, contrast 15, 1000 px, darker": lambda: _darker(injected(15, 1000)),
}


def _darker(plume):
    frames, masks = plume
    background = scene(frames=len(frames))[0].astype(np.int16)
    return np.clip(2 * background - frames, 0, 255).astype(np.uint8), masks  # the same plume, cooler than the scene


@pytest.mark.parametrize("length", [8, 3])
@pytest.mark.parametrize("name", list(PLUMES))
def test_a_plume_is_never_skipped_and_alarms_exactly_as_without_the_gate(name, length):
    """Windows of 8 (the service) and of 3 (a streaming model: the gate judges every frame with its two
    neighbours, a noisier mean picture, its floors learned on such windows)."""
    frames, masks = PLUMES[name]()
    gated = Gated(max_skipped_windows=100, length=length).run(frames, masks)
    ungated = alarm_replay([o for w in windows(frames, length) for o in oracle(w, masks)], AlarmSettings(**ALARM))
    visible = [max(int(masks[f.seq].sum()) for f in w.reported) >= ALARM["min_area_pixels"]
               for w in windows(frames, length)]
    gas_free = [not masks[w.frames[0].seq:w.frames[-1].seq + 1].any() for w in windows(frames, length)]
    assert any(s for s, free in zip(gated.skipped, gas_free) if free), "the gate never skipped the still part"
    assert not any(s for s, v in zip(gated.skipped, visible) if v), [d.reason for d in gated.decisions]
    assert ungated.raised, "the oracle must alarm on this plume"
    assert alarm_replay(gated.observed, AlarmSettings(**ALARM)).raised == ungated.raised


@pytest.mark.parametrize("change", ["shake", "gain drift", "clouds and birds"])
def test_a_scene_that_starts_to_move_is_analysed(still, change):
    frames = scene(frames=62, seed=1)[0] if change == "clouds and birds" else still.copy()
    if change == "shake":
        frames[32:] = scene(frames=62, shake=1.0)[0][32:]
    elif change == "gain drift":
        ramp = np.clip(np.arange(62) - 31, 0, None) * 0.3  # +0.3 grey levels per frame from frame 32
        frames = np.clip(frames + ramp[:, None, None], 0, 255).astype(np.uint8)
    run = Gated(max_skipped_windows=100).run(frames)
    moving = run.skipped[6:] if change != "clouds and birds" else run.skipped[4:]  # window 5 holds frames 30-37
    assert not any(moving), [d.reason for d in run.decisions]


def test_a_change_too_slow_for_the_frame_to_frame_motion_adds_up_against_the_reference(still):
    """A patch warming by 0.25 grey levels per frame (a plume creeping in, a hot spot) hides in the sensor's
    noise from frame to frame; against the picture the model last saw it adds up, and the model looks again."""
    frames = still.astype(np.float32)
    frames[32:, 100:132, 150:182] += 0.25 * np.arange(1, 31)[:, None, None]
    run = Gated(max_skipped_windows=100).run(np.clip(np.rint(frames), 0, 255).astype(np.uint8))
    assert run.skipped[:5] == [False] * 4 + [True]
    reasons = [d.reason for d in run.decisions[5:]]
    assert reasons[0].startswith("drift in the block at (144, 96) px") or reasons[1].startswith("drift"), reasons
    assert not any(r.startswith("motion") for r in reasons), reasons


# -- the safety rules ---------------------------------------------------------------------------------------


def _leak(logic: AlarmLogic, frames: int = 3, clear: int = 0) -> None:
    for i in range(frames + clear):
        area = 500 if i < frames else 0
        logic.observe(Observation(seq=i, time=0.0, area_pixels=area, area_fraction=area / (H * W), score=1.0))


SAFETY = {
    "LEAK active": (lambda logic, gate: _leak(logic), "camera is LEAK"),
    "service fault": (lambda logic, gate: logic.service_failed("down"), "camera is SERVICE_FAULT"),
    "leak frame in the k-of-n history": (lambda logic, gate: _leak(logic, 1), "a leak frame in the k-of-n history"),
    "leak frame within clear_frames": (lambda logic, gate: _leak(logic, 1, 5), "last leak frame 5 frames ago"),
    "gas marked in the previous window": (lambda logic, gate: gate.note([Observation(0, 0.0, 3, 0.0, 0.2)]),
                                          "the model marked gas in the previous window"),
}


@pytest.mark.parametrize("rule", list(SAFETY))
def test_a_still_window_is_analysed_when_a_safety_rule_says_so(still, rule):
    run = Gated(alarm={**ALARM, "clear_frames": 10}, max_skipped_windows=100).run(still[:38])
    assert run.skipped[-1], "learned, and the scene is still"
    prepare, reason = SAFETY[rule]
    prepare(run.logic, run.gate)
    decision = run.gate.decide(run.gate.measure(windows(still)[-1]), run.logic)
    assert not decision.skip and decision.reason.startswith(reason)


def test_a_degraded_camera_still_skips_and_a_leak_is_never_cleared_by_skipping(still):
    run = Gated(max_skipped_windows=100).run(still[:38])
    run.logic.set_degraded("picture", "blurred")
    assert run.gate.decide(run.gate.measure(windows(still)[-1]), run.logic).skip
    _leak(run.logic)
    assert run.logic.leak is not None
    run.run(still)  # every window still: under LEAK the first is analysed (its clear frames clear the LEAK)...
    assert run.decisions[-10].reason == "camera is LEAK" and run.logic.leak is None
    assert run.skipped[-9]  # ...and skipping resumes once the model's 6 clear frames cleared it


def test_unjudged_pixel_types_are_analysed_and_a_new_frame_size_is_learned_again(still):
    run = Gated(max_skipped_windows=100).run(still[:38])
    assert measure_change([f.astype(np.float32) for f in still[:8]], 16) is None
    assert run.gate.decide(None, run.logic).reason == "not measured (pixel type)"
    small = Gated(max_skipped_windows=100)
    small.gate, small.logic = run.gate, run.logic
    small.run(still[:, :120, :160])
    assert small.skipped == [False] * 4 + [True] * 6 and run.gate.shape == (120, 160)


def test_a_full_hd_rgb_window_costs_milliseconds():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8) for _ in range(8)]
    reference = measure_change(frames, 16).picture
    measure_change(frames, 16, reference)
    start = time.perf_counter()
    energy = measure_change(frames, 16, reference)
    ms = (time.perf_counter() - start) * 1000
    print(f"\n[figure] change gate measure of an 8-frame 1080p RGB window: {ms:.1f} ms")
    assert energy.motion.shape == (68, 120) and ms < 250  # in the worker thread; generous for a shared machine


# -- the self-test and the monitor, with the default model ----------------------------------------------------


class Counting(Segmenter):
    """The real model, its calls counted."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter, self.calls, self.name = segmenter, 0, segmenter.name

    def segment(self, clip, prompts, options):
        self.calls += 1
        return self.segmenter.segment(clip, prompts, options)


@pytest.fixture(scope="module")
def model(default_archive):
    segmenter = ArchiveSegmenter(str(default_archive))
    yield segmenter
    segmenter.close()


def _camera(enabled: bool) -> CameraConfig:
    return CameraConfig(name="cam", source="x", kind="stream", options=OPTIONS, alarm=ALARM,
                        change_gate={**GATE, "enabled": enabled})


def test_the_selftest_detects_the_same_plumes_with_the_gate_on_and_off(model, still):
    grid = PlumeGrid(sizes_pixels=[30, 300], contrasts=[40], polarities=["brighter"], durations_frames=[8],
                     positions=1, lead_frames=2, tail_frames=6)
    target = SelfTestTarget(reference_size_pixels=300)
    results, calls = {}, {}
    for enabled in (True, False):
        counting = Counting(model)
        results[enabled] = run_selftest(still[:32], _camera(enabled), counting, grid, target, fps=5.0).result
        calls[enabled] = counting.calls
    on, off = results[True], results[False]
    print(f"\n[figure] self-test model windows: gate on {calls[True]}, off {calls[False]}; "
          f"detected {[t.detected for t in on.trials]}; limits {on.detection_limit_pixels}")
    assert [(t.detected, t.alarm_frame, t.clear_frame) for t in on.trials] == \
           [(t.detected, t.alarm_frame, t.clear_frame) for t in off.trials]
    assert on.probability_at_reference == off.probability_at_reference
    assert on.detection_limit_pixels == off.detection_limit_pixels and on.clean.false_alarms == off.clean.false_alarms
    skipped = on.clean.windows_skipped + sum(t.windows_skipped for t in on.trials)
    assert skipped > 0 and calls[True] == calls[False] - skipped
    assert off.clean.windows_skipped == 0 and on.settings["change_gate"]["applied"] is True
    assert off.settings["change_gate"]["applied"] is False


def test_a_monitor_skips_a_still_scene_publishes_the_count_and_still_raises_leak_on_a_plume(model, tmp_path):
    """The still scene, then the generator's own plume starts in it (the default model finds it; it does not
    find the self-test's faint injected plumes of the tests above, with the gate on or off)."""
    frames, masks = scene("start", frames=80)
    start = int(np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))[0])
    folder = tmp_path / "drop"
    folder.mkdir()
    for i, pixels in enumerate(frames):
        drop(folder, f"f{i:03d}.png", pixels)
    (folder / "END").touch()
    log = tmp_path / "events.jsonl"
    config = parse_config({
        "cameras": [{"name": "cam", "source": str(folder), "clip_frames": 8, "faults": {"stale_seconds": 3600},
                     "options": OPTIONS, "alarm": ALARM, "change_gate": GATE}],
        "sinks": {"jsonl": {"path": str(log), "states": True}}, "status_interval": 0.2,
        "evidence_dir": str(tmp_path / "evidence")})
    counting = Counting(model)
    monitor = Monitor(config, counting, build_sinks(config), until_sources_end=True, status_table=False)
    events = []
    monitor.event_listeners.append(events.append)
    monitor.run()

    camera = monitor.cameras["cam"]
    lines = [json.loads(line) for line in Path(log).read_text().splitlines()]
    states = [s for s in lines if s["type"] == "state" and s["state"] != "OFFLINE"]
    raised = [e.alarm for e in events if e.type == "alarm_raised" and e.alarm.kind.value == "LEAK"]
    assert raised and raised[0].first_seq >= start - 2, [(e.type, e.message) for e in events]
    skipped = camera.counters.windows_skipped
    print(f"\n[figure] monitor: {camera.counters.windows_sent} windows to the model, {skipped} skipped; LEAK raised at "
          f"frame {raised[0].first_seq}, gas from frame {start}")
    assert 1 <= skipped and counting.calls == camera.counters.windows_sent
    assert states[-1]["windows_skipped"] == skipped and states[-1]["frames_skipped"] == 6 * skipped
    # 80 frames: 13 windows, and a last one at the end for the 2 frames held (with the frame before them)
    assert camera.counters.windows_sent + skipped == len(windows(frames)) + 1
    assert camera.logic.frames_analysed == len(frames)  # every frame judged, by the model or the gate
    assert max(s["windows_skipped"] for s in states if s["leak_active"]) == skipped  # none skipped under LEAK
    assert min(s["windows_skipped"] for s in states if s["leak_active"]) == skipped
