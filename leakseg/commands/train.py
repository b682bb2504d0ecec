"""Train or fine-tune JVLGS on labelled clips in the authors' layout (SCENE/images, SCENE/masks).

As published: triplets (t, t+1, t+2), loss wBCE + wIoU with w = 1 + 5|avgpool31(m) - m| on the fused
logits, Adam lr 1e-4 (x0.1 for the last 20% of epochs, or of --max-minutes), batch 6, gradient
clipping by value 0.5, flip / rotation (+-15 deg, p=0.2) / brightness-contrast-sharpness jitter
applied identically to the three frames of a triplet.

Families: JVLGS (default) or FGSTP (--arch fgstp, or an FGSTP --init; no text, its own published
loss and lr schedule: x0.1 after 44 of 60 epochs).

Start: --init an authors' .pth (its OWLv2 text model is frozen and only used to embed the prompts
once), --init a native checkpoint folder (its prompt embeddings are kept), or no --init: scratch
(--backbone, random init, fixed seeded prompt embeddings that are NOT OWLv2's; see the config's
prompt_bank_note). The text path is never trained.

Writes OUT/last and, with --val, OUT/best (native checkpoints, export with `leakseg export
--checkpoint OUT/best`), and OUT/train_log.json (per-step losses, per-epoch validation).

examples:
  leakseg train data/igs-few --init IGS-Few_best.pth --few-shot 30 --val data/val --out runs/ft
  leakseg train data/gasvid --init gasvid_best.pth --val data/val --out runs/fgstp-ft   # FGSTP fine-tuning
  leakseg train data/synth --arch fgstp --backbone pvt_v2_b0 --max-minutes 30 --out runs/fgstp-b0
  leakseg train /tmp/synth --backbone pvt_v2_b0 --size 256 --max-minutes 25 --val /tmp/val --out runs/b0
  leakseg train /tmp/lt --size 352 --crop 240 --lr 5e-4 --max-minutes 45 --normalization absolute \
      --val /tmp/lv12 --out runs/r4   # the bundled default model (docs/DEFAULT_MODEL.md)
"""

from leakseg.commands import add_postprocess_arguments, postprocess_overrides


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            import argparse

            raise argparse.ArgumentTypeError(f"{text} must be positive")
        return value
    return parse


def _family(name: str) -> str:
    """A registered model family's name (the registry is read only when --arch is given: it imports torch)."""
    import argparse

    from leakseg.model import get_family

    try:
        return get_family(name).name
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser):
    # Each argument's dest is the TrainConfig field it sets (TrainConfig.from_args).
    parser.add_argument("data", metavar="DATA", help="training folder: SCENE/images/*, SCENE/masks/*")
    parser.add_argument("--out", required=True, help="output folder (OUT/best, OUT/last)")
    parser.add_argument("--init", metavar="CHECKPOINT",
                        help="authors' .pth or native checkpoint folder; omit to train from scratch")
    parser.add_argument("--backbone", default="pvt_v2_b0",
                        help="PVTv2 variant for scratch training (default pvt_v2_b0); ignored with --init")
    parser.add_argument("--arch", type=_family, metavar="FAMILY",
                        help="model family for scratch training: jvlgs (default) or fgstp; with --init the checkpoint's family "
                             "is used (an FGSTP checkpoint such as gasvid_best.pth fine-tunes FGSTP). FGSTP trains with "
                             "its published loss: all four decoder maps of both neighbours and the fused logits")
    parser.add_argument("--val", metavar="DIR", help="validation folder, evaluated after every epoch")
    parser.add_argument("--epochs", type=_positive(int), default=60, help="epochs (default 60, SimGas; IGS-Few used 150)")
    parser.add_argument("--batch-size", type=_positive(int), default=6, help="samples per step: triplets (default 6), or clips with --sampler clip")
    parser.add_argument("--lr", type=_positive(float), default=1e-4, help="Adam learning rate (default 1e-4)")
    parser.add_argument("--size", type=_positive(int), default=352,
                        help="training resolution (default 352; at least 225, where the stride-32 features reach 8x8); "
                             "the saved config keeps input_size 352 for export")
    parser.add_argument("--crop", type=_positive(int), metavar="C",
                        help="train on random C x C windows of the --size frames: objects keep the scale they have "
                             "at --size, at a fraction of the cost (e.g. --size 352 --crop 256)")
    parser.add_argument("--sampler", choices=("triplet", "clip"), default="triplet",
                        help="triplet: the published samples, three encoder passes each (default); clip: whole clips, "
                             "each frame encoded once and every labelled frame a target (same loss, about half the "
                             "time per target on CPU); --batch-size then counts clips")
    parser.add_argument("--window", type=_positive(int), metavar="W",
                        help="with --sampler clip: W consecutive frames of a clip per sample (a random start each "
                             "time) instead of the whole clip, so a batch of several clips stays small")
    parser.add_argument("--val-every", type=_positive(int), default=1, metavar="N",
                        help="validate every N epochs and after the last (default 1)")
    parser.add_argument("--few-shot", type=_positive(int), metavar="N",
                        help="at most N labelled frames per video, spread evenly (the IGS-Few setting: 30)")
    parser.add_argument("--max-minutes", type=_positive(float), metavar="M",
                        help="wall-clock budget; training stops cleanly and saves when it is spent")
    parser.add_argument("--max-steps", type=_positive(int), metavar="N", help="stop after N optimiser steps")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue an earlier run from its last saved state (DIR = its --out, or DIR/last): "
                             "weights, optimiser, step/epoch counters, position in the epoch, RNGs, learning-rate "
                             "schedule; --max-minutes and --max-steps then count the whole run, earlier sessions "
                             "included. Give the same DATA and sampler settings (checked)")
    parser.add_argument("--save-every", type=_positive(float), metavar="MIN", dest="save_every_minutes",
                        help="also save OUT/last (resumable) every MIN minutes, not only after each epoch")
    post = parser.add_argument_group(
        "serving post-processing this checkpoint recommends (used for validation, saved in config.json, the "
        "default of `leakseg export`)")
    add_postprocess_arguments(post, "default: the --init checkpoint's recommendation, else the published value")
    parser.add_argument("--no-augment", action="store_false", dest="augment", help="no augmentation")
    parser.add_argument("--seed", type=int, default=0, help="seed for init, shuffling and augmentation")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:1, ...")
    parser.add_argument("--no-progress", action="store_false", dest="progress", help="no progress bar")


def run(args):
    from leakseg.training.loop import TrainConfig, train

    result = train(TrainConfig.from_args(args, postprocess=postprocess_overrides(args)))
    losses = result.epoch_losses
    print(f"{result.steps} steps, {result.epochs:.2f} epochs in {result.seconds / 60:.1f} min ({result.stopped}); "
          f"epoch loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else "no steps run")
    if result.val:
        from leakseg.training.metrics import format_table

        print("last validation:\n" + format_table(result.val[-1]))
    print(f"checkpoints in {args.out}")
    return 0
