"""The self-test's report (leakseg/selftest/report.py) from hand-built results: selftest.json round-trips,
report.html is one self-contained page with the heat maps and every string escaped, and recommended.yaml is
a valid `alarm:` block for the monitor's configuration (or says why there is none)."""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
import yaml
from PIL import Image

from leakseg.monitor.config import AlarmSettings
from leakseg.selftest.report import heat_map_png, overlay_example, scale_colour, write_report
from leakseg.selftest.result import (Cell, CellResult, CleanResult, Example, FrameSeen, OperatingPoint,
                                    SelfTestResult, SelfTestRun, TrialResult)

H, W = 240, 320
CAMERA = "east<flare>&1"  # not a valid monitor camera name, but a report must escape whatever it is given
SIZES, CONTRASTS = (300, 1000), (20.0, 40.0, 80.0)


def _cell_result(cell: Cell, detected: int, trials: int = 2) -> CellResult:
    return CellResult(cell, trials, detected, detected / trials, 1.2 if detected else None, 2.0 if detected else None,
                      cell.size_pixels / (H * W))


def _trial(cell: Cell, detected: bool) -> TrialResult:
    frames = [FrameSeen(area_pixels=400 if detected else 0, score=0.95, true_area_pixels=cell.size_pixels)] * 3
    return TrialResult(cell, (120, 80), 7, 2, 10, cell.size_pixels * 1.05, detected,
                       alarm_frame=5 if detected else None, time_to_alarm_s=0.6 if detected else None, frames=frames)


def hand_built(recommend: bool = True, passed: bool = True) -> SelfTestResult:
    """Two sizes x three contrasts x both polarities; PoD grows with size and contrast."""
    cells, trials = [], []
    for polarity in ("brighter", "darker"):
        for size in SIZES:
            for contrast in CONTRASTS:
                cell = Cell(size, contrast, polarity, 16)
                detected = int(size > 300) + int(contrast > 20)
                cells.append(_cell_result(cell, detected))
                trials += [_trial(cell, i < detected) for i in range(2)]
    op = OperatingPoint(0.5, 150, 3, 5, 5, 0.95, 0.4, True, note="raised <fast> & cleared") if recommend else None
    return SelfTestResult(
        camera=CAMERA, started=1_700_000_000.0, finished=1_700_000_600.0, frame_size=(H, W), bit_depth=8,
        analysis_fps=5.0, background_frames=64,
        settings={"grid": {"sizes_pixels": list(SIZES)}, "alarm": {"k": 3, "n": 5},
                  "target": {"probability": 0.9, "reference_size_pixels": 1000, "reference_contrast": 40.0},
                  "options": {"note": "<script>alert(1)</script>"}},
        cells=cells, trials=trials,
        clean=CleanResult(64, 64 / 5 / 3600, 1, 1 / (64 / 5 / 3600), 0.05, [FrameSeen(0, 0.1, 0)]),
        detection_limit_pixels={"20 brighter": 1000, "40 brighter": 300, "80 brighter": 300, "20 darker": None,
                                "40 darker": 300, "80 darker": 300},
        detection_limit_at_reference=300, probability_at_reference=1.0, passed=passed,
        reason="PoD 1.00 >= 0.9 at 1000 px <contrast 40>" if passed else "PoD 0.50 < 0.9 at the reference plume",
        recommendation=op)


def example(detected: bool) -> Example:
    frame = np.full((H, W), 100, np.uint8)
    true = np.zeros((H, W), bool)
    true[60:120, 100:180] = True
    model = np.zeros((H, W), bool)
    if detected:
        model[70:110, 110:170] = True
    return Example(trial=0, frame_index=5, frame=frame, true_mask=true, model_mask=model, detected=detected)


def _images(page: str):
    encoded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in encoded]


def test_the_three_files_and_the_json_round_trips(tmp_path):
    result = hand_built()
    paths = write_report(SelfTestRun(result, [example(True), example(False)]), tmp_path / "out")
    names = {p.name for p in (paths.json, paths.html, paths.yaml)}
    assert names == {"selftest.json", "report.html", "recommended.yaml"}
    loaded = SelfTestResult.from_dict(json.loads(paths.json.read_text()))
    assert loaded == result
    assert paths.json.read_text().startswith('{\n  "camera"')  # indent 2


