"""int8 static quantization of an exported ONNX graph, and the check that the masks survive it.

    feeds = calibration_feeds(predictor, clips)              # the graph's inputs, as the Predictor makes them
    quantize_onnx(Path("graph.onnx"), Path("graph.int8.onnx"), feeds[:16])
    check = check_quantized("graph.onnx", "graph.int8.onnx", feeds[16:], predictor.defaults)
    print(check.summary())                                     # IoU of the masks, logit error, ms/frame, speedup

Generic over graphs: the clip graph (frames[, text], neighbours -> logits) and, later, its "encoder" and
"head" halves. Calibration and check data are feed dicts keyed by the graph's input names, never fixed ones.

The format is QDQ (QuantizeLinear/DequantizeLinear pairs around float ops): ONNX Runtime's CPU provider
fuses each DQ -> op -> Q group it has an int8 kernel for (QLinearConv, QLinearMatMul, ...), and the file
stays a plain ONNX graph that any provider can run, falling back to float where it has no int8 kernel.
"""

from __future__ import annotations

import logging
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

log = logging.getLogger(__name__)

#: ``check_quantized`` passes an int8 graph whose masks agree with the float graph's at least this much (IoU).
MIN_INT8_MASK_IOU = 0.97

#: Op types quantized by default: those whose int8 kernels do the work (convolutions, the linear layers'
#: MatMuls). Everything else (LayerNorm, GELU, Add, Resize, Concat, ...) stays float: int8 versions of
#: these save little arithmetic and each adds a rounding step of its own (reasoned, not measured here).
QUANTIZED_OP_TYPES = ("Conv", "MatMul", "Gemm")

Feed = Dict[str, np.ndarray]


class FeedReader(CalibrationDataReader):
    """ONNX Runtime's calibration reader over a list of feed dicts, each one graph call. ``set_range`` and
    ``__len__`` are what ORT's strided calibration ("CalibStridedMinMax") asks of a reader."""

    def __init__(self, feeds: Sequence[Feed]):
        self.feeds = list(feeds)
        self.start, self.end = 0, len(self.feeds)
        self.position = 0

    def get_next(self) -> Optional[Feed]:
        if self.position >= self.end:
            return None
        self.position += 1
        return self.feeds[self.position - 1]

    def rewind(self) -> None:
        self.position = self.start

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.feeds))
        self.position = self.start

    def __len__(self) -> int:
        return len(self.feeds)


# --- quantization ------------------------------------------------------------------------------------------


