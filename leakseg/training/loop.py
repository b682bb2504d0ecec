"""The training loop of JVLGS and FGSTP, each as published (REFERENCE.md, "Training, as published";
FGSTP: its repository's train.py).

* Samples (:mod:`leakseg.training.samplers`): the published triplets, or whole-clip windows that
  encode each frame once; optional crops.
* Loss (:func:`leakseg.training.loss.published_loss`): JVLGS on the fused logits only; FGSTP on the fused
  logits and all four decoder maps of both neighbours. FGSTP's lr drop comes after 44 of 60 epochs.
* Adam, lr 1e-4, x0.1 for the last 20 % of the epochs (or of the ``max_minutes`` budget when that
  ends first), batch 6, gradient clipping by value 0.5.
* The start (:mod:`leakseg.training.start`): an authors' checkpoint, a native one, or scratch; the
  text matrix is a constant.
* Validation goes through the one inference path, :meth:`leakseg.inference.Predictor.from_model`,
  post-processed as the checkpoint recommends serving it (``postprocess``, saved as config.json
  "postprocess", which export takes as the archive's default).

The saved config keeps ``input_size`` 352 (what export and serving use) whatever ``size`` training
ran at; the network is resolution-flexible.

Resuming: ``OUT/last`` also holds :data:`STATE_FILE` (optimiser state, step and epoch counters, the
position inside the current epoch, the torch and numpy RNG states, the training time spent, whether the
learning rate was already dropped, the loss and validation history). It is written with every ``last``
checkpoint, i.e. after every epoch and every ``save_every_minutes``. ``resume=DIR`` (DIR = an earlier
OUT, or its ``last``) continues from there: the same batches, augmentations and learning rate the
uninterrupted run would have had. ``max_minutes`` and ``max_steps`` count the whole run, earlier sessions
included, so the learning-rate drop keeps its place in the schedule.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from leakseg.model import TripletNetwork, get_family
from leakseg.model.prompts import PromptBank
from leakseg.schema import ClipOptions
from leakseg.training.augment import AugmentConfig
from leakseg.training.loss import published_loss, structure_loss
from leakseg.training.samplers import Clip, ClipSet, TripletSet, load_clips
from leakseg.training.start import load_start

log = logging.getLogger(__name__)


# --- validation ----------------------------------------------------------------------------------

def validate(model: TripletNetwork, bank: PromptBank, clips: Sequence[Clip], size: int, device: torch.device,
             options: Optional[ClipOptions] = None) -> Dict:
    """leakseg.training.metrics summary of the model on fully labelled clips, through the one inference
    path (:meth:`Predictor.from_model`), post-processed as served (``options``: the published
    post-processing when None), at the training ``size``."""
    from leakseg.inference import Predictor
    from leakseg.training.metrics import SegmentationMetrics

    was_training = model.training
    predictor = Predictor.from_model(model, bank, defaults=options, device=str(device), input_size=size)
    metrics = SegmentationMetrics()
    for clip in clips:
        if len(clip.masks) != len(clip.frames):
            continue
        result = predictor.predict(clip.frames)
        metrics.update(clip.name, result.masks(), np.stack([clip.masks[i] for i in range(len(clip.frames))]))
    model.train(was_training)
    return metrics.summary()


# --- the loop ------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    data: str
    out: str
    init: Optional[str] = None
    backbone: str = "pvt_v2_b0"
    arch: Optional[str] = None  # jvlgs or fgstp for scratch training (default jvlgs); --init's family otherwise
    val: Optional[str] = None
    epochs: int = 60
    batch_size: int = 6
    lr: float = 1e-4
    lr_drop_at: Optional[float] = None  # share of epochs (or of the time budget) after which lr x 0.1;
    # None: the family's published schedule (ModelFamily.lr_drop_at: JVLGS 0.8, FGSTP 44/60)
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
    resume: Optional[str] = None  # an earlier OUT (or OUT/last) to continue from (see the module doc)
    save_every_minutes: Optional[float] = None  # also write OUT/last (and its state) this often


#: The resumable training state written beside OUT/last's weights.
STATE_FILE = "train_state.pt"


def resume_folder(path: str) -> Path:
    """The checkpoint folder holding :data:`STATE_FILE`: ``path`` itself or ``path/last``."""
    p = Path(path)
    for folder in (p, p / "last"):
        if (folder / STATE_FILE).is_file():
            return folder
    raise FileNotFoundError(f"--resume {path}: no {STATE_FILE} in it or in {p / 'last'} (checkpoints written "
                            f"by an older leakseg, or a folder that is not a training output)")


#: Settings a resumed run must share with the run it continues (others, e.g. the budget, may change).
_RESUME_MUST_MATCH = ("batch_size", "size", "crop", "sampler", "window", "few_shot", "backbone", "arch", "seed")


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


def _optimise(model: TripletNetwork, optimizer, loss: torch.Tensor, clip_value: Optional[float]) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip_value:
        torch.nn.utils.clip_grad_value_(model.parameters(), clip_value)
    optimizer.step()
    return float(loss.detach())


def train_step(model: TripletNetwork, optimizer, triplets: torch.Tensor, masks: torch.Tensor,
               text: Optional[torch.Tensor], clip_value: Optional[float] = 0.5) -> float:
    """One step on (B, 3, 3, S, S) triplets (:class:`TripletSet`), the research code's way, with the
    family's published loss (``text`` None for FGSTP)."""
    if text is None:
        outputs = model.forward_triplet(triplets)
    else:
        outputs = model.forward_triplet(triplets, text.expand(triplets.shape[0], -1, -1))
    return _optimise(model, optimizer, published_loss(model.family, *outputs, masks), clip_value)