def test_numpy_values_in_a_result_still_write_json(tmp_path):
    result = hand_built()
    result.probability_at_reference = np.float64(0.75)
    result.cells[0].detected = np.int64(1)
    paths = write_report(SelfTestRun(result), tmp_path)
    data = json.loads(paths.json.read_text())
    assert data["probability_at_reference"] == 0.75 and data["cells"][0]["detected"] == 1


def test_html_is_self_contained_escaped_and_holds_one_heat_map_per_polarity(tmp_path):
    paths = write_report(SelfTestRun(hand_built(), [example(True), example(False)]), tmp_path)
    page = paths.html.read_text()
    assert "east&lt;flare&gt;&amp;1" in page and CAMERA not in page
    assert "<script" not in page and "&lt;script&gt;" in page
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched: every image is a data URI
    assert "PASSED" in page and "2023-11-14 22:13:20 UTC" in page and "320 x 240" in page
    images = _images(page)
    assert len(images) == 2 + 2  # heat maps: brighter and darker; examples: a detected and a missed plume
    assert images[2].size == (W, H) and images[0].size[0] > 300
    assert "detected: 300 px" in page and "missed: 300 px" in page
    assert "false alarms per day" in page and "not reached in the grid" in page
    assert "alarm:\n  min_score: 0.5" in page


def test_heat_map_colours_each_cell_by_its_pod(tmp_path):
    result = hand_built()
    image = Image.open(io.BytesIO(heat_map_png(result, "darker", 16))).convert("RGB")
    from leakseg.selftest.report import CELL_H, CELL_W, HEAD_H, LABEL_W

    def colour_at(row, col):  # a pixel inside the cell, clear of its border and its numbers
        return image.getpixel((LABEL_W + col * CELL_W + 6, HEAD_H + row * CELL_H + 6))

    assert colour_at(0, 0) == scale_colour(0.0)  # 300 px at contrast 20: never detected
    assert colour_at(1, 2) == scale_colour(1.0)  # 1000 px at contrast 80: always
    assert colour_at(0, 1) == scale_colour(0.5)
    assert scale_colour(0.0) != scale_colour(1.0)


def test_the_overlay_outlines_the_gas_and_tints_the_model_mask():
    rgb = overlay_example(example(True))
    assert tuple(rgb[60, 140]) == (0, 230, 255)  # the gas's top edge
    assert tuple(rgb[90, 140]) != (100, 100, 100) and tuple(rgb[90, 140]) != (0, 230, 255)  # tinted inside
    assert tuple(rgb[200, 20]) == (100, 100, 100)  # untouched


def test_recommended_yaml_is_the_cameras_alarm_block(tmp_path):
    paths = write_report(SelfTestRun(hand_built()), tmp_path)
    data = yaml.safe_load(paths.yaml.read_text())
    alarm = AlarmSettings.model_validate(data["alarm"])
    assert (alarm.min_score, alarm.min_area_pixels, alarm.k, alarm.n, alarm.clear_frames) == (0.5, 150, 3, 5, 5)
    assert "raised <fast> & cleared" in paths.yaml.read_text()  # the note, as a comment


def test_no_recommendation_is_said_in_both_files(tmp_path):
    paths = write_report(SelfTestRun(hand_built(recommend=False, passed=False)), tmp_path)
    text = paths.yaml.read_text()
    assert yaml.safe_load(text) is None and "no recommended operating point: PoD 0.50 < 0.9" in text
    page = paths.html.read_text()
    assert "FAILED" in page and "No recommendation: PoD 0.50 &lt; 0.9" in page
    assert SelfTestResult.from_dict(json.loads(paths.json.read_text())).recommendation is None


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_examples_of_16_bit_and_float_frames_are_stretched(dtype):
    ex = example(False)
    ex.frame = (np.arange(H * W).reshape(H, W) % 4000).astype(dtype)
    rgb = overlay_example(ex)
    assert rgb.dtype == np.uint8 and rgb.shape == (H, W, 3) and rgb[..., 0].max() > 200


def test_a_recommendation_short_of_the_target_says_so(tmp_path):
    result = hand_built()
    result.recommendation.meets_target = False
    text = write_report(SelfTestRun(result), tmp_path).yaml.read_text()
    assert "does not meet the target" in text and AlarmSettings.model_validate(yaml.safe_load(text)["alarm"]).k == 3
