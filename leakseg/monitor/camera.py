"""One camera's state on the monitor's loop: its alarm logic, window queue, counters and snapshot.

The camera's source thread calls :class:`Camera`'s :class:`SourceCallbacks` methods; they hand
everything over to the loop (``monitor.call``), where the ``_on_*`` methods and the rest run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Deque, Dict, List, Optional, Tuple

import numpy as np

from leakseg.monitor.alarm import STATE_CODES, AlarmLogic, Event, Observation
from leakseg.monitor.config import CameraConfig
from leakseg.monitor.detectability import SOURCE as PICTURE, PictureCheck, PictureMetrics
from leakseg.monitor.gate import ChangeEnergy, ChangeGate, GateDecision
from leakseg.monitor.measure import camera_ignore_mask
from leakseg.monitor.selftests import SelfTestStatus
from leakseg.monitor.sources import SourceCallbacks
from leakseg.monitor.windows import Frame, Window, WindowBuilder, window_length

if TYPE_CHECKING:  # the monitor imports this module
    from leakseg.monitor.runner import Monitor

log = logging.getLogger("leakseg.monitor")


@dataclass
class Counters:
    """What happened to a camera's frames and windows (frames analysed: ``AlarmLogic``; reconnects: the source)."""

    frames_in: int = 0  # read from the source
    windows_sent: int = 0  # answered by the service
    windows_dropped: int = 0  # under backpressure
    frames_dropped: int = 0  # reported frames of dropped or failed windows; held frames lost at a fault or the end
    windows_failed: int = 0  # the service failed on them
    windows_skipped: int = 0  # judged still by the change gate: not sent to the model
    frames_skipped: int = 0  # their reported frames (clear frames for the alarm logic, counted in frames_analysed)


