"""Runtimes for the exported clip graph: ONNX Runtime, TorchScript, or the eager model.

All take numpy (frames (N,3,S,S) float32, text (N,D,P) float32 or None for a model without
text (FGSTP, whose graph has no text input), neighbours (N,2) int64) and return logits
(N,1,S,S) as a torch tensor on the device post-processing runs on.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import numpy as np
import torch

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


class OnnxGraph:
    def __init__(self, path: str, device: str = "auto", threads: Optional[int] = None):
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
        self.session = ort.InferenceSession(path, sess_options=opts, providers=providers)
        self.device = "cuda" if want_cuda else "cpu"
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


def load_graph(path: str, fmt: str, device: str = "auto", threads: Optional[int] = None):
    if fmt == "onnx":
        return OnnxGraph(path, device, threads)
    if fmt == "torchscript":
        return TorchGraph.load(path, device, threads)
    raise ValueError(f"unknown graph format {fmt!r}")
