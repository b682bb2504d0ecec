"""The export step, end to end: import -> prompt bank -> trace -> verify -> archive."""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from leakseg import __version__
from leakseg.manifest import GRAPH_FILES, PROMPT_BANK_FILE, ArchiveManifest, ClipLimits
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
    postprocess: ClipOptions = field(default_factory=ClipOptions)


def _steps(total: int):
    from tqdm import tqdm

    return tqdm(total=total, desc="export", unit="step", bar_format="{desc}: {n}/{total} {postfix}")


def load_model_and_bank(opts: ExportOptions):
    """Steps 1-2: the vision model with weights, and the prompt bank for the chosen prompts."""
    from leakseg.export.checkpoint import import_authors_checkpoint, is_native_checkpoint, load_native
    from leakseg.export.text import build_prompt_bank, build_text_model, load_text_model_dir
    from leakseg.export.tokenizer import load_tokenizer

    if is_native_checkpoint(opts.checkpoint):
        model, bank = load_native(opts.checkpoint)
        wanted = [*(opts.prompts or bank.defaults), *opts.extra_prompts]
        if all(p in bank.prompts for p in wanted):
            if opts.prompts:
                bank = type(bank)(bank.prompts, bank.embeddings, opts.prompts)
            return model, bank
        if opts.text_model_dir is None:
            missing = [p for p in wanted if p not in bank.prompts]
            raise ValueError(
                f"the native checkpoint has no embeddings for {missing} and carries no text encoder; "
                "pass --text-model DIR to embed new prompts"
            )
        text_model = load_text_model_dir(opts.text_model_dir)
    else:
        model, text_sd = import_authors_checkpoint(opts.checkpoint, opts.prompts)
        if text_sd:
            text_model = build_text_model(model.config.text_model, text_sd)
        elif opts.text_model_dir is not None:
            text_model = load_text_model_dir(opts.text_model_dir)
        else:
            raise ValueError("the checkpoint has no text model (nlpmodel.*); pass --text-model DIR")
    tokenizer = load_tokenizer(opts.text_model_dir)
    defaults = opts.prompts or model.config.prompts
    bank = build_prompt_bank(text_model, tokenizer, defaults, opts.extra_prompts)
    if bank.dim != model.config.text_dim:
        raise ValueError(f"prompt embeddings have width {bank.dim}, the model expects {model.config.text_dim}")
    return model, bank


def export_archive(opts: ExportOptions) -> Path:
    from leakseg.export.checkpoint import checkpoint_sha256
    from leakseg.export.archive import write_archive
    from leakseg.export.graph import MAX_LOGIT_ERROR, OPSET, export_onnx, export_torchscript, max_logit_error
    from leakseg.runtime import load_graph

    if opts.format not in GRAPH_FILES:
        raise ValueError(f"--format must be one of {sorted(GRAPH_FILES)}")
    bar = _steps(5)
    bar.set_postfix_str(f"importing {opts.checkpoint}")
    model, bank = load_model_and_bank(opts)
    bar.update(2)
    log.info("model: %s, P=%d prompts %s; %d prompts in the bank", model.config.backbone,
             model.config.prompt_count, bank.defaults, len(bank.prompts))
    with tempfile.TemporaryDirectory(prefix="leakseg-export-") as tmp:
        graph_path = Path(tmp) / GRAPH_FILES[opts.format]
        bar.set_postfix_str(f"tracing the clip graph ({opts.format})")
        (export_onnx if opts.format == "onnx" else export_torchscript)(model, graph_path)
        bar.update(1)
        bar.set_postfix_str("checking the graph against the eager model")
        error = max_logit_error(model, load_graph(str(graph_path), opts.format, device="cpu"))
        log.info("largest |logit difference|, exported vs eager: %.3g (limit %g)", error, MAX_LOGIT_ERROR)
        if not error <= MAX_LOGIT_ERROR:
            bar.close()
            raise RuntimeError(
                f"the exported graph differs from the eager model by {error:.3g} in the logits "
                f"(limit {MAX_LOGIT_ERROR}); refusing to archive"
            )
        bar.update(1)
        bar.set_postfix_str("writing the archive")
        bank_path = Path(tmp) / PROMPT_BANK_FILE
        bank.save(bank_path)
        config = model.config.to_dict()
        config["prompts"] = list(bank.defaults)
        manifest = ArchiveManifest(
            name=opts.name,
            version=opts.version,
            leakseg_version=__version__,
            format=opts.format,
            graph_file=graph_path.name,
            config=config,
            postprocess=opts.postprocess,
            limits=opts.limits,
            checkpoint=Path(opts.checkpoint).name,
            checkpoint_sha256=checkpoint_sha256(opts.checkpoint),
            max_abs_logit_error=error,
            opset=OPSET if opts.format == "onnx" else None,
        )
        mar = write_archive(graph_path, bank_path, manifest, Path(opts.output_dir),
                            opts.batch_size, opts.max_batch_delay_ms, opts.workers)
        bar.update(1)
        bar.set_postfix_str(str(mar))
    bar.close()
    return mar
