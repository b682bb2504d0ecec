"""Real servers for the monitor's tests: mosquitto (MQTT broker) and GStreamer's RTSP server, on loopback.

Both are started as subprocesses in their own process groups, on free ports, with their files in
pytest's private temp folders, and stopped by the fixtures.

And a monitor for the sinks' tests: two cameras on empty drop folders, no model; the test feeds the
alarm logic per-frame observations, as the service's answers would (:func:`run_monitor`, :func:`feed`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Awaitable, Callable, Dict, List, Optional

import pytest
from support.loopback import free_ports, pipe

from leakseg.monitor.alarm import Observation
from leakseg.monitor.config import MonitorConfig, parse_config
from leakseg.monitor.runner import Monitor
from leakseg.monitor.segmenters import Segmenter
from leakseg.monitor.sinks import build_sinks

HERE = Path(__file__).parent
SYSTEM_PYTHON = "/usr/bin/python3"


def free_port() -> int:
    return free_ports(1)[0]


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


class Mosquitto:
    """A broker on a free port; stop() and start() again on the same port (a broker restart). ``persistent``:
    retained messages and sessions survive the restart, as with a broker that keeps them on disk."""

    def __init__(self, folder: Path, persistent: bool = False):
        system = Path("/usr/sbin/mosquitto")
        self.exe = shutil.which("mosquitto") or (str(system) if system.exists() else None)
        if self.exe is None:
            pytest.skip("mosquitto is not installed (`make setup` installs it: apt-get install mosquitto)")
        self.port = free_port()
        self.conf = folder / "mosquitto.conf"
        persistence = f"persistence true\npersistence_location {folder}/\n" if persistent else "persistence false\n"
        if persistent and os.geteuid() == 0:
            persistence += "user root\n"  # else it drops to its own user, who cannot write in pytest's 0700 folders
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{persistence}"
                             f"log_dest file {folder / 'mosquitto.log'}\n", encoding="utf-8")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_port(self.port)

    def stop(self) -> None:
        _stop(self.proc)


@pytest.fixture
def mosquitto(tmp_path):
    broker = Mosquitto(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


class RtspServer:
    """rtsp://127.0.0.1:PORT/cam (a live test picture, 10 fps); stop() and start() again on the same port."""

    def __init__(self, port: Optional[int] = None):
        if not Path(SYSTEM_PYTHON).exists():
            pytest.skip("no system python3 with PyGObject for GStreamer's RTSP server")
        check = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                                "from gi.repository import GstRtspServer"], capture_output=True)
        if check.returncode != 0:
            pytest.skip("GStreamer's RTSP server is not installed (apt-get install gir1.2-gst-rtsp-server-1.0 "
                        "gstreamer1.0-plugins-base gstreamer1.0-plugins-good python3-gi)")
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(HERE / "monitor_rtsp_server.py"), str(self.port)],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if "ready" not in line:
            self.stop()
            raise RuntimeError(f"RTSP server did not start: {line!r}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


@pytest.fixture
def rtsp_server():
    server = RtspServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


class MqttRecorder:
    """A real paho client subscribed to PREFIX/#; keeps every message (topic, payload, retain)."""

    def __init__(self, port: int, prefix: str = "leakseg", session: Optional[str] = None):
        """``session``: a client id whose session the broker keeps (it queues what comes while we reconnect)."""
        import paho.mqtt.client as mqtt

        self.messages: List[tuple] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=session or f"recorder-{os.getpid()}-{time.monotonic_ns()}",
                                  clean_session=session is None)
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p=None: (c.subscribe(f"{prefix}/#", qos=1), self.connected.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(10), "recorder could not connect to the broker"

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            self.messages.append((message.topic, message.payload.decode(), bool(message.retain)))

    def on(self, topic: str) -> List[str]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, predicate, timeout: float = 20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [m for m in self.messages if predicate(m)]
            if found:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no matching MQTT message in {timeout} s; got {self.messages[-10:]}")

    def publish(self, topic: str, payload: str) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def retained(port: int, topic: str, timeout: float = 5.0) -> Optional[str]:
    """What a fresh subscriber gets as the retained message of ``topic``."""
    import paho.mqtt.client as mqtt

    got: Dict[str, str] = {}
    done = threading.Event()
    client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2)

    def on_message(c, u, m):
        if m.retain:
            got["payload"] = m.payload.decode()
        done.set()

    client.on_message = on_message
    client.on_connect = lambda c, u, f, rc, p=None: c.subscribe(topic, qos=1)
    client.connect("127.0.0.1", port)
    client.loop_start()
    done.wait(timeout)
    client.loop_stop()
    client.disconnect()
    return got.get("payload")


