"""Segmentation metrics for gas-leak clips, in pure numpy (plus Pillow for the plot).

As published (JVLGS): per frame, frames whose prediction and ground truth are *both* empty are skipped;
J is the IoU and F the pixel F1 (Dice) of the mask, not the DAVIS contour F. Mean J, mean F and
J&F = (J + F) / 2 are in percent and averaged over all scored frames of all videos (not per video first).

The same scores on the frames whose ground truth has gas only ("leak frames": J, F and J&F there are
what the model's segmentation is worth when there is something to segment; the overall numbers also
charge a false alarm on a leak-free frame as J = F = 0).

What a plant also cares about:

* false-alarm rate: of the ground-truth leak-free frames, the share whose predicted mask is non-empty;
* clip-level detection: a clip "has a leak" if any ground-truth frame does, and is "detected" if any
  predicted frame is non-empty; precision and recall over clips.

Rates are fractions in [0, 1]; J, F and J&F are percentages, as in the paper's tables. A value that has
no frames or clips to average over is None (e.g. J&F when every frame was skipped).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Mapping, Optional, Union

import numpy as np


def _ratio(num: float, den: float) -> Optional[float]:
    return float(num) / float(den) if den else None


def frame_scores(pred: np.ndarray, gt: np.ndarray):
    """Per-frame (J, F, scored) for T x H x W masks; unscored (both empty) frames get J = F = nan."""
    pred = np.asarray(pred, dtype=bool)
    gt = np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 3:
        raise ValueError(f"need two T x H x W masks of one shape, got {pred.shape} and {gt.shape}")
    inter = (pred & gt).sum(axis=(1, 2), dtype=np.int64)
    p, g = pred.sum(axis=(1, 2), dtype=np.int64), gt.sum(axis=(1, 2), dtype=np.int64)
    scored = (p + g) > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        j = np.where(scored, inter / (p + g - inter), np.nan)
        f = np.where(scored, 2 * inter / (p + g), np.nan)
    return j, f, scored


@dataclass
class _Video:
    j: list = field(default_factory=list)  # per scored frame
    f: list = field(default_factory=list)
    leak_j: list = field(default_factory=list)  # per frame with gas in the ground truth
    leak_f: list = field(default_factory=list)
    frames: int = 0
    leak_free_frames: int = 0
    false_alarm_frames: int = 0
    has_leak: bool = False
    detected: bool = False

    def summary(self) -> Dict:
        j, f = (100 * float(np.mean(v)) if v else None for v in (self.j, self.f))
        return {
            "J": j, "F": f, "J&F": None if j is None else (j + f) / 2,
            "frames": self.frames, "scored_frames": len(self.j),
            "leak_free_frames": self.leak_free_frames, "false_alarm_frames": self.false_alarm_frames,
            "has_leak": self.has_leak, "detected": self.detected,
        }


class SegmentationMetrics:
    """Accumulates predictions video by video; calling update twice with one name extends that video."""

    def __init__(self) -> None:
        self._videos: Dict[str, _Video] = {}

    def update(self, video_name: str, pred_masks: np.ndarray, gt_masks: np.ndarray) -> None:
        j, f, scored = frame_scores(pred_masks, gt_masks)
        pred_any = np.asarray(pred_masks, bool).any(axis=(1, 2))
        gt_any = np.asarray(gt_masks, bool).any(axis=(1, 2))
        v = self._videos.setdefault(video_name, _Video())
        v.j += j[scored].tolist()
        v.f += f[scored].tolist()
        v.leak_j += j[gt_any].tolist()
        v.leak_f += f[gt_any].tolist()
        v.frames += len(scored)
        v.leak_free_frames += int((~gt_any).sum())
        v.false_alarm_frames += int((~gt_any & pred_any).sum())
        v.has_leak |= bool(gt_any.any())
        v.detected |= bool(pred_any.any())

    def per_video(self) -> Dict[str, Dict]:
        """name -> {J, F, J&F, frames, scored_frames, leak_free_frames, false_alarm_frames, has_leak, detected}."""
        return {name: v.summary() for name, v in self._videos.items()}

    def summary(self) -> Dict:
        vids = list(self._videos.values())
        j = [x for v in vids for x in v.j]
        f = [x for v in vids for x in v.f]
        mean_j = 100 * float(np.mean(j)) if j else None
        mean_f = 100 * float(np.mean(f)) if f else None
        leak_j = [x for v in vids for x in v.leak_j]
        leak_f = [x for v in vids for x in v.leak_f]
        lj = 100 * float(np.mean(leak_j)) if leak_j else None
        lf = 100 * float(np.mean(leak_f)) if leak_f else None
        leak_free = sum(v.leak_free_frames for v in vids)
        alarms = sum(v.false_alarm_frames for v in vids)
        tp = sum(v.has_leak and v.detected for v in vids)
        fp = sum(not v.has_leak and v.detected for v in vids)
        fn = sum(v.has_leak and not v.detected for v in vids)
        return {
            "J": mean_j, "F": mean_f, "J&F": None if mean_j is None else (mean_j + mean_f) / 2,
            "videos": len(vids), "frames": sum(v.frames for v in vids), "scored_frames": len(j),
            "leak_J": lj, "leak_F": lf, "leak_J&F": None if lj is None else (lj + lf) / 2, "leak_frames": len(leak_j),
            "leak_free_frames": leak_free, "false_alarm_frames": alarms,
            "false_alarm_rate": _ratio(alarms, leak_free),
            "clip_tp": tp, "clip_fp": fp, "clip_fn": fn, "clip_tn": len(vids) - tp - fp - fn,
            "clip_precision": _ratio(tp, tp + fp), "clip_recall": _ratio(tp, tp + fn),
        }


def _fmt(value, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if percent else f"{value:.2f}"


def format_table(summary: Mapping, per_video: Optional[Mapping[str, Mapping]] = None) -> str:
    """A plain-text report: one row per video (if given), then the totals and the plant-level rates."""
    lines = []
    if per_video:
        width = max(len("video"), *(len(n) for n in per_video))
        lines.append(f"{'video':<{width}}  {'J':>7} {'F':>7} {'J&F':>7} {'frames':>7} {'alarms':>7}")
        for name, v in per_video.items():
            lines.append(f"{name:<{width}}  {_fmt(v['J']):>7} {_fmt(v['F']):>7} {_fmt(v['J&F']):>7} "
                         f"{v['frames']:>7} {v['false_alarm_frames']:>7}")
        lines.append("")
    s = summary
    lines += [
        f"J {_fmt(s['J'])}  F {_fmt(s['F'])}  J&F {_fmt(s['J&F'])}  "
        f"({s['scored_frames']} of {s['frames']} frames scored, {s['videos']} videos)",
        f"on the {s['leak_frames']} frames with gas: J {_fmt(s['leak_J'])}  F {_fmt(s['leak_F'])}  "
        f"J&F {_fmt(s['leak_J&F'])}",
        f"false-alarm rate {_fmt(s['false_alarm_rate'], True)} "
        f"({s['false_alarm_frames']} of {s['leak_free_frames']} leak-free frames)",
        f"clip detection: precision {_fmt(s['clip_precision'], True)}, recall {_fmt(s['clip_recall'], True)} "
        f"(tp {s['clip_tp']}, fp {s['clip_fp']}, fn {s['clip_fn']}, tn {s['clip_tn']})",
    ]
    return "\n".join(lines)


def plot_metrics(per_video: Mapping[str, Union[Mapping, float, None]], false_alarm_rate: Optional[float],
                 path: Union[str, Path]) -> Path:
    """Horizontal bars of per-video J&F (0-100) and, last, the false-alarm rate in percent, as a PNG.

    ``per_video`` maps names to :meth:`SegmentationMetrics.per_video` entries or to plain J&F numbers.
    Videos with nothing scored are drawn as "n/a".
    """
    from PIL import Image, ImageDraw, ImageFont

    rows = [(name, v.get("J&F") if isinstance(v, Mapping) else v, (66, 133, 244)) for name, v in per_video.items()]
    rows.append(("false alarms", None if false_alarm_rate is None else 100 * false_alarm_rate, (219, 68, 55)))
    font = ImageFont.load_default()
    label_w = 12 + max(int(font.getlength(name)) for name, _, _ in rows)
    bar_w, row_h, top = 400, 22, 30
    img = Image.new("RGB", (label_w + bar_w + 70, top + row_h * len(rows) + 10), "white")
    draw = ImageDraw.Draw(img)
    draw.text((6, 8), "J&F per video (%), false-alarm rate (%)", fill="black", font=font)
    for i, (name, value, colour) in enumerate(rows):
        y = top + i * row_h
        draw.text((6, y + 4), name, fill="black", font=font)
        draw.rectangle([label_w, y + 3, label_w + bar_w, y + row_h - 3], outline=(200, 200, 200))
        if value is None:
            draw.text((label_w + 6, y + 4), "n/a", fill="grey", font=font)
            continue
        end = label_w + int(round(bar_w * min(max(value, 0.0), 100.0) / 100))
        if end > label_w:
            draw.rectangle([label_w, y + 3, end, y + row_h - 3], fill=colour)
        draw.text((label_w + bar_w + 6, y + 4), f"{value:.1f}", fill="black", font=font)
    path = Path(path)
    img.save(path)
    return path


# --- threshold sweeps: the false-alarm / J&F curve and its operating point -------------------------

def operating_point(points, budget: float = 0.05) -> Optional[Dict]:
    """The point of a sweep to serve at: the best J&F on frames with gas among the points whose false-alarm
    rate is at most ``budget``; ties go to fewer false alarms, then to the higher threshold. When no point
    meets the budget, the one with the fewest false alarms (then the best J&F), marked ``meets_budget``
    False. ``points``: dicts with "false_alarm_rate", "leak_J&F" (None counts as 0) and "threshold".
    Returns a copy of the chosen point with ``meets_budget`` and ``budget`` added; None for no points."""
    points = [p for p in points if p.get("false_alarm_rate") is not None]
    if not points:
        return None
    score = lambda p: p.get("leak_J&F") or 0.0  # noqa: E731
    within = [p for p in points if p["false_alarm_rate"] <= budget + 1e-12]
    if within:
        best = max(within, key=lambda p: (score(p), -p["false_alarm_rate"], p.get("threshold", 0.0)))
    else:
        best = min(points, key=lambda p: (p["false_alarm_rate"], -score(p), -p.get("threshold", 0.0)))
    return {**best, "meets_budget": bool(within), "budget": budget}


def format_sweep(points, chosen: Optional[Mapping] = None) -> str:
    """One row per (normalisation, threshold): false-alarm rate, J&F on frames with gas, overall J&F."""
    lines = [f"{'normalization':<13} {'threshold':>9} {'false alarms':>12} {'J&F gas':>8} {'J&F':>7} "
             f"{'clip recall':>11}"]
    for p in points:
        mark = "  <- operating point" if chosen is not None and (p["normalization"], p["threshold"]) == (
            chosen["normalization"], chosen["threshold"]) else ""
        lines.append(f"{p['normalization']:<13} {p['threshold']:>9.3f} {_fmt(p['false_alarm_rate'], True):>12} "
                     f"{_fmt(p['leak_J&F']):>8} {_fmt(p['J&F']):>7} {_fmt(p['clip_recall'], True):>11}{mark}")
    if chosen is not None:
        verdict = "meets" if chosen["meets_budget"] else "NO threshold meets"
        lines.append(f"operating point ({verdict} the false-alarm budget of {100 * chosen['budget']:.1f}%): "
                     f"normalization {chosen['normalization']}, threshold {chosen['threshold']:.3f}: false alarms "
                     f"{_fmt(chosen['false_alarm_rate'], True)}, J&F on frames with gas {_fmt(chosen['leak_J&F'])}")
    return "\n".join(lines)


_SERIES_COLOURS = {"absolute": (66, 133, 244), "minmax": (244, 160, 0)}


def plot_sweep(points, path: Union[str, Path], chosen: Optional[Mapping] = None, budget: Optional[float] = None,
               title: str = "") -> Path:
    """The sweep as a PNG: x = false alarms on leak-free frames (%), y = J&F on frames with gas, one line
    per normalisation (points in threshold order), the budget as a dashed vertical line and the operating
    point circled."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    left, top, pw, ph = 60, 40, 520, 360
    img = Image.new("RGB", (left + pw + 170, top + ph + 50), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), title or "threshold sweep: J&F on frames with gas vs false alarms on leak-free frames",
              fill="black", font=font)

    def xy(fa, jf):
        return left + pw * min(max(fa, 0.0), 1.0), top + ph * (1 - min(max(jf, 0.0), 100.0) / 100)

    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    for k in range(0, 11):
        x, _ = xy(k / 10, 0)
        _, y = xy(0, 10 * k)
        draw.line([x, top + ph, x, top + ph + 4], fill="black")
        draw.text((x - 8, top + ph + 6), f"{10 * k}", fill="black", font=font)
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((left - 26, y - 6), f"{10 * k}", fill="black", font=font)
        draw.line([left + 1, y, left + pw - 1, y], fill=(235, 235, 235))
    draw.text((left + pw / 2 - 90, top + ph + 22), "false alarms on leak-free frames (%)", fill="black", font=font)
    draw.text((4, top - 16), "J&F on frames with gas", fill="black", font=font)
    if budget is not None:
        x, _ = xy(budget, 0)
        for y in range(top, top + ph, 8):
            draw.line([x, y, x, y + 4], fill=(200, 0, 0))
        draw.text((x + 3, top + 3), f"budget {100 * budget:g}%", fill=(200, 0, 0), font=font)
    legend_y = top
    for norm in sorted({p["normalization"] for p in points}):
        series = sorted((p for p in points if p["normalization"] == norm and p["false_alarm_rate"] is not None),
                        key=lambda p: p["threshold"])
        colour = _SERIES_COLOURS.get(norm, (80, 80, 80))
        coords = [xy(p["false_alarm_rate"], p["leak_J&F"] or 0.0) for p in series]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for x, y in coords:
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=colour)
        draw.line([left + pw + 12, legend_y + 6, left + pw + 32, legend_y + 6], fill=colour, width=3)
        draw.text((left + pw + 36, legend_y), norm, fill="black", font=font)
        legend_y += 16
    if chosen is not None:
        x, y = xy(chosen["false_alarm_rate"], chosen["leak_J&F"] or 0.0)
        draw.ellipse([x - 7, y - 7, x + 7, y + 7], outline=(200, 0, 0), width=2)
        draw.text((left + pw + 12, legend_y + 8), "operating point:", fill="black", font=font)
        draw.text((left + pw + 12, legend_y + 22), f"{chosen['normalization']} > {chosen['threshold']:.3f}",
                  fill="black", font=font)
        draw.text((left + pw + 12, legend_y + 36), f"FA {100 * chosen['false_alarm_rate']:.1f}%, "
                  f"J&F {chosen['leak_J&F'] or 0.0:.1f}", fill="black", font=font)
    path = Path(path)
    img.save(path)
    return path
