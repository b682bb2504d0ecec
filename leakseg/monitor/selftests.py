"""The self-test inside the running monitor: each camera's gas-free background, the schedule, and the run.

* :class:`BackgroundBuffer` keeps a camera's latest *contiguous* gas-free analysed frames (a window with a leak
  frame, or analysed while LEAK is active, empties it: a real plume is never taken for background; a dropped
  or failed window, a stream break or a new frame size restarts it). It holds references to the frames the
  camera already decoded, never copies: its memory is ``background_frames`` x one frame's bytes (64 frames of
  640 x 480 grey uint8: 20 MB; of 1920 x 1080 RGB: 400 MB). A running self-test stacks one copy of them.
* :class:`IdleSegmenter` lets a self-test use idle capacity only: each of its windows waits until no camera
  has a window waiting or in flight. A real window never queues behind self-test windows; at most the one
  self-test window already started when the real one arrived runs first (an in-process model runs one clip
  at a time), so a real window waits at most one self-test window's inference.
* :class:`SelfTestScheduler` runs the cameras' self-tests one at a time, when due (``first_after_minutes``,
  then every ``every_hours``) or on demand (OPC UA's RunSelfTest, MQTT's ``PREFIX/CAMERA/selftest/run``),
  writes each report under ``evidence_dir/selftest/CAMERA/``, publishes the outcome on every output and,
  with ``degrade_on_fail``, puts a camera whose self-test fails its target in DEGRADED until one passes.
  A self-test replays its frames through a fresh alarm logic of its own: the only thing it ever does to the
  camera's own :class:`~leakseg.monitor.alarm.AlarmLogic` is :meth:`set_degraded`, so it never hides a
  real alarm.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional

import numpy as np

from leakseg.monitor.alarm import Observation, iso
from leakseg.monitor.segmenters import Segmenter
from leakseg.monitor.windows import Frame, Window
from leakseg.selftest.settings import SelfTestSchedule
from leakseg.selftest.trials import SelfTestStopped

if TYPE_CHECKING:  # the monitor imports this module
    from leakseg.monitor.camera import Camera
    from leakseg.monitor.runner import Monitor
    from leakseg.selftest.result import SelfTestResult, SelfTestRun

log = logging.getLogger("leakseg.monitor.selftest")

#: Self-test reports kept per camera (the oldest the monitor wrote go first).
REPORTS_KEPT = 10
#: How often the scheduler looks for a due self-test, seconds (a request wakes it at once).
TICK_SECONDS = 1.0
#: The source of the DEGRADED state a failed self-test sets (:meth:`AlarmLogic.set_degraded`).
DEGRADED_SOURCE = "selftest"
#: Every status a camera's self-test can have, in the order of Modbus's status register (0..6).
STATUSES = ("off", "never", "waiting", "running", "passed", "failed", "error")


class BackgroundBuffer:
    """A camera's latest contiguous gas-free analysed frames (at most ``size``; references, not copies)."""

    def __init__(self, size: int):
        self.frames: Deque[Frame] = deque(maxlen=size)
        self.emptied = ""  # why it last started again (a camera that keeps waiting says why)

    def offer(self, window: Window, observed: List[Observation], is_leak_frame: Callable[[Observation], bool],
              leak_active: bool) -> None:
        """An analysed window: its reported frames join the background when nothing in it looked like gas."""
        leak = next((o.seq for o in observed if is_leak_frame(o)), None)
        if leak_active or leak is not None:
            self.clear("a LEAK is active" if leak_active else f"frame {leak} was a leak frame")
            return
        reported = window.reported
        if not reported:
            return
        if not self._continues(reported[0]):
            # a dropped or failed window, a break or a new size: the frames would not follow each other
            self.clear(f"frame {reported[0].seq} does not follow frame {self.frames[-1].seq}")
        self.frames.extend(reported)

    def _continues(self, frame: Frame) -> bool:
        if not self.frames:
            return True
        last = self.frames[-1]
        return (frame.seq == last.seq + 1 and frame.pixels.shape == last.pixels.shape
                and frame.pixels.dtype == last.pixels.dtype)

    def clear(self, why: str = "") -> None:
        if self.frames or why:
            self.emptied = why
        self.frames.clear()

    def snapshot(self) -> List[np.ndarray]:
        """The frames' pixels now (references: cheap on the loop; the self-test stacks them in its thread)."""
        return [f.pixels for f in self.frames]

    def fps(self) -> Optional[float]:
        """The frames' rate from their stream timestamps (None when the source gives none)."""
        first, last = (self.frames[0].pts, self.frames[-1].pts) if self.frames else (None, None)
        if first is None or last is None or last <= first:
            return None
        return (len(self.frames) - 1) / (last - first)

    @property
    def full(self) -> bool:
        return len(self.frames) == self.frames.maxlen

    def shortfall(self) -> str:
        """What a self-test waits for (and why the background last started again)."""
        emptied = f"; emptied: {self.emptied}" if self.emptied else ""
        return f"waiting for {self.frames.maxlen} contiguous gas-free frames (has {len(self.frames)}{emptied})"


