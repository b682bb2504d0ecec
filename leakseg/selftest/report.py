"""A self-test's files: ``selftest.json`` (the result, for machines), ``report.html`` (for people: one
self-contained page an integrator can hand to an auditor, images embedded, nothing fetched) and
``recommended.yaml`` (the camera's ``alarm:`` block to paste into the monitor's configuration).

Every string from the run (camera name, settings, reasons) is escaped before it goes into the HTML.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

from leakseg.selftest.result import CellResult, Example, SelfTestResult, SelfTestRun
from leakseg.utils.overlay import label_font, outline, tint, to_uint8_rgb

RGB = Tuple[int, int, int]

#: The overlays: the injected gas outlined in one colour, the model's mask tinted in another.
TRUE_GAS_COLOUR: RGB = (0, 230, 255)
MODEL_MASK_COLOUR: RGB = (255, 60, 200)
MODEL_MASK_ALPHA = 0.45

#: The heat map's colour scale (viridis, sampled): PoD 0 is dark violet, PoD 1 yellow; legible in grey too.
SCALE: Sequence[RGB] = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))
CELL_W, CELL_H, LABEL_W, HEAD_H, BAR_H = 96, 44, 170, 46, 66


@dataclass
class ReportPaths:
    json: Path
    html: Path
    yaml: Path


def write_report(run: SelfTestRun, out_dir: Union[str, Path]) -> ReportPaths:
    """Write the three files into ``out_dir`` (created) and return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = ReportPaths(out / "selftest.json", out / "report.html", out / "recommended.yaml")
    paths.json.write_text(result_json(run.result), encoding="utf-8")
    paths.yaml.write_text(recommended_yaml(run.result), encoding="utf-8")
    paths.html.write_text(report_html(run), encoding="utf-8")
    return paths


def result_json(result: SelfTestResult) -> str:
    return json.dumps(result.to_dict(), indent=2, default=_plain) + "\n"


def _plain(value: Any) -> Any:
    """numpy scalars and arrays as the Python values json knows."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def recommended_yaml(result: SelfTestResult) -> str:
    """The recommended ``alarm:`` block, or a comment saying why there is none (still valid YAML)."""
    if result.recommendation is not None:
        op = result.recommendation
        warning = "" if op.meets_target else "# this rule does not meet the target: the best found\n"
        return op.yaml_block(result.camera) + warning + (f"# {_one_line(op.note)}\n" if op.note else "")
    return (f"# leakseg selftest: camera {result.camera}\n"
            f"# no recommended operating point: {_one_line(result.reason)}\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- the page ------------------------------------------------------------------------------------------


def report_html(run: SelfTestRun) -> str:
    r = run.result
    parts = [_head(r), _verdict(r), _run_facts(r), _limits(r), _heat_maps(r), _cell_table(r), _clean(r),
             _recommendation(r), _examples(run), _settings(r), _trial_table(r), "</body></html>\n"]
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.25em .6em;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}pre{background:#f4f4f4;padding:.8em;overflow:auto}
.pass{color:#fff;background:#1a7f37;padding:.4em .8em}.fail{color:#fff;background:#b42318;padding:.4em .8em}
.swatch{display:inline-block;width:1em;height:1em;vertical-align:middle;margin:0 .3em}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}img{max-width:100%}"""


def _head(r: SelfTestResult) -> str:
    title = f"Self-test of camera {r.camera}, {_utc(r.started)}"
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>{_e(title)}</h1>")


def _verdict(r: SelfTestResult) -> str:
    word, css = ("PASSED", "pass") if r.passed else ("FAILED", "fail")
    return (f"<p><span class=\"{css}\">{word}</span> {_e(r.reason)}</p>\n"
            f"<p>Probability of detection at the reference plume ({_e(_reference_text(r))}): "
            f"<b>{_pod(r.probability_at_reference)}</b> (target {_e(_target_text(r))}).</p>")


def _run_facts(r: SelfTestResult) -> str:
    height, width = r.frame_size
    rows = [("camera", r.camera), ("started (UTC)", _utc(r.started)), ("finished (UTC)", _utc(r.finished)),
            ("frame size", f"{width} x {height} pixels ({width * height} pixels)"), ("bit depth", f"{r.bit_depth} bit"),
            ("analysed frames per second", f"{r.analysis_fps:g}"),
            ("background frames", f"{r.background_frames} ({_hours(r.clean.hours)} of clean footage)"),
            ("trials (injected plumes)", str(len(r.trials))), ("result format version", str(r.version))]
    return "<h2>The run</h2>\n" + _table(["", ""], rows, left=2)


