"""The monitor: sources -> windows -> service -> alarm logic -> sinks, on one asyncio loop.

Threads: one per camera source (PyAV decoding or folder polling), a small pool for the
blocking service calls (``service.concurrency`` clips in flight over all cameras) and evidence
writing. Everything else (alarm logic, sinks, the watchdog, the status table) runs on the loop.

Backpressure: each camera has a queue of at most ``max_pending_windows`` windows waiting for
the service. A live camera whose queue is full drops the *oldest* waiting window (and counts
it, with its frames): memory stays flat and the freshest picture is analysed first. A video
file read with ``realtime: false`` blocks its reader instead, so a recording is analysed
completely.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, List, Optional

import numpy as np

from leakseg.monitor.alarm import STATE_CODES, Alarm, AlarmLogic, Event, State
from leakseg.monitor.config import CameraConfig, MonitorConfig
from leakseg.monitor.measure import load_ignore_mask, observations
from leakseg.monitor.sources import SourceCallbacks, make_source
from leakseg.monitor.windows import Frame, Window, WindowBuilder
from leakseg.schema import ClipResult

log = logging.getLogger("leakseg.monitor")


# -- the model: a service client or an in-process predictor -----------------------------------------


class Segmenter:
    """``segment(frames, prompts, options) -> ClipResult``, blocking, thread-safe."""

    name = "segmenter"

    def segment(self, clip: np.ndarray, prompts: Optional[List[str]], options: Dict[str, Any]) -> ClipResult:
        raise NotImplementedError  # pragma: no cover - interface

    def close(self) -> None:
        pass


class ServiceSegmenter(Segmenter):
    """Through the leakseg HTTP service with the client SDK (retries: connection errors and 503 once)."""

    def __init__(self, url: str, model: str, key_file: Optional[str], token_env: str, timeout: float,
                 pool_size: int):
        import os

        from leakseg.client import LeakSegClient

        self.client = LeakSegClient(url, token=os.environ.get(token_env) or None, model=model, timeout=timeout,
                                    retries=1, key_file=key_file, pool_size=pool_size, backoff=0.2, max_backoff=1.0)
        self.name = f"service {self.client.url}"

    def segment(self, clip, prompts, options):
        return self.client.segment(clip, prompts, options=options)

    def close(self) -> None:
        self.client.close()


class ArchiveSegmenter(Segmenter):
    """In process, from a .mar archive (``--archive``): no TorchServe needed."""

    def __init__(self, archive: str, device: str = "cpu"):
        from leakseg.inference import Predictor

        self.predictor = Predictor.from_archive(archive, device=device)
        self.lock = threading.Lock()
        self.name = f"archive {archive}"

    def segment(self, clip, prompts, options):
        with self.lock:
            return self.predictor.predict(list(clip), prompts, options)


# -- per camera -----------------------------------------------------------------------------------


@dataclass
class Counters:
    frames_in: int = 0
    frames_analysed: int = 0
    windows_sent: int = 0
    windows_dropped: int = 0
    frames_dropped: int = 0
    windows_failed: int = 0
    reconnects: int = 0


class Camera(SourceCallbacks):
    """One camera's state on the loop; the source thread calls in through call_soon_threadsafe."""

    def __init__(self, monitor: "Monitor", config: CameraConfig, index: int):
        self.monitor = monitor
        self.config = config
        self.index = index
        self.name = config.name
        self.logic = AlarmLogic(config.name, config.alarm)
        self.builder = WindowBuilder(config.name, config.clip_frames)
        self.ignore = load_ignore_mask(config.ignore_mask)
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
        self.lossless = config.is_file and not config.paced
        self.room = threading.Semaphore(config.max_pending_windows) if self.lossless else None
        self.source = None
        self.blocked = False

    # -- called from the source thread -----------------------------------------------------------

    def frame(self, pixels: np.ndarray, pts: Optional[float]) -> None:
        arrived = time.time()
        frame = Frame(seq=self.seq, pixels=pixels, arrived=arrived, pts=pts)
        self.seq += 1
        window = self.builder.push(frame)  # the builder belongs to the source thread
        if window is not None and self.room is not None:
            self.blocked = True  # waiting for the service is not a stale camera
            try:
                while not self.room.acquire(timeout=0.2):  # lossless replay: wait for the service
                    if self.monitor.stop_event.is_set():
                        return
            finally:
                self.blocked = False
            window.extra["slot"] = True
        self.monitor.call(self._on_frame, arrived, window)

    def fault(self, reason: str) -> None:
        # Frames held for the next window do not follow the next frame any more: send them now
        # (>= 3 frames) or count them as lost.
        held = self.builder.held
        window = self.builder.flush()
        self.monitor.call(self._on_fault, reason, window, 0 if window is not None else held)

    def recovered(self) -> None:
        self.monitor.call(self._on_recovered)

    def ended(self) -> None:
        held = self.builder.held
        window = self.builder.flush()
        self.monitor.call(self._on_ended, window, 0 if window is not None else held)

    # -- on the loop -----------------------------------------------------------------------------

    def _on_frame(self, arrived: float, window: Optional[Window]) -> None:
        self.counters.frames_in += 1
        self.last_frame_time = arrived
        self.last_frame_mono = time.monotonic()
        if self.logic.camera_fault is not None and self.source is not None and not self.source.faulty:
            self.monitor.emit(self.logic.camera_ok(arrived))  # the watchdog's stale fault is over
        if window is not None:
            self.enqueue(window)

    def _on_fault(self, reason: str, window: Optional[Window], lost: int) -> None:
        if window is not None:
            self.enqueue(window)
        self.counters.frames_dropped += lost
        self.monitor.emit(self.logic.camera_failed(reason))

    def _on_recovered(self) -> None:
        self.last_frame_mono = time.monotonic()
        self.monitor.emit(self.logic.camera_ok())

    def _on_ended(self, window: Optional[Window], lost: int) -> None:
        self.counters.frames_dropped += lost
        if window is not None:
            self.enqueue(window)
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
        self.wakeup.set()

    def watchdog(self, now_mono: float) -> None:
        if self.finished or self.logic.camera_fault is not None:
            return
        if self.blocked:
            self.last_frame_mono = now_mono
            return
        last = self.last_frame_mono if self.last_frame_mono is not None else self.started_mono
        stale = self.config.faults.stale_seconds
        if now_mono - last > stale:
            self.monitor.emit(self.logic.camera_failed(f"no new frame for {now_mono - last:.0f} s (limit {stale:g} s)"))

    @property
    def idle(self) -> bool:
        return not self.pending and self.in_flight == 0

    def snapshot(self) -> Dict[str, Any]:
        logic = self.logic
        last = self.last_result or {}
        leak = logic.leak
        return {
            "camera": self.name,
            "state": logic.state.value,
            "state_code": STATE_CODES[logic.state],
            "leak_active": leak is not None,
            "alarm_id": leak.id if leak else None,
            "acknowledged": bool(leak.acknowledged) if leak else True,
            "leak_area_pixels": int(last.get("area_pixels", 0)),
            "leak_area_fraction": float(last.get("area_fraction", 0.0)),
            "score": float(last.get("score", 0.0)),
            "centroid_x": last.get("centroid_x"),
            "centroid_y": last.get("centroid_y"),
            "bbox": last.get("bbox"),
            "last_frame_time": self.last_frame_time,
            "frames_analysed": logic.frames_analysed,
            "windows_sent": self.counters.windows_sent,
            "windows_dropped": self.counters.windows_dropped,
            "frames_dropped": self.counters.frames_dropped,
            "camera_ok": logic.camera_fault is None,
            "service_ok": logic.service_fault is None,
            "camera_fault": logic.camera_fault.reason if logic.camera_fault else None,
            "service_fault": logic.service_fault.reason if logic.service_fault else None,
            "time": time.time(),
        }


