"""The self-test itself: synthetic plumes blended into a camera's gas-free frames, run through exactly what the
camera runs in production, judged by its own alarm rule (docs/SCADA.md, "Commissioning a camera").

1. The clean replay: every background frame through the production path (:func:`~leakseg.selftest.trials.replay`)
   and the camera's alarm rule: its false alarms per hour (:class:`~leakseg.selftest.result.CleanResult`).
   A camera with its change gate on runs it here as in production: the gate learns its noise floors on the
   clean replay's windows and judges every trial with them (the windows it skipped are counted).
2. One trial per grid cell and source position: ``lead_frames`` of background, the leak emitting for the cell's
   duration, ``tail_frames`` in which it clears (:func:`~leakseg.selftest.inject.inject_plume`), plus the
   two frames the next window would bring, so every trial frame gets the triplet it gets mid-stream. A
   background shorter than that is extended by ping-pong (forwards, then backwards, then forwards...),
   so the scene never jumps. Source position ``p`` has one plume seed and one stretch of background
   (starting ``p / positions`` of the way in) for every cell: cells differ only in size, contrast,
   polarity and duration, which keeps the probability-versus-size curves from crossing by chance.
3. A trial is *detected* when LEAK is raised at a frame in ``[gas_first - 2, gas_first + bound)``, ``bound``
   the target's ``alarm_within_frames`` or the leak's duration plus the rule's n. The 2: frame t's mask
   comes from the triplet (t, t+1, t+2), so the model sees gas up to 2 frames before the first frame that
   shows it (:data:`~leakseg.selftest.trials.LOOKAHEAD`); a time to alarm can be -0.4 s at 5 fps.
4. The summary (:mod:`leakseg.selftest.detection`): probability per cell, detection limit per contrast and
   polarity, the probability at the reference plume (interpolated in log size between the grid's
   neighbouring sizes when the reference size is not one of them), pass or fail, and the recommended
   operating point (:func:`~leakseg.selftest.operating_point.recommend`).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from leakseg.monitor.config import CameraConfig
from leakseg.monitor.gate import ChangeGate
from leakseg.monitor.measure import camera_ignore_mask
from leakseg.monitor.segmenters import Segmenter
from leakseg.monitor.windows import WindowBuilder, window_length
from leakseg.monitor.zones import IgnoreMask
from leakseg.selftest import detection
from leakseg.selftest.inject import Injected, PlumeSpec, inject_plume, source_positions
from leakseg.selftest.operating_point import recommend
from leakseg.selftest.result import (Cell, CellResult, CleanResult, Example, FrameSeen, SelfTestResult, SelfTestRun,
                                     TrialResult)
from leakseg.selftest.settings import PlumeGrid, SelfTestTarget
from leakseg.selftest.trials import (SelfTestError, SelfTestStopped, Seen, alarm_bound, alarm_replay, judge,
                                     replay)
from leakseg.synth.clip import VISIBILITY_THRESHOLD

__all__ = ["SelfTestError", "SelfTestStopped", "run_selftest", "ping_pong", "clean_result", "poisson_upper"]

Progress = Callable[[int, int], None]
ShouldStop = Callable[[], bool]


@dataclass
class _Context:
    """What every trial of one self-test shares."""

    camera: CameraConfig
    segmenter: Segmenter
    ignore: Optional[IgnoreMask]
    grid: PlumeGrid
    target: SelfTestTarget
    fps: float
    should_stop: Optional[ShouldStop]
    gate: Optional[ChangeGate] = None  # the camera's change gate, its floors learned on the clean replay


def run_selftest(frames: np.ndarray, camera: CameraConfig, segmenter: Segmenter, grid: PlumeGrid,
                 target: SelfTestTarget, *, fps: Optional[float] = None, progress: Optional[Progress] = None,
                 should_stop: Optional[ShouldStop] = None, keep_examples: int = 2) -> SelfTestRun:
    """Self-test ``camera`` on its gas-free ``frames`` (T x H x W or T x H x W x 3, uint8 or uint16).

    ``fps``: the analysed frame rate (default: the camera's ``analysis_fps``, else 1). ``progress(done,
    total)`` after each trial; ``should_stop()`` before each window (:class:`SelfTestStopped`). A window the
    model refuses raises :class:`SelfTestError`. ``keep_examples``: detected and missed trials each, shown
    at the frame where the plume is largest (the smallest plumes detected, the largest missed)."""
    background = _checked(frames)
    ignore = camera_ignore_mask(camera)
    gate = ChangeGate(camera.change_gate) if camera.change_gate.enabled else None
    ctx = _Context(camera, segmenter, ignore, grid, target, fps or camera.analysis_fps or 1.0, should_stop, gate)
    started = time.time()
    seen, skipped = _replayed(ctx, background, keep_masks=False)
    clean = clean_result(seen, camera, ctx.fps, windows_skipped=skipped)
    ctx.gate = _settled(gate)
    positions = source_positions(_ignored(ignore, background.shape[1:3]), background.shape[1:3], grid.positions,
                                 grid.seed)
    examples = _Examples(keep_examples)
    trials: List[TrialResult] = []
    plan = list(_plan(grid, positions, len(background)))
    for done, (cell, position, seed, offset) in enumerate(plan, 1):
        trial, injected, seen = _trial(ctx, background, cell, position, seed, offset)
        examples.offer(len(trials), trial, injected, seen)
        trials.append(trial)
        if progress is not None:
            progress(done, len(plan))
    result = _summary(ctx, background, trials, clean, started)
    result.recommendation = recommend(result, camera.alarm, target)
    return SelfTestRun(result, examples.chosen())


def _replayed(ctx: _Context, frames: np.ndarray, keep_masks: bool = True) -> Tuple[List[Seen], int]:
    """The production path over ``frames`` (with the camera's change gate when it is on), and how many windows
    the gate skipped."""
    before = ctx.gate.windows_skipped if ctx.gate is not None else 0
    seen = replay(frames, ctx.camera, ctx.segmenter, ctx.ignore, ctx.should_stop, keep_masks, ctx.gate)
    return seen, (ctx.gate.windows_skipped - before if ctx.gate is not None else 0)


def _settled(gate: Optional[ChangeGate]) -> Optional[ChangeGate]:
    """The gate with its floors learned on the clean replay, to judge the trials (never learning from their
    plumes). A background too short to measure a floor: no gate, as production analyses every window while
    the gate learns."""
    if gate is None:
        return None
    gate.settle()
    return None if gate.learning else gate


def _checked(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    grey, rgb = frames.ndim == 3, frames.ndim == 4 and frames.shape[-1] == 3
    if not (grey or rgb) or frames.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"background frames must be T x H x W or T x H x W x 3, uint8 or uint16; got "
                         f"{frames.shape} {frames.dtype}")
    if len(frames) < 3:
        raise ValueError(f"the background needs at least 3 frames (one triplet), got {len(frames)}")
    return frames


def _ignored(ignore: Optional[IgnoreMask], size: Tuple[int, int]) -> Optional[np.ndarray]:
    try:
        return None if ignore is None else ignore.for_frame(*size)
    except ValueError as exc:
        raise SelfTestError(str(exc)) from exc


def clean_result(seen: Sequence[Seen], camera: CameraConfig, fps: float, windows_skipped: int = 0) -> CleanResult:
    """The camera's alarm rule over its analysed gas-free frames: every LEAK raised is a false alarm.
    ``windows_skipped``: how many of their windows the change gate skipped."""
    alarms = alarm_replay([obs for obs, _ in seen], camera.alarm)
    hours = len(seen) / fps / 3600
    raised = len(alarms.raised)
    return CleanResult(frames=len(seen), hours=hours, false_alarms=raised,
                       false_alarms_per_hour=raised / hours if hours else 0.0,
                       leak_frame_fraction=alarms.leak_frames / len(seen) if seen else 0.0,
                       frames_seen=[FrameSeen(obs.area_pixels, obs.score, 0) for obs, _ in seen],
                       false_alarms_per_hour_upper95=poisson_upper(raised) / hours if hours else None,
                       windows_skipped=windows_skipped)


def poisson_upper(count: int, confidence: float = 0.95) -> float:
    """The one-sided upper confidence bound of a Poisson mean after ``count`` events (3.0 for none: the rule
    of three), by bisection on the Poisson CDF."""
    def cdf(mean: float) -> float:
        term = total = math.exp(-mean)
        for k in range(1, count + 1):
            term *= mean / k
            total += term
        return total

    low, high = float(count), float(count) + 10.0 * math.sqrt(count + 1) + 10.0
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if cdf(mid) > 1 - confidence else (low, mid)
    return high


def ping_pong(count: int, offset: int, length: int) -> np.ndarray:
    """``length`` indices into ``count`` frames from ``offset``, bouncing at both ends (0 1 2 3 2 1 0 1 ...)."""
    period = max(2 * count - 2, 1)
    phase = (offset + np.arange(length)) % period
    return np.where(phase < count, phase, period - phase)


def _plan(grid: PlumeGrid, positions: List[Tuple[int, int]], background: int) -> Iterator[tuple]:
    """(cell, position, plume seed, background offset) per trial, cell by cell."""
    for size, contrast, polarity, duration in itertools.product(grid.sizes_pixels, grid.contrasts, grid.polarities,
                                                               grid.durations_frames):
        for p, position in enumerate(positions):
            seed = int(np.random.SeedSequence([grid.seed, p]).generate_state(1)[0])
            yield Cell(size, contrast, polarity, duration), position, seed, p * background // len(positions)


def _trial(ctx: _Context, background: np.ndarray, cell: Cell, position: Tuple[int, int], seed: int,
           offset: int) -> Tuple[TrialResult, Injected, List[Seen]]:
    """One plume through the production path, judged by the camera's rule."""
    grid = ctx.grid
    length = grid.lead_frames + cell.duration_frames + grid.tail_frames
    stream = background[ping_pong(len(background), offset, length + WindowBuilder.OVERLAP)]
    spec = PlumeSpec(cell.size_pixels, cell.contrast, cell.polarity, cell.duration_frames, position, seed)
    injected = inject_plume(stream, spec, grid.lead_frames, VISIBILITY_THRESHOLD)
    seen, skipped = _replayed(ctx, injected.frames)
    seen = seen[:length]
    true_area = injected.masks[:length].reshape(length, -1).sum(axis=1)
    gas = np.flatnonzero(true_area)
    gas_first = int(gas[0]) if len(gas) else grid.lead_frames
    gas_last = int(gas[-1]) if len(gas) else gas_first
    bound = alarm_bound(cell.duration_frames, ctx.camera.alarm.n, ctx.target.alarm_within_frames)
    outcome = judge(alarm_replay([obs for obs, _ in seen], ctx.camera.alarm), gas_first, bound)
    trial = TrialResult(
        cell=cell, position=position, seed=seed, gas_first=gas_first,
        gas_stop=grid.lead_frames + cell.duration_frames, measured_size_pixels=injected.measured_size_pixels,
        detected=outcome.detected, alarm_frame=outcome.alarm_frame, clear_frame=outcome.clear_frame,
        time_to_alarm_s=_seconds(outcome.alarm_frame, gas_first, ctx.fps),
        time_to_clear_s=_seconds(outcome.clear_frame, gas_last, ctx.fps), alarm_before_gas=outcome.alarm_before_gas,
        frames=[FrameSeen(obs.area_pixels, obs.score, int(a)) for (obs, _), a in zip(seen, true_area)],
        windows_skipped=skipped)
    return trial, injected, seen


def _seconds(frame: Optional[int], since: int, fps: float) -> Optional[float]:
    return None if frame is None else (frame - since) / fps


def _summary(ctx: _Context, background: np.ndarray, trials: List[TrialResult], clean: CleanResult,
             started: float) -> SelfTestResult:
    grid, target = ctx.grid, ctx.target
    detected = [t.detected for t in trials]
    reference = detection.reference_pod(trials, detected, grid.contrasts, target)
    probability = detection.pod_at(reference, target.reference_size_pixels)
    height, width = background.shape[1:3]
    result = SelfTestResult(
        camera=ctx.camera.name, started=started, finished=time.time(), frame_size=(height, width),
        bit_depth=8 if background.dtype == np.uint8 else 16, analysis_fps=ctx.fps,
        background_frames=len(background), settings=_settings(ctx), cells=_cells(trials, height * width),
        trials=trials, clean=clean, detection_limit_pixels=_limits(trials, grid, target.probability),
        detection_limit_at_reference=detection.detection_limit(reference, target.probability),
        probability_at_reference=probability, passed=probability >= target.probability, reason="")
    result.reason = _reason(result, ctx)
    return result


def _cells(trials: List[TrialResult], frame_pixels: int) -> List[CellResult]:
    by_cell: Dict[Cell, List[TrialResult]] = {}
    for trial in trials:
        by_cell.setdefault(trial.cell, []).append(trial)
    return [_cell(cell, group, frame_pixels) for cell, group in by_cell.items()]


def _cell(cell: Cell, group: List[TrialResult], frame_pixels: int) -> CellResult:
    hits = [t for t in group if t.detected]
    return CellResult(cell=cell, trials=len(group), detected=len(hits), probability=len(hits) / len(group),
                      median_time_to_alarm_s=_median([t.time_to_alarm_s for t in hits]),
                      median_time_to_clear_s=_median([t.time_to_clear_s for t in hits]),
                      size_fraction=cell.size_pixels / frame_pixels)


def _median(values: List[Optional[float]]) -> Optional[float]:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _limits(trials: List[TrialResult], grid: PlumeGrid, probability: float) -> Dict[str, Optional[int]]:
    """Per contrast and polarity ("40 darker"): the detection limit, durations pooled."""
    detected = [t.detected for t in trials]
    return {f"{c:g} {q}": detection.detection_limit(detection.pod_by_size(trials, detected, c, q), probability)
            for c, q in itertools.product(grid.contrasts, grid.polarities)}


def _settings(ctx: _Context) -> Dict:
    camera = ctx.camera
    return {"grid": ctx.grid.model_dump(), "target": ctx.target.model_dump(), "alarm": camera.alarm.model_dump(),
            "options": dict(camera.options), "prompts": camera.prompts,
            "clip_frames": window_length(camera.clip_frames, ctx.segmenter.streams),
            "reference_contrast": detection.reference_contrast(ctx.grid.contrasts, ctx.target),
            "ignore": ctx.ignore is not None, "visibility_threshold": VISIBILITY_THRESHOLD,
            "change_gate": {**camera.change_gate.model_dump(), "applied": ctx.gate is not None}}


def _reason(result: SelfTestResult, ctx: _Context) -> str:
    target, clean = ctx.target, result.clean
    contrast = detection.reference_contrast(ctx.grid.contrasts, target)
    limit = result.detection_limit_at_reference
    return (f"{'passed' if result.passed else 'failed'}: probability of detection "
            f"{result.probability_at_reference:.0%} at the reference plume ({target.reference_size_pixels} px, "
            f"contrast {contrast:g}) "
            f"{'>=' if result.passed else '<'} {target.probability:.0%}; detection limit "
            f"{f'{limit} px' if limit is not None else 'none in the grid'}; {clean.false_alarms} false alarm(s) "
            f"in {clean.hours * 60:.1f} min of clean footage")


class _Examples:
    """The trials the report shows: the smallest plumes detected and the largest missed, ``keep`` of each."""

    def __init__(self, keep: int):
        self.keep = keep
        self.detected: List[Tuple[tuple, Example]] = []
        self.missed: List[Tuple[tuple, Example]] = []

    def offer(self, index: int, trial: TrialResult, injected: Injected, seen: List[Seen]) -> None:
        if self.keep <= 0:
            return
        size = (trial.cell.size_pixels, trial.cell.contrast)
        pool, key = (self.detected, size) if trial.detected else (self.missed, tuple(-v for v in size))
        key = (*key, index)
        if len(pool) == self.keep and key >= pool[-1][0]:
            return
        pool.append((key, _example(index, trial, injected, seen)))
        pool.sort(key=lambda item: item[0])
        del pool[self.keep:]

    def chosen(self) -> List[Example]:
        return [example for _, example in self.detected + self.missed]


def _example(index: int, trial: TrialResult, injected: Injected, seen: List[Seen]) -> Example:
    """The trial's frame with the most visible gas, with the gas and the model's mask there."""
    frame = int(np.argmax([f.true_area_pixels for f in trial.frames]))
    return Example(trial=index, frame_index=frame, frame=injected.frames[frame].copy(),
                   true_mask=injected.masks[frame].copy(), model_mask=seen[frame][1].copy(), detected=trial.detected)
