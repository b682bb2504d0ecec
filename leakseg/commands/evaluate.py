"""Score an archive on a labelled dataset: J, F, J&F (as published), false alarms, clip detection.

Each scene of DATA (SCENE/images/*, SCENE/masks/*) is segmented in process with the archive, with
the archive's post-processing defaults unless --threshold / --normalization / --opening-kernel
override them, and compared with its masks. J is the IoU and F the pixel F1 of each frame, frames
where prediction and ground truth are both empty skipped; J&F = (J + F) / 2, in percent, averaged
over frames. False alarms: share of leak-free frames with a non-empty mask. Clip detection: a clip
has a leak if any frame does, and is detected if any frame's mask is non-empty.

examples:
  leakseg evaluate --archive model_store/jvlgs.mar --data data/val
  leakseg evaluate --archive model_store/jvlgs.mar --data data/val --plot val.png --json val.json
"""

from pathlib import Path

from leakseg.commands import add_postprocess_arguments, postprocess_overrides


def add_arguments(parser):
    parser.add_argument("--archive", required=True, type=Path, help=".mar file or extracted archive folder")
    parser.add_argument("--data", required=True, type=Path, help="folder of SCENE/images, SCENE/masks")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="write per-video J&F and the false-alarm rate as a PNG")
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
    report = evaluate_archive(args.archive, args.data, options, args.prompts, device=args.device,
                              progress=not args.no_progress)
    print(report.table(per_video=not args.summary_only))
    if args.plot:
        plot_metrics(report.per_video, report.summary["false_alarm_rate"], args.plot)
        print(f"plot written to {args.plot}")
    if args.json:
        args.json.write_text(json.dumps({"summary": report.summary, "per_video": report.per_video}, indent=1) + "\n")
    return 0
