"""Score an archive on a labelled dataset: J, F, J&F (as published), false alarms, clip detection.

Each scene of DATA (SCENE/images/*, SCENE/masks/*) is segmented in process with the archive, with
the archive's post-processing defaults unless --threshold / --normalization / --opening-kernel
override them, and compared with its masks. J is the IoU and F the pixel F1 of each frame, frames
where prediction and ground truth are both empty skipped; J&F = (J + F) / 2, in percent, averaged
over frames. False alarms: share of leak-free frames with a non-empty mask. Clip detection: a clip
has a leak if any frame does, and is detected if any frame's mask is non-empty.

--sweep scores many post-processings from one network run per clip: every --thresholds value under
both normalisations (absolute sigmoid probabilities, and per-frame min-max), printing the curve of the
false-alarm rate on leak-free frames against J&F on the frames with gas, and the operating point: the best
J&F on gas frames whose false-alarm rate is within --budget (default 5%). --plot then draws that curve.

examples:
  leakseg evaluate --archive model_store/jvlgs.mar --data data/val
  leakseg evaluate --archive model_store/jvlgs.mar --data data/val --sweep --budget 0.05 --plot sweep.png
  leakseg evaluate --archive model_store/jvlgs.mar --data data/val --plot val.png --json val.json
"""

from pathlib import Path

from leakseg.commands import add_postprocess_arguments, postprocess_overrides


def add_arguments(parser):
    parser.add_argument("--archive", required=True, type=Path, help=".mar file or extracted archive folder")
    parser.add_argument("--data", required=True, type=Path, help="folder of SCENE/images, SCENE/masks")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="write per-video J&F and the false-alarm rate as a PNG (with --sweep: the curve)")
    sweep = parser.add_argument_group("threshold sweep")
    sweep.add_argument("--sweep", action="store_true",
                       help="score every threshold x normalisation from one network run per clip and choose the "
                            "operating point within the false-alarm budget")
    sweep.add_argument("--budget", type=float, default=0.05, metavar="RATE",
                       help="largest acceptable false-alarm rate on leak-free frames, a fraction (default 0.05)")
    sweep.add_argument("--thresholds", type=float, nargs="+", metavar="T",
                       help="thresholds to sweep, each in (0, 1) (default: 0.05 to 0.95 by 0.05, then 0.97, 0.98, 0.99, 0.995, 0.999)")
    sweep.add_argument("--normalizations", nargs="+", choices=("absolute", "minmax"),
                       default=["absolute", "minmax"], help="normalisations to sweep (default: both)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the summary and per-video numbers as JSON")
    parser.add_argument("--prompts", nargs="+", metavar="PROMPT", help="prompt list (default: the archive's)")
    add_postprocess_arguments(parser, "default: the archive's")
    parser.add_argument("--summary-only", action="store_true", help="no per-video rows in the table")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args):
    import json

    from leakseg.training.evaluate import evaluate_archive
    from leakseg.training.metrics import plot_metrics

    options = postprocess_overrides(args)
    if args.sweep:
        return _sweep(args, options)
    report = evaluate_archive(args.archive, args.data, options, args.prompts, device=args.device,
                              progress=not args.no_progress)
    print(report.table(per_video=not args.summary_only))
    if args.plot:
        plot_metrics(report.per_video, report.summary["false_alarm_rate"], args.plot)
        print(f"plot written to {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"summary": report.summary, "per_video": report.per_video}, indent=1) + "\n")
    return 0


def _sweep(args, options):
    import json

    from leakseg.training.evaluate import SWEEP_THRESHOLDS, sweep_archive
    from leakseg.training.metrics import plot_sweep

    if set(options) - {"opening_kernel"}:
        raise SystemExit("leakseg evaluate: --sweep chooses the threshold and normalisation itself; "
                         "of the post-processing flags only --opening-kernel applies")
    thresholds = args.thresholds or SWEEP_THRESHOLDS
    bad = [t for t in thresholds if not 0 < t < 1]
    if bad:
        raise SystemExit(f"leakseg evaluate: --thresholds must lie strictly between 0 and 1, got {bad}")
    if not 0 <= args.budget <= 1:
        raise SystemExit(f"leakseg evaluate: --budget is a fraction between 0 and 1, got {args.budget}")
    report = sweep_archive(args.archive, args.data, device=args.device, thresholds=thresholds,
                           normalizations=args.normalizations, budget=args.budget,
                           opening_kernel=options.get("opening_kernel"), prompts=args.prompts,
                           progress=not args.no_progress)
    print(report.table())
    if args.plot:
        plot_sweep(report.points, args.plot, report.chosen, args.budget,
                   title=f"{Path(args.archive).name} on {Path(args.data).name}: J&F on gas frames vs false alarms")
        print(f"plot written to {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"points": report.points, "operating_point": report.chosen,
                                         "postprocess": report.postprocess()}, indent=1) + "\n")
    return 0
