"""The scheduled self-test inside the running monitor (leakseg.monitor.selftests), with real parts: the bundled
default model in process, a live drop folder of a gas-free synthetic scene, mosquitto, an asyncua client, a
pymodbus client and the JSON lines log on disk.

One monitor run (:func:`story`) carries the end-to-end assertions: the scheduled self-test runs while the
camera is analysed and passes; a self-test on demand from OPC UA fails a target it cannot reach (the
camera goes DEGRADED, naming the self-test); one on demand from MQTT passes again and clears it; the live
analysis loses no frame meanwhile and never waits for more than one self-test window; a stop in the middle
of a self-test is clean and quick. The self-tests are kept tiny (8 background frames, one trial each) so
the story takes about two minutes on two busy cores; the default model analyses a few frames per second.
The settings are docs/SCADA.md's for the default model.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

from leakseg.monitor.alarm import Observation
from leakseg.monitor.config import ConfigError, parse_config
from leakseg.monitor.runner import Monitor
from leakseg.monitor.segmenters import ArchiveSegmenter, Segmenter
from leakseg.monitor.selftests import BackgroundBuffer, IdleSegmenter
from leakseg.monitor.sinks import build_sinks
from leakseg.monitor.sinks.modbus import SELFTEST_OFF, selftest_registers
from leakseg.monitor.windows import Frame, Window
from leakseg.selftest.run import ping_pong
from leakseg.selftest.settings import SelfTestSchedule
from leakseg.selftest.trials import SelfTestStopped
from support.monitor_fixtures import Mosquitto, MqttRecorder, free_port, retained, until
from support.monitor_media import leak_and_twin
from support.monitor_runs import RecordingSegmenter, drop

# -- BackgroundBuffer ----------------------------------------------------------------------------------


def _window(first_seq: int, reported: int, shape=(4, 6), dtype=np.uint8, pts0=None) -> Window:
    """A window reporting ``reported`` frames from ``first_seq`` (plus the two it shares with the next)."""
    frames = [Frame(seq=s, pixels=np.full(shape, s % 250, dtype), arrived=float(s),
                    pts=None if pts0 is None else pts0 + s / 5.0) for s in range(first_seq, first_seq + reported + 2)]
    return Window("cam", first_seq, frames, reported)


def _observed(window: Window, leak_at=()) -> List[Observation]:
    return [Observation(seq=f.seq, time=0.0, area_pixels=500 if f.seq in leak_at else 0, area_fraction=0.0,
                        score=0.0) for f in window.reported]


def _leak_frame(obs: Observation) -> bool:
    return obs.area_pixels >= 200


def _offer(buffer: BackgroundBuffer, window: Window, leak_at=(), leak_active=False) -> None:
    buffer.offer(window, _observed(window, leak_at), _leak_frame, leak_active)


def _seqs(buffer: BackgroundBuffer) -> List[int]:
    return [f.seq for f in buffer.frames]


def test_background_keeps_the_latest_contiguous_frames_as_references():
    buffer = BackgroundBuffer(8)
    first, second = _window(0, 6), _window(6, 6)
    _offer(buffer, first)
    assert _seqs(buffer) == list(range(6)) and not buffer.full
    _offer(buffer, second)
    assert _seqs(buffer) == list(range(4, 12)) and buffer.full
    assert buffer.snapshot()[-1] is second.frames[5].pixels  # no copy: memory is frames x frame bytes


def test_a_leak_frame_or_an_active_leak_empties_the_background():
    buffer = BackgroundBuffer(8)
    _offer(buffer, _window(0, 6))
    _offer(buffer, _window(6, 6), leak_at={9})
    assert _seqs(buffer) == [] and buffer.emptied == "frame 9 was a leak frame"
    _offer(buffer, _window(12, 6))
    assert _seqs(buffer) == list(range(12, 18))
    _offer(buffer, _window(18, 6), leak_active=True)  # the frames look clear, but LEAK has not cleared yet
    assert _seqs(buffer) == []


def test_a_gap_or_a_new_frame_size_restarts_the_background():
    buffer = BackgroundBuffer(16)
    _offer(buffer, _window(0, 6))
    _offer(buffer, _window(12, 6))  # window 6..11 was dropped
    assert _seqs(buffer) == list(range(12, 18)) and buffer.emptied == "frame 12 does not follow frame 5"
    _offer(buffer, _window(18, 6, shape=(8, 6)))
    assert _seqs(buffer) == list(range(18, 24))
    _offer(buffer, _window(24, 6, shape=(8, 6), dtype=np.uint16))
    assert _seqs(buffer) == list(range(24, 30))


def test_background_rate_comes_from_the_stream_timestamps():
    buffer = BackgroundBuffer(8)
    _offer(buffer, _window(0, 6))
    assert buffer.fps() is None  # a drop folder gives no timestamps
    buffer.clear()
    _offer(buffer, _window(0, 6, pts0=10.0))
    assert buffer.fps() == pytest.approx(5.0)


# -- IdleSegmenter ----------------------------------------------------------------------------------------


class _Counting(Segmenter):
    name = "counting"

    def __init__(self):
        self.calls: List[float] = []

    def segment(self, clip, prompts, options):
        self.calls.append(time.monotonic())
        return "answer"


def test_idle_segmenter_waits_for_the_real_windows_then_segments():
    inner, busy = _Counting(), threading.Event()
    busy.set()
    idle = IdleSegmenter(inner, busy.is_set, lambda: False)
    threading.Timer(0.3, busy.clear).start()
    started = time.monotonic()
    assert idle.segment(None, None, {}) == "answer"
    assert inner.calls and inner.calls[0] - started >= 0.25


def test_idle_segmenter_gives_up_when_the_monitor_stops_while_it_waits():
    inner, stopping = _Counting(), threading.Event()
    idle = IdleSegmenter(inner, lambda: True, stopping.is_set)
    threading.Timer(0.2, stopping.set).start()
    with pytest.raises(SelfTestStopped):
        idle.segment(None, None, {})
    assert inner.calls == []


# -- configuration and the Modbus block ---------------------------------------------------------------------


def _modbus_config(tmp_path: Path, bases: List[int], **modbus) -> Dict:
    cameras = []
    for i, base in enumerate(bases):
        (tmp_path / f"c{i}").mkdir(exist_ok=True)
        cameras.append({"name": f"c{i}", "source": str(tmp_path / f"c{i}"), "modbus_base": base})
    return {"cameras": cameras, "sinks": {"jsonl": None, "modbus": {"port": 5020, **modbus}}}


def test_selftest_registers_must_not_overlap_a_camera_block_or_leave_the_map(tmp_path):
    parse_config(_modbus_config(tmp_path, [0, 16]))  # 0-15, 16-31; self-test blocks 4096-4103, 4112-4119
    with pytest.raises(ConfigError, match="overlap camera 'c1'"):
        parse_config(_modbus_config(tmp_path, [0, 4100]))
    with pytest.raises(ConfigError, match="camera 'c1': .* overlap camera 'c0'"):
        parse_config(_modbus_config(tmp_path, [16, 0], selftest_offset=16))  # c1's block 16-23 is in c0's 16-31
    with pytest.raises(ConfigError, match="past register 65535"):
        parse_config(_modbus_config(tmp_path, [62000]))


def test_selftest_registers_say_none_as_65535_and_saturate_below_it():
    assert SELFTEST_OFF == [0, 0, 65535, 65535, 0, 0, 65535, 0]
    t = 1_800_000_123
    block = selftest_registers({"status": "failed", "time": t, "passed": False, "probability_at_reference": 0.4567,
                                "detection_limit_pixels": None, "false_alarms_per_day": 1e9})
    assert block == [5, 0, 457, 65535, t >> 16, t & 0xFFFF, 65534, 0]
    block = selftest_registers({"status": "passed", "time": t, "passed": True, "probability_at_reference": 1.0,
                                "detection_limit_pixels": 70000, "false_alarms_per_day": 0.3})
    assert block[:4] == [4, 1, 1000, 65534] and block[6] == 3  # 0.3 a day, x10


# -- the monitor, end to end ----------------------------------------------------------------------------

OPTIONS = {"normalization": "absolute", "threshold": 0.9, "opening_kernel": 9}  # docs/SCADA.md, default model
ALARM = {"min_area_pixels": 200, "k": 3, "n": 5, "clear_frames": 5}
SHORT = {"durations_frames": [6], "positions": 1, "lead_frames": 1, "tail_frames": 3}
#: One big bright plume: the default model finds it (tests/test_selftest.py), so the self-test passes.
PASSING = {"every_hours": 24, "first_after_minutes": 0, "background_frames": 8,
           "grid": {"sizes_pixels": [4000], "contrasts": [80], "polarities": ["brighter"], **SHORT},
           "target": {"probability": 0.9, "reference_size_pixels": 4000}}
#: One tiny faint plume the default model cannot see, as the reference: the self-test fails its target.
FAILING = {**PASSING, "grid": {**PASSING["grid"], "sizes_pixels": [30], "contrasts": [3]},
           "target": {"probability": 0.9, "reference_size_pixels": 30}}
#: Eight trials: a self-test that is still running when the story stops the monitor.
LONG = {**PASSING, "grid": {**PASSING["grid"], "positions": 8}}
INITIAL_FRAMES = 22  # three windows of 8 at once: the background (8 frames) is full after the second
SECONDS_PER_FRAME = 1.0  # then a live camera: a window of 6 new frames every 6 s leaves idle capacity
SELFTEST_BASE = 4096  # camera 0's self-test registers (sinks.modbus.selftest_offset)


class Feeder(threading.Thread):
    """A live drop folder: a gas-free scene (the default model's calm twin, played back and forth), the first
    frames at once, then one every SECONDS_PER_FRAME until :meth:`finish` writes END (after a frame count that
    leaves at least 3 frames for the last window: every frame written is then analysed)."""

    def __init__(self, folder: Path):
        super().__init__(daemon=True)
        _, self.scene, _, _ = leak_and_twin(4, 40)
        self.folder = folder
        self.written = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not (self.done.is_set() and (self.written - 8) % 6 != 0):
            pixels = self.scene[int(ping_pong(len(self.scene), self.written, 1)[0])]
            drop(self.folder, f"f{self.written:05d}.png", pixels)
            self.written += 1
            if self.written >= INITIAL_FRAMES:
                self.done.wait(SECONDS_PER_FRAME)
        (self.folder / "END").touch()

    def finish(self) -> None:
        self.done.set()
        self.join(10)


@dataclass
class Story:
    """What the story saw, for the tests to check."""

    tmp: Path
    mqtt_port: int = 0
    config: object = None
    monitor: Monitor = None
    segmenter: RecordingSegmenter = None
    feeder: Feeder = None
    seen: Dict[str, object] = field(default_factory=dict)
    samples: List[tuple] = field(default_factory=list)  # (time, self-test status, frames analysed)
    stop_seconds: float = 0.0
    exit_code: int = -1


def _config(tmp: Path, mqtt_port: int, opcua_port: int, modbus_port: int):
    (tmp / "north").mkdir()
    return parse_config({
        "evidence_dir": str(tmp / "evidence"),
        "status_interval": 0.2,
        "cameras": [{"name": "north", "source": str(tmp / "north"), "realtime": False, "clip_frames": 8,
                     "options": OPTIONS, "alarm": ALARM, "faults": {"stale_seconds": 3600}, "selftest": PASSING}],
        "sinks": {"jsonl": {"path": str(tmp / "events.jsonl")},
                  "mqtt": {"port": mqtt_port, "client_id": "monitor-selftest"},
                  "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{opcua_port}/leakseg", "anonymous_can_acknowledge": True},
                  "modbus": {"host": "127.0.0.1", "port": modbus_port}},
    })


@asynccontextmanager
async def _clients(story: Story):
    from asyncua import Client
    from pymodbus.client import AsyncModbusTcpClient

    recorder = MqttRecorder(story.mqtt_port)
    opcua = Client(story.config.sinks.opcua.endpoint)
    await opcua.connect()
    modbus = AsyncModbusTcpClient("127.0.0.1", port=story.config.sinks.modbus.port)
    await modbus.connect()
    try:
        yield recorder, opcua, modbus
    finally:
        modbus.close()
        await opcua.disconnect()
        recorder.close()


async def _opcua_values(client, names) -> Dict[str, object]:
    idx = await client.get_namespace_index("urn:leakseg:monitor")
    cam = await client.nodes.objects.get_child([f"{idx}:LeakSeg", f"{idx}:north"])
    return {n: await (await cam.get_child(f"{idx}:{n}")).read_value() for n in names}


async def _run_selftest_method(client) -> str:
    idx = await client.get_namespace_index("urn:leakseg:monitor")
    cam = await client.nodes.objects.get_child([f"{idx}:LeakSeg", f"{idx}:north"])
    return await cam.call_method(f"{idx}:RunSelfTest")


async def _registers(modbus, address: int, count: int) -> List[int]:
    return (await modbus.read_holding_registers(address, count=count, device_id=1)).registers


SELFTEST_VARIABLES = ["SelfTestStatus", "SelfTestTime", "SelfTestPassed", "PodAtReference", "DetectionLimitPixels",
                      "SelfTestReason", "State", "Degraded", "DegradedReason"]


async def _outputs(story: Story, opcua, modbus) -> Dict[str, object]:
    """What each output says about the camera's self-test now."""
    return {"mqtt": json.loads(await asyncio.to_thread(retained, story.mqtt_port, "leakseg/north/selftest")),
            "opcua": await _opcua_values(opcua, SELFTEST_VARIABLES),
            "modbus": await _registers(modbus, SELFTEST_BASE, 8),
            "can_see_gas": (await _registers(modbus, 15, 1))[0],
            "snapshot": story.monitor.cameras["north"].snapshot()}


async def _sample(story: Story) -> None:
    camera = story.monitor.cameras["north"]
    while True:
        story.samples.append((time.monotonic(), camera.selftest.status, camera.logic.frames_analysed))
        await asyncio.sleep(0.1)


async def _finished(story: Story, status: str, after: float) -> None:
    camera = story.monitor.cameras["north"]
    await until(lambda: camera.selftest.status == status and (camera.selftest.time or 0) > after, timeout=300,
                what=f"a self-test {status} (now {camera.selftest.status}: {camera.selftest.reason})")


async def _scenario(story: Story) -> None:
    monitor, camera = story.monitor, story.monitor.cameras["north"]
    tests = monitor.selftests.tests["north"]
    async with _clients(story) as (recorder, opcua, modbus):
        # (a) the scheduled self-test (first_after_minutes 0), while the camera is analysed
        await _finished(story, "passed", 0)
        await asyncio.sleep(0.5)  # the sinks' publications are tasks on the loop
        story.seen["scheduled"] = await _outputs(story, opcua, modbus)

        # (b, c) on demand from OPC UA, against a target the camera cannot reach (as after a configuration
        # change): it fails and the camera is DEGRADED
        tests.settings = SelfTestSchedule.model_validate(FAILING)
        before = time.time()
        story.seen["opcua_answer"] = await _run_selftest_method(opcua)
        await until(lambda: camera.selftest.status == "running", timeout=120, what="the requested self-test runs")
        story.seen["opcua_answer_while_running"] = await _run_selftest_method(opcua)
        await _finished(story, "failed", before)
        await asyncio.sleep(0.5)
        story.seen["failed"] = await _outputs(story, opcua, modbus)

        # (b, c) on demand from MQTT, the passing target again: it passes and DEGRADED clears
        tests.settings = SelfTestSchedule.model_validate(PASSING)
        recorder.publish("leakseg/no-such-camera/selftest/run", "")
        before = time.time()
        recorder.publish("leakseg/north/selftest/run", "")
        await _finished(story, "passed", before)
        await asyncio.sleep(0.5)
        story.seen["passed_again"] = await _outputs(story, opcua, modbus)
        story.seen["mqtt_selftest_statuses"] = [json.loads(p)["status"] for p in recorder.on("leakseg/north/selftest")]
        story.seen["mqtt_health"] = next(s for s in monitor.sinks if s.name == "mqtt").health()

    # (d) a long self-test runs while the live camera ends: every frame written is analysed, no window dropped;
    # then the monitor stops in the middle of the self-test
    tests.settings = SelfTestSchedule.model_validate(LONG)
    monitor.request_selftest("north")
    await until(lambda: camera.selftest.status == "running", timeout=120, what="the long self-test runs")
    await asyncio.to_thread(story.feeder.finish)
    await until(lambda: camera.finished and camera.idle, timeout=120, what="the last frames analysed")
    story.seen["frames_written"] = story.feeder.written
    story.seen["status_at_stop"] = camera.selftest.status


@pytest.fixture(scope="module")
def story(default_archive, tmp_path_factory) -> Story:
    tmp = tmp_path_factory.mktemp("selftest_story")
    broker = Mosquitto(tmp_path_factory.mktemp("broker"))
    story = Story(tmp, mqtt_port=broker.port)
    story.config = _config(tmp, broker.port, free_port(), free_port())
    story.segmenter = RecordingSegmenter(ArchiveSegmenter(str(default_archive)))
    story.monitor = Monitor(story.config, story.segmenter, build_sinks(story.config), status_table=False)
    story.feeder = Feeder(tmp / "north")

    async def main():
        task = asyncio.create_task(story.monitor.run_async())
        await until(lambda: story.monitor.started.is_set() or task.done(), timeout=120, what="monitor start")
        story.feeder.start()
        sampler = asyncio.create_task(_sample(story))
        try:
            await _scenario(story)
        finally:
            sampler.cancel()
            story.feeder.finish()
            stop_asked = time.monotonic()
            story.monitor.request_stop()
            story.exit_code = await asyncio.wait_for(task, 60)
            story.stop_seconds = time.monotonic() - stop_asked

    try:
        asyncio.run(main())
    finally:
        broker.stop()
    return story


def test_scheduled_selftest_publishes_on_every_output_and_writes_its_report(story):
    seen = story.seen["scheduled"]
    mqtt, opcua, modbus, snapshot = seen["mqtt"], seen["opcua"], seen["modbus"], seen["snapshot"]
    assert mqtt["status"] == "passed" and mqtt["passed"] is True and mqtt["camera"] == "north"
    assert mqtt["probability_at_reference"] == 1.0 and mqtt["detection_limit_pixels"] == 4000
    assert mqtt["false_alarms_per_day"] == 0.0 and mqtt["target_probability"] == 0.9
    assert mqtt["reason"].startswith("passed: probability of detection 100%")
    assert opcua["SelfTestStatus"] == "passed" and opcua["SelfTestPassed"] is True
    assert opcua["PodAtReference"] == 1.0 and opcua["DetectionLimitPixels"] == 4000
    assert abs(opcua["SelfTestTime"].timestamp() - mqtt["time"]) < 0.01
    assert opcua["State"] == "NORMAL" and opcua["Degraded"] is False
    t = int(mqtt["time"])
    assert modbus == [4, 1, 1000, 4000, t >> 16, t & 0xFFFF, 0, 0] and seen["can_see_gas"] == 1
    assert (snapshot["selftest_status"], snapshot["selftest_passed"], snapshot["selftest_pod_reference"],
            snapshot["selftest_detection_limit_pixels"], snapshot["selftest_time"]) == ("passed", True, 1.0, 4000,
                                                                                         mqtt["time"])
    keys = list(snapshot)
    assert keys.index("degraded_reason") < keys.index("selftest_status") < keys.index("time")

    folder = Path(mqtt["report"])
    assert folder.parent == story.tmp / "evidence" / "selftest" / "north"
    assert {p.name for p in folder.iterdir()} >= {"selftest.json", "report.html", "recommended.yaml",
                                                  ".leakseg-evidence"}
    report = json.loads((folder / "selftest.json").read_text())
    assert report["passed"] is True and report["camera"] == "north" and report["background_frames"] == 8
    assert report["analysis_fps"] == 5.0  # the camera's analysis_fps: times in seconds of its stream


def test_selftest_on_demand_from_opcua_fails_the_target_and_degrades_the_camera(story):
    assert story.seen["opcua_answer"] == "requested"
    assert story.seen["opcua_answer_while_running"] == "running"  # a request while it runs adds nothing
    seen = story.seen["failed"]
    mqtt, opcua, modbus, snapshot = seen["mqtt"], seen["opcua"], seen["modbus"], seen["snapshot"]
    assert mqtt["status"] == "failed" and mqtt["passed"] is False and mqtt["probability_at_reference"] == 0.0
    assert mqtt["detection_limit_pixels"] is None and mqtt["reference_size_pixels"] == 30
    assert snapshot["state"] == "DEGRADED" and snapshot["degraded"] is True
    assert snapshot["degraded_reason"].startswith("selftest: failed: probability of detection 0%")
    assert opcua["State"] == "DEGRADED" and opcua["DegradedReason"] == snapshot["degraded_reason"]
    assert opcua["SelfTestStatus"] == "failed" and opcua["SelfTestPassed"] is False
    assert opcua["PodAtReference"] == 0.0 and opcua["DetectionLimitPixels"] == -1
    assert modbus[:4] == [5, 0, 0, 65535] and seen["can_see_gas"] == 0
    assert mqtt["report"] != story.seen["scheduled"]["mqtt"]["report"] and Path(mqtt["report"]).is_dir()


def test_selftest_on_demand_from_mqtt_passes_and_clears_degraded(story):
    seen = story.seen["passed_again"]
    assert seen["mqtt"]["status"] == "passed" and seen["snapshot"]["state"] == "NORMAL"
    assert seen["snapshot"]["degraded"] is False and seen["opcua"]["Degraded"] is False
    assert seen["modbus"][:2] == [4, 1] and seen["can_see_gas"] == 1
    assert story.seen["mqtt_health"]["requests_refused"] == 1  # leakseg/no-such-camera/selftest/run
    statuses = [s for s in story.seen["mqtt_selftest_statuses"] if s != "waiting"]  # the background may restart
    assert statuses[-6:] == ["running", "passed", "running", "failed", "running", "passed"], statuses
    events = [json.loads(line) for line in (story.tmp / "events.jsonl").read_text().splitlines()]
    degraded = [(e["type"], e["alarm"]["reason"][:16]) for e in events
                if e.get("alarm") and e["alarm"]["kind"] == "DEGRADED"]
    assert degraded == [("alarm_raised", "selftest: failed"), ("alarm_cleared", "selftest: failed")]
    logged = [e["selftest"]["status"] for e in events if e["type"] == "selftest"]
    assert logged[:2] == ["never", "waiting"], logged  # the first due self-test waits for its background
    assert [s for s in logged if s != "waiting"] == ["never", "running", "passed", "running", "failed", "running",
                                                     "passed", "running"], logged  # the last one: stopped


def test_live_analysis_goes_on_during_a_selftest_and_never_waits_for_more_than_one_selftest_window(story):
    camera = story.monitor.cameras["north"]
    assert camera.logic.frames_analysed == story.seen["frames_written"]  # every frame, lossless
    assert camera.counters.windows_dropped == 0 and camera.counters.frames_dropped == 0
    assert camera.counters.windows_failed == 0

    running = [frames for _, status, frames in story.samples if status == "running"]
    assert running and max(running) > min(running), "no real window was analysed while a self-test ran"

    calls = story.segmenter.calls
    real, selftest = story.segmenter.by("monitor-segment_window"), story.segmenter.by("monitor-_selftest")
    assert real and selftest and len(real) + len(selftest) == len(calls)
    for call in real:
        ahead = [c for c in selftest if call.asked <= c.began < call.began]  # self-test windows that went first
        assert len(ahead) <= 1, (call, ahead)
    inference = max(c.done - c.began for c in selftest)
    longest_wait = max(c.began - c.asked for c in real)
    assert longest_wait <= 2 * inference + 0.5, (longest_wait, inference)
    print(f"\nreal windows {len(real)}, self-test windows {len(selftest)}, longest self-test window "
          f"{inference:.2f} s, longest wait of a real window {longest_wait:.2f} s")


def test_a_stop_during_a_selftest_is_clean_and_within_shutdown_seconds(story):
    assert story.seen["status_at_stop"] == "running"
    assert story.exit_code == 0
    assert story.stop_seconds < story.config.shutdown_seconds
    assert story.monitor.calls.abandoned == 0  # the self-test's thread ended before the model was closed
