"""Generate labelled synthetic infrared gas-leak clips.

Writes OUT/synth_00000/images/00000.png (grey, uint8 or uint16), OUT/synth_00000/masks/00000.png
(0 = no gas, 255 = gas) and OUT/synth_00000/meta.json (seed, leak mode, frames with visible gas, and
every sampled parameter), the layout of the authors' datasets, so real data can be dropped in beside it.

A plume is a turbulent, buoyant, wind-driven puff field leaking from a flange or valve on a pipe rack,
seen through a simulated thermal camera (noise, fixed-pattern noise, jitter, AGC). The mask is where
the gas's optical depth exceeds --visibility-threshold. The same --seed gives byte-identical files.

Example:
  leakseg synth data/synth --clips 200 --frames 24 --size 352 352 --seed 0
"""

import argparse


def _fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def add_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="output folder; one sub-folder per clip is created in it")
    parser.add_argument("--clips", type=int, default=10, metavar="N", help="number of clips (default: 10)")
    parser.add_argument("--frames", type=int, default=24, metavar="T", help="frames per clip (default: 24)")
    parser.add_argument("--size", type=int, nargs=2, default=[352, 352], metavar=("H", "W"),
                        help="frame height and width in pixels (default: 352 352, the model's input size)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="dataset seed; each clip gets its own seed derived from it (default: 0)")
    parser.add_argument("--leak-free-fraction", type=_fraction, default=0.2, metavar="F",
                        help="share of clips with no leak at all, all masks empty (default: 0.2)")
    parser.add_argument("--partial-fraction", type=_fraction, default=0.2, metavar="F",
                        help="share of clips where the leak starts or stops mid-clip, half each (default: 0.2); "
                             "the rest leak throughout")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8,
                        help="8: AGC-stretched grey PNGs, white-hot or black-hot; "
                             "16: raw-like counts in 16-bit PNGs (default: 8)")
    parser.add_argument("--visibility-threshold", type=float, default=None, metavar="D",
                        help="optical depth above which gas is labelled; 0.1 (the default) means the gas "
                             "absorbs at least 9.5%% of the background radiance")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from leakseg.training.synth import VISIBILITY_THRESHOLD, write_dataset

    if args.leak_free_fraction + args.partial_fraction > 1:
        raise SystemExit("leakseg synth: --leak-free-fraction plus --partial-fraction must be at most 1")
    height, width = args.size
    scenes = write_dataset(
        args.out, args.clips, args.seed, frames=args.frames, height=height, width=width,
        leak_free_fraction=args.leak_free_fraction, partial_fraction=args.partial_fraction,
        bit_depth=args.bit_depth, progress=not args.no_progress,
        visibility_threshold=VISIBILITY_THRESHOLD if args.visibility_threshold is None else args.visibility_threshold,
    )
    print(f"wrote {len(scenes)} clips to {args.out}")
    return 0
