"""Send a clip to a running leakseg service, print a short summary, write the JSON and overlays.

The frames come from image files or a folder of them (FRAMES...), a .npy/.npz array
(--clip), or a video file (--video; needs the optional extra: pip install 'leakseg[video]').
The token is --token, $LEAKSEG_TOKEN, or the "inference" key of TorchServe's key file
(--key-file or $LEAKSEG_KEY_FILE).

examples:
  leakseg segment --url http://127.0.0.1:8080 --key-file key_file.json frames/
  leakseg segment --clip clip.npy --threshold 0.4 --out result.json --overlay overlay.gif
  leakseg segment --video leak.mp4 --fps 5 --max-frames 64 --overlay overlays/

exit status: 0 when the service answered (leak or no leak), 1 when it refused the clip or
failed, 2 for bad arguments or unreadable input.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, List, Optional

# Only the standard library at module level: `leakseg --help` builds every subparser.

EXIT_OK, EXIT_SERVICE, EXIT_USAGE = 0, 1, 2


def add_arguments(parser):
    src = parser.add_argument_group("input (one of)")
    src.add_argument("frames", nargs="*", metavar="FRAMES",
                     help="image files (PNG, JPEG, TIFF, BMP) in order, or one folder of them")
    src.add_argument("--clip", metavar="FILE", help="a .npy or .npz array, T x H x W [x 3]")
    src.add_argument("--video", metavar="FILE", help="a video file (mp4, avi, ...; needs imageio)")
    src.add_argument("--fps", type=float, help="with --video: frames per second to take (default: all)")
    src.add_argument("--max-frames", type=int, metavar="N", help="with --video: stop after N frames")

    svc = parser.add_argument_group("service")
    svc.add_argument("--url", help="base URL of the inference API (default: $LEAKSEG_URL or http://127.0.0.1:8080)")
    svc.add_argument("--token", help="inference token (default: $LEAKSEG_TOKEN, then the key file)")
    svc.add_argument("--key-file", help="TorchServe key_file.json (default: $LEAKSEG_KEY_FILE)")
    svc.add_argument("--model", default="jvlgs", help="model name (default: %(default)s)")
    svc.add_argument("--form", choices=("multipart", "json"), default="multipart",
                     help="request encoding (default: %(default)s)")
    svc.add_argument("--timeout", type=float, default=120.0, help="read timeout in seconds (default: %(default)s)")
    svc.add_argument("--retries", type=int, default=20,
                     help="retries on connection errors, 503 (busy, no worker) and dead workers; never on 4xx "
                          "(default: %(default)s)")
    svc.add_argument("--retry-time", type=float, default=90.0, metavar="SECONDS",
                     help="the most time all retries of the request may take together (default: %(default)s)")

    opt = parser.add_argument_group("segmentation")
    opt.add_argument("--prompts", nargs="+", metavar="P",
                     help="text prompts (default: the model's); put FRAMES before it, or end the list with --")
    opt.add_argument("--threshold", type=float, help="probability threshold in (0, 1)")
    opt.add_argument("--opening-kernel", type=int, metavar="PX", help="opening kernel size; 0 turns it off")
    opt.add_argument("--normalization", choices=("minmax", "absolute"), help="probability normalisation")

    out = parser.add_argument_group("output")
    out.add_argument("--out", "-o", metavar="FILE", help="write the result JSON here ('-': standard output)")
    out.add_argument("--overlay", metavar="OUT", help="write overlays: a folder of PNGs, a .gif or an .mp4")


def run(args) -> int:
    from leakseg.client import InvalidInput, LeakSegClient, LeakSegError

    try:
        frames, fps = _frames_from_args(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    options = {k: v for k, v in (("threshold", args.threshold), ("opening_kernel", args.opening_kernel),
                                 ("normalization", args.normalization)) if v is not None}
    try:
        with LeakSegClient(args.url, token=args.token, model=args.model, timeout=args.timeout,
                           retries=args.retries, retry_time=args.retry_time,
                           key_file=args.key_file) as client:
            started = time.perf_counter()
            result = client.segment(frames, args.prompts, form=args.form, **options)
            round_trip_ms = 1000 * (time.perf_counter() - started)
    except InvalidInput as exc:
        field = f", field {exc.field}" if exc.field else ""
        status = f"HTTP {exc.status}" if exc.status else "before sending"
        return _fail(f"invalid input [{_code(exc.code)}{field}] ({status}): {exc.message}",
                     EXIT_SERVICE if exc.status else EXIT_USAGE)
    except LeakSegError as exc:
        return _fail(f"{type(exc).__name__}: {exc}", EXIT_SERVICE)
    except (ValueError, TypeError, OSError) as exc:  # frames the client could not read or encode
        return _fail(str(exc), EXIT_USAGE)

    to_stdout = args.out == "-"
    print(summarize(result, round_trip_ms), file=sys.stderr if to_stdout else sys.stdout)
    return _write_outputs(args, frames, result, fps, to_stdout)


# -- inputs -------------------------------------------------------------------------------------


def _frames_from_args(args) -> "tuple[Any, Optional[float]]":
    """The frames argument for LeakSegClient.segment, and the frame rate to write overlays at."""
    given = [name for name, value in (("FRAMES", args.frames), ("--clip", args.clip), ("--video", args.video))
             if value]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise ValueError(f"give exactly one of FRAMES, --clip or --video{got}")
    if (args.fps is not None or args.max_frames is not None) and not args.video:
        raise ValueError("--fps and --max-frames apply to --video only")
    if args.video:
        return read_video(args.video, fps=args.fps, max_frames=args.max_frames)
    if args.clip:
        return args.clip, None
    # One argument may be a folder or a clip file; the client tells them apart.
    return (args.frames[0] if len(args.frames) == 1 else list(args.frames)), None


def read_video(path: str, fps: Optional[float] = None, max_frames: Optional[int] = None):
    """Frames of a video as a T x H x W [x 3] uint8 array, taken at ``fps``; and the rate taken at."""
    import numpy as np

    try:
        import imageio.v2 as imageio
    except ImportError as exc:
        raise ImportError("reading videos needs imageio and imageio-ffmpeg: pip install 'leakseg[video]'") from exc
    try:
        reader = imageio.get_reader(path)
    except FileNotFoundError:
        raise
    except Exception as exc:  # imageio raises several types when no plugin can read the file
        raise ValueError(f"cannot read video {path}: {exc} (MP4 and most videos need imageio-ffmpeg)") from exc
    try:
        native = reader.get_meta_data().get("fps")
        frames = list(sample_frames(reader, native, fps, max_frames))
    finally:
        reader.close()
    if not frames:
        raise ValueError(f"no frames read from {path}")
    clip = np.stack([_drop_alpha(np.asarray(f)) for f in frames])
    return _grey_if_grey(clip), (fps if fps and native and fps < native else native)


def sample_frames(frames: Iterable[Any], native_fps: Optional[float], fps: Optional[float] = None,
                  max_frames: Optional[int] = None) -> Iterator[Any]:
    """Take frames at ``fps`` out of a stream at ``native_fps`` (all of them when either is unknown
    or fps is not lower), at most ``max_frames``."""
    step = native_fps / fps if fps and native_fps and fps < native_fps else None
    next_pick, taken = 0.0, 0
    for i, frame in enumerate(frames):
        if max_frames is not None and taken >= max_frames:
            return
        if step is None or i + 1e-6 >= next_pick:
            yield frame
            taken += 1
            next_pick += step or 0.0


def _drop_alpha(frame):
    return frame[..., :3] if frame.ndim == 3 and frame.shape[-1] == 4 else frame


def _grey_if_grey(clip):
    """Infrared videos usually store grey as RGB: send one channel (lossless, a third of the bytes)."""
    if clip.ndim == 4 and (clip[..., 0] == clip[..., 1]).all() and (clip[..., 0] == clip[..., 2]).all():
        return clip[..., 0].copy()
    return clip


# -- outputs ------------------------------------------------------------------------------------


def summarize(result, round_trip_ms: Optional[float] = None) -> str:
    """A few human lines about a ClipResult: which frames leak, the largest leak, timings."""
    clip, t = result.clip, result.timings
    lines = [f"model {result.model.name} {result.model.version}; prompts: {', '.join(result.model.prompts)}",
             f"clip: {clip.frames} frames, {clip.width} x {clip.height} px"]
    if clip.leak_detected:
        lines.append(f"leak in {len(clip.leak_frames)} of {clip.frames} frames: {frame_ranges(clip.leak_frames)}")
        top = max(result.frames, key=lambda f: f.area_pixels)
        lines.append(f"largest leak: frame {top.index}, {top.area_pixels} px "
                     f"({100 * top.area_fraction:.2f}% of the frame)")
    else:
        lines.append(f"no leak detected in {clip.frames} frames")
    timing = (f"timings: decode {t.decode_ms:.0f} ms, model {t.model_ms:.0f} ms, "
              f"postprocess {t.postprocess_ms:.0f} ms, server total {t.total_ms:.0f} ms")
    if round_trip_ms is not None:
        timing += f", round trip {round_trip_ms:.0f} ms"
    lines.append(timing)
    if result.request_id:
        lines.append(f"request_id: {result.request_id}")
    return "\n".join(lines)


def frame_ranges(indices: Iterable[int]) -> str:
    """``[1, 2, 3, 7, 9, 10]`` as ``"1-3, 7, 9-10"``."""
    runs: List[List[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b != a else f"{a}" for a, b in runs)


def _write_outputs(args, frames, result, fps: Optional[float], to_stdout: bool) -> int:
    log = sys.stderr if to_stdout else sys.stdout
    text = result.model_dump_json(indent=2) + "\n"
    if to_stdout:
        sys.stdout.write(text)
    elif args.out:
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(text)
        except OSError as exc:
            return _fail(f"cannot write {args.out}: {exc}", EXIT_USAGE)
        print(f"wrote {args.out}", file=log)
    if args.overlay:
        from leakseg.utils.overlay import render_overlays, write_overlays

        try:
            written = write_overlays(render_overlays(frames, result), args.overlay, fps=fps or 10.0)
        except (ValueError, OSError, ImportError) as exc:
            return _fail(f"cannot write overlays: {exc}", EXIT_USAGE)
        print(f"wrote {written}", file=log)
    return EXIT_OK


def _code(code) -> str:
    return getattr(code, "value", code)


def _fail(message: str, status: int) -> int:
    print(f"leakseg segment: error: {message}", file=sys.stderr)
    return status
