"""Camera sources: anything FFmpeg opens (through PyAV) and drop folders. One thread per camera.

A source calls back into the runner (from its own thread):

* ``frame(pixels, pts)`` for every *analysed* frame (decimated to ``analysis_fps`` by the stream's
  timestamps, so a 30 fps stream at analysis_fps 5 gives every 6th frame);
* ``fault(reason)`` when the stream is lost (cannot open, read error, end of a live stream) or
  frozen (``frozen_frames`` identical frames in a row). Frozen frames are not analysed: a
  frozen picture is a camera fault, never "no leak";
* ``recovered()`` when frames flow again after a fault;
* ``ended()`` when a video file or folder listing without ``loop`` is exhausted.

A source never ends by itself on a failure: whatever goes wrong while reading is a fault with a
reason, and after a loss the source reconnects with exponential backoff (``reconnect_initial`` doubling to
``reconnect_max``), reset once frames flow again. A stream that delivers nothing for
``stale_seconds`` is detected by the runner's watchdog (a read can hang without an error).

Pixels: 8-bit video is decoded as RGB (H x W x 3 uint8); 16-bit grey video (gray16le/be, e.g.
FFV1 or PNG-in-MKV radiometric recordings) as H x W uint16. Drop folders take numbered
PNG/TIFF (8 or 16 bit) or .npy files (one H x W [x 3] frame each) in natural order, read by
:func:`leakseg.io.frames.read_frame_file` as the service reads its input; 16-bit frames stay
16-bit up to the service, which maps each clip to 8 bits by one rule.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from leakseg.io.frames import ClipLimits, natural_key, read_frame_file
from leakseg.monitor.config import END_MARKER, CameraConfig
from leakseg.schema import InputError

log = logging.getLogger("leakseg.monitor.sources")

FOLDER_SUFFIXES = (".png", ".tif", ".tiff", ".npy")


class SourceCallbacks:
    """What a source reports to; the runner implements it (thread-safe)."""

    def frame(self, pixels: np.ndarray, pts: Optional[float]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def fault(self, reason: str) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def recovered(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def ended(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class _Frozen:
    """Counts identical frames in a row (by digest)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.digest: Optional[bytes] = None
        self.repeats = 0

    def check(self, pixels: np.ndarray) -> bool:
        """True while the picture is frozen (``limit`` or more identical frames in a row)."""
        digest = hashlib.blake2b(np.ascontiguousarray(pixels).data, digest_size=16).digest()
        if digest == self.digest:
            self.repeats += 1
        else:
            self.digest, self.repeats = digest, 1
        return self.repeats >= self.limit


class Source(threading.Thread):
    def __init__(self, camera: CameraConfig, callbacks: SourceCallbacks, stop: threading.Event):
        super().__init__(name=f"source-{camera.name}", daemon=True)
        self.camera = camera
        self.cb = callbacks
        self.stop_event = stop
        self.faulty = False
        self.frozen = _Frozen(camera.faults.frozen_frames)
        self.delivered = 0
        self.reconnects = 0

    # -- shared helpers ------------------------------------------------------------------------

    def _deliver(self, pixels: np.ndarray, pts: Optional[float]) -> None:
        if self.frozen.check(pixels):
            if not self.faulty:
                self._fault(f"frozen: {self.frozen.repeats} identical frames in a row")
            return
        if self.faulty:
            self.faulty = False
            self.cb.recovered()
        self.delivered += 1
        self.cb.frame(pixels, pts)

    def _fault(self, reason: str) -> None:
        self.faulty = True
        self.cb.fault(reason)

    def _backoff(self, attempt: int) -> bool:
        """Wait before reconnecting; False when stopped meanwhile."""
        f = self.camera.faults
        delay = backoff_delay(attempt, f.reconnect_initial, f.reconnect_max)
        log.info("%s: reconnecting in %.1f s", self.camera.name, delay)
        return not self.stop_event.wait(delay)


def backoff_delay(attempt: int, initial: float, maximum: float) -> float:
    """The wait before retry ``attempt`` (0-based): ``initial`` doubling up to ``maximum``."""
    return min(maximum, initial * 2 ** min(attempt, 32))


