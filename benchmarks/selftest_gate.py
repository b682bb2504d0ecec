"""Does the change gate lose leaks? The self-test with the gate off and on, on a still scene.

    python benchmarks/selftest_gate.py                         # the bundled default model, streaming, in process
    python benchmarks/selftest_gate.py --positions 8 --out gate.json

The camera: a calm generator-v3 scene (every distractor off, seed 14: the still scene of
tests/test_monitor_gate.py), ``--background`` frames of it as the camera's gas-free background, the
default model with docs/SCADA.md's settings for it, analysed as `leakseg monitor --archive` analyses it
(streaming, windows of 3). The self-test (leakseg.selftest.run_selftest) runs twice on the same background
with the same plumes: once with ``change_gate`` off, once on (its defaults). Printed: the probability of
detection per cell side by side, the detection limits, the trials whose verdict or alarm frame differ,
and the windows the gate skipped (on the clean background and in the trials).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

SCENE_SEED = 14
OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}
ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}


def background(frames: int):
    from leakseg.synth import CALM_EFFECTS, generate_clip

    pixels, masks, _ = generate_clip(SCENE_SEED, leak="none", frames=frames, height=240, width=320, version=3,
                                     effects=dict(CALM_EFFECTS))
    assert not masks.any()
    return pixels


def camera(gate: bool):
    from leakseg.monitor.config import parse_config

    return parse_config({"cameras": [{"name": "still", "source": "rtsp://camera.example/still", "analysis_fps": 1,
                                      "options": OPTIONS, "alarm": ALARM, "change_gate": {"enabled": gate}}],
                         "sinks": {"jsonl": None}}).cameras[0]


def run(frames, segmenter, grid, gate: bool):
    from leakseg.selftest.run import run_selftest
    from leakseg.selftest.settings import SelfTestTarget

    started = time.monotonic()
    last = [0.0]

    def progress(done, total):
        if time.monotonic() - last[0] > 30 or done == total:
            last[0] = time.monotonic()
            print(f"  gate {'on' if gate else 'off'}: trial {done}/{total}", flush=True)

    result = run_selftest(frames, camera(gate), segmenter, grid, SelfTestTarget(), fps=1.0, progress=progress).result
    return result, time.monotonic() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", help="a .mar (default: export the bundled default model)")
    p.add_argument("--background", type=int, default=128, help="gas-free background frames (default 128)")
    p.add_argument("--positions", type=int, default=4, help="source positions per cell (default 4)")
    p.add_argument("--out", type=Path, help="write the comparison as JSON here")
    args = p.parse_args()

    from leakseg.monitor.segmenters import ArchiveSegmenter
    from leakseg.selftest.settings import PlumeGrid

    with tempfile.TemporaryDirectory(prefix="selftest_gate_") as tmp:
        archive = args.archive
        if archive is None:
            from support.models import export_default_archive

            print("exporting the bundled default model ...", flush=True)
            archive = export_default_archive(Path(tmp))
        segmenter = ArchiveSegmenter(str(archive))
        frames = background(args.background)
        grid = PlumeGrid(sizes_pixels=[300, 1000, 3000], contrasts=[20.0, 40.0], positions=args.positions)
        (off, off_s), (on, on_s) = (run(frames, segmenter, grid, gate) for gate in (False, True))

    print(f"\n{segmenter.name}; {args.background} background frames; {len(off.trials)} trials per run")
    print(f"{'cell':34s} {'PoD off':>8s} {'PoD on':>8s}")
    for a, b in zip(off.cells, on.cells):
        c = a.cell
        name = f"{c.size_pixels} px, contrast {c.contrast:g} {c.polarity}"
        print(f"{name:34s} {a.probability:8.2f} {b.probability:8.2f}")
    differ = [(a.cell, a.position, a.detected, b.detected, a.alarm_frame, b.alarm_frame)
              for a, b in zip(off.trials, on.trials) if (a.detected, a.alarm_frame) != (b.detected, b.alarm_frame)]
    skipped = sum(t.windows_skipped for t in on.trials)
    summary = {
        "model": segmenter.name, "background_frames": args.background, "trials": len(off.trials),
        "detected_off": sum(t.detected for t in off.trials), "detected_on": sum(t.detected for t in on.trials),
        "trials_differing": len(differ), "differing": [str(d) for d in differ],
        "detection_limit_off": off.detection_limit_pixels, "detection_limit_on": on.detection_limit_pixels,
        "pod_at_reference_off": off.probability_at_reference, "pod_at_reference_on": on.probability_at_reference,
        "clean_windows_skipped_on": on.clean.windows_skipped, "trial_windows_skipped_on": skipped,
        "false_alarms_off": off.clean.false_alarms, "false_alarms_on": on.clean.false_alarms,
        "seconds_off": round(off_s, 1), "seconds_on": round(on_s, 1),
    }
    print(json.dumps(summary, indent=1))
    if args.out:
        args.out.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