def _limits(r: SelfTestResult) -> str:
    rows = [(key, "not reached in the grid" if size is None else f"{size} px ({_percent(size, r)})")
            for key, size in sorted(r.detection_limit_pixels.items(), key=lambda kv: _limit_order(kv[0]))]
    at_ref = r.detection_limit_at_reference
    lead = (f"<p>The smallest plume detected with at least the target probability, per contrast and polarity. "
            f"At the reference contrast: <b>{_e('none' if at_ref is None else f'{at_ref} px')}</b>.</p>")
    head = ["contrast and polarity", "smallest size detected"]
    return "<h2>Detection limits</h2>\n" + lead + _table(head, rows, left=1)


def _limit_order(key: str) -> Tuple[str, float]:
    """'40 darker' sorts by polarity, then by contrast as a number."""
    value, _, polarity = key.partition(" ")
    try:
        return polarity, float(value)
    except ValueError:
        return polarity, float("inf")


def _heat_maps(r: SelfTestResult) -> str:
    blocks = ["<h2>Probability of detection</h2>\n<p>Rows: plume size (visible pixels and share of the frame); "
              "columns: contrast in the frame's units. Each cell: PoD and detected / trials; a black border "
              "marks cells at or above the target.</p>"]
    for polarity, duration in _panels(r.cells):
        png = heat_map_png(r, polarity, duration)
        caption = f"{polarity} gas, leaks of {duration} frames"
        blocks.append(f"<figure><img alt=\"{_e('PoD heat map: ' + caption)}\" src=\"{_data_uri(png)}\">"
                      f"<figcaption>{_e(caption)}</figcaption></figure>")
    return "\n".join(blocks)


def _cell_table(r: SelfTestResult) -> str:
    head = ["size (px)", "size (% of frame)", "contrast", "polarity", "duration (frames)", "trials", "detected",
            "PoD", "median time to alarm (s)", "median time to clear (s)"]
    rows = [(c.cell.size_pixels, f"{100 * c.size_fraction:.3f}", f"{c.cell.contrast:g}", c.cell.polarity,
             c.cell.duration_frames, c.trials, c.detected, _pod(c.probability), _seconds(c.median_time_to_alarm_s),
             _seconds(c.median_time_to_clear_s)) for c in _sorted_cells(r.cells)]
    return "<h2>Time to alarm and time to clear, per cell</h2>\n" + _table(head, rows)


def _clean(r: SelfTestResult) -> str:
    c = r.clean
    rows = [("frames", c.frames), ("hours", f"{c.hours:.3f}"), ("LEAK alarms raised", c.false_alarms),
            ("false alarms per hour", f"{c.false_alarms_per_hour:.2f}" + _upper(c.false_alarms_per_hour_upper95)),
            ("false alarms per day", f"{24 * c.false_alarms_per_hour:.1f}"),
            ("frames counted as leak frames", f"{100 * c.leak_frame_fraction:.1f} %")]
    lead = ("<p>The background itself, without injected gas, run through the camera's production path: every "
            "LEAK it raises is a false alarm. Few frames give a coarse rate: the hours are stated.</p>")
    return "<h2>False alarms on the clean footage</h2>\n" + lead + _table(["", ""], rows, left=1)


def _recommendation(r: SelfTestResult) -> str:
    head = "<h2>Recommended operating point</h2>\n"
    op = r.recommendation
    if op is None:
        return head + f"<p>No recommendation: {_e(r.reason)}</p>"
    verdict = "meets the target" if op.meets_target else "does not meet the target"
    text = (f"<p>PoD at the reference plume {_pod(op.probability_at_reference)}, "
            f"{op.false_alarms_per_day:.2f} false alarms per day on the clean footage: {verdict}. "
            f"{_e(op.note)}</p>")
    return head + text + f"<pre>{_e(recommended_yaml(r))}</pre>"


def _examples(run: SelfTestRun) -> str:
    if not run.examples:
        return ""
    legend = (f"<p><span class=\"swatch\" style=\"background:{_css(TRUE_GAS_COLOUR)}\"></span>outline: the injected "
              f"gas (its visible pixels) <span class=\"swatch\" style=\"background:{_css(MODEL_MASK_COLOUR)}\">"
              "</span>tint: what the model marked (after the ignore zones)</p>")
    figures = [_example_figure(run.result, ex) for ex in run.examples]
    return "<h2>Examples</h2>\n" + legend + "\n".join(figures)


