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
published triplet. :meth:`WindowBuilder.flush` hands out the rest at the end of a stream; its last
two frames are reported with the service's fallback triplets (the other two frames of the last three).
When fewer than 3 frames are left, the last window starts with the one or two frames before them,
already reported, so that they have a triplet (``Window.first``); only a stream shorter than 3
frames loses frames.
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
    final: int  # how many frames this window reports, from ``first`` on (len - 2, or the rest at the end)
    created: float = 0.0
    extra: dict = field(default_factory=dict)
    first: int = 0  # the first reported frame (a last window may start with reported frames, for the triplets)
    #: whose frames these are: a stream's frames keep their features from one window to the next
    #: (leakseg.inference.stream); the self-test's replays are streams of their own.
    stream: str = ""

    def __post_init__(self):
        self.stream = self.stream or self.camera

    @property
    def reported(self) -> List[Frame]:
        return self.frames[self.first : self.first + self.final]

    @property
    def first_seq(self) -> int:
        return self.frames[0].seq


#: Frames per window when a camera's ``clip_frames`` is unset: a model that streams (in process, with the
#: archive's stream halves) reports each frame as soon as the frame two after it arrives, in windows of 3 that
#: each bring one new frame; requests to the service carry 8 frames (6 reported, each frame sent 1.33 times).
STREAM_WINDOW, SERVICE_WINDOW = 3, 8


def window_length(clip_frames: Optional[int], streams: bool) -> int:
    """A camera's window length: its ``clip_frames``, else the default for how its model runs."""
    if clip_frames is not None:
        return clip_frames
    return STREAM_WINDOW if streams else SERVICE_WINDOW


class WindowBuilder:
    """Collects frames into windows of ``length`` frames that overlap by 2; ``stream`` names whose frames
    they are (default: the camera's)."""

    OVERLAP = 2

    def __init__(self, camera: str, length: int, stream: str = ""):
        if length < 3:
            raise ValueError("a window needs at least 3 frames (one triplet)")
        self.camera = camera
        self.stream = stream or camera
        self.length = length
        self._frames: List[Frame] = []
        self._before: List[Frame] = []  # the reported frames just before the held ones (a last window's triplets)
        self._count = 0

    def push(self, frame: Frame) -> Optional[Window]:
        """Add a frame; returns a complete window when one is ready."""
        self._frames.append(frame)
        if len(self._frames) < self.length:
            return None
        window = Window(self.camera, self._count, list(self._frames), self.length - self.OVERLAP, created=frame.arrived,
                        stream=self.stream)
        self._count += 1
        self._before = self._frames[-self.OVERLAP - 2 : -self.OVERLAP]
        self._frames = self._frames[-self.OVERLAP:]
        return window

    def flush(self) -> Optional[Window]:
        """The frames not yet reported, as a last window: with the reported frames before them when they are
        fewer than 3; None when there is nothing to report or no triplet to report it with."""
        held, before = self._frames, self._before
        self._frames, self._before = [], []
        context = before[len(before) - max(0, 3 - len(held)):] if held else []
        frames = context + held
        if not held or len(frames) < 3:
            return None
        window = Window(self.camera, self._count, frames, len(held), created=frames[-1].arrived, first=len(context),
                        stream=self.stream)
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
        self._frames, self._before = [], []
        return lost

    @property
    def held(self) -> int:
        return len(self._frames)
