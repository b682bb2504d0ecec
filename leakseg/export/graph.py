"""Tracing the clip graph (every frame encoded once, every frame's triplet decoded) and checking it."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from leakseg.model import JVLGS, batch_neighbours

log = logging.getLogger(__name__)

INPUT_NAMES = ["frames", "text", "neighbours"]
OPSET = 17
#: Export refuses to archive a graph whose logits differ from the eager model's by more.
MAX_LOGIT_ERROR = 1e-3


def example_inputs(model: JVLGS, clip_lengths=(3, 4), seed: int = 0):
    """Frames of several clips in one batch, with each clip's own text matrix."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    n = sum(clip_lengths)
    frames = torch.randn(n, 3, cfg.input_size, cfg.input_size, generator=g)
    text_rows = [torch.randn(1, cfg.text_dim, cfg.prompt_count, generator=g).expand(length, -1, -1)
                 for length in clip_lengths]
    return frames, torch.cat(text_rows).contiguous(), torch.tensor(batch_neighbours(clip_lengths), dtype=torch.int64)


def export_onnx(model: JVLGS, path: Path) -> None:
    # dynamo=False: the TorchScript-based exporter keeps the frame axis dynamic; the dynamo
    # exporter fixed it to the example's size on this model (and is much slower for b5).
    dynamic = {name: {0: "frames"} for name in INPUT_NAMES + ["logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example_inputs(model), str(path), input_names=INPUT_NAMES, output_names=["logits"],
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
        )


def export_torchscript(model: JVLGS, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated but still the portable choice
        traced = torch.jit.trace(model, example_inputs(model), check_trace=False)
    traced.save(str(path))


@torch.no_grad()
def max_logit_error(model: JVLGS, graph) -> float:
    """Largest |logit difference| between a runtime graph and the eager model on a random batch
    of two clips of other lengths than the trace's, so a fixed frame axis would be caught."""
    frames, text, neighbours = example_inputs(model, clip_lengths=(5, 3), seed=1)
    expected = model(frames, text, neighbours)
    got = graph(frames.numpy(), text.numpy(), neighbours.numpy()).cpu()
    if got.shape != expected.shape:
        raise RuntimeError(f"exported graph returned {tuple(got.shape)}, expected {tuple(expected.shape)}")
    return float(np.abs(got.numpy() - expected.numpy()).max())
