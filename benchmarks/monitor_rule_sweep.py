"""Which camera settings make a model's monitor alarms right: one alarm per leak, none without gas.

    python benchmarks/monitor_rule_sweep.py --archive model_store/jvlgs.mar --seeds 0 12
    python benchmarks/monitor_rule_sweep.py --archive model_store/jvlgs.mar --seeds 12 20 \\
        --only 0.9 200 3 5 5                                     # check one setting on fresh scenes

For each scene seed: a calm generator-v3 scene (leakseg.synth.CALM_EFFECTS, 240 x 320) in which a
plume leaks, stops and clears (leak mode "burst"), and its leak-free twin (the same scene and camera, no gas):
tests/support/monitor_media.py's leak_and_twin, the videos of the monitor's default-model test. The archive
segments both once (absolute probabilities, opening 9, the logits thresholded at each --thresholds value);
then the monitor's own alarm logic (leakseg.monitor.alarm) runs over the per-frame areas for every rule
(min_area_pixels, k of n, clear_frames). A leak video is *right* when it gives exactly one LEAK alarm, raised
between the first emitted frame and the last frame with gas, and cleared; a twin is right with no alarm.
Prints the best settings by (right leak videos + right twins). Frames are segmented in chunks of at most
32 (the service's limit) that overlap by two, so every frame gets its published triplet, as in the monitor.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.monitor_media import H, W, leak_and_twin  # noqa: E402  (the monitor tests' burst video and its twin)

CHUNK = 32


def frame_areas(predictor, frames, thresholds, opening):
    """{threshold: [area of frame t]} for one video."""
    from leakseg.inference.postprocess import postprocess
    from leakseg.schema import ClipOptions

    parts, start = [], 0
    while start < len(frames):
        stop = min(start + CHUNK, len(frames))
        logits = np.asarray(predictor.logits(list(frames[start:stop])))
        keep = stop - start if stop == len(frames) else stop - start - 2
        parts.append(logits[:keep])
        start += keep
    logits = torch.from_numpy(np.concatenate(parts))
    h, w = frames.shape[1:3]
    return {t: postprocess(logits, h, w, ClipOptions(normalization="absolute", threshold=t,
                                                     opening_kernel=opening)).area.tolist() for t in thresholds}


def alarms(areas, rule):
    """(type, frame) of every LEAK raise and clear the monitor's logic gives on these areas."""
    from leakseg.monitor.alarm import AlarmLogic, Observation
    from leakseg.monitor.config import AlarmSettings

    logic = AlarmLogic("sweep", AlarmSettings(**rule))
    out = []
    for t, area in enumerate(areas):
        for e in logic.observe(Observation(t, float(t), int(area), area / (H * W), 1.0)):
            if e.alarm is not None and e.type in ("alarm_raised", "alarm_cleared"):
                out.append((e.type, t))
    return out


def score(scenes, threshold, rule):
    """(leak videos with one alarm on time, twins without any alarm)."""
    on_time = quiet = 0
    for scene in scenes.values():
        events = alarms(scene["leak"][threshold], rule)
        gas = [t for t, a in enumerate(scene["gas"]) if a > 0]
        one = [e for e, _ in events] == ["alarm_raised", "alarm_cleared"]
        on_time += one and scene["first_emitted"] <= events[0][1] <= gas[-1]
        quiet += not alarms(scene["twin"][threshold], rule)
    return on_time, quiet


def _rule(area, k, n, clear):
    return dict(min_area_pixels=int(area), k=int(k), n=int(n), clear_frames=int(clear))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", required=True, help=".mar or extracted archive folder")
    p.add_argument("--seeds", nargs=2, type=int, default=(0, 12), metavar=("FIRST", "STOP"),
                   help="scene seeds FIRST..STOP-1 (default: 0 12)")
    p.add_argument("--frames", type=int, default=40, help="frames per video (default: 40)")
    p.add_argument("--thresholds", nargs="+", type=float, default=[0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999])
    p.add_argument("--areas", nargs="+", type=int, default=[100, 200, 300, 500], help="min_area_pixels values")
    p.add_argument("--rules", nargs="+", default=["3/5", "4/6"], help="k/n values (default: 3/5 4/6)")
    p.add_argument("--clear", nargs="+", type=int, default=[5], help="clear_frames values")
    p.add_argument("--only", nargs=5, type=float, metavar=("THRESHOLD", "AREA", "K", "N", "CLEAR"),
                   help="score one setting and print every scene's alarms")
    p.add_argument("--json", help="write the per-scene areas here")
    args = p.parse_args()

    from leakseg.inference.predictor import Predictor

    predictor = Predictor.from_archive(args.archive, device="cpu")
    thresholds = [args.only[0]] if args.only else args.thresholds
    scenes = {}
    for seed in range(*args.seeds):
        leak, twin, masks, meta = leak_and_twin(seed, args.frames)
        scenes[seed] = {"gas": masks.sum(axis=(1, 2)).tolist(), "first_emitted": meta["emission"]["first_frame"],
                        "leak": frame_areas(predictor, leak, thresholds, 9),
                        "twin": frame_areas(predictor, twin, thresholds, 9)}
        print(f"scene {seed}: segmented", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(scenes, f)
    if args.only:
        t, rule = args.only[0], _rule(*args.only[1:])
        for seed, scene in scenes.items():
            print(f"scene {seed}: leak {alarms(scene['leak'][t], rule)}  twin {alarms(scene['twin'][t], rule)}")
        rows = [(t, rule)]
    else:
        grid = itertools.product(thresholds, args.areas, args.rules, args.clear)
        rows = [(t, _rule(area, *kn.split("/"), clear)) for t, area, kn, clear in grid]
    scored = sorted(((score(scenes, t, rule), t, rule) for t, rule in rows), key=lambda r: (-sum(r[0]), -r[0][0]))
    for (on_time, quiet), t, rule in scored[:10]:
        print(f"threshold {t:<6} {rule}: one alarm on time {on_time}/{len(scenes)}, twin quiet {quiet}/{len(scenes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
