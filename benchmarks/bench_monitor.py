"""How much `leakseg monitor` one model keeps up with, how fast an alarm reaches SCADA, and whether memory stays flat.

    python benchmarks/bench_monitor.py                       # the bundled default model, in process
    python benchmarks/bench_monitor.py --url http://127.0.0.1:8080 --key-file .leakseg/serve/key_file.json
    python benchmarks/bench_monitor.py --minutes 10          # the memory soak the issue asks for
    python benchmarks/bench_monitor.py --scenes still moving --baseline --live-cameras 5
    python benchmarks/bench_monitor.py --backbone pvt_v2_b5 --scenes moving --minutes 3   # a b5 of the published layout

Three measurements, in one run, on this machine:

1. capacity: ``--cameras`` cameras replay a recording as fast as the model takes it (``realtime: false``,
   no drops) for ``--capacity-seconds``; analysed frames per second over all cameras = what one model
   sustains, so cameras at ``analysis_fps`` f = capacity / f. Per scene of ``--scenes``: *moving* (a
   generator scene whose clouds drift, a plume in 150 of its 400 frames) or *still* (the same scene's first
   frame with sensor noise for 90 % of the loop, then 40 moving frames with a plume), with the change gate on
   (``--no-gate``: off) and the docs' settings for the default model. ``--baseline`` measures the same with
   today's windows of 8 (each frame encoded 1.33 times) and no gate, in the same run: the ratio is the gain;
2. latency: ``--live-cameras`` live cameras (videos paced at their frame rate, analysis_fps ``--fps``) whose
   plume comes and goes every 2 s; the alarm rule raises and clears often (k = n = clear = 1, threshold halfway between
   the model's median areas without and with the plume). For every
   LEAK alarm: (time the OPC UA client (first camera) / the MQTT client (all) received it) - (arrival time of
   the frame that raised it), p50 and p99. It includes the wait for the frame's triplet (the window: 2 frames
   at --fps when the model streams, up to 7 with windows of 8) and the model's time; windows dropped over
   all cameras say whether the model kept up (0: sustained);
3. memory: the same live camera for ``--minutes``; RSS every 10 s; growth = last minute's mean over the
   first minute's mean (after a one-minute warm-up).

Needs mosquitto for the MQTT part (skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.monitor_fixtures import free_port, wait_port  # noqa: E402
from support.monitor_media import sequence, write_video  # noqa: E402

from leakseg.monitor.config import parse_config  # noqa: E402
from leakseg.monitor.runner import Monitor  # noqa: E402
from leakseg.monitor.segmenters import ArchiveSegmenter, ServiceSegmenter  # noqa: E402
from leakseg.monitor.sinks import build_sinks  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def pct(values, q):
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values), q))


#: docs/SCADA.md's settings for the default model ("The default model in the monitor").
OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}


def make_archive(args, work: Path) -> Path:
    if args.archive:
        return Path(args.archive)
    if args.backbone != "pvt_v2_b0":
        return export_published_layout(args.backbone, work)
    from support.models import export_default_archive

    print("exporting the bundled default model ...", flush=True)
    return export_default_archive(work / "store")


def export_published_layout(backbone: str, work: Path) -> Path:
    """A JVLGS of ``backbone`` in the authors' layout (OWLv2 base text model), random weights: the published
    checkpoints' compute, not their masks."""
    import torch
    from support.authors_format import to_authors_state_dict

    from leakseg.export.exporter import ExportOptions, export_archive
    from leakseg.model import build_model
    from leakseg.model.text import build_text_model

    print(f"exporting a {backbone} JVLGS of the published layout (random weights) ...", flush=True)
    torch.manual_seed(0)
    model = build_model(backbone)
    checkpoint = work / f"{backbone}.pth"
    torch.save(to_authors_state_dict(model, build_text_model(model.config.text_model), prefix="module."), checkpoint)
    return export_archive(ExportOptions(checkpoint=checkpoint, name="jvlgs", output_dir=work / "store"))


