"""The change gate: still scenes skip the model. A plant scene mostly does not change; gas always does.

:func:`measure_change` measures two energies of a window per block (``block_pixels`` x ``block_pixels``
pixels; the blocks at the right and bottom edges may be smaller), on the frames' grey level sampled on a grid
(:data:`SAMPLES_PER_BLOCK_SIDE` samples along each side of a block, at most about :data:`SAMPLED_PIXELS` per
frame). Judging blocks on their own keeps a small local plume from being diluted by a still frame.

* *motion*: each sample's squared difference between consecutive frames, averaged over the window;
* *drift*: each sample's squared difference between the window's mean picture and the *reference*, the mean
  picture of the window the model last analysed. Averaging a window's frames removes most of the sensor noise,
  so a faint, slow plume that hides in the noise from frame to frame still changes the picture, and a change
  that creeps in over several skipped windows adds up against the same reference.

:class:`ChangeGate` is one camera's judge (docs/SCADA.md, "Change gate: still scenes skip the model"). Its
*noise floor* is measured, never guessed: per block, the median energy of the camera's first ``learn_windows``
windows (all analysed), learned again at a new frame size. After that the floor follows the scene down, never
up: it becomes the lower of itself and the median of the latest ``learn_windows`` windows, so a camera whose
noise falls (a cooler night, a quieter AGC) does not become less sensitive; one whose noise rises only gets
analysed more. Each energy has its floor. A window is *still* when no block's motion or drift exceeds
``factor`` x its floor plus :data:`QUANTISATION_MARGIN` (a perfectly quiet 8-bit block has a floor of 0, and
one grey level of rounding must not count as motion).

A still window is skipped (the model is not asked) unless a safety rule says to analyse it, in this order:

* the window was not measured (a pixel type the gate does not judge) or the gate is still learning;
* the camera is not NORMAL or DEGRADED: a LEAK is active (it is never cleared by not looking), or a camera or
  service fault is (only an answered window proves the service back);
* the k-of-n history holds a leak frame, or the last leak frame was less than the rule's ``clear_frames``
  frames ago;
* the model marked gas (any pixel, after the ignore mask) in the previous window, leak frame or not: what the
  model half-sees it must keep looking at, so a skip only ever follows an empty answer;
* ``max_skipped_windows`` windows in a row were skipped: the next one is analysed anyway, so a failing model
  is noticed and a slowly creeping plume is seen.

The caller gives the alarm logic a skipped window's reported frames as clear observations
(:func:`still_observations`: area 0, score 0): "nothing moved, so no gas" is the gate's claim; and tells the
gate every window's observations (:meth:`ChangeGate.note`).

Cost: under a millisecond for an 8-frame 240 x 320 grey window, 25-90 ms (idle or busy machine) for an
8-frame 1080p RGB one (turning RGB into grey dominates), in a worker thread, never on the monitor's loop.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Deque, List, Optional, Sequence, Tuple

import numpy as np

from leakseg.monitor.alarm import Observation, State
from leakseg.monitor.config import ChangeGateSettings
from leakseg.monitor.detectability import UNITS, grey_levels as grey
from leakseg.monitor.windows import Window

if TYPE_CHECKING:
    from leakseg.monitor.alarm import AlarmLogic

#: Samples along each side of a block (a 16-pixel block is sampled every 2nd pixel, 64 samples): enough that a
#: block's energy in a still scene stays within about 1.6 x its floor.
SAMPLES_PER_BLOCK_SIDE = 8
#: At most about this many samples per frame (large frames get fewer per block: use larger blocks there).
SAMPLED_PIXELS = 131072
#: Added to every block's limit, in the frame's units squared: half a quantisation step squared, so rounding
#: alone never counts as motion in a block whose measured floor is 0.
QUANTISATION_MARGIN = 0.5
#: The states in which a camera may skip a window: no LEAK, no fault.
SKIPPING_STATES = (State.NORMAL, State.DEGRADED)


@dataclass(frozen=True)
class ChangeEnergy:
    """One window's energies per block (rows x cols, float32, frame units squared)."""

    shape: Tuple[int, int]  # H, W of the frames
    block_pixels: int
    motion: np.ndarray  # consecutive frames' squared difference, averaged over the window
    drift: Optional[np.ndarray]  # the window's mean picture's squared difference to the reference (None: none)
    picture: np.ndarray  # the window's mean picture on the sample grid (the next reference when analysed)

    def block_origin(self, index: int) -> Tuple[int, int]:
        """(x, y) in pixels of the top-left corner of the flat ``index``-th block."""
        row, col = divmod(int(index), self.motion.shape[1])
        return col * self.block_pixels, row * self.block_pixels


