"""Throughput of one KServe replica: `leakseg kserve` and/or TorchServe as KServe's runtime starts it.

Starts the server(s) on loopback, sends ``--clips`` clips of ``--frames`` x H x W uint8 over the
Open Inference Protocol v2 at each ``--concurrency``, and prints clips/s, frames/s, latency
percentiles and the server's resident memory: the figures docs/DEPLOY.md sizes replicas with.
`leakseg kserve` runs as the image runs it, with an API key. ``--probe-mb N`` also sends one
N MB JSON body (parsed in full, then refused) and reports the slowest ``/v2/health/live`` answer
meanwhile: how long a big body stalls the probes.

    python benchmarks/bench_kserve.py --archive model_store/jvlgs.mar --kserve-python .leakseg/kserve-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from support.kserve_fixture import spawn, free_ports, start_torchserve_as_kserve, wait_for  # noqa: E402


def body(frames: int, height: int, width: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (frames, height, width), dtype=np.uint8)
    return json.dumps({"inputs": [{"name": "frames", "datatype": "UINT8", "shape": list(arr.shape),
                                   "data": arr.ravel().tolist()}]}).encode()


def rss_mb(pid: int) -> float:
    import psutil

    p = psutil.Process(pid)
    return sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]) / 2**20


def run(url: str, bodies, concurrency: int, auth: dict) -> dict:
    def one(data):
        t0 = time.perf_counter()
        r = requests.post(url, data=data, headers={"Content-Type": "application/json", **auth}, timeout=600)
        assert r.status_code == 200, r.text[:300]
        return time.perf_counter() - t0

    one(bodies[0])  # warm
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = sorted(pool.map(one, bodies))
    wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "clips_per_s": len(bodies) / wall,
            "p50_s": statistics.median(latencies), "p95_s": latencies[int(0.95 * (len(latencies) - 1))]}


def probe_while_parsing(url: str, megabytes: float, auth: dict) -> dict:
    """The slowest liveness answer while one ~``megabytes`` MB JSON tensor (wrong shape: refused after the
    whole parse) is posted."""
    count = int(megabytes * 1e6 / 4.57)  # JSON spends about 4.57 bytes on each of 0..254 with its ", "
    values = np.random.default_rng(0).integers(0, 255, count, dtype=np.uint8)
    data = json.dumps({"inputs": [{"name": "frames", "datatype": "UINT8", "shape": [1, 1, 1],
                                   "data": values.tolist()}]}).encode()
    live = url.split("/v2/")[0] + "/v2/health/live"
    with ThreadPoolExecutor(1) as pool:
        t0 = time.perf_counter()
        answer = pool.submit(requests.post, url, data=data, timeout=600,
                             headers={"Content-Type": "application/json", **auth})
        worst = 0.0
        while not answer.done():
            t = time.perf_counter()
            requests.get(live, timeout=120)
            worst = max(worst, time.perf_counter() - t)
            time.sleep(0.02)
    return {"body_mb": round(len(data) / 1e6, 1), "status": answer.result().status_code,
            "answer_s": round(time.perf_counter() - t0, 2), "worst_live_s": round(worst, 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archive", type=Path, required=True)
    ap.add_argument("--kserve-python", default=sys.executable, help="an interpreter with the kserve package")
    ap.add_argument("--servers", nargs="+", default=["kserve", "torchserve"], choices=["kserve", "torchserve"])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, nargs=2, default=[480, 640], metavar=("H", "W"))
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probe-mb", type=float, default=0, metavar="MB",
                    help="also measure liveness while a JSON body of this size is parsed (0: no)")
    args = ap.parse_args()
    args.archive = args.archive.absolute()
    args.kserve_python = str(Path(args.kserve_python).absolute())  # absolute, not resolved: a venv's python
    bodies = [body(args.frames, *args.size, seed=i) for i in range(args.clips)]
    print(f"clip: {args.frames} x {args.size[0]} x {args.size[1]} uint8, {args.clips} clips per point, "
          f"{args.threads} threads")
    with tempfile.TemporaryDirectory(prefix="leakseg-bench-") as tmp:
        for server in args.servers:
            work = Path(tmp) / server
            auth = {}
            if server == "kserve":
                (port,) = free_ports(1)
                key = secrets.token_urlsafe(24)
                work.mkdir(parents=True)
                (work / "api-key").write_text(key)
                auth = {"Authorization": f"Bearer {key}"}
                process = spawn([args.kserve_python, "-m", "leakseg.cli", "kserve", "--archive", str(args.archive),
                                 "--http-port", str(port), "--device", "cpu", "--threads", str(args.threads),
                                 "--name", "bench", "--api-key-file", str(work / "api-key")], work,
                                {"LEAKSEG_THREADS": str(args.threads)}, name="kserve")
                base = f"http://127.0.0.1:{port}"
                wait_for(f"{base}/v2/health/ready", process)
                url = f"{base}/v2/models/bench/infer"
            else:
                from leakseg.export.kserve_layout import archive_info, write_kserve_layout

                name = archive_info(args.archive)["name"]
                layout = write_kserve_layout(args.archive, work / "storage")
                ts = start_torchserve_as_kserve(layout, work / "run", name)
                process, url = ts.process, f"{ts.inference_url}/v2/models/{name}/infer"
            try:
                if args.probe_mb:
                    print(json.dumps({"server": server, **probe_while_parsing(url, args.probe_mb, auth)}))
                for c in args.concurrency:
                    point = run(url, bodies, c, auth)
                    point.update(server=server, frames_per_s=point["clips_per_s"] * args.frames,
                                 rss_mb=rss_mb(process.proc.pid))
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in point.items()}))
            finally:
                process.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
