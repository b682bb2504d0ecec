"""Tracing the clip graph (every frame encoded once, every frame's triplet decoded) and checking it; the
same for the stream halves (each frame's features once, each triplet decoded when complete)."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from leakseg.model import TripletNetwork, batch_neighbours, triplet_neighbours
from leakseg.model.stream import StreamNetwork

log = logging.getLogger(__name__)

OPSET = 17
#: Default of ``--tolerance``: export refuses to archive a graph whose largest logit difference from the
#: eager model exceeds this share of the logits' scale (their largest magnitude, at least 1).
RELATIVE_TOLERANCE = 1e-3
#: ... or whose post-processed masks over the check clips agree with the eager model's less than this (IoU).
MIN_MASK_IOU = 0.99


def example_inputs(model: TripletNetwork, clip_lengths=(3, 4), seed: int = 0):
    """The graph's inputs (``model.input_names``) for frames of several clips in one batch;
    a JVLGS gets each clip's own text matrix."""
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    n = sum(clip_lengths)
    inputs = {"frames": torch.randn(n, 3, cfg.input_size, cfg.input_size, generator=g)}
    if "text" in model.input_names:
        text_rows = [torch.randn(1, cfg.text_dim, cfg.prompt_count, generator=g).expand(length, -1, -1)
                     for length in clip_lengths]
        inputs["text"] = torch.cat(text_rows).contiguous()
    inputs["neighbours"] = torch.tensor(batch_neighbours(clip_lengths), dtype=torch.int64)
    return tuple(inputs[name] for name in model.input_names)