class StreamSource(Source):
    """RTSP/HTTP/UDP URLs and video files, through PyAV (FFmpeg)."""

    def run(self) -> None:
        attempt = 0
        while not self.stop_event.is_set():
            try:
                got = self._read_once()
            except Exception as exc:  # noqa: BLE001 - any FFmpeg/network error is a camera fault
                got = None
                self._fault(f"lost: {type(exc).__name__}: {exc}")
            if self.stop_event.is_set():
                break
            if got == "eof" and self.camera.is_file:
                if self.camera.loop:
                    continue
                self.cb.ended()
                return
            if got == "eof":  # a live stream that ends is a lost camera
                self._fault("lost: the stream ended")
            if got == "eof" or got is None:
                attempt = 0 if self.delivered_since_open else attempt + 1
                self.reconnects += 1
                if not self._backoff(attempt):
                    break

    def _read_once(self) -> str:
        import av

        self.delivered_since_open = False
        f = self.camera.faults
        options = {}
        if self.camera.source.startswith("rtsp://"):
            options["rtsp_transport"] = "tcp"
        container = av.open(self.camera.source, options=options, timeout=(f.open_timeout, f.open_timeout))
        try:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            period = 1.0 / self.camera.analysis_fps if self.camera.analysis_fps else 0.0
            paced = self.camera.is_file and self.camera.paced
            start_wall = time.monotonic()
            first_pts: Optional[float] = None
            next_due: Optional[float] = None
            for frame in container.decode(stream):
                if self.stop_event.is_set():
                    return "stopped"
                t = frame.time if frame.time is not None else time.monotonic() - start_wall
                if first_pts is None:
                    first_pts = t
                rel = t - first_pts
                if paced:
                    lag = rel - (time.monotonic() - start_wall)
                    if lag > 0 and self.stop_event.wait(lag):
                        return "stopped"
                if period:
                    if next_due is not None and rel + 1e-6 < next_due:
                        continue
                    next_due = rel + period if next_due is None or rel - next_due > period else next_due + period
                self._deliver(_to_array(frame), t)
                self.delivered_since_open = True
            return "eof"
        finally:
            container.close()

    delivered_since_open = False


def _to_array(frame) -> np.ndarray:
    name = frame.format.name
    if name.startswith("gray16") or name in ("gray12le", "gray10le"):
        return frame.to_ndarray(format="gray16le")
    if name in ("gray", "gray8"):
        return frame.to_ndarray(format="gray")
    return frame.to_ndarray(format="rgb24")


class FolderSource(Source):
    """Numbered frames dropped into a folder by another program (every frame is analysed).

    Files are read in natural order (frame2 before frame10), each once. Write each file under a
    temporary name (starting with '.' or ending in '.tmp') and rename it when complete; a file
    that cannot be read yet is retried on the next two polls, then skipped as a camera fault that
    names it (cleared by the next good frame). Frames are refused above the service's frame limits
    before their pixels are decoded. Whatever else goes wrong is a camera fault too, retried with backoff:
    nothing ends the source but the END file or a stop.
    """

    POLL = 0.05
    READ_ATTEMPTS = 3

    def __init__(self, camera: CameraConfig, callbacks: SourceCallbacks, stop: threading.Event):
        super().__init__(camera, callbacks, stop)
        self.folder = Path(camera.source)
        self.last_key: Optional[tuple] = None  # the last frame file read or skipped, in natural order
        self.attempts: Dict[str, int] = {}  # file name -> failed reads so far

    def run(self) -> None:
        attempt = 0
        while not self.stop_event.is_set():
            try:
                if self._poll():
                    self.cb.ended()
                    return
                attempt = 0
            except Exception as exc:  # noqa: BLE001 - the supervisor: any failure is a camera fault, retried
                log.warning("%s: reading %s failed", self.camera.name, self.folder, exc_info=True)
                self._fault(f"lost: cannot read {self.folder}: {type(exc).__name__}: {exc}")
                if not self._backoff(attempt):
                    return
                attempt += 1
                continue
            self.stop_event.wait(self.POLL)

    def _poll(self) -> bool:
        """Read the new frames in order; True when the folder is done (no new frame and the END file)."""
        fresh = self._fresh_files()
        for key, path in fresh:
            if self.stop_event.is_set() or not self._take(key, path):
                break
        return not fresh and (self.folder / END_MARKER).exists()

    def _fresh_files(self) -> List[Tuple[list, Path]]:
        found = []
        for path in self.folder.iterdir():
            if path.suffix.lower() in FOLDER_SUFFIXES and not path.name.startswith(".") and path.is_file():
                key = natural_key(path)
                if self.last_key is None or key > self.last_key:
                    found.append((key, path))
        return sorted(found, key=lambda item: item[0])

    def _take(self, key: list, path: Path) -> bool:
        """Deliver one frame file; False to stop this poll (a file to retry on the next one)."""
        try:
            pixels = read_dropped_frame(path)
        except (InputError, OSError) as exc:
            self.attempts[path.name] = self.attempts.get(path.name, 0) + 1
            if self.attempts[path.name] < self.READ_ATTEMPTS:
                return False  # maybe still being written: retry on the next poll
            self._skip(key, path, exc)
            return True
        self.attempts.pop(path.name, None)
        self.last_key = key
        self._deliver(pixels, None)
        if self.camera.delete_after_read:
            path.unlink(missing_ok=True)
        return True

    def _skip(self, key: tuple, path: Path, exc: Exception) -> None:
        log.warning("%s: skipping unreadable frame %s: %s", self.camera.name, path.name, exc)
        self.attempts.pop(path.name, None)
        self.last_key = key
        self._fault(f"unreadable frame file {path.name[:100]}: {str(exc)[:300]}")


