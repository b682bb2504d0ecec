"""Training and fine-tuning of JVLGS, as published (REFERENCE.md, "Training, as published").

* Samples are triplets (t, t+1, t+2) of a clip, target first, for every labelled frame t; the last
  two frames of a clip use the neighbours :func:`leakseg.model.triplet_neighbours` gives them (the
  same rule as inference).
* Loss on the fused logits only: w = 1 + 5 |avgpool31(m) - m|; weighted BCE + weighted IoU
  (:func:`structure_loss`).
* Adam, lr 1e-4, x0.1 for the last 20 % of the epochs (or of the ``max_minutes`` budget when that
  ends first), batch 6, gradient clipping by value 0.5.
* Augmentation identical on the three frames (:mod:`leakseg.data.augment`).

Two options trade exactness of the recipe for CPU time, for training from scratch on a laptop:

* ``sampler="clip"`` (:class:`ClipSet`): clips (or ``window``-frame pieces of them) instead of triplets;
  each frame is encoded once and every labelled frame is a target with the same neighbours and the same
  loss, at a third of the encoder passes. One augmentation draw per clip.
* ``crop``: random crop x crop windows of the size x size frames, so the network sees objects at the
  scale it serves at ``size`` while each step costs (crop / size)^2 of the pixels.

``postprocess`` records the serving post-processing the checkpoint recommends (e.g. absolute
thresholds for a model that must leave leak-free frames empty); validation uses it too.

The text path is never trained. The text matrix E (D x P) is a constant:

* native checkpoint: its prompt bank's embeddings of its default prompts;
* authors' ``.pth``: its own OWLv2 text model, frozen, embeds the prompts once before training
  (exactly what `leakseg export` would compute); the text weights are not saved, the embeddings are;
* scratch: :func:`scratch_prompt_bank`, fixed seeded embeddings (no pretrained text model exists
  here), described in the saved config under ``prompt_bank_note``.

The saved config keeps ``input_size`` 352 (what export and serving use) whatever ``size`` training
ran at; the network is resolution-flexible.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from leakseg.data.augment import AugmentConfig, apply_frame, apply_mask
from leakseg.data.dataset import list_scenes, read_image, read_mask, scene_frames
from leakseg.frames import to_uint8_clip
from leakseg.model import DEFAULT_PROMPTS, JVLGS, build_model, triplet_neighbours
from leakseg.preprocess import preprocess_frame
from leakseg.prompts import PromptBank

log = logging.getLogger(__name__)

SCRATCH_BANK_SEED = 20240531
SCRATCH_BANK_NOTE = (
    "Scratch training: no pretrained OWLv2 text model was available, so the prompt embeddings are NOT "
    "OWLv2's. They are fixed and derived deterministically: for the prompt list in order, a D x P matrix "
    "of standard normals from numpy.random.default_rng({seed}) is orthonormalised by a reduced QR "
    "decomposition (numpy.linalg.qr, signs fixed so diag(R) > 0) and scaled by sqrt(D), so prompt j's "
    "embedding is sqrt(D) * Q[:, j] (unit-variance entries, mutually orthogonal). The prompt strings "
    "are labels only; these vectors carry no language meaning and the bank cannot embed new prompts."
)


# --- loss --------------------------------------------------------------------------------------

def structure_loss(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The published loss on (B, 1, H, W) logits and masks in [0, 1]: mean over the batch of wBCE + wIoU."""
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
    wbce = (weit * bce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    pred = torch.sigmoid(logits)
    inter = (pred * mask * weit).sum(dim=(2, 3))
    union = ((pred + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


# --- prompt embeddings ---------------------------------------------------------------------------

def scratch_prompt_bank(prompts: Sequence[str] = DEFAULT_PROMPTS, dim: int = 512, seed: int = SCRATCH_BANK_SEED) -> PromptBank:
    """Fixed, seeded orthogonal prompt embeddings (see ``SCRATCH_BANK_NOTE``)."""
    prompts = list(prompts)
    g = np.random.default_rng(seed).standard_normal((dim, len(prompts)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]
    emb = np.ascontiguousarray(math.sqrt(dim) * q.T, dtype=np.float32)  # (P, D)
    return PromptBank(prompts, emb, prompts)


def load_start(init: Optional[Union[str, Path]], backbone: str = "pvt_v2_b0") -> Tuple[JVLGS, PromptBank, dict]:
    """(model, prompt bank, provenance) from an authors' .pth, a native folder, or scratch (init None)."""
    from leakseg.export.checkpoint import import_authors_checkpoint, is_native_checkpoint, load_native

    if init is None:
        model = build_model(backbone)
        bank = scratch_prompt_bank(model.config.prompts, model.config.text_dim)
        return model, bank, {"start": f"scratch ({backbone}, random init, no pretrained weights)",
                             "prompt_bank_note": SCRATCH_BANK_NOTE.format(seed=SCRATCH_BANK_SEED)}
    if is_native_checkpoint(init):
        model, bank = load_native(init)
        raw = json.loads((Path(init) / "config.json").read_text())
        info = {"start": f"native checkpoint {Path(init).name}"}
        if "prompt_bank_note" in raw:
            info["prompt_bank_note"] = raw["prompt_bank_note"]
        return model, bank, info
    from leakseg.export.text import build_prompt_bank, build_text_model
    from leakseg.export.tokenizer import load_tokenizer

    model, text_sd = import_authors_checkpoint(init)
    if not text_sd:
        raise ValueError(f"{init} has no text model (nlpmodel.*) to embed the prompts with")
    text_model = build_text_model(model.config.text_model, text_sd).eval()
    for p in text_model.parameters():
        p.requires_grad_(False)
    bank = build_prompt_bank(text_model, load_tokenizer(None), model.config.prompts)
    return model, bank, {"start": f"authors' checkpoint {Path(init).name}",
                         "prompt_bank_note": "embeddings of the prompts by the checkpoint's own OWLv2 text model, "
                                             "frozen during fine-tuning (the text model is not saved)"}


# --- data ----------------------------------------------------------------------------------------

@dataclass
class Clip:
    name: str
    frames: List[np.ndarray]  # uint8, H x W
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
        frames = to_uint8_clip([read_image(img) for img, _ in pairs])
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
        xs, ms, targets, nbs, offset = [], [], [], [], 0
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
            nbs.append(np.asarray(triplet_neighbours(n), np.int64) + offset)
            offset += n
        return (torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ms)),
                torch.tensor(targets, dtype=torch.int64), torch.from_numpy(np.concatenate(nbs)))


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


# --- validation ----------------------------------------------------------------------------------

@torch.no_grad()
def validate(model: JVLGS, text: torch.Tensor, clips: Sequence[Clip], size: int, device: torch.device,
             options: Optional["ClipOptions"] = None) -> Dict:
    """leakseg.metrics summary of the model on fully labelled clips, post-processed as served
    (``options``: the published post-processing when None)."""
    from leakseg.metrics import SegmentationMetrics
    from leakseg.postprocess import postprocess
    from leakseg.schema import ClipOptions

    was_training = model.training
    model.eval()
    metrics, options = SegmentationMetrics(), options or ClipOptions()
    for clip in clips:
        if len(clip.masks) != len(clip.frames):
            continue
        x = torch.from_numpy(np.stack([preprocess_frame(f, size) for f in clip.frames])).to(device)
        nb = torch.tensor(triplet_neighbours(len(clip.frames)), dtype=torch.int64, device=device)
        logits = model(x, text[:1].expand(len(clip.frames), -1, -1), nb)
        h, w = clip.frames[0].shape[:2]
        pred = postprocess(logits.cpu(), h, w, options).masks
        metrics.update(clip.name, pred, np.stack([clip.masks[i] for i in range(len(clip.frames))]))
    model.train(was_training)
    return metrics.summary()


# --- the loop ------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    data: str
    out: str
    init: Optional[str] = None
    backbone: str = "pvt_v2_b0"
    val: Optional[str] = None
    epochs: int = 60
    batch_size: int = 6
    lr: float = 1e-4
    lr_drop_at: float = 0.8  # share of epochs (or of the time budget) after which lr x 0.1
    clip_value: float = 0.5
    size: int = 352
    crop: Optional[int] = None  # train on random crop x crop windows of the size x size frames
    sampler: str = "triplet"  # "triplet" (published) or "clip" (whole clips, each frame encoded once)
    window: Optional[int] = None  # clip sampler: W consecutive frames per sample instead of the whole clip
    few_shot: Optional[int] = None
    max_minutes: Optional[float] = None
    max_steps: Optional[int] = None
    seed: int = 0
    #: serving post-processing this checkpoint recommends (ClipOptions fields): validation uses it and it
    #: is saved as config.json "postprocess", which export takes as the archive's default. Unset fields
    #: come from a native --init checkpoint's recommendation, else the published values.
    postprocess: Dict[str, Any] = field(default_factory=dict)
    val_every: int = 1  # validate every N epochs (and after the last)
    augment: bool = True
    device: str = "auto"
    progress: bool = True


@dataclass
class TrainResult:
    steps: int = 0
    epochs: float = 0.0
    seconds: float = 0.0
    losses: List[float] = field(default_factory=list)  # per step
    epoch_losses: List[float] = field(default_factory=list)
    val: List[Dict] = field(default_factory=list)
    best_score: Optional[Tuple[float, float]] = None  # (J&F, -false-alarm rate)
    stopped: str = ""


def _percentages(summary: Dict) -> Tuple[str, str, str]:
    """J&F, J&F on the frames with gas, false-alarm rate: for the log."""
    def fmt(v, scale=1.0):
        return "n/a" if v is None else f"{scale * v:.1f}"
    return fmt(summary["J&F"]), fmt(summary["leak_J&F"]), fmt(summary["false_alarm_rate"], 100.0) + "%"


def _score(summary: Dict) -> Tuple[float, float]:
    """Model selection: the published J&F on the validation set; ties go to fewer false alarms."""
    return summary.get("J&F") or 0.0, -(summary.get("false_alarm_rate") or 0.0)


def _optimise(model: JVLGS, optimizer, loss: torch.Tensor, clip_value: Optional[float]) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_value:
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
    optimizer.step()
    return float(loss.detach())


def train_step(model: JVLGS, optimizer, triplets: torch.Tensor, masks: torch.Tensor, text: torch.Tensor,
               clip_value: Optional[float] = 0.5) -> float:
    """One step on (B, 3, 3, S, S) triplets (:class:`TripletSet`), the research code's way."""
    logits, _, _ = model.forward_triplet(triplets, text.expand(triplets.shape[0], -1, -1))
    return _optimise(model, optimizer, structure_loss(logits, masks), clip_value)


def clip_step(model: JVLGS, optimizer, frames: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
              neighbours: torch.Tensor, text: torch.Tensor, clip_value: Optional[float] = 0.5) -> float:
    """One step on clips (:class:`ClipSet`): the published loss on the labelled frames' logits."""
    logits = model(frames, text.expand(frames.shape[0], -1, -1), neighbours)
    return _optimise(model, optimizer, structure_loss(logits.index_select(0, targets), masks), clip_value)


def min_input_size() -> int:
    """The smallest square input the network takes: the stride-32 map must be at least as large as the
    temporal block's largest max-pool (8), i.e. 232 pixels (multiples of 32: 256)."""
    from leakseg.model.temporal import SUBSAMPLING

    def stride32(s: int) -> int:
        s = (s - 1) // 4 + 1  # patch embed 7x7, stride 4, padding 3
        for _ in range(3):
            s = (s - 1) // 2 + 1  # 3x3, stride 2, padding 1
        return s

    s = 32
    while stride32(s) < max(SUBSAMPLING):
        s += 1
    return s


def serving_postprocess(cfg: TrainConfig) -> Dict[str, Any]:
    """The post-processing the trained checkpoint will recommend: cfg's fields over a native init's."""
    from leakseg.export.checkpoint import native_postprocess_defaults
    from leakseg.schema import ClipOptions

    merged = {**(native_postprocess_defaults(cfg.init) if cfg.init else {}), **cfg.postprocess}
    ClipOptions(**merged)  # a bad value fails here, before any work
    return merged


def train(cfg: TrainConfig) -> TrainResult:
    from leakseg.export.checkpoint import save_native
    from leakseg.schema import ClipOptions

    if cfg.sampler not in ("triplet", "clip"):
        raise ValueError(f"sampler must be 'triplet' or 'clip', not {cfg.sampler!r}")
    if cfg.crop is not None and cfg.crop > cfg.size:
        raise ValueError(f"--crop {cfg.crop} is larger than --size {cfg.size}")
    net_input = cfg.crop or cfg.size
    if net_input < min_input_size():
        raise ValueError(f"{'--crop' if cfg.crop else '--size'} {net_input} is too small: the network needs at least "
                         f"{min_input_size()} pixels (its stride-32 features must be 8 x 8 or larger for the temporal block)")

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model, bank, info = load_start(cfg.init, cfg.backbone)
    recommended = serving_postprocess(cfg)
    model.to(device).train()
    text = torch.from_numpy(bank.matrix()).to(device)[None]  # (1, D, P), fixed
    clips = load_clips(cfg.data, cfg.few_shot)
    augment = AugmentConfig() if cfg.augment else None
    train_set = (ClipSet(clips, cfg.size, augment, cfg.crop, cfg.window) if cfg.sampler == "clip"
                 else TripletSet(clips, cfg.size, augment, cfg.crop))
    val_clips = load_clips(cfg.val) if cfg.val else []
    if len(train_set) == 0:
        raise ValueError(f"no labelled frames under {cfg.data}")
    log.info("%d training %ss from %d clips, %d validation clips; start: %s; device %s",
             len(train_set), cfg.sampler, len(train_set.clips), len(val_clips), info["start"], device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch if cfg.max_steps is None else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    meta = {"training": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)}, **info}
    if recommended:
        meta["postprocess"] = recommended
    options = ClipOptions(**recommended)
    out = Path(cfg.out)
    result = TrainResult()
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="step", desc="train", dynamic_ncols=True)
    t0 = time.monotonic()
    budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
    dropped = False

    def save(folder: Path, extra: Dict) -> None:
        model.eval()
        save_native(folder, model.cpu(), bank, {**meta, **extra})
        model.to(device).train()

    epoch = 0
    while result.steps < total and not result.stopped:
        order = rng.permutation(len(train_set))
        running = []
        for i in range(0, len(order), cfg.batch_size):
            elapsed = time.monotonic() - t0
            if budget is not None and elapsed >= budget and result.steps > 0:
                result.stopped = f"time budget of {cfg.max_minutes} min reached"
                break
            if result.steps >= total:
                break
            late = (budget is not None and elapsed >= cfg.lr_drop_at * budget) or \
                result.steps >= cfg.lr_drop_at * total
            if late and not dropped:
                for g in optimizer.param_groups:
                    g["lr"] = cfg.lr * 0.1
                dropped = True
                log.info("step %d: learning rate -> %g", result.steps, cfg.lr * 0.1)
            batch = [t.to(device) for t in train_set.batch(order[i:i + cfg.batch_size], rng)]
            step = clip_step if cfg.sampler == "clip" else train_step
            loss = step(model, optimizer, *batch, text, cfg.clip_value)
            result.losses.append(loss)
            running.append(loss)
            result.steps += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(running[-20:]):.4f}", lr=optimizer.param_groups[0]["lr"])
        if not running:
            break
        if budget is not None and time.monotonic() - t0 >= budget and not result.stopped:
            result.stopped = f"time budget of {cfg.max_minutes} min reached"
        epoch += 1
        result.epochs = epoch if len(running) == steps_per_epoch else epoch - 1 + len(running) / steps_per_epoch
        result.epoch_losses.append(float(np.mean(running)))
        extra = {"training_progress": {"steps": result.steps, "epochs": round(result.epochs, 3),
                                       "last_epoch_loss": result.epoch_losses[-1]}}
        finished = result.steps >= total or bool(result.stopped)
        if val_clips and (epoch % cfg.val_every == 0 or finished):
            summary = validate(model, text, val_clips, cfg.size, device, options)
            result.val.append(summary)
            score = _score(summary)
            log.info("epoch %d: loss %.4f; validation J&F %s (frames with gas: %s), false alarms %s",
                     epoch, result.epoch_losses[-1], *_percentages(summary))
            extra["validation"] = summary
            if result.best_score is None or score > result.best_score:
                result.best_score = score
                save(out / "best", extra)
        else:
            log.info("epoch %d: loss %.4f", epoch, result.epoch_losses[-1])
        save(out / "last", extra)
    if bar is not None:
        bar.close()
    result.seconds = time.monotonic() - t0
    result.stopped = result.stopped or "all steps done"
    (out / "train_log.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result
