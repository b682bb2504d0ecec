"""Measure what a camera can detect: synthetic gas plumes blended into its own gas-free frames, run through
exactly what the camera runs in production (the model and options, the windows, the ignore zones, the
K-of-N alarm rule), over a grid of plume sizes, contrasts, polarities and durations.

It reports the probability of detection (PoD) per grid cell, the time to alarm and to clear, the false alarms
per hour of the clean frames themselves, the detection limit (the smallest plume found with the target
probability), the PoD at the reference plume, and a recommended alarm rule. It passes when the PoD at
the reference plume reaches the target.

units:
  size       the plume's visible area in pixels (where its optical depth is above the 9.5 % opacity
             threshold), averaged over the frames while it leaks; the report also gives it as % of the frame
  contrast   the change a fully opaque layer of gas would make, in the frame's own units (grey levels of
             8-bit frames, counts of 16-bit radiometric frames); the polarity gives its sign
  durations  analysed frames; times in the report are seconds of the analysed stream

background: the camera's own frames, without gas. --recording reads a video file (as the monitor reads it:
decimated to analysis_fps) or a folder of frame files; without it the camera's `source` is read live
until --frames analysed frames have come (a camera fault meanwhile is an error). --exclude drops frames
that may hold a real plume, by index among the frames gathered (0-20,150-170: both ends included); the
longest stretch left is used, so no window spans a gap. Every trial needs lead + duration + tail frames.

grid and target: the camera's `selftest:` block in the configuration when it has one, else the defaults
(3 sizes x 3 contrasts x 2 polarities x 1 duration x 2 positions = 36 trials of 42 frames, plus the clean
frames: about 1,600 frames through the model). Measured with the default model at 320 x 240 on 2 CPU cores:
9.7 CPU-minutes (about 5 minutes on idle cores); a GPU is much faster. --grid FILE.yaml or --quick (4 trials:
1000 and 3000 px at contrast 40, brighter and darker, one position) replace the grid, and the target flags
override the target.

writes (into --out, default selftest-CAMERA-DATE): selftest.json (every number, SelfTestResult),
report.html (one self-contained page for an auditor: PoD heat maps, tables, overlays of detected and
missed plumes) and recommended.yaml (the camera's alarm: block to paste into the configuration).

examples:
  leakseg selftest monitor.yaml --camera east-flare --recording east-flare-calm.mkv --exclude 0-20
  leakseg selftest monitor.yaml --camera east-flare --quick                  # live, the service in the file
  leakseg selftest monitor.yaml --camera east-flare --archive model_store/jvlgs.mar --grid grid.yaml

exit status: 0 the camera passed, 1 the self-test ran and the camera failed its target, 2 the self-test
could not run (bad arguments, configuration, grid, background frames, or the model/service unreachable).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

EXIT_PASSED, EXIT_FAILED, EXIT_CANNOT_RUN = 0, 1, 2

#: --quick: four trials around the default reference plume (1000 px at contrast 40).
QUICK_GRID = {"sizes_pixels": [1000, 3000], "contrasts": [40.0], "polarities": ["brighter", "darker"],
              "durations_frames": [16], "positions": 1}
#: Background frames gathered when neither --frames nor the camera's selftest block says.
DEFAULT_FRAMES = 64


class CannotRun(Exception):
    """The self-test cannot run; the message is the one line printed."""


def add_arguments(parser):
    parser.add_argument("config", metavar="CONFIG", help="the monitor's YAML file (the camera's settings as run)")
    parser.add_argument("--camera", metavar="NAME", help="the camera to test (may be left out when there is one)")
    src = parser.add_argument_group("background frames")
    src.add_argument("--recording", metavar="PATH", help="a video file or a folder of frame files of the camera, "
                     "without gas (default: read the camera's source live)")
    src.add_argument("--frames", type=int, metavar="N", help="analysed frames to gather (default: the camera's "
                     f"selftest.background_frames, else {DEFAULT_FRAMES}); a recording may hold fewer")
    src.add_argument("--exclude", default="", metavar="RANGES", help="frames that may hold real gas, e.g. "
                     "0-20,150-170 (indices of the frames gathered, both ends included)")
    src.add_argument("--fps", type=float, metavar="F", help="analysed frames per second, for times and rates "
                     "(default: from the recording's timestamps, else the camera's analysis_fps)")
    model = parser.add_argument_group("model (default: the service in CONFIG, as the monitor uses it)")
    model.add_argument("--archive", metavar="MAR", help="run the model in process from this .mar")
    model.add_argument("--device", default="cpu", help="with --archive: cpu, cuda or auto (default: %(default)s)")
    grid = parser.add_argument_group("grid and target (default: the camera's selftest: block, else the defaults)")
    which = grid.add_mutually_exclusive_group()
    which.add_argument("--grid", metavar="FILE.yaml", help="a PlumeGrid: sizes_pixels, contrasts, polarities, "
                       "durations_frames, positions, lead_frames, tail_frames, seed")
    which.add_argument("--quick", action="store_true", help="4 trials: 1000 and 3000 px, contrast 40, both polarities")
    grid.add_argument("--target-pod", type=float, metavar="P", help="the PoD the reference plume must reach (0.9)")
    grid.add_argument("--reference-size", type=int, metavar="PX", help="the reference plume's size in pixels (1000)")
    grid.add_argument("--max-false-alarms-per-day", type=float, metavar="N",
                      help="the recommended alarm rule's limit on the clean footage (1)")
    parser.add_argument("--out", metavar="DIR", help="where the report goes (default: selftest-CAMERA-DATE)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    try:
        return _selftest(args)
    except CannotRun as exc:
        print(f"leakseg selftest: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print("leakseg selftest: interrupted, nothing written", file=sys.stderr)
        return 130


def _selftest(args) -> int:
    from leakseg.selftest.report import write_report

    _check_numbers(args)
    config = _config(args.config)
    camera = _camera(config, args.camera)
    grid, target = _grid(args, camera), _target(args, camera)
    background = _background(args, camera)
    print(background.describe())
    segmenter = _segmenter(args, config)
    try:
        _check_model(segmenter, camera, background.frames)
        run = _run(args, camera, segmenter, background, grid, target)
    finally:
        segmenter.close()
    out = Path(args.out or f"selftest-{camera.name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    try:
        paths = write_report(run, out)
    except OSError as exc:
        raise CannotRun(f"cannot write the report into {out}: {exc.strerror or exc}") from None
    print(summary(run.result, paths.html))
    return EXIT_PASSED if run.result.passed else EXIT_FAILED


# -- inputs ------------------------------------------------------------------------------------------


def _check_numbers(args) -> None:
    """The flags no model validates, checked before any frame is read."""
    if args.fps is not None and args.fps <= 0:
        raise CannotRun(f"--fps must be > 0, got {args.fps:g}")
    if args.frames is not None and args.frames < 1:
        raise CannotRun(f"--frames must be >= 1, got {args.frames}")


def _config(path: str):
    from leakseg.monitor.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise CannotRun(f"invalid configuration: {'; '.join(str(exc).splitlines())}") from None


def _camera(config, name):
    names = [c.name for c in config.cameras]
    if name is None and len(names) == 1:
        return config.cameras[0]
    if name is None:
        raise CannotRun(f"give --camera NAME, one of: {', '.join(names)}")
    for cam in config.cameras:
        if cam.name == name:
            return cam
    raise CannotRun(f"no camera {name!r} in the configuration (cameras: {', '.join(names)})")


def _grid(args, camera):
    from leakseg.selftest.settings import PlumeGrid

    if args.quick:
        return PlumeGrid.model_validate(QUICK_GRID)
    if args.grid:
        return _validated(PlumeGrid, _yaml_file(args.grid), f"--grid {args.grid}")
    return camera.selftest.grid if camera.selftest else PlumeGrid()


def _target(args, camera):
    from leakseg.selftest.settings import SelfTestTarget

    base = camera.selftest.target if camera.selftest else SelfTestTarget()
    flags = {"probability": args.target_pod, "reference_size_pixels": args.reference_size,
             "max_false_alarms_per_day": args.max_false_alarms_per_day}
    given = {k: v for k, v in flags.items() if v is not None}
    return _validated(SelfTestTarget, {**base.model_dump(), **given}, "target") if given else base


def _yaml_file(path: str):
    import yaml

    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise CannotRun(f"--grid {path}: cannot read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise CannotRun(f"--grid {path}: not valid YAML: {' '.join(str(exc).split())}") from None


def _validated(model, data, what: str):
    """``model`` validated from ``data``; its errors as one line naming ``what`` and each key."""
    from pydantic import ValidationError

    from leakseg.monitor.config import format_errors

    if not isinstance(data, dict):
        raise CannotRun(f"{what}: expected a mapping of keys, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise CannotRun("; ".join(format_errors(exc, data, what).splitlines())) from None


def _background(args, camera):
    from leakseg.selftest.background import BackgroundError, gather_background

    frames = args.frames or (camera.selftest.background_frames if camera.selftest else DEFAULT_FRAMES)
    try:
        return gather_background(camera, recording=args.recording, frames=frames, exclude=args.exclude)
    except BackgroundError as exc:
        raise CannotRun(f"background: {exc}") from None


def _segmenter(args, config):
    """The model as the monitor would use it: in process from --archive, else the service in CONFIG."""
    from leakseg.commands.monitor import _segmenter as monitor_segmenter

    try:
        return monitor_segmenter(args, config)
    except Exception as exc:  # noqa: BLE001 - a bad archive or key file: one line, no traceback
        raise CannotRun(f"cannot load the model: {type(exc).__name__}: {exc}") from None


def _check_model(segmenter, camera, frames) -> None:
    """One window through the production call before the trials: an unreachable service, a wrong key or a
    refused frame size is said at once, in one line, not after the first trial."""
    from leakseg.monitor.segmenters import segment_window
    from leakseg.monitor.windows import Frame, Window, window_length

    length = window_length(camera.clip_frames, segmenter.streams)
    clip = [Frame(i, pixels, 0.0) for i, pixels in enumerate(frames[:length])]
    _, failure = segment_window(segmenter, camera, Window(camera.name, 0, clip, len(clip), stream=f"{camera.name}/check"))
    if failure:
        raise CannotRun(f"the model did not answer ({segmenter.name}): {failure}")


# -- the run -----------------------------------------------------------------------------------------


def _run(args, camera, segmenter, background, grid, target):
    """run_selftest with a progress bar; a failure of the production path (the service refusing a window,
    an ignore mask that does not fit, too few frames for a trial) is :class:`CannotRun`, never a traceback."""
    from leakseg.selftest.run import run_selftest
    from leakseg.selftest.trials import SelfTestError

    bar = None if args.no_progress else _Bar(grid.trials)
    try:
        return run_selftest(background.frames, camera, segmenter, grid, target, fps=args.fps or background.fps,
                            progress=bar.update if bar else None)
    except SelfTestError as exc:
        raise CannotRun(f"the self-test could not run: {exc}") from None
    except ValueError as exc:  # run_selftest's word for frames it cannot use (too few, float pixels)
        raise CannotRun(f"the background frames do not fit the self-test: {exc}") from None
    finally:
        if bar:
            bar.close()


class _Bar:
    """tqdm over the trials, moved to run_selftest's (done, total)."""

    def __init__(self, total: int):
        from tqdm import tqdm

        self.tqdm = tqdm(total=total, unit="trial", desc="selftest", dynamic_ncols=True)

    def update(self, done: int, total: int) -> None:
        self.tqdm.total = total
        self.tqdm.update(done - self.tqdm.n)

    def close(self) -> None:
        self.tqdm.close()


def summary(result, report: Path) -> str:
    verdict = "PASSED" if result.passed else "FAILED"
    limit = result.detection_limit_at_reference
    clean = result.clean
    return "\n".join([
        f"camera {result.camera}: {verdict}",
        f"  {result.reason}",
        f"  PoD at the reference plume: {result.probability_at_reference:.2f}",
        f"  detection limit at the reference contrast: {'none in the grid' if limit is None else f'{limit} px'}",
        f"  false alarms on the clean footage: {clean.false_alarms_per_hour:.2f} per hour "
        f"({clean.false_alarms} in {clean.hours:.3f} h)",
        f"  report: {report} (selftest.json, recommended.yaml beside it)",
    ])
