"""Faults under load, for `leakseg monitor`: what SCADA sees over MQTT, and whether any alarm event is lost.

The sibling of ``faults.py`` (which does the same for the SDK against TorchServe). Runs the real monitor
process (``leakseg monitor --config``) with one drop-folder camera fed at --fps, a scripted loopback service
(tests/support/fake_service.py: a leak in every frame during 4 s, none during the next 4 s, so LEAK alarms
come and go), a real mosquitto, and a SCADA-side MQTT client with a persistent session. Then, one after the
other, with --steady seconds of normal load before each:

1. ``service killed``: nothing listens on the service's port for --fault-seconds;
2. ``service hung``: the service accepts clips and never answers (``service.timeout`` 3 s);
3. ``service garbage``: 200 answers that are not a ClipResult;
4. ``camera disconnected``: no new frame for --fault-seconds (``stale_seconds`` 2), then frames again;
5. ``broker restarted``: mosquitto stopped for --fault-seconds, then started again;
6. ``SIGTERM under load``: the monitor is stopped.

For each it prints the state SCADA saw (the camera's retained state topic), the time from the fault to that
state, and the time from the end of the fault to a healthy state (NORMAL or LEAK); for SIGTERM, the time to
OFFLINE and to the process's exit. Then every alarm event of the monitor's JSON lines log (the ground truth)
is looked up among the events SCADA received: the goal is 0 lost. Exit status 1 otherwise.

    python benchmarks/monitor_faults.py [--fps 5] [--steady 6] [--fault-seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.fake_service import FakeService, Received, answer_clip  # noqa: E402
from support.monitor_fixtures import Forwarder, Mosquitto, MqttRecorder  # noqa: E402

from leakseg.utils.rle import encode_rle  # noqa: E402

CAMERA = "cam"
PREFIX = "faults"
HEALTHY = ("NORMAL", "LEAK")
ALARM_EVENTS = ("alarm_raised", "alarm_updated", "alarm_cleared", "alarm_acknowledged")


class ScriptedService:
    """The service's behaviour, switched by the benchmark: ok (leak 4 s on, 4 s off), hung, garbage."""

    def __init__(self):
        self.mode = "ok"
        self.service = FakeService(self.answer)

    def answer(self, received: Received, n: int):
        if self.mode == "hung":
            time.sleep(60)
        if self.mode == "garbage":
            return 200, {"frames": "not a clip result", "clip": [1, 2, 3]}
        status, body = answer_clip(received, n)
        if int(time.time() / 4) % 2:
            return status, calm(body)
        return status, body


def calm(body: dict) -> dict:
    """The same answer with no plume in any frame."""
    for frame in body["frames"]:
        mask = np.zeros((body["clip"]["height"], body["clip"]["width"]), bool)
        frame.update(leak=False, area_pixels=0, area_fraction=0.0, mask=encode_rle(mask))
    body["clip"].update(leak_detected=False, leak_frames=[], max_leak_fraction=0.0)
    return body


class Camera:
    """A drop-folder camera: one 32 x 32 frame every 1/fps s, written under a dot name and renamed."""

    def __init__(self, folder: Path, fps: float):
        self.folder, self.period = folder, 1.0 / fps
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = np.random.default_rng(0)
        while not self.stop.wait(self.period):
            if self.paused.is_set():
                continue
            tmp = self.folder / f".frame{self.count}.npy"
            np.save(tmp, rng.integers(0, 255, (32, 32), dtype=np.uint8))
            os.replace(tmp, self.folder / f"frame{self.count}.npy")
            self.count += 1


