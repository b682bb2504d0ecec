"""Does the self-test tell the truth? Injected plumes against the generator's own plumes on the same background.

    python benchmarks/selftest_truth.py --archive model_store/jvlgs.mar --seeds 0 60 --out /tmp/truth.jsonl
    python benchmarks/selftest_truth.py --summary /tmp/truth.jsonl          # the table only

For each scene seed, ``leakseg.synth`` renders a calm generator-v3 scene in which a real plume starts leaking,
and the scene's leak-free twin; the self-test's injector blends a plume with the real plume's size, contrast,
polarity, start and source into the twin (tests/support/selftest_scenes.py). Both videos run through the same production
path (the self-test's :func:`~leakseg.selftest.trials.replay`: the camera's windows, the model, its alarm
rule) and are judged alike: detected when LEAK is raised within the leak's duration plus n frames after
the gas first shows.

The claim: per size bin, the injected plumes' detection rate is within 10 percentage points of the real
plumes'. The script prints both rates per bin with Wilson 95 % intervals. Results go to --out one JSON line
per seed, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.selftest_scenes import matched_injection, real_plume  # noqa: E402  (shared with the truth test)

#: docs/SCADA.md's camera settings for the default model.
CAMERA = {"name": "truth", "source": "rtsp://unused", "clip_frames": 8,
          "options": {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9},
          "alarm": {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}}
#: Size bins, visible pixels (upper bounds).
BINS = (300, 1000, math.inf)


def judged(frames, masks, camera, segmenter, duration: int) -> Dict:
    """Detected or not, and when, by the camera's production path and alarm rule."""
    from leakseg.selftest.trials import alarm_bound, alarm_replay, judge, replay

    seen = replay(frames, camera, segmenter, None)
    gas = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    outcome = judge(alarm_replay([obs for obs, _ in seen], camera.alarm), int(gas[0]),
                    alarm_bound(duration, camera.alarm.n, None))
    return {"detected": outcome.detected, "alarm_frame": outcome.alarm_frame, "gas_first": int(gas[0]),
            "alarm_before_gas": outcome.alarm_before_gas}


def one_seed(seed: int, camera, segmenter, real: Optional[Dict] = None) -> Dict:
    """One scene's real and injected plume, judged; ``real``: the real plume's verdict from an earlier run
    (it does not depend on the injector, so --reuse-real skips it)."""
    made = real_plume(seed)
    if made is None:
        return {"seed": seed, "skipped": "no visible gas"}
    frames, twin, masks, facts = made
    injected = matched_injection(twin, facts)
    return {**facts, "injected_size": injected.measured_size_pixels,
            "real": real or judged(frames, masks, camera, segmenter, facts["duration"]),
            "injected": judged(injected.frames, injected.masks, camera, segmenter, facts["duration"])}


def wilson(k: int, n: int, z: float = 1.96):
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def summary(rows: List[Dict]) -> str:
    rows = [r for r in rows if "real" in r]
    lines = ["| size bin (px) | scenes | real plumes detected | injected plumes detected | difference |",
             "|---|---|---|---|---|"]
    lower = 0
    worst = 0.0
    for upper in BINS:
        group = [r for r in rows if lower <= r["size"] < upper]
        lower_text = f"{lower:g}-{upper:g}" if upper != math.inf else f">= {lower:g}"
        lower = upper
        if not group:
            continue
        n = len(group)
        real = sum(r["real"]["detected"] for r in group)
        inj = sum(r["injected"]["detected"] for r in group)
        diff = (inj - real) / n
        worst = max(worst, abs(diff))
        rl, rh = wilson(real, n)
        il, ih = wilson(inj, n)
        lines.append(f"| {lower_text} | {n} | {real / n:.0%} ({rl:.0%}-{rh:.0%}) | {inj / n:.0%} ({il:.0%}-{ih:.0%}) "
                     f"| {diff * 100:+.0f} pp |")
    agree = sum(r["real"]["detected"] == r["injected"]["detected"] for r in rows)
    lines.append("")
    lines.append(f"{len(rows)} scenes; the two agree scene by scene on {agree} ({agree / max(len(rows), 1):.0%}); "
                 f"largest difference per bin {worst * 100:.0f} pp")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", help="the model archive (.mar), run in process")
    parser.add_argument("--seeds", type=int, nargs=2, default=(0, 60), metavar=("FIRST", "STOP"))
    parser.add_argument("--out", type=Path, default=Path("selftest_truth.jsonl"))
    parser.add_argument("--summary", type=Path, help="only print the table of an earlier --out file")
    parser.add_argument("--reuse-real", type=Path, metavar="JSONL", help="an earlier --out file: its real "
                        "plumes' verdicts are reused (after a change to the injector only the injected half runs)")
    args = parser.parse_args(argv)
    if args.summary:
        print(summary([json.loads(line) for line in args.summary.read_text().splitlines() if line.strip()]))
        return 0
    if not args.archive:
        parser.error("--archive is needed to run the scenes")
    from leakseg.monitor.config import CameraConfig
    from leakseg.monitor.segmenters import ArchiveSegmenter

    camera = CameraConfig.model_validate(CAMERA)
    segmenter = ArchiveSegmenter(args.archive)
    done = set()
    if args.out.exists():
        done = {json.loads(line)["seed"] for line in args.out.read_text().splitlines() if line.strip()}
    earlier = {}
    if args.reuse_real:
        rows = [json.loads(line) for line in args.reuse_real.read_text().splitlines() if line.strip()]
        earlier = {r["seed"]: r["real"] for r in rows if "real" in r}
    for seed in range(*args.seeds):
        if seed in done:
            continue
        began = time.monotonic()
        row = one_seed(seed, camera, segmenter, earlier.get(seed))
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(f"seed {seed}: {json.dumps(row)[:160]} ({time.monotonic() - began:.0f} s)", flush=True)
    print(summary([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
