"""Generate labelled synthetic infrared gas-leak clips.

Writes OUT/synth_00000/images/00000.png (grey, uint8 or uint16), OUT/synth_00000/masks/00000.png
(0 = no gas, 255 = gas) and OUT/synth_00000/meta.json (seed, leak mode, frames with visible gas, and
every sampled parameter), the layout of the authors' datasets, so real data can be dropped in beside it.

A plume is a turbulent, buoyant, wind-driven puff field leaking from a flange or valve on a pipe rack,
seen through a simulated thermal camera (noise, fixed-pattern noise, jitter, AGC). The mask is where
the gas's optical depth exceeds --visibility-threshold. The same --seed gives byte-identical files.

Version 3 (the default) adds the distractors of real OGI footage: static hot and cold structures of many
shapes, steam-free exhaust shimmer, faster clouds, birds anywhere, out-of-focus insects, sky reflections,
strong fixed-pattern noise, gain/offset drift and flat-field steps, camera shake, far/near sources and thin
or faint plumes; a third of its clips are leak-free (hard negatives) and a third start or stop mid-clip.
--version 2 writes exactly what version 2 wrote. Each effect is described in leakseg.synth.effects and
docs/DEFAULT_MODEL.md; --effect NAME=STRENGTH scales one (0 turns it off).

Example:
  leakseg synth data/synth --clips 200 --frames 24 --size 352 352 --seed 0
  leakseg synth data/v2 --version 2 --clips 160 --frames 10 --seed 0      # a version-2 dataset
  leakseg synth data/quieter --effect insects=0 --effect shake=0.5        # v3 with fewer distractors
  leakseg synth data/calm --calm                                          # v3, no distractors at all
"""

import argparse


def _fraction(text):
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _effect(text):
    from leakseg.synth import V3_EFFECTS

    name, sep, value = text.partition("=")
    if not sep or name not in V3_EFFECTS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=STRENGTH with NAME one of {', '.join(V3_EFFECTS)}")
    try:
        strength = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: STRENGTH must be a number") from None
    if strength < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: STRENGTH must be >= 0")
    return name, strength


def add_arguments(parser):
    parser.add_argument("out", metavar="OUT", help="output folder; one sub-folder per clip is created in it")
    parser.add_argument("--clips", type=int, default=10, metavar="N", help="number of clips (default: 10)")
    parser.add_argument("--frames", type=int, default=24, metavar="T", help="frames per clip (default: 24)")
    parser.add_argument("--size", type=int, nargs=2, default=[352, 352], metavar=("H", "W"),
                        help="frame height and width in pixels (default: 352 352, the model's input size)")
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="dataset seed; each clip gets its own seed derived from it (default: 0)")
    parser.add_argument("--version", type=int, choices=(2, 3), default=3,
                        help="generator version (default: 3, with the distractors of real footage; 2 reproduces "
                             "version-2 datasets byte for byte)")
    parser.add_argument("--effect", type=_effect, action="append", default=[], metavar="NAME=STRENGTH",
                        help="version 3: scale one effect (0 = off, 1 = default), repeatable; NAME is one of "
                             "structures, shimmer, clouds, birds, insects, reflections, fixed_pattern, drift, "
                             "shake, distance, thin_faint")
    parser.add_argument("--calm", action="store_true",
                        help="version 3 with every distractor off (each --effect NAME=0), the plume the only thing "
                             "that moves; an --effect given too turns that one back on")
    parser.add_argument("--leak-free-fraction", type=_fraction, default=None, metavar="F",
                        help="share of clips with no leak at all, all masks empty: the hard negatives "
                             "(default: 1/3 for version 3, 0.2 for version 2)")
    parser.add_argument("--partial-fraction", type=_fraction, default=None, metavar="F",
                        help="share of clips where the leak starts or stops mid-clip, half each (default: 1/3 for "
                             "version 3, 0.2 for version 2); the rest leak throughout")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=8,
                        help="8: AGC-stretched grey PNGs, white-hot or black-hot; "
                             "16: raw-like counts in 16-bit PNGs (default: 8)")
    parser.add_argument("--visibility-threshold", type=float, default=None, metavar="D",
                        help="optical depth above which gas is labelled; 0.1 (the default) means the gas "
                             "absorbs at least 9.5%% of the background radiance")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    from leakseg.synth import CALM_EFFECTS, DEFAULT_FRACTIONS, VISIBILITY_THRESHOLD, write_dataset

    free, partial = DEFAULT_FRACTIONS[args.version]
    free = free if args.leak_free_fraction is None else args.leak_free_fraction
    partial = partial if args.partial_fraction is None else args.partial_fraction
    if (args.effect or args.calm) and args.version < 3:
        raise SystemExit("leakseg synth: --effect and --calm need --version 3")
    effects = {**(CALM_EFFECTS if args.calm else {}), **dict(args.effect)}
    if free + partial > 1 + 1e-9:
        raise SystemExit("leakseg synth: --leak-free-fraction plus --partial-fraction must be at most 1")
    height, width = args.size
    scenes = write_dataset(
        args.out, args.clips, args.seed, frames=args.frames, height=height, width=width,
        leak_free_fraction=free, partial_fraction=min(partial, 1 - free),
        bit_depth=args.bit_depth, progress=not args.no_progress, version=args.version,
        effects=effects or None,
        visibility_threshold=VISIBILITY_THRESHOLD if args.visibility_threshold is None else args.visibility_threshold,
    )
    print(f"wrote {len(scenes)} clips (generator version {args.version}) to {args.out}")
    return 0
