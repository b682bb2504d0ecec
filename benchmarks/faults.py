"""Faults under load: does the SDK lose any clip when the worker dies, the service restarts, or the queue overflows?

Starts its own TorchServe (free loopback ports, token auth on, ``job_queue_size`` --queue-size)
serving ARCHIVE, and keeps --clients SDK clients (``LeakSegClient.segment``, its default retry
policy but a long ``retry_time``) sending clips whose in-process answers were computed first. Then,
one after the other, with --phase-seconds of steady load before each and after the last (the
SDK's retries bounded by --retry-time, not by a count):

1. ``kill``: SIGKILL the worker (TorchServe answers "Worker died." and starts a new one);
2. ``restart``: stop the whole service and start it again on the same ports (what ``leakseg serve
   --stop`` then ``leakseg serve`` do; the keys change, the client re-reads its key file);
3. ``overfill``: a burst of 3 x --queue-size extra clips at once, past the model's job queue (503s).

For each phase it prints clips sent, answered correctly (equal to the in-process result), lost
(the SDK raised), wrong (an answer that differs), the client's retries, and the time to recover
(from the fault to the first correct answer after it; for ``overfill``, until the burst is all
answered). The goal is 0 lost and 0 wrong. Exit status 1 otherwise.

    python benchmarks/faults.py --archive model_store/jvlgs.mar [--clients 4] [--phase-seconds 20]

The monitor's faults (service killed, hung, answering garbage; camera lost; broker restarted; SIGTERM), as
SCADA sees them over MQTT: ``benchmarks/monitor_faults.py``.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from bench_service import _free_ports
from soak import comparable, good_clips

from leakseg.client import LeakSegClient
from leakseg.inference.predictor import Predictor
from leakseg.serving import torchserve_process as serve

TIMEOUT = 300


class RetryCounter(logging.Handler):
    """Counts the client's retry log lines (one WARNING per retry), by phase."""

    def __init__(self, tally):
        super().__init__(logging.WARNING)
        self.tally = tally

    def emit(self, record: logging.LogRecord) -> None:
        if "retry" in record.getMessage() and "giving up" not in record.getMessage():
            self.tally("retries")


