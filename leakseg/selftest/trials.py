"""The camera's production path on a sequence of frames, for the self-test: its windows, its model, its ignore
mask and its alarm rule, with the monitor's own functions (nothing here re-implements them).

:func:`replay` feeds frames through :class:`~leakseg.monitor.windows.WindowBuilder` (the camera's window
length, overlapping by 2, flushed at the end), :func:`~leakseg.monitor.segmenters.segment_window` (the camera's
prompts and options) and :func:`~leakseg.monitor.measure.observations` (its ignore mask and zones).
:func:`alarm_replay` runs a fresh :class:`~leakseg.monitor.alarm.AlarmLogic` over the observations:
never the live camera's, whose state the self-test must not touch.

A camera with its change gate on (``change_gate.enabled``) is replayed with it, as production runs it
(:mod:`leakseg.monitor.gate`): each window is measured, the gate decides with the replay's own alarm logic
(the same safety rules), and a skipped window's frames are clear observations (their masks empty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from leakseg.monitor.alarm import AlarmLogic, Observation
from leakseg.monitor.config import AlarmSettings, CameraConfig
from leakseg.monitor.gate import ChangeGate, still_observations
from leakseg.monitor.measure import observations
from leakseg.monitor.segmenters import Segmenter, segment_window
from leakseg.monitor.windows import Frame, Window, WindowBuilder, window_length
from leakseg.monitor.zones import IgnoreMask

#: One analysed frame: what the alarm logic sees, and the model's mask after the ignore mask (H x W bool; None
#: when not kept).
Seen = Tuple[Observation, Optional[np.ndarray]]


class SelfTestError(RuntimeError):
    """The production path failed on the self-test's frames (the model or service refused a window, or the
    ignore mask does not fit): the self-test cannot say what the camera detects."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class SelfTestStopped(RuntimeError):
    """``should_stop()`` asked the self-test to stop (the monitor is shutting down, or an operator cancelled)."""


def replay(frames: Sequence[np.ndarray], camera: CameraConfig, segmenter: Segmenter, ignore: Optional[IgnoreMask],
           should_stop: Optional[Callable[[], bool]] = None, keep_masks: bool = True,
           gate: Optional[ChangeGate] = None) -> List[Seen]:
    """Every reported frame of ``frames`` as the camera analyses it, in order. Frame ``i`` has seq ``i`` and
    time ``i`` (the alarm rule counts frames, not seconds). ``should_stop`` is asked before each window.
    ``keep_masks`` False leaves the masks out (None): a long clean background would not fit in memory.
    ``gate``: the camera's change gate (None: off); its floors carry over from one replay to the next (the
    self-test learns them on the clean background), its run starts again with each replay."""
    logic = _gated_logic(camera, gate)
    seen: List[Seen] = []
    for window in _windows(frames, camera, segmenter.streams):
        if gate is not None and gate.decide(gate.measure(window), logic).skip:
            window_seen = _still(window, keep_masks)
        else:
            window_seen = _analysed(window, camera, segmenter, ignore, should_stop, keep_masks)
        if gate is not None:
            _tell(gate, logic, [obs for obs, _ in window_seen])
        seen += window_seen
    return seen


def _windows(frames: Sequence[np.ndarray], camera: CameraConfig, streams: bool) -> Iterator[Window]:
    """The camera's windows over ``frames`` (its window length, overlapping by 2), the last one flushed; a stream
    of their own (a segmenter that streams keeps the replay's frame features apart from the live camera's)."""
    builder = WindowBuilder(camera.name, window_length(camera.clip_frames, streams), stream=f"{camera.name}/selftest")
    for i, pixels in enumerate(frames):
        window = builder.push(Frame(seq=i, pixels=pixels, arrived=float(i)))
        if window is not None:
            yield window
    last = builder.flush()
    if last is not None:
        yield last


def _gated_logic(camera: CameraConfig, gate: Optional[ChangeGate]) -> Optional[AlarmLogic]:
    """The alarm logic the gate's safety rules read during a gated replay (a fresh one: never the camera's)."""
    if gate is None:
        return None
    gate.restart()
    return AlarmLogic(camera.name, camera.alarm, clock=lambda: 0.0)


def _tell(gate: ChangeGate, logic: AlarmLogic, observed: List[Observation]) -> None:
    """A window's observations to the replay's alarm logic and to the gate, as the monitor gives them."""
    for obs in observed:
        logic.observe(obs)
    gate.note(observed)


def _still(window: Window, keep_masks: bool) -> List[Seen]:
    """A window the gate skipped: clear frames, empty masks."""
    empty = np.zeros(window.frames[0].pixels.shape[:2], dtype=bool) if keep_masks else None
    return [(obs, empty) for obs in still_observations(window)]


