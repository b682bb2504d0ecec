"""Does the self-test tell the truth? Injected plumes against the generator's own plumes on the same background.

    python benchmarks/selftest_truth.py --archive model_store/jvlgs.mar --seeds 0 60 --out /tmp/truth.jsonl
    python benchmarks/selftest_truth.py --summary /tmp/truth.jsonl          # the table only

For each scene seed, ``leakseg.synth`` renders a calm generator-v3 scene (every distractor off, 240 x 320) in
which a real plume starts leaking (leak mode "start": its gas runs to the end of the clip), and the scene's
leak-free twin (the same scene, camera and noise; the generator's streams are independent of the leak).
The real plume's labels give its size (mean visible area while it leaks), its contrast (the generator's
gas-to-background contrast in grey levels, ``gas_contrast * gain``), its polarity, when it starts and where
its source is. The self-test's injector (:func:`leakseg.selftest.inject.inject_plume`) then blends a plume
of that size, contrast, polarity, start and source into the twin. Both videos run through the same production
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
from typing import Dict, List

import numpy as np

H, W = 240, 320
FRAMES = 32
#: docs/SCADA.md's camera settings for the default model.
CAMERA = {"name": "truth", "source": "rtsp://unused", "clip_frames": 8,
          "options": {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9},
          "alarm": {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}}
#: Size bins, visible pixels (upper bounds).
BINS = (1000, 3000, math.inf)


def scene(seed: int):
    """(leak frames, twin frames, the real plume's facts) of one scene seed, or None without visible gas."""
    from leakseg.synth import CALM_EFFECTS, generate_clip

    calm = dict(frames=FRAMES, height=H, width=W, version=3, effects=CALM_EFFECTS)
    frames, masks, meta = generate_clip(seed, leak="start", **calm)
    twin, none, _ = generate_clip(seed, leak="none", **calm)
    assert not none.any()
    start = meta["emission"]["first_frame"]
    running = masks[start:].reshape(FRAMES - start, -1).sum(axis=1)
    if not running.any():
        return None
    cam = meta["camera"]
    x, y = meta["source_xy"]
    facts = {"seed": seed, "start": start, "duration": FRAMES - start, "size": float(running.mean()),
             "contrast": abs(cam["gas_contrast"] * cam["gain"]), "polarity": meta["plume_polarity"],
             "position": [int(np.clip(round(x), 0, W - 1)), int(np.clip(round(y), 0, H - 1))]}
    return frames, twin, masks, facts


def judged(frames, masks, camera, segmenter, duration: int) -> Dict:
    """Detected or not, and when, by the camera's production path and alarm rule."""
    from leakseg.selftest.trials import alarm_bound, alarm_replay, judge, replay

    seen = replay(frames, camera, segmenter, None)
    gas = np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1))
    outcome = judge(alarm_replay([obs for obs, _ in seen], camera.alarm), int(gas[0]),
                    alarm_bound(duration, camera.alarm.n, None))
    return {"detected": outcome.detected, "alarm_frame": outcome.alarm_frame, "gas_first": int(gas[0]),
            "alarm_before_gas": outcome.alarm_before_gas}


def one_seed(seed: int, camera, segmenter) -> Dict:
    from leakseg.selftest.inject import PlumeSpec, inject_plume

    made = scene(seed)
    if made is None:
        return {"seed": seed, "skipped": "no visible gas"}
    frames, twin, masks, facts = made
    spec = PlumeSpec(max(1, round(facts["size"])), facts["contrast"], facts["polarity"], facts["duration"],
                     tuple(facts["position"]), seed)
    injected = inject_plume(twin, spec, facts["start"])
    return {**facts, "injected_size": injected.measured_size_pixels,
            "real": judged(frames, masks, camera, segmenter, facts["duration"]),
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
    for seed in range(*args.seeds):
        if seed in done:
            continue
        began = time.monotonic()
        row = one_seed(seed, camera, segmenter)
        with args.out.open("a") as out:
            out.write(json.dumps(row) + "\n")
        print(f"seed {seed}: {json.dumps(row)[:160]} ({time.monotonic() - began:.0f} s)", flush=True)
    print(summary([json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