class Camera(SourceCallbacks):
    """One camera's state on the loop; the source thread calls in through call_soon_threadsafe."""

    def __init__(self, monitor: "Monitor", config: CameraConfig, index: int):
        self.monitor = monitor
        self.config = config
        self.index = index
        self.name = config.name
        self.logic = AlarmLogic(config.name, config.alarm)
        self.picture = PictureCheck(config.detectability)  # can the camera see gas (DEGRADED)
        self.gate = ChangeGate(config.change_gate) if config.change_gate.enabled else None  # still: skip the model
        self.builder = WindowBuilder(config.name, window_length(config.clip_frames, monitor.segmenter.streams))
        self.ignore = camera_ignore_mask(config)  # image and zones; built per frame size on first use
        self.pending: Deque[Window] = deque()
        self.wakeup = asyncio.Event()
        self.counters = Counters()
        self.last_frame_time: Optional[float] = None
        self.last_frame_mono: Optional[float] = None
        self.started_mono = time.monotonic()
        self.finished = False  # the source ended (file/folder without loop)
        self.in_flight = 0
        self.seq = 0
        self.last_result: Optional[Dict[str, Any]] = None
        self.lossless = config.lossless
        self.room = threading.Semaphore(config.max_pending_windows) if self.lossless else None
        self.source = None
        self.blocked = False
        # Set on the loop when the watchdog finds the stream stale; the source thread then starts a new window.
        self.stream_broke = threading.Event()
        self.busy_since: Optional[float] = None  # windows wait and none completed since (the progress watchdog)
        # The scheduled self-test's outcome (leakseg.monitor.selftests updates it); "off" without a selftest block.
        self.selftest = SelfTestStatus(status="never" if config.selftest is not None else "off")

    # -- called from the source thread -----------------------------------------------------------

    def frame(self, pixels: np.ndarray, pts: Optional[float]) -> None:
        arrived = time.time()
        frame = Frame(seq=self.seq, pixels=pixels, arrived=arrived, pts=pts)
        self.seq += 1
        if self.stream_broke.is_set() or not self.builder.continues_with(frame):
            # after a gap or at a new resolution the held frames do not precede this one
            self.stream_broke.clear()
            self.monitor.call(self._on_break, *self._cut())
        window = self.builder.push(frame)  # the builder belongs to the source thread
        if window is not None and self.room is not None:
            if not self._wait_for_room():
                return
            window.extra["slot"] = True
        self.monitor.call(self._on_frame, arrived, window)

    def _wait_for_room(self) -> bool:
        """Lossless replay: block the reader until the service takes a window; False when stopping."""
        self.blocked = True  # waiting for the service is not a stale camera
        try:
            while not self.room.acquire(timeout=0.2):
                if self.monitor.stop_event.is_set():
                    return False
        finally:
            self.blocked = False
        return True

    def fault(self, reason: str) -> None:
        self.monitor.call(self._on_fault, reason, *self._cut())

    def recovered(self) -> None:
        self.monitor.call(self._on_recovered)

    def ended(self) -> None:
        self.monitor.call(self._on_ended, *self._cut())

    def _cut(self) -> Tuple[Optional[Window], int]:
        """The stream broke (fault, gap, new resolution, end): the frames held for the next window do not
        follow the next frame any more. They go out now as a last window (>= 3 frames) or count as lost."""
        held = self.builder.held
        window = self.builder.flush()
        return window, 0 if window is not None else held

    # -- on the loop -----------------------------------------------------------------------------

    def _on_frame(self, arrived: float, window: Optional[Window]) -> None:
        self.counters.frames_in += 1
        self.last_frame_time = arrived
        self.last_frame_mono = time.monotonic()
        if self.logic.camera_fault is not None and self.source is not None and not self.source.faulty:
            self.monitor.emit(self.logic.camera_ok(arrived))  # the watchdog's stale fault is over
        if window is not None:
            self.enqueue(window)

    def _on_break(self, window: Optional[Window], lost: int) -> None:
        if window is not None:
            self.enqueue(window)
        self.counters.frames_dropped += lost

    def _on_fault(self, reason: str, window: Optional[Window], lost: int) -> None:
        self._on_break(window, lost)
        self.monitor.emit(self.logic.camera_failed(reason))

    def _on_recovered(self) -> None:
        self.last_frame_mono = time.monotonic()
        self.monitor.emit(self.logic.camera_ok())

    def _on_ended(self, window: Optional[Window], lost: int) -> None:
        self._on_break(window, lost)
        self.finished = True
        log.info("%s: source ended (%d frames read)", self.name, self.counters.frames_in)
        self.wakeup.set()

    def enqueue(self, window: Window) -> None:
        if self.room is None:
            while len(self.pending) >= self.config.max_pending_windows:
                dropped = self.pending.popleft()
                self.counters.windows_dropped += 1
                self.counters.frames_dropped += dropped.final
                log.debug("%s: service behind, dropped window %d", self.name, dropped.number)
        self.pending.append(window)
        if self.busy_since is None:
            self.busy_since = time.monotonic()
        self.wakeup.set()

    async def next_window(self) -> Window:
        while not self.pending:
            self.wakeup.clear()
            await self.wakeup.wait()
        return self.pending.popleft()

    def window_done(self, window: Window) -> None:
        """A window was analysed or failed (progress either way): its reader slot is free again."""
        if window.extra.pop("slot", False):
            self.room.release()
        self.busy_since = None if self.idle else time.monotonic()

    def abandon(self, window: Window) -> None:
        """Stopping: a window in flight or waiting will not be analysed; its frames count as dropped."""
        self.counters.frames_dropped += window.final

    def abandon_pending(self) -> None:
        while self.pending:
            self.abandon(self.pending.popleft())

    def watchdog(self, now_mono: float, analysis_limit: float) -> None:
        self._watch_progress(now_mono, analysis_limit)
        if self.finished or self.logic.camera_fault is not None:
            return
        if self.blocked:
            self.last_frame_mono = now_mono
            return
        last = self.last_frame_mono if self.last_frame_mono is not None else self.started_mono
        stale = self.config.faults.stale_seconds
        if now_mono - last > stale:
            self.stream_broke.set()
            self.monitor.emit(self.logic.camera_failed(f"no new frame for {now_mono - last:.0f} s (limit {stale:g} s)"))

    def _watch_progress(self, now_mono: float, limit: float) -> None:
        """Windows wait but none completes (a hung service, a stuck call): SERVICE_FAULT, never a quiet NORMAL."""
        if self.busy_since is None or self.logic.service_fault is not None:
            return
        waited = now_mono - self.busy_since
        if waited > limit:
            self.monitor.emit(self.logic.service_failed(
                f"no analysis completed for {waited:.0f} s while windows wait (limit {limit:g} s)"))

    def judge_picture(self, metrics: Optional[PictureMetrics]) -> List[Event]:
        """An analysed window's picture: the check's verdict goes to the alarm logic (nothing when not measured)."""
        if metrics is None:
            return []
        learning = self.picture.reference is None
        verdict = self.picture.judge(metrics)
        if learning and self.picture.reference is not None:
            log.info("%s: picture sharpness reference learned: %.6g (pin it with detectability -> "
                     "sharpness_reference)", self.name, self.picture.reference)
        return self.logic.set_degraded(PICTURE, verdict)

    def judge_change(self, energy: Optional[ChangeEnergy]) -> GateDecision:
        """The change gate's decision on the next window (on the loop, after the previous window's observations);
        its learned noise floor is logged once."""
        learning = self.gate.learning
        decision = self.gate.decide(energy, self.logic)
        if learning and not self.gate.learning:
            log.info("%s: change gate noise floor learned: %s", self.name, self.gate.describe_floor())
        return decision

    def relearn_picture(self) -> None:
        """Learn the sharpness reference again from the next healthy windows (a cleaned lens, a re-aimed camera)."""
        self.picture.relearn()

    def remember_peak(self, observed: List[Observation]) -> None:
        """The window's largest plume and highest score, for the snapshot (nothing when it reported no frame)."""
        if not observed:
            return
        peak = max(observed, key=lambda o: o.area_pixels)
        self.last_result = {
            "area_pixels": peak.area_pixels, "area_fraction": peak.area_fraction,
            "score": max(o.score for o in observed),
            "centroid_x": peak.centroid[0] if peak.centroid else None,
            "centroid_y": peak.centroid[1] if peak.centroid else None,
            "bbox": list(peak.bbox) if peak.bbox else None,
        }

    @property
    def idle(self) -> bool:
        return not self.pending and self.in_flight == 0

    def snapshot(self) -> Dict[str, Any]:
        """What every sink publishes for this camera; the keys in this order (the JSON lines keep it)."""
        logic = self.logic
        leak = logic.leak
        return {
            "camera": self.name,
            "state": logic.state.value,
            "state_code": STATE_CODES[logic.state],
            "leak_active": leak is not None,
            "alarm_id": leak.id if leak else None,
            "acknowledged": bool(leak.acknowledged) if leak else True,
            **self._last_result_values(),
            "last_frame_time": self.last_frame_time,
            "frames_analysed": logic.frames_analysed,
            "windows_sent": self.counters.windows_sent,
            "windows_dropped": self.counters.windows_dropped,
            "frames_dropped": self.counters.frames_dropped,
            "windows_skipped": self.counters.windows_skipped,
            "frames_skipped": self.counters.frames_skipped,
            **self._health_values(),
            **self.selftest.values(),
            "time": time.time(),
        }

    def _last_result_values(self) -> Dict[str, Any]:
        last = self.last_result or {}
        return {
            "leak_area_pixels": int(last.get("area_pixels", 0)),
            "leak_area_fraction": float(last.get("area_fraction", 0.0)),
            "score": float(last.get("score", 0.0)),
            "centroid_x": last.get("centroid_x"),
            "centroid_y": last.get("centroid_y"),
            "bbox": last.get("bbox"),
        }

    def _health_values(self) -> Dict[str, Any]:
        logic = self.logic
        return {
            "camera_ok": logic.camera_fault is None,
            "service_ok": logic.service_fault is None,
            "camera_fault": logic.camera_fault.reason if logic.camera_fault else None,
            "service_fault": logic.service_fault.reason if logic.service_fault else None,
            "degraded": logic.degraded is not None,
            "degraded_reason": logic.degraded.reason if logic.degraded else None,
        }