def make_segmenter(args, archive: Optional[Path], stream: bool = True):
    if args.url:
        return ServiceSegmenter(args.url, args.model, args.key_file, "LEAKSEG_TOKEN", 300, args.cameras + 2)
    return ArchiveSegmenter(str(archive), stream=stream)


def scene_video(work: Path, kind: str, shift: int = 0) -> Path:
    """A looping recording: "moving" (clouds drift all the time, a plume in 150 of 400 frames) or "still"
    (90 %: the scene's first frame with sensor noise; then 40 moving frames with a plume), started ``shift``
    frames in (cameras of one plant do not all move at the same moment)."""
    path = work / f"{kind}-{shift}.mkv"
    if path.exists():
        return path
    if kind == "moving":
        frames = sequence(400, plume_frames=range(100, 250))
    else:
        moving = sequence(40, plume_frames=range(10, 30))
        rng = np.random.default_rng(0)
        still = np.clip(moving[0][None].astype(np.float32) + rng.normal(0, 1.5, (360, *moving.shape[1:])), 0, 255)
        frames = np.concatenate([np.rint(still).astype(np.uint8), moving])
    return write_video(path, np.roll(frames, -shift, axis=0), fps=10)


def capacity(args, segmenter, work: Path, kind: str = "moving", gate: bool = True, clip_frames=None) -> dict:
    video = scene_video(work, kind)
    cfg = parse_config({
        "service": {"concurrency": args.concurrency},
        "evidence_dir": str(work / "ev-cap"),
        "cameras": [{"name": f"cam{i}", "source": str(video), "realtime": False, "analysis_fps": None,
                     "clip_frames": clip_frames, "loop": True, "faults": {"stale_seconds": 3600},
                     "options": OPTIONS, "change_gate": {"enabled": gate}}
                    for i in range(args.cameras)],
        "sinks": {"jsonl": None},
    })
    monitor = Monitor(cfg, segmenter, [], status_table=False)
    t = threading.Thread(target=monitor.run, daemon=True)
    t.start()
    monitor.started.wait(120)
    time.sleep(args.warmup)
    def totals():
        cams = monitor.cameras.values()
        return (sum(c.logic.frames_analysed for c in cams), sum(c.counters.frames_skipped for c in cams),
                time.monotonic())

    n0, s0, t0 = totals()
    time.sleep(args.capacity_seconds)
    n1, s1, t1 = totals()
    length = next(iter(monitor.cameras.values())).builder.length
    monitor.request_stop()
    t.join(300)
    fps = (n1 - n0) / (t1 - t0)
    return {"scene": kind, "gate": gate, "window_frames": length, "model": segmenter.name,
            "analysed_fps": fps, "cameras_at_1fps": fps, "cameras_at_5fps": fps / 5,
            "share_skipped_by_gate": (s1 - s0) / max(n1 - n0, 1), "cameras": args.cameras}


