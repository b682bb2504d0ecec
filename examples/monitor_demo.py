"""`make demo-monitor`: a synthetic leak video -> `leakseg monitor` -> the alarm arriving over MQTT and OPC UA.

    python examples/monitor_demo.py --archive model_store/jvlgs.mar          # model in process
    python examples/monitor_demo.py --url http://127.0.0.1:8080 --key-file .leakseg/serve/key_file.json

It writes a synthetic infrared clip of a calm scene in which a gas leak starts, stops and clears
(leakseg's own generator, leak mode "burst") as a video file, starts a private mosquitto broker when
one is installed, runs the monitor on the video with its OPC UA server and MQTT publisher, and prints
what a SCADA client sees: the OPC UA events and variables, and the MQTT topics: the LEAK alarm raised,
then cleared. Evidence (overlay GIFs, JSON) and the event log land in .leakseg/monitor-demo/. The camera
uses the settings docs/SCADA.md gives for the bundled default model ("The default model in the
monitor"): it finds plumes in calm scenes like this one but is weak on busy ones (docs/DEFAULT_MODEL.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(".leakseg/monitor-demo")
#: docs/SCADA.md, "The default model in the monitor": the camera settings measured for the bundled model.
DEFAULT_MODEL_OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}
DEFAULT_MODEL_ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_leak_video(path: Path, frames: int = 40, fps: int = 5) -> Path:
    import av

    from leakseg.synth import CALM_EFFECTS, generate_clip

    clip, masks, _ = generate_clip(0, frames=frames, height=240, width=320, leak="burst", version=3,
                                   effects=CALM_EFFECTS)
    gas = np.flatnonzero(masks.reshape(frames, -1).any(axis=1))
    print(f"video: {frames} frames at {fps} fps, gas visible in frames {gas[0]}-{gas[-1]}", flush=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = clip.shape[2], clip.shape[1], "gray"
        for f in clip:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="gray")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", help="run the model in process from this .mar")
    p.add_argument("--url", help="or a running leakseg service")
    p.add_argument("--key-file")
    p.add_argument("--model", default="jvlgs")
    args = p.parse_args()
    if not (args.archive or args.url):
        p.error("give --archive or --url")

    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("asyncua", "pymodbus"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL)

    from leakseg.monitor.config import parse_config
    from leakseg.monitor.runner import Monitor
    from leakseg.monitor.segmenters import ArchiveSegmenter, ServiceSegmenter
    from leakseg.monitor.sinks import build_sinks

    OUT.mkdir(parents=True, exist_ok=True)
    video = write_leak_video(OUT / "leak.mkv")
    broker, broker_port = None, None
    exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    if exe:
        broker_port = free_port()
        (OUT / "mosquitto.conf").write_text(f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([exe, "-c", str(OUT / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    else:
        print("mosquitto is not installed: MQTT part skipped (apt-get install mosquitto)")
    opc_port = free_port()
    sinks = {"jsonl": {"path": str(OUT / "events.jsonl")},
             "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{opc_port}/leakseg"}}
    if broker_port:
        sinks["mqtt"] = {"port": broker_port, "topic_prefix": "leakseg"}
    config = parse_config({
        "service": {"url": args.url or "http://127.0.0.1:8080", "model": args.model,
                    "key_file": args.key_file, "timeout": 300},
        "evidence_dir": str(OUT / "evidence"),
        "cameras": [{"name": "demo-cam", "source": str(video), "analysis_fps": None, "clip_frames": 8,
                     "realtime": False, "options": DEFAULT_MODEL_OPTIONS, "alarm": DEFAULT_MODEL_ALARM}],
        "sinks": sinks,
    })
    s = config.service
    segmenter = (ArchiveSegmenter(args.archive) if args.archive else
                 ServiceSegmenter(s.url, s.model, args.key_file, s.token_env, s.timeout, 4))
    monitor = Monitor(config, segmenter, build_sinks(config), until_sources_end=True, status_table=False)

    if broker_port:
        import paho.mqtt.client as mqtt

        def on_message(c, u, m):
            body = m.payload.decode()
            if m.topic.endswith("/event"):
                e = json.loads(body)
                print(f"  MQTT   {m.topic}: {e['type']} {e['message']}", flush=True)
            elif m.topic.endswith("/status"):
                print(f"  MQTT   {m.topic}: {body}", flush=True)

        mc = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)
        mc.on_message = on_message
        mc.on_connect = lambda c, u, f, rc, p=None: c.subscribe("leakseg/#", qos=1)
        mc.connect("127.0.0.1", broker_port)
        mc.loop_start()

    class Events:
        def event_notification(self, ev):
            print(f"  OPC UA event from {ev.SourceName}: {ev.ConditionName} {ev.Transition} "
                  f"(alarm {ev.AlarmId}, {ev.AreaPixels} px, severity {ev.Severity})", flush=True)

    async def run():
        from asyncua import Client

        task = asyncio.create_task(monitor.run_async())
        while not monitor.started.is_set():
            await asyncio.sleep(0.05)
        client = Client(f"opc.tcp://127.0.0.1:{opc_port}/leakseg")
        await client.connect()
        try:
            idx = await client.get_namespace_index("urn:leakseg:monitor")
            cam = await client.nodes.objects.get_child([f"{idx}:LeakSeg", f"{idx}:demo-cam"])
            etype = await client.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", "0:ConditionType",
                 "0:AcknowledgeableConditionType", "0:AlarmConditionType", f"{idx}:LeakSegAlarmType"])
            sub = await client.create_subscription(50, Events())
            await sub.subscribe_events(cam, etype)
            state = await cam.get_child(f"{idx}:State")
            area = await cam.get_child(f"{idx}:LeakAreaPixels")
            last = None
            while not task.done():
                try:
                    now = (await state.read_value(), await area.read_value())
                except Exception:  # noqa: BLE001
                    if monitor.stop_event.is_set() or task.done():
                        break  # the monitor stopped its OPC UA server: the video ended
                    raise
                if now != last:
                    print(f"  OPC UA variables: State={now[0]} LeakAreaPixels={now[1]}", flush=True)
                    last = now
                await asyncio.sleep(0.5)
        finally:
            try:
                await client.disconnect()
            except Exception:  # noqa: BLE001 - the server may be gone already
                pass
        return await task

    print(f"OPC UA: opc.tcp://127.0.0.1:{opc_port}/leakseg   MQTT: 127.0.0.1:{broker_port}   "
          f"model: {segmenter.name}", flush=True)
    try:
        rc = asyncio.run(run())
    finally:
        if broker_port:
            time.sleep(0.5)
            mc.loop_stop()
            mc.disconnect()
        if broker is not None:
            broker.terminate()
            broker.wait(10)
    raised = [json.loads(x) for x in (OUT / "events.jsonl").read_text().splitlines() if '"alarm_raised"' in x]
    print(f"\n{len(raised)} alarm(s) raised; event log {OUT / 'events.jsonl'}; evidence in {OUT / 'evidence'}")
    for e in raised:
        print(f"  {e['alarm']['id']}: {e['alarm']['kind']} {e['message']}  evidence: {e['alarm']['evidence']}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
