"""Datasets on disk in the authors' layout: ``OUT/SCENE/images/00000.png``, ``OUT/SCENE/masks/00000.png``
(0/255 uint8) and ``OUT/SCENE/meta.json``, one SCENE per clip; which clip gets which seed and leak mode."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np

from leakseg.synth.clip import ClipSpec, generate_clip

#: Share of leak-free and of partial (start/stop mid-clip) clips in a dataset, per version.
DEFAULT_FRACTIONS = {2: (0.2, 0.2), 3: (1 / 3, 1 / 3)}


def write_clip(scene_dir: Union[str, Path], frames: np.ndarray, masks: np.ndarray, meta: Dict) -> Path:
    """Write SCENE/images/00000.png, SCENE/masks/00000.png (0/255) and SCENE/meta.json."""
    from PIL import Image

    scene_dir = Path(scene_dir)
    (scene_dir / "images").mkdir(parents=True, exist_ok=True)
    (scene_dir / "masks").mkdir(parents=True, exist_ok=True)
    for t, (frame, mask) in enumerate(zip(frames, masks)):
        Image.fromarray(frame).save(scene_dir / "images" / f"{t:05d}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(scene_dir / "masks" / f"{t:05d}.png")
    text = json.dumps(meta, indent=1, sort_keys=True)
    # Keep lists of numbers (leak frames, jitter) on one line each, for a readable file.
    text = re.sub(r"\[\s+([-0-9.e,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    (scene_dir / "meta.json").write_text(text + "\n")
    return scene_dir


def clip_plan(n_clips: int, seed: int, leak_free_fraction: float = 0.2, partial_fraction: float = 0.2):
    """(clip seed, leak mode) for each clip: exact shares of each mode, shuffled by ``seed``."""
    if not 0 <= leak_free_fraction <= 1 or not 0 <= partial_fraction <= 1 - leak_free_fraction:
        raise ValueError("need 0 <= leak_free_fraction and 0 <= partial_fraction with a sum of at most 1")
    n_free = round(n_clips * leak_free_fraction)
    n_partial = min(round(n_clips * partial_fraction), n_clips - n_free)
    modes = ["none"] * n_free + ["start", "stop"] * (n_partial // 2) + ["start"] * (n_partial % 2)
    modes += ["full"] * (n_clips - len(modes))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    modes = [modes[i] for i in rng.permutation(n_clips)]
    seeds = np.random.SeedSequence([seed, 0]).generate_state(n_clips).tolist() if n_clips else []
    return list(zip(seeds, modes))


def write_dataset(out_dir: Union[str, Path], n_clips: int, seed: int, spec: Optional[ClipSpec] = None,
                  leak_free_fraction: Optional[float] = None, partial_fraction: Optional[float] = None,
                  progress: bool = True, **settings) -> List[Path]:
    """Write ``n_clips`` clips as OUT/synth_00000/... ; returns the scene folders.

    ``settings``: :class:`ClipSpec` fields (over ``spec``'s); each clip's leak mode comes from
    :func:`clip_plan`. The shares of leak-free and partial clips default to the version's
    :data:`DEFAULT_FRACTIONS`.
    """
    spec = ClipSpec(**settings) if spec is None else replace(spec, **settings)
    free_default, partial_default = DEFAULT_FRACTIONS[spec.version]
    leak_free_fraction = free_default if leak_free_fraction is None else leak_free_fraction
    partial_fraction = partial_default if partial_fraction is None else partial_fraction
    plan = clip_plan(n_clips, seed, leak_free_fraction, partial_fraction)
    bar = _progress_bar(n_clips) if progress else None
    scenes = []
    for i, (clip_seed, mode) in enumerate(plan):
        frames, masks, meta = generate_clip(clip_seed, spec, leak=mode)
        meta["dataset"] = {"seed": int(seed), "index": i}
        scenes.append(write_clip(Path(out_dir) / f"synth_{i:05d}", frames, masks, meta))
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return scenes


def _progress_bar(total: int):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm ships with the [export] extra; the bar is a nicety
        return None
    return tqdm(total=total, unit="clip", desc="synth")
