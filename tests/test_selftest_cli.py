"""`leakseg selftest`: gathering a camera's background (leakseg/selftest/background.py) from a drop folder,
a video file and the camera's own source; the command's one-line errors (exit 2); and one end-to-end run
through the real CLI with the bundled default model on a calm gas-free scene."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from leakseg.cli import main
from leakseg.monitor.config import parse_config
from leakseg.selftest.background import BackgroundError, gather_background, longest_stretch, parse_ranges
from support.monitor_media import write_video

H, W = 48, 64
#: docs/SCADA.md's settings for the default model ("The default model in the monitor").
OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}
ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}


def numbered_frames(n: int, shape=(H, W)) -> np.ndarray:
    """Frames whose first pixel is their number, so a frame read back says which one it is."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
    frames[:, 0, 0] = np.arange(n)
    return frames


def drop_folder(folder: Path, frames, end: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{i}.png")  # natural order: frame2 before frame10
    if end:
        (folder / "END").touch()
    return folder


def camera(source, **kw):
    cam = {"name": "cam-1", "source": str(source), "analysis_fps": None, "realtime": False, **kw}
    return parse_config({"cameras": [cam]}).cameras[0]


def write_config(path: Path, source, **kw) -> Path:
    cam = {"name": "cam-1", "source": str(source), "options": OPTIONS, "alarm": ALARM, **kw}
    path.write_text(yaml.safe_dump({"service": {"url": "http://127.0.0.1:9", "timeout": 5}, "cameras": [cam]}))
    return path


# -- background ------------------------------------------------------------------------------------


def test_exclusions_keep_the_longest_stretch_between_them(tmp_path):
    frames = numbered_frames(30)
    folder = drop_folder(tmp_path / "rec", frames)
    bg = gather_background(camera(tmp_path), recording=str(folder), frames=100, exclude="0-4, 20-22")
    assert (bg.gathered, bg.first_index, len(bg.frames)) == (30, 5, 15)  # 5..19 beats 23..29
    assert [f[0, 0] for f in bg.frames] == list(range(5, 20))
    np.testing.assert_array_equal(np.stack(bg.frames), frames[5:20])
    assert bg.fps is None and "15 of 30" in bg.describe()


def test_frames_limits_what_is_read_and_ranges_parse():
    assert parse_ranges("0-20,150-170, 7") == [(0, 20), (150, 170), (7, 7)]
    assert parse_ranges("") == []
    assert longest_stretch(10, [(4, 5)]) == (0, 4)  # equally long: the earliest
    for bad in ("a-3", "5-2", "-3", "3-"):
        with pytest.raises(BackgroundError, match="--exclude"):
            parse_ranges(bad)
    with pytest.raises(BackgroundError, match="leaves none"):
        longest_stretch(10, [(0, 9)])
    with pytest.raises(BackgroundError, match="starts after the last frame"):
        longest_stretch(10, [(12, 20)])


def test_a_video_file_is_read_as_the_monitor_reads_it(tmp_path):
    frames = numbered_frames(20)
    video = write_video(tmp_path / "calm.mkv", frames, fps=10)
    every = gather_background(camera(tmp_path), recording=str(video), frames=64)
    np.testing.assert_array_equal(np.stack(every.frames), frames)  # lossless FFV1: the written pixels
    assert every.fps == pytest.approx(10)
    decimated = gather_background(camera(tmp_path, analysis_fps=5.0), recording=str(video), frames=64)
    assert [f[0, 0] for f in decimated.frames] == list(range(0, 20, 2)) and decimated.fps == pytest.approx(5)
    first = gather_background(camera(tmp_path), recording=str(video), frames=6)
    assert len(first.frames) == 6


def test_a_size_change_is_an_error_naming_the_frame(tmp_path):
    folder = drop_folder(tmp_path / "rec", numbered_frames(6))
    Image.fromarray(numbered_frames(1, (H // 2, W // 2))[0]).save(folder / "frame6.png")
    with pytest.raises(BackgroundError, match=r"frame 6 is 32x24 uint8, the frames before it 64x48 uint8"):
        gather_background(camera(tmp_path), recording=str(folder))


def test_live_from_the_cameras_own_source_and_a_fault_while_gathering(tmp_path):
    live = drop_folder(tmp_path / "live", numbered_frames(12), end=True)
    bg = gather_background(camera(live), frames=8)
    assert [f[0, 0] for f in bg.frames] == list(range(8)) and "camera cam-1" in bg.source
    (live / "frame5.png").write_bytes(b"not a png")  # the folder source skips it as a camera fault
    with pytest.raises(BackgroundError, match=r"camera cam-1: unreadable frame file frame5.png.*after 5 frames"):
        gather_background(camera(live), frames=8)


# -- the command's errors --------------------------------------------------------------------------


def _one_line_error(capsys, argv, match: str) -> None:
    assert main(["selftest", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("leakseg selftest: ") and match in err, err


def test_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    rec = drop_folder(tmp_path / "rec", numbered_frames(12))
    config = str(write_config(tmp_path / "monitor.yaml", rec))
    (tmp_path / "grid.yaml").write_text("contrasts: [-5]\n")
    (tmp_path / "bad.yaml").write_text("cameras: [{name: x}]\n")
    _one_line_error(capsys, [config, "--camera", "nope"], "no camera 'nope' in the configuration (cameras: cam-1)")
    _one_line_error(capsys, [config, "--exclude", "9-3"], "--exclude: '9-3'")
    _one_line_error(capsys, [config, "--grid", str(tmp_path / "grid.yaml")], "contrasts must be > 0")
    _one_line_error(capsys, [config, "--grid", str(tmp_path / "none.yaml")], "cannot read")
    _one_line_error(capsys, [config, "--target-pod", "1.5"], "target: probability")
    _one_line_error(capsys, [config, "--fps", "0"], "--fps must be > 0")
    _one_line_error(capsys, [str(tmp_path / "bad.yaml")], "invalid configuration")
    _one_line_error(capsys, [config, "--recording", str(tmp_path / "missing.mkv")], "no such file or folder")
    with pytest.raises(SystemExit) as exc:  # argparse's own: usage, then the error
        main(["selftest", config, "--grid", "g.yaml", "--quick"])
    assert exc.value.code == 2


def test_an_unreachable_service_is_one_clear_line(tmp_path, capsys):
    rec = drop_folder(tmp_path / "rec", numbered_frames(12))
    config = str(write_config(tmp_path / "monitor.yaml", rec))  # service.url: port 9, nothing listens
    _one_line_error(capsys, [config, "--recording", str(rec), "--no-progress"],
                    "the model did not answer (service http://127.0.0.1:9")


# -- end to end ------------------------------------------------------------------------------------

#: One cell, one position, short lead and tail: a clean replay and one trial, a few windows of the model.
TINY_GRID = {"sizes_pixels": [3000], "contrasts": [80.0], "polarities": ["darker"], "durations_frames": [8],
             "positions": 1, "lead_frames": 2, "tail_frames": 4}


def test_selftest_end_to_end_with_the_default_model(default_archive, tmp_path, capsys):
    from leakseg.selftest.result import SelfTestResult
    from leakseg.synth import CALM_EFFECTS, generate_clip

    frames, masks, _ = generate_clip(11, leak="none", frames=32, height=240, width=320, version=3,
                                     effects=CALM_EFFECTS)
    assert not masks.any()
    background = drop_folder(tmp_path / "calm", frames)
    config = write_config(tmp_path / "monitor.yaml", background)
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(TINY_GRID))
    out = tmp_path / "report"
    code = main(["selftest", str(config), "--camera", "cam-1", "--recording", str(background), "--archive",
                 str(default_archive), "--grid", str(tmp_path / "grid.yaml"), "--reference-size", "3000",
                 "--out", str(out), "--no-progress"])

    result = SelfTestResult.from_dict(json.loads((out / "selftest.json").read_text()))
    assert code == (0 if result.passed else 1)
    assert result.camera == "cam-1" and result.frame_size == (240, 320) and result.background_frames == 32
    assert len(result.trials) == 1 and len(result.cells) == 1 and result.trials[0].frames
    assert result.settings["options"] == OPTIONS and result.settings["alarm"]["k"] == ALARM["k"]
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 2  # the heat map and at least one example
    assert (yaml.safe_load((out / "recommended.yaml").read_text()) or {}).keys() <= {"alarm"}
    printed = capsys.readouterr().out
    assert ("PASSED" if result.passed else "FAILED") in printed and str(out / "report.html") in printed
