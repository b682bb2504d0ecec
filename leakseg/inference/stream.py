"""Camera streams through the network's two halves: each frame encoded once, each frame decoded once.

A camera sends its frames as overlapping windows (``leakseg.monitor.windows``): frame t's mask comes
from its published triplet (t, t+1, t+2), so consecutive windows share two frames. The clip graph would
encode those again and decode every frame of a window, the last two only to discard them.
:class:`StreamPredictor` keeps each stream's latest frame features and asks for the frames to report::

    streams = StreamPredictor(Predictor.from_archive("model_store/jvlgs.mar", stream=True))
    result = streams.predict("cam-1", window_frames, report=range(len(window_frames) - 2))

Only frames it has not seen go through the encoder; only the reported frames go through the head,
each with the neighbours the clip rule gives it in this window (``triplet_neighbours``). For 8-bit
frames a reported frame's logits are therefore the clip graph's for the same window, exactly (the
same modules on the same inputs). Frames of more than 8 bits are stretched to 8 bits per window (as a
request is): a frame keeps the stretch of the window it was first encoded in.

A frame is recognised by its array object (the monitor's windows share them): pass each frame's own
array and never change it afterwards. The features of the last :data:`KEEP` frames of each stream are
kept (about 0.3 MB per frame for the default model), for at most ``max_streams`` streams.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np

from leakseg.inference.postprocess import postprocess
from leakseg.inference.predictor import Predictor, RequestSettings
from leakseg.io.frames import check_clip, to_uint8_clip
from leakseg.model.temporal import triplet_neighbours
from leakseg.schema import ClipResult, ErrorCode, InputError, Timings

#: Frames of features kept per stream: the two a window hands the next one, and one more (a last window
#: at a break may start one frame earlier).
KEEP = 3


@dataclass
class _Seen:
    pixels: np.ndarray  # the frame itself: a later window's frame is this one when it is this array
    features: Tuple[np.ndarray, ...]  # (C, h, w) per stride


@dataclass
class _Stream:
    prompts: Tuple[str, ...]  # the features depend on the text matrix (JVLGS fuses it into them)
    seen: List[_Seen] = field(default_factory=list)

    def find(self, pixels: np.ndarray) -> Optional[_Seen]:
        return next((s for s in self.seen if s.pixels is pixels), None)


class StreamPredictor:
    """Windows of camera streams through the stream halves of a :class:`Predictor` (thread-safe)."""

    def __init__(self, predictor: Predictor, max_streams: int = 256):
        if predictor.stream is None:
            raise ValueError("this archive has no stream halves (exported with --no-stream or before they "
                             "existed); export it again to stream")
        self.predictor = predictor
        self.max_streams = max_streams
        self._streams: "OrderedDict[str, _Stream]" = OrderedDict()
        self._lock = threading.Lock()
        self.frames_encoded = 0  # through the encoder
        self.frames_reused = 0  # features kept from an earlier window
        self.frames_decoded = 0  # through the head (= frames reported)

    @classmethod
    def from_archive(cls, path, device: str = "auto", threads: Optional[int] = None) -> "StreamPredictor":
        return cls(Predictor.from_archive(path, device, threads, stream=True))

    def predict(self, stream: str, frames: Sequence[np.ndarray], report: Sequence[int], prompts=None,
                options=None) -> ClipResult:
        """The results of the frames ``report`` (indices into ``frames``, in order) of one window of ``stream``;
        the answer's frame i is ``frames[report[i]]``. Raises InputError like ``Predictor.prepare``."""
        p = self.predictor
        settings = p.settings(prompts, options)
        check_clip(frames, p.limits)
        report = _checked_report(report, len(frames))
        with self._lock:
            t0 = time.perf_counter()
            features = self._features(stream, frames, settings)
            rule = triplet_neighbours(len(frames))
            logits = p.stream.decode(features, np.asarray(report, dtype=np.int64),
                                     np.asarray([rule[i] for i in report], dtype=np.int64))
            self.frames_decoded += len(report)
            t2 = time.perf_counter()
        height, width = frames[0].shape[:2]
        result = p.result(settings, height, width, postprocess(logits, height, width, settings.options))
        post_ms = (time.perf_counter() - t2) * 1000.0
        result.timings = Timings(decode_ms=0.0, model_ms=(t2 - t0) * 1000.0, postprocess_ms=post_ms,
                                 total_ms=(t2 - t0) * 1000.0 + post_ms)
        return result

    def _features(self, name: str, frames: Sequence[np.ndarray], settings: RequestSettings) -> List[np.ndarray]:
        """Every frame's features (3 arrays, one row per frame): kept ones reused, the others encoded together."""
        state = self._stream(name, settings)
        kept = [state.find(f) for f in frames]
        new = [i for i, s in enumerate(kept) if s is None]
        if new:
            eight_bit = to_uint8_clip(frames)  # a no-op for 8-bit frames; else the window's stretch
            tensor = self.predictor.preprocess([eight_bit[i] for i in new])
            encoded = self.predictor.stream.encode(tensor, settings.text_rows(len(new)))
            for row, i in enumerate(new):
                kept[i] = _Seen(frames[i], tuple(np.ascontiguousarray(f[row]) for f in encoded))
        self.frames_encoded += len(new)
        self.frames_reused += len(frames) - len(new)
        state.seen = kept[-KEEP:]
        return [np.stack([s.features[k] for s in kept]) for k in range(3)]

    def _stream(self, name: str, settings: RequestSettings) -> _Stream:
        prompts = tuple(settings.prompts)
        state = self._streams.get(name)
        if state is None or state.prompts != prompts:
            state = self._streams[name] = _Stream(prompts)
        self._streams.move_to_end(name)
        while len(self._streams) > self.max_streams:
            self._streams.popitem(last=False)
        return state


def _checked_report(report: Sequence[int], frames: int) -> List[int]:
    indices = [int(i) for i in report]
    if not indices or any(not 0 <= i < frames for i in indices) or len(set(indices)) != len(indices):
        raise InputError(ErrorCode.INVALID_OPTIONS, f"report must name distinct frames of the window (0..{frames - 1})",
                         "report")
    return indices