@dataclass(frozen=True)
class GateDecision:
    skip: bool
    reason: str  # why the window is analysed, or "still"


def measure_change(frames: Sequence[np.ndarray], block_pixels: int,
                   reference: Optional[np.ndarray] = None) -> Optional[ChangeEnergy]:
    """The window's energies per block against ``reference`` (the sample grid's mean picture of the window the
    model last analysed; None: no drift measured). None for fewer than 2 frames or a pixel type not judged."""
    if len(frames) < 2 or frames[0].dtype.name not in UNITS:
        return None
    height, width = frames[0].shape[:2]
    step = max(1, block_pixels // SAMPLES_PER_BLOCK_SIDE, math.ceil(math.sqrt(height * width / SAMPLED_PIXELS)))
    cells = max(1, block_pixels // step)
    samples = [grey(f[::step, ::step]) for f in frames]
    motion = np.zeros_like(samples[0])
    for before, after in zip(samples, samples[1:]):
        motion += (after - before) ** 2
    motion /= len(samples) - 1
    picture = np.mean(samples, axis=0)
    drift = None
    if reference is not None and reference.shape == picture.shape:
        drift = _block_means((picture - reference) ** 2, cells)
    return ChangeEnergy(tuple(frames[0].shape[:2]), block_pixels, _block_means(motion, cells), drift, picture)


def _block_means(energy: np.ndarray, cells: int) -> np.ndarray:
    """Mean of each ``cells`` x ``cells`` block of the sample grid; the edge blocks may be smaller, never dropped
    (a plume at the frame's edge counts too)."""
    rows = np.arange(0, energy.shape[0], cells)
    cols = np.arange(0, energy.shape[1], cells)
    sums = np.add.reduceat(np.add.reduceat(energy, rows, axis=0), cols, axis=1)
    counts = np.outer(np.diff(np.append(rows, energy.shape[0])), np.diff(np.append(cols, energy.shape[1])))
    return (sums / counts).astype(np.float32)


def still_observations(window: Window) -> List[Observation]:
    """A skipped window's reported frames as the alarm logic sees them: clear frames (nothing moved, no gas)."""
    return [Observation(seq=f.seq, time=f.arrived, area_pixels=0, area_fraction=0.0, score=0.0)
            for f in window.reported]


class Floor:
    """One energy's noise floor per block: the median of the first ``size`` windows, then the lower of itself and
    the median of the latest ``size`` windows (it follows a quieter scene down, never a noisier one up)."""

    def __init__(self, size: int):
        self.recent: Deque[np.ndarray] = deque(maxlen=size)
        self.value: Optional[np.ndarray] = None

    def add(self, blocks: Optional[np.ndarray]) -> None:
        """One window's energies: the floor is learned once ``size`` windows are held, then follows them down."""
        if blocks is None:
            return
        self.recent.append(blocks)
        if len(self.recent) < self.recent.maxlen:
            return
        if self.value is None:
            self.settle()
        else:
            self.value = np.minimum(self.value, np.median(np.stack(self.recent), axis=0))

    def settle(self) -> None:
        """Learn the floor from the windows held, however few (none: nothing to learn from yet)."""
        if self.value is None and self.recent:
            self.value = np.median(np.stack(self.recent), axis=0)
            self.recent.clear()  # the following down starts from fresh windows

    def exceeded(self, blocks: np.ndarray, factor: float) -> Optional[Tuple[int, float, float]]:
        """(flat block index, energy, limit) of the block furthest above ``factor`` x its floor plus the
        quantisation margin; None when no block is above."""
        limits = factor * self.value + QUANTISATION_MARGIN
        ratio = blocks / limits
        worst = int(np.argmax(ratio))
        if ratio.flat[worst] <= 1.0:
            return None
        return worst, float(blocks.flat[worst]), float(limits.flat[worst])

    def describe(self) -> str:
        v = self.value
        return f"median {np.median(v):.3g}, p99 {np.percentile(v, 99):.3g}, max {v.max():.3g}"


class ChangeGate:
    """One camera's change gate: its measured noise floors, the reference picture (the window the model last
    analysed) and its skip decisions, window by window."""

    def __init__(self, settings: ChangeGateSettings):
        self.settings = settings
        self.shape: Optional[Tuple[int, int]] = None  # the frame size the floors belong to
        self.floors = {"motion": Floor(settings.learn_windows), "drift": Floor(settings.learn_windows)}
        self.reference: Optional[np.ndarray] = None  # mean picture of the last analysed window
        self.skipped_in_a_row = 0
        self.windows_skipped = 0  # over the gate's life (the self-test reads it; the monitor counts its own)
        self.marked = False  # the previous window's observations had gas (any pixel)

    def measure(self, window: Window) -> Optional[ChangeEnergy]:
        """The window's energies (in a worker thread; reads the reference, changes nothing)."""
        return measure_change([f.pixels for f in window.frames], self.settings.block_pixels, self.reference)

    @property
    def learning(self) -> bool:
        return any(floor.value is None for floor in self.floors.values())

    def restart(self) -> None:
        """A new stream with a fresh alarm logic (a self-test trial): forget the run and the reference, keep the
        floors."""
        self.reference = None
        self.skipped_in_a_row = 0
        self.marked = False
        for floor in self.floors.values():
            if floor.value is not None:
                floor.recent.clear()  # each replay follows the floor down on its own windows only

    def settle(self) -> None:
        """Finish learning from the windows seen so far (the self-test's clean background may be shorter than
        ``learn_windows``: its trials must be judged with the clean floor, never learn from their plumes)."""
        if self.learning:
            for floor in self.floors.values():
                floor.settle()

    def decide(self, energy: Optional[ChangeEnergy], logic: "AlarmLogic") -> GateDecision:
        """Skip this window or analyse it (and why); call once per window, in stream order, after the previous
        window's observations reached ``logic``."""
        reason = (self._unmeasured(energy) or self._learn(energy) or self._alarm_says(logic) or self._forced()
                  or self._changed(energy))
        if reason is None:
            self.skipped_in_a_row += 1
            self.windows_skipped += 1
        else:
            self.skipped_in_a_row = 0
            self.reference = energy.picture if energy is not None else None
        return GateDecision(reason is None, reason or "still")

    def note(self, observed: Sequence[Observation]) -> None:
        """The observations the alarm logic got for the window just decided (the model's, or the still ones)."""
        self.marked = any(o.area_pixels > 0 for o in observed)

    def describe_floor(self) -> str:
        """The learned floors in one line (the monitor logs it once)."""
        blocks = self.floors["motion"].value.size
        return (f"{blocks} blocks of {self.settings.block_pixels} px; energy floors (frame units squared) motion "
                f"{self.floors['motion'].describe()}; drift {self.floors['drift'].describe()}")

    # -- the rules, each None when it lets the window be skipped -----------------------------------------

    @staticmethod
    def _unmeasured(energy: Optional[ChangeEnergy]) -> Optional[str]:
        return "not measured (pixel type)" if energy is None else None

    def _learn(self, energy: ChangeEnergy) -> Optional[str]:
        """Every window feeds the floors (learning, then following down); learning windows are analysed. A new
        frame size starts learning again."""
        if energy.shape != self.shape:
            self.shape = energy.shape
            self.floors = {name: Floor(self.settings.learn_windows) for name in self.floors}
        learning = self.learning
        self.floors["motion"].add(energy.motion)
        self.floors["drift"].add(energy.drift)
        return "learning the noise floor" if learning else None

    def _alarm_says(self, logic: "AlarmLogic") -> Optional[str]:
        if logic.state not in SKIPPING_STATES:
            return f"camera is {logic.state.value}"
        if any(logic.history):
            return "a leak frame in the k-of-n history"
        if logic.leak_frames and logic.clear_run < logic.settings.clear_frames:
            return f"last leak frame {logic.clear_run} frames ago (clear_frames {logic.settings.clear_frames})"
        if self.marked:
            return "the model marked gas in the previous window"
        return None

    def _forced(self) -> Optional[str]:
        limit = self.settings.max_skipped_windows
        return f"{limit} windows skipped in a row" if self.skipped_in_a_row >= limit else None

    def _changed(self, energy: ChangeEnergy) -> Optional[str]:
        """Something moves in the window, or the picture changed since the model last looked."""
        if energy.drift is None:
            return "no reference picture"
        for name, blocks in (("motion", energy.motion), ("drift", energy.drift)):
            above = self.floors[name].exceeded(blocks, self.settings.factor)
            if above is not None:
                index, value, limit = above
                x, y = energy.block_origin(index)
                return f"{name} in the block at ({x}, {y}) px: energy {value:.3g} > limit {limit:.3g}"
        return None
