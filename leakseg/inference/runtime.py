"""Runtimes for the exported clip graph: ONNX Runtime, TorchScript, or the eager model.

All take numpy (frames (N,3,S,S) float32, text (N,D,P) float32 or None for a model without
text (FGSTP, whose graph has no text input), neighbours (N,2) int64) and return logits
(N,1,S,S) as a torch tensor on the device post-processing runs on.

The stream halves (``OnnxStream``, ``TorchStream``) split that graph at the features: ``encode`` gives
each frame's features once, ``decode`` the logits of the frames whose two neighbours are encoded.
"""

from __future__ import annotations

import logging
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from leakseg.model.stream import FEATURE_NAMES

log = logging.getLogger(__name__)


def default_threads() -> int:
    """Intra-op threads: LEAKSEG_THREADS, else the cores this process may use."""
    env = os.environ.get("LEAKSEG_THREADS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def onnx_session(path: str, device: str = "auto", threads: Optional[int] = None):
    """(an ONNX Runtime session on the device asked for, "cuda" or "cpu")."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    want_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    if device == "cuda" and not want_cuda:
        raise RuntimeError(f"CUDA requested but onnxruntime offers only {available} (install leakseg[gpu])")
    providers = (["CUDAExecutionProvider"] if want_cuda else []) + ["CPUExecutionProvider"]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or default_threads()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The frame axis is dynamic (every clip length and batch makes a new shape): ONNX Runtime's
    # memory-pattern cache keeps one plan per shape seen, so a long-running worker would grow.
    opts.enable_mem_pattern = False
    # After a run ONNX Runtime's threads spin waiting for the next one; the post-processing that follows (torch,
    # on the same cores) then competes with them. Measured on 2 cores, the default model, one frame per stream
    # call: 32 ms per frame of post-processing with spinning, 7 ms without; 200 -> 140 ms per frame in all.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, sess_options=opts, providers=providers)
    return session, "cuda" if want_cuda else "cpu"


class OnnxGraph:
    def __init__(self, path: str, device: str = "auto", threads: Optional[int] = None):
        self.session, self.device = onnx_session(path, device, threads)
        self.name = f"onnxruntime ({self.session.get_providers()[0]})"

    def __call__(self, frames: np.ndarray, text: Optional[np.ndarray], neighbours: np.ndarray) -> torch.Tensor:
        feeds = {"frames": frames, "neighbours": neighbours}
        if text is not None:
            feeds["text"] = text
        (logits,) = self.session.run(["logits"], feeds)
        out = torch.from_numpy(logits)
        return out.to(self.device) if self.device != "cpu" else out


class TorchGraph:
    """A TorchScript archive (``torch.jit.load``) or an eager module."""

    def __init__(self, module, device: str = "auto", threads: Optional[int] = None, name: str = "torchscript"):
        self.device = "cuda" if device in ("auto", "cuda") and torch.cuda.is_available() else "cpu"
        torch.set_num_threads(threads or default_threads())
        self.module = module.to(self.device).eval()
        self.name = f"{name} ({self.device})"

    @classmethod
    def load(cls, path: str, device: str = "auto", threads: Optional[int] = None) -> "TorchGraph":
        return cls(torch.jit.load(path, map_location="cpu"), device, threads)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray, text: Optional[np.ndarray], neighbours: np.ndarray) -> torch.Tensor:
        args = (torch.from_numpy(a).to(self.device) for a in (frames, text, neighbours) if a is not None)
        return self.module(*args)


class OnnxStream:
    """The two halves of a network (``leakseg.model.stream``) as ONNX graphs: features stay numpy arrays
    on the host between them (a stream keeps them from one call to the next)."""

    def __init__(self, encoder_path: str, head_path: str, device: str = "auto", threads: Optional[int] = None):
        self.encoder, self.device = onnx_session(encoder_path, device, threads)
        self.head, _ = onnx_session(head_path, device, threads)
        self.name = f"onnxruntime ({self.encoder.get_providers()[0]})"

    def encode(self, frames: np.ndarray, text: Optional[np.ndarray]) -> Tuple[np.ndarray, ...]:
        feeds = {"frames": frames} if text is None else {"frames": frames, "text": text}
        return tuple(self.encoder.run(list(FEATURE_NAMES), feeds))

    def decode(self, features: Sequence[np.ndarray], targets: np.ndarray, neighbours: np.ndarray) -> torch.Tensor:
        feeds = dict(zip(FEATURE_NAMES, features), targets=targets, neighbours=neighbours)
        (logits,) = self.head.run(["logits"], feeds)
        out = torch.from_numpy(logits)
        return out.to(self.device) if self.device != "cpu" else out


class TorchStream:
    """The two halves as a TorchScript module with ``encode`` and ``decode`` methods, or an eager
    :class:`~leakseg.model.stream.StreamNetwork`."""

    def __init__(self, module, device: str = "auto", threads: Optional[int] = None, name: str = "torchscript"):
        self.graph = TorchGraph(module, device, threads, name)
        self.device, self.name = self.graph.device, self.graph.name

    @torch.inference_mode()
    def encode(self, frames: np.ndarray, text: Optional[np.ndarray]) -> Tuple[np.ndarray, ...]:
        args = [torch.from_numpy(a).to(self.device) for a in (frames, text) if a is not None]
        return tuple(f.cpu().numpy() for f in self.graph.module.encode(*args))

    @torch.inference_mode()
    def decode(self, features: Sequence[np.ndarray], targets: np.ndarray, neighbours: np.ndarray) -> torch.Tensor:
        args = [torch.from_numpy(a).to(self.device) for a in (*features, targets, neighbours)]
        return self.graph.module.decode(*args)


def load_stream(encoder_path: str, head_path: str, fmt: str, device: str = "auto", threads: Optional[int] = None):
    """The stream halves of an archive (``ArchiveManifest.stream``)."""
    if fmt == "onnx":
        return OnnxStream(encoder_path, head_path, device, threads)
    if fmt == "torchscript":  # one module holds both halves
        return TorchStream(torch.jit.load(encoder_path, map_location="cpu"), device, threads)
    raise ValueError(f"unknown graph format {fmt!r}")


def load_graph(path: str, fmt: str, device: str = "auto", threads: Optional[int] = None):
    if fmt == "onnx":
        return OnnxGraph(path, device, threads)
    if fmt == "torchscript":
        return TorchGraph.load(path, device, threads)
    raise ValueError(f"unknown graph format {fmt!r}")
