"""Watch infrared cameras, segment overlapping clips with the leakseg service, raise leak alarms in SCADA.

One YAML file describes the cameras (RTSP/HTTP URLs, video files, drop folders), the alarm rule
per camera (a leak of at least A pixels outside the ignore mask in K of the last N analysed
frames raises LEAK; M clear frames in a row clear it), and the outputs: an OPC UA server
(variables + Alarms & Conditions events + Acknowledge), MQTT (retained state, events, last
will), a read-only Modbus TCP register map, and a rotated JSON lines log. Every key is
documented in docs/SCADA.md; examples/monitor.yaml is a complete example.

Lost or frozen cameras are CAMERA_FAULT and an unreachable or failing service is SERVICE_FAULT,
never "no leak"; so is a window that fails in any way, and windows waiting with none analysed.
A camera that delivers frames but cannot see gas (a flat, low-contrast, saturated or blurred
picture) is DEGRADED, never NORMAL; it is still analysed.
When the service is slower than a live camera whole windows are dropped (and counted); replays
(realtime: false, a drop folder with its END file) wait instead. SIGINT/SIGTERM publish every
camera OFFLINE first, then exit 0 within shutdown_seconds.

examples:
  leakseg monitor --check monitor.yaml                 # validate the file, start nothing
  leakseg monitor --check monitor.yaml --draw-zones zones/   # ... and draw each camera's zones: zones/CAMERA.png
  leakseg monitor --config monitor.yaml                # run against the service in the file
  leakseg monitor --config monitor.yaml --archive model_store/jvlgs.mar   # model in process

exit status: 0 after a clean stop, 2 for an invalid configuration or bad arguments,
1 when a sink or the model cannot start, or (--draw-zones) when a camera could not be drawn.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

log = logging.getLogger("leakseg.monitor")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_arguments(parser):
    parser.add_argument("--config", "-c", metavar="FILE", help="the monitor's YAML file")
    parser.add_argument("--check", nargs="?", const=True, metavar="FILE",
                        help="validate FILE (or --config) and print a summary; start nothing")
    parser.add_argument("--draw-zones", metavar="DIR",
                        help="with --check: read one frame of every camera and write DIR/CAMERA.png, its ignored "
                        "pixels tinted and its zones outlined")
    parser.add_argument("--archive", metavar="MAR",
                        help="run the model in process from this .mar (no TorchServe); service: is ignored")
    parser.add_argument("--device", default="cpu", help="with --archive: cpu, cuda or auto (default: %(default)s)")
    parser.add_argument("--until-end", action="store_true",
                        help="stop once every source has ended (video files without loop; folders with an END file)")
    parser.add_argument("--no-table", action="store_true", help="no live status table, even in a terminal")


def run(args) -> int:
    path = args.check if isinstance(args.check, str) else args.config
    if not path:
        print("leakseg monitor: give --config FILE (or --check FILE)", file=sys.stderr)
        return EXIT_USAGE
    config = _load(path)
    if config is None:
        return EXIT_USAGE
    if args.draw_zones and not args.check:
        print("leakseg monitor: --draw-zones goes with --check", file=sys.stderr)
        return EXIT_USAGE
    if args.check:
        print(summary(config, path))
        code = EXIT_OK if _passwords_set(config) else EXIT_USAGE
        if args.draw_zones and not _draw_all_zones(config, Path(args.draw_zones)) and code == EXIT_OK:
            code = EXIT_FAIL
        return code
    return _monitor(args, config)


def _draw_all_zones(config, out: Path) -> bool:
    """Write OUT/CAMERA.png per camera and print its path; False (after saying why) when any camera was
    skipped: its source gave no frame (a live stream out of reach) or its zones do not fit the frame."""
    from leakseg.monitor.measure import camera_ignore_mask
    from leakseg.monitor.zones import draw_zones

    out.mkdir(parents=True, exist_ok=True)
    all_drawn = True
    for cam in config.cameras:
        try:
            image = draw_zones(first_frame(cam), camera_ignore_mask(cam))
        except (FrameUnavailable, ValueError) as exc:
            print(f"  {cam.name}: not drawn: {exc}", file=sys.stderr)
            all_drawn = False
            continue
        target = out / f"{cam.name}.png"
        image.save(target)
        print(f"  {cam.name}: zones drawn in {target}")
    return all_drawn


class FrameUnavailable(Exception):
    """The camera's source gave no frame (the reason is the message)."""


def first_frame(cam, patience: float = 5.0):
    """The camera's first frame, read by the monitor's own source (a drop folder, a video file, a stream).

    Nothing is deleted or paced; FrameUnavailable after the source's open timeout plus ``patience`` seconds."""
    from leakseg.monitor.sources import read_frames

    once = cam.model_copy(update={"delete_after_read": False, "loop": False, "realtime": False})
    read = read_frames(once, 1, cam.faults.open_timeout + patience)
    if not read.frames:
        raise FrameUnavailable(read.fault or "the source ended without a frame")
    return read.frames[0]


