"""A real Monitor on a (fake or misbehaving) service over loopback HTTP, recording every event with its time;
drop folders written the way a producer should write them."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Dict, List, NamedTuple

import numpy as np
from PIL import Image

from leakseg.monitor.config import parse_config
from leakseg.monitor.runner import Monitor
from leakseg.monitor.segmenters import Segmenter, ServiceSegmenter
from support.fake_service import FakeService
from support.monitor_fixtures import running, until

H, W = 48, 64


def frame(i: int, shape=(H, W), base: int = 0) -> np.ndarray:
    """A distinct grey frame (never frozen); ``base`` + i in its corner tells which frame it is."""
    rng = np.random.default_rng(i + 1000 * base)
    pixels = rng.integers(0, 200, size=shape, dtype=np.uint8)
    pixels[0, 0] = base + i
    return pixels


def drop(folder: Path, name: str, pixels: np.ndarray) -> None:
    """Write a frame the way a producer should: under a hidden name, renamed when complete."""
    Image.fromarray(pixels).save(folder / f".{name}")
    (folder / f".{name}").rename(folder / name)


def fill(folder: Path, count: int, end: bool = True) -> Path:
    folder.mkdir(exist_ok=True)
    for i in range(count):
        drop(folder, f"f{i:03d}.png", frame(i))
    if end:
        (folder / "END").touch()
    return folder


class Recorded:
    """A Monitor on the fake service, and every event it emitted with its time since the start."""

    def __init__(self, service: FakeService, cameras: List[Dict], **top):
        top.setdefault("evidence_dir", str(Path(cameras[0]["source"]).parent / "evidence"))  # not the working dir
        self.config = parse_config({
            "service": {"url": service.url, "timeout": 30, "retry_seconds": 0.1, "concurrency": 1},
            "cameras": cameras, "sinks": {"jsonl": None}, "status_interval": 0.2, **top})
        s = self.config.service
        self.monitor = Monitor(self.config, ServiceSegmenter(s.url, s.model, None, "LEAKSEG_NO_SUCH_TOKEN", s.timeout,
                                                             4), [], until_sources_end=True, status_table=False)
        self.started = time.monotonic()
        self.events = []
        self.monitor.event_listeners.append(lambda e: self.events.append((time.monotonic() - self.started, e)))

    def raised(self, kind: str):
        return [(t, e.alarm) for t, e in self.events if e.type == "alarm_raised" and e.alarm.kind.value == kind]

    def cleared(self, kind: str):
        return [(t, e.alarm) for t, e in self.events if e.type == "alarm_cleared" and e.alarm.kind.value == kind]

    def run(self, scenario=None, timeout: float = 60.0) -> None:
        """Run until every source ended and its windows are done (or ``timeout``: the camera stopped looking)."""

        async def main():
            async with running(self.monitor) as monitor:
                task = asyncio.ensure_future(scenario(self) if scenario else asyncio.sleep(0))
                await until(lambda: monitor.stop_event.is_set() or all(c.finished and c.idle for c in
                                                                       monitor.cameras.values()),
                            timeout=timeout, what=f"every camera analysed to the end; events {self.summary()}")
                await task

        self.started = time.monotonic()
        asyncio.run(main())

    def summary(self):
        return [(round(t, 2), e.type, e.alarm.kind.value if e.alarm else "", e.alarm.reason if e.alarm else "")
                for t, e in self.events]


def folder_camera(folder: Path, **kw) -> Dict:
    return {"name": "cam", "source": str(folder), "clip_frames": 4, "faults": {"stale_seconds": 3600}, **kw}


class ModelCall(NamedTuple):
    """One clip through :class:`RecordingSegmenter`: who asked (the monitor's windows run in threads named
    monitor-segment_window, its self-test in monitor-_selftest), when it asked, got the model and was done."""

    thread: str
    asked: float
    began: float
    done: float
    frames: int


class RecordingSegmenter(Segmenter):
    """A model, one clip at a time (as in process), recording every call (:class:`ModelCall`)."""

    def __init__(self, inner: Segmenter):
        self.inner = inner
        self.name = inner.name
        self.lock = threading.Lock()  # one clip at a time: a window's wait for the model is real
        self.calls: List[ModelCall] = []

    def segment(self, clip, prompts, options):
        asked = time.monotonic()
        with self.lock:
            began = time.monotonic()
            try:
                return self.inner.segment(clip, prompts, options)
            finally:
                self.calls.append(ModelCall(threading.current_thread().name, asked, began, time.monotonic(),
                                            len(clip)))

    def by(self, thread_prefix: str) -> List[ModelCall]:
        return [c for c in self.calls if c.thread.startswith(thread_prefix)]

    def close(self) -> None:
        self.inner.close()