class Faults:
    def __init__(self, clips, expected):
        self.clips, self.expected = clips, expected
        self.lock = threading.Lock()
        self.phase = "warm-up"
        self.counts: Dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.successes: List[float] = []  # monotonic times of correct answers
        self.failures: List[str] = []
        self.stop = threading.Event()

    def tally(self, what: str, phase: Optional[str] = None) -> None:
        with self.lock:
            self.counts[phase or self.phase][what] += 1

    def segment(self, client: LeakSegClient, i: int) -> None:
        phase = self.phase  # a clip counts in the phase it was sent in
        self.tally("sent", phase)
        try:
            result = client.segment(self.clips[i][1])
        except Exception as exc:  # noqa: BLE001 - a lost clip, reported
            self.tally("lost", phase)
            self.failures.append(f"[{phase}] clip {i}: {type(exc).__name__}: {exc}"[:300])
            return
        if comparable(result.model_dump()) == self.expected[i]:
            self.tally("correct", phase)
            with self.lock:
                self.successes.append(time.monotonic())
        else:
            self.tally("wrong", phase)
            self.failures.append(f"[{phase}] clip {i}: the answer differs from the in-process result")

    def client_loop(self, client: LeakSegClient, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not self.stop.is_set():
            self.segment(client, int(rng.integers(len(self.clips))))

    def recovered_after(self, t0: float, timeout: float = 600.0) -> float:
        """Seconds from t0 to the first correct answer after it (waits for it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                later = [t for t in self.successes if t > t0]
            if later:
                return min(later) - t0
            time.sleep(0.1)
        return float("nan")


def start(store: Path, archive: Path, root: Path, overrides: Dict[str, str]) -> serve.Server:
    return serve.start(store, [archive.name], None, root / "logs", root / "run", overrides, timeout=600)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, default=Path("model_store/jvlgs.mar"))
    parser.add_argument("--clients", type=int, default=4, help="SDK clients sending clips (default 4)")
    parser.add_argument("--phase-seconds", type=float, default=20.0, help="steady load before each fault (default 20)")
    parser.add_argument("--queue-size", type=int, default=8, help="the model's job_queue_size here (default 8)")
    parser.add_argument("--retry-time", type=float, default=300.0, help="the SDK's retry_time (default 300 s)")
    parser.add_argument("--retries", type=int, default=1000,
                        help="the SDK's retries (default 1000: retry_time is what bounds the retries)")
    parser.add_argument("--clips", type=int, default=6)
    args = parser.parse_args()
    if not args.archive.is_file():
        parser.error(f"{args.archive} not found: export one first (leakseg export ...), or pass --archive")
    logging.basicConfig(level=logging.ERROR, format="%(asctime)s %(name)s %(message)s")

    print(f"computing the reference answers of {args.clips} clips in process ...", flush=True)
    predictor = Predictor.from_archive(args.archive)
    clips = good_clips(args.clips, seed=1)
    expected = [comparable(predictor.predict(frames).model_dump()) for _, frames in clips]
    model = predictor.name
    del predictor
    faults = Faults(clips, expected)
    client_log = logging.getLogger("leakseg.client.client")
    client_log.setLevel(logging.WARNING)  # one WARNING per retry; counted, not printed
    client_log.propagate = False
    client_log.addHandler(RetryCounter(faults.tally))

    root = Path(tempfile.mkdtemp(prefix="leakseg-faults-"))
    store = root / "store"
    store.mkdir()
    (store / args.archive.name).symlink_to(args.archive.resolve())
    ports = _free_ports(6)
    overrides = {
        "inference_address": f"http://127.0.0.1:{ports[0]}", "management_address": f"http://127.0.0.1:{ports[1]}",
        "metrics_address": f"http://127.0.0.1:{ports[2]}", "grpc_inference_port": str(ports[3]),
        "grpc_management_port": str(ports[4]), "initial_worker_port": str(ports[5]),
        "job_queue_size": str(args.queue_size),
    }
    print("starting TorchServe ...", flush=True)
    server = start(store, args.archive, root, overrides)
    recover: Dict[str, float] = {}

    def new_client() -> LeakSegClient:
        return LeakSegClient(server.inference_url, model=model, key_file=server.key_file, timeout=TIMEOUT,
                             retries=args.retries, retry_time=args.retry_time, pool_size=4 * args.queue_size)

    clients = [new_client() for _ in range(args.clients)]
    threads = [threading.Thread(target=faults.client_loop, args=(c, i), daemon=True) for i, c in enumerate(clients)]
    try:
        for t in threads:
            t.start()
        faults.phase = "steady"
        time.sleep(args.phase_seconds)

        faults.phase = "kill"
        pids = server.worker_pids()
        t0 = time.monotonic()
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        print(f"killed worker(s) {pids}", flush=True)
        recover["kill"] = faults.recovered_after(t0)
        time.sleep(args.phase_seconds)

        faults.phase = "restart"
        t0 = time.monotonic()
        server.stop()
        server = start(store, args.archive, root, overrides)
        print(f"restarted the service in {time.monotonic() - t0:.1f} s", flush=True)
        recover["restart"] = faults.recovered_after(t0)
        time.sleep(args.phase_seconds)

        faults.phase = "overfill"
        burst = 3 * args.queue_size
        t0 = time.monotonic()
        burst_client = new_client()
        burst_threads = [threading.Thread(target=faults.segment, args=(burst_client, i % len(clips)), daemon=True)
                         for i in range(burst)]
        for t in burst_threads:
            t.start()
        for t in burst_threads:
            t.join(args.retry_time + TIMEOUT)
        recover["overfill"] = time.monotonic() - t0
        burst_client.close()
        faults.phase = "after"
        time.sleep(args.phase_seconds)
    finally:
        faults.stop.set()
        for t in threads:
            t.join(args.retry_time + TIMEOUT)
        for c in clients:
            c.close()
        server.stop()
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{args.clients} SDK clients, job_queue_size {args.queue_size}, retry_time {args.retry_time:.0f} s")
    print(f"{'phase':10s} {'sent':>6s} {'correct':>8s} {'lost':>6s} {'wrong':>6s} {'retries':>8s} {'recover s':>10s}")
    totals = collections.Counter()
    for phase in ("steady", "kill", "restart", "overfill", "after"):
        c = faults.counts[phase]
        totals.update(c)
        rec = f"{recover[phase]:.1f}" if phase in recover else ""
        print(f"{phase:10s} {c['sent']:>6d} {c['correct']:>8d} {c['lost']:>6d} {c['wrong']:>6d} {c['retries']:>8d} "
              f"{rec:>10s}")
    print(f"{'total':10s} {totals['sent']:>6d} {totals['correct']:>8d} {totals['lost']:>6d} {totals['wrong']:>6d} "
          f"{totals['retries']:>8d}")
    for line in faults.failures[:20]:
        print(f"  {line}")
    return 1 if totals["lost"] or totals["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
