"""The export step, end to end: import -> prompt bank -> trace -> verify -> archive."""

from __future__ import annotations

import logging
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

from leakseg import __version__
from leakseg.inference.manifest import GRAPH_FILES, PROMPT_BANK_FILE, ArchiveManifest
from leakseg.io.frames import ClipLimits
from leakseg.schema import ClipOptions

log = logging.getLogger(__name__)


@dataclass
class ExportOptions:
    checkpoint: Path
    name: str = "jvlgs"
    version: str = "1.0"
    format: str = "onnx"
    output_dir: Path = Path("model_store")
    prompts: Optional[List[str]] = None  # the P prompts; default: the checkpoint's
    extra_prompts: List[str] = field(default_factory=list)
    text_model_dir: Optional[Path] = None
    batch_size: int = 4
    max_batch_delay_ms: int = 50
    workers: int = 1
    limits: ClipLimits = field(default_factory=ClipLimits)
    #: Options set on the command line; the rest come from the checkpoint's recommendation
    #: (native config.json "postprocess"), else the family's published defaults.
    postprocess: dict = field(default_factory=dict)
    #: The graph check's tolerance: largest logit difference / the logits' scale (None: the default).
    tolerance: Optional[float] = None
    #: Also archive the network's two halves for camera streams (each frame encoded once; the monitor's
    #: in-process analysis). They add the weights once more to the archive (ONNX: the encoder's).
    stream: bool = True
    #: "int8": ONNX Runtime static quantization of the clip graph (leakseg.export.quantize), calibrated on
    #: generated clips and refused unless its masks agree with the float graph's (IoU >= 0.97).
    quantize: Optional[str] = None
    calibration_clips: int = 16
    check_clips: int = 8
    min_int8_mask_iou: Optional[float] = None  # None: MIN_INT8_MASK_IOU (0.97)

    def postprocess_defaults(self, family: Optional[str] = None) -> ClipOptions:
        """The archive's defaults: the command line's, over the checkpoint's recommendation, over
        the family's published post-processing (FGSTP's test script does not open the masks);
        ``family`` None: the default family's (to check the options before the checkpoint is read)."""
        from leakseg.model import DEFAULT_FAMILY, get_family
        from leakseg.model.checkpoint import native_postprocess_defaults

        published = get_family(family or DEFAULT_FAMILY).published_postprocess
        return ClipOptions(**{**published, **native_postprocess_defaults(self.checkpoint), **self.postprocess})


class _Steps:
    """Numbered progress lines on stderr ("[2/5] embedding prompts ... 1.3 s")."""

    def __init__(self, total: int):
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def start(self, what: str) -> None:
        self.done += 1
        self.t0 = time.perf_counter()
        print(f"[{self.done}/{self.total}] {what} ...", file=sys.stderr, flush=True)

    def finish(self, detail: str = "") -> None:
        took = time.perf_counter() - self.t0
        print(f"      done in {took:.1f} s{': ' + detail if detail else ''}", file=sys.stderr, flush=True)


def import_model(opts: ExportOptions):
    """Step 1: the vision model with its weights, and what can embed prompts for it.

    Returns (model, bank, text_model): a native checkpoint brings its prompt bank and no
    text model; an authors' JVLGS checkpoint brings its fine-tuned text model; a family that
    takes no prompts (FGSTP) gets the empty bank and no text model.
    """
    from leakseg.model import get_family
    from leakseg.model.checkpoint import import_authors_checkpoint, is_native_checkpoint, load_native
    from leakseg.model.prompts import PromptBank
    from leakseg.model.text import build_text_model, load_text_model_dir

    if is_native_checkpoint(opts.checkpoint):
        model, bank = load_native(opts.checkpoint)
        text_model = load_text_model_dir(opts.text_model_dir) if opts.text_model_dir and bank.takes_prompts else None
        return model, bank, text_model
    model, text_sd = import_authors_checkpoint(opts.checkpoint, opts.prompts)
    if not get_family(model.family).takes_prompts:
        return model, PromptBank.empty(), None
    if text_sd:
        return model, None, build_text_model(model.config.text_model, text_sd)
    if opts.text_model_dir is not None:
        return model, None, load_text_model_dir(opts.text_model_dir)
    raise ValueError("the checkpoint has no text model (nlpmodel.*); pass --text-model DIR")


