"""The monitor's SCADA outputs with real clients: asyncua (OPC UA), pymodbus (Modbus TCP), paho + mosquitto (MQTT).

The monitor runs for real (its loop, its sinks, folder sources on empty folders); the test feeds the
alarm logic per-frame observations, as the service's answers would, and reads what SCADA sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from leakseg.monitor.alarm import Observation
from leakseg.monitor.config import parse_config
from leakseg.monitor.runner import Monitor, Segmenter
from leakseg.monitor.sinks import build_sinks
from support.monitor_fixtures import MqttRecorder, free_port, mosquitto, retained  # noqa: F401

PASSWORD_ENV = "LEAKSEG_TEST_OPCUA_PASSWORD"


class NoModel(Segmenter):
    name = "no model (the test feeds observations)"

    def segment(self, clip, prompts, options):  # pragma: no cover - the folders stay empty
        raise AssertionError("not called")


def config(tmp_path, broker_port, opc_port, modbus_port, **opcua):
    for name in ("cam-a", "cam-b"):
        (tmp_path / name).mkdir()
    return parse_config({
        "cameras": [{"name": "cam-a", "source": str(tmp_path / "cam-a"), "faults": {"stale_seconds": 3600},
                     "alarm": {"min_area_pixels": 100, "k": 2, "n": 3, "clear_frames": 2}},
                    {"name": "cam-b", "source": str(tmp_path / "cam-b"), "faults": {"stale_seconds": 3600}}],
        "evidence_dir": str(tmp_path / "evidence"),
        "status_interval": 0.2,
        "sinks": {
            "jsonl": {"path": str(tmp_path / "events.jsonl")},
            "mqtt": {"port": broker_port, "topic_prefix": "plant1", "client_id": "monitor-under-test"},
            "opcua": {"endpoint": f"opc.tcp://127.0.0.1:{opc_port}/leakseg",
                      "users": [{"name": "operator", "password_env": PASSWORD_ENV}], **opcua},
            "modbus": {"host": "127.0.0.1", "port": modbus_port, "heartbeat_seconds": 0.2},
        },
    })


def feed(monitor, camera, areas, start_seq=0):
    cam = monitor.cameras[camera]
    for i, area in enumerate(areas, start_seq):
        o = Observation(seq=i, time=time.time(), area_pixels=area, area_fraction=area / 76800, score=0.8 if area else 0.1,
                        bbox=(10, 20, 30, 40) if area else None, centroid=(25.0, 40.0) if area else None)
        monitor.emit(cam.logic.observe(o))
        cam.last_result = {"area_pixels": area, "area_fraction": area / 76800, "score": o.score,
                           "centroid_x": 25.0 if area else None, "centroid_y": 40.0 if area else None}
        monitor.publish_state(camera)


class Events:
    def __init__(self):
        self.items = []

    def event_notification(self, event):
        self.items.append(event)


async def until(predicate, timeout=60.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_opcua_mqtt_modbus_and_jsonl_see_the_alarm_and_acknowledge_it(tmp_path, mosquitto, monkeypatch):
    from asyncua import Client, ua
    from pymodbus.client import AsyncModbusTcpClient

    monkeypatch.setenv(PASSWORD_ENV, "s3cret-operator")
    opc_port, modbus_port = free_port(), free_port()
    cfg = config(tmp_path, mosquitto.port, opc_port, modbus_port)
    monitor = Monitor(cfg, NoModel(), build_sinks(cfg), status_table=False)
    recorder = MqttRecorder(mosquitto.port, "plant1")
    endpoint = f"opc.tcp://127.0.0.1:{opc_port}/leakseg"

    async def scenario():
        task = asyncio.create_task(monitor.run_async())
        await until(lambda: monitor.started.is_set() or task.done(), timeout=180, what="monitor start")
        assert not task.done(), task.exception()
        async with Client(endpoint) as anonymous:
            idx = await anonymous.get_namespace_index("urn:leakseg:monitor")
            cam = await anonymous.nodes.objects.get_child([f"{idx}:LeakSeg", f"{idx}:cam-a"])
            var = {n: await cam.get_child(f"{idx}:{n}") for n in
                   ("State", "StateCode", "LeakActive", "LeakAreaPixels", "LeakAreaFraction", "HighestScore",
                    "CentroidX", "CentroidY", "FramesAnalysed", "WindowsDropped", "CameraHealthy", "ServiceHealthy",
                    "AlarmId", "AlarmAcknowledged", "LastFrameTime", "FaultReason")}
            assert await var["State"].read_value() == "NORMAL"
            etype = await anonymous.nodes.root.get_child(
                ["0:Types", "0:EventTypes", "0:BaseEventType", "0:ConditionType", "0:AcknowledgeableConditionType",
                 "0:AlarmConditionType", f"{idx}:LeakSegAlarmType"])
            events = Events()
            sub = await anonymous.create_subscription(50, events)
            await sub.subscribe_events(cam, etype)
            modbus = AsyncModbusTcpClient("127.0.0.1", port=modbus_port)
            await modbus.connect()

            feed(monitor, "cam-a", [0, 500, 0, 900])  # 2 of the last 3 -> LEAK at the 4th frame
            await until(lambda: events.items, what="the LEAK event")
            leak = events.items[0]
            assert leak.ConditionName == "LEAK" and leak.Transition == "raised" and leak.Severity == 900
            assert leak.AlarmId.startswith("cam-a-LEAK-") and leak.SourceName == "cam-a"
            assert leak.Message.Text.startswith("LEAK raised") and leak.AreaPixels == 900 and leak.CentroidX == 25.0
            assert (await until(lambda: _read(var["State"]), what="State") == "LEAK")
            await until(lambda: _is(var["LeakAreaPixels"], 900), what="LeakAreaPixels")
            assert await var["LeakActive"].read_value() is True
            assert await var["StateCode"].read_value() == 1
            assert await var["AlarmId"].read_value() == leak.AlarmId
            assert await var["AlarmAcknowledged"].read_value() is False
            assert await var["FramesAnalysed"].read_value() == 4
            assert abs(await var["LeakAreaFraction"].read_value() - 900 / 76800) < 1e-9
            assert await var["CameraHealthy"].read_value() is True

            # Modbus: camera a at base 0, camera b at base 16; read-only; heartbeat moves
            regs = (await modbus.read_holding_registers(0, count=16, device_id=1)).registers
            assert regs[0:4] == [1, 1, round(1000 * 900 / 76800), 800]
            assert regs[5:7] == [4, 0] and regs[8:11] == [1, 1, 0] and regs[11:14] == [900, 25, 40] and regs[14] == 1
            regs_b = (await modbus.read_input_registers(16, count=16, device_id=1)).registers
            assert regs_b[0:2] == [0, 0] and regs_b[12:14] == [65535, 65535]
            beat = regs[4]
            await asyncio.sleep(0.6)
            assert (await modbus.read_input_registers(4, count=1, device_id=1)).registers[0] > beat
            refused = await modbus.write_register(0, 0, device_id=1)
            assert refused.isError()
            assert (await modbus.read_holding_registers(0, count=1, device_id=1)).registers[0] == 1

            # anonymous: reads, never writes, may not acknowledge
            with pytest.raises(ua.UaError):
                await var["State"].write_value("NORMAL")
            with pytest.raises(ua.UaError):
                await cam.call_method(f"{idx}:Acknowledge", leak.AlarmId, "anonymous try")
            assert monitor.cameras["cam-a"].logic.leak.acknowledged is False

        # the operator logs in and acknowledges from the HMI
        operator = Client(endpoint)
        operator.set_user("operator")
        operator.set_password("s3cret-operator")
        async with operator:
            cam = await operator.nodes.objects.get_child([f"{idx}:LeakSeg", f"{idx}:cam-a"])
            with pytest.raises(ua.UaError):
                await (await cam.get_child(f"{idx}:State")).write_value("NORMAL")
            count = await cam.call_method(f"{idx}:Acknowledge", leak.AlarmId, "crew sent")
            assert count == 1
            await until(var_ack(cam, idx), what="AlarmAcknowledged")
        bad = Client(endpoint)
        bad.set_user("operator")
        bad.set_password("wrong")
        with pytest.raises(Exception):
            async with bad:
                pass

        # the leak stops: cleared after 2 clear frames; the camera B loses its stream; MQTT acknowledges that
        feed(monitor, "cam-a", [0, 0], start_seq=4)
        monitor.emit(monitor.cameras["cam-b"].logic.camera_failed("lost: connection refused"))
        fault = await asyncio.to_thread(
            recorder.wait_for, lambda m: m[0] == "plant1/cam-b/event" and '"alarm_raised"' in m[1])
        fault_id = json.loads(fault[0][1])["alarm"]["id"]
        await asyncio.to_thread(recorder.publish, "plant1/cam-b/ack",
                                json.dumps({"alarm_id": fault_id, "by": "night shift"}))
        await asyncio.to_thread(
            recorder.wait_for, lambda m: m[0] == "plant1/cam-b/event" and '"alarm_acknowledged"' in m[1])
        await asyncio.sleep(0.3)
        regs_b = (await modbus.read_input_registers(16, count=16, device_id=1)).registers
        assert regs_b[0] == 2 and regs_b[8] == 0  # CAMERA_FAULT, camera unhealthy
        modbus.close()

        monitor.request_stop()
        assert await asyncio.wait_for(task, 30) == 0

    try:
        asyncio.run(scenario())
    finally:
        recorder.close()

    # MQTT: the whole story on the event topic, a retained OFFLINE state, the status went offline
    events_a = [json.loads(p) for p in recorder.on("plant1/cam-a/event")]
    kinds = [(e["type"], (e["alarm"] or {}).get("kind")) for e in events_a]
    assert kinds == [("alarm_raised", "LEAK"), ("state_changed", None), ("alarm_acknowledged", "LEAK"),
                     ("alarm_cleared", "LEAK"), ("state_changed", None), ("state_changed", None)]
    assert events_a[2]["alarm"]["acknowledged_by"] == "opcua" and events_a[2]["alarm"]["comment"] == "crew sent"
    assert events_a[-1]["state"] == "OFFLINE"
    assert json.loads(retained(mosquitto.port, "plant1/cam-a/state"))["state"] == "OFFLINE"
    assert retained(mosquitto.port, "plant1/status") == "offline"
    assert recorder.on("plant1/status")[0] == "online"
    ack_b = [json.loads(p) for p in recorder.on("plant1/cam-b/event") if '"alarm_acknowledged"' in p][0]
    assert ack_b["alarm"]["acknowledged_by"] == "mqtt:night shift"

    # JSON lines: everything, in order, started and stopped
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "monitor_started" and lines[-1]["type"] == "monitor_stopped"
    assert [(e["type"], e["camera"]) for e in lines[1:-1] if e["camera"] == "cam-a"] == \
        [(t, "cam-a") for t, _ in kinds]


async def _read(node):
    return await node.read_value()


async def _is(node, value):
    return await node.read_value() == value


def var_ack(cam, idx):
    async def read():
        return await (await cam.get_child(f"{idx}:AlarmAcknowledged")).read_value()
    return read


def test_mqtt_last_will_says_offline_when_the_monitor_dies(tmp_path, mosquitto):
    """kill -9: no clean goodbye, so the broker publishes the last will (after 1.5 keepalives)."""
    script = tmp_path / "publisher.py"
    script.write_text(f"""
