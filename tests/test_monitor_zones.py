"""Zones as polygons in the monitor's YAML: the same ignored pixels as a mask image, a region of interest,
errors naming the key and the camera, and `--check --draw-zones` drawing them over each camera's frame."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from leakseg.monitor.config import ConfigError, load_config, parse_config
from leakseg.monitor.measure import camera_ignore_mask, observations
from leakseg.monitor.windows import Frame, Window
from leakseg.monitor.zones import IGNORE_OUTLINE, IGNORED_ALPHA, IGNORED_TINT, REGION_OUTLINE, polygon_mask
from leakseg.schema import ClipInfo, ClipResult, FrameResult, ModelInfo
from leakseg.utils.overlay import outline

from support.fake_service import FakeService, answer_clip
from support.monitor_media import write_video
from support.monitor_runs import H, W, Recorded, fill, folder_camera, frame

IGNORE = [[[5, 4], [30, 6], [22, 30]], [[40, 10], [60, 10], [60, 40], [50, 47], [40, 40]]]
REGION = [[2, 2], [62, 3], [61, 45], [3, 44]]


def camera(tmp_path: Path, **keys):
    """One validated camera (a stream source: nothing is opened here)."""
    data = {"cameras": [{"name": "cam", "source": "rtsp://127.0.0.1:1/none", **keys}]}
    return parse_config(data, "test", tmp_path).cameras[0]


def mask_image(tmp_path: Path, polygons) -> Path:
    """The polygons drawn by hand into an ignore_mask image, as an integrator would paint them."""
    image = Image.new("L", (W, H), 0)
    for polygon in polygons:
        ImageDraw.Draw(image).polygon([tuple(p) for p in polygon], fill=255, outline=255)
    path = tmp_path / "mask.png"
    image.save(path)
    return path


def analysed(masks: np.ndarray) -> tuple:
    """A window of len(masks) frames, all reported, and the service's result carrying only the scores
    (the masks go to `observations` decoded, as the monitor hands them over)."""
    t = len(masks)
    window = Window(camera="cam", number=0, frames=[Frame(seq=i, pixels=frame(i), arrived=float(i)) for i in range(t)],
                    final=t)
    frames = [FrameResult(index=i, leak=bool(m.any()), area_pixels=int(m.sum()), area_fraction=float(m.mean()),
                          max_score=0.9) for i, m in enumerate(masks)]
    result = ClipResult(model=ModelInfo(name="jvlgs", version="1", prompts=["gas"]),
                        clip=ClipInfo(frames=t, height=H, width=W, leak_detected=True, leak_frames=list(range(t)),
                                      max_leak_fraction=1.0), frames=frames)
    return window, result


def plumes(t: int = 3) -> np.ndarray:
    rng = np.random.default_rng(5)
    return rng.random((t, H, W)) < 0.6


def test_polygon_zones_ignore_exactly_what_the_same_zones_painted_into_an_ignore_mask_ignore(tmp_path):
    by_zones = camera_ignore_mask(camera(tmp_path, zones={"ignore": IGNORE}))
    by_image = camera_ignore_mask(camera(tmp_path, ignore_mask=str(mask_image(tmp_path, IGNORE))))
    zoned = by_zones.for_frame(H, W)
    assert zoned.any() and not zoned.all()
    np.testing.assert_array_equal(zoned, by_image.for_frame(H, W))
    window, result = analysed(plumes())
    assert observations(window, result, by_zones, plumes()) == observations(window, result, by_image, plumes())


def test_a_pixel_is_inside_when_pillow_paints_it_edges_included(tmp_path):
    ignore = camera_ignore_mask(camera(tmp_path, zones={"ignore": [[[2, 3], [6, 3], [6, 5], [2, 5]]]}))
    expected = np.zeros((H, W), bool)
    expected[3:6, 2:7] = True
    np.testing.assert_array_equal(ignore.for_frame(H, W), expected)


def test_zones_and_an_ignore_mask_image_together_ignore_the_union(tmp_path):
    first, second = IGNORE
    both = camera_ignore_mask(camera(tmp_path, zones={"ignore": [first]},
                                     ignore_mask=str(mask_image(tmp_path, [second]))))
    union = camera_ignore_mask(camera(tmp_path, zones={"ignore": IGNORE}))
    np.testing.assert_array_equal(both.for_frame(H, W), union.for_frame(H, W))


def test_a_region_of_interest_ignores_everything_outside_it(tmp_path):
    region = camera_ignore_mask(camera(tmp_path, zones={"region_of_interest": REGION}))
    inside = camera_ignore_mask(camera(tmp_path, zones={"ignore": [REGION]})).for_frame(H, W)
    np.testing.assert_array_equal(region.for_frame(H, W), ~inside)
    everywhere = np.ones((1, H, W), bool)
    window, result = analysed(everywhere)
    [seen] = observations(window, result, region, everywhere)
    assert seen.area_pixels == inside.sum() and seen.bbox == (2, 2, 61, 44)


def test_zones_outside_the_frame_are_a_camera_fault_with_the_reason_not_a_crash(tmp_path):
    """`observations` raises ValueError, which the monitor reports as CAMERA_FAULT (as for a mask image
    of another size); the same zones fit a larger frame, each size's mask built once."""
    ignore = camera_ignore_mask(camera(tmp_path, zones={"ignore": [[[0, 0], [W, 0], [0, 10]]]}))
    window, result = analysed(plumes(1))
    with pytest.raises(ValueError, match=rf"camera cam: zones -> ignore\[0\]: point \({W}, 0\) is outside "
                                         rf"the {W}x{H} frame"):
        observations(window, result, ignore, plumes(1))
    assert ignore.for_frame(H, W + 1) is ignore.for_frame(H, W + 1)


