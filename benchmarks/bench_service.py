"""Frames per second end to end over HTTP vs the in-process Predictor: same archive, same run.

Starts its own TorchServe (leakseg.serving.torchserve_process, free loopback ports, token auth on) with the archive
as exported (its batch size, batch delay and workers), then sends clips of 8 PNG frames as
multipart requests from 1, 4 and 16 concurrent clients. The in-process baseline runs the same
clips through Predictor.predict one after the other, in this process, before the server starts
(the two never share the cores). Prints fps, p50/p99 latency and service fps / in-process fps.

    python benchmarks/bench_service.py --archive model_store/jvlgs.mar [--frames 8] [--size 240 320]
"""

from __future__ import annotations

import argparse
import io
import shutil
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from PIL import Image

from leakseg.serving import torchserve_process as serve
from leakseg.inference.predictor import Predictor


def make_clips(count: int, frames: int, height: int, width: int):
    """Distinct smooth-ish 8-bit clips, as arrays and as PNG multipart bodies."""
    clips, bodies = [], []
    for seed in range(count):
        rng = np.random.default_rng(seed)
        base = rng.random((height, width)) * 200
        clip = [np.clip(base + rng.normal(0, 15, base.shape), 0, 255).astype(np.uint8) for _ in range(frames)]
        clips.append(clip)
        bodies.append([(f"frame_{i:04d}", (f"f{i}.png", _png(f), "image/png")) for i, f in enumerate(clip)])
    return clips, bodies


def _png(frame) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def in_process_fps(archive: Path, clips) -> float:
    predictor = Predictor.from_archive(archive)
    predictor.predict(clips[0])  # warm-up
    t0 = time.perf_counter()
    for clip in clips:
        predictor.predict(clip)
    return sum(len(c) for c in clips) / (time.perf_counter() - t0)


def _free_ports(count: int):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_server(archive: Path, root: Path) -> serve.Server:
    store = root / "store"
    store.mkdir()
    (store / archive.name).symlink_to(archive.resolve())
    ports = _free_ports(5)
    overrides = {
        "inference_address": f"http://127.0.0.1:{ports[0]}", "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}", "grpc_inference_port": str(ports[3]),
        "grpc_management_port": str(ports[4]),
    }
    return serve.start(store, [archive.name], None, root / "logs", root / "run", overrides, timeout=600)


def service_run(server: serve.Server, bodies, concurrency: int, requests_total: int):
    """(fps, latencies in s) for requests_total requests sent by `concurrency` clients."""
    url, headers = server.prediction_url(), {"Authorization": f"Bearer {server.inference_key}"}
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_maxsize=concurrency))

    def one(i):
        body = bodies[i % len(bodies)]
        t = time.perf_counter()
        response = session.post(url, files=body, headers=headers, timeout=600)
        response.raise_for_status()
        return time.perf_counter() - t, len(body)

    one(0)  # warm-up
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests_total)))
    elapsed = time.perf_counter() - t0
    return sum(n for _, n in results) / elapsed, [lat for lat, _ in results]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, required=True)
    parser.add_argument("--frames", type=int, default=8, help="frames per clip (default 8)")
    parser.add_argument("--size", type=int, nargs=2, default=[240, 320], metavar=("H", "W"))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--per-client", type=int, default=2, help="requests per client at each level (min 6 in all)")
    args = parser.parse_args()

    clips, bodies = make_clips(8, args.frames, *args.size)
    baseline = in_process_fps(args.archive, clips[:4])
    print(f"archive {args.archive.name}, clips of {args.frames} frames {args.size[0]}x{args.size[1]}")
    print(f"in process (Predictor.predict, sequential): {baseline:.2f} fps")
    root = Path(tempfile.mkdtemp(prefix="leakseg-bench-"))
    server = start_server(args.archive, root)
    try:
        print(f"{'clients':>7} {'requests':>8} {'fps':>7} {'p50 s':>7} {'p99 s':>7} {'service/in-process':>19}")
        for c in args.concurrency:
            total = max(6, args.per_client * c)
            fps, lat = service_run(server, bodies, c, total)
            p50, p99 = np.percentile(lat, [50, 99])
            print(f"{c:>7} {total:>8} {fps:>7.2f} {p50:>7.2f} {p99:>7.2f} {fps / baseline:>19.2f}")
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