def export_onnx(model: TripletNetwork, path: Path) -> None:
    # dynamo=False: the TorchScript-based exporter keeps the frame axis dynamic; the dynamo
    # exporter fixed it to the example's size on this model (and is much slower for b5).
    names = list(model.input_names)
    dynamic = {name: {0: "frames"} for name in names + ["logits"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example_inputs(model), str(path), input_names=names, output_names=["logits"],
            dynamic_axes=dynamic, opset_version=OPSET, dynamo=False,
        )


def export_torchscript(model: TripletNetwork, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated but still the portable choice
        traced = torch.jit.trace(model, example_inputs(model), check_trace=False)
    traced.save(str(path))


@dataclass
class GraphCheck:
    """How an exported graph agrees with the eager model on the check clips."""

    max_abs_error: float  # largest |logit difference|
    logit_scale: float  # largest |logit| of the eager model
    relative_error: float  # max_abs_error / max(logit_scale, 1)
    mask_iou: float  # IoU of the post-processed masks, all check frames together (1.0: identical)
    tolerance: float = RELATIVE_TOLERANCE
    min_mask_iou: float = MIN_MASK_IOU

    @property
    def passed(self) -> bool:
        return self.relative_error <= self.tolerance and self.mask_iou >= self.min_mask_iou

    def summary(self) -> str:
        return (f"largest |logit difference| {self.max_abs_error:.3g} = {self.relative_error:.3g} of the logits' "
                f"scale {self.logit_scale:.3g} (tolerance {self.tolerance:g}); mask IoU {self.mask_iou:.4f} "
                f"(at least {self.min_mask_iou:g})")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def check_graph(model: TripletNetwork, graph, options=None, tolerance: Optional[float] = None,
                min_mask_iou: float = MIN_MASK_IOU) -> GraphCheck:
    """A runtime graph against the eager model on a random batch of two clips of other lengths than
    the trace's (so a fixed frame axis would be caught): the largest logit difference, absolute and
    relative to the logits' scale, and the IoU of the masks both give after ``options``'
    post-processing (ClipOptions; the defaults when None) at the input size.

    Float rounding grows with the size of the activations, so a faithful graph of a checkpoint whose
    logits are large differs by more in absolute terms; relative to the scale it does not."""
    from leakseg.inference.postprocess import postprocess
    from leakseg.schema import ClipOptions

    options = options or ClipOptions()
    inputs = example_inputs(model, clip_lengths=(5, 3), seed=1)
    named = dict(zip(model.input_names, inputs))
    expected = model(*inputs)
    got = graph(named["frames"].numpy(), named["text"].numpy() if "text" in named else None,
                named["neighbours"].numpy()).cpu()
    if got.shape != expected.shape:
        raise RuntimeError(f"exported graph returned {tuple(got.shape)}, expected {tuple(expected.shape)}")
    return _compare(expected, got, options, tolerance, min_mask_iou, postprocess)


def _compare(expected: torch.Tensor, got: torch.Tensor, options, tolerance, min_mask_iou, postprocess) -> GraphCheck:
    max_abs = float((got - expected).abs().max())
    scale = float(expected.abs().max())
    size = expected.shape[-1]
    mine = postprocess(expected, size, size, options).masks
    theirs = postprocess(got, size, size, options).masks
    union = np.logical_or(mine, theirs).sum()
    iou = float(np.logical_and(mine, theirs).sum() / union) if union else 1.0
    return GraphCheck(max_abs_error=max_abs, logit_scale=scale, relative_error=max_abs / max(scale, 1.0),
                      mask_iou=iou, tolerance=RELATIVE_TOLERANCE if tolerance is None else tolerance,
                      min_mask_iou=min_mask_iou)


# --- the stream halves (leakseg.model.stream) -----------------------------------------------------------

#: The files of the stream halves in an archive, per format. TorchScript keeps both methods in one module
#: (one copy of the weights); ONNX has one graph per half.
STREAM_FILES = {"onnx": ("encoder.onnx", "head.onnx"), "torchscript": ("stream.pt", "stream.pt")}


def stream_example_inputs(stream: StreamNetwork, frames: int = 5, seed: int = 0):
    """{method: example inputs}: ``frames`` frames of one clip (the clip graph's example), and the decoding of
    its published triplets."""
    clip = dict(zip(stream.network.input_names, example_inputs(stream.network, clip_lengths=(frames,), seed=seed)))
    encode = [clip[name] for name in stream.encoder_inputs]
    with torch.no_grad():
        features = stream.encode(*encode)
    pairs = triplet_neighbours(frames)[: frames - 2]
    targets = torch.arange(len(pairs), dtype=torch.int64)
    neighbours = torch.tensor(pairs, dtype=torch.int64)
    return {"encode": tuple(encode), "decode": (*features, targets, neighbours)}


class _Method(nn.Module):
    """One method of a module as ``forward`` (what the ONNX exporter traces)."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def export_stream(model: TripletNetwork, fmt: str, folder: Path) -> Tuple[Path, Path]:
    """The stream halves of ``model`` in ``folder``: (encoder file, head file)."""
    stream = StreamNetwork(model).eval()
    examples = stream_example_inputs(stream)
    encoder_path, head_path = (folder / name for name in STREAM_FILES[fmt])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.trace_module(stream, examples, check_trace=False).save(str(encoder_path))
            return encoder_path, head_path
        axes = {"encode": "frames", "decode": "targets"}
        for (method, (inputs, outputs)), path in zip(stream.signatures().items(), (encoder_path, head_path)):
            dynamic = {name: {0: axes[method]} for name in (*inputs, *outputs)}
            for name in inputs:  # the features of a batch: as many as frames, not as targets
                if name.startswith("features"):
                    dynamic[name] = {0: "frames"}
            torch.onnx.export(_Method(stream, method).eval(), examples[method], str(path), input_names=list(inputs),
                              output_names=list(outputs), dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    return encoder_path, head_path


@torch.no_grad()
def check_stream(model: TripletNetwork, runtime, options=None, tolerance: Optional[float] = None,
                 min_mask_iou: float = MIN_MASK_IOU) -> GraphCheck:
    """The stream halves as a camera runs them against the eager clip forward: a clip of 6 frames (not the
    trace's 5) arrives in two parts (4 frames, then 2); each part is encoded alone, and every frame is decoded
    once its triplet is complete, the last two with the clip's fallback triplets, from features kept from the
    first call. Same numbers as :func:`check_graph`."""
    from leakseg.inference.postprocess import postprocess
    from leakseg.schema import ClipOptions

    options = options or ClipOptions()
    inputs = dict(zip(model.input_names, example_inputs(model, clip_lengths=(6,), seed=2)))
    expected = model(*(inputs[n] for n in model.input_names))
    frames = inputs["frames"].numpy()
    text = inputs["text"].numpy() if "text" in inputs else None
    parts = [runtime.encode(frames[a:b], None if text is None else text[a:b]) for a, b in ((0, 4), (4, 6))]
    features = [np.concatenate([p[i] for p in parts]) for i in range(3)]
    neighbours = np.asarray(triplet_neighbours(6), dtype=np.int64)
    got = torch.cat([runtime.decode(features, np.arange(a, b, dtype=np.int64), neighbours[a:b]).cpu()
                     for a, b in ((0, 2), (2, 6))])
    if got.shape != expected.shape:
        raise RuntimeError(f"the stream halves returned {tuple(got.shape)}, expected {tuple(expected.shape)}")
    return _compare(expected, got, options, tolerance, min_mask_iou, postprocess)
