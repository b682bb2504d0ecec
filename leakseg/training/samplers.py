"""Training samples: labelled clips read from disk, the published triplets, and whole-clip windows.

* :class:`TripletSet`: triplets (t, t+1, t+2) of a clip, target first, for every labelled frame t; the
  last two frames of a clip use the neighbours :func:`leakseg.model.triplet_neighbours` gives them
  (the same rule as inference). Augmentation identical on the three frames.
* :class:`ClipSet`: clips (or ``window``-frame pieces of them) instead of triplets; each frame is
  encoded once and every labelled frame is a target with the same neighbours and the same loss, at a
  third of the encoder passes. One augmentation draw per clip.
* ``crop``: random crop x crop windows of the size x size frames, so the network sees objects at the
  scale it serves at ``size`` while each step costs (crop / size)^2 of the pixels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from leakseg.inference.preprocess import preprocess_frame
from leakseg.io.frames import read_image_file, to_uint8_clip
from leakseg.model import batch_neighbours, triplet_neighbours
from leakseg.training.augment import AugmentConfig, apply_frame, apply_mask
from leakseg.training.dataset import list_scenes, read_mask, scene_frames

log = logging.getLogger(__name__)


@dataclass
class Clip:
    name: str
    frames: List[np.ndarray]  # uint8, H x W or H x W x 3
    masks: Dict[int, np.ndarray]  # frame index -> bool H x W (labelled frames only)


def few_shot_indices(labelled: Sequence[int], cap: Optional[int]) -> List[int]:
    """At most ``cap`` of the labelled frame indices, spread evenly over the clip (all when cap is None)."""
    labelled = sorted(labelled)
    if cap is None or len(labelled) <= cap:
        return labelled
    if cap <= 0:
        return []
    picks = np.linspace(0, len(labelled) - 1, cap).round().astype(int)
    return [labelled[i] for i in picks]


def load_clips(root: Union[str, Path], few_shot: Optional[int] = None) -> List[Clip]:
    """Every scene under ``root`` with at least 3 frames; frames in 8 bits (clip-level stretch for 16 bit)."""
    clips = []
    for scene in list_scenes(root):
        pairs = scene_frames(scene)
        if len(pairs) < 3:
            log.warning("skipping %s: %d frames (a triplet needs 3)", scene.name, len(pairs))
            continue
        frames = to_uint8_clip([read_image_file(img) for img, _ in pairs])
        labelled = few_shot_indices([i for i, (_, m) in enumerate(pairs) if m is not None], few_shot)
        clips.append(Clip(scene.name, frames, {i: read_mask(pairs[i][1]) for i in labelled}))
    if not clips:
        raise FileNotFoundError(f"no scenes (SCENE/images/*) with 3 or more frames under {root}")
    return clips


class TripletSet:
    """(triplet (3, 3, S, S) float32, mask (1, S, S) float32 in [0, 1]) per labelled frame."""

    def __init__(self, clips: Sequence[Clip], size: int, augment: Optional[AugmentConfig] = None,
                 crop: Optional[int] = None):
        self.clips = list(clips)
        self.size, self.augment, self.crop = size, augment, crop
        self.items: List[Tuple[int, int, int, int]] = []  # clip, target, first, second
        for ci, clip in enumerate(self.clips):
            pairs = triplet_neighbours(len(clip.frames))
            for t in sorted(clip.masks):
                self.items.append((ci, t, *pairs[t]))

    def __len__(self) -> int:
        return len(self.items)

    def get(self, index: int, rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
        ci, t, a, b = self.items[index]
        clip = self.clips[ci]
        x, m = sample_tensors([clip.frames[t], clip.frames[a], clip.frames[b]], [clip.masks[t]],
                              self.size, self.augment, self.crop, rng)
        return x, m[0]

    def batch(self, indices: Sequence[int], rng: Optional[np.random.Generator] = None):
        xs, ms = zip(*(self.get(i, rng) for i in indices))
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ms))


class ClipSet:
    """Clips as samples: every frame is encoded once per step and every labelled frame of the clip is a
    target (with the neighbours :func:`triplet_neighbours` gives it), which is the same per-frame loss as
    the triplets at a third of the encoder passes. One augmentation draw per clip.

    ``window`` W: each sample is W consecutive frames of the clip, at a random start, treated as a W-frame
    clip (the neighbour rule a W-frame request gets). Several short windows of different clips make a
    batch whose BatchNorm statistics span scenes, as the published batches of 6 triplets do.
    """

    def __init__(self, clips: Sequence[Clip], size: int, augment: Optional[AugmentConfig] = None,
                 crop: Optional[int] = None, window: Optional[int] = None):
        if window is not None and window < 3:
            raise ValueError(f"a window needs at least 3 frames, not {window}")
        self.clips = [c for c in clips if c.masks and (window is None or len(c.frames) >= window)]
        self.size, self.augment, self.crop, self.window = size, augment, crop, window

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def targets(self) -> int:
        return sum(len(c.masks) for c in self.clips)

    def batch(self, indices: Sequence[int], rng: Optional[np.random.Generator] = None):
        """(frames (N, 3, s, s), masks (M, 1, s, s), targets (M,) rows of the labelled frames, neighbours (N, 2))."""
        xs, ms, targets, lengths, offset = [], [], [], [], 0
        for i in indices:
            clip = self.clips[i]
            start, n = 0, len(clip.frames)
            if self.window is not None:
                r = rng if rng is not None else np.random.default_rng(i)
                starts = [s for s in range(n - self.window + 1) if any(s <= t < s + self.window for t in clip.masks)]
                start, n = int(r.choice(starts)), self.window  # a window with at least one target
            labelled = [t for t in sorted(clip.masks) if start <= t < start + n]
            x, m = sample_tensors(clip.frames[start:start + n], [clip.masks[t] for t in labelled], self.size,
                                  self.augment, self.crop, rng)
            xs.append(x)
            if labelled:
                ms.append(m)
            targets += [offset + t - start for t in labelled]
            lengths.append(n)
            offset += n
        return (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ms)),
                torch.tensor(targets, dtype=torch.int64), torch.tensor(batch_neighbours(lengths), dtype=torch.int64))


def sample_tensors(frames: Sequence[np.ndarray], masks: Sequence[np.ndarray], size: int,
                   augment: Optional[AugmentConfig] = None, crop: Optional[int] = None,
                   rng: Optional[np.random.Generator] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Frames -> (T, 3, s, s) network input, masks -> (M, 1, s, s) in [0, 1], all with one augmentation
    draw and one crop position. Frames are resized to ``size``; ``crop`` then cuts a random crop x crop
    window, so a network trained on crops sees objects at the scale it serves at ``size``.
    """
    from PIL import Image

    masks = [np.asarray(m).astype(np.uint8) * 255 for m in masks]
    if augment is not None and rng is not None:
        params = augment.sample(rng)
        frames = [apply_frame(f, params) for f in frames]
        masks = [apply_mask(m, params) for m in masks]
    x = np.stack([preprocess_frame(f, size) for f in frames])
    m = np.stack([np.asarray(Image.fromarray(k).resize((size, size), Image.BILINEAR), np.float32) / 255.0
                  for k in masks])[:, None]
    if crop is not None and crop < size:
        r = rng if rng is not None else np.random.default_rng(0)
        y0, x0 = (int(v) for v in r.integers(0, size - crop + 1, 2))
        x, m = x[..., y0:y0 + crop, x0:x0 + crop], m[..., y0:y0 + crop, x0:x0 + crop]
    return np.ascontiguousarray(x), np.ascontiguousarray(m)
