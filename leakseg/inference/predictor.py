"""The one inference path: frames -> checks -> preprocessing -> graph -> post-processing -> ClipResult.

``Predictor`` is the entry point for every caller: the TorchServe handler, the KServe runtime,
`leakseg predict`, `leakseg evaluate` and validation during training::

    predictor = Predictor.from_archive("model_store/jvlgs.mar")   # or Predictor.from_model(net, bank)
    result = predictor.predict(frames)                             # one clip
    settings = predictor.settings(prompts, options)                # a request's cheap checks, once
    results = predictor.run([predictor.prepare(f, settings) for f in clips])   # several, one graph call

``settings`` and ``prepare`` raise ``InputError`` (code, message, field); ``run`` puts the frames
of all prepared clips through ONE graph call, so a TorchServe batch costs one forward.
"""

from __future__ import annotations

import base64
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
from pydantic import ValidationError

from leakseg.inference.manifest import MANIFEST_FILE, ArchiveManifest, archive_file, extract_archive
from leakseg.inference.postprocess import FrameFacts, postprocess
from leakseg.inference.preprocess import preprocess_clip
from leakseg.inference.runtime import TorchGraph, TorchStream, load_graph, load_stream
from leakseg.io.frames import ClipLimits, check_clip, to_uint8_clip
from leakseg.model.family import DEFAULT_FAMILY
from leakseg.model.prompts import PromptBank
from leakseg.model.stream import StreamNetwork
from leakseg.model.temporal import batch_neighbours
from leakseg.schema import (
    BoundingBox, ClipInfo, ClipOptions, ClipResult, ErrorCode, FrameResult, InputError, ModelDescription,
    ModelInfo, Point, ProbabilityMap, RLEMask, Timings,
)
from leakseg.utils.rle import encode_rle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RequestSettings:
    """What a request chose, checked: its prompts (and their text matrix) and its options."""

    prompts: List[str]
    text: Optional[np.ndarray]  # (D, P) the text matrix; None for a model without text (FGSTP)
    options: ClipOptions

    def text_rows(self, frames: int) -> Optional[np.ndarray]:
        """The graph's ``text`` input for ``frames`` frames of this request: (frames, D, P) float32, the text
        matrix once per frame; None for a model without text."""
        if self.text is None:
            return None
        return np.ascontiguousarray(np.broadcast_to(self.text, (frames, *self.text.shape)), dtype=np.float32)


@dataclass
class PreparedClip:
    """A checked, preprocessed clip, ready for the graph."""

    tensor: np.ndarray  # (T, 3, S, S) float32
    settings: RequestSettings
    height: int
    width: int
    prepare_ms: float = 0.0

    @property
    def num_frames(self) -> int:
        return self.tensor.shape[0]


def parse_options(raw, defaults: ClipOptions) -> ClipOptions:
    """Request options over the defaults; bad ones become ``invalid_options``."""
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
        raise InputError(ErrorCode.INVALID_OPTIONS, f"options.{name[:80]}: {first['msg']}", f"options.{name[:80]}") from exc