class Scada:
    """What SCADA receives: (monotonic time, topic, payload)."""

    def __init__(self, port: int):
        self.recorder = MqttRecorder(port, PREFIX, session=f"monitor-faults-{os.getpid()}")
        self.times: List[float] = []
        self.recorder.client.on_message = self._on_message

    def _on_message(self, client, userdata, message) -> None:
        with self.recorder.lock:
            self.times.append(time.monotonic())
            self.recorder.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

    def states(self) -> List[Tuple[float, str]]:
        with self.recorder.lock:
            return [(t, json.loads(p)["state"]) for t, (topic, p, _) in zip(self.times, self.recorder.messages)
                    if topic == f"{PREFIX}/{CAMERA}/state"]

    def first_state(self, after: float, wanted, timeout: float = 60.0) -> Tuple[Optional[float], str]:
        """(seconds from ``after`` to the first state in ``wanted``, that state), waiting up to ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, state in self.states():
                if t >= after and state in wanted:
                    return t - after, state
            time.sleep(0.05)
        return None, "-"

    def events(self) -> List[dict]:
        with self.recorder.lock:
            return [json.loads(p) for topic, p, _ in self.recorder.messages if topic == f"{PREFIX}/{CAMERA}/event"]


def config(root: Path, service_url: str, broker_port: int) -> Path:
    (root / CAMERA).mkdir()
    path = root / "monitor.yaml"
    path.write_text(yaml.safe_dump({
        "service": {"url": service_url, "timeout": 3, "retry_seconds": 1, "concurrency": 1},
        "cameras": [{"name": CAMERA, "source": str(root / CAMERA), "kind": "folder", "clip_frames": 4,
                     "delete_after_read": True, "faults": {"stale_seconds": 2},
                     "alarm": {"min_area_pixels": 1, "k": 2, "n": 3, "clear_frames": 2}}],
        "evidence_dir": str(root / "evidence"), "status_interval": 0.5,
        "sinks": {"jsonl": {"path": str(root / "events.jsonl")},
                  "mqtt": {"port": broker_port, "topic_prefix": PREFIX, "keepalive": 5}},
    }))
    return path


class Bench:
    def __init__(self, args, root: Path):
        self.args, self.root = args, root
        self.rows: List[Tuple[str, str, str, str]] = []
        self.broker = Mosquitto(root, persistent=True)
        self.service = ScriptedService()
        self.service.service.__enter__()
        self.port = Forwarder(int(self.service.service.url.rsplit(":", 1)[1]))
        self.port.open()
        self.scada = Scada(self.broker.port)
        self.camera: Optional[Camera] = None
        self.monitor: Optional[subprocess.Popen] = None

    def start(self) -> None:
        cfg = config(self.root, f"http://127.0.0.1:{self.port.port}", self.broker.port)
        self.camera = Camera(self.root / CAMERA, self.args.fps)
        self.camera.thread.start()
        cli = "import sys; from leakseg.cli import main; sys.exit(main())"
        self.monitor = subprocess.Popen([sys.executable, "-c", cli, "monitor", "--config", str(cfg), "--no-table"],
                                        stdout=subprocess.DEVNULL, stderr=open(self.root / "monitor.log", "w"),
                                        cwd=REPO)
        took, _ = self.scada.first_state(0, HEALTHY, timeout=120)
        if took is None:
            raise RuntimeError(f"the monitor did not start: {(self.root / 'monitor.log').read_text()[-2000:]}")

    def fault(self, name: str, begin, end, faulty_states) -> None:
        """Steady load, the fault for --fault-seconds, its end; one table row."""
        time.sleep(self.args.steady)
        t0 = time.monotonic()
        begin()
        to_fault, seen = (self.scada.first_state(t0, faulty_states, timeout=self.args.fault_seconds + 5)
                          if faulty_states else (None, "(its own link down)"))
        time.sleep(max(0.0, t0 + self.args.fault_seconds - time.monotonic()))
        t1 = time.monotonic()
        end()
        recovered, _ = self.scada.first_state(t1, HEALTHY)
        self.rows.append((name, seen, _secs(to_fault) if faulty_states else "-", _secs(recovered)))

    def sigterm(self) -> None:
        time.sleep(self.args.steady)
        t0 = time.monotonic()
        self.monitor.send_signal(signal.SIGTERM)
        offline, _ = self.scada.first_state(t0, ("OFFLINE",), timeout=30)
        code = self.monitor.wait(60)
        self.rows.append(("SIGTERM under load", f"OFFLINE, exit {code}", _secs(offline),
                          f"exit after {time.monotonic() - t0:.1f}"))

    def lost_events(self) -> Tuple[int, int]:
        """(alarm events in the JSON lines log, how many of them SCADA never received)."""
        logged = [json.loads(line) for path in sorted(self.root.glob("events.jsonl*"))
                  for line in path.read_text().splitlines()]
        truth = {(e["type"], e["alarm"]["id"], e["time"]) for e in logged if e.get("type") in ALARM_EVENTS}
        seen = {(e["type"], e["alarm"]["id"], e["time"]) for e in self.scada.events() if e["type"] in ALARM_EVENTS}
        return len(truth), len(truth - seen)

    def close(self) -> None:
        if self.monitor is not None and self.monitor.poll() is None:
            self.monitor.kill()
            self.monitor.wait()
        if self.camera is not None:
            self.camera.stop.set()
        self.scada.recorder.close()
        self.port.close()
        self.service.service.__exit__()
        self.broker.stop()


def _secs(value: Optional[float]) -> str:
    return "never" if value is None else f"{value:.1f}"


def failed(row: Tuple[str, str, str, str]) -> bool:
    name, seen, to_fault, recovered = row
    return recovered == "never" or (to_fault == "never" and not seen.startswith("("))


def run_faults(bench: Bench) -> None:
    service = bench.service
    bench.fault("service killed", bench.port.close, bench.port.open, ("SERVICE_FAULT",))
    bench.fault("service hung", lambda: setattr(service, "mode", "hung"), lambda: setattr(service, "mode", "ok"),
                ("SERVICE_FAULT", "CAMERA_FAULT"))
    bench.fault("service garbage", lambda: setattr(service, "mode", "garbage"),
                lambda: setattr(service, "mode", "ok"), ("SERVICE_FAULT", "CAMERA_FAULT"))
    bench.fault("camera disconnected", bench.camera.paused.set, bench.camera.paused.clear, ("CAMERA_FAULT",))
    bench.fault("broker restarted", bench.broker.stop, bench.broker.start, ())
    bench.sigterm()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fps", type=float, default=5.0, help="frames per second into the drop folder (default 5)")
    parser.add_argument("--steady", type=float, default=6.0, help="normal load before each fault, s (default 6)")
    parser.add_argument("--fault-seconds", type=float, default=8.0, help="how long each fault lasts (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="leakseg-monitor-faults-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.start()
            run_faults(bench)
        finally:
            bench.close()
        events, lost = bench.lost_events()
        tail = (Path(tmp) / "monitor.log").read_text().splitlines()[-5:]
    print(f"\none drop-folder camera at {args.fps:g} fps, faults of {args.fault_seconds:g} s; times in seconds")
    print(f"{'fault':22s} {'SCADA saw':22s} {'to fault':>9s} {'to recover':>18s}")
    for name, seen, to_fault, recovered in bench.rows:
        print(f"{name:22s} {seen:22s} {to_fault:>9s} {recovered:>18s}")
    print(f"alarm events in the monitor's log: {events}; not received by SCADA over MQTT: {lost}")
    print("monitor log tail:\n  " + "\n  ".join(tail))
    return 1 if lost or any(failed(row) for row in bench.rows) else 0


if __name__ == "__main__":
    sys.exit(main())
