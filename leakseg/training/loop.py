"""The training loop of JVLGS and FGSTP, each as published (docs/MODELS.md, the published training recipe;
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
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from leakseg.model import TripletNetwork, get_family
from leakseg.model.prompts import PromptBank
from leakseg.schema import ClipOptions
from leakseg.training.augment import AugmentConfig
from leakseg.training.loss import published_loss
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

    @classmethod
    def from_args(cls, args, **overrides) -> "TrainConfig":
        """The config of parsed `leakseg train` arguments: each field from the argument of its name (each
        argument's dest is its field's name, leakseg.commands.train), then ``overrides``."""
        given = vars(args)
        return cls(**{**{f.name: given[f.name] for f in fields(cls) if f.name in given}, **overrides})


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
    outputs = model.forward_triplet(triplets, *_text_rows(text, triplets.shape[0]))
    return _optimise(model, optimizer, published_loss(model.family, *outputs, masks), clip_value)


def clip_step(model: TripletNetwork, optimizer, frames: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
              neighbours: torch.Tensor, text: Optional[torch.Tensor], clip_value: Optional[float] = 0.5) -> float:
    """One step on clips (:class:`ClipSet`): the family's published loss on the labelled frames' outputs."""
    logits, maps1, maps2 = model.forward_maps(frames, *_text_rows(text, frames.shape[0]), neighbours)
    pick = [m.index_select(0, targets) for m in maps1], [m.index_select(0, targets) for m in maps2]
    loss = published_loss(model.family, logits.index_select(0, targets), *pick, masks)
    return _optimise(model, optimizer, loss, clip_value)


def _text_rows(text: Optional[torch.Tensor], rows: int) -> List[torch.Tensor]:
    """The graph's text input for ``rows`` frames: the text matrix repeated, or nothing for a family without prompts."""
    return [] if text is None else [text.expand(rows, -1, -1)]


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
    """Train as ``cfg`` says (see the module doc); writes OUT/last, OUT/best (with validation) and
    OUT/train_log.json."""
    check_config(cfg)
    run = _TrainingRun(cfg)
    while run.result.steps < run.total and not run.result.stopped:
        if not run.run_epoch():
            break
    return run.finish()


def check_config(cfg: TrainConfig) -> None:
    """ValueError for settings that cannot train, before anything is loaded."""
    if cfg.sampler not in ("triplet", "clip"):
        raise ValueError(f"sampler must be 'triplet' or 'clip', not {cfg.sampler!r}")
    if cfg.crop is not None and cfg.crop > cfg.size:
        raise ValueError(f"--crop {cfg.crop} is larger than --size {cfg.size}")
    net_input = cfg.crop or cfg.size
    if net_input < min_input_size():
        raise ValueError(f"{'--crop' if cfg.crop else '--size'} {net_input} is too small: the network needs at least "
                         f"{min_input_size()} pixels (its stride-32 features must be 8 x 8 or larger for the temporal block)")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _saved_config(cfg: TrainConfig) -> Dict[str, Any]:
    """The settings written into checkpoints and the resumable state (not the progress bar's)."""
    return {k: v for k, v in asdict(cfg).items() if k not in ("progress",)}


def _resume_state(cfg: TrainConfig) -> Tuple[Path, Dict]:
    """(checkpoint folder, saved state) of the run ``cfg.resume`` continues; ValueError when the settings
    that shape its batches differ."""
    folder = resume_folder(cfg.resume)
    state = torch.load(folder / STATE_FILE, map_location="cpu", weights_only=False)
    saved = state["config"]
    differ = [k for k in _RESUME_MUST_MATCH if saved.get(k) != getattr(cfg, k)]
    if differ:
        raise ValueError("--resume: these settings differ from the run being continued: " + ", ".join(
            f"{k} {saved.get(k)!r} there, {getattr(cfg, k)!r} here" for k in differ))
    return folder, state