class IdleSegmenter(Segmenter):
    """The monitor's segmenter for a self-test: each call waits until the cameras' real windows are done."""

    POLL_SECONDS = 0.05

    def __init__(self, segmenter: Segmenter, busy: Callable[[], bool], stopping: Callable[[], bool]):
        self.segmenter = segmenter
        self.busy = busy
        self.stopping = stopping
        self.name = f"idle {segmenter.name}"
        self.streams = segmenter.streams

    def segment(self, clip, prompts, options):
        self._wait_for_idle()
        return self.segmenter.segment(clip, prompts, options)

    def segment_stream(self, stream, frames, report, prompts, options):
        self._wait_for_idle()
        return self.segmenter.segment_stream(stream, frames, report, prompts, options)

    def _wait_for_idle(self) -> None:
        while self.busy():
            if self.stopping():
                raise SelfTestStopped("the monitor is stopping")
            time.sleep(self.POLL_SECONDS)


@dataclass
class SelfTestStatus:
    """A camera's self-test as every output publishes it. Between self-tests, and after one that could not
    run (``error``), the verdict fields keep the last completed self-test's values."""

    status: str = "never"  # one of STATUSES
    time: Optional[float] = None  # when the last completed self-test finished (Unix time)
    passed: Optional[bool] = None
    probability_at_reference: Optional[float] = None
    detection_limit_pixels: Optional[int] = None  # at the reference contrast; None: no size reached the target
    false_alarms_per_day: Optional[float] = None  # on the camera's clean background
    target_probability: Optional[float] = None
    reference_size_pixels: Optional[int] = None
    reason: str = ""  # why it passed or failed, why it could not run, what it waits for
    report: Optional[str] = None  # the last report's folder

    def values(self) -> Dict[str, Any]:
        """The snapshot's ``selftest_*`` keys."""
        return {
            "selftest_status": self.status,
            "selftest_time": self.time,
            "selftest_passed": self.passed,
            "selftest_pod_reference": self.probability_at_reference,
            "selftest_detection_limit_pixels": self.detection_limit_pixels,
        }

    def to_dict(self, camera: str) -> Dict[str, Any]:
        """The summary every sink's ``publish_selftest`` gets (MQTT's retained ``PREFIX/CAMERA/selftest``)."""
        return {"camera": camera, **asdict(self), "time_iso": iso(self.time)}


class CameraSelfTest:
    """One camera's background, schedule and last outcome (``status`` is the camera's own, for its snapshot)."""

    def __init__(self, settings: SelfTestSchedule, status: SelfTestStatus, started: float):
        self.settings = settings
        self.background = BackgroundBuffer(settings.background_frames)
        self.status = status
        self.note_target()
        self.due = started + 60.0 * settings.first_after_minutes if settings.every_hours else None
        self.requested = False

    def note_target(self) -> None:
        """The target the published verdict is against (the settings the self-test ran with)."""
        self.status.target_probability = self.settings.target.probability
        self.status.reference_size_pixels = self.settings.target.reference_size_pixels

    def is_due(self, now: float) -> bool:
        return self.requested or (self.due is not None and now >= self.due)

    def finished(self, now: float) -> None:
        self.requested = False
        if self.settings.every_hours:
            self.due = now + 3600.0 * self.settings.every_hours


