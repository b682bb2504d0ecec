"""`leakseg monitor` end to end: a real video file -> overlapping windows -> the real TorchServe (or the
archive in process) -> ignore mask -> alarm logic -> JSON lines log and evidence; SIGTERM; backpressure.

The test model (tests/conftest.py: tiny.mar, a randomised small JVLGS) does not know what a leak is, so
these tests do not judge the model: they check that the monitor's alarms are exactly what the alarm
rule gives on the service's own per-frame answers, asked for directly with the client SDK, window by
window (the oracle). Options ``minmax`` + no opening make every frame's mask non-empty, so the
alarm threshold (the oracle's median plume area) gives alarms that start and stop.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from leakseg.monitor.alarm import AlarmLogic, Observation
from leakseg.monitor.config import AlarmSettings, parse_config
from leakseg.monitor.runner import Monitor
from leakseg.monitor.segmenters import ArchiveSegmenter, ServiceSegmenter
from leakseg.monitor.sinks import build_sinks
from leakseg.monitor.windows import Frame, WindowBuilder
from support.monitor_fixtures import free_port
from support.monitor_media import read_video, recording_camera, sequence, write_video

OPTIONS = {"normalization": "minmax", "opening_kernel": 0}
N_FRAMES = 15  # windows 0-7, 6-13 and the tail 12-14: every frame reported once


def oracle_windows(frames, length=8):
    builder = WindowBuilder("oracle", length)
    windows = [w for w in (builder.push(Frame(i, f, float(i))) for i, f in enumerate(frames)) if w]
    tail = builder.flush()
    return windows + ([tail] if tail else [])


def oracle_answers(client, frames):
    """[(seq, area_pixels, mask)] for every reported frame, from the service directly."""
    out = []
    for w in oracle_windows(frames):
        result = client.segment(np.stack([f.pixels for f in w.frames]), options=OPTIONS)
        masks = result.masks()
        for i, f in enumerate(w.reported):
            out.append((f.seq, result.frames[i].area_pixels, masks[i], result.frames[i].max_score))
    return out


def oracle_events(answers, settings, ignore=None):
    logic = AlarmLogic("oracle", settings)
    events = []
    for seq, area, mask, score in answers:
        if ignore is not None:
            area = int((mask & ~ignore).sum())
        for e in logic.observe(Observation(seq, float(seq), area, area / mask.size, score)):
            if e.alarm is not None and e.type != "alarm_updated":
                events.append((e.type, e.alarm.kind.value, e.alarm.first_seq))
    return events


def monitor_events(jsonl: Path, camera: str):
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    return [(e["type"], e["alarm"]["kind"], e["alarm"]["first_seq"]) for e in lines
            if e.get("camera") == camera and e.get("alarm") and e["type"] != "alarm_updated"], lines


def camera(name, source, **kw):
    return recording_camera(name, source, **{"options": OPTIONS, **kw})


@pytest.fixture
def leak_video(tmp_path):
    frames = sequence(N_FRAMES, plume_frames=range(5, 11))
    path = write_video(tmp_path / "leak.mkv", frames, fps=10)
    return path, read_video(path)


def test_through_torchserve_every_frame_once_alarms_match_the_service_and_the_ignore_mask_suppresses(
        served, tmp_path, leak_video):
    from leakseg.client import LeakSegClient

    path, frames = leak_video
    with LeakSegClient(served.inference_url, model=served.model, key_file=served.key_file, timeout=120) as client:
        answers = oracle_answers(client, frames)
    assert [a[0] for a in answers] == list(range(N_FRAMES))
    areas = [a[1] for a in answers]
    threshold = int(np.median(areas)) + 1
    settings = {"min_area_pixels": threshold, "k": 2, "n": 3, "clear_frames": 2}
    expected = oracle_events(answers, AlarmSettings(**settings))
    assert [t for t, _, _ in expected].count("alarm_raised") >= 1, (areas, threshold)
    assert "alarm_cleared" in [t for t, _, _ in expected], (areas, threshold)
    # an ignore mask over every pixel the service ever marked: nothing is left to raise an alarm
    ignore = np.any(np.stack([a[2] for a in answers]), axis=0)
    Image.fromarray((ignore * 255).astype(np.uint8)).save(tmp_path / "ignore.png")
    assert oracle_events(answers, AlarmSettings(**settings), ignore) == []

    cfg = parse_config({
        "service": {"url": served.inference_url, "model": served.model, "key_file": str(served.key_file),
                    "timeout": 120, "concurrency": 2},
        "evidence_dir": str(tmp_path / "evidence"),
        "cameras": [camera("plain", path, alarm=settings),
                    camera("masked", path, alarm=settings, ignore_mask=str(tmp_path / "ignore.png"))],
        "sinks": {"jsonl": {"path": str(tmp_path / "events.jsonl"), "states": True}},
    })
    s = cfg.service
    monitor = Monitor(cfg, ServiceSegmenter(s.url, s.model, str(s.key_file), s.token_env, s.timeout, 4),
                      build_sinks(cfg), until_sources_end=True, status_table=False)
    assert monitor.run() == 0

    got, lines = monitor_events(tmp_path / "events.jsonl", "plain")
    assert got == expected
    masked, _ = monitor_events(tmp_path / "events.jsonl", "masked")
    assert masked == []
    for name in ("plain", "masked"):
        c = monitor.cameras[name]
        assert c.logic.frames_analysed == N_FRAMES  # every frame of the stream, exactly once
        assert c.counters.windows_sent == 3 and c.counters.windows_dropped == 0 and c.counters.frames_dropped == 0
    assert lines[-1]["type"] == "monitor_stopped"
    assert [e["state"] for e in lines if e["type"] == "state_changed"][-2:] == ["OFFLINE", "OFFLINE"]
    # evidence of each LEAK alarm: the overlay GIF and the service's JSON of the window that raised it
    leak_alarms = [e for e in lines if e.get("alarm") and e["alarm"]["kind"] == "LEAK"]
    cleared = {e["alarm"]["id"] for e in leak_alarms if e["type"] == "alarm_cleared"}
    assert cleared  # the oracle clears at least one
    for alarm_id in {e["alarm"]["id"] for e in leak_alarms if e["type"] == "alarm_raised"}:
        folder = tmp_path / "evidence" / alarm_id
        gifs, jsons = list(folder.glob("window-*.gif")), list(folder.glob("window-*.json"))
        assert gifs and jsons and (folder / "alarm.json").exists()
        with Image.open(gifs[0]) as gif:
            assert gif.n_frames >= 3 and gif.size == (320, 240)
        alarm = json.loads((folder / "alarm.json").read_text())
        assert alarm["id"] == alarm_id and alarm["peak_area_pixels"] >= threshold
        # alarm.json says whether it was cleared (an alarm still up when the stream ends has no end)
        assert (alarm["end"] is not None) == (alarm_id in cleared), (alarm_id, cleared)


def test_unreachable_service_is_a_service_fault_never_no_leak(tmp_path, leak_video):
    path, _ = leak_video
    port = free_port()  # nothing listens there
    cfg = parse_config({
        "service": {"url": f"http://127.0.0.1:{port}", "retry_seconds": 0.2, "timeout": 5},
        "evidence_dir": str(tmp_path / "evidence"),
        "cameras": [camera("c", path)],
        "sinks": {"jsonl": {"path": str(tmp_path / "events.jsonl"), "states": True}},
    })
    s = cfg.service
    monitor = Monitor(cfg, ServiceSegmenter(s.url, s.model, None, "LEAKSEG_NO_SUCH_TOKEN", s.timeout, 4),
                      build_sinks(cfg), until_sources_end=True, status_table=False)
    assert monitor.run() == 0
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    raised = [e for e in lines if e["type"] == "alarm_raised"]
    assert [e["alarm"]["kind"] for e in raised] == ["SERVICE_FAULT"]
    assert "ConnectionFailed" in raised[0]["alarm"]["reason"]
    states = [e["state"] for e in lines if e["type"] == "state"]
    assert "NORMAL" not in states[states.index("SERVICE_FAULT"):]  # never "no leak" while it is down
    c = monitor.cameras["c"]
    assert c.logic.frames_analysed == 0 and c.counters.windows_failed == 3


def test_in_process_archive_mode_matches_and_writes_evidence(onnx_archive, predictor, tmp_path, leak_video):
    """--archive: the same monitor with the model in process (no TorchServe)."""
    path, frames = leak_video
    answers = []
    for w in oracle_windows(frames):
        result = predictor.predict([f.pixels for f in w.frames], options=OPTIONS)
        masks = result.masks()
        answers += [(f.seq, result.frames[i].area_pixels, masks[i], result.frames[i].max_score)
                    for i, f in enumerate(w.reported)]
    threshold = int(np.median([a[1] for a in answers])) + 1
    settings = {"min_area_pixels": threshold, "k": 1, "n": 1, "clear_frames": 1}
    expected = oracle_events(answers, AlarmSettings(**settings))
    assert expected
    cfg_path = tmp_path / "monitor.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "evidence_dir": "evidence", "cameras": [camera("c", path, alarm=settings)],
        "sinks": {"jsonl": {"path": "events.jsonl"}}}))
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--config", str(cfg_path),
                          "--archive", str(onnx_archive), "--until-end"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got, _ = monitor_events(tmp_path / "events.jsonl", "c")
    assert got == expected
    # one log line per state change, readable
    assert "c: NORMAL -> LEAK" in out.stderr and "-> OFFLINE" in out.stderr
    assert any((tmp_path / "evidence").glob("*/window-*.gif"))


def test_sigterm_publishes_offline_and_exits_0(onnx_archive, tmp_path):
    frames = sequence(40, plume_frames=range(10, 30))
    path = write_video(tmp_path / "live.mkv", frames, fps=10)
    cfg_path = tmp_path / "monitor.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "evidence_dir": "evidence",
        "cameras": [{"name": "live", "source": str(path), "loop": True, "analysis_fps": 5, "clip_frames": 4,
                     "options": OPTIONS}],
        "sinks": {"jsonl": {"path": "events.jsonl", "states": True}}}))
    proc = subprocess.Popen([sys.executable, "-m", "leakseg.cli", "monitor", "--config", str(cfg_path),
                             "--archive", str(onnx_archive)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        log = tmp_path / "events.jsonl"
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if log.exists() and sum(1 for x in log.read_text().splitlines() if '"type":"state"' in x) >= 3:
                break
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            time.sleep(0.2)
        else:
            raise AssertionError("the monitor analysed nothing in 180 s")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert "SIGTERM: publishing OFFLINE, then stopping within 8 s" in err
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert lines[-1]["type"] == "monitor_stopped"
    assert [e["state"] for e in lines if e["type"] == "state_changed"][-1] == "OFFLINE"
    assert lines[-2]["type"] == "state" and lines[-2]["state"] == "OFFLINE"


def test_backpressure_drops_whole_windows_counts_them_and_memory_stays_bounded(predictor, tmp_path):
    """A 100 fps live camera, a window per frame (clip_frames 3): the model cannot keep up."""
    frames = sequence(200, plume_frames=())
    path = write_video(tmp_path / "fast.mkv", frames, fps=100)
    cfg = parse_config({"evidence_dir": str(tmp_path / "evidence"),
                        "cameras": [camera("fast", path, realtime=True, clip_frames=3, max_pending_windows=2)],
                        "sinks": {"jsonl": None}})

    class Slow(ArchiveSegmenter):
        """The real in-process model, plus the largest queue ever seen (read from the monitor)."""

        def __init__(self):
            self.predictor, self.name, self.max_pending = predictor, "tiny in process", 0
            import threading

            self.lock = threading.Lock()

        def segment(self, clip, prompts, options):
            self.max_pending = max(self.max_pending, len(monitor.cameras["fast"].pending))
            return super().segment(clip, prompts, options)

    segmenter = Slow()
    monitor = Monitor(cfg, segmenter, [], until_sources_end=True, status_table=False)
    assert monitor.run() == 0
    c = monitor.cameras["fast"]
    assert c.counters.frames_in == 200
    assert c.counters.windows_dropped > 0
    assert segmenter.max_pending <= 2  # never more than max_pending_windows waiting
    # every frame is accounted for: analysed once, or dropped with its window (counted)
    assert c.logic.frames_analysed + c.counters.frames_dropped == 200
    # clip_frames 3: one reported frame per window; the last window (the file's end) reports the last two frames,
    # with the frame before them for their triplets
    assert c.logic.frames_analysed == c.counters.windows_sent + 1


def test_service_down_then_back_is_a_service_fault_that_clears(served, tmp_path, leak_video):
    """The service's port refuses connections (SERVICE_FAULT), then answers again: the fault clears and
    the windows after it are analysed."""
    import threading
    from urllib.parse import urlparse

    from support.monitor_fixtures import Forwarder

    path, _ = leak_video
    proxy = Forwarder(urlparse(served.inference_url).port)  # closed: nothing listens
    log = tmp_path / "events.jsonl"
    cfg = parse_config({
        "service": {"url": f"http://127.0.0.1:{proxy.port}", "model": served.model,
                    "key_file": str(served.key_file), "timeout": 120, "retry_seconds": 2},
        "evidence_dir": str(tmp_path / "evidence"),
        "cameras": [camera("c", path)],
        "sinks": {"jsonl": {"path": str(log), "states": True}},
    })
    s = cfg.service
    monitor = Monitor(cfg, ServiceSegmenter(s.url, s.model, str(s.key_file), s.token_env, s.timeout, 4),
                      build_sinks(cfg), until_sources_end=True, status_table=False)
    runner = threading.Thread(target=monitor.run)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and '"SERVICE_FAULT"' in log.read_text()):
            assert time.monotonic() < deadline, "no SERVICE_FAULT while the service was down"
            time.sleep(0.05)
        proxy.open()
    finally:
        runner.join(600)
        proxy.close()
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    alarms = [(e["type"], e["alarm"]["kind"]) for e in lines if e.get("alarm")]
    assert alarms[:2] == [("alarm_raised", "SERVICE_FAULT"), ("alarm_cleared", "SERVICE_FAULT")]
    c = monitor.cameras["c"]
    assert c.counters.windows_failed == 1 and c.counters.windows_sent == 2
    assert c.logic.frames_analysed == N_FRAMES - 6  # the first window's 6 frames were lost (and counted)
    assert c.counters.frames_dropped == 6