def live(args, segmenter, work: Path, broker_port) -> dict:
    """Latency (OPC UA, MQTT) and RSS over --minutes with --live-cameras live cameras."""
    from asyncua import Client

    # the plume comes and goes every 4 s of video; the video loops
    frames = sequence(80, plume_frames=[i for i in range(80) if (i // 20) % 2 == 1])
    video = write_video(work / "live.mkv", frames, fps=10)
    extra, videos = {}, [video] * args.live_cameras
    if args.live_scene == "still":  # sustained, not latency: the still recording, the gate, the docs' settings;
        # each camera's recording starts elsewhere in the loop (--live-in-step: all move at the same moment)
        step = 0 if args.live_in_step else 400 // args.live_cameras
        videos = [scene_video(work, "still", i * step) for i in range(args.live_cameras)]
        extra = {"options": OPTIONS, "change_gate": {"enabled": args.gate}}
    opc_port = free_port()
    sinks = {"jsonl": {"path": str(work / "events.jsonl")},
             "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{opc_port}/leakseg"}}
    if broker_port:
        sinks["mqtt"] = {"port": broker_port, "topic_prefix": "bench"}
    # threshold: halfway between the median plume area the model gives on a window without the plume
    # and on one with it (both measured here), so the alarm follows the plume as well as the model does
    def median_area(start):
        probe = segmenter.segment(np.stack(frames[start:start + 8]), None, {})
        return float(np.median([f.area_pixels for f in probe.frames]))

    threshold = max(1, int((median_area(0) + median_area(20)) / 2))
    cfg = parse_config({
        "service": {"concurrency": 1},
        "evidence_dir": str(work / "ev-live"),
        "cameras": [{"name": "live" if i == 0 else f"live{i}", "source": str(videos[i]), "loop": True,
                     "analysis_fps": args.fps, "clip_frames": args.clip_frames,
                     "alarm": {"min_area_pixels": threshold, "k": 1, "n": 1, "clear_frames": 1}, **extra}
                    for i in range(args.live_cameras)],
        "sinks": sinks,
    })
    monitor = Monitor(cfg, segmenter, build_sinks(cfg), status_table=False)
    opc_lat, mqtt_lat, rss = [], [], []

    if broker_port:
        import paho.mqtt.client as mqtt

        def on_message(c, u, m):
            now = time.time()
            body = json.loads(m.payload)
            if body["type"] == "alarm_raised" and body["alarm"]["kind"] == "LEAK":
                mqtt_lat.append(now - body["alarm"]["start"])

        mc = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        mc.on_message = on_message
        mc.on_connect = lambda c, u, f, rc, p=None: c.subscribe("bench/+/event", qos=1)
        mc.connect("127.0.0.1", broker_port)
        mc.loop_start()

    class Handler:
        def event_notification(self, ev):
            now = time.time()
            if ev.ConditionName == "LEAK" and ev.Transition == "raised":
                start = monitor.cameras["live"].logic.recent[ev.AlarmId].start
                opc_lat.append(now - start)

    async def main():
        task = asyncio.create_task(monitor.run_async())
        while not monitor.started.is_set():
            await asyncio.sleep(0.05)
        async with Client(f"opc.tcp://127.0.0.1:{opc_port}/leakseg") as client:
            idx = await client.get_namespace_index("urn:leakseg:monitor")
            cam = await client.nodes.objects.get_child([f"{idx}:LeakSeg", f"{idx}:live"])
            etype = await client.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", "0:ConditionType",
                 "0:AcknowledgeableConditionType", "0:AlarmConditionType", f"{idx}:LeakSegAlarmType"])
            sub = await client.create_subscription(20, Handler())
            await sub.subscribe_events(cam, etype)
            end = time.monotonic() + args.minutes * 60
            while time.monotonic() < end:
                rss.append((time.monotonic(), rss_mb()))
                cams = monitor.cameras.values()
                print(f"  {len(rss) * 10:5d} s  RSS {rss[-1][1]:.1f} MB  analysed "
                      f"{sum(c.logic.frames_analysed for c in cams)}  alarms (opc/mqtt) {len(opc_lat)}/{len(mqtt_lat)}"
                      f"  dropped windows {sum(c.counters.windows_dropped for c in cams)}", flush=True)
                await asyncio.sleep(10)
        monitor.request_stop()
        await task

    asyncio.run(main())
    if broker_port:
        mc.loop_stop()
        mc.disconnect()
    t0 = rss[0][0]
    first = [m for t, m in rss if 60 <= t - t0 < 120] or [rss[0][1]]
    last = [m for t, m in rss if t - t0 >= rss[-1][0] - t0 - 60] or [rss[-1][1]]
    cams = monitor.cameras.values()
    return {"cameras": args.live_cameras, "scene": args.live_scene, "window_frames": next(iter(cams)).builder.length,
        "windows_skipped": sum(c.counters.windows_skipped for c in cams),
        "threshold_px": threshold, "alarms": len(opc_lat),
        "opcua_latency_p50_s": pct(opc_lat, 50), "opcua_latency_p99_s": pct(opc_lat, 99),
        "mqtt_latency_p50_s": pct(mqtt_lat, 50), "mqtt_latency_p99_s": pct(mqtt_lat, 99),
        "rss_first_min_mb": statistics.mean(first), "rss_last_min_mb": statistics.mean(last),
        "rss_growth_pct": 100 * (statistics.mean(last) / statistics.mean(first) - 1),
        "frames_analysed": sum(c.logic.frames_analysed for c in cams),
        "windows_dropped": sum(c.counters.windows_dropped for c in cams),
        "frames_dropped": sum(c.counters.frames_dropped for c in cams),
        "minutes": args.minutes, "analysis_fps": args.fps,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="a running leakseg service (default: the model in process)")
    p.add_argument("--key-file")
    p.add_argument("--model", default="jvlgs")
    p.add_argument("--archive", help="a .mar for in-process mode (default: export the bundled default model)")
    p.add_argument("--cameras", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--backbone", default="pvt_v2_b0",
                   help="pvt_v2_b0: the bundled default model; another: a JVLGS of the published layout, random weights")
    p.add_argument("--clip-frames", type=int, default=None,
                   help="window length of the live cameras (default: the monitor's: 3 streaming, 8 windowed)")
    p.add_argument("--scenes", nargs="+", choices=["moving", "still"], default=["moving"],
                   help="the capacity runs' scenes")
    p.add_argument("--no-gate", dest="gate", action="store_false", help="capacity runs without the change gate")
    p.add_argument("--baseline", action="store_true",
                   help="also measure capacity with windows of 8 and no gate (each frame encoded 1.33 times)")
    p.add_argument("--live-cameras", type=int, default=1)
    p.add_argument("--live-scene", choices=["plume", "still"], default="plume",
                   help="the live cameras' video: a plume every 2 s (latency), or the still recording with the "
                        "change gate (whether that many still cameras are sustained)")
    p.add_argument("--live-in-step", action="store_true",
                   help="still scene: every camera moves at the same moment (the worst case) instead of in turn")
    p.add_argument("--capacity-seconds", type=float, default=60)
    p.add_argument("--warmup", type=float, default=15)
    p.add_argument("--fps", type=float, default=1.0, help="analysis fps of the live camera")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--skip-capacity", action="store_true")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_monitor_"))
    broker = None
    try:
        archive = None if args.url else make_archive(args, work)
        segmenter = make_segmenter(args, archive)
        results = {"model": segmenter.name, "backbone": args.backbone, "cpu_count": os.cpu_count(),
                   "load_avg_start": os.getloadavg(), "capacity": []}
        runs = [] if args.skip_capacity else [(segmenter, kind, args.gate, None) for kind in args.scenes]
        if args.baseline and not args.skip_capacity:
            baseline = make_segmenter(args, archive, stream=False)
            runs = [(baseline, kind, False, 8) for kind in args.scenes] + runs
        for model, kind, gate, length in runs:
            print(f"capacity: {args.cameras} cameras, {kind} scene, gate {'on' if gate else 'off'}, {model.name}, "
                  f"as fast as the model goes, {args.capacity_seconds:.0f} s ...", flush=True)
            results["capacity"].append(capacity(args, model, work, kind, gate, length))
            print(json.dumps(results["capacity"][-1], indent=1), flush=True)
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        port = None
        if exe:
            port = free_port()
            (work / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
            broker = subprocess.Popen([exe, "-c", str(work / "m.conf")], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
            wait_port(port)
        else:
            print("mosquitto not found: MQTT latency skipped", flush=True)
        print(f"live camera at {args.fps:g} fps for {args.minutes:g} min: latency and memory ...", flush=True)
        results["live"] = live(args, segmenter, work, port)
        results["load_avg_end"] = os.getloadavg()
        print(json.dumps(results, indent=1, default=str))
    finally:
        if broker is not None:
            broker.terminate()
            broker.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