class Predictor:
    def __init__(self, graph, bank: PromptBank, *, name: str, version: str, config: dict,
                 defaults: Optional[ClipOptions] = None, limits: Optional[ClipLimits] = None,
                 manifest: Optional[ArchiveManifest] = None, prepare_threads: int = 4, stream=None):
        self.graph = graph
        self.stream = stream  # the stream halves (OnnxStream, TorchStream) when loaded: leakseg.inference.stream
        self.bank = bank
        self.name, self.version, self.config = name, version, config
        self.defaults = defaults or ClipOptions()
        self.limits = limits or ClipLimits()
        self.manifest = manifest  # None for a Predictor around an eager model
        self.input_size = int(config["input_size"])
        self.family = config.get("model_type") or DEFAULT_FAMILY  # configs written before FGSTP are JVLGS
        # PIL releases the GIL while resizing, so the frames of a clip are preprocessed in parallel.
        self._pool = ThreadPoolExecutor(max_workers=prepare_threads, thread_name_prefix="leakseg-prep")

    # --- loading ---------------------------------------------------------------------------
    @classmethod
    def from_model_dir(cls, model_dir: Union[str, Path], device: str = "auto", threads: Optional[int] = None,
                       stream: bool = False) -> "Predictor":
        """From an extracted archive (what TorchServe hands a handler); ``stream``: also load the archive's stream
        halves, when it has them (``leakseg.inference.stream.StreamPredictor`` runs them)."""
        d = Path(model_dir)
        # Every file by archive_file: the manifest's names are the archive's, and must not lead outside it.
        manifest = ArchiveManifest.model_validate_json(archive_file(d, MANIFEST_FILE).read_text())
        graph = load_graph(str(archive_file(d, manifest.graph_file)), manifest.format, device, threads)
        bank = PromptBank.load(archive_file(d, manifest.prompt_bank_file))
        halves = None
        if stream and manifest.stream is not None:
            halves = load_stream(str(archive_file(d, manifest.stream.encoder_file)),
                                 str(archive_file(d, manifest.stream.head_file)), manifest.format, device, threads)
        log.info("loaded %s v%s (%s, %s)", manifest.name, manifest.version, manifest.config["backbone"], graph.name)
        return cls(graph, bank, name=manifest.name, version=manifest.version, config=manifest.config,
                   defaults=manifest.postprocess, limits=manifest.limits, manifest=manifest, stream=halves)

    @classmethod
    def from_archive(cls, path: Union[str, Path], device: str = "auto", threads: Optional[int] = None,
                     stream: bool = False) -> "Predictor":
        """From a .mar file or an extracted archive folder. A .mar is unpacked into a private
        temporary folder that is removed once the graph and the prompt bank are in memory."""
        p = Path(path)
        if p.is_dir():
            return cls.from_model_dir(p, device, threads, stream)
        with tempfile.TemporaryDirectory(prefix="leakseg-model-") as tmp:
            return cls.from_model_dir(extract_archive(p, Path(tmp)), device, threads, stream)

    @classmethod
    def from_model(cls, model, bank: PromptBank, *, defaults: Optional[ClipOptions] = None,
                   limits: Optional[ClipLimits] = None, device: str = "auto", threads: Optional[int] = None,
                   input_size: Optional[int] = None, name: str = "eager", version: str = "0") -> "Predictor":
        """Around an eager network (validation during training, evaluation of a checkpoint): the same
        checks, preprocessing and post-processing as an archive, at the config's input size or
        ``input_size``. Puts the model in eval mode. Its stream halves are the same module's
        (``leakseg.model.stream.StreamNetwork``)."""
        graph = TorchGraph(model, device, threads, name="eager")
        halves = TorchStream(StreamNetwork(model, input_size), device, threads, name="eager")
        config = model.config.to_dict()
        if input_size is not None:
            config["input_size"] = int(input_size)
        return cls(graph, bank, name=name, version=version, config=config, defaults=defaults, limits=limits,
                   stream=halves)

    # --- requests ----------------------------------------------------------------------------
    def describe(self) -> ModelDescription:
        return ModelDescription(
            name=self.name,
            version=self.version,
            family=self.family,
            backbone=self.config["backbone"],
            input_size=self.input_size,
            prompt_count=self.bank.prompt_count,
            default_prompts=self.bank.defaults,
            available_prompts=self.bank.prompts,
            min_frames=self.limits.min_frames,
            max_frames=self.limits.max_frames,
            max_frame_pixels=self.limits.max_frame_pixels,
            defaults=self.defaults,
            runtime=self.graph.name,
        )

    def settings(self, prompts=None, options=None) -> RequestSettings:
        """A request's prompts and options, checked against the bank and the defaults (no frames needed)."""
        opts = parse_options(options, self.defaults)
        chosen = self.bank.resolve(prompts)  # prompts_not_supported for a model without text
        text = self.bank.matrix_of(chosen) if self.bank.takes_prompts else None
        return RequestSettings(prompts=chosen, text=text, options=opts)

    def prepare(self, frames: Sequence[np.ndarray], settings: Optional[RequestSettings] = None,
                names: Optional[Sequence[str]] = None) -> PreparedClip:
        """Check a clip against the limits and preprocess it. Raises InputError."""
        t0 = time.perf_counter()
        settings = settings or self.settings()
        check_clip(frames, self.limits, names)
        tensor = self.preprocess(to_uint8_clip(frames))
        h, w = frames[0].shape[:2]
        return PreparedClip(tensor=tensor, settings=settings, height=h, width=w,
                            prepare_ms=(time.perf_counter() - t0) * 1000.0)

    def preprocess(self, frames: Sequence[np.ndarray]) -> np.ndarray:
        """8-bit frames -> the graph's (T, 3, S, S) input, the frames resized in parallel."""
        return preprocess_clip(frames, self.input_size, self._pool)

    def run(self, clips: Sequence[PreparedClip]) -> List[ClipResult]:
        """All frames of all clips through one graph call, then per-clip post-processing."""
        if not clips:
            return []
        t0 = time.perf_counter()
        logits = self._forward(clips)
        model_ms = (time.perf_counter() - t0) * 1000.0 / len(clips)  # the shared forward, split evenly
        results, start = [], 0
        for c in clips:
            t1 = time.perf_counter()
            facts = postprocess(logits[start : start + c.num_frames], c.height, c.width, c.settings.options)
            start += c.num_frames
            result = self.result(c.settings, c.height, c.width, facts)
            post_ms = (time.perf_counter() - t1) * 1000.0
            result.timings = Timings(decode_ms=c.prepare_ms, model_ms=model_ms, postprocess_ms=post_ms,
                                     total_ms=c.prepare_ms + model_ms + post_ms)
            results.append(result)
        return results

    def predict(self, frames: Sequence[np.ndarray], prompts=None, options=None,
                names: Optional[Sequence[str]] = None) -> ClipResult:
        return self.run([self.prepare(frames, self.settings(prompts, options), names)])[0]

    def logits(self, frames: Sequence[np.ndarray], prompts=None):
        """The graph's raw (T, 1, S, S) float logits of one clip, before any post-processing: what
        ``leakseg evaluate --sweep`` thresholds many ways (``postprocess`` of them is ``predict``'s masks)."""
        return self._forward([self.prepare(frames, self.settings(prompts))])

    def _forward(self, clips: Sequence[PreparedClip]):
        """The frames of all clips through one graph call: (sum T, 1, S, S) logits."""
        frames = np.concatenate([c.tensor for c in clips])
        neighbours = np.asarray(batch_neighbours([c.num_frames for c in clips]), dtype=np.int64)
        text = None  # a model without text (FGSTP) has no text input
        if self.bank.takes_prompts:
            text = np.concatenate([c.settings.text_rows(c.num_frames) for c in clips])
        return self.graph(frames, text, neighbours)

    # --- results ---------------------------------------------------------------------------
    def result(self, settings: RequestSettings, height: int, width: int, facts: FrameFacts) -> ClipResult:
        """The answer for post-processed frames of ``height`` x ``width`` (one per row of ``facts``)."""
        pixels = height * width
        frames = []
        for i in range(len(facts.area)):
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
                mask=RLEMask(**encode_rle(facts.masks[i])) if settings.options.return_masks else None,
                probability=_probability_map(facts.probability[i]) if facts.probability is not None else None,
            ))
        leak_frames = [f.index for f in frames if f.leak]
        return ClipResult(
            model=ModelInfo(name=self.name, version=self.version, family=self.family, prompts=settings.prompts),
            clip=ClipInfo(
                frames=len(frames), height=height, width=width,
                leak_detected=bool(leak_frames), leak_frames=leak_frames,
                max_leak_fraction=max(f.area_fraction for f in frames),
            ),
            frames=frames,
        )


def _probability_map(p: np.ndarray) -> ProbabilityMap:
    return ProbabilityMap(size=list(p.shape), data=base64.b64encode(np.ascontiguousarray(p).tobytes()).decode("ascii"))
