"""The in-process pipeline: frames -> preprocessing -> graph -> post-processing -> ClipResult.

``Predictor`` is the one entry point, used by `leakseg predict` and by the TorchServe handler:

    predictor = Predictor.from_archive("model_store/jvlgs.mar")
    result = predictor.predict(frames)                 # one clip
    results = predictor.run([predictor.prepare(f) for f in clips])   # several, one graph call

``prepare`` validates a request and raises ``InputError`` (code, message, field); ``run`` puts
the frames of all prepared clips through ONE graph call, so a TorchServe batch costs one forward.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from pydantic import ValidationError

from leakseg.errors import InputError
from leakseg.frames import check_frame, to_uint8_clip
from leakseg.manifest import MANIFEST_FILE, ArchiveManifest
from leakseg.model.jvlgs import triplet_neighbours
from leakseg.postprocess import FrameFacts, postprocess
from leakseg.preprocess import preprocess_clip
from leakseg.prompts import PromptBank
from leakseg.runtime import load_graph
from leakseg.schema import (
    BoundingBox, ClipInfo, ClipOptions, ClipResult, ErrorCode, FrameResult, ModelDescription,
    ModelInfo, Point, ProbabilityMap, RLEMask, Timings,
)
from leakseg.utils.rle import encode_rle

log = logging.getLogger(__name__)


@dataclass
class PreparedClip:
    """A validated request, ready for the graph."""

    tensor: np.ndarray  # (T, 3, S, S) float32
    text: np.ndarray  # (D, P) the text matrix
    prompts: List[str]
    options: ClipOptions
    height: int
    width: int
    decode_ms: float = 0.0
    request_id: Optional[str] = None

    @property
    def num_frames(self) -> int:
        return self.tensor.shape[0]


def parse_options(raw, defaults: ClipOptions) -> ClipOptions:
    """Request options over the archive's defaults; bad ones become ``invalid_options``."""
    if raw is None:
        return defaults
    if isinstance(raw, ClipOptions):
        return raw
    if not isinstance(raw, dict):
        raise InputError(ErrorCode.INVALID_OPTIONS, "options must be a JSON object", "options")
    try:
        return ClipOptions.model_validate({**defaults.model_dump(), **raw})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"]) or "options"
        raise InputError(ErrorCode.INVALID_OPTIONS, f"options.{name}: {first['msg']}", f"options.{name}") from exc


