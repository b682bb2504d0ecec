"""The monitor with a model that streams (in process, the archive's stream halves): each frame encoded once,
reported as soon as the frame two after it arrives, with the masks and alarms of today's windows of 8.

The default model on a calm scene with a real plume that leaks, stops and clears (tests/support/monitor_media.py:
leak_and_twin), with docs/SCADA.md's settings for it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from leakseg.monitor.config import parse_config
from leakseg.monitor.runner import Monitor
from leakseg.monitor.segmenters import ArchiveSegmenter
from leakseg.monitor.sinks import build_sinks
from leakseg.monitor.windows import STREAM_WINDOW, Frame, WindowBuilder, window_length
from leakseg.selftest.trials import replay
from support.monitor_media import leak_and_twin, recording_camera, write_video

N_FRAMES = 31
OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}
ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}


@pytest.fixture(scope="module")
def models(default_archive):
    streaming, windowed = ArchiveSegmenter(str(default_archive)), ArchiveSegmenter(str(default_archive), stream=False)
    yield streaming, windowed
    streaming.close()
    windowed.close()


@pytest.fixture(scope="module")
def leak():
    frames, _, masks, meta = leak_and_twin(4, N_FRAMES)
    return frames, masks, meta


def camera_config(source, **kw):
    cfg = parse_config({"cameras": [recording_camera("cam", source, options=OPTIONS, alarm=ALARM, **kw)],
                        "sinks": {"jsonl": None}})
    return cfg.cameras[0]


def test_windows_of_three_report_each_frame_when_the_frame_two_after_it_arrives():
    builder = WindowBuilder("cam", window_length(None, streams=True))
    assert builder.length == STREAM_WINDOW and window_length(None, streams=False) == 8
    assert window_length(5, streams=True) == 5  # a camera's own clip_frames wins
    reported = {}
    for seq in range(7):
        window = builder.push(Frame(seq, np.zeros((4, 4), np.uint8), float(seq)))
        if window is not None:
            reported.update({f.seq: seq for f in window.reported})
    assert reported == {t: t + 2 for t in range(5)}  # frame t is reported when frame t + 2 arrives
    last = builder.flush()  # the last two frames: with the frame before them, for their triplets
    assert [f.seq for f in last.frames] == [4, 5, 6] and [f.seq for f in last.reported] == [5, 6]


def test_stream_masks_equal_the_windows_of_eight_and_each_frame_is_encoded_once(models, leak):
    streaming, windowed = models
    frames, masks, _ = leak
    camera = camera_config("unused.mkv", clip_frames=None)
    before = streaming.streamer.frames_encoded
    streamed = replay(list(frames), camera, streaming, None)
    assert streaming.streamer.frames_encoded - before == N_FRAMES
    by_windows = replay(list(frames), camera, windowed, None)
    assert [obs.seq for obs, _ in streamed] == [obs.seq for obs, _ in by_windows] == list(range(N_FRAMES))
    for (a, mask_a), (b, mask_b) in zip(streamed, by_windows):
        assert np.array_equal(mask_a, mask_b), a.seq
        assert (a.area_pixels, a.bbox) == (b.area_pixels, b.bbox)
        assert abs(a.score - b.score) < 1e-5
    assert sum(obs.area_pixels > 0 for obs, _ in streamed) >= 5  # the model sees the plume: not an empty test


def _leak_events(path):
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    return [(e["type"], e["alarm"]["first_seq"], e["alarm"]["end_seq"]) for e in lines
            if e.get("alarm") and e["alarm"]["kind"] == "LEAK" and e["type"] in ("alarm_raised", "alarm_cleared")]


def test_the_monitor_streams_a_video_and_raises_the_alarm_the_windows_raise(models, leak, tmp_path):
    frames, masks, meta = leak
    video = write_video(tmp_path / "leak.mkv", frames, fps=10)
    events = {}
    for name, segmenter in zip(("stream", "windows"), models):
        cfg = parse_config({"evidence_dir": str(tmp_path / f"evidence-{name}"),
                            "cameras": [recording_camera("cam", video, options=OPTIONS, alarm=ALARM, clip_frames=None)],
                            "sinks": {"jsonl": {"path": str(tmp_path / f"{name}.jsonl")}}})
        monitor = Monitor(cfg, segmenter, build_sinks(cfg), until_sources_end=True, status_table=False)
        assert monitor.run() == 0
        cam = monitor.cameras["cam"]
        assert cam.logic.frames_analysed == N_FRAMES and cam.counters.frames_dropped == 0
        assert cam.builder.length == (3 if name == "stream" else 8)
        events[name] = _leak_events(tmp_path / f"{name}.jsonl")
        if name == "stream":  # the evidence of a window of 3 shows its one reported frame
            gifs = list((tmp_path / "evidence-stream").rglob("window-*.gif"))
            assert gifs
    assert events["stream"] == events["windows"]
    assert [t for t, *_ in events["stream"]] == ["alarm_raised", "alarm_cleared"]
    gas = np.flatnonzero(masks.any(axis=(1, 2)))
    assert meta["emission"]["first_frame"] <= events["stream"][0][1] <= gas[-1]