def _passwords_set(config) -> bool:
    """False (after saying so) when an OPC UA user's password variable is set but empty: the sink refuses
    to start then, and `--check` must say so before a deployment finds out."""
    from leakseg.monitor.sinks.opcua import empty_passwords

    users = empty_passwords(config.sinks.opcua) if config.sinks.opcua else []
    for user in users:
        print(f"invalid configuration: sinks.opcua user {user!r}: its password variable is set but empty",
              file=sys.stderr)
    return not users


def _load(path):
    """The validated configuration, or None after printing what is wrong with it."""
    from leakseg.monitor.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"invalid configuration:\n{exc}", file=sys.stderr)
        return None


def _monitor(args, config) -> int:
    from leakseg.monitor.runner import Monitor, SinkStartError
    from leakseg.monitor.sinks import build_sinks

    try:
        segmenter = _segmenter(args, config)
    except Exception as exc:  # noqa: BLE001 - a bad archive or key file: say so and stop
        log.error("cannot load the model: %s", exc)
        return EXIT_FAIL
    monitor = Monitor(config, segmenter, build_sinks(config), until_sources_end=args.until_end,
                      status_table=False if args.no_table else None)
    try:
        code = monitor.run()
    except (SinkStartError, OSError) as exc:  # e.g. a port already in use
        log.error("%s", exc)
        return EXIT_FAIL
    if monitor.calls.abandoned:
        _exit_now(code)  # OFFLINE is out and the outputs are stopped; only the hung calls are left
    return code


def _exit_now(code: int) -> None:
    """End the process without the interpreter's teardown: a call abandoned at the shutdown deadline may
    be inside native code (ONNX Runtime), and tearing the interpreter down under it aborts the process."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _segmenter(args, config):
    from leakseg.monitor.segmenters import ArchiveSegmenter, ServiceSegmenter

    if args.archive:
        return ArchiveSegmenter(args.archive, device=args.device)
    s = config.service
    return ServiceSegmenter(s.url, s.model, str(s.key_file) if s.key_file else None, s.token_env, s.timeout,
                            pool_size=s.concurrency + 2)


def summary(config, path) -> str:
    lines = [f"{path}: OK, {len(config.cameras)} camera(s)"]
    for i, cam in enumerate(config.cameras):
        a = cam.alarm
        rate = f"{cam.analysis_fps:g} fps" if cam.analysis_fps and cam.kind == "stream" else "every frame"
        if cam.lossless:
            rate += " (a replay: waits for the service, drops nothing)"
        lines.append(
            f"  {cam.name}: {cam.kind} {cam.source} | {rate}, {_windows_text(cam)} | LEAK when >= "
            f"{a.min_area_pixels} px in {a.k} of {a.n} frames, clear after {a.clear_frames}"
            + (f" | ignore mask {cam.ignore_mask}" if cam.ignore_mask else "")
            + (f" | {_zones_text(cam.zones)}" if cam.zones else "")
            + _watch_text(cam)
            + f" | Modbus base {config.modbus_base(i)}")
    s = config.sinks
    outs = []
    if s.jsonl:
        outs.append(f"jsonl {s.jsonl.path}")
    if s.mqtt:
        outs.append(f"mqtt {s.mqtt.host}:{s.mqtt.port}/{s.mqtt.topic_prefix}")
    if s.opcua:
        outs.append(f"opcua {s.opcua.endpoint}")
    if s.modbus:
        outs.append(f"modbus {s.modbus.host}:{s.modbus.port}")
    lines.append(f"  service: {config.service.url} model {config.service.model}; outputs: {', '.join(outs) or 'none'}")
    return "\n".join(lines)


def _windows_text(cam) -> str:
    if cam.clip_frames is not None:
        return f"windows of {cam.clip_frames}"
    return "windows of 3 (a streaming model in process) or 8 (the service)"


def _watch_text(cam) -> str:
    """What watches the camera besides its alarm rule: the picture check, the change gate, the self-test."""
    parts = ["" if cam.detectability.enabled else "picture check off"]
    if cam.change_gate.enabled:
        parts.append("change gate on")
    if cam.selftest is not None:
        every = cam.selftest.every_hours
        parts.append(f"self-test every {every:g} h" if every else "self-test on demand")
    return "".join(f" | {p}" for p in parts if p)


def _zones_text(zones) -> str:
    parts = [f"{len(zones.ignore)} ignore polygon(s)"]
    if zones.region_of_interest is not None:
        parts.append("a region of interest")
    return "zones: " + ", ".join(parts)
