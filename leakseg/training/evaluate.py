"""Evaluate an archive on a labelled dataset (SCENE/images, SCENE/masks) with leakseg.training.metrics.

Every scene goes through :class:`leakseg.inference.predictor.Predictor` exactly as a request would (same
preprocessing, graph and post-processing), and its masks are scored against the ground truth:
J (IoU), F (pixel F1) and J&F as published (frames where prediction and truth are both empty are
skipped), the false-alarm rate (share of leak-free frames with a non-empty mask) and clip-level
detection precision / recall. 16-bit frames are stretched to 8 bits as the service does.

:func:`sweep_predictor` scores many post-processings at once (thresholds x normalisations) to draw the
false-alarm / J&F curve and pick an operating point under a false-alarm budget. The network runs once per
clip (:meth:`Predictor.logits`: the same checks, preprocessing and graph as ``predict``, stopping at the
float logits). Every setting is then scored from those logits without re-running anything per threshold:
the serving post-processing (:func:`leakseg.inference.postprocess.postprocess`: resize, sigmoid,
normalisation, threshold, elliptical opening) is a threshold of a score map followed by a flat opening, and
a flat opening commutes with thresholding, so ``open(score > t) == grey_open(score) > t`` exactly (same
ellipse, same borders): one grey-level opening per clip and normalisation serves every threshold (a test
checks the masks against ``postprocess`` pixel for pixel). So each point of a sweep equals
:func:`evaluate_predictor` at that threshold and normalisation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

log = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    summary: Dict
    per_video: Dict[str, Dict]

    def table(self, per_video: bool = True) -> str:
        from leakseg.training.metrics import format_table

        return format_table(self.summary, self.per_video if per_video else None)


def _labelled_scenes(data: Union[str, Path], desc: str, progress: bool):
    """(name, frames, masks) of every scene under ``data`` that has masks, with a progress bar."""
    from leakseg.training.dataset import list_scenes, load_scene

    scenes = list_scenes(data)
    if not scenes:
        raise FileNotFoundError(f"no scenes (SCENE/images/*) under {data}")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(scenes), unit="clip", desc=desc)
    try:
        for scene in scenes:
            frames, masks = load_scene(scene)
            if masks is None:
                log.warning("skipping %s: no masks folder", scene.name)
            else:
                yield scene.name, frames, masks
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def evaluate_predictor(predictor, data: Union[str, Path], options: Optional[dict] = None,
                       prompts=None, progress: bool = False) -> EvaluationReport:
    from leakseg.training.metrics import SegmentationMetrics

    options = {**(options or {}), "return_masks": True}
    metrics = SegmentationMetrics()
    for name, frames, masks in _labelled_scenes(data, "evaluate", progress):
        result = predictor.predict(list(frames), prompts=prompts, options=options)
        metrics.update(name, result.masks(), masks)
    return EvaluationReport(metrics.summary(), metrics.per_video())


def evaluate_archive(archive: Union[str, Path], data: Union[str, Path], options: Optional[dict] = None,
                     prompts=None, device: str = "auto", threads: Optional[int] = None,
                     progress: bool = False) -> EvaluationReport:
    from leakseg.inference.predictor import Predictor

    predictor = Predictor.from_archive(archive, device=device, threads=threads)
    return evaluate_predictor(predictor, data, options, prompts, progress)


#: Default thresholds of a sweep: 0.05 ... 0.95 in steps of 0.05, then finer towards 1 (where a quiet
#: model's absolute operating point tends to lie).
SWEEP_THRESHOLDS = tuple(np.round(np.concatenate([np.arange(0.05, 0.951, 0.05), [0.97, 0.98, 0.99, 0.995, 0.999]]),
                                  3).tolist())
SWEEP_NORMALIZATIONS = ("absolute", "minmax")


@dataclass
class SweepReport:
    points: List[Dict]  #: one metrics summary per (normalization, threshold), with both keys added
    chosen: Optional[Dict]  #: :func:`leakseg.training.metrics.operating_point` of the points
    budget: float
    opening_kernel: int

    def table(self) -> str:
        from leakseg.training.metrics import format_sweep

        return format_sweep(self.points, self.chosen)

    def postprocess(self) -> Dict:
        """The chosen point as a checkpoint's config.json "postprocess" entry."""
        if self.chosen is None:
            return {}
        return {"normalization": self.chosen["normalization"], "threshold": self.chosen["threshold"],
                "opening_kernel": self.opening_kernel}