import asyncio, sys
from leakseg.monitor.config import MqttSink
from leakseg.monitor.sinks.mqtt import MqttPublisher
class M:
    cameras = {{}}
async def main():
    p = MqttPublisher(MqttSink(port={mosquitto.port}, topic_prefix="plant2", keepalive=5))
    await p.start(M())
    print("started", flush=True)
    await asyncio.sleep(120)
asyncio.run(main())
""")
    recorder = MqttRecorder(mosquitto.port, "plant2")
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        recorder.wait_for(lambda m: m[0] == "plant2/status" and m[1] == "online")
        os.kill(proc.pid, signal.SIGKILL)
        recorder.wait_for(lambda m: m[0] == "plant2/status" and m[1] == "offline", timeout=20)
    finally:
        proc.kill()
        proc.wait()
        recorder.close()
    assert retained(mosquitto.port, "plant2/status") == "offline"


def test_jsonl_log_rotates_and_keeps_backups(tmp_path):
    from leakseg.monitor.alarm import AlarmLogic
    from leakseg.monitor.config import AlarmSettings, JsonlSink
    from leakseg.monitor.sinks.jsonl import JsonlLog

    class M:
        cameras = {"c": None}

    log = JsonlLog(JsonlSink(path=tmp_path / "ev.jsonl", max_bytes=2000, backups=2))
    logic = AlarmLogic("c", AlarmSettings(k=1, n=1, clear_frames=1, min_area_pixels=1))

    async def run():
        await log.start(M())
        for i in range(40):
            for e in logic.observe(Observation(i, 1e9 + i, 10 * (i % 2), 0.001, 0.5)):
                await log.publish_event(e)
        await log.stop()

    asyncio.run(run())
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["ev.jsonl", "ev.jsonl.1", "ev.jsonl.2"]
    for p in tmp_path.iterdir():
        assert p.stat().st_size <= 2000
        for line in p.read_text().splitlines():
            json.loads(line)  # every line whole
    newest = [json.loads(x) for x in (tmp_path / "ev.jsonl").read_text().splitlines()]
    assert newest[-1]["type"] == "monitor_stopped"