def make_prompt_bank(opts: ExportOptions, model, bank, text_model):
    """Step 2: embeddings of the P prompts and the extra ones, computed once (none for a family that
    takes no prompts)."""
    from leakseg.model import get_family
    from leakseg.model.text import build_prompt_bank
    from leakseg.model.tokenizer import load_tokenizer
    from leakseg.model.prompts import PromptBank

    if not get_family(model.family).takes_prompts:
        if opts.prompts or opts.extra_prompts:
            raise ValueError(f"this is an {model.family.upper()} checkpoint, which takes no prompts; "
                             "drop --prompts/--extra-prompts")
        return PromptBank.empty()

    defaults = opts.prompts or (bank.defaults if bank else model.config.prompts)
    wanted = [*defaults, *opts.extra_prompts]
    if bank is not None and all(p in bank.prompts for p in wanted):
        return PromptBank(bank.prompts, bank.embeddings, defaults)  # a native bank already has them
    if text_model is None:
        missing = [p for p in wanted if p not in bank.prompts]
        raise ValueError(
            f"the native checkpoint has no embeddings for {missing} and carries no text encoder; "
            "pass --text-model DIR to embed new prompts"
        )
    new = build_prompt_bank(text_model, load_tokenizer(opts.text_model_dir), defaults, opts.extra_prompts)
    if new.dim != model.config.text_dim:
        raise ValueError(f"prompt embeddings have width {new.dim}, the model expects {model.config.text_dim}")
    return new


def export_archive(opts: ExportOptions) -> Path:
    from leakseg.export.archive import write_archive
    from leakseg.model import get_family
    from leakseg.model.checkpoint import checkpoint_sha256
    from leakseg.export.graph import OPSET, check_graph, export_onnx, export_torchscript
    from leakseg.inference.runtime import load_graph

    if opts.format not in GRAPH_FILES:
        raise ValueError(f"--format must be one of {sorted(GRAPH_FILES)}")
    opts.postprocess_defaults()  # a bad value fails here, before any work
    if opts.tolerance is not None and not opts.tolerance > 0:
        raise ValueError(f"--tolerance must be positive, got {opts.tolerance}")
    if opts.quantize not in (None, "int8"):
        raise ValueError(f"--quantize must be int8, got {opts.quantize!r}")
    if opts.quantize and opts.format != "onnx":
        raise ValueError("--quantize int8 needs --format onnx (ONNX Runtime's static quantization)")
    steps = _Steps(5 + bool(opts.stream) + bool(opts.quantize))
    steps.start(f"importing {opts.checkpoint}")
    model, bank, text_model = import_model(opts)
    postprocess = opts.postprocess_defaults(model.family)
    takes_prompts = get_family(model.family).takes_prompts
    steps.finish(f"{model.family.upper()}, {model.config.backbone}"
                 + (f", P={model.config.prompt_count}" if takes_prompts else ""))
    steps.start("embedding prompts")
    bank = make_prompt_bank(opts, model, bank, text_model)
    steps.finish(f"{len(bank.prompts)} prompts, defaults {bank.defaults}" if bank.takes_prompts
                 else "none: this model takes no prompts")
    with tempfile.TemporaryDirectory(prefix="leakseg-export-") as tmp:
        graph_path = Path(tmp) / GRAPH_FILES[opts.format]
        steps.start(f"tracing the clip graph ({opts.format})")
        (export_onnx if opts.format == "onnx" else export_torchscript)(model, graph_path)
        steps.finish(f"{graph_path.stat().st_size / 1e6:.1f} MB")
        steps.start("checking the exported graph against the eager model")
        check = check_graph(model, load_graph(str(graph_path), opts.format, device="cpu"), postprocess,
                            opts.tolerance)
        steps.finish(check.summary())
        if not check.passed:
            raise RuntimeError(
                f"the exported graph does not match the eager model: {check.summary()}; refusing to archive "
                "(--tolerance sets the relative limit when you know the difference is harmless)"
            )
        quantized = None
        if opts.quantize:
            steps.start(f"quantizing the clip graph to int8 ({opts.calibration_clips} calibration clips, "
                        f"{opts.check_clips} check clips)")
            graph_path, quantized = quantize_checked(model, bank, postprocess, graph_path, opts)
            steps.finish(quantized["summary"])
        stream, stream_paths = None, []
        if opts.stream:
            steps.start(f"tracing and checking the stream halves ({opts.format})")
            stream, stream_paths = export_checked_stream(model, opts, postprocess, Path(tmp))
            steps.finish(f"{sum(p.stat().st_size for p in set(stream_paths)) / 1e6:.1f} MB; {stream.check['summary']}")
        steps.start("writing the archive")
        bank_path = Path(tmp) / PROMPT_BANK_FILE
        bank.save(bank_path)
        config = model.config.to_dict()
        if bank.takes_prompts:
            config["prompts"] = list(bank.defaults)
        manifest = ArchiveManifest(
            name=opts.name,
            version=opts.version,
            leakseg_version=__version__,
            format=opts.format,
            graph_file=graph_path.name,
            config=config,
            postprocess=postprocess,
            limits=opts.limits,
            checkpoint=Path(opts.checkpoint).name,
            checkpoint_sha256=checkpoint_sha256(opts.checkpoint),
            max_abs_logit_error=check.max_abs_error,
            graph_check=check.to_dict(),
            opset=OPSET if opts.format == "onnx" else None,
            stream=stream,
            quantization=quantized,
        )
        mar = write_archive(graph_path, bank_path, manifest, Path(opts.output_dir),
                            opts.batch_size, opts.max_batch_delay_ms, opts.workers, extra_files=stream_paths)
        steps.finish(str(mar))
    return mar


