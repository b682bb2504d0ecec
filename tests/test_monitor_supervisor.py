"""The monitor never stops looking while it says NORMAL: a real Monitor, real drop folders and video files,
and a misbehaving fake service over real HTTP on loopback (tests/support/misbehaving_service.py).

Every failure of a camera's reading or analysis becomes CAMERA_FAULT / SERVICE_FAULT with its reason and the
camera goes on; a replay is analysed completely; a window never mixes frames from both sides of a break;
SIGTERM publishes OFFLINE first and the process exits within ``shutdown_seconds``.
"""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import event, given
from hypothesis import strategies as st
from PIL import Image

from leakseg.monitor.segmenters import InvalidAnswer, checked_masks
from leakseg.schema import ClipResult
from leakseg.utils.rle import counts_to_string, encode_rle

from support.fake_service import FakeService, answer_clip, canned_result
from support.misbehaving_service import BAD_ANSWERS, Hang, bad_then_good
from support.monitor_fixtures import MqttRecorder, mosquitto, until  # noqa: F401  (fixture)
from support.monitor_media import write_video
from support.monitor_runs import H, W, Recorded, drop, fill, folder_camera, frame


# -- answers that do not fit what was sent ----------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(BAD_ANSWERS))
def test_an_answer_that_does_not_fit_is_a_service_fault_and_the_camera_goes_on(tmp_path, kind):
    """Short answers, a 100000 x 100000 clip size, RLE that does not decode, garbage: SERVICE_FAULT with the
    reason, then the next good answers clear it and every later window is analysed."""
    folder = fill(tmp_path / "drop", 20)
    with FakeService(bad_then_good(BAD_ANSWERS[kind], 2)) as service:
        rec = Recorded(service, [folder_camera(folder)])
        rec.run(timeout=30)
    faults = rec.raised("SERVICE_FAULT")
    assert len(faults) == 1, rec.summary()
    assert rec.cleared("SERVICE_FAULT"), rec.summary()
    reason = faults[0][1].reason
    if kind != "garbage":  # the client refuses non-JSON itself; the monitor checks the rest
        assert reason.startswith("invalid answer: "), reason
    print(f"\n[figure] {kind}: SERVICE_FAULT {faults[0][0]:.2f} s after the start: {reason[:120]}")
    cam = rec.monitor.cameras["cam"]
    # 9 windows of 4 (2 reported each) + a last window for the 2 frames held at the end (with the frame before
    # them); the first two windows failed
    assert cam.counters.windows_failed == 2 and cam.counters.windows_sent == 8
    assert cam.logic.frames_analysed == 16 and cam.counters.frames_dropped == 4
    assert cam.snapshot()["service_ok"]


def test_a_listener_that_raises_does_not_stop_the_analysis(tmp_path):
    folder = fill(tmp_path / "drop", 20)

    def broken_listener(event):
        raise RuntimeError("listener bug")

    with FakeService(answer_clip) as service:
        rec = Recorded(service, [folder_camera(folder, alarm={"min_area_pixels": 1, "k": 1, "n": 1})])
        rec.monitor.event_listeners.insert(0, broken_listener)
        rec.run(timeout=30)
    cam = rec.monitor.cameras["cam"]
    assert cam.logic.frames_analysed == 20 and cam.counters.windows_sent == 10  # the last window: the last 2 frames
    assert [a.kind.value for _, a in rec.raised("LEAK")] == ["LEAK"]  # still reached the other listeners


def test_a_hung_service_is_a_service_fault_within_analysis_seconds_while_frames_arrive(tmp_path):
    video = write_video(tmp_path / "live.mkv", np.stack([frame(i) for i in range(20)]), fps=20)
    hang = Hang()
    with FakeService(hang) as service:
        rec = Recorded(service, [{"name": "cam", "source": str(video), "loop": True, "analysis_fps": None,
                                  "clip_frames": 4, "faults": {"analysis_seconds": 1.0}}])

        async def scenario(r):
            await until(lambda: r.raised("SERVICE_FAULT"), timeout=15, what=f"SERVICE_FAULT; {r.summary()}")
            hang.release()
            await until(lambda: r.cleared("SERVICE_FAULT") and r.monitor.cameras["cam"].logic.frames_analysed,
                        timeout=15, what="analysis again")
            r.monitor.request_stop()

        rec.run(scenario, timeout=40)
    (t_fault, alarm), = rec.raised("SERVICE_FAULT")
    assert alarm.reason.startswith("no analysis completed for "), alarm.reason
    first_window = 4 / 20  # the first window's frames arrive in 0.2 s (a paced 20 fps file)
    print(f"\n[figure] hung service: SERVICE_FAULT {t_fault:.2f} s after the start (limit 1 s after "
          f"the first window, {first_window:.1f} s)")
    assert t_fault < 1.0 + first_window + 2.0  # the watchdog ticks every 0.2 s; slack for a loaded machine
    assert rec.monitor.cameras["cam"].counters.frames_in > 20  # frames kept arriving all along


# -- drop folders with bad files ---------------------------------------------------------------------------