def graph_input_names(model: onnx.ModelProto) -> List[str]:
    """The inputs a caller feeds (an initializer may also be listed as an input in old exports)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in initializers]


def _constant_tensors(model: onnx.ModelProto) -> Set[str]:
    """Names of tensors known before any input arrives: initializers and Constant nodes' outputs."""
    names = {t.name for t in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


def attention_nodes(model: onnx.ModelProto) -> List[str]:
    """Every Softmax and every MatMul of two activations: the attention products (PVTv2's q.k and attn.v,
    the temporal non-local block's theta.phi and attn.g, leakseg/model/temporal.py) and the
    vision-language product with the text matrix. Their scores span a wide range that softmax then
    exponentiates, so one int8 scale per tensor (activations get no per-channel scales) either clips the
    peaks or rounds away the small differences that decide where attention goes. A MatMul with a constant
    (weight) side is an ordinary linear layer and is not listed."""
    constants = _constant_tensors(model)
    return [n.name for n in model.graph.node
            if n.op_type == "Softmax" or (n.op_type == "MatMul" and not any(i in constants for i in n.input))]


def edge_nodes(model: onnx.ModelProto) -> List[str]:
    """Nodes that read a graph input or write a graph output. Quantizing the first would round the
    normalised frames to 8-bit steps of about one grey level, where the faint contrast of a plume lives
    (measured on the default b0 model and two check clips: that one patch-embedding conv, the only node
    quantized, moved the logits by up to 1.7 and cut the mask IoU to 0.92); quantizing the last would hand
    out logits with 256 levels, which the post-processing thresholds. The last conv is no faster in int8
    either (one output channel)."""
    inputs = set(graph_input_names(model))
    outputs = {o.name for o in model.graph.output}
    return [n.name for n in model.graph.node if inputs & set(n.input) or outputs & set(n.output)]


def grouped_conv_nodes(model: onnx.ModelProto) -> List[str]:
    """Grouped (depthwise) convolutions, kept in float for speed: ORT's int8 depthwise kernel is no faster
    than the float one here, and PVTv2's Mix-FFN depthwise conv sits between a Transpose and GELU, so
    quantizing it only adds a Q/DQ round trip over the largest activation of each stage (one measurement
    on b0, 4 check clips: leaving them float took the int8 graph from 1.03x to 1.13x of the float graph's
    speed, and its masks from IoU 0.905 to 0.927)."""
    return [n.name for n in model.graph.node
            if n.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def nodes_kept_in_float(model: onnx.ModelProto) -> List[str]:
    """What :func:`quantize_onnx` leaves in float by default: attention, the graph's edges, grouped convs."""
    names = attention_nodes(model) + edge_nodes(model) + grouped_conv_nodes(model)
    return list(dict.fromkeys(names))  # unique, in graph order


def _check_feeds(model: onnx.ModelProto, calibration: Sequence[Feed]) -> None:
    if not calibration:
        raise ValueError("static quantization needs at least one calibration feed")
    expected = set(graph_input_names(model))
    for i, feed in enumerate(calibration):
        if set(feed) != expected:
            raise ValueError(f"calibration feed {i} has inputs {sorted(feed)}, the graph takes {sorted(expected)}")


def _preprocess(src: Path, dst: Path) -> None:
    """ORT's quantization pre-processing: symbolic shape inference (the quantizer needs every tensor's
    type and rank) and ORT's basic graph optimisations (constant folding, Conv+BN folding), so the
    quantizer sees the graph the runtime will run. Falls back to a plain copy of a graph whose shapes
    it cannot infer: quantization still works there, with fewer known shapes."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=False)
    except Exception as exc:  # noqa: BLE001 - symbolic shape inference rejects some valid graphs
        log.warning("quantization pre-processing failed (%s); quantizing the graph as exported", exc)
        shutil.copyfile(src, dst)


def quantize_onnx(src: Path, dst: Path, calibration: Sequence[Feed], *, per_channel: bool = True,
                  keep_float: Optional[Iterable[str]] = None,
                  op_types: Sequence[str] = QUANTIZED_OP_TYPES, preprocess: bool = True) -> None:
    """Write ``dst``: ``src`` statically quantized to int8 (QDQ), its activation ranges calibrated on
    ``calibration`` (feed dicts keyed by the graph's input names, e.g. from :func:`calibration_feeds`).

    ``keep_float``: names of nodes left in float; None = :func:`nodes_kept_in_float`.
    ``op_types``: which op types to quantize (:data:`QUANTIZED_OP_TYPES`).

    Everything is written in a private temporary folder that is removed afterwards (ORT's shape
    inference writes beside its input file); ``dst`` is only written once the quantized graph is complete.
    """
    src, dst = Path(src), Path(dst)
    _check_feeds(onnx.load(str(src), load_external_data=False), calibration)
    with tempfile.TemporaryDirectory(prefix="leakseg-quantize-") as tmp:
        work = Path(tmp) / "graph.onnx"
        if preprocess:
            _preprocess(src, work)
        else:
            shutil.copyfile(src, work)
        excluded = nodes_kept_in_float(onnx.load(str(work))) if keep_float is None else list(keep_float)
        out = Path(tmp) / "graph.int8.onnx"
        quantize_static(
            str(work), str(out), FeedReader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            # u8 activations x s8 weights is the pair MLAS's x86 int8 kernels compute natively (VNNI's
            # vpdpbusd multiplies unsigned by signed bytes); s8 activations are shifted to u8 by an extra
            # graph transform on x86 and then run the same kernels. With VNNI there is no u8s8 overflow, so
            # reduce_range (7-bit weights, for pre-VNNI AVX2's vpmaddubsw saturation) is not needed.
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=list(op_types),
            nodes_to_exclude=excluded,
            # MinMax's calibration graph returns only each tensor's min and max per feed, so memory stays
            # small without "CalibMaxIntermediateOutputs" (which, in ORT 1.32, discards the collected
            # ranges instead of merging them: with it set to 1 no feed counts at all).
            calibrate_method=CalibrationMethod.MinMax,
        )
        shutil.move(str(out), str(dst))
    log.info("quantized %s -> %s (%d nodes kept in float)", src, dst, len(excluded))


# --- calibration and check data ----------------------------------------------------------------------------


def calibration_feeds(predictor, clips: Sequence[Sequence[np.ndarray]], prompts: Optional[Sequence[str]] = None,
                      input_names: Optional[Sequence[str]] = None) -> List[Feed]:
    """One feed dict per clip, as ``Predictor.run`` feeds the clip graph for that clip alone: frames
    checked and preprocessed by ``predictor.prepare``, the text matrix of ``prompts`` (the bank's defaults
    when None) repeated per frame when the model takes prompts, the clip's triplet neighbours.

    ``clips``: each a list of H x W or H x W x 3 uint8 frames. ``input_names``: keep only these inputs
    (a graph that takes a subset, e.g. an encoder that takes no neighbours); None keeps all."""
    from leakseg.model import batch_neighbours

    settings = predictor.settings(prompts)
    feeds = []
    for frames in clips:
        tensor = predictor.prepare(frames, settings).tensor
        feed = {"frames": tensor}
        if settings.text is not None:  # the same expansion as Predictor._forward
            feed["text"] = settings.text_rows(len(tensor))
        feed["neighbours"] = np.asarray(batch_neighbours([len(tensor)]), dtype=np.int64)
        feeds.append({k: v for k, v in feed.items() if input_names is None or k in input_names})
    return feeds


def synthetic_clips(count: int, frames: int = 8, first_seed: int = 0, height: int = 240, width: int = 320,
                    ) -> List[List[np.ndarray]]:
    """``count`` synthetic infrared clips with a leak throughout (``leakseg.synth.generate_clip``,
    seeds ``first_seed``, ``first_seed + 1``, ...): calibration and check data with a plume in every frame,
    so the activations cover gas and the masks being compared are not empty."""
    from leakseg.synth import generate_clip

    clips = []
    for seed in range(first_seed, first_seed + count):
        video, _, _ = generate_clip(seed, frames=frames, height=height, width=width, leak="full")
        clips.append(list(video))
    return clips


# --- the check ---------------------------------------------------------------------------------------------


@dataclass
class QuantizationCheck:
    """How an int8 graph agrees with its float graph on the check feeds, and how much faster it is."""

    mask_iou: Optional[float]  # IoU of all check frames' masks together; None: both empty, no evidence
    max_abs_logit_error: float  # largest |int8 logit - float logit|
    fp32_ms_per_frame: float
    int8_ms_per_frame: float
    speedup: float  # fp32_ms_per_frame / int8_ms_per_frame, both measured in the same call
    frames: int  # check frames (all feeds together)
    fp32_mask_pixels: int
    int8_mask_pixels: int
    threads: int
    min_mask_iou: float = MIN_INT8_MASK_IOU

    @property
    def passed(self) -> bool:
        """Masks at least ``min_mask_iou`` alike; two empty mask sets prove nothing, so they do not pass."""
        return self.mask_iou is not None and self.mask_iou >= self.min_mask_iou

    def summary(self) -> str:
        iou = ("no evidence (both graphs' masks empty on every check frame)" if self.mask_iou is None
               else f"{self.mask_iou:.4f}")
        verdict = "passed" if self.passed else "FAILED"
        return (f"int8 {verdict}: mask IoU {iou} (at least {self.min_mask_iou:g}), largest |logit error| "
                f"{self.max_abs_logit_error:.3g}; fp32 {self.fp32_ms_per_frame:.1f} ms/frame, int8 "
                f"{self.int8_ms_per_frame:.1f} ms/frame, speedup {self.speedup:.2f}x "
                f"({self.frames} frames, {self.threads} threads)")

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _open(graph, threads: Optional[int]):
    """An ``OnnxGraph`` on the CPU, from a path or as given."""
    from leakseg.inference.runtime import OnnxGraph

    return graph if isinstance(graph, OnnxGraph) else OnnxGraph(str(graph), device="cpu", threads=threads)


def _run_all(graph, feeds: Sequence[Feed], output: str) -> List[np.ndarray]:
    return [graph.session.run([output], feed)[0] for feed in feeds]


def _timed_pass(graph, feeds: Sequence[Feed], output: str) -> float:
    t0 = time.perf_counter()
    _run_all(graph, feeds, output)
    return time.perf_counter() - t0


def _masks(logits: Sequence[np.ndarray], options, frame_size) -> np.ndarray:
    """Post-processed masks of every feed's logits, all frames stacked; at the logits' own size
    unless ``frame_size`` (height, width) is given."""
    import torch

    from leakseg.inference.postprocess import postprocess

    out = []
    for x in logits:
        h, w = frame_size or x.shape[-2:]
        out.append(postprocess(torch.from_numpy(x), h, w, options).masks)
    return np.concatenate(out)


def mask_iou(a: np.ndarray, b: np.ndarray) -> Optional[float]:
    """IoU of two boolean mask stacks; None when both are empty (nothing to compare)."""
    union = int(np.logical_or(a, b).sum())
    return float(np.logical_and(a, b).sum() / union) if union else None


def check_quantized(fp32_graph, int8_graph, feeds: Sequence[Feed], options=None, *, repeats: int = 3,
                    threads: Optional[int] = None, output: str = "logits",
                    frame_size: Optional[tuple] = None) -> QuantizationCheck:
    """The int8 graph against the float graph on ``feeds`` (check clips the calibration did not see).

    Graphs: paths or ``OnnxGraph``s (opened on the CPU with ``threads``). ``options``: the ClipOptions
    of the post-processing (defaults when None; pass the archive's, ``predictor.defaults``). Masks are
    compared at the logits' size, or at ``frame_size`` (height, width).

    Timing: one warm-up pass of each graph over all feeds (whose outputs are the ones compared), then
    ``repeats`` passes of each, alternating so that load from elsewhere on the machine hits both alike;
    ms/frame is the median pass over the frames in it."""
    from leakseg.schema import ClipOptions

    if not feeds:
        raise ValueError("check_quantized needs at least one feed")
    options = options or ClipOptions()
    fp32, int8 = _open(fp32_graph, threads), _open(int8_graph, threads)
    expected, got = _run_all(fp32, feeds, output), _run_all(int8, feeds, output)
    for e, g in zip(expected, got):
        if e.shape != g.shape:
            raise RuntimeError(f"int8 graph returned {g.shape}, the float graph {e.shape}")
    fp32_s, int8_s = [], []
    for _ in range(repeats):
        fp32_s.append(_timed_pass(fp32, feeds, output))
        int8_s.append(_timed_pass(int8, feeds, output))
    frames = sum(len(x) for x in expected)
    fp32_ms = statistics.median(fp32_s) * 1000.0 / frames
    int8_ms = statistics.median(int8_s) * 1000.0 / frames
    mine, theirs = _masks(expected, options, frame_size), _masks(got, options, frame_size)
    return QuantizationCheck(
        mask_iou=mask_iou(mine, theirs),
        max_abs_logit_error=max(float(np.abs(e - g).max()) for e, g in zip(expected, got)),
        fp32_ms_per_frame=fp32_ms, int8_ms_per_frame=int8_ms, speedup=fp32_ms / int8_ms, frames=frames,
        fp32_mask_pixels=int(mine.sum()), int8_mask_pixels=int(theirs.sum()),
        threads=fp32.session.get_session_options().intra_op_num_threads,
    )