def _analysed(window: Window, camera: CameraConfig, segmenter: Segmenter, ignore: Optional[IgnoreMask],
              should_stop: Optional[Callable[[], bool]], keep_masks: bool) -> List[Seen]:
    _stop_if_asked(camera, should_stop)
    answer, error = segment_window(segmenter, camera, window)
    if error is not None:
        # segment_window turns every exception into a reason: a segmenter that gave up because the self-test
        # is stopping (the monitor's) must still read as a stop, not as a model failure
        _stop_if_asked(camera, should_stop)
        raise SelfTestError(f"window {window.number} (frames {window.first_seq}..): {error}")
    try:
        observed = observations(window, answer.result, ignore, answer.masks)
    except ValueError as exc:  # the ignore mask or zones do not fit the frames
        raise SelfTestError(str(exc)) from exc
    if not keep_masks:
        return [(obs, None) for obs in observed]
    masks = answer.masks
    if ignore is not None:
        masks = masks & ~ignore.for_frame(*masks.shape[1:])
    return list(zip(observed, masks))


def _stop_if_asked(camera: CameraConfig, should_stop: Optional[Callable[[], bool]]) -> None:
    if should_stop is not None and should_stop():
        raise SelfTestStopped(f"self-test of camera {camera.name} stopped")


@dataclass
class Alarms:
    """The LEAK alarms of one replay: the frames (seq) that raised them and those that cleared them."""

    raised: List[int] = field(default_factory=list)
    cleared: List[int] = field(default_factory=list)
    leak_frames: int = 0  # frames that counted as leak frames

    def raised_in(self, first: int, end: int) -> Optional[int]:
        """The first frame in [first, end) that raised LEAK, or None."""
        return next((r for r in self.raised if first <= r < end), None)

    def cleared_after(self, frame: int) -> Optional[int]:
        return next((c for c in self.cleared if c > frame), None)


def alarm_replay(observed: Sequence[Observation], settings: AlarmSettings) -> Alarms:
    """The alarm rule of ``settings`` over the observations, with a fresh AlarmLogic."""
    logic = AlarmLogic("selftest", settings, clock=lambda: 0.0)
    alarms = Alarms()
    for obs in observed:
        for event in logic.observe(obs):
            if event.type == "alarm_raised":
                alarms.raised.append(obs.seq)
            elif event.type == "alarm_cleared":
                alarms.cleared.append(obs.seq)
    alarms.leak_frames = logic.leak_frames
    return alarms


def observation_of(seq: int, area_pixels: int, score: float, frame_pixels: int) -> Observation:
    """An observation rebuilt from what a trial recorded (area and score), to replay another alarm rule."""
    return Observation(seq=seq, time=float(seq), area_pixels=area_pixels, area_fraction=area_pixels / frame_pixels,
                       score=score)


def alarm_bound(duration_frames: int, n: int, within: Optional[int]) -> int:
    """How many frames after the gas first shows LEAK may be raised and still count as a detection: the
    target's ``alarm_within_frames``, else the leak's duration plus the rule's n."""
    return within if within is not None else duration_frames + n


#: Frame t's mask is computed from the triplet (t, t+1, t+2) (leakseg.monitor.windows), so gas that first shows
#: at frame g can be marked from frame g - 2: an alarm raised there is the plume's, not the background's.
LOOKAHEAD = WindowBuilder.OVERLAP


@dataclass
class Outcome:
    """What one alarm rule made of one trial."""

    detected: bool  # LEAK raised from LOOKAHEAD frames before the gas first showed to the bound after
    alarm_frame: Optional[int]  # the first raise from then on, in time or late (None: never)
    clear_frame: Optional[int]  # the first clear after alarm_frame (None: not within the trial)
    alarm_before_gas: bool  # LEAK raised before the triplets saw any gas: the background itself alarms


def judge(alarms: Alarms, gas_first: int, bound: int) -> Outcome:
    """A trial's outcome from its alarms: LEAK raised in ``[gas_first - LOOKAHEAD, gas_first + bound)`` detects
    the plume (the model sees the gas in frame t's triplet up to 2 frames before frame t shows it). An alarm
    raised earlier and still active when the gas comes is not a detection of this plume (alarm_before_gas)."""
    seen_from = gas_first - LOOKAHEAD
    in_time = alarms.raised_in(seen_from, gas_first + bound)
    alarm = in_time if in_time is not None else alarms.raised_in(seen_from, 1 << 62)
    clear = alarms.cleared_after(alarm) if alarm is not None else None
    return Outcome(in_time is not None, alarm, clear, any(r < seen_from for r in alarms.raised))
