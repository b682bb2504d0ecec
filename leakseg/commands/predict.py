"""Segment one clip in process with an archive, without a server.

Writes exactly the JSON that POST /predictions/NAME returns (see docs/API.md).
FRAME... are image files (PNG, JPEG, TIFF, BMP; 8/16-bit; grey or RGB) in clip order,
one folder of them, or a single .npy/.npz clip (T x H x W [x 3]; uint8, uint16 or float32).

examples:
  leakseg predict --archive model_store/jvlgs.mar clip/*.png --output result.json
  leakseg predict --archive model_store/jvlgs.mar clip.npy --threshold 0.6 --opening-kernel 0
"""

import sys
from pathlib import Path

from leakseg.commands import add_postprocess_arguments, postprocess_overrides


def add_arguments(parser):
    parser.add_argument("--archive", required=True, type=Path, help="a .mar file or an extracted archive folder")
    parser.add_argument("frames", nargs="+", type=Path, metavar="FRAME", help="image files, one folder of them, or one .npy/.npz clip")
    parser.add_argument("--prompts", nargs="+", metavar="PROMPT", help="exactly P prompts from the archive's bank")
    add_postprocess_arguments(parser, "default: the archive's")
    parser.add_argument("--probabilities", action="store_true", help="include low-resolution probability maps")
    parser.add_argument("--output", "-o", type=Path, help="write the JSON here instead of standard output")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])


def run(args):
    from leakseg.inference import Predictor
    from leakseg.io.frames import read_clip_paths
    from leakseg.schema import InputError

    options = postprocess_overrides(args)
    if args.probabilities:
        options["return_probabilities"] = True
    predictor = Predictor.from_archive(args.archive, device=args.device)
    try:
        frames, names = read_clip_paths(args.frames, predictor.limits)
        result = predictor.predict(frames, args.prompts, options, names)
    except InputError as exc:
        print(exc.to_response().model_dump_json(indent=2), file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:  # a missing file, an empty folder
        print(f"leakseg predict: {exc}", file=sys.stderr)
        return 2
    text = result.model_dump_json(indent=2)
    if args.output:
        args.output.write_text(text + "\n")
        leaks = result.clip.leak_frames
        print(f"{result.clip.frames} frames, leak in {len(leaks)}: {leaks}; wrote {args.output}", file=sys.stderr)
    else:
        print(text)
    return 0
