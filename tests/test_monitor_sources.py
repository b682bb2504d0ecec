"""Monitor sources with real media: video files written with PyAV, drop folders, a real RTSP server."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from PIL import Image

from leakseg.monitor.config import CameraConfig
from leakseg.monitor.sources import make_source
from support.monitor_fixtures import rtsp_server  # noqa: F401  (fixture)
from support.monitor_media import write_video


class Recorder:
    def __init__(self):
        self.frames, self.pts, self.faults, self.events = [], [], [], []
        self.lock = threading.Lock()
        self.done = threading.Event()

    def frame(self, pixels, pts):
        with self.lock:
            self.frames.append(pixels)
            self.pts.append(pts)
            self.events.append(("frame", time.monotonic()))

    def fault(self, reason):
        with self.lock:
            self.faults.append(reason)
            self.events.append(("fault", reason))

    def recovered(self):
        with self.lock:
            self.events.append(("recovered", time.monotonic()))

    def ended(self):
        self.done.set()

    def wait(self, predicate, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self):
                    return
            time.sleep(0.05)
        raise AssertionError(f"timed out; events so far: {self.events[-8:]}, faults {self.faults}")


def start(camera: CameraConfig):
    rec, stop = Recorder(), threading.Event()
    source = make_source(camera, rec, stop)
    source.start()
    return rec, stop, source


def ramp(n, h=48, w=64, dtype=np.uint8, step=3):
    return np.stack([(np.arange(h * w).reshape(h, w) * 7 + i * step) % (256 if dtype == np.uint8 else 60000)
                     for i in range(n)]).astype(dtype)


def test_video_file_frames_decimated_by_timestamp_and_exact(tmp_path):
    frames = ramp(30)
    path = write_video(tmp_path / "cam.mkv", frames, fps=30)
    cam = CameraConfig(name="f", source=str(path), analysis_fps=5, realtime=False)
    rec, stop, source = start(cam)
    assert rec.done.wait(30)
    stop.set()
    source.join(5)
    # 1 s of video at 30 fps, 5 analysed per second: every 6th frame, pixels unchanged (lossless FFV1, grey)
    assert len(rec.frames) == 5
    for k, got in enumerate(rec.frames):
        assert got.dtype == np.uint8 and got.shape == (48, 64)
        assert np.array_equal(got, frames[6 * k])
    assert [round(p, 3) for p in rec.pts] == [round(6 * k / 30, 3) for k in range(5)]
    assert rec.faults == []


def test_16_bit_video_stays_16_bit(tmp_path):
    frames = ramp(6, dtype=np.uint16, step=1000)
    path = write_video(tmp_path / "radiometric.mkv", frames, fps=10)
    rec, stop, source = start(CameraConfig(name="r", source=str(path), analysis_fps=None, realtime=False))
    assert rec.done.wait(30)
    stop.set()
    assert len(rec.frames) == 6 and all(f.dtype == np.uint16 for f in rec.frames)
    assert all(np.array_equal(a, b) for a, b in zip(rec.frames, frames))


def test_realtime_file_is_paced_at_its_frame_rate(tmp_path):
    path = write_video(tmp_path / "cam.mkv", ramp(20), fps=20)  # 1 s of video
    t0 = time.monotonic()
    rec, stop, source = start(CameraConfig(name="p", source=str(path), analysis_fps=None))  # realtime by default
    assert rec.done.wait(30)
    stop.set()
    assert len(rec.frames) == 20 and time.monotonic() - t0 >= 0.9


def test_frozen_stream_is_a_camera_fault_not_frames(tmp_path):
    frozen = (ramp(1).astype(np.int32) + 100) % 256  # a picture none of the moving frames shows
    frames = np.concatenate([ramp(5), np.repeat(frozen.astype(np.uint8), 12, axis=0), ramp(5, step=7)])
    path = write_video(tmp_path / "frozen.mkv", frames, fps=30)
    cam = CameraConfig(name="z", source=str(path), analysis_fps=None, realtime=False, faults={"frozen_frames": 4})
    rec, stop, source = start(cam)
    assert rec.done.wait(30)
    stop.set()
    kinds = [e[0] for e in rec.events]
    assert rec.faults and rec.faults[0].startswith("frozen: 4 identical frames")
    # 5 moving + 3 of the frozen picture delivered, then nothing until it moves again, then recovered
    assert kinds[:8] == ["frame"] * 8 and kinds[8] == "fault" and kinds[9] == "recovered"
    assert len(rec.frames) == 5 + 3 + 5


def test_missing_file_is_lost_and_retried_with_backoff(tmp_path):
    cam = CameraConfig(name="m", source=str(tmp_path / "absent.mkv"), faults={"reconnect_initial": 0.2,
                                                                               "reconnect_max": 0.4})
    rec, stop, source = start(cam)
    rec.wait(lambda r: len(r.faults) >= 3, timeout=20)
    stop.set()
    source.join(5)
    assert not source.is_alive()
    assert all(f.startswith("lost: ") for f in rec.faults) and source.reconnects >= 3


def test_drop_folder_natural_order_8_and_16_bit_npy_and_end(tmp_path):
    folder = tmp_path / "drop"
    folder.mkdir()
    cam = CameraConfig(name="d", source=str(folder), delete_after_read=True)
    assert cam.kind == "folder"
    rec, stop, source = start(cam)
    a16 = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 13)
    Image.fromarray(a16).save(folder / "frame10.png")  # 16-bit PNG
    np.save(folder / "frame2.npy", np.full((48, 64), 7, np.uint8))
    Image.fromarray(np.full((48, 64), 9, np.uint8)).save(folder / ".frame11.png")  # hidden: still being written
    rec.wait(lambda r: len(r.frames) == 2)
    (folder / ".frame11.png").rename(folder / "frame11.png")
    rec.wait(lambda r: len(r.frames) == 3)
    (folder / "END").touch()
    assert rec.done.wait(10)
    stop.set()
    first, second, third = rec.frames
    # frame2 and frame10 were both there at the first poll: natural order, not alphabetical
    assert first.dtype == np.uint8 and first[0, 0] == 7
    assert second.dtype == np.uint16 and np.array_equal(second, a16)
    assert third[0, 0] == 9
    assert sorted(p.name for p in folder.iterdir()) == ["END"]  # delete_after_read


def test_rtsp_camera_that_stops_is_a_fault_and_recovers_when_it_returns(rtsp_server):
    cam = CameraConfig(name="rtsp", source=rtsp_server.url, analysis_fps=5,
                       faults={"reconnect_initial": 0.5, "reconnect_max": 1.0, "open_timeout": 3})
    rec, stop, source = start(cam)
    try:
        rec.wait(lambda r: len(r.frames) >= 5, timeout=30)
        first = rec.frames[0]
        assert first.shape == (120, 160, 3) and first.dtype == np.uint8
        # 10 fps stream at analysis_fps 5: every 2nd frame, by the stream's timestamps (wall-clock
        # arrival can come in bursts on a loaded machine; the timestamps cannot)
        rec.wait(lambda r: len(r.frames) >= 12, timeout=30)
        with rec.lock:
            steps = np.diff([p for p in rec.pts[:12]])
        assert np.median(steps) == pytest.approx(0.2, abs=0.02), steps
        assert steps.min() >= 0.19, steps
        rtsp_server.stop()
        rec.wait(lambda r: r.faults, timeout=30)
        assert rec.faults[0].startswith("lost: ")
        n_down = len(rec.frames)
        time.sleep(1.5)
        assert len(rec.frames) == n_down  # nothing while it is down
        rtsp_server.start()
        rec.wait(lambda r: any(e[0] == "recovered" for e in r.events), timeout=40)
        rec.wait(lambda r: len(r.frames) >= n_down + 3, timeout=20)
    finally:
        stop.set()
        source.join(10)