def _zip_named_npy(path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("notes.txt", "not an array")
    path.write_bytes(buf.getvalue())


def _lying_npy(path: Path) -> None:
    """138 bytes whose header announces 100000 x 100000 x 100 uint8 (931 GiB)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (100_000, 100_000, 100)})
    path.write_bytes(header.getvalue() + b"x" * (138 - len(header.getvalue())))
    assert path.stat().st_size == 138


def _huge_png(path: Path) -> None:
    """3000 x 3000 pixels (a few kB of PNG): over the service's 2048 x 2048 frame limit."""
    Image.new("L", (3000, 3000)).save(path)


BAD_FILES = {
    "zip-named-npy": ("f005a.npy", _zip_named_npy),
    "lying-npy-header": ("f005a.npy", _lying_npy),
    "empty-file": ("f005a.png", lambda p: p.write_bytes(b"")),
    "over-the-pixel-limit": ("f005a.png", _huge_png),
}


@pytest.mark.parametrize("kind", sorted(BAD_FILES))
def test_a_bad_file_in_a_drop_folder_is_a_camera_fault_naming_it_and_the_folder_goes_on(tmp_path, kind):
    folder = fill(tmp_path / "drop", 12, end=False)
    name, write = BAD_FILES[kind]
    write(folder / name)
    (folder / "END").touch()
    with FakeService(answer_clip) as service:
        rec = Recorded(service, [folder_camera(folder)])
        rec.run(timeout=30)
    faults = rec.raised("CAMERA_FAULT")
    assert len(faults) == 1 and faults[0][1].reason.startswith(f"unreadable frame file {name}: "), rec.summary()
    assert rec.cleared("CAMERA_FAULT")  # the next good frame clears it
    print(f"\n[figure] {kind}: CAMERA_FAULT {faults[0][0]:.2f} s after the start: {faults[0][1].reason[:120]}")
    cam = rec.monitor.cameras["cam"]
    assert cam.counters.frames_in == 12  # every good frame, before and after the bad file
    assert not rec.raised("SERVICE_FAULT")  # nothing oversized or mixed reached the service
    assert {r.array().shape[1:] for r in service.received} == {(H, W)}


def test_a_name_natural_order_cannot_read_does_not_stop_the_folder(tmp_path):
    folder = fill(tmp_path / "drop", 12, end=False)
    drop(folder, "1²1.png", frame(99))  # '²' is a digit to str.isdigit but not to int()
    (folder / "END").touch()
    with FakeService(answer_clip) as service:
        rec = Recorded(service, [folder_camera(folder)])
        rec.run(timeout=30)
    assert rec.monitor.cameras["cam"].counters.frames_in == 13  # read too, after the names in natural order
    assert not rec.raised("CAMERA_FAULT") and not rec.raised("SERVICE_FAULT")


# -- replays -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["END-there-at-start", "realtime-false"])
def test_a_replayed_drop_folder_is_analysed_completely(tmp_path, how):
    """126 frames, clips of 8, one window waiting at most, a service slower than the reader: nothing dropped."""
    folder = fill(tmp_path / "replay", 126, end=how == "END-there-at-start")
    camera = folder_camera(folder, clip_frames=8, max_pending_windows=1)
    if how == "realtime-false":
        camera["realtime"] = False
    with FakeService(bad_then_good(None, 0, delay=0.03)) as service:
        rec = Recorded(service, [camera])

        async def end_later(r):
            (folder / "END").touch()

        rec.run(None if how == "END-there-at-start" else end_later, timeout=60)
    cam = rec.monitor.cameras["cam"]
    print(f"\n[figure] replay ({how}): {cam.logic.frames_analysed}/126 frames analysed")
    assert cam.logic.frames_analysed == 126
    assert cam.counters.windows_dropped == 0 and cam.counters.frames_dropped == 0


# -- a gap in the stream -----------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [(H, W), (60, 80)], ids=["same-size", "new-resolution"])
def test_after_a_stale_gap_no_window_mixes_frames_from_both_sides(tmp_path, after):
    folder = tmp_path / "drop"
    folder.mkdir()
    with FakeService(answer_clip) as service:
        # realtime false: no window is dropped, so every window the camera cut reaches the service
        rec = Recorded(service, [folder_camera(folder, clip_frames=8, realtime=False, faults={"stale_seconds": 0.6})])

        async def scenario(r):
            for i in range(5):
                drop(folder, f"f{i:03d}.png", frame(i))
            await until(lambda: r.raised("CAMERA_FAULT"), timeout=10, what="the stale fault")
            for i in range(5, 13):
                drop(folder, f"f{i:03d}.png", frame(i, after, base=100))
            (folder / "END").touch()

        rec.run(scenario, timeout=30)
    clips = [r.array() for r in service.received]
    before_gap = [bool((c[:, 0, 0] < 100).any()) for c in clips]
    after_gap = [bool((c[:, 0, 0] >= 100).any()) for c in clips]
    assert not any(b and a for b, a in zip(before_gap, after_gap)), [c[:, 0, 0] for c in clips]
    assert not rec.raised("SERVICE_FAULT"), rec.summary()
    # the 5 frames before the gap alone, then the new stream: a window of 8 and, at its end, its last two frames
    # with the frame before them
    assert [len(c) for c in clips] == [5, 8, 3]
    assert rec.monitor.cameras["cam"].logic.frames_analysed == 5 + 8


# -- SIGTERM under load ------------------------------------------------------------------------------------


def test_sigterm_under_load_publishes_offline_first_and_exits_within_the_deadline(tmp_path, mosquitto):
    """`leakseg monitor` with a clip hung in the service: OFFLINE on MQTT and the exit within shutdown_seconds."""
    video = write_video(tmp_path / "live.mkv", np.stack([frame(i) for i in range(20)]), fps=20)
    hang = Hang()
    recorder = MqttRecorder(mosquitto.port)
    with FakeService(hang) as service:
        cfg = tmp_path / "monitor.yaml"
        cfg.write_text(yaml.safe_dump({
            "service": {"url": service.url, "timeout": 60}, "shutdown_seconds": 4,
            "cameras": [{"name": "cam", "source": str(video), "loop": True, "analysis_fps": None, "clip_frames": 4}],
            "sinks": {"jsonl": None, "mqtt": {"port": mosquitto.port}}}))
        proc = subprocess.Popen([sys.executable, "-m", "leakseg.cli", "monitor", "--config", str(cfg), "--no-table"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while service.in_flight == 0:  # a clip is in flight, and hangs
                assert time.monotonic() < deadline and proc.poll() is None, "the monitor sent no clip"
                time.sleep(0.05)
            recorder.wait_for(lambda m: m[0] == "leakseg/cam/state" and '"NORMAL"' in m[1], timeout=30)
            sent = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            recorder.wait_for(lambda m: m[0] == "leakseg/cam/state" and json.loads(m[1])["state"] == "OFFLINE",
                              timeout=30)
            to_offline = time.monotonic() - sent
            _, err = proc.communicate(timeout=30)
            to_exit = time.monotonic() - sent
        finally:
            hang.release()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            recorder.close()
    print(f"\n[figure] SIGTERM with a clip hung in the service: OFFLINE after {to_offline:.2f} s, "
          f"exit after {to_exit:.2f} s (shutdown_seconds 4)")
    assert proc.returncode == 0, err[-2000:]
    assert to_offline < 2.0 and to_exit < 4 + 1.0, (to_offline, to_exit)


# -- the answer check, fuzzed ------------------------------------------------------------------------------

SENT = (4, 6, 8)  # frames, height, width of the clip the answers are checked against
SIZES = st.one_of(st.integers(0, 12), st.sampled_from([100_000, 2 ** 31, -1]))
MASKS = st.lists(st.booleans(), min_size=48, max_size=48).map(lambda bits: np.array(bits).reshape(6, 8))
COUNTS = st.one_of(
    st.text(max_size=40),  # anything at all
    st.text(alphabet=[chr(c) for c in range(48, 112)], max_size=40),  # the COCO alphabet, any order
    st.lists(st.integers(0, 60), max_size=12).map(lambda runs: counts_to_string(np.array(runs))),  # well formed
)


@st.composite
def answers(draw):
    """A ClipResult as a client parses it, of any frame count and size, with any masks; about half of them have
    correct masks (so the check is also fuzzed on what it must accept)."""
    t, h, w = (draw(st.one_of(st.just(sent), other)) for sent, other in zip(SENT, (st.integers(0, 6), SIZES, SIZES)))
    faithful = draw(st.booleans())
    body = canned_result(0, 1, 1)
    body["clip"].update(frames=draw(st.sampled_from([t, SENT[0]])), height=h, width=w)
    body["frames"] = [{"index": i, "leak": False, "area_pixels": 0, "area_fraction": 0.0, "max_score": 0.5,
                       "mask": draw(_masks(h, w, faithful))} for i in range(t)]
    return ClipResult.model_validate(body)


def _masks(h, w, faithful):
    correct = MASKS.map(encode_rle)
    if faithful:
        return correct
    sizes = st.lists(st.sampled_from([h, w, SENT[1], SENT[2], 100_000]), min_size=2, max_size=2)
    return st.one_of(st.none(), correct, st.fixed_dictionaries({"size": sizes, "counts": COUNTS}))


@pytest.mark.fuzz
@given(answers())
def test_every_answer_gives_masks_of_the_clip_sent_or_a_typed_refusal(result):
    try:
        masks = checked_masks(result, SENT[0], SENT[1:])
    except InvalidAnswer:
        event("refused")
        return
    event("accepted")
    assert masks.shape == SENT and masks.dtype == bool
    assert np.array_equal(masks, result.masks())  # what the schema's own decoder makes of it


def test_a_correct_answer_passes_the_check():
    body = canned_result(*SENT)
    masks = checked_masks(ClipResult.model_validate(body), SENT[0], SENT[1:])
    assert [int(m.sum()) for m in masks] == [1, 2, 3, 4]
