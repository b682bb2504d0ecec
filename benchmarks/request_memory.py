"""What one request can cost the TorchServe worker: its peak RSS for each amplifying request shape.

Starts its own TorchServe (free loopback ports, token auth on, the repository's config.properties with
``max_request_size`` set to --body-mb) serving ARCHIVE, and sends, one at a time, each shape that
makes a worker spend more memory than the body's size (each built at the largest body allowed):

* ``json_deep``: ``[[[...]]]`` nested to the body's size;
* ``json_wide``: ``{"frames": [[], [], ...]}`` (an empty list costs Python 56 bytes for 3 bytes of JSON);
* ``json_parts``: multipart parts of Content-Type application/json, each a wide array;
* ``multipart_parts``: as many one-byte ``frame_N`` parts as fit;
* ``npz_directory``: a .npz whose central directory lists as many entries as fit;
* ``option_keys``: an options object with as many keys as fit;
* ``base64_frames``: as many base64 frames as fit, far beyond the 32-frame limit;
* ``png_headers_over_limit``: 32 PNGs announcing 100000 x 100000 pixels each;
* ``png_bombs_within_limits``: 32 valid 16-bit grey PNGs of zeros at the largest size the run's
  body allows for a valid clip (2048 x 2048 at the full setting), a few KiB each, that inflate;
* ``largest_clip``: the largest valid clip that fits in the body: one 16-bit RGB .npy (the
  contract's densest form; 32 x 2048 x 2048 x 3 at the full setting), answered 200.

Before each shape the worker is restarted (SIGKILL; TorchServe starts a fresh one), so each peak is
its own. The worker's RSS is sampled every few milliseconds while the request runs. Printed per shape:
body size, HTTP status and error code, the worker's RSS before, its peak, and the peak's growth as a
multiple of the body.

    python benchmarks/request_memory.py --archive model_store/jvlgs.mar [--body-mb 768.06] [--shapes ...]

The full setting (the default --body-mb, config.properties' max_request_size) needs some 8 GB of free
memory for the largest clip; --body-mb 32 is a short setting whose growth multiples carry over.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import psutil
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import support.bad_requests as bad  # noqa: E402  (the crafted files, shared with the tests)
from support.torchserve_fixture import loopback_overrides  # noqa: E402

from leakseg.serving import torchserve_process as serve  # noqa: E402

TIMEOUT = 600
MiB = 1 << 20


# --- the shapes, each as large as ``size`` bytes allow -------------------------------------------


def json_deep(size: int) -> bad.Wire:
    return bad.json_wire(bad.deep_json(size // 2))


def json_wide(size: int) -> bad.Wire:
    count = (size - 16) // 3
    return bad.json_wire(b'{"frames": [' + b"[]," * (count - 1) + b"[]]}")


def json_parts(size: int) -> bad.Wire:
    parts = 64
    each = (size - parts * 200) // parts // 3
    wide = b"[" + b"[]," * (each - 1) + b"[]]"
    return bad.multipart([(f"frame_{i}".encode(), b"f.json", b"application/json", wide) for i in range(parts)])


def multipart_parts(size: int) -> bad.Wire:
    one = len(bad.multipart([(b"frame_000000", None, None, b"x")]).body)
    return bad.multipart([(f"frame_{i}".encode(), None, None, b"x") for i in range(size // one)])


def npz_directory(size: int) -> bad.Wire:
    return bad.clip_wire(bad.npz_directory_bomb(size // 56 - 1))


def option_keys(size: int) -> bad.Wire:
    count = (size - 64) // 14  # '"k0000000": 0,' per key
    options = b"{" + b",".join(b'"k%07d": 0' % i for i in range(count)) + b"}"
    return bad.json_wire(b'{"frames": [], "options": ' + options + b"}")


def base64_frames(size: int) -> bad.Wire:
    frame = base64.b64encode(os.urandom(3 * 1024)).decode()
    return bad.json_wire(json.dumps({"frames": [frame] * (size // (len(frame) + 4))}).encode())


def png_headers_over_limit(size: int) -> bad.Wire:
    return bad.multipart(_frame_files([bad.png_lying_header(100_000, 100_000)] * 32))


def png_bombs_within_limits(size: int) -> bad.Wire:
    side = largest_side(size)
    buf = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint16)).save(buf, format="PNG", compress_level=9)
    return bad.multipart(_frame_files([buf.getvalue()] * 32))


def largest_clip(size: int) -> bad.Wire:
    side = largest_side(size)
    clip = np.random.default_rng(0).integers(7000, 7300, (32, side, side, 3), dtype=np.uint16)
    return bad.clip_wire(bad.npy(clip))


def largest_side(size: int) -> int:
    """The side of the largest square 16-bit RGB frame of which 32 fit in ``size`` bytes (2048 at most)."""
    return min(2048, int(math.sqrt((size - 64 * 1024) / (32 * 3 * 2))))


def _frame_files(files: List[bytes]) -> list:
    return [(f"frame_{i:04d}".encode(), b"f.png", b"image/png", data) for i, data in enumerate(files)]


SHAPES: Dict[str, Callable[[int], bad.Wire]] = {f.__name__: f for f in (
    json_deep, json_wide, json_parts, multipart_parts, npz_directory, option_keys, base64_frames,
    png_headers_over_limit, png_bombs_within_limits, largest_clip)}


# --- measuring -----------------------------------------------------------------------------------


def fresh_worker(server: serve.Server) -> int:
    """SIGKILL the worker, wait for TorchServe's new one to be ready, and let it settle; its pid."""
    old = server.worker_pids()
    for pid in old:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if pids and not set(pids) & set(old):
            break
        time.sleep(0.2)
    server.wait_ready(TIMEOUT)
    time.sleep(2.0)
    return server.worker_pids()[0]


