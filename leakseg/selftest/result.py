"""What a self-test measured: one :class:`TrialResult` per injected plume, one :class:`CellResult` per grid
cell, the clean footage's false alarms (:class:`CleanResult`), and the whole (:class:`SelfTestResult`),
which is what ``selftest.json`` holds (``to_dict`` / ``from_dict`` round-trip it).

Times are in seconds of the camera's analysed stream (frames / ``analysis_fps``), frame numbers count the
trial's frames from 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

#: selftest.json's format version.
RESULT_VERSION = 1


@dataclass(frozen=True)
class Cell:
    """One combination of the grid: a plume size, contrast, polarity and duration."""

    size_pixels: int
    contrast: float
    polarity: str
    duration_frames: int


@dataclass
class FrameSeen:
    """What the production path made of one analysed frame of a trial (after the ignore mask)."""

    area_pixels: int
    score: float
    true_area_pixels: int  # the injected plume's visible pixels in the frame (0 without gas)


@dataclass
class TrialResult:
    cell: Cell
    position: Tuple[int, int]  # the leak's source, x, y in pixels of the frame
    seed: int
    gas_first: int  # the first frame with visible gas
    gas_stop: int  # the first frame after the leak stopped emitting (its gas still clears after it)
    measured_size_pixels: float  # the injected plume's mean visible area while it runs
    detected: bool  # LEAK raised within the time bound
    alarm_frame: Optional[int] = None  # the frame at which LEAK was raised (None: never)
    clear_frame: Optional[int] = None  # the frame at which it cleared (None: not within the trial)
    time_to_alarm_s: Optional[float] = None  # from gas_first to alarm_frame
    time_to_clear_s: Optional[float] = None  # from the last frame with visible gas to clear_frame
    alarm_before_gas: bool = False  # LEAK raised in the lead frames: the background itself alarms
    frames: List[FrameSeen] = field(default_factory=list)
    windows_skipped: int = 0  # windows the camera's change gate judged still (not sent to the model)


@dataclass
class CellResult:
    cell: Cell
    trials: int
    detected: int
    probability: float  # detected / trials
    median_time_to_alarm_s: Optional[float]
    median_time_to_clear_s: Optional[float]
    size_fraction: float  # size_pixels / frame area


@dataclass
class CleanResult:
    """The camera's gas-free frames run as production runs them: its false alarms."""

    frames: int
    hours: float
    false_alarms: int  # LEAK alarms raised
    false_alarms_per_hour: float
    leak_frame_fraction: float  # frames that counted as leak frames
    frames_seen: List[FrameSeen] = field(default_factory=list)
    #: the rate's one-sided 95 % upper bound (Poisson): short footage with no false alarm proves little
    false_alarms_per_hour_upper95: Optional[float] = None
    windows_skipped: int = 0  # windows the camera's change gate judged still (not sent to the model)


@dataclass
class OperatingPoint:
    """An alarm rule and score threshold, and what it achieves on this camera's self-test."""

    min_score: float
    min_area_pixels: int
    k: int
    n: int
    clear_frames: int
    probability_at_reference: float
    false_alarms_per_day: float
    meets_target: bool
    note: str = ""

    def yaml_block(self, camera: str) -> str:
        """The camera's ``alarm:`` block, ready to paste into the monitor's YAML."""
        return (f"# leakseg selftest: camera {camera}\n"
                f"alarm:\n  min_score: {self.min_score:g}\n  min_area_pixels: {self.min_area_pixels}\n"
                f"  k: {self.k}\n  n: {self.n}\n  clear_frames: {self.clear_frames}\n")


@dataclass
class SelfTestResult:
    camera: str
    started: float  # Unix time
    finished: float
    frame_size: Tuple[int, int]  # height, width
    bit_depth: int  # 8 or 16
    analysis_fps: float
    background_frames: int
    settings: Dict[str, Any]  # the grid, the target, the camera's alarm rule and options, as run
    cells: List[CellResult]
    trials: List[TrialResult]
    clean: CleanResult
    #: per contrast and polarity ("40 darker"): the smallest size detected with >= target probability
    detection_limit_pixels: Dict[str, Optional[int]]
    #: the smallest such size over the grid's contrasts at the reference contrast, for SCADA (None: none)
    detection_limit_at_reference: Optional[int]
    probability_at_reference: float
    passed: bool
    reason: str  # why it passed or failed, in one line
    recommendation: Optional[OperatingPoint] = None
    version: int = RESULT_VERSION

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SelfTestResult":
        data = dict(data)
        data["frame_size"] = tuple(data["frame_size"])
        data["cells"] = [_cell_result(c) for c in data["cells"]]
        data["trials"] = [_trial(t) for t in data["trials"]]
        data["clean"] = _with_frames(CleanResult, data["clean"], "frames_seen")
        if data.get("recommendation") is not None:
            data["recommendation"] = OperatingPoint(**data["recommendation"])
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


def _cell_result(d: Dict[str, Any]) -> CellResult:
    return CellResult(**{**d, "cell": Cell(**d["cell"])})


def _trial(d: Dict[str, Any]) -> TrialResult:
    d = {**d, "cell": Cell(**d["cell"]), "position": tuple(d["position"])}
    return _with_frames(TrialResult, d, "frames")


def _with_frames(cls, d: Dict[str, Any], key: str):
    return cls(**{**d, key: [FrameSeen(**f) for f in d.get(key, [])]})


@dataclass
class Example:
    """One frame of a trial for the report's overlays (not in selftest.json): the camera's frame with the
    injected gas, where the gas is, and what the production path marked there."""

    trial: int  # index into SelfTestResult.trials
    frame_index: int  # the trial's frame shown
    frame: np.ndarray  # H x W or H x W x 3, the camera's own dtype
    true_mask: np.ndarray  # bool H x W: the injected plume's visible pixels
    model_mask: np.ndarray  # bool H x W: the model's mask after the ignore mask
    detected: bool


@dataclass
class SelfTestRun:
    """What :func:`leakseg.selftest.run.run_selftest` returns: the result and the report's example frames."""

    result: SelfTestResult
    examples: List[Example] = field(default_factory=list)
