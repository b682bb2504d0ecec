"""Bounded soak of the leakseg service: a real TorchServe on loopback, good and bad requests mixed.

Starts its own TorchServe (free loopback ports, token auth on, the archive's batching) serving
ARCHIVE, then for --minutes keeps --concurrency clients busy. Each request is, at random (seeded):

* a good clip (multipart PNG, JSON base64 or a uint16 .npy; 3 to 6 frames), whose answer must
  equal the in-process ``Predictor.predict`` of the same frames, computed before the server
  starts (masks, facts, everything but timings and request id);
* with probability --bad-share, one of the malformed requests of tests/support/bad_requests.py (deep
  JSON, 1 MB prompts, pickled .npy, lying headers, ...; the slow ones left out), whose answer
  must be its expected 4xx and error code, with a small body.

Anything else is an unexpected error: a 5xx, a wrong status or code, a big error body, a result
that differs, a connection error, or a worker that changed pid (it died). It prints progress
every minute, then requests served, outcomes by kind, p50/p99 latency of the good requests, and
the RSS of the worker(s) and the frontend (java) after warm-up (the largest batch first, then
--warmup-minutes of the mix) and at the end. Exit status 1 on
any unexpected error.

    python benchmarks/soak.py --archive model_store/jvlgs.mar            # 30 minutes
    python benchmarks/soak.py --archive model_store/jvlgs.mar --minutes 2
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import psutil
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import support.bad_requests as bad  # noqa: E402  (the catalogue of malformed requests, shared with the tests)
from bench_service import start_server  # noqa: E402

from leakseg.inference.predictor import Predictor  # noqa: E402
from leakseg.schema import ClipResult  # noqa: E402

TIMEOUT = 300  # seconds per request


# --- processes ---------------------------------------------------------------------------------


def rss_mb(procs: List[psutil.Process]) -> float:
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            pass
    return total / 2 ** 20


# --- requests ----------------------------------------------------------------------------------


def good_clips(count: int, seed: int) -> List[Tuple[str, List[np.ndarray]]]:
    """(form, frames): distinct clips, 3..6 frames of 48..160 x 64..200 pixels, in three forms."""
    rng = np.random.default_rng(seed)
    clips = []
    for i in range(count):
        t, h, w = int(rng.integers(3, 7)), int(rng.integers(48, 161)), int(rng.integers(64, 201))
        form = ("multipart", "json", "npy")[i % 3]
        top, dtype = (65535, np.uint16) if form == "npy" else (255, np.uint8)
        base = rng.random((h, w)) * top
        frames = [np.clip(base + rng.normal(0, top / 12, (h, w)), 0, top).astype(dtype) for _ in range(t)]
        clips.append((form, frames))
    return clips


def good_wire(form: str, frames: List[np.ndarray]) -> bad.Wire:
    if form == "json":
        return bad.good_json(frames)
    if form == "npy":
        return bad.clip_wire(bad.npy(np.stack(frames)))
    return bad.good_multipart(frames)


def comparable(data: dict) -> dict:
    return {k: v for k, v in ClipResult.model_validate(data).model_dump().items() if k not in ("timings", "request_id")}


class Soak:
    def __init__(self, server, model: str, goods, expected, cases, bad_share: float, seed: int):
        self.server, self.model = server, model
        self.goods, self.expected, self.cases, self.bad_share = goods, expected, cases, bad_share
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.outcomes: Dict[str, int] = collections.Counter()
        self.unexpected: List[str] = []
        self.latencies: List[float] = []
        self.sent = 0

    def pick(self):
        with self.lock:
            if self.rng.random() < self.bad_share:
                return "bad", self.rng.choice(self.cases)
            return "good", self.rng.randrange(len(self.goods))

    def one(self, session: requests.Session, headers: dict) -> None:
        kind, item = self.pick()
        frames = self.goods[0][1] if kind == "bad" else self.goods[item][1]
        wire = item.build(frames) if kind == "bad" else good_wire(*self.goods[item])
        base = self.server.inference_url
        url = base + (wire.path or f"/predictions/{self.model}")
        t0 = time.perf_counter()
        try:
            response = session.request(wire.method, url, data=wire.body, headers={**headers, **wire.headers},
                                       timeout=TIMEOUT)
        except requests.RequestException as exc:
            self.record("unexpected", f"{kind} {getattr(item, 'name', item)}: {type(exc).__name__}: {exc}"[:300])
            return
        elapsed = time.perf_counter() - t0
        if kind == "good":
            if response.status_code != 200:
                self.record("unexpected", f"good clip {item}: HTTP {response.status_code} {response.text[:200]}")
            elif comparable(response.json()) != self.expected[item]:
                self.record("unexpected", f"good clip {item}: the answer differs from the in-process result")
            else:
                self.record("good: exact", latency=elapsed)
            return
        try:
            code = (response.json().get("error") or {}).get("code") if response.content else None
        except ValueError:
            code = "(not JSON)"
        if (response.status_code, code) != (item.status, item.code) or len(response.content) > bad.SMALL_BODY:
            self.record("unexpected", f"{item.name}: expected {item.status} {item.code}, got "
                        f"{response.status_code} {code} ({len(response.content)} bytes)")
        else:
            self.record(f"refused: {item.status} {item.code or 'torchserve'}")

    def record(self, outcome: str, detail: str = "", latency: Optional[float] = None) -> None:
        with self.lock:
            self.sent += 1
            self.outcomes[outcome] += 1
            if detail:
                self.unexpected.append(detail)
                print(f"  UNEXPECTED: {detail}", flush=True)
            if latency is not None:
                self.latencies.append(latency)

    def client(self, stop_at: float) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.server.inference_key}"}
        while time.monotonic() < stop_at:
            self.one(session, headers)


LARGEST_BATCH_ROUNDS = 3


def largest_batch(server, model: str, goods, concurrency: int) -> None:
    """The worker's runtime keeps the memory of the largest batch it has run (ONNX Runtime's arena):
    run that batch first (``concurrency`` copies of the longest clip at once), so the RSS baseline
    after warm-up is not just a point on the way up."""
    form, frames = max(goods, key=lambda g: len(g[1]) * g[1][0].size)
    wire = good_wire(form, frames)
    headers = {"Authorization": f"Bearer {server.inference_key}", **wire.headers}
    url = server.prediction_url(model)
    def one(_):
        requests.post(url, data=wire.body, headers=headers, timeout=TIMEOUT).raise_for_status()

    with ThreadPoolExecutor(concurrency) as pool:
        for _ in range(LARGEST_BATCH_ROUNDS):
            list(pool.map(one, range(concurrency)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=Path("model_store/jvlgs.mar"),
                        help="the .mar to serve (default model_store/jvlgs.mar, as `make demo` exports it)")
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to soak (default 30)")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="RSS baseline taken after this long (default: a third of --minutes, at least "
                             "0.5): the JVM's JIT-compiled code and Netty's buffer pools grow for the first "
                             "minutes of traffic, then stay flat")
    parser.add_argument("--concurrency", type=int, default=4, help="clients sending at once (default 4)")
    parser.add_argument("--bad-share", type=float, default=0.3, help="share of malformed requests (default 0.3)")
    parser.add_argument("--clips", type=int, default=6, help="distinct good clips (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.archive.is_file():
        parser.error(f"{args.archive} not found: export one first (leakseg export ...), or pass --archive")
    warmup = args.warmup_minutes if args.warmup_minutes is not None else max(0.5, args.minutes / 3)

    print(f"computing the reference answers of {args.clips} clips in process ...", flush=True)
    predictor = Predictor.from_archive(args.archive)
    goods = good_clips(args.clips, args.seed)
    expected = [comparable(predictor.predict(frames).model_dump()) for _, frames in goods]
    model = predictor.name
    del predictor
    cases = [c for c in bad.catalogue(model) if not c.slow]

    root = Path(tempfile.mkdtemp(prefix="leakseg-soak-"))
    print("starting TorchServe ...", flush=True)
    server = start_server(args.archive, root)
    try:
        soak = Soak(server, model, goods, expected, cases, args.bad_share, args.seed)
        procs = server.processes()
        pids0 = server.worker_pids()
        print(f"TorchServe ready: {server.prediction_url(model)}; worker pid(s) {pids0}; "
              f"RSS worker {rss_mb(procs['workers']):.0f} MB, frontend {rss_mb(procs['frontend']):.0f} MB (idle)",
              flush=True)
        largest_batch(server, model, goods, args.concurrency)
        procs = server.processes()
        print(f"after {LARGEST_BATCH_ROUNDS} batches of the {args.concurrency} largest clips: RSS worker "
              f"{rss_mb(procs['workers']):.0f} MB, frontend {rss_mb(procs['frontend']):.0f} MB", flush=True)
        start = time.monotonic()
        stop_at = start + args.minutes * 60
        threads = [threading.Thread(target=soak.client, args=(stop_at,), daemon=True) for _ in range(args.concurrency)]
        for t in threads:
            t.start()
        baseline = None
        next_report = start + 60
        while any(t.is_alive() for t in threads):
            time.sleep(1.0)
            now = time.monotonic()
            if baseline is None and now - start >= warmup * 60:
                procs = server.processes()
                baseline = (rss_mb(procs["workers"]), rss_mb(procs["frontend"]))
                print(f"[{(now - start) / 60:5.1f} min] warm-up over: RSS worker {baseline[0]:.0f} MB, "
                      f"frontend {baseline[1]:.0f} MB", flush=True)
            if now >= next_report:
                next_report += 60
                procs = server.processes()
                print(f"[{(now - start) / 60:5.1f} min] {soak.sent} requests, {len(soak.unexpected)} unexpected; "
                      f"RSS worker {rss_mb(procs['workers']):.0f} MB, frontend {rss_mb(procs['frontend']):.0f} MB",
                      flush=True)
        elapsed = time.monotonic() - start
        procs = server.processes()
        end = (rss_mb(procs["workers"]), rss_mb(procs["frontend"]))
        pids1 = server.worker_pids()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    if pids1 != pids0:
        soak.unexpected.append(f"worker pid(s) changed: {pids0} -> {pids1} (a worker died)")
    print(f"\nsoak of {elapsed / 60:.1f} min, {args.concurrency} clients, archive {args.archive.name}")
    print(f"requests served: {soak.sent} ({soak.sent / elapsed:.2f}/s)")
    for outcome, count in sorted(soak.outcomes.items()):
        print(f"  {outcome:45s} {count}")
    if soak.latencies:
        p50, p99 = np.percentile(soak.latencies, [50, 99])
        print(f"good requests: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
    if baseline is None:
        baseline = end
    for label, i in (("worker", 0), ("frontend", 1)):
        growth = (end[i] - baseline[i]) / baseline[i] * 100 if baseline[i] else float("nan")
        print(f"RSS {label:8s}: {baseline[i]:.0f} MB after warm-up -> {end[i]:.0f} MB at the end ({growth:+.1f} %)")
    print(f"worker pid(s): {pids0} -> {pids1}")
    print(f"unexpected errors: {len(soak.unexpected)}")
    for line in soak.unexpected[:20]:
        print(f"  {line}")
    return 1 if soak.unexpected else 0


if __name__ == "__main__":
    sys.exit(main())