def clip_step(model: TripletNetwork, optimizer, frames: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
              neighbours: torch.Tensor, text: Optional[torch.Tensor], clip_value: Optional[float] = 0.5) -> float:
    """One step on clips (:class:`ClipSet`): the family's published loss on the labelled frames' outputs."""
    if text is None:  # FGSTP: its loss needs the decoder maps too
        logits, maps1, maps2 = model.forward_maps(frames, neighbours)
        pick = [m.index_select(0, targets) for m in maps1], [m.index_select(0, targets) for m in maps2]
        loss = published_loss(model.family, logits.index_select(0, targets), *pick, masks)
    else:
        logits = model(frames, text.expand(frames.shape[0], -1, -1), neighbours)
        loss = structure_loss(logits.index_select(0, targets), masks)
    return _optimise(model, optimizer, loss, clip_value)


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
    from leakseg.model.checkpoint import native_postprocess_defaults

    merged = {**(native_postprocess_defaults(cfg.init) if cfg.init else {}), **cfg.postprocess}
    ClipOptions(**merged)  # a bad value fails here, before any work
    return merged


def train(cfg: TrainConfig) -> TrainResult:
    from leakseg.model.checkpoint import save_native

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
    state = None
    if cfg.resume:
        folder = resume_folder(cfg.resume)
        state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
        saved = state["config"]
        differ = [k for k in _RESUME_MUST_MATCH if saved.get(k) != getattr(cfg, k)]
        if differ:
            raise ValueError("--resume: these settings differ from the run being continued: " + ", ".join(
                f"{k} {saved.get(k)!r} there, {getattr(cfg, k)!r} here" for k in differ))
        model, bank, _ = load_start(str(folder), cfg.backbone)
        info = state["info"]
    else:
        model, bank, info = load_start(cfg.init, cfg.backbone, cfg.arch)
    if cfg.lr_drop_at is None:
        cfg = replace(cfg, lr_drop_at=get_family(model.family).lr_drop_at)
    recommended = {**get_family(model.family).published_postprocess, **serving_postprocess(cfg)}
    model.to(device).train()
    text = torch.from_numpy(bank.matrix()).to(device)[None] if bank.takes_prompts else None  # (1, D, P), fixed
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
    if state is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    elif state is not None:
        log.warning("--resume: the saved state has no optimiser moments; Adam starts them afresh")
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
    epoch = 0
    pending = None  # (order, next index, running losses) of an epoch a resumed run is in the middle of
    if state is not None:
        t0 -= state["seconds"]
        dropped = state["dropped"]
        if dropped:  # the schedule position wins over a changed --lr
            for g in optimizer.param_groups:
                g["lr"] = cfg.lr * 0.1
        epoch = state["epoch"]
        result.steps, result.losses = state["steps"], list(state["losses"])
        result.epoch_losses, result.val = list(state["epoch_losses"]), list(state["val"])
        result.best_score = tuple(state["best_score"]) if state["best_score"] is not None else None
        if state["order"] is not None:
            pending = (np.asarray(state["order"]), state["next"], list(state["running"]))
        torch.set_rng_state(state["torch_rng"])
        rng.bit_generator.state = state["numpy_rng"]
        if bar is not None:
            bar.update(result.steps)
        log.info("resumed from %s at step %d (epoch %d, %.1f min trained so far)",
                 cfg.resume, result.steps, epoch, state["seconds"] / 60)

    def save(folder: Path, extra: Dict) -> None:
        model.eval()
        save_native(folder, model.cpu(), bank, {**meta, **extra})
        model.to(device).train()

    def save_state(folder: Path, order, next_index, running, epoch_losses) -> None:
        """The resumable state beside the weights just saved in ``folder`` (written atomically)."""
        resumable = {
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("progress",)}, "info": info,
            "optimizer": optimizer.state_dict(), "dropped": dropped, "epoch": epoch, "steps": result.steps,
            "seconds": time.monotonic() - t0, "losses": list(result.losses), "epoch_losses": list(epoch_losses),
            "val": list(result.val), "best_score": result.best_score,
            "order": None if order is None else np.asarray(order).tolist(), "next": next_index,
            "running": list(running), "torch_rng": torch.get_rng_state(), "numpy_rng": rng.bit_generator.state,
        }
        tmp = folder / (STATE_FILE + ".tmp")
        torch.save(resumable, tmp)
        tmp.replace(folder / STATE_FILE)

    every = None if cfg.save_every_minutes is None else 60.0 * cfg.save_every_minutes
    last_save = time.monotonic()
    while result.steps < total and not result.stopped:
        if pending is not None:
            order, first, running = pending
            pending = None
        else:
            order, first, running = rng.permutation(len(train_set)), 0, []
        next_index = None  # where this epoch stopped, when it stopped early
        for i in range(first, len(order), cfg.batch_size):
            elapsed = time.monotonic() - t0
            if budget is not None and elapsed >= budget and result.steps > 0:
                result.stopped = f"time budget of {cfg.max_minutes} min reached"
                next_index = i
                break
            if result.steps >= total:
                next_index = i
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
            if every is not None and time.monotonic() - last_save >= every and i + cfg.batch_size < len(order):
                save(out / "last", {"training_progress": {"steps": result.steps,
                                                          "epochs": round(epoch + len(running) / steps_per_epoch, 3)}})
                save_state(out / "last", order, i + cfg.batch_size, running, result.epoch_losses)
                last_save = time.monotonic()
                log.info("step %d: saved %s", result.steps, out / "last")
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
            summary = validate(model, bank, val_clips, cfg.size, device, options)
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
        if next_index is not None and next_index < len(order):  # stopped inside the epoch: resume inside it
            epoch -= 1
            save_state(out / "last", order, next_index, running, result.epoch_losses[:-1])
            epoch += 1
        else:
            save_state(out / "last", None, None, [], result.epoch_losses)
        last_save = time.monotonic()
    if bar is not None:
        bar.close()
    result.seconds = time.monotonic() - t0
    result.stopped = result.stopped or "all steps done"
    (out / "train_log.json").write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result