def _opened_scores(logits, height: int, width: int, normalization: str, kernel_size: int) -> np.ndarray:
    """Grey-level opening of the score map ``postprocess`` thresholds: for every t,
    ``_opened_scores(...) > t`` equals ``postprocess(logits, h, w, threshold=t, ...).masks``.

    Erosion is a minimum over the ellipse with pixels outside the image ignored (``postprocess`` pads
    with 1: they never erode), dilation a maximum with outside pixels ignored (padded with 0)."""
    import torch
    import torch.nn.functional as F

    from leakseg.inference.postprocess import ellipse_kernel, score_map

    with torch.no_grad():
        prob, _ = score_map(logits.to(torch.float32), height, width, normalization)
        if kernel_size <= 1:
            return prob.numpy()
        offsets = np.argwhere(ellipse_kernel(kernel_size) > 0) - kernel_size // 2
        r = kernel_size // 2

        def sweep(x, fill, pick):
            padded = F.pad(x, (r, r, r, r), value=fill)
            out = None
            for dy, dx in offsets:
                view = padded[:, r + dy:r + dy + height, r + dx:r + dx + width]
                out = view.clone() if out is None else pick(out, view)
            return out

        eroded = sweep(prob, float("inf"), torch.minimum)
        return sweep(eroded, float("-inf"), torch.maximum).numpy()


def sweep_predictor(predictor, data: Union[str, Path], thresholds: Sequence[float] = SWEEP_THRESHOLDS,
                    normalizations: Sequence[str] = SWEEP_NORMALIZATIONS, budget: float = 0.05,
                    opening_kernel: Optional[int] = None, prompts=None, progress: bool = False) -> SweepReport:
    """Score every (normalization, threshold) on the labelled scenes under ``data`` from one network
    run per clip; choose the operating point meeting the false-alarm ``budget`` (a fraction)."""
    from leakseg.training.metrics import SegmentationMetrics, operating_point

    if not 0 <= budget <= 1:
        raise ValueError(f"the false-alarm budget is a fraction in [0, 1], got {budget}")
    kernel = predictor.defaults.opening_kernel if opening_kernel is None else opening_kernel
    bad = [t for t in thresholds if not 0 < t < 1] + [n for n in normalizations if n not in SWEEP_NORMALIZATIONS]
    if bad:
        raise ValueError(f"thresholds must lie in (0, 1) and normalizations be absolute or minmax: {bad}")
    levels = [float(t) for t in sorted(set(thresholds))]
    grid = [(n, t) for n in normalizations for t in levels]
    metrics = {key: SegmentationMetrics() for key in grid}
    for name, frames, masks in _labelled_scenes(data, "sweep", progress):
        logits = predictor.logits(list(frames), prompts=prompts).cpu()
        h, w = masks.shape[1:]
        for norm in normalizations:
            opened = _opened_scores(logits, h, w, norm, kernel)
            for t in levels:
                metrics[(norm, t)].update(name, opened > t, masks)
    points = [{"normalization": n, "threshold": t, **metrics[(n, t)].summary()} for n, t in grid]
    return SweepReport(points, operating_point(points, budget), budget, kernel)


def sweep_archive(archive: Union[str, Path], data: Union[str, Path], device: str = "auto",
                  threads: Optional[int] = None, **kwargs) -> SweepReport:
    from leakseg.inference.predictor import Predictor

    return sweep_predictor(Predictor.from_archive(archive, device=device, threads=threads), data, **kwargs)
