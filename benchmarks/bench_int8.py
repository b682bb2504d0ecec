"""int8 static quantization of the clip graph: how much faster, and do the masks survive?

    python benchmarks/bench_int8.py                          # the bundled default model (PVTv2-b0), exported here
    python benchmarks/bench_int8.py --archive model_store/jvlgs.mar --threads 2
    python benchmarks/bench_int8.py --backbone pvt_v2_b5 --calibration-clips 2 --check-clips 1   # speed only

Calibrates on ``--calibration-clips`` synthetic plume clips (leakseg.synth, seeds 0, 1, ...), checks on
``--check-clips`` others (seeds from 10000), ``--frames`` frames each, and prints float vs int8 ms/frame,
the speedup, the IoU of the post-processed masks (the archive's own post-processing defaults) and the
largest logit difference (leakseg.export.quantize.check_quantized).

``--backbone`` builds a randomly initialised model of that size instead (its ONNX graph exported here):
its timings are real, its masks are noise, so its IoU says nothing about int8 on a trained model.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from leakseg.export.quantize import calibration_feeds, check_quantized, quantize_onnx, synthetic_clips  # noqa: E402
from leakseg.inference.runtime import default_threads  # noqa: E402

CHECK_SEEDS = 10_000  # check clips' first seed: far from the calibration clips' seeds


def archive_graph(archive: Path, work: Path, threads: int):
    """(Predictor, path of the float ONNX graph) of an archive (.mar or extracted folder)."""
    from leakseg.inference.manifest import MANIFEST_FILE, ArchiveManifest, archive_file, extract_archive
    from leakseg.inference.predictor import Predictor

    folder = archive if archive.is_dir() else extract_archive(archive, work / "archive")
    manifest = ArchiveManifest.model_validate_json(archive_file(folder, MANIFEST_FILE).read_text())
    if manifest.format != "onnx":
        sys.exit(f"{archive} holds a {manifest.format} graph; int8 quantization needs an ONNX archive")
    predictor = Predictor.from_model_dir(folder, device="cpu", threads=threads)
    return predictor, archive_file(folder, manifest.graph_file)


def random_model_graph(backbone: str, work: Path, threads: int):
    """(Predictor, float ONNX graph) of a randomly initialised JVLGS of ``backbone``, with a random prompt bank."""
    from leakseg.export.graph import export_onnx
    from leakseg.inference.predictor import Predictor
    from leakseg.model import build_model
    from leakseg.model.prompts import PromptBank

    model = build_model(backbone)
    prompts = list(model.config.prompts)
    embeddings = np.random.default_rng(0).normal(size=(len(prompts), model.config.text_dim))
    path = work / f"{backbone}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(model, path)
    predictor = Predictor.from_model(model, PromptBank(prompts, embeddings, prompts), device="cpu", threads=threads)
    return predictor, path


def load(args, work: Path):
    if args.backbone:
        print(f"building a randomly initialised {args.backbone} (speed only: its masks are meaningless) ...",
              flush=True)
        return random_model_graph(args.backbone, work, args.threads)
    archive = args.archive
    if archive is None:
        from support.models import export_default_archive

        print("exporting the bundled default model ...", flush=True)
        archive = export_default_archive(work / "store")
    return archive_graph(Path(archive), work, args.threads)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--archive", type=Path,
                        help="an ONNX archive (.mar or folder); default: export the bundled model")
    source.add_argument("--backbone", help="a randomly initialised model of this backbone (e.g. pvt_v2_b5), speed only")
    parser.add_argument("--calibration-clips", type=int, default=16, help="clips to calibrate on (default 16)")
    parser.add_argument("--check-clips", type=int, default=8, help="other clips to compare on (default 8)")
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--threads", type=int, default=default_threads(),
                        help="ONNX Runtime intra-op threads (default: all cores, or LEAKSEG_THREADS)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the check clips (median; default 3)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="leakseg-bench-int8-") as tmp:
        work = Path(tmp)
        predictor, fp32 = load(args, work)
        print(f"generating {args.calibration_clips} + {args.check_clips} clips of {args.frames} frames ...", flush=True)
        calibration = calibration_feeds(predictor, synthetic_clips(args.calibration_clips, args.frames))
        check_feeds = calibration_feeds(predictor, synthetic_clips(args.check_clips, args.frames, CHECK_SEEDS))
        print("quantizing ...", flush=True)
        t0 = time.perf_counter()
        int8 = work / "graph.int8.onnx"
        quantize_onnx(fp32, int8, calibration)
        quantize_s = time.perf_counter() - t0
        print(f"  done in {quantize_s:.0f} s; float {fp32.stat().st_size / 1e6:.1f} MB -> int8 "
              f"{int8.stat().st_size / 1e6:.1f} MB", flush=True)
        check = check_quantized(fp32, int8, check_feeds, predictor.defaults, repeats=args.repeats,
                                threads=args.threads)

    print(f"model: {args.backbone or predictor.config['backbone']}"
          f"{' (random weights: IoU meaningless)' if args.backbone else ''}; post-processing "
          f"{predictor.defaults.normalization}, threshold {predictor.defaults.threshold:g}")
    print(f"fp32 {check.fp32_ms_per_frame:.1f} ms/frame | int8 {check.int8_ms_per_frame:.1f} ms/frame | "
          f"speedup {check.speedup:.2f}x | mask IoU "
          f"{'n/a (both empty)' if check.mask_iou is None else f'{check.mask_iou:.4f}'} | "
          f"largest |logit error| {check.max_abs_logit_error:.3g} | threads {check.threads}")
    print(check.summary())
    if args.json:
        record = {**check.to_dict(), "backbone": args.backbone or predictor.config["backbone"],
                  "random_weights": bool(args.backbone), "quantize_s": quantize_s,
                  "calibration_clips": args.calibration_clips, "check_clips": args.check_clips, "frames_per_clip": args.frames}
        args.json.write_text(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