class Forwarder:
    """A TCP forwarder on 127.0.0.1:port to an upstream port, that the test opens and closes: while it is
    closed nothing listens on its port (connection refused) and the open connections are cut, as when the
    service is down."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.server: Optional[socket.socket] = None
        self.threads: List[threading.Thread] = []
        self.connections: List[socket.socket] = []

    def open(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self.server = server
        t = threading.Thread(target=self._accept, args=(server,), daemon=True)
        t.start()
        self.threads.append(t)

    def close(self) -> None:
        if self.server is not None:
            try:
                self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept(): until then the port still listens
            except OSError:
                pass
            self.server.close()
            self.server = None
        for connection in self.connections:
            connection.close()  # the pipes end with it
        self.connections = []

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()


# -- a monitor that runs for real, fed observations by the test -----------------------------------------

FRAME_PIXELS = 320 * 240


def two_cameras(tmp_path: Path, **sinks: Dict[str, Any]) -> MonitorConfig:
    """cam-a (LEAK at >= 100 px in 2 of 3 frames, cleared after 2) and cam-b, on empty folders."""
    for name in ("cam-a", "cam-b"):
        (tmp_path / name).mkdir()
    return parse_config({
        "cameras": [{"name": "cam-a", "source": str(tmp_path / "cam-a"), "faults": {"stale_seconds": 3600},
                     "alarm": {"min_area_pixels": 100, "k": 2, "n": 3, "clear_frames": 2}},
                    {"name": "cam-b", "source": str(tmp_path / "cam-b"), "faults": {"stale_seconds": 3600}}],
        "evidence_dir": str(tmp_path / "evidence"),
        "status_interval": 0.2,
        # The JSON lines log is on by default: it goes under the test's folder, never the working folder.
        "sinks": {"jsonl": {"path": str(tmp_path / "monitor-events.jsonl")}, **sinks},
    })


class NoModel(Segmenter):
    name = "no model (the test feeds observations)"

    def segment(self, clip, prompts, options):  # pragma: no cover - the folders stay empty
        raise AssertionError("not called")


def run_monitor(config: MonitorConfig, scenario: Callable[[Monitor], Awaitable[None]]) -> Monitor:
    """Run ``await scenario(monitor)`` while a monitor with the configuration's sinks runs; it must then
    stop cleanly (exit 0). Returns the monitor, stopped."""
    monitor = Monitor(config, NoModel(), build_sinks(config), status_table=False)

    async def main():
        async with running(monitor):
            await scenario(monitor)

    asyncio.run(main())
    return monitor


@asynccontextmanager
async def running(monitor: Monitor):
    task = asyncio.create_task(monitor.run_async())
    await until(lambda: monitor.started.is_set() or task.done(), timeout=180, what="monitor start")
    assert not task.done(), task.exception()
    try:
        yield monitor
    finally:
        monitor.request_stop()
        code = await asyncio.wait_for(task, 30)
    assert code == 0


def feed(monitor: Monitor, camera: str, areas: List[int], start_seq: int = 0) -> None:
    """One observation per area (a plume at the same place when not 0), then the camera's state."""
    cam = monitor.cameras[camera]
    for i, area in enumerate(areas, start_seq):
        o = Observation(seq=i, time=time.time(), area_pixels=area, area_fraction=area / FRAME_PIXELS,
                        score=0.8 if area else 0.1, bbox=(10, 20, 30, 40) if area else None,
                        centroid=(25.0, 40.0) if area else None)
        monitor.emit(cam.logic.observe(o))
        cam.last_result = {"area_pixels": area, "area_fraction": area / FRAME_PIXELS, "score": o.score,
                           "centroid_x": 25.0 if area else None, "centroid_y": 40.0 if area else None}
        monitor.publish_state(camera)


async def until(predicate, timeout: float = 60.0, what: str = "condition"):
    """The first true value of ``predicate()`` (a coroutine's result counts), polled on the loop."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
