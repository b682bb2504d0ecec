"""The monitor on a real RTSP camera (GStreamer's RTSP server) that stops mid-run and comes back."""

from __future__ import annotations

import json
import threading
import time

from leakseg.monitor.config import parse_config
from leakseg.monitor.runner import Monitor
from leakseg.monitor.segmenters import ArchiveSegmenter
from leakseg.monitor.sinks import build_sinks
from support.monitor_fixtures import rtsp_server  # noqa: F401  (fixture)


class InProcess(ArchiveSegmenter):
    """The session's tiny.mar predictor, in process (the archive mode of the monitor)."""

    def __init__(self, predictor):
        self.predictor, self.name, self.lock = predictor, "tiny.mar in process", threading.Lock()


def events(path):
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def wait(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_rtsp_camera_lost_mid_run_is_camera_fault_and_recovers(rtsp_server, predictor, tmp_path):
    log = tmp_path / "events.jsonl"
    cfg = parse_config({
        "evidence_dir": str(tmp_path / "evidence"),
        "cameras": [{"name": "gate", "source": rtsp_server.url, "analysis_fps": 2, "clip_frames": 3,
                     "options": {"normalization": "absolute"},
                     "faults": {"reconnect_initial": 0.5, "reconnect_max": 1, "open_timeout": 3,
                                "stale_seconds": 5}}],
        "sinks": {"jsonl": {"path": str(log), "states": True}},
    })
    monitor = Monitor(cfg, InProcess(predictor), build_sinks(cfg), status_table=False)
    runner = threading.Thread(target=monitor.run)
    runner.start()
    try:
        wait(lambda: any(e["type"] == "state" and e["frames_analysed"] >= 1 for e in events(log)), 120,
             "a first analysed window")
        rtsp_server.stop()
        wait(lambda: any(e["type"] == "alarm_raised" and e["alarm"]["kind"] == "CAMERA_FAULT" for e in events(log)),
             30, "CAMERA_FAULT")
        fault = next(e for e in events(log) if e["type"] == "alarm_raised")
        assert fault["state"] == "CAMERA_FAULT" and fault["alarm"]["reason"].startswith(("lost", "no new frame"))
        rtsp_server.start()
        wait(lambda: any(e["type"] == "alarm_cleared" and e["alarm"]["kind"] == "CAMERA_FAULT" for e in events(log)),
             60, "the camera to come back")
        analysed = monitor.cameras["gate"].logic.frames_analysed
        wait(lambda: monitor.cameras["gate"].logic.frames_analysed > analysed, 120, "frames analysed again")
    finally:
        monitor.request_stop()
        runner.join(120)
    assert not runner.is_alive()
    changes = [(e["previous_state"], e["state"]) for e in events(log) if e["type"] == "state_changed"]
    assert ("NORMAL", "CAMERA_FAULT") in changes or ("LEAK", "CAMERA_FAULT") in changes
    assert changes[-1][1] == "OFFLINE"
    # while the camera was down, nothing said "no leak": no state line between the fault and its end reads NORMAL
    lines = events(log)
    start = next(i for i, e in enumerate(lines) if e["type"] == "alarm_raised" and e["alarm"]["kind"] == "CAMERA_FAULT")
    end = next(i for i, e in enumerate(lines) if e["type"] == "alarm_cleared" and e["alarm"]["kind"] == "CAMERA_FAULT")
    assert all(e["state"] == "CAMERA_FAULT" for e in lines[start:end] if e["type"] == "state")
