"""Overlapping clip windows: every analysed frame gets its published triplet, exactly once.

The service computes frame t's mask from the triplet (t, t+1, t+2) of its clip; a clip's last
two frames have no such triplet and get a fallback. So a window of L frames yields L - 2
*final* frames (its first L - 2), and its last two frames start the next window::

    stream:    0 1 2 3 4 5 6 7 8 9 10 11 ...
    window 0:  0 1 2 3 4 5 6 7            -> frames 0..5 reported
    window 1:              6 7 8 9 10 11 12 13   -> frames 6..11 reported
    ...

A window that is dropped under backpressure loses its L - 2 final frames (counted); the next
window still starts with its last two frames, so the frames that are reported always had their
published triplet. :meth:`WindowBuilder.flush` hands out the rest at the end of a stream
(at least 3 frames); its last two frames are reported with the service's fallback triplets.
The camera flushes the same way when the stream breaks (a fault, a gap, a new resolution): a window
never mixes frames from both sides of a break.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np


@dataclass
class Frame:
    """One analysed frame: its number in the camera's analysed sequence, and when it arrived."""

    seq: int
    pixels: np.ndarray
    arrived: float  # time.time() when the source produced it
    pts: Optional[float] = None  # stream timestamp in seconds, when known


@dataclass
class Window:
    camera: str
    number: int
    frames: List[Frame]
    final: int  # how many of the first frames this window reports (len - 2, or all at the end)
    created: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def reported(self) -> List[Frame]:
        return self.frames[: self.final]

    @property
    def first_seq(self) -> int:
        return self.frames[0].seq


class WindowBuilder:
    """Collects frames into windows of ``length`` frames that overlap by 2."""

    OVERLAP = 2

    def __init__(self, camera: str, length: int):
        if length < 3:
            raise ValueError("a window needs at least 3 frames (one triplet)")
        self.camera = camera
        self.length = length
        self._frames: List[Frame] = []
        self._count = 0

    def push(self, frame: Frame) -> Optional[Window]:
        """Add a frame; returns a complete window when one is ready."""
        self._frames.append(frame)
        if len(self._frames) < self.length:
            return None
        window = Window(self.camera, self._count, list(self._frames), self.length - self.OVERLAP, created=frame.arrived)
        self._count += 1
        self._frames = self._frames[-self.OVERLAP:]
        return window

    def flush(self) -> Optional[Window]:
        """The frames not yet reported, as a last window (every frame final), if there are >= 3."""
        frames, self._frames = self._frames, []
        if len(frames) < 3:
            return None
        window = Window(self.camera, self._count, frames, len(frames), created=frames[-1].arrived)
        self._count += 1
        return window

    def continues_with(self, frame: Frame) -> bool:
        """Whether ``frame`` can join the frames held: same size and type (a camera that changed its resolution
        starts a new window; one clip holds one size)."""
        if not self._frames:
            return True
        last = self._frames[-1].pixels
        return frame.pixels.shape == last.shape and frame.pixels.dtype == last.dtype

    def reset(self) -> int:
        """Forget the frames held (the stream broke: the next frame does not follow them).

        Returns how many held frames will never be reported."""
        lost = len(self._frames)
        self._frames = []
        return lost

    @property
    def held(self) -> int:
        return len(self._frames)
