"""Evaluate an archive on a labelled dataset (SCENE/images, SCENE/masks) with leakseg.training.metrics.

Every scene goes through :class:`leakseg.inference.predictor.Predictor` exactly as a request would (same
preprocessing, graph and post-processing), and its masks are scored against the ground truth:
J (IoU), F (pixel F1) and J&F as published (frames where prediction and truth are both empty are
skipped), the false-alarm rate (share of leak-free frames with a non-empty mask) and clip-level
detection precision / recall. 16-bit frames are stretched to 8 bits as the service does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

log = logging.getLogger(__name__)


@dataclass
class EvaluationReport:
    summary: Dict
    per_video: Dict[str, Dict]

    def table(self, per_video: bool = True) -> str:
        from leakseg.training.metrics import format_table

        return format_table(self.summary, self.per_video if per_video else None)


def evaluate_predictor(predictor, data: Union[str, Path], options: Optional[dict] = None,
                       prompts=None, progress: bool = False) -> EvaluationReport:
    from leakseg.training.dataset import list_scenes, load_scene
    from leakseg.training.metrics import SegmentationMetrics

    scenes = list_scenes(data)
    if not scenes:
        raise FileNotFoundError(f"no scenes (SCENE/images/*) under {data}")
    options = dict(options or {})
    options["return_masks"] = True
    metrics = SegmentationMetrics()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(scenes), unit="clip", desc="evaluate")
    for scene in scenes:
        frames, masks = load_scene(scene)
        if masks is None:
            log.warning("skipping %s: no masks folder", scene.name)
        else:
            result = predictor.predict(list(frames), prompts=prompts, options=options)
            metrics.update(scene.name, result.masks(), masks)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return EvaluationReport(metrics.summary(), metrics.per_video())


def evaluate_archive(archive: Union[str, Path], data: Union[str, Path], options: Optional[dict] = None,
                     prompts=None, device: str = "auto", threads: Optional[int] = None,
                     progress: bool = False) -> EvaluationReport:
    from leakseg.inference.predictor import Predictor

    predictor = Predictor.from_archive(archive, device=device, threads=threads)
    return evaluate_predictor(predictor, data, options, prompts, progress)