#: The service's limits for one frame (pixels, decoded bytes): a dropped file announcing more is refused
#: from its header, before its pixels are decoded.
FRAME_LIMITS = ClipLimits()


def read_dropped_frame(path: Path) -> np.ndarray:
    """One frame file of a drop folder; :class:`InputError` for a file that is not one readable frame
    (its layout and size are checked from its header before anything is decoded)."""
    return read_frame_file(path, FRAME_LIMITS)


def make_source(camera: CameraConfig, callbacks: SourceCallbacks, stop: threading.Event) -> Source:
    cls: Callable[..., Source] = FolderSource if camera.kind == "folder" else StreamSource
    return cls(camera, callbacks, stop)


@dataclass
class FramesRead:
    """What :func:`read_frames` got: the frames, their stream timestamps, and the fault that ended it (if any)."""

    frames: List[np.ndarray]
    stamps: List[Optional[float]]
    fault: Optional[str] = None


def read_frames(camera: CameraConfig, limit: int, stall_seconds: float) -> FramesRead:
    """Read up to ``limit`` analysed frames of ``camera`` with the monitor's own source (decoding, decimation,
    drop-folder order), outside the monitor: for `monitor --draw-zones` and the self-test's background.

    It ends at ``limit`` frames, at the source's end, at a fault, or after ``stall_seconds`` without a frame
    (then a fault too). Pass a camera that reads once and deletes nothing (``loop``/``delete_after_read`` off)."""
    collector = _Collector(limit)
    stop = threading.Event()
    source = make_source(camera, collector, stop)
    source.start()
    try:
        collector.wait(stall_seconds)
    finally:
        stop.set()
        source.join(timeout=5.0)
    return FramesRead(collector.frames, collector.stamps, collector.fault_reason)


class _Collector(SourceCallbacks):
    """Source callbacks that keep the first ``limit`` frames and say when to stop: enough frames, the
    source's end, or a fault (its reason kept)."""

    def __init__(self, limit: int):
        self.limit = limit
        self.frames: List[np.ndarray] = []
        self.stamps: List[Optional[float]] = []
        self.fault_reason: Optional[str] = None
        self.last = time.monotonic()
        self.done = threading.Event()

    def frame(self, pixels: np.ndarray, pts: Optional[float]) -> None:
        if not self.done.is_set():  # nothing after a fault or the limit: the stretch ends there
            self.frames.append(pixels)
            self.stamps.append(pts)
            self.last = time.monotonic()
        if len(self.frames) >= self.limit:
            self.done.set()

    def fault(self, reason: str) -> None:
        self.fault_reason = self.fault_reason or reason
        self.done.set()

    def recovered(self) -> None:
        pass

    def ended(self) -> None:
        self.done.set()

    def wait(self, stall_seconds: float) -> None:
        """Until done; a source that gives no frame for ``stall_seconds`` is a fault."""
        while not self.done.wait(0.1):
            if time.monotonic() - self.last > stall_seconds:
                self.fault(f"no frame for {stall_seconds:g} s")
