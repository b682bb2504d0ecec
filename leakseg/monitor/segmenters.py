"""The model behind the monitor: the leakseg service through the client SDK, or a .mar in process."""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from leakseg.monitor.config import CameraConfig
from leakseg.monitor.detectability import PictureMetrics, measure_window
from leakseg.monitor.windows import Window
from leakseg.schema import ClipResult, RLEMask
from leakseg.utils.rle import decode_rle

log = logging.getLogger("leakseg.monitor")


class Segmenter:
    """``segment(frames, prompts, options) -> ClipResult``, blocking, thread-safe. A segmenter that
    ``streams`` also keeps each stream's frame features: ``segment_stream`` encodes only the frames of a
    window it has not seen and answers for the frames asked for (leakseg.inference.stream)."""

    name = "segmenter"
    streams = False

    def segment(self, clip: np.ndarray, prompts: Optional[List[str]], options: Dict[str, Any]) -> ClipResult:
        raise NotImplementedError  # pragma: no cover - interface

    def segment_stream(self, stream: str, frames: List[np.ndarray], report: range, prompts: Optional[List[str]],
                       options: Dict[str, Any]) -> ClipResult:
        raise NotImplementedError  # pragma: no cover - only when ``streams``

    def close(self) -> None:
        pass


class ServiceSegmenter(Segmenter):
    """Through the leakseg HTTP service with the client SDK (retries: connection errors and 503 once)."""

    def __init__(self, url: str, model: str, key_file: Optional[str], token_env: str, timeout: float,
                 pool_size: int):
        from leakseg.client import LeakSegClient

        self.client = LeakSegClient(url, token=os.environ.get(token_env) or None, model=model, timeout=timeout,
                                    retries=1, key_file=key_file, pool_size=pool_size, backoff=0.2, max_backoff=1.0)
        self.name = f"service {self.client.url}"

    def segment(self, clip, prompts, options):
        return self.client.segment(clip, prompts, options=options)

    def close(self) -> None:
        self.client.close()


class ArchiveSegmenter(Segmenter):
    """In process, from a .mar archive (``--archive``): no TorchServe needed. With the archive's stream halves
    (and ``stream``), each camera's frames are encoded once (``streams``)."""

    def __init__(self, archive: str, device: str = "cpu", stream: bool = True):
        from leakseg.inference import Predictor, StreamPredictor

        self.predictor = Predictor.from_archive(archive, device=device, stream=stream)
        self.streamer = StreamPredictor(self.predictor) if self.predictor.stream is not None else None
        self.streams = self.streamer is not None
        self.lock = threading.Lock()
        self.name = f"archive {archive}" + (" (streams)" if self.streams else "")

    def segment(self, clip, prompts, options):
        with self.lock:
            return self.predictor.predict(list(clip), prompts, options)

    def segment_stream(self, stream, frames, report, prompts, options):
        with self.lock:
            return self.streamer.predict(stream, frames, report, prompts, options)


class InvalidAnswer(ValueError):
    """The service answered 200 with something that does not fit the clip sent (a typed refusal)."""


@dataclass
class Answer:
    """The answer for a window's *reported* frames (``window.reported``, in order), checked against the frames
    sent, and their masks (F x H x W bool), decoded once; and the window's picture
    (:mod:`leakseg.monitor.detectability`), measured here, off the loop (None: not checked)."""

    result: ClipResult
    masks: np.ndarray
    picture: Optional[PictureMetrics] = None


def segment_window(segmenter: Segmenter, camera: CameraConfig, window: Window) -> Tuple[Optional[Answer], Optional[str]]:
    """In a pool thread: (Answer, None) or (None, reason); every failure (and every answer that does not fit
    what was sent) is the service's fault."""
    from leakseg.client.errors import LeakSegError

    try:
        frames = [f.pixels for f in window.frames]
        size = frames[0].shape[:2]
        report = range(window.first, window.first + window.final)
        if segmenter.streams:
            result = segmenter.segment_stream(window.stream, frames, report, camera.prompts, dict(camera.options))
            masks = checked_masks(result, len(report), size)
        else:
            result = segmenter.segment(np.stack(frames), camera.prompts, dict(camera.options))
            result, masks = reported_part(result, checked_masks(result, len(frames), size), report)
        picture = measure_window(frames) if camera.detectability.enabled else None
        return Answer(result, masks, picture), None
    except InvalidAnswer as exc:
        return None, f"invalid answer: {exc}"
    except LeakSegError as exc:
        return None, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - in-process errors (InputError, runtime) are service faults too
        log.debug("segment failed", exc_info=True)
        return None, f"{type(exc).__name__}: {exc}"


def reported_part(result: ClipResult, masks: np.ndarray, report: range) -> Tuple[ClipResult, np.ndarray]:
    """A whole window's answer cut to its reported frames, numbered from 0 (the clip facts recomputed)."""
    if len(report) == len(result.frames):
        return result, masks
    frames = [f.model_copy(update={"index": i}) for i, f in enumerate(result.frames[report.start:report.stop])]
    leaks = [f.index for f in frames if f.leak]
    clip = result.clip.model_copy(update={"frames": len(frames), "leak_detected": bool(leaks), "leak_frames": leaks,
                                          "max_leak_fraction": max(f.area_fraction for f in frames)})
    return result.model_copy(update={"frames": frames, "clip": clip}), masks[report.start:report.stop]


def checked_masks(result: ClipResult, frames: int, size: Tuple[int, int]) -> np.ndarray:
    """The answer's masks, after checking it against the clip sent: ``frames`` frames of ``size`` (H, W).

    Everything is checked before anything is allocated, so a proxy's short answer, another model's size
    or an RLE that does not decode is an :class:`InvalidAnswer`, never an IndexError or a huge array."""
    height, width = size
    if len(result.frames) != frames or result.clip.frames != frames:
        raise InvalidAnswer(f"{len(result.frames)} frame results (clip.frames {result.clip.frames}) "
                            f"for {frames} frames sent")
    if (result.clip.height, result.clip.width) != (height, width):
        raise InvalidAnswer(f"clip size {result.clip.width}x{result.clip.height}, the frames sent are {width}x{height}")
    masks = np.zeros((frames, height, width), dtype=bool)
    for i, frame in enumerate(result.frames):
        masks[i] = _frame_mask(frame.mask, i, height, width)
    return masks


def _frame_mask(mask: Optional[RLEMask], index: int, height: int, width: int) -> np.ndarray:
    if mask is None:
        raise InvalidAnswer(f"frame {index} has no mask (the monitor asks for masks)")
    if list(mask.size) != [height, width]:
        raise InvalidAnswer(f"frame {index}: mask size {mask.size}, the frames sent are [{height}, {width}]")
    try:
        return decode_rle({"size": [height, width], "counts": mask.counts})  # the counts checked first
    except ValueError as exc:
        raise InvalidAnswer(f"frame {index}: the mask's RLE does not decode to the frame: {exc}") from exc
