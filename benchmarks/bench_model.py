"""Frames per second: the research code's way vs leakseg's clip graph, same weights, same run.

(a) research: triplet by triplet, three encoder passes per frame (eager PyTorch);
(b) leakseg: one graph per clip, each frame encoded once: eager, ONNX Runtime, TorchScript.
JVLGS and FGSTP (--families), PVTv2-b5 and b0 at 352x352, clips of 8 frames. Prints fps and the
ratio (b)/(a).

    python benchmarks/bench_model.py [--families jvlgs fgstp] [--backbones pvt_v2_b0 pvt_v2_b5] [--clips 2]
        [--frames 8] [--runtimes eager onnxruntime torchscript]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from leakseg.export.graph import export_onnx, export_torchscript
from leakseg.model import build_model, triplet_neighbours
from leakseg.inference.runtime import OnnxGraph, TorchGraph, default_threads


def _fps(fn, frames: int, clips: int) -> float:
    fn()  # warm-up: TorchScript profiles its first two calls
    fn()
    t = time.perf_counter()
    for _ in range(clips):
        fn()
    return frames * clips / (time.perf_counter() - t)


def bench(backbone: str, frames: int, clips: int, family: str = "jvlgs",
          runtimes=("eager", "onnxruntime", "torchscript")) -> dict:
    model = build_model(backbone, family)
    x = torch.randn(frames, 3, 352, 352)
    text = None
    if "text" in model.input_names:
        text = torch.randn(1, 512, 4).expand(frames, -1, -1).contiguous()
    pairs = triplet_neighbours(frames)
    nb = torch.tensor(pairs)

    @torch.inference_mode()
    def research():
        for t, (a, b) in enumerate(pairs):
            if text is None:
                model.forward_triplet(x[[t, a, b]][None])
            else:
                model.forward_triplet(x[[t, a, b]][None], text[:1])

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graphs = {}
        if "eager" in runtimes:
            graphs["eager"] = TorchGraph(model, "cpu", name="eager")
        if "onnxruntime" in runtimes:
            export_onnx(model, Path(tmp) / "g.onnx")
            graphs["onnxruntime"] = OnnxGraph(str(Path(tmp) / "g.onnx"), "cpu")
        if "torchscript" in runtimes:
            export_torchscript(model, Path(tmp) / "g.pt")
            graphs["torchscript"] = TorchGraph.load(str(Path(tmp) / "g.pt"), "cpu")
        args = (x.numpy(), None if text is None else text.numpy(), nb.numpy())
        out = {"research (triplets)": _fps(research, frames, clips)}
        print(f"  ({family} {backbone}) research (triplets): {out['research (triplets)']:.3f} frames/s",
              file=sys.stderr, flush=True)
        for name, graph in graphs.items():
            out[f"leakseg {name}"] = _fps(lambda g=graph: g(*args), frames, clips)
            print(f"  ({family} {backbone}) leakseg {name}: {out[f'leakseg {name}']:.3f} frames/s",
                  file=sys.stderr, flush=True)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", choices=["jvlgs", "fgstp"], default=["jvlgs", "fgstp"])
    p.add_argument("--backbones", nargs="+", default=["pvt_v2_b0", "pvt_v2_b5"])
    p.add_argument("--runtimes", nargs="+", choices=["eager", "onnxruntime", "torchscript"],
                   default=["eager", "onnxruntime", "torchscript"])
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--clips", type=int, default=2, help="timed clips per runtime (after one warm-up)")
    args = p.parse_args()
    torch.set_num_threads(default_threads())
    print(f"threads: {torch.get_num_threads()}, frames per clip: {args.frames}, timed clips: {args.clips}")
    for family in args.families:
        for backbone in args.backbones:
            results = bench(backbone, args.frames, args.clips, family, args.runtimes)
            base = results["research (triplets)"]
            print(f"\n{family.upper()} {backbone} @ 352x352")
            for name, fps in results.items():
                print(f"  {name:24s} {fps:7.2f} frames/s   x{fps / base:.2f} vs research", flush=True)


if __name__ == "__main__":
    main()