def _example_figure(r: SelfTestResult, ex: Example) -> str:
    trial = r.trials[ex.trial]
    c = trial.cell
    caption = (f"{'detected' if ex.detected else 'missed'}: {c.size_pixels} px, contrast {c.contrast:g} "
               f"{c.polarity}, {c.duration_frames} frames, source at {trial.position}; trial frame {ex.frame_index}")
    png = _png_bytes(Image.fromarray(overlay_example(ex)))
    return (f"<figure><img alt=\"{_e(caption)}\" src=\"{_data_uri(png)}\">"
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _settings(r: SelfTestResult) -> str:
    import yaml

    text = yaml.safe_dump(json.loads(json.dumps(r.settings, default=_plain)), sort_keys=False)
    return ("<h2>Settings as run</h2>\n<p>The grid, the target, and the camera's model options, windows, zones "
            f"and alarm rule exactly as the self-test ran them.</p><pre>{_e(text)}</pre>")


def _trial_table(r: SelfTestResult) -> str:
    head = ["#", "size (px)", "contrast", "polarity", "frames", "source (x, y)", "measured size (px)", "detected",
            "alarm frame", "time to alarm (s)", "time to clear (s)", "alarm before gas"]
    rows = [(i, t.cell.size_pixels, f"{t.cell.contrast:g}", t.cell.polarity, t.cell.duration_frames,
             f"{t.position[0]}, {t.position[1]}", f"{t.measured_size_pixels:.0f}", "yes" if t.detected else "no",
             _dash(t.alarm_frame), _seconds(t.time_to_alarm_s), _seconds(t.time_to_clear_s),
             "YES" if t.alarm_before_gas else "") for i, t in enumerate(r.trials)]
    return f"<details><summary>Every trial ({len(rows)})</summary>\n{_table(head, rows)}</details>"


# -- images ----------------------------------------------------------------------------------------


def overlay_example(ex: Example) -> np.ndarray:
    """The example frame in 8-bit RGB, the model's mask tinted and the injected gas outlined."""
    rgb = to_uint8_rgb(np.asarray(ex.frame)[None])[0]
    rgb = tint(rgb, np.asarray(ex.model_mask, bool), MODEL_MASK_COLOUR, MODEL_MASK_ALPHA)
    rgb[outline(np.asarray(ex.true_mask, bool), 2)] = TRUE_GAS_COLOUR
    return rgb


def heat_map_png(r: SelfTestResult, polarity: str, duration: int) -> bytes:
    """One panel: sizes down, contrasts across, each cell coloured by its PoD, with the numbers and a scale."""
    sizes, contrasts = _axes(r.cells)
    cells = {(c.cell.size_pixels, c.cell.contrast): c for c in r.cells
             if c.cell.polarity == polarity and c.cell.duration_frames == duration}
    width = LABEL_W + CELL_W * len(contrasts) + 10
    image = Image.new("RGB", (max(width, LABEL_W + 260), HEAD_H + CELL_H * len(sizes) + BAR_H), "white")
    draw = ImageDraw.Draw(image)
    _draw_axes(draw, r, sizes, contrasts)
    target = _target_probability(r)
    for row, size in enumerate(sizes):
        for col, contrast in enumerate(contrasts):
            box = (LABEL_W + col * CELL_W, HEAD_H + row * CELL_H)
            _draw_cell(draw, box, cells.get((size, contrast)), target)
    _draw_scale(draw, (LABEL_W, HEAD_H + CELL_H * len(sizes) + 14), target)
    return _png_bytes(image)


def _draw_axes(draw: ImageDraw.ImageDraw, r: SelfTestResult, sizes: List[int], contrasts: List[float]) -> None:
    font = label_font(13)
    draw.text((LABEL_W - 8, HEAD_H - 12), "size", fill="black", font=font, anchor="rs")
    draw.text((LABEL_W + CELL_W * len(contrasts) // 2, 12), "contrast", fill="black", font=font, anchor="mm")
    for col, contrast in enumerate(contrasts):
        draw.text((LABEL_W + col * CELL_W + CELL_W // 2, HEAD_H - 12), f"{contrast:g}", fill="black", font=font,
                  anchor="ms")
    for row, size in enumerate(sizes):
        label = f"{size} px ({100 * size / _frame_pixels(r):.2f} %)"
        draw.text((LABEL_W - 8, HEAD_H + row * CELL_H + CELL_H // 2), label, fill="black", font=font, anchor="rm")


def _draw_cell(draw: ImageDraw.ImageDraw, corner: Tuple[int, int], cell: Optional[CellResult],
               target: Optional[float]) -> None:
    x, y = corner
    box = (x, y, x + CELL_W - 2, y + CELL_H - 2)
    if cell is None:
        draw.rectangle(box, fill=(220, 220, 220))
        draw.text((x + CELL_W // 2, y + CELL_H // 2), "-", fill="black", font=label_font(13), anchor="mm")
        return
    colour = scale_colour(cell.probability)
    draw.rectangle(box, fill=colour)
    if target is not None and cell.probability >= target:
        draw.rectangle(box, outline="black", width=3)
    ink = "black" if sum(colour) > 400 else "white"
    draw.text((x + CELL_W // 2, y + 15), f"{cell.probability:.2f}", fill=ink, font=label_font(15), anchor="mm")
    draw.text((x + CELL_W // 2, y + 32), f"{cell.detected}/{cell.trials}", fill=ink, font=label_font(11), anchor="mm")


def _draw_scale(draw: ImageDraw.ImageDraw, corner: Tuple[int, int], target: Optional[float]) -> None:
    """A horizontal colour bar from PoD 0 to 1, ticks at 0, 0.5, 1 and the target."""
    x, y = corner
    length = 240
    for i in range(length):
        draw.line((x + i, y, x + i, y + 12), fill=scale_colour(i / (length - 1)))
    font = label_font(11)
    draw.text((x - 8, y + 6), "PoD", fill="black", font=font, anchor="rm")
    for value in (0.0, 0.5, 1.0):
        draw.text((x + value * (length - 1), y + 26), f"{value:g}", fill="black", font=font, anchor="mm")
    if target is not None:
        tx = x + target * (length - 1)
        draw.line((tx, y - 3, tx, y + 15), fill="black", width=2)
        draw.text((tx, y + 38), f"target {target:g}", fill="black", font=font, anchor="mm")


def scale_colour(probability: float) -> RGB:
    """The colour of a PoD on the scale, interpolated between its samples."""
    position = min(max(float(probability), 0.0), 1.0) * (len(SCALE) - 1)
    low = min(int(position), len(SCALE) - 2)
    frac = position - low
    return tuple(round(a + (b - a) * frac) for a, b in zip(SCALE[low], SCALE[low + 1]))  # type: ignore[return-value]


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# -- the grid ----------------------------------------------------------------------------------------


def _axes(cells: Iterable[CellResult]) -> Tuple[List[int], List[float]]:
    cells = list(cells)
    return sorted({c.cell.size_pixels for c in cells}), sorted({c.cell.contrast for c in cells})


def _panels(cells: Iterable[CellResult]) -> List[Tuple[str, int]]:
    return sorted({(c.cell.polarity, c.cell.duration_frames) for c in cells})


def _sorted_cells(cells: Iterable[CellResult]) -> List[CellResult]:
    return sorted(cells, key=lambda c: (c.cell.polarity, c.cell.duration_frames, c.cell.size_pixels, c.cell.contrast))


# -- the settings' target ---------------------------------------------------------------------------


def _target(r: SelfTestResult) -> Dict[str, Any]:
    target = r.settings.get("target") if isinstance(r.settings, dict) else None
    return target if isinstance(target, dict) else {}


def _target_probability(r: SelfTestResult) -> Optional[float]:
    value = _target(r).get("probability")
    return float(value) if isinstance(value, (int, float)) else None


def _target_text(r: SelfTestResult) -> str:
    p = _target_probability(r)
    return "not recorded" if p is None else f"{p:g}"


def _reference_text(r: SelfTestResult) -> str:
    t = _target(r)
    size = t.get("reference_size_pixels")
    contrast = t.get("reference_contrast") or r.settings.get("reference_contrast")  # None: the run chose it
    if size is None:
        return "as set in the target"
    text = f"{size} px ({_percent(size, r)})"
    return text + (f", contrast {contrast:g}" if isinstance(contrast, (int, float)) else "")


# -- formatting --------------------------------------------------------------------------------------


LEFT = ' class="l"'


def _table(head: Sequence[str], rows: Iterable[Sequence[Any]], left: int = 0) -> str:
    """An HTML table, every cell escaped; the first ``left`` columns left-aligned (text, not numbers)."""
    def cells(values: Sequence[Any], tag: str) -> str:
        return "".join(f"<{tag}{LEFT if i < left else ''}>{_e(v)}</{tag}>" for i, v in enumerate(values))

    body = "\n".join(f"<tr>{cells(row, 'td')}</tr>" for row in rows)
    header = f"<tr>{cells(head, 'th')}</tr>\n" if any(head) else ""
    return f"<table>\n{header}{body}\n</table>"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _css(colour: RGB) -> str:
    return "rgb({},{},{})".format(*colour)


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _frame_pixels(r: SelfTestResult) -> int:
    height, width = r.frame_size
    return height * width


def _percent(size: int, r: SelfTestResult) -> str:
    return f"{100 * size / _frame_pixels(r):.2f} % of the frame"


def _pod(p: float) -> str:
    return f"{p:.2f}"


def _seconds(s: Optional[float]) -> str:
    return "-" if s is None else f"{s:.1f}"


def _dash(value: Any) -> str:
    return "-" if value is None else str(value)


def _upper(per_hour: Optional[float]) -> str:
    """The rate's 95 % upper bound: what short footage can and cannot rule out."""
    if per_hour is None:
        return ""
    return f" (at most {per_hour:.3g} per hour, {24 * per_hour:.3g} per day, with 95 % confidence)"


def _hours(hours: float) -> str:
    return f"{hours:.3f} h" if hours < 1 else f"{hours:.1f} h"
