"""What a camera's self-test costs (CPU minutes for the default grid), and what it does to the live cameras.

    python benchmarks/bench_selftest.py --grid quick --seconds 60      # 4 trials: a check, about 5 minutes
    python benchmarks/bench_selftest.py                                # the default grid (about 10 CPU-minutes)
    python benchmarks/bench_selftest.py --archive model_store/jvlgs.mar --grid my_grid.yaml --cameras 2
    python benchmarks/bench_selftest.py --skip-live                    # the cost only

The bundled default model in process (exported first unless --archive is given), with docs/SCADA.md's camera
settings for it (options normalization absolute, threshold 0.9, opening_kernel 9; alarm min_area_pixels 200,
k 3, n 5, clear_frames 5; clip_frames 8). The background is a calm gas-free synthetic scene
(``leakseg.synth.generate_clip(leak="none", version=3, effects=CALM_EFFECTS)``, 320 x 240). Two measurements,
in one run, on this machine:

1. cost: ``run_selftest`` on ``--background-frames`` frames at analysis_fps 5 with ``--grid`` (``default``:
   ``PlumeGrid()``, 36 trials; ``quick``: 4 trials of the default's length; ``one``: 1; or a YAML file holding
   a grid or a ``selftest:`` block; the verdict is printed, but means little for a small grid). Printed: wall
   seconds; process CPU seconds (``time.process_time``: every thread of the process, so every core the model
   used); the windows (clips) and frames the model ran, counted by a wrapping segmenter; CPU seconds per
   trial (the self-test's clean replay taken out: it is the baseline's work again); and the CPU minutes of
   the default grid: measured with ``--grid default``, else projected (the baseline's CPU plus the measured
   CPU per trial window times the default grid's trial windows; trials of another length scale by windows).
   Baseline, same run and frames: the frames analysed once as the camera analyses them (its windows, the
   model, the observations): analysed frames per CPU second. The self-test's CPU seconds times that rate is
   how many frames the same CPU analyses live, so "equivalent to X minutes of one camera's live analysis at
   1 analysed frame/s"; a self-test every ``every_hours`` then takes X / (60 * every_hours) of the capacity
   such a camera needs.
2. effect on live capacity: a real ``Monitor`` with ``--cameras`` live drop-folder cameras (a producer thread
   each writes the calm scene, played back and forth, at ``--fps`` frames/s on a fixed clock; the monitor
   drops the oldest waiting window when the model falls behind) for ``--seconds``, twice: without a
   ``selftest:`` block (baseline), then with one on the first camera (``first_after_minutes`` 0,
   ``--live-background`` frames, grid ``--live-grid``, by default ``one`` so that it ends within the run).
   The self-test starts once its background is there and runs on idle capacity only. For each run: real
   windows analysed, windows and frames dropped (read before the stop, which abandons what still waits), the
   latency of every real window from its last frame's arrival (when the source read it) to the end of its
   analysis (alarm logic and evidence included; ``Monitor._analyse`` wrapped), p50 and p99, and how long a
   real window waited for the model (a self-test window already running goes first). For the second run also:
   the self-test windows the model ran, how long the self-test took (its status from running to
   passed/failed/error, sampled every 0.1 s; "still running after" when it did not end), the latencies of the
   windows done while it ran, and the ratios with / without.

Times depend on what else the machine runs (printed: CPU count and load average): compare the ratios of one
run, not absolute times across runs. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.monitor_runs import RecordingSegmenter, drop  # noqa: E402

from leakseg.monitor.config import CameraConfig, parse_config  # noqa: E402
from leakseg.monitor.runner import Monitor  # noqa: E402
from leakseg.monitor.segmenters import ArchiveSegmenter, Segmenter  # noqa: E402
from leakseg.monitor.windows import Frame, WindowBuilder  # noqa: E402
from leakseg.selftest.run import ping_pong, run_selftest  # noqa: E402
from leakseg.selftest.settings import PlumeGrid, SelfTestTarget  # noqa: E402
from leakseg.selftest.trials import replay  # noqa: E402

#: docs/SCADA.md's camera settings for the default model.
OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}
ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}
CLIP_FRAMES = 8
COST_FPS = 5.0  # the cost camera's analysis_fps (docs/SCADA.md's default); it only scales the report's seconds
#: A few trials with the default grid's lead, duration and tail, so a trial costs what a default one costs.
QUICK = PlumeGrid(sizes_pixels=[300, 3000], contrasts=[40.0], polarities=["brighter"], positions=2)
#: One trial of the default's length: a self-test in the monitor that ends within a short live run.
ONE = PlumeGrid(sizes_pixels=[1000], contrasts=[40.0], polarities=["brighter"], positions=1)
#: Thread names of the monitor's model calls (DaemonCalls names a thread after the function it runs).
REAL_THREAD, SELFTEST_THREAD = "monitor-segment_window", "monitor-_selftest"


# -- parts shared by both measurements -------------------------------------------------------------------


def pct(values, q) -> float:
    return float(np.percentile(np.asarray(values), q)) if len(values) else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def make_segmenter(args, work: Path) -> ArchiveSegmenter:
    archive = args.archive
    if archive is None:
        from support.models import export_default_archive

        print("exporting the bundled default model ...", flush=True)
        archive = export_default_archive(work / "store")
    return ArchiveSegmenter(str(archive))


def calm_scene(frames: int, seed: int) -> np.ndarray:
    """A calm gas-free synthetic scene, T x 240 x 320 uint8."""
    from leakseg.synth import CALM_EFFECTS, generate_clip

    pixels, _, _ = generate_clip(seed, leak="none", frames=frames, height=240, width=320, version=3,
                                 effects=CALM_EFFECTS)
    return pixels


def load_grid(spec: str) -> PlumeGrid:
    """``default``, ``quick``, ``one`` or a YAML file with a grid (or a ``selftest:`` block holding one)."""
    named = {"default": PlumeGrid(), "quick": QUICK, "one": ONE}
    if spec in named:
        return named[spec]
    data = yaml.safe_load(Path(spec).read_text()) or {}
    data = data.get("selftest", data)
    return PlumeGrid.model_validate(data.get("grid", data))


def measured(fn: Callable[[], object]) -> Tuple[object, float, float]:
    """(fn's result, wall seconds, process CPU seconds)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


# -- 1. cost ---------------------------------------------------------------------------------------------


def windows_in(frames: int, clip_frames: int) -> int:
    """Windows the camera's WindowBuilder makes of ``frames`` frames, the flush at the end included."""
    builder = WindowBuilder("count", clip_frames)
    made = sum(builder.push(Frame(seq=i, pixels=None, arrived=0.0)) is not None for i in range(frames))
    return made + (builder.flush() is not None)


def trial_windows(grid: PlumeGrid, clip_frames: int) -> int:
    """Windows the model runs for the grid's trials (each: lead + duration + tail, plus the two frames the
    next window would bring)."""
    cells_per_duration = len(grid.sizes_pixels) * len(grid.contrasts) * len(grid.polarities) * grid.positions
    return cells_per_duration * sum(windows_in(grid.lead_frames + d + grid.tail_frames + WindowBuilder.OVERLAP,
                                               clip_frames) for d in grid.durations_frames)


def cost_camera() -> CameraConfig:
    return CameraConfig.model_validate({"name": "bench", "source": "rtsp://unused", "clip_frames": CLIP_FRAMES,
                                        "analysis_fps": COST_FPS, "options": OPTIONS, "alarm": ALARM})


def baseline(frames: np.ndarray, camera: CameraConfig, segmenter: Segmenter) -> Dict:
    """The frames analysed once as the camera analyses them: analysed frames per process CPU second."""
    counting = RecordingSegmenter(segmenter)
    seen, wall, cpu = measured(lambda: replay(frames, camera, counting, None, keep_masks=False))
    return {"frames_analysed": len(seen), "windows": len(counting.calls), "wall_s": wall, "cpu_s": cpu,
            "frames_per_cpu_s": len(seen) / cpu}


def cost(args, frames: np.ndarray, segmenter: Segmenter) -> Dict:
    camera, grid = cost_camera(), load_grid(args.grid)
    base = baseline(frames, camera, segmenter)
    print(f"  baseline: {base['frames_analysed']} frames analysed ({base['windows']} windows) in "
          f"{base['cpu_s']:.1f} CPU s: {base['frames_per_cpu_s']:.2f} analysed frames per CPU s", flush=True)
    counting = RecordingSegmenter(segmenter)
    run, wall, cpu = measured(lambda: run_selftest(frames, camera, counting, grid, SelfTestTarget(), fps=COST_FPS,
                                                   progress=progress_printer()))
    trials_cpu = max(cpu - base["cpu_s"], 0.0)  # the self-test's clean replay is the baseline's work again
    windows = trial_windows(grid, camera.clip_frames)
    per_window = trials_cpu / windows
    default_grid = PlumeGrid()
    default_cpu = cpu if args.grid == "default" else (base["cpu_s"] + per_window
                                                      * trial_windows(default_grid, camera.clip_frames))
    return {
        "grid": args.grid, "trials": grid.trials, "background_frames": len(frames), "wall_s": wall, "cpu_s": cpu,
        "cores_busy": cpu / wall, "model_windows": len(counting.calls),
        "model_frames": sum(c.frames for c in counting.calls), "trial_windows_expected": windows,
        "cpu_per_trial_s": trials_cpu / grid.trials, "cpu_per_trial_window_s": per_window,
        "default_grid_trials": default_grid.trials,
        "default_grid_cpu_minutes": default_cpu / 60, "default_grid_measured": args.grid == "default",
        "equivalent_live_minutes_at_1fps": live_minutes(cpu, base),
        "default_grid_equivalent_live_minutes_at_1fps": live_minutes(default_cpu, base),
        "verdict": run.result.reason, "baseline": base,
    }


def progress_printer() -> Callable[[int, int], None]:
    """A progress line every tenth of the trials, with the seconds since the start."""
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            print(f"  trial {done}/{total}  {time.monotonic() - started:.0f} s", flush=True)

    return progress


def live_minutes(cpu_s: float, base: Dict) -> float:
    """Minutes of one camera's live analysis at 1 analysed frame/s that ``cpu_s`` CPU seconds pay for."""
    return cpu_s * base["frames_per_cpu_s"] / 60


def print_cost(c: Dict) -> None:
    how = "measured" if c["default_grid_measured"] else "projected"
    print(f"self-test, grid {c['grid']} ({c['trials']} trials, {c['background_frames']} background frames): "
          f"{c['wall_s']:.1f} s wall, {c['cpu_s']:.1f} CPU s ({c['cores_busy']:.2f} cores busy); "
          f"{c['model_windows']} windows / {c['model_frames']} frames through the model; "
          f"{c['cpu_per_trial_s']:.2f} CPU s per trial")
    print(f"  equivalent to {c['equivalent_live_minutes_at_1fps']:.1f} minutes of one camera's live analysis "
          f"at 1 analysed frame/s")
    print(f"  default grid ({c['default_grid_trials']} trials), {how}: {c['default_grid_cpu_minutes']:.1f} CPU "
          f"minutes = {c['default_grid_equivalent_live_minutes_at_1fps']:.1f} minutes of one camera's live "
          f"analysis at 1 analysed frame/s")
    print(f"  verdict: {c['verdict']}", flush=True)


# -- 2. effect on live capacity --------------------------------------------------------------------------


class Producer(threading.Thread):
    """A live camera's producer: the scene played back and forth into a drop folder, one frame every 1/fps s
    on a fixed clock (a late write does not push the later frames back)."""

    def __init__(self, folder: Path, scene: np.ndarray, fps: float, offset: int):
        super().__init__(daemon=True)
        self.folder, self.scene, self.fps, self.offset = folder, scene, fps, offset
        self.written = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stopped.is_set():
            index = int(ping_pong(len(self.scene), self.offset + self.written, 1)[0])
            drop(self.folder, f"f{self.written:06d}.png", self.scene[index])
            self.written += 1
            self.stopped.wait(max(0.0, start + self.written / self.fps - time.monotonic()))

    def stop(self) -> None:
        self.stopped.set()
        self.join(10)


class StatusSampler(threading.Thread):
    """The first camera's self-test status every 0.1 s: (monotonic time, status) at each change."""

    def __init__(self, monitor: Monitor, camera: str):
        super().__init__(daemon=True)
        self.monitor, self.camera = monitor, camera
        self.changes: List[Tuple[float, str]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.1):
            status = self.monitor.cameras[self.camera].selftest.status
            if not self.changes or self.changes[-1][1] != status:
                self.changes.append((time.monotonic(), status))

    def span(self, end: float) -> Optional[Tuple[float, float, bool]]:
        """(start, end, finished) of the first self-test; None when none ran."""
        starts = [t for t, s in self.changes if s == "running"]
        if not starts:
            return None
        done = [t for t, s in self.changes if t > starts[0] and s in ("passed", "failed", "error")]
        return (starts[0], done[0], True) if done else (starts[0], end, False)


def live_config(args, work: Path, selftest: Optional[Dict]):
    cameras = []
    for i in range(args.cameras):
        folder = work / f"cam{i}"
        folder.mkdir()
        cameras.append({"name": f"cam{i}", "source": str(folder), "clip_frames": CLIP_FRAMES,
                        "analysis_fps": args.fps, "options": OPTIONS, "alarm": ALARM,
                        "faults": {"stale_seconds": 3600}})  # frames come at --fps; nothing here tests staleness
    if selftest is not None:
        cameras[0]["selftest"] = selftest
    return parse_config({"evidence_dir": str(work / "evidence"), "cameras": cameras, "sinks": {"jsonl": None}})


def timed_analysis(monitor: Monitor, latencies: List[Tuple[float, float]]) -> None:
    """Record (when done, latency) for every real window: from its last frame's arrival to its analysis done."""
    analyse = monitor._analyse

    async def timed(camera, window, answer):
        await analyse(camera, window, answer)
        latencies.append((time.monotonic(), time.time() - window.frames[-1].arrived))

    monitor._analyse = timed


def live(args, segmenter: Segmenter, scene: np.ndarray, work: Path, selftest: Optional[Dict]) -> Dict:
    """One monitor run of --seconds with --cameras live cameras (the first with ``selftest``, when given)."""
    work.mkdir()
    counting = RecordingSegmenter(segmenter)
    monitor = Monitor(live_config(args, work, selftest), counting, [], status_table=False)
    latencies: List[Tuple[float, float]] = []
    timed_analysis(monitor, latencies)
    thread = threading.Thread(target=monitor.run, daemon=True)
    thread.start()
    monitor.started.wait(120)
    producers = [Producer(work / f"cam{i}", scene, args.fps, offset=17 * i) for i in range(args.cameras)]
    sampler = StatusSampler(monitor, "cam0")
    for worker in (*producers, sampler):
        worker.start()
    began, cpu = time.monotonic(), time.process_time()
    time.sleep(args.seconds)
    ended, cpu = time.monotonic(), time.process_time() - cpu
    counters = [copy.copy(c.counters) for c in monitor.cameras.values()]  # before the stop abandons what waits
    analysed = [(c.counters.windows_sent, c.logic.frames_analysed) for c in monitor.cameras.values()]
    for producer in producers:
        producer.stop()
    sampler.stopped.set()
    monitor.request_stop()
    thread.join(120)
    finish_calls(monitor)
    latencies = [(done, lat) for done, lat in latencies if done <= ended]  # not the windows the stop drained
    result = {
        "cameras": args.cameras, "fps": args.fps, "seconds": ended - began, "cpu_s": cpu,
        "frames_written": sum(p.written for p in producers),
        "real_windows_analysed": sum(w for w, _ in analysed), "frames_analysed": sum(f for _, f in analysed),
        "windows_dropped": sum(c.windows_dropped for c in counters),
        "frames_dropped": sum(c.frames_dropped for c in counters),
        "windows_failed": sum(c.windows_failed for c in counters),
        **latency_stats([lat for _, lat in latencies], "latency"),
        **wait_stats(counting.by(REAL_THREAD)),
    }
    if selftest is not None:
        result.update(selftest_stats(monitor, counting, sampler, latencies, ended))
    return result


def finish_calls(monitor: Monitor, timeout: float = 120.0) -> None:
    """Wait for the model calls the monitor's stop abandoned (a window slower than shutdown_seconds on a busy
    machine): native code still running when the interpreter exits aborts the process."""
    deadline = time.monotonic() + timeout
    while monitor.calls.abandoned and time.monotonic() < deadline:
        time.sleep(0.1)


def latency_stats(values: List[float], prefix: str) -> Dict:
    return {f"{prefix}_windows": len(values), f"{prefix}_p50_s": pct(values, 50), f"{prefix}_p99_s": pct(values, 99)}


def wait_stats(calls) -> Dict:
    waits = [c.began - c.asked for c in calls]
    return {"model_wait_p99_s": pct(waits, 99), "model_wait_max_s": max(waits, default=float("nan"))}


def selftest_stats(monitor: Monitor, counting: RecordingSegmenter, sampler: StatusSampler,
                   latencies: List[Tuple[float, float]], ended: float) -> Dict:
    calls = counting.by(SELFTEST_THREAD)
    span = sampler.span(ended)
    status = monitor.cameras["cam0"].selftest
    out = {"selftest_windows": len(calls),
           "selftest_window_inference_mean_s": statistics.mean([c.done - c.began for c in calls]) if calls else None,
           "selftest_status_at_end": status.status, "selftest_reason": status.reason,
           "selftest_seconds": None, "selftest_finished": False}
    if span is not None:
        start, end, finished = span
        out.update(selftest_seconds=end - start, selftest_finished=finished,
                   **latency_stats([lat for done, lat in latencies if start <= done <= end], "during_selftest_latency"))
    return out


def print_live(without: Dict, with_: Dict) -> None:
    for name, r in (("without self-test", without), ("with self-test", with_)):
        print(f"{name}: {r['real_windows_analysed']} real windows ({r['frames_analysed']} of "
              f"{r['frames_written']} frames) analysed in {r['seconds']:.0f} s, {r['windows_dropped']} windows / "
              f"{r['frames_dropped']} frames dropped; latency p50 {r['latency_p50_s']:.2f} s, p99 "
              f"{r['latency_p99_s']:.2f} s; model wait p99 {r['model_wait_p99_s']:.2f} s; {r['cpu_s']:.0f} CPU s")
    print(f"  self-test: {with_['selftest_windows']} windows, {selftest_time(with_)}; status at the end "
          f"{with_['selftest_status_at_end']}")
    print(f"  ratios with / without: latency p50 {ratio(with_['latency_p50_s'], without['latency_p50_s']):.2f}, "
          f"p99 {ratio(with_['latency_p99_s'], without['latency_p99_s']):.2f}; real windows analysed "
          f"{ratio(with_['real_windows_analysed'], without['real_windows_analysed']):.2f}; windows dropped "
          f"{with_['windows_dropped']} vs {without['windows_dropped']}")
    if with_.get("during_selftest_latency_windows"):
        p50, p99 = with_["during_selftest_latency_p50_s"], with_["during_selftest_latency_p99_s"]
        print(f"  while the self-test ran ({with_['during_selftest_latency_windows']} windows): latency p50 "
              f"{p50:.2f} s (x{ratio(p50, without['latency_p50_s']):.2f} without), p99 {p99:.2f} s "
              f"(x{ratio(p99, without['latency_p99_s']):.2f})", flush=True)


def selftest_time(r: Dict) -> str:
    if r["selftest_seconds"] is None:
        return "never started (waiting for its background)"
    return f"{'took' if r['selftest_finished'] else 'still running after'} {r['selftest_seconds']:.1f} s"


def live_selftest_block(args) -> Dict:
    return {"every_hours": 24, "first_after_minutes": 0, "background_frames": args.live_background,
            "grid": load_grid(args.live_grid).model_dump()}


# -- main ------------------------------------------------------------------------------------------------


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--archive", help="a .mar (default: export the bundled default model)")
    p.add_argument("--grid", default="default", help="the cost's grid: default, quick, one or a YAML file")
    p.add_argument("--background-frames", type=int, default=64, help="the cost's background (selftest default)")
    p.add_argument("--seed", type=int, default=3, help="the synthetic scene's seed")
    p.add_argument("--cameras", type=int, default=1, help="live cameras")
    p.add_argument("--fps", type=float, default=1.0, help="each live camera's analysed frames per second")
    p.add_argument("--seconds", type=float, default=90, help="each live run's length")
    p.add_argument("--live-grid", default="one", help="the grid of the self-test inside the monitor (default, "
                   "quick, one or a YAML file)")
    p.add_argument("--live-background", type=int, default=8, help="its background frames (>= 8)")
    p.add_argument("--skip-cost", action="store_true")
    p.add_argument("--skip-live", action="store_true")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_selftest_"))
    try:
        segmenter = make_segmenter(args, work)
        scene = calm_scene(max(args.background_frames, CLIP_FRAMES), args.seed)
        segmenter.segment(scene[:CLIP_FRAMES], None, dict(OPTIONS))  # warm-up: the first clip is slower
        results = {"model": segmenter.name, "cpu_count": os.cpu_count(), "load_avg_start": os.getloadavg()}
        if not args.skip_cost:
            print(f"cost: self-test with grid {args.grid} on {args.background_frames} frames ...", flush=True)
            results["cost"] = cost(args, scene[:args.background_frames], segmenter)
            print_cost(results["cost"])
        if not args.skip_live:
            print(f"live: {args.cameras} camera(s) at {args.fps:g} fps for {args.seconds:g} s, without a "
                  "self-test ...", flush=True)
            without = live(args, segmenter, scene, work / "without", None)
            print(f"live: the same with a self-test (grid {args.live_grid}) ...", flush=True)
            with_ = live(args, segmenter, scene, work / "with", live_selftest_block(args))
            results["live"] = {"without_selftest": without, "with_selftest": with_}
            print_live(without, with_)
        results["load_avg_end"] = os.getloadavg()
        print(json.dumps(results, indent=1, default=str))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
