"""The monitor: sources -> windows -> service -> alarm logic -> sinks, on one asyncio loop.

Threads: one per camera source (PyAV decoding or folder polling), and a daemon thread per
blocking service call (``service.concurrency`` clips in flight over all cameras) and evidence
write, so a call hung on a dead service cannot hold up the process's exit. Everything else
(alarm logic, sinks, the watchdogs, the status table) runs on the loop.

Backpressure: each camera has a queue of at most ``max_pending_windows`` windows waiting for
the service. A live camera whose queue is full drops the *oldest* waiting window (and counts
it, with its frames): memory stays flat and the freshest picture is analysed first. A replay
(a video file read with ``realtime: false``, a drop folder replayed) blocks its reader instead,
so it is analysed completely.

Supervision: a camera's analysis never ends by itself. Whatever goes wrong with a window (the
service, an answer that does not fit what was sent, a bug) becomes SERVICE_FAULT with its reason,
and the next window follows after a wait that doubles while windows keep failing. A progress
watchdog raises SERVICE_FAULT when windows wait and none completes for ``analysis_seconds``.

Change gate: a camera with ``change_gate`` on measures each window in a worker thread first
(:mod:`leakseg.monitor.gate`); a still window is not sent to the model, its frames reach the alarm logic as
clear frames, and it is counted (``windows_skipped``, ``frames_skipped``).

Self-test: cameras with a ``selftest`` block are self-tested on their own gas-free frames by
:class:`~leakseg.monitor.selftests.SelfTestScheduler` (a task on the loop, the self-test in a daemon thread),
one at a time and on idle capacity only: each of its windows waits until no camera has a window waiting or
in flight (:meth:`Monitor.analysis_busy`).

A run has three steps: :meth:`Monitor._start` (sinks, signals, sources, workers), waiting for a
stop, and :meth:`Monitor._drain` (publish OFFLINE first, then close everything within
``shutdown_seconds``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set

from leakseg.monitor.alarm import Event, Observation
from leakseg.monitor.camera import Camera
from leakseg.monitor.config import MonitorConfig
from leakseg.monitor.detectability import PictureMetrics, measure_window
from leakseg.monitor.evidence import WindowEvidence
from leakseg.monitor.gate import still_observations
from leakseg.monitor.measure import observations
from leakseg.monitor.segmenters import Answer, Segmenter, segment_window
from leakseg.monitor.selftests import SelfTestScheduler
from leakseg.monitor.sources import backoff_delay, make_source
from leakseg.monitor.status import draw_table, end_table
from leakseg.monitor.windows import Window

log = logging.getLogger("leakseg.monitor")

# Events after which a camera's state (what SCADA shows) has changed.
STATE_EVENTS = ("alarm_raised", "alarm_cleared", "state_changed", "alarm_acknowledged")


class SinkStartError(RuntimeError):
    """An output (OPC UA, MQTT, Modbus, log file) could not start, e.g. its port is in use."""


class Monitor:
    """Runs until :meth:`request_stop` (or, with ``until_sources_end``, until every source ended)."""

    def __init__(self, config: MonitorConfig, segmenter: Segmenter, sinks: Optional[List[Any]] = None, *,
                 until_sources_end: bool = False, status_table: Optional[bool] = None):
        self.config = config
        self.segmenter = segmenter
        self.sinks = list(sinks or [])
        self.until_sources_end = until_sources_end
        self.status_table = sys.stdout.isatty() if status_table is None else status_table
        self.stop_event = threading.Event()
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self.cameras: Dict[str, Camera] = {}
        self.event_listeners: List[Callable[[Event], None]] = []
        self._stopping: Optional[asyncio.Event] = None
        self._service_slots: Optional[asyncio.Semaphore] = None
        self._tasks: List[asyncio.Task] = []  # the camera workers, the ticker and the self-test scheduler
        self.selftests: Optional[SelfTestScheduler] = None  # when a camera has a selftest block
        self.calls = DaemonCalls()  # service calls and evidence writes, off the loop
        self._signals: List[signal.Signals] = []
        self.started = threading.Event()

    # -- plumbing ------------------------------------------------------------------------------

    def call(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the loop (from any thread)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(fn, *args)
            except RuntimeError:  # the loop closed meanwhile
                pass

    def emit(self, events: List[Event]) -> None:
        for event in events:
            self._log(event)
            self._tell_listeners(event)
            for sink in self.sinks:
                self.spawn(sink.publish_event(event), f"{sink.name} event")
            if event.type in STATE_EVENTS:
                self.publish_state(event.camera)

    def _tell_listeners(self, event: Event) -> None:
        for listener in self.event_listeners:
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a listener's bug must not keep the event from SCADA
                log.exception("event listener %r failed on %s", listener, event.type)

    def publish_state(self, camera: str) -> None:
        snap = self.cameras[camera].snapshot()
        for sink in self.sinks:
            self.spawn(sink.publish_state(snap), f"{sink.name} state")

    def spawn(self, coro, what: str) -> None:
        """Run a sink's coroutine on the loop; its failure is logged, never raised (a sink never stops the rest)."""
        task = asyncio.ensure_future(coro)
        task.add_done_callback(lambda t: self._sink_done(t, what))

    @staticmethod
    def _sink_done(task: "asyncio.Future", what: str) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("%s failed: %s", what, task.exception())

    @staticmethod
    def _log(event: Event) -> None:
        if event.type == "state_changed":
            log.info("%s", event.message)
        elif event.type in ("alarm_raised", "alarm_cleared", "alarm_acknowledged"):
            log.info("%s: %s [%s]", event.camera, event.message, event.alarm.id if event.alarm else "")

    def acknowledge(self, camera: str, alarm_id: Optional[str], by: str, comment: str = "") -> int:
        """Acknowledge from SCADA (OPC UA method, MQTT ack topic). Returns how many alarms it acknowledged."""
        if camera not in self.cameras:
            raise KeyError(f"no camera {camera!r}")
        events = self.cameras[camera].logic.acknowledge(alarm_id or None, by=by, comment=comment)
        self.emit(events)
        return len(events)

    def request_selftest(self, camera: str) -> str:
        """A self-test on demand (OPC UA method, MQTT ``selftest/run``; any thread): ``"requested"``, or
        ``"running"`` when the camera's self-test already runs. KeyError: no such camera, or no selftest block."""
        if self.selftests is None:
            if camera not in self.cameras:
                raise KeyError(f"no camera {camera!r}")
            raise KeyError(f"camera {camera!r} has no selftest block in the configuration")
        return self.selftests.request(camera)

    def analysis_busy(self) -> bool:
        """Some camera has a window waiting or in flight (read from the self-test's thread: a momentary view,
        enough to let real windows go first)."""
        return any(not camera.idle for camera in self.cameras.values())

    def request_stop(self) -> None:
        """Stop (thread-safe): publish the cameras offline, close everything within shutdown_seconds, return."""
        self.stop_event.set()
        if self.loop is not None and self._stopping is not None:
            self.call(self._stopping.set)

    # -- main ----------------------------------------------------------------------------------

    def run(self) -> int:
        return asyncio.run(self.run_async())

    async def run_async(self) -> int:
        await self._start()
        try:
            await self._stopping.wait()
        finally:
            await self._drain()
        log.info("stopped")
        return 0

    # -- start -----------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._bind_loop()
        for i, cam in enumerate(self.config.cameras):
            self.cameras[cam.name] = Camera(self, cam, i)
        if any(cam.selftest is not None for cam in self.config.cameras):
            self.selftests = SelfTestScheduler(self)
        await self._start_sinks()
        self._install_signals()
        self._start_sources()
        log.info("monitoring %d camera(s) with %s; sinks: %s", len(self.cameras), self.segmenter.name,
                 ", ".join(s.name for s in self.sinks) or "none")
        self._tasks = [asyncio.create_task(self._worker(c)) for c in self.cameras.values()]
        self._tasks.append(asyncio.create_task(self._ticker()))
        if self.selftests is not None:
            self._tasks.append(asyncio.create_task(self.selftests.run()))
        self.started.set()

    def _bind_loop(self) -> None:
        """The loop's own objects; a stop requested before the loop ran still counts."""
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._service_slots = asyncio.Semaphore(self.config.service.concurrency)
        if self.stop_event.is_set():
            self._stopping.set()

    async def _start_sinks(self) -> None:
        started = []
        for sink in self.sinks:
            try:
                await sink.start(self)
            except Exception as exc:
                # Do not leave half the outputs running; the start error is the one to report.
                await _stop_sinks(started, warn=False)
                raise SinkStartError(f"cannot start the {sink.name} output: {type(exc).__name__}: {exc}") from exc
            started.append(sink)

    def _start_sources(self) -> None:
        """Each camera's first state for SCADA, then its reader thread."""
        for camera in self.cameras.values():
            self.publish_state(camera.name)
            camera.source = make_source(camera.config, camera, self.stop_event)
            camera.source.start()

    # -- drain -----------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """OFFLINE first, then close everything by the deadline: a container's SIGKILL after its grace
        period must not find NORMAL still published on OPC UA or Modbus."""
        deadline = time.monotonic() + self.config.shutdown_seconds
        self.stop_event.set()
        for task in self._tasks:
            task.cancel()  # windows in flight are abandoned (their frames count as dropped)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for camera in self.cameras.values():
            camera.abandon_pending()
            self.emit(camera.logic.go_offline())
        await asyncio.sleep(0)  # let the offline publications start
        await self._stop_sinks_by(deadline)
        await self.calls.join_by(deadline)  # an in-process model must not be torn down mid-run
        self.segmenter.close()
        await self._join_sources_by(deadline)
        self._remove_signals()
        if self.status_table:
            end_table()

    async def _stop_sinks_by(self, deadline: float) -> None:
        try:
            await asyncio.wait_for(_stop_sinks(self.sinks, warn=True), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            log.warning("the outputs did not stop within shutdown_seconds (%g s)", self.config.shutdown_seconds)

    async def _join_sources_by(self, deadline: float) -> None:
        """Source threads are daemons: one still blocked in a read when the deadline passes is left behind."""
        sources = [c.source for c in self.cameras.values() if c.source is not None]
        while any(s.is_alive() for s in sources) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    # -- signals ---------------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self._signals = []
        if threading.current_thread() is not threading.main_thread():
            return  # the loop can only take signals in the main thread
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
                self._signals.append(sig)
            except (NotImplementedError, RuntimeError):
                pass

    def _remove_signals(self) -> None:
        for sig in self._signals:
            self.loop.remove_signal_handler(sig)

    def _on_signal(self, sig) -> None:
        log.info("%s: publishing OFFLINE, then stopping within %g s", signal.Signals(sig).name,
                 self.config.shutdown_seconds)
        self.request_stop()

    # -- watchdog, heartbeat, status table -------------------------------------------------------

    async def _ticker(self) -> None:
        interval = min(self.config.status_interval, 0.5)
        last_status = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            self._watch(now)
            if now - last_status >= self.config.status_interval:
                last_status = now
                self._report_status()

    def _watch(self, now_mono: float) -> None:
        for camera in self.cameras.values():
            camera.watchdog(now_mono, camera.config.faults.analysis_seconds or self.config.service.timeout)
        if self.until_sources_end and all(c.finished and c.idle for c in self.cameras.values()):
            log.info("every source ended")
            self._stopping.set()

    def _report_status(self) -> None:
        for sink in self.sinks:
            self.spawn(sink.heartbeat([c.snapshot() for c in self.cameras.values()]), f"{sink.name} heartbeat")
        if self.status_table:
            draw_table(c.snapshot() for c in self.cameras.values())

    # -- windows -> service -> alarms ---------------------------------------------------------------

    async def _worker(self, camera: Camera) -> None:
        """One camera's analysis, supervised: a window that fails in any way becomes SERVICE_FAULT with its
        reason and a wait that doubles while windows keep failing; nothing ends the loop but a stop."""
        failures = 0
        while True:
            window = await camera.next_window()
            camera.in_flight += 1
            try:
                ok = await self._segment_and_analyse(camera, window)
            except asyncio.CancelledError:
                camera.abandon(window)
                raise
            except Exception as exc:  # noqa: BLE001 - the supervisor: nothing may end a camera's analysis
                log.exception("%s: analysing window %d failed", camera.name, window.number)
                ok = self._window_failed(camera, window, f"analysis failed: {type(exc).__name__}: {exc}")
            finally:
                camera.in_flight -= 1
                camera.window_done(window)
            failures = 0 if ok else failures + 1
            if failures:  # do not hammer a failing service
                retry = self.config.service.retry_seconds
                await asyncio.sleep(backoff_delay(failures - 1, retry, 4 * retry))

    async def _segment_and_analyse(self, camera: Camera, window: Window) -> bool:
        """True when the window was analysed (or judged still by the change gate); False when it failed (a
        service fault)."""
        if camera.gate is not None and await self._skipped_as_still(camera, window):
            return True
        async with self._service_slots:
            answer, error = await self.calls.run(segment_window, self.segmenter, camera.config, window)
        if error is not None:
            return self._window_failed(camera, window, error)
        camera.counters.windows_sent += 1
        self.emit(camera.logic.service_ok())
        self.emit(camera.judge_picture(answer.picture))
        await self._analyse(camera, window, answer)
        return True

    async def _skipped_as_still(self, camera: Camera, window: Window) -> bool:
        """The change gate (leakseg.monitor.gate): a still window is not sent to the model; its reported frames
        reach the alarm logic (and the self-test's background) as clear frames, and its picture is still judged,
        so DEGRADED comes as soon as without the gate. Measured in a worker thread, decided on the loop."""
        energy = await self.calls.run(camera.gate.measure, window)
        decision = camera.judge_change(energy)
        log.debug("%s: window %d %s: %s", camera.name, window.number, "skipped" if decision.skip else "analysed",
                  decision.reason)
        if not decision.skip:
            return False
        camera.counters.windows_skipped += 1
        camera.counters.frames_skipped += window.final
        # an analysed window's picture is measured with its model call (segment_window); a skipped one's here
        picture = await self.calls.run(_picture_of, camera, window)
        self.emit(camera.judge_picture(picture))
        self._observe(camera, window, still_observations(window))
        self.publish_state(camera.name)
        return True

    def _window_failed(self, camera: Camera, window: Window, reason: str) -> bool:
        camera.counters.windows_failed += 1
        camera.counters.frames_dropped += window.final
        self.emit(camera.logic.service_failed(reason))
        return False

    async def _analyse(self, camera: Camera, window: Window, answer: Answer) -> None:
        result = answer.result
        try:
            observed = observations(window, result, camera.ignore, answer.masks)
        except ValueError as exc:  # e.g. the ignore mask does not fit the frames
            self.emit(camera.logic.camera_failed(str(exc)))
            return
        evidence = WindowEvidence(Path(self.config.evidence_dir), camera.logic, self._active_alarm_ids())
        self._observe(camera, window, observed, evidence.note)  # noted before publishing: events name their folder
        for write in evidence.writes(window, result, self.config.evidence_keep):
            await self.calls.run(write)
        self.publish_state(camera.name)

    def _observe(self, camera: Camera, window: Window, observed: List[Observation],
                 note: Optional[Callable[[Event], None]] = None) -> None:
        """A window's observations through the camera's alarm logic (each event noted, then published), its
        peak for the snapshot, and the self-test's background."""
        for observation in observed:
            events = camera.logic.observe(observation)
            for event in events if note is not None else ():
                note(event)
            self.emit(events)
        camera.remember_peak(observed)
        if camera.gate is not None:
            camera.gate.note(observed)
        if self.selftests is not None:
            self.selftests.offer(camera, window, observed)

    def _active_alarm_ids(self) -> "frozenset[str]":
        """The LEAK alarms still active on any camera: their evidence folders are never pruned."""
        return frozenset(c.logic.leak.id for c in self.cameras.values() if c.logic.leak is not None)


def _picture_of(camera: Camera, window: Window) -> Optional[PictureMetrics]:
    """In a worker thread: the picture of a window the gate skipped (judged as if the model had seen it)."""
    if not camera.config.detectability.enabled:
        return None
    return measure_window([f.pixels for f in window.frames])


class DaemonCalls:
    """Blocking calls, each in a daemon thread, awaitable: a call hung on a dead service cannot hold up the
    process's exit (a ThreadPoolExecutor's threads are joined at exit). At shutdown the calls still running
    get until the deadline to finish: native code (ONNX Runtime in process) must not be running while the
    interpreter tears down, or the process aborts instead of exiting. :attr:`abandoned` counts those that
    did not finish; the command then ends the process without that teardown."""

    def __init__(self):
        self._running: Set[threading.Thread] = set()
        self._lock = threading.Lock()

    def run(self, fn, *args) -> "asyncio.Future":
        done: Future = Future()

        def target() -> None:
            try:
                if done.set_running_or_notify_cancel():
                    try:
                        done.set_result(fn(*args))
                    except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                        done.set_exception(exc)
            finally:
                with self._lock:
                    self._running.discard(threading.current_thread())

        thread = threading.Thread(target=target, name=f"monitor-{getattr(fn, '__name__', 'call')}", daemon=True)
        with self._lock:
            self._running.add(thread)
        thread.start()
        return asyncio.wrap_future(done)

    @property
    def abandoned(self) -> int:
        with self._lock:
            return len(self._running)

    async def join_by(self, deadline: float) -> None:
        while self.abandoned and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self.abandoned:
            log.warning("%d service call(s) still running at the shutdown deadline: abandoned", self.abandoned)


async def _stop_sinks(sinks: List[Any], warn: bool) -> None:
    for sink in sinks:
        try:
            await sink.stop()
        except Exception as exc:  # noqa: BLE001 - stopping must reach every sink
            if warn:
                log.warning("stopping %s: %s", sink.name, exc)
