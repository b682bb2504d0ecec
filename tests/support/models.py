"""Small real models for tests: PVTv2-b0 (with a 2-layer, 64-wide text model for a family that takes
prompts), seeded end to end, and checkpoints of them in the authors' layout."""

from __future__ import annotations

from pathlib import Path

SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def small_model(backbone: str = "pvt_v2_b0", seed: int = 0, family: str = "jvlgs"):
    """A model of ``family`` (a small text width when it takes prompts), randomised (BN statistics too) so
    outputs are not trivial."""
    import torch
    from support.authors_format import randomise_

    from leakseg.model import TextModelConfig, build_model, get_family

    text = dict(text_dim=SMALL_TEXT["hidden_size"], text_model=TextModelConfig(**SMALL_TEXT))
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the weights' own init too: the same model whatever ran before
        model = build_model(backbone, family, **(text if get_family(family).takes_prompts else {}))
    return randomise_(model, seed)


def write_authors_checkpoint(path: Path, family: str = "jvlgs") -> Path:
    """``small_model(family=family)`` saved as the authors' code saves it (``module.`` prefix), with a
    randomised text model when the family takes prompts."""
    import torch
    from support.authors_format import randomise_, to_authors_state_dict

    from leakseg.model import get_family
    from leakseg.model.text import build_text_model

    model = small_model(family=family)
    text_model = None
    if get_family(family).takes_prompts:
        with torch.random.fork_rng():
            torch.manual_seed(1)
            text_model = randomise_(build_text_model(model.config.text_model), seed=1)
    torch.save(to_authors_state_dict(model, text_model, prefix="module."), path)
    return path


def export_default_archive(output_dir: Path) -> Path:
    """The bundled default model (model_store/jvlgs-default) exported exactly as `make demo` exports it: ONNX,
    the checkpoint's own post-processing defaults (the tests' `default_archive`, the benchmarks' model)."""
    import warnings

    from leakseg.export.exporter import ExportOptions, export_archive

    checkpoint = Path(__file__).resolve().parents[2] / "model_store" / "jvlgs-default"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_archive(ExportOptions(checkpoint=checkpoint, name="jvlgs", output_dir=output_dir))