def measure(server: serve.Server, model: str, wire: bad.Wire) -> Tuple[int, str, int, int]:
    """(HTTP status, error code, worker RSS before, worker peak RSS) of one request on a fresh worker."""
    pid = fresh_worker(server)
    before = psutil.Process(pid).memory_info().rss
    headers = {"Authorization": f"Bearer {server.inference_key}", **wire.headers}
    with bad.PeakRSS(pid) as rss:
        response = requests.post(server.prediction_url(model), data=wire.body, headers=headers, timeout=TIMEOUT)
    try:
        code = response.json().get("error", {}).get("code", "") if response.status_code != 200 else ""
    except ValueError:
        code = "(no JSON body)"
    return response.status_code, code, before, rss.peak


def start(archive: Path, root: Path, settings: Dict[str, str]) -> serve.Server:
    """TorchServe serving ``archive`` with the repository's config.properties, ``settings`` and free loopback ports."""
    store = root / "store"
    store.mkdir()
    (store / archive.name).symlink_to(archive.resolve())
    return serve.start(store, [archive.name], serve.REPO_CONFIG, root / "logs", root / "run",
                       {**loopback_overrides(), **settings}, timeout=TIMEOUT)


def main() -> int:
    default_body = int(serve.read_properties(serve.REPO_CONFIG)["max_request_size"]) / MiB
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=Path("model_store/jvlgs.mar"),
                        help="the .mar to serve (default model_store/jvlgs.mar, as `make demo` exports it)")
    parser.add_argument("--body-mb", type=float, default=default_body,
                        help=f"the largest body in MiB: TorchServe's max_request_size for the run, and the size "
                             f"of every shape (default {default_body:.2f}, config.properties')")
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES),
                        help="the shapes to send (default: all)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="another config.properties setting for the run, e.g. decode_input_request=true "
                             "(TorchServe's default: its worker parses JSON before the handler runs)")
    args = parser.parse_args()
    if not args.archive.is_file():
        parser.error(f"{args.archive} not found: export one first (leakseg export ...), or pass --archive")
    body_bytes = int(args.body_mb * MiB)
    root = Path(tempfile.mkdtemp(prefix="leakseg-request-memory-"))
    print(f"starting TorchServe (max_request_size {body_bytes} bytes) ...", flush=True)
    settings = {"max_request_size": str(body_bytes), **dict(kv.split("=", 1) for kv in args.set)}
    server = start(args.archive, root, settings)
    model = args.archive.stem
    failures = 0
    try:
        print(f"\n{'shape':26s} {'body MiB':>9s} {'status':>6s} {'code':22s} {'RSS before':>10s} "
              f"{'peak MiB':>9s} {'growth':>8s} {'x body':>7s}")
        for name in args.shapes:
            wire = SHAPES[name](body_bytes - 1024)
            status, code, before, peak = measure(server, model, wire)
            failures += status >= 500
            growth = peak - before
            print(f"{name:26s} {len(wire.body) / MiB:9.1f} {status:6d} {code:22s} {before / MiB:10.0f} "
                  f"{peak / MiB:9.0f} {growth / MiB:+8.0f} {growth / len(wire.body):7.2f}", flush=True)
            del wire
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
