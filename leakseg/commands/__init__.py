"""The `leakseg` subcommands, one module each (see :mod:`leakseg.cli`)."""

POSTPROCESS_FLAGS = ("threshold", "normalization", "opening_kernel")


def add_postprocess_arguments(parser, default: str) -> None:
    """--threshold / --normalization / --opening-kernel; ``default`` says where unset ones come from."""
    parser.add_argument("--threshold", type=float, help=f"probability threshold, after normalisation ({default})")
    parser.add_argument("--normalization", choices=["minmax", "absolute"],
                        help="minmax rescales each frame's probabilities to [0, 1] first (as published); absolute "
                             f"thresholds the sigmoid itself, so a leak-free frame can come back empty ({default})")
    parser.add_argument("--opening-kernel", type=int,
                        help=f"size of the elliptical opening, 0 = off (published: 9; {default})")


def postprocess_overrides(args) -> dict:
    """The post-processing flags that were given, as ClipOptions fields."""
    return {k: getattr(args, k) for k in POSTPROCESS_FLAGS if getattr(args, k, None) is not None}