# -- the monitor ----------------------------------------------------------------------------------


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
        self.pool = ThreadPoolExecutor(max_workers=config.service.concurrency + 1, thread_name_prefix="monitor")
        self.event_listeners: List[Callable[[Event], None]] = []
        self._stopping: Optional[asyncio.Event] = None
        self._service_slots: Optional[asyncio.Semaphore] = None
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
            for listener in self.event_listeners:
                listener(event)
            for sink in self.sinks:
                self._spawn(sink.publish_event(event), f"{sink.name} event")
            if event.type in ("alarm_raised", "alarm_cleared", "state_changed", "alarm_acknowledged"):
                self.publish_state(event.camera)

    def publish_state(self, camera: str) -> None:
        snap = self.cameras[camera].snapshot()
        for sink in self.sinks:
            self._spawn(sink.publish_state(snap), f"{sink.name} state")

    def _spawn(self, coro, what: str) -> None:
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

    def request_stop(self) -> None:
        """Stop (thread-safe): finish clips in flight, publish the cameras offline, return."""
        self.stop_event.set()
        if self.loop is not None and self._stopping is not None:
            self.call(self._stopping.set)

    # -- main ----------------------------------------------------------------------------------

    def run(self) -> int:
        return asyncio.run(self.run_async())

    async def run_async(self) -> int:
        self.loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._service_slots = asyncio.Semaphore(self.config.service.concurrency)
        if self.stop_event.is_set():
            self._stopping.set()
        for i, cam in enumerate(self.config.cameras):
            self.cameras[cam.name] = Camera(self, cam, i)
        started = []
        for sink in self.sinks:
            try:
                await sink.start(self)
            except Exception as exc:
                for other in started:  # do not leave half the outputs running
                    try:
                        await other.stop()
                    except Exception:  # noqa: BLE001
                        pass
                self.pool.shutdown(wait=False)
                raise SinkStartError(f"cannot start the {sink.name} output: {type(exc).__name__}: {exc}") from exc
            started.append(sink)
        self._install_signals()
        for camera in self.cameras.values():
            self.publish_state(camera.name)
            camera.source = make_source(camera.config, camera, self.stop_event)
            camera.source.start()
        log.info("monitoring %d camera(s) with %s; sinks: %s", len(self.cameras), self.segmenter.name,
                 ", ".join(s.name for s in self.sinks) or "none")
        workers = [asyncio.create_task(self._worker(c)) for c in self.cameras.values()]
        ticker = asyncio.create_task(self._ticker())
        self.started.set()
        try:
            await self._stopping.wait()
        finally:
            self.stop_event.set()
            for camera in self.cameras.values():
                if camera.source is not None:
                    await asyncio.to_thread(camera.source.join, 15)
            # Finish what is in flight and queued (bounded by max_pending_windows per camera).
            deadline = time.monotonic() + self.config.service.timeout + 5
            while any(not c.idle for c in self.cameras.values()) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            for w in workers:
                w.cancel()
            ticker.cancel()
            await asyncio.gather(*workers, ticker, return_exceptions=True)
            for camera in self.cameras.values():
                self.emit(camera.logic.go_offline())
            await asyncio.sleep(0)  # let the offline publications start
            for sink in self.sinks:
                try:
                    await sink.stop()
                except Exception as exc:  # noqa: BLE001 - stopping must reach every sink
                    log.warning("stopping %s: %s", sink.name, exc)
            self.pool.shutdown(wait=True)
            self.segmenter.close()
            self._remove_signals()
            if self.status_table:
                sys.stdout.write("\n")
        log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        self._signals = []
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
                self._signals.append(sig)
            except (NotImplementedError, RuntimeError):
                pass

    def _remove_signals(self) -> None:
        for sig in getattr(self, "_signals", []):
            self.loop.remove_signal_handler(sig)

    def _on_signal(self, sig) -> None:
        log.info("%s: finishing the clips in flight, then stopping", signal.Signals(sig).name)
        self.request_stop()

    async def _ticker(self) -> None:
        interval = min(self.config.status_interval, 0.5)
        last_status = 0.0
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for camera in self.cameras.values():
                camera.watchdog(now)
            if self.until_sources_end and all(c.finished and c.idle for c in self.cameras.values()):
                log.info("every source ended")
                self._stopping.set()
            if now - last_status >= self.config.status_interval:
                last_status = now
                for sink in self.sinks:
                    self._spawn(sink.heartbeat([c.snapshot() for c in self.cameras.values()]), f"{sink.name} heartbeat")
                if self.status_table:
                    self._print_table()

    # -- windows -> service -> alarms ---------------------------------------------------------------

    async def _worker(self, camera: Camera) -> None:
        retry = self.config.service.retry_seconds
        while True:
            if not camera.pending:
                camera.wakeup.clear()
                await camera.wakeup.wait()
                continue
            window = camera.pending.popleft()
            camera.in_flight += 1
            try:
                async with self._service_slots:
                    result, error = await self.loop.run_in_executor(self.pool, self._segment, camera.config, window)
                if window.extra.get("slot"):
                    camera.room.release()
                if error is not None:
                    camera.counters.windows_failed += 1
                    camera.counters.frames_dropped += window.final
                    self.emit(camera.logic.service_failed(error))
                    if not self.stop_event.is_set():
                        await asyncio.sleep(retry)
                    continue
                camera.counters.windows_sent += 1
                self.emit(camera.logic.service_ok())
                await self._analyse(camera, window, result)
            finally:
                camera.in_flight -= 1

    def _segment(self, config: CameraConfig, window: Window):
        """In a pool thread: (ClipResult, None) or (None, reason)."""
        from leakseg.client.errors import LeakSegError

        try:
            clip = np.stack([f.pixels for f in window.frames])
            return self.segmenter.segment(clip, config.prompts, dict(config.options)), None
        except LeakSegError as exc:
            return None, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - in-process errors (InputError, runtime) are service faults too
            log.debug("segment failed", exc_info=True)
            return None, f"{type(exc).__name__}: {exc}"

    async def _analyse(self, camera: Camera, window: Window, result: ClipResult) -> None:
        try:
            obs = observations(window, result, camera.ignore)
        except ValueError as exc:  # e.g. the ignore mask does not fit the frames
            self.emit(camera.logic.camera_failed(str(exc)))
            return
        evidence: Dict[str, Alarm] = {}  # LEAK alarms raised or grown in this window, by id
        cleared: Dict[str, Alarm] = {}
        for o in obs:
            events = camera.logic.observe(o)
            for e in events:
                if e.alarm is None or e.alarm.kind != State.LEAK:
                    continue
                if e.type in ("alarm_raised", "alarm_updated"):
                    e.alarm.evidence = str(self.evidence_folder(e.alarm.id))
                    live = camera.logic.recent.get(e.alarm.id)  # the event holds a snapshot
                    if live is not None:
                        live.evidence = e.alarm.evidence
                    evidence[e.alarm.id] = e.alarm
                elif e.type == "alarm_cleared":
                    cleared[e.alarm.id] = e.alarm
            self.emit(events)
        if obs:
            peak = max(obs, key=lambda o: o.area_pixels)
            camera.last_result = {
                "area_pixels": peak.area_pixels, "area_fraction": peak.area_fraction,
                "score": max(o.score for o in obs),
                "centroid_x": peak.centroid[0] if peak.centroid else None,
                "centroid_y": peak.centroid[1] if peak.centroid else None,
                "bbox": list(peak.bbox) if peak.bbox else None,
            }
        # One write after another, the latest state of each alarm last: alarm.json of an alarm cleared in
        # this window says so even when the same window also grew it.
        for alarm_id, alarm in evidence.items():
            latest = cleared.pop(alarm_id, None) or camera.logic.recent.get(alarm_id) or alarm
            await self.loop.run_in_executor(self.pool, write_evidence, self.evidence_folder(alarm_id), window, result,
                                            latest.to_dict(), self.config.evidence_keep)
        for alarm_id, alarm in cleared.items():
            await self.loop.run_in_executor(self.pool, write_alarm_json, self.evidence_folder(alarm_id),
                                            alarm.to_dict())
        self.publish_state(camera.name)

    def evidence_folder(self, alarm_id: str) -> Path:
        return Path(self.config.evidence_dir) / alarm_id

    # -- status table ------------------------------------------------------------------------------

    def _print_table(self) -> None:
        rows = [f"{'camera':<16} {'state':<14} {'area px':>8} {'score':>6} {'analysed':>9} {'dropped':>8}  fault"]
        for c in self.cameras.values():
            s = c.snapshot()
            rows.append(f"{s['camera']:<16} {s['state']:<14} {s['leak_area_pixels']:>8} {s['score']:>6.2f} "
                        f"{s['frames_analysed']:>9} {s['windows_dropped']:>8}  "
                        f"{s['camera_fault'] or s['service_fault'] or ''}"[:160])
        sys.stdout.write("\x1b[s\x1b[H\x1b[2K" + "\n\x1b[2K".join(rows) + "\n\x1b[u")
        sys.stdout.flush()


def write_evidence(folder: Path, window: Window, result: ClipResult, alarm: Dict[str, Any], keep: int) -> None:
    """The window's overlay GIF and result JSON, and the alarm as JSON, in the alarm's folder."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"window-{window.number:06d}"
        (folder / f"{stem}.json").write_text(result.model_dump_json(indent=1), encoding="utf-8")
        (folder / "alarm.json").write_text(json.dumps(alarm, indent=1), encoding="utf-8")
        from leakseg.utils.overlay import render_overlays, write_overlays

        clip = np.stack([f.pixels for f in window.frames])
        write_overlays(render_overlays(clip, result), folder / f"{stem}.gif", fps=5)
        _prune(folder.parent, keep)
    except Exception as exc:  # noqa: BLE001 - evidence must never stop the alarm path
        log.warning("could not write evidence to %s: %s", folder, exc)


def write_alarm_json(folder: Path, alarm: Dict[str, Any]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "alarm.json").write_text(json.dumps(alarm, indent=1), encoding="utf-8")
    except OSError as exc:
        log.warning("could not write %s/alarm.json: %s", folder, exc)


def _prune(root: Path, keep: int) -> None:
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