def _training_data(cfg: TrainConfig):
    """(training samples, validation clips)."""
    clips = load_clips(cfg.data, cfg.few_shot)
    augment = AugmentConfig() if cfg.augment else None
    train_set = (ClipSet(clips, cfg.size, augment, cfg.crop, cfg.window) if cfg.sampler == "clip"
                 else TripletSet(clips, cfg.size, augment, cfg.crop))
    val_clips = load_clips(cfg.val) if cfg.val else []
    if len(train_set) == 0:
        raise ValueError(f"no labelled frames under {cfg.data}")
    return train_set, val_clips


class _TrainingRun:
    """One run, a method per step: start or resume (the constructor), epochs of optimiser steps with the
    learning-rate drop and periodic saves, validation, checkpoints, the log."""

    def __init__(self, cfg: TrainConfig):
        self.device = _device(cfg.device)
        torch.manual_seed(cfg.seed)  # before the start: a scratch model's initial weights come from it
        self.rng = np.random.default_rng(cfg.seed)
        state = self._load_model(cfg)
        family = get_family(self.model.family)
        self.cfg = cfg = replace(cfg, lr_drop_at=family.lr_drop_at) if cfg.lr_drop_at is None else cfg
        recommended = {**family.published_postprocess, **serving_postprocess(cfg)}
        self._to_device()
        self.train_set, self.val_clips = _training_data(cfg)
        log.info("%d training %ss from %d clips, %d validation clips; start: %s; device %s", len(self.train_set),
                 cfg.sampler, len(self.train_set.clips), len(self.val_clips), self.info["start"], self.device)
        self.optimizer = self._optimizer(state)
        self._plan(recommended)
        self._start_clock(state)

    # --- start ------------------------------------------------------------------------------------

    def _load_model(self, cfg: TrainConfig) -> Optional[Dict]:
        """The model, its prompt bank and how it started: the resumed run's, or ``cfg``'s start. Returns
        the resumable state (None for a fresh start)."""
        if not cfg.resume:
            self.model, self.bank, self.info = load_start(cfg.init, cfg.backbone, cfg.arch)
            return None
        folder, state = _resume_state(cfg)
        self.model, self.bank, _ = load_start(str(folder), cfg.backbone)
        self.info = state["info"]
        return state

    def _to_device(self) -> None:
        self.model.to(self.device).train()
        takes_prompts = self.bank.takes_prompts  # FGSTP has no text input
        self.text = torch.from_numpy(self.bank.matrix()).to(self.device)[None] if takes_prompts else None  # (1, D, P)

    def _plan(self, recommended: Dict[str, Any]) -> None:
        """Step counts, what checkpoints record, the result and the progress bar."""
        cfg = self.cfg
        self.steps_per_epoch = math.ceil(len(self.train_set) / cfg.batch_size)
        all_steps = cfg.epochs * self.steps_per_epoch
        self.total = all_steps if cfg.max_steps is None else min(cfg.max_steps, all_steps)
        self.meta = {"training": _saved_config(cfg), **self.info}
        if recommended:
            self.meta["postprocess"] = recommended
        self.options = ClipOptions(**recommended)
        self.out = Path(cfg.out)
        self.result = TrainResult()
        self.bar = self._progress_bar() if cfg.progress else None

    def _start_clock(self, state: Optional[Dict]) -> None:
        """Time, budget and schedule counters: from zero, or where the resumed run left them."""
        cfg = self.cfg
        self.t0 = time.monotonic()
        self.budget = None if cfg.max_minutes is None else 60.0 * cfg.max_minutes
        self.dropped = False  # whether the learning rate was dropped already
        self.epoch = 0
        self.pending = None  # (order, next index, running losses) of an epoch a resumed run is in the middle of
        if state is not None:
            self._restore(state)
        self.every = None if cfg.save_every_minutes is None else 60.0 * cfg.save_every_minutes
        self.last_save = time.monotonic()

    def _optimizer(self, state: Optional[Dict]):
        optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        if state is not None and state.get("optimizer") is not None:
            optimizer.load_state_dict(state["optimizer"])
        elif state is not None:
            log.warning("--resume: the saved state has no optimiser moments; Adam starts them afresh")
        return optimizer

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=self.total, unit="step", desc="train", dynamic_ncols=True)

    def _restore(self, state: Dict) -> None:
        """Counters, history, schedule position and RNGs of the run being continued."""
        result = self.result
        self.t0 -= state["seconds"]
        self.dropped = state["dropped"]
        if self.dropped:  # the schedule position wins over a changed --lr
            self._set_lr(self.cfg.lr * 0.1)
        self.epoch = state["epoch"]
        result.steps, result.losses = state["steps"], list(state["losses"])
        result.epoch_losses, result.val = list(state["epoch_losses"]), list(state["val"])
        result.best_score = tuple(state["best_score"]) if state["best_score"] is not None else None
        if state["order"] is not None:
            self.pending = (np.asarray(state["order"]), state["next"], list(state["running"]))
        torch.set_rng_state(state["torch_rng"])
        self.rng.bit_generator.state = state["numpy_rng"]
        if self.bar is not None:
            self.bar.update(result.steps)
        log.info("resumed from %s at step %d (epoch %d, %.1f min trained so far)",
                 self.cfg.resume, result.steps, self.epoch, state["seconds"] / 60)

    # --- an epoch ---------------------------------------------------------------------------------

    def run_epoch(self) -> bool:
        """One epoch (or the rest of an interrupted one), then validation and checkpoints; False when it
        ran no step."""
        if self.pending is not None:
            (order, first, running), self.pending = self.pending, None
        else:
            order, first, running = self.rng.permutation(len(self.train_set)), 0, []
        next_index = self._run_steps(order, first, running)
        if not running:
            return False
        self._end_epoch(order, next_index, running)
        return True

    def _run_steps(self, order: np.ndarray, first: int, running: List[float]) -> Optional[int]:
        """Steps over ``order`` from ``first``; returns where the epoch stopped early (None: it ran out)."""
        batch_size = self.cfg.batch_size
        for i in range(first, len(order), batch_size):
            elapsed = time.monotonic() - self.t0
            if self._out_of_time(elapsed) or self.result.steps >= self.total:
                return i
            self._drop_lr_when_due(elapsed)
            self._step(order[i:i + batch_size], running)
            if self._save_due() and i + batch_size < len(order):
                self._save_mid_epoch(order, i + batch_size, running)
        return None

    def _out_of_time(self, elapsed: float) -> bool:
        """Whether the time budget is spent (after at least one step); records why the run stops."""
        if self.budget is not None and elapsed >= self.budget and self.result.steps > 0:
            self.result.stopped = f"time budget of {self.cfg.max_minutes} min reached"
            return True
        return False

    def _drop_lr_when_due(self, elapsed: float) -> None:
        """lr x 0.1 once ``lr_drop_at`` of the time budget or of the steps has passed, whichever first."""
        cfg = self.cfg
        late = (self.budget is not None and elapsed >= cfg.lr_drop_at * self.budget) or \
            self.result.steps >= cfg.lr_drop_at * self.total
        if late and not self.dropped:
            self._set_lr(cfg.lr * 0.1)
            self.dropped = True
            log.info("step %d: learning rate -> %g", self.result.steps, cfg.lr * 0.1)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _step(self, indices: np.ndarray, running: List[float]) -> None:
        batch = [t.to(self.device) for t in self.train_set.batch(indices, self.rng)]
        step = clip_step if self.cfg.sampler == "clip" else train_step
        loss = step(self.model, self.optimizer, *batch, self.text, self.cfg.clip_value)
        self.result.losses.append(loss)
        running.append(loss)
        self.result.steps += 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=self.epoch + 1, loss=f"{np.mean(running[-20:]):.4f}",
                                 lr=self.optimizer.param_groups[0]["lr"])

    def _end_epoch(self, order: np.ndarray, next_index: Optional[int], running: List[float]) -> None:
        """Epoch bookkeeping, validation (and OUT/best), OUT/last with its resumable state."""
        result = self.result
        if self.budget is not None and time.monotonic() - self.t0 >= self.budget and not result.stopped:
            result.stopped = f"time budget of {self.cfg.max_minutes} min reached"
        self.epoch += 1
        whole = len(running) == self.steps_per_epoch
        result.epochs = self.epoch if whole else self.epoch - 1 + len(running) / self.steps_per_epoch
        result.epoch_losses.append(float(np.mean(running)))
        extra = {"training_progress": {"steps": result.steps, "epochs": round(result.epochs, 3),
                                       "last_epoch_loss": result.epoch_losses[-1]}}
        finished = result.steps >= self.total or bool(result.stopped)
        if self.val_clips and (self.epoch % self.cfg.val_every == 0 or finished):
            extra["validation"] = self._validate(extra)
        else:
            log.info("epoch %d: loss %.4f", self.epoch, result.epoch_losses[-1])
        self._save(self.out / "last", extra)
        if next_index is not None and next_index < len(order):  # stopped inside the epoch: resume inside it
            self._save_state(self.epoch - 1, order, next_index, running, result.epoch_losses[:-1])
        else:
            self._save_state(self.epoch, None, None, [], result.epoch_losses)
        self.last_save = time.monotonic()

    # --- validation and checkpoints ---------------------------------------------------------------

    def _validate(self, extra: Dict) -> Dict:
        """Validate; a new best score also writes OUT/best (with ``extra`` and the summary)."""
        result = self.result
        summary = validate(self.model, self.bank, self.val_clips, self.cfg.size, self.device, self.options)
        result.val.append(summary)
        score = _score(summary)
        log.info("epoch %d: loss %.4f; validation J&F %s (frames with gas: %s), false alarms %s",
                 self.epoch, result.epoch_losses[-1], *_percentages(summary))
        if result.best_score is None or score > result.best_score:
            result.best_score = score
            self._save(self.out / "best", {**extra, "validation": summary})
        return summary

    def _save_due(self) -> bool:
        return self.every is not None and time.monotonic() - self.last_save >= self.every

    def _save_mid_epoch(self, order: np.ndarray, next_index: int, running: List[float]) -> None:
        """OUT/last and its state in the middle of an epoch (``save_every_minutes``)."""
        epochs = round(self.epoch + len(running) / self.steps_per_epoch, 3)
        self._save(self.out / "last", {"training_progress": {"steps": self.result.steps, "epochs": epochs}})
        self._save_state(self.epoch, order, next_index, running, self.result.epoch_losses)
        self.last_save = time.monotonic()
        log.info("step %d: saved %s", self.result.steps, self.out / "last")

    def _save(self, folder: Path, extra: Dict) -> None:
        from leakseg.model.checkpoint import save_native

        self.model.eval()
        save_native(folder, self.model.cpu(), self.bank, {**self.meta, **extra})
        self.model.to(self.device).train()

    def _save_state(self, epoch: int, order, next_index, running, epoch_losses) -> None:
        """The resumable state beside the weights just saved in OUT/last (written atomically)."""
        result = self.result
        resumable = {
            "config": _saved_config(self.cfg), "info": self.info,
            "optimizer": self.optimizer.state_dict(), "dropped": self.dropped, "epoch": epoch, "steps": result.steps,
            "seconds": time.monotonic() - self.t0, "losses": list(result.losses), "epoch_losses": list(epoch_losses),
            "val": list(result.val), "best_score": result.best_score,
            "order": None if order is None else np.asarray(order).tolist(), "next": next_index,
            "running": list(running), "torch_rng": torch.get_rng_state(), "numpy_rng": self.rng.bit_generator.state,
        }
        folder = self.out / "last"
        tmp = folder / (STATE_FILE + ".tmp")
        torch.save(resumable, tmp)
        tmp.replace(folder / STATE_FILE)

    def finish(self) -> TrainResult:
        """Close the bar and write OUT/train_log.json."""
        if self.bar is not None:
            self.bar.close()
        self.result.seconds = time.monotonic() - self.t0
        self.result.stopped = self.result.stopped or "all steps done"
        (self.out / "train_log.json").write_text(json.dumps(asdict(self.result), indent=1) + "\n")
        return self.result