def test_a_running_monitor_reports_zones_outside_the_frame_as_camera_fault(tmp_path):
    folder = fill(tmp_path / "drop", 8)
    zones = {"region_of_interest": [[0, 0], [W - 1, 0], [0, H]]}
    with FakeService(answer_clip) as service:
        rec = Recorded(service, [folder_camera(folder, zones=zones)])
        rec.run(timeout=30)
    reasons = {alarm.reason for _, alarm in rec.raised("CAMERA_FAULT")}
    assert reasons == {f"camera cam: zones -> region_of_interest: point (0, {H}) is outside the {W}x{H} frame "
                       f"(x 0..{W - 1}, y 0..{H - 1}; drawn for another resolution?)"}, rec.summary()


@pytest.mark.parametrize("zones, expected", [
    ({"ignore": [[[1, 1], [5, 1]]]}, "zones -> ignore[0]: a polygon needs at least 3 points [x, y], got 2"),
    ({"ignore": [[[1, 1], [5, -1], [3, 4]]]}, "zones -> ignore[0][1][1]: Input should be greater than or equal to 0"),
    ({"ignore": [[[1, 1], ["5", 1], [3, 4]]]}, "zones -> ignore[0][1][0]: Input should be a valid integer"),
    ({"region_of_interest": [[1, 1], [5, 1], [3, True]]}, "zones -> region_of_interest[2][1]: Input should be a "
                                                          "valid integer"),
    ({"region_of_interest": [[1, 1], [5, 1, 2], [3, 4]]}, "zones -> region_of_interest[1]: Tuple should have at most 2"),
    ({"ignored": []}, "zones -> ignored: unknown key"),
])
def test_zone_errors_name_the_key_and_the_camera(tmp_path, zones, expected):
    data = {"cameras": [{"name": "north", "source": "rtsp://10.0.0.5/s"},
                        {"name": "east-flare", "source": "rtsp://10.0.0.6/s", "zones": zones}]}
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"cameras[1] (name 'east-flare') -> {expected}" in str(err.value), str(err.value)


def test_check_draw_zones_tints_the_ignored_pixels_of_a_drop_folder_and_a_video_file(tmp_path):
    """A PNG per camera from its first frame; a live stream out of reach is skipped with the reason, exit 1."""
    fill(tmp_path / "drop", 2, end=False)
    write_video(tmp_path / "rec.mkv", np.stack([frame(i) for i in range(3)]))
    zones = {"ignore": IGNORE, "region_of_interest": REGION}
    cameras = [{"name": "folder", "source": "drop", "zones": zones},
               {"name": "video", "source": "rec.mkv", "zones": zones},
               {"name": "live", "source": "rtsp://127.0.0.1:1/none", "faults": {"open_timeout": 0.5}}]
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"cameras": cameras}), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--check", str(config),
                          "--draw-zones", str(tmp_path / "zones")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "live: not drawn: lost:" in out.stderr
    assert "| zones: 2 ignore polygon(s), a region of interest |" in out.stdout  # the summary
    ignored = camera_ignore_mask(load_config(config).cameras[0]).for_frame(H, W)
    for name in ("folder", "video"):
        assert f"{name}: zones drawn in {tmp_path / 'zones' / name}.png" in out.stdout
        drawn = np.asarray(Image.open(tmp_path / "zones" / f"{name}.png").convert("RGB"))
        assert_tinted(drawn, frame(0), ignored)
    assert not (tmp_path / "zones" / "live.png").exists()


def assert_tinted(drawn: np.ndarray, grey: np.ndarray, ignored: np.ndarray) -> None:
    """Ignored pixels are the frame blended towards the tint, kept pixels the frame, outlines their colour."""
    lines = {color: np.any([outline(polygon_mask(p, H, W)) for p in polygons], axis=0)
             for color, polygons in ((IGNORE_OUTLINE, IGNORE), (REGION_OUTLINE, [REGION]))}
    assert (drawn[lines[IGNORE_OUTLINE] & ~lines[REGION_OUTLINE]] == IGNORE_OUTLINE).all()
    assert (drawn[lines[REGION_OUTLINE]] == REGION_OUTLINE).all()  # drawn last: on top
    grey_rgb = np.repeat(grey[..., None].astype(np.float32), 3, axis=-1)
    tinted = ((1 - IGNORED_ALPHA) * grey_rgb + IGNORED_ALPHA * np.asarray(IGNORED_TINT, np.float32)).round()
    off_lines = ~(lines[IGNORE_OUTLINE] | lines[REGION_OUTLINE])
    assert (ignored & off_lines).sum() > 100 and (~ignored & off_lines).sum() > 100
    np.testing.assert_array_equal(drawn[ignored & off_lines], tinted[ignored & off_lines].astype(np.uint8))
    np.testing.assert_array_equal(drawn[~ignored & off_lines], grey_rgb[~ignored & off_lines].astype(np.uint8))


def test_draw_zones_goes_with_check(tmp_path):
    config = tmp_path / "monitor.yaml"
    config.write_text(yaml.safe_dump({"cameras": [{"name": "cam", "source": "rtsp://127.0.0.1:1/none"}]}))
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--config", str(config),
                          "--draw-zones", str(tmp_path / "zones")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--draw-zones goes with --check" in out.stderr