class SelfTestScheduler:
    """Runs the cameras' self-tests, one at a time, from the monitor's loop (the self-test itself in a thread)."""

    def __init__(self, monitor: "Monitor"):
        self.monitor = monitor
        now = time.monotonic()
        self.tests: Dict[str, CameraSelfTest] = {
            name: CameraSelfTest(cam.config.selftest, cam.selftest, now)
            for name, cam in monitor.cameras.items() if cam.config.selftest is not None}
        self.running: Optional[str] = None  # the camera whose self-test runs now
        self._wakeup = asyncio.Event()

    # -- from the monitor ------------------------------------------------------------------------

    def offer(self, camera: "Camera", window: Window, observed: List[Observation]) -> None:
        """A window the camera analysed (its alarm logic has seen it): background, or not."""
        test = self.tests.get(camera.name)
        if test is not None:
            test.background.offer(window, observed, camera.logic.is_leak_frame, camera.logic.leak is not None)

    def request(self, camera: str) -> str:
        """On demand (OPC UA, MQTT; any thread): the camera's self-test runs as soon as it has its background
        and no other self-test runs. ``"running"`` when it already runs (the request adds nothing), else
        ``"requested"``. KeyError for an unknown camera or one without a ``selftest`` block."""
        if camera not in self.monitor.cameras:
            raise KeyError(f"no camera {camera!r}")
        if camera not in self.tests:
            raise KeyError(f"camera {camera!r} has no selftest block in the configuration")
        if self.running == camera:
            return "running"
        self.tests[camera].requested = True
        self.monitor.call(self._wakeup.set)
        return "requested"

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        for name in self.tests:
            self._publish(name)  # "never" (the outputs start with "off")
        while True:
            await self._next_tick()
            for name, test in self.tests.items():
                if test.is_due(time.monotonic()):
                    await self._run_when_ready(name, test)

    async def _next_tick(self) -> None:
        try:
            await asyncio.wait_for(self._wakeup.wait(), TICK_SECONDS)
        except asyncio.TimeoutError:
            pass
        self._wakeup.clear()

    async def _run_when_ready(self, name: str, test: CameraSelfTest) -> None:
        """Run now, or say "waiting" until the camera has its gas-free background."""
        if not test.background.full:
            reason = test.background.shortfall()
            if test.status.status != "waiting":
                self._set(name, "waiting", reason)
            else:
                test.status.reason = reason  # progress, without a publication per window
            return
        await self._run(name, test)

    async def _run(self, name: str, test: CameraSelfTest) -> None:
        camera = self.monitor.cameras[name]
        frames = test.background.snapshot()
        fps = camera.config.analysis_fps or test.background.fps()
        self.running = name
        self._set(name, "running", f"{test.settings.grid.trials} trial(s) on {len(frames)} background frames")
        log.info("%s: self-test started on %d background frames (%d trials)", name, len(frames),
                 test.settings.grid.trials)
        try:
            result, folder = await self.monitor.calls.run(self._selftest, camera, test.settings, frames, fps)
        except SelfTestStopped:
            return  # the monitor stops; its drain cancels this task too
        except Exception as exc:  # noqa: BLE001 - a self-test that cannot run is reported, never fatal
            self._record_error(name, exc)
        else:
            self._record(name, test, result, folder)
        finally:
            self.running = None
        test.finished(time.monotonic())

    def _selftest(self, camera: "Camera", settings: SelfTestSchedule, frames: List[np.ndarray],
                  fps: Optional[float]):
        """In a thread: the self-test on the background, then its report; (result, report folder or None)."""
        from leakseg.selftest.run import run_selftest

        stopping = self.monitor.stop_event.is_set
        segmenter = IdleSegmenter(self.monitor.segmenter, self.monitor.analysis_busy, stopping)
        run = run_selftest(np.stack(frames), camera.config, segmenter, settings.grid, settings.target, fps=fps,
                           should_stop=stopping)
        return run.result, self._write_report(camera.name, run)

    def _write_report(self, camera: str, run: "SelfTestRun") -> Optional[Path]:
        """The report in a new marked folder (pruned to REPORTS_KEPT); a disk error loses the report, not the
        verdict."""
        from leakseg.monitor.evidence import make_evidence_folder, prune
        from leakseg.selftest.report import write_report

        root = Path(self.monitor.config.evidence_dir) / "selftest" / camera
        try:
            folder = _new_folder(root, run.result.finished)
            make_evidence_folder(folder)  # marked: pruning deletes only what the monitor wrote
            write_report(run, folder)
            prune(root, REPORTS_KEPT)
        except OSError as exc:
            log.warning("%s: could not write the self-test report under %s: %s", camera, root, exc)
            return None
        return folder

    # -- outcomes, on the loop -------------------------------------------------------------------

    def _record(self, name: str, test: CameraSelfTest, result: "SelfTestResult", folder: Optional[Path]) -> None:
        """A completed self-test: its verdict is published and, with degrade_on_fail, decides DEGRADED."""
        status = test.status
        status.time, status.passed, status.report = result.finished, result.passed, str(folder) if folder else None
        status.probability_at_reference = result.probability_at_reference
        status.detection_limit_pixels = result.detection_limit_at_reference
        status.false_alarms_per_day = 24.0 * result.clean.false_alarms_per_hour
        test.note_target()
        log.info("%s: self-test %s (report %s)", name, result.reason, folder)
        if test.settings.degrade_on_fail:
            reason = None if result.passed else result.reason  # "failed: probability of detection ..."
            self.monitor.emit(self.monitor.cameras[name].logic.set_degraded(DEGRADED_SOURCE, reason))
        self._set(name, "passed" if result.passed else "failed", result.reason)

    def _record_error(self, name: str, exc: BaseException) -> None:
        """A self-test that could not run (the service failed, the frames do not fit) changes no verdict."""
        reason = f"{type(exc).__name__}: {exc}"
        log.warning("%s: self-test could not run: %s", name, reason)
        self._set(name, "error", reason)

    def _set(self, name: str, status: str, reason: str) -> None:
        self.tests[name].status.status, self.tests[name].status.reason = status, reason
        self._publish(name)

    def _publish(self, name: str) -> None:
        summary = self.tests[name].status.to_dict(name)
        for sink in self.monitor.sinks:
            self.monitor.spawn(sink.publish_selftest(name, summary), f"{sink.name} self-test")
        self.monitor.publish_state(name)


def _new_folder(root: Path, finished: float) -> Path:
    """``root/YYYYmmddTHHMMSSZ`` (UTC) of the self-test's end; ``-2``, ``-3`` ... when that one exists."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(finished))
    folder, n = root / stamp, 1
    while folder.exists():
        n += 1
        folder = root / f"{stamp}-{n}"
    return folder
