"""Real servers for the monitor's tests: mosquitto (MQTT broker) and GStreamer's RTSP server, on loopback.

Both are started as subprocesses in their own process groups, on free ports, with their files in
pytest's private temp folders, and stopped by the fixtures.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from support.loopback import free_ports, pipe

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
    def __init__(self, folder: Path):
        exe = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
        if exe is None:
            pytest.skip("mosquitto is not installed (`make setup` installs it: apt-get install mosquitto)")
        self.port = free_port()
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"log_dest file {folder / 'mosquitto.log'}\n", encoding="utf-8")
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
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

    def __init__(self, port: int, prefix: str = "leakseg"):
        import paho.mqtt.client as mqtt

        self.messages: List[tuple] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"recorder-{os.getpid()}-{time.monotonic_ns()}")
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
    closed nothing listens on its port (connection refused), as when the service is down."""

    def __init__(self, upstream_port: int):
        self.upstream = upstream_port
        self.port = free_port()
        self.server: Optional[socket.socket] = None
        self.threads: List[threading.Thread] = []

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
            self.server.close()
            self.server = None

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()
