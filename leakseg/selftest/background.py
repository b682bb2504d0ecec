"""A camera's background for the self-test: a stretch of its own gas-free frames, read the way the monitor
reads them.

Where the frames come from:

* a recording (``--recording``): a video file is read by the monitor's own source (PyAV, decimated to the
  camera's ``analysis_fps`` by timestamp, frozen pictures refused) as fast as it decodes; a folder of frame
  files (PNG/TIFF/.npy) is read in natural order with the drop folder's own reader, every file one
  analysed frame (a recording folder needs no END file);
* the camera itself: its ``source`` from the monitor's configuration, through the same source, until
  enough analysed frames have come. A camera fault while gathering (lost, frozen, an unreadable frame, or
  no frame for ``open_timeout + stale_seconds``) is an error: a background with a gap is not one stretch.

Exclusions. The self-test must run on gas-free frames, so frames where a real plume may be present are
taken out by their index among the analysed frames gathered (from 0): ``"0-20,150-170"`` drops frames
0 to 20 and 150 to 170, both ends included (``"7"`` drops frame 7). The alarm rule counts consecutive
frames, so frames on both sides of a gap must never share a window: of the stretches the exclusions leave,
the self-test uses the longest one (the earliest of equally long ones) and drops the others. That keeps the
background one honest, continuous piece of footage; exclude little, or record again, to keep more.

All frames must have one size and type: a change (another resolution, colour instead of grey) is an
error that names the frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from leakseg.monitor.config import CameraConfig

#: Inclusive frame index ranges, (first, last).
Ranges = List[Tuple[int, int]]


class BackgroundError(ValueError):
    """The background could not be gathered; ``str()`` says why in one line."""


@dataclass
class Background:
    """The gas-free stretch the self-test runs on, and where it came from."""

    frames: List[np.ndarray]
    source: str  # the recording or the camera's source
    gathered: int  # analysed frames read before the exclusions
    first_index: int  # frames[0]'s index among them
    fps: Optional[float] = None  # analysed frames per second, from the stream's timestamps (None: unknown)

    @property
    def dropped(self) -> int:
        return self.gathered - len(self.frames)

    def describe(self) -> str:
        last = self.first_index + len(self.frames) - 1
        text = f"{len(self.frames)} background frames from {self.source} (frames {self.first_index}-{last}"
        if self.dropped:
            text += f"; {self.dropped} of {self.gathered} left out by the exclusions"
        return text + ")"


def gather_background(camera: CameraConfig, *, recording: Optional[str] = None, frames: int = 64,
                      exclude: str = "") -> Background:
    """Up to ``frames`` analysed frames of the camera (or of ``recording``), less the ``exclude`` ranges,
    as one continuous stretch. Raises :class:`BackgroundError`."""
    ranges = parse_ranges(exclude)
    if frames < 1:
        raise BackgroundError(f"--frames must be >= 1, got {frames}")
    if recording is not None:
        pixels, stamps = _read_recording(camera, Path(recording), frames)
        source = str(recording)
    else:
        pixels, stamps = _read_live(camera, frames)
        source = f"camera {camera.name} ({camera.source})"
    if not pixels:
        raise BackgroundError(f"{source}: no frame could be read")
    check_one_size(pixels)
    start, stop = longest_stretch(len(pixels), ranges)
    return Background(pixels[start:stop], source, len(pixels), start, _fps(stamps[start:stop]))


# -- exclusions ----------------------------------------------------------------------------------------


def parse_ranges(text: str) -> Ranges:
    """``"0-20,150-170,7"`` as [(0, 20), (150, 170), (7, 7)]; empty text, none."""
    ranges = []
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        match = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
        if match is None:
            raise BackgroundError(f"--exclude: {part!r} is not a frame range like 0-20 or 7")
        bounds = (int(match[1]), int(match[2] or match[1]))
        if bounds[1] < bounds[0]:
            raise BackgroundError(f"--exclude: {part!r}: give FIRST-LAST with FIRST <= LAST")
        ranges.append(bounds)
    return ranges


def longest_stretch(count: int, ranges: Ranges) -> Tuple[int, int]:
    """(start, stop) of the longest run of frames 0..count-1 outside ``ranges`` (the earliest of equals)."""
    beyond = [r for r in ranges if r[0] >= count]
    if beyond:
        raise BackgroundError(f"--exclude: {beyond[0][0]}-{beyond[0][1]} starts after the last frame "
                              f"gathered ({count - 1})")
    kept = np.ones(count, bool)
    for first, last in ranges:
        kept[first:last + 1] = False
    best, start = (0, 0), None
    for i, keep in enumerate(np.append(kept, False)):  # the False closes a stretch that reaches the end
        if keep and start is None:
            start = i
        elif not keep and start is not None:
            best = max(best, (start, i), key=lambda s: s[1] - s[0])  # max keeps the first of equals
            start = None
    if best[1] == best[0]:
        raise BackgroundError(f"--exclude leaves none of the {count} frames gathered")
    return best


# -- frames ----------------------------------------------------------------------------------------------


def check_one_size(frames: Sequence[np.ndarray]) -> None:
    """A frame of another shape or type than the first is an error that names it."""
    first = frames[0]
    for i, frame in enumerate(frames):
        if frame.shape != first.shape or frame.dtype != first.dtype:
            raise BackgroundError(f"frame {i} is {_layout(frame)}, the frames before it {_layout(first)}: "
                                  "the background must be frames of one size")


def _layout(frame: np.ndarray) -> str:
    colour = " RGB" if frame.ndim == 3 else ""
    return f"{frame.shape[1]}x{frame.shape[0]}{colour} {frame.dtype}"


def _fps(stamps: Sequence[Optional[float]]) -> Optional[float]:
    """Analysed frames per second from their timestamps (the median step), None without them."""
    known = [t for t in stamps if t is not None]
    if len(known) < 2 or len(known) != len(stamps):
        return None
    step = float(np.median(np.diff(known)))
    return 1.0 / step if step > 0 else None


# -- reading ---------------------------------------------------------------------------------------------


def _read_recording(camera: CameraConfig, path: Path, limit: int) -> Tuple[List[np.ndarray], list]:
    if path.is_dir():
        return _read_folder(path, limit)
    if not path.is_file():
        raise BackgroundError(f"--recording: {path}: no such file or folder")
    return _collect(_camera_reading(camera, str(path)), limit)


def _read_folder(folder: Path, limit: int) -> Tuple[List[np.ndarray], list]:
    """The frame files of a recorded drop folder, in the order and by the reader the monitor uses."""
    from leakseg.io.frames import natural_key
    from leakseg.monitor.sources import FOLDER_SUFFIXES, read_dropped_frame
    from leakseg.schema import InputError

    files = sorted((p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.suffix.lower() in FOLDER_SUFFIXES), key=natural_key)
    frames = []
    for path in files[:limit]:
        try:
            frames.append(read_dropped_frame(path))
        except (InputError, OSError) as exc:
            raise BackgroundError(f"{path}: not a readable frame: {exc}") from None
    return frames, [None] * len(frames)


def _read_live(camera: CameraConfig, limit: int) -> Tuple[List[np.ndarray], list]:
    return _collect(_camera_reading(camera, camera.source), limit)


def _camera_reading(camera: CameraConfig, source: str) -> CameraConfig:
    """The camera, reading ``source`` once, unpaced, deleting nothing (validated again: kind follows source)."""
    data = camera.model_dump()
    data.update(source=source, kind="auto", realtime=False, loop=False, delete_after_read=False)
    return CameraConfig.model_validate(data)


def _collect(camera: CameraConfig, limit: int) -> Tuple[List[np.ndarray], list]:
    """The monitor's source for ``camera`` until ``limit`` frames, its end, a fault, or no frame for as long as
    the monitor itself would wait before calling the camera lost."""
    from leakseg.monitor.sources import read_frames

    read = read_frames(camera, limit, camera.faults.open_timeout + camera.faults.stale_seconds)
    if read.fault:
        raise BackgroundError(f"camera {camera.name}: {read.fault} (after {len(read.frames)} frames)")
    return read.frames, read.stamps