class Predictor:
    def __init__(self, manifest: ArchiveManifest, graph, bank: PromptBank, decode_threads: int = 4):
        self.manifest = manifest
        self.graph = graph
        self.bank = bank
        self.input_size = int(manifest.config["input_size"])
        self._pool = ThreadPoolExecutor(max_workers=decode_threads, thread_name_prefix="leakseg-prep")

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def from_model_dir(cls, model_dir: Union[str, Path], device: str = "auto", threads: Optional[int] = None) -> "Predictor":
        """From an extracted archive (what TorchServe hands a handler)."""
        d = Path(model_dir)
        manifest = ArchiveManifest.model_validate_json((d / MANIFEST_FILE).read_text())
        graph = load_graph(str(d / manifest.graph_file), manifest.format, device, threads)
        bank = PromptBank.load(d / manifest.prompt_bank_file)
        log.info("loaded %s v%s (%s, %s)", manifest.name, manifest.version, manifest.config["backbone"], graph.name)
        return cls(manifest, graph, bank)

    @classmethod
    def from_archive(cls, path: Union[str, Path], device: str = "auto", threads: Optional[int] = None) -> "Predictor":
        """From a .mar file or an extracted archive folder."""
        p = Path(path)
        if p.is_dir():
            return cls.from_model_dir(p, device, threads)
        from leakseg.export.archive import extract_archive

        return cls.from_model_dir(extract_archive(p), device, threads)

    # --- requests ----------------------------------------------------------------------------
    def describe(self) -> ModelDescription:
        limits = self.manifest.limits
        return ModelDescription(
            name=self.manifest.name,
            version=self.manifest.version,
            backbone=self.manifest.config["backbone"],
            input_size=self.input_size,
            prompt_count=self.bank.prompt_count,
            default_prompts=self.bank.defaults,
            available_prompts=self.bank.prompts,
            min_frames=limits.min_frames,
            max_frames=limits.max_frames,
            max_frame_pixels=limits.max_frame_pixels,
            defaults=self.manifest.postprocess,
            runtime=self.graph.name,
        )

    def check_frames(self, frames: Sequence[np.ndarray], names: Optional[Sequence[str]] = None) -> None:
        """Count, dtype, shape, equal sizes and the pixel limit; raises InputError naming the frame."""
        limits = self.manifest.limits
        if len(frames) == 0:
            raise InputError(ErrorCode.NO_FRAMES, "the request holds no frames", "frames")
        if len(frames) < limits.min_frames:
            raise InputError(
                ErrorCode.TOO_FEW_FRAMES,
                f"a clip needs at least {limits.min_frames} frames (each frame is segmented with its two "
                f"neighbours), got {len(frames)}", "frames")
        if len(frames) > limits.max_frames:
            raise InputError(
                ErrorCode.TOO_MANY_FRAMES, f"at most {limits.max_frames} frames per request, got {len(frames)}", "frames")
        names = list(names) if names is not None else [f"frame {i}" for i in range(len(frames))]
        size = frames[0].shape[:2]
        for name, frame in zip(names, frames):
            check_frame(frame, name)
            if frame.shape[0] * frame.shape[1] > limits.max_frame_pixels:
                raise InputError(
                    ErrorCode.FRAME_TOO_LARGE,
                    f"{name} is {frame.shape[1]}x{frame.shape[0]} pixels; the limit is {limits.max_frame_pixels} "
                    "pixels per frame", name)
            if frame.shape[:2] != size:
                raise InputError(
                    ErrorCode.FRAME_SIZE_MISMATCH,
                    f"{name} is {frame.shape[1]}x{frame.shape[0]} but {names[0]} is {size[1]}x{size[0]}; "
                    "all frames of a clip must have one size", name)

    def prepare(self, frames: Sequence[np.ndarray], prompts=None, options=None,
                names: Optional[Sequence[str]] = None, request_id: Optional[str] = None,
                decode_ms: float = 0.0) -> PreparedClip:
        """Validate a request and preprocess its frames. Raises InputError."""
        t0 = time.perf_counter()
        opts = parse_options(options, self.manifest.postprocess)
        chosen = self.bank.resolve(prompts)
        self.check_frames(frames, names)
        tensor = preprocess_clip(to_uint8_clip(frames), self.input_size, self._pool)
        h, w = frames[0].shape[:2]
        return PreparedClip(
            tensor=tensor, text=self.bank.matrix(chosen), prompts=chosen, options=opts, height=h, width=w,
            decode_ms=decode_ms + (time.perf_counter() - t0) * 1000.0, request_id=request_id,
        )

    def run(self, clips: Sequence[PreparedClip]) -> List[ClipResult]:
        """All frames of all clips through one graph call, then per-clip post-processing."""
        if not clips:
            return []
        t0 = time.perf_counter()
        frames = np.concatenate([c.tensor for c in clips])
        text = np.concatenate([np.broadcast_to(c.text, (c.num_frames, *c.text.shape)) for c in clips])
        neighbours, start = [], 0
        for c in clips:
            neighbours += [(a + start, b + start) for a, b in triplet_neighbours(c.num_frames)]
            start += c.num_frames
        logits = self.graph(frames, np.ascontiguousarray(text, dtype=np.float32), np.asarray(neighbours, dtype=np.int64))
        model_ms = (time.perf_counter() - t0) * 1000.0 / len(clips)  # the shared forward, split evenly
        results, start = [], 0
        for c in clips:
            t1 = time.perf_counter()
            facts = postprocess(logits[start : start + c.num_frames], c.height, c.width, c.options)
            start += c.num_frames
            result = self._result(c, facts)
            post_ms = (time.perf_counter() - t1) * 1000.0
            result.timings = Timings(decode_ms=c.decode_ms, model_ms=model_ms, postprocess_ms=post_ms,
                                     total_ms=c.decode_ms + model_ms + post_ms)
            results.append(result)
        return results

    def predict(self, frames: Sequence[np.ndarray], prompts=None, options=None) -> ClipResult:
        return self.run([self.prepare(frames, prompts, options)])[0]

    # --- results ---------------------------------------------------------------------------
    def _result(self, clip: PreparedClip, facts: FrameFacts) -> ClipResult:
        pixels = clip.height * clip.width
        frames = []
        for i in range(clip.num_frames):
            area = int(facts.area[i])
            x, y, w, h = (int(v) for v in facts.bbox[i])
            frames.append(FrameResult(
                index=i,
                leak=area > 0,
                area_pixels=area,
                area_fraction=area / pixels,
                bbox=BoundingBox(x=x, y=y, width=w, height=h) if area else None,
                centroid=Point(x=float(facts.centroid[i, 0]), y=float(facts.centroid[i, 1])) if area else None,
                max_score=float(facts.max_score[i]),
                mask=RLEMask(**encode_rle(facts.masks[i])) if clip.options.return_masks else None,
                probability=_probability_map(facts.probability[i]) if facts.probability is not None else None,
            ))
        leak_frames = [f.index for f in frames if f.leak]
        return ClipResult(
            request_id=clip.request_id,
            model=ModelInfo(name=self.manifest.name, version=self.manifest.version, prompts=clip.prompts),
            clip=ClipInfo(
                frames=clip.num_frames, height=clip.height, width=clip.width,
                leak_detected=bool(leak_frames), leak_frames=leak_frames,
                max_leak_fraction=max(f.area_fraction for f in frames),
            ),
            frames=frames,
        )


def _probability_map(p: np.ndarray) -> ProbabilityMap:
    import base64

    return ProbabilityMap(size=list(p.shape), data=base64.b64encode(np.ascontiguousarray(p).tobytes()).decode("ascii"))