def export_checked_stream(model, opts: ExportOptions, postprocess, folder: Path):
    """The stream halves in ``folder``, checked like the clip graph: (StreamFiles, their paths)."""
    from leakseg.export.graph import check_stream, export_stream
    from leakseg.inference.manifest import StreamFiles
    from leakseg.inference.runtime import load_stream

    encoder, head = export_stream(model, opts.format, folder)
    check = check_stream(model, load_stream(str(encoder), str(head), opts.format, device="cpu"), postprocess,
                         opts.tolerance)
    if not check.passed:
        raise RuntimeError(f"the stream halves do not match the eager model: {check.summary()}; refusing to "
                           "archive (--no-stream archives the clip graph alone)")
    files = StreamFiles(encoder_file=encoder.name, head_file=head.name, check={**check.to_dict(),
                                                                                "summary": check.summary()})
    return files, [encoder, head]


def quantize_checked(model, bank, postprocess, graph_path: Path, opts: ExportOptions):
    """The int8 clip graph beside ``graph_path`` and its check against the float graph: (path, check as a dict).
    Calibration and check clips are generated (leakseg.synth), distinct seeds; preprocessed as requests are."""
    from leakseg.export.quantize import calibration_feeds, check_quantized, quantize_onnx, synthetic_clips
    from leakseg.inference import Predictor

    predictor = Predictor.from_model(model, bank, defaults=postprocess, device="cpu")
    clips = synthetic_clips(opts.calibration_clips + opts.check_clips)
    feeds = calibration_feeds(predictor, clips)
    int8_path = graph_path.with_name("graph.int8.onnx")
    quantize_onnx(graph_path, int8_path, feeds[:opts.calibration_clips])
    check = check_quantized(graph_path, int8_path, feeds[opts.calibration_clips:], postprocess)
    if opts.min_int8_mask_iou is not None:
        check.min_mask_iou = opts.min_int8_mask_iou
    if not check.passed:
        raise RuntimeError(f"the int8 graph's masks differ from the float graph's: {check.summary()}; refusing "
                           "to archive it (export without --quantize)")
    return int8_path, {**check.to_dict(), "summary": check.summary(), "calibration_clips": opts.calibration_clips}
