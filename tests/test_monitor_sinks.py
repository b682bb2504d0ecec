"""The monitor's SCADA outputs with real clients: asyncua (OPC UA), pymodbus (Modbus TCP), paho + mosquitto (MQTT),
and the JSON lines log on disk.

Each test runs the monitor for real (its loop, one sink, folder sources on empty folders) and feeds the
alarm logic per-frame observations, as the service's answers would; then it reads what SCADA sees.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import asynccontextmanager

import pytest

from leakseg.monitor.alarm import Observation
from support.monitor_fixtures import (FRAME_PIXELS, MqttRecorder, NoModel, feed, free_port,  # noqa: F401
                                      mosquitto, retained, run_monitor, two_cameras, until)

PASSWORD_ENV = "LEAKSEG_TEST_OPCUA_PASSWORD"
PASSWORD = "s3cret-operator"

# What cam-a goes through in :func:`leak_story`, as (event type, alarm kind), the monitor's stop included.
LEAK_STORY = [("alarm_raised", "LEAK"), ("state_changed", None), ("alarm_acknowledged", "LEAK"),
              ("alarm_cleared", "LEAK"), ("state_changed", None), ("state_changed", None)]


def raise_leak(monitor) -> str:
    """cam-a sees a plume in 2 of its last 3 frames: LEAK at the 4th frame. Returns the alarm's id."""
    feed(monitor, "cam-a", [0, 500, 0, 900])
    return monitor.cameras["cam-a"].logic.leak.id


def leak_story(monitor) -> None:
    """cam-a: LEAK raised, acknowledged as from the OPC UA method, cleared after 2 clear frames."""
    leak_id = raise_leak(monitor)
    assert monitor.acknowledge("cam-a", leak_id, by="opcua", comment="crew sent") == 1
    feed(monitor, "cam-a", [0, 0], start_seq=4)


#: What cam-b's picture check says in :func:`degrade`.
BLURRED = "blurred: sharpness 0.21 of the camera's reference (limit 0.5)"


def degrade(monitor, reason=BLURRED) -> None:
    """cam-b's picture check says it cannot see gas (reason) or can again (None), as after a window."""
    monitor.emit(monitor.cameras["cam-b"].logic.set_degraded("picture", reason))
    monitor.publish_state("cam-b")


def story_of(events):
    return [(e["type"], (e["alarm"] or {}).get("kind")) for e in events]


# -- JSON lines ---------------------------------------------------------------------------------------


def test_jsonl_log_has_every_event_in_order_between_started_and_stopped(tmp_path):
    async def scenario(monitor):
        leak_story(monitor)

    run_monitor(two_cameras(tmp_path, jsonl={"path": str(tmp_path / "events.jsonl")}), scenario)

    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert lines[0]["type"] == "monitor_started" and lines[-1]["type"] == "monitor_stopped"
    assert [(e["type"], e["camera"]) for e in lines[1:-1] if e["camera"] == "cam-a"] == \
        [(t, "cam-a") for t, _ in LEAK_STORY]


def test_jsonl_log_and_the_status_table_say_a_camera_cannot_see_gas(tmp_path):
    from leakseg.monitor.status import table_rows

    rows = []

    async def scenario(monitor):
        degrade(monitor)
        rows.extend(table_rows(c.snapshot() for c in monitor.cameras.values()))
        degrade(monitor, None)

    run_monitor(two_cameras(tmp_path, jsonl={"path": str(tmp_path / "events.jsonl"), "states": True}), scenario)

    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    b = [e for e in lines if e.get("camera") == "cam-b"]
    assert story_of([e for e in b if e["type"] != "state"]) == [
        ("alarm_raised", "DEGRADED"), ("state_changed", None), ("alarm_cleared", "DEGRADED"), ("state_changed", None),
        ("state_changed", None)]
    degraded = next(e for e in b if e["type"] == "state" and e["degraded"])
    assert (degraded["state"], degraded["state_code"], degraded["degraded_reason"]) == \
        ("DEGRADED", 5, f"picture: {BLURRED}")
    keys = list(degraded)
    assert keys.index("degraded") == keys.index("service_fault") + 1  # beside the other health values
    last = [e for e in b if e["type"] == "state" and e["state"] != "OFFLINE"][-1]
    assert (last["state"], last["degraded"], last["degraded_reason"]) == ("NORMAL", False, None)
    assert rows[2].startswith("cam-b") and " DEGRADED " in rows[2] and rows[2].endswith(f"picture: {BLURRED}")


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


# -- MQTT -----------------------------------------------------------------------------------------------


@pytest.fixture
def mqtt_recorder(mosquitto):
    """Subscribed to plant1/# before the monitor connects, so it sees the first ``online`` too."""
    recorder = MqttRecorder(mosquitto.port, "plant1")
    try:
        yield recorder
    finally:
        recorder.close()


def mqtt_config(tmp_path, broker):
    return two_cameras(tmp_path, mqtt={"port": broker.port, "topic_prefix": "plant1",
                                       "client_id": "monitor-under-test"})


async def mqtt_online(recorder):
    """Publications before the connection would be lost; the monitor says ``online`` once connected."""
    await asyncio.to_thread(recorder.wait_for, lambda m: m[0] == "plant1/status" and m[1] == "online")


def test_mqtt_publishes_the_alarm_story_and_a_retained_offline_state(tmp_path, mosquitto, mqtt_recorder):
    async def scenario(monitor):
        await mqtt_online(mqtt_recorder)
        leak_story(monitor)

    run_monitor(mqtt_config(tmp_path, mosquitto), scenario)

    events_a = [json.loads(p) for p in mqtt_recorder.on("plant1/cam-a/event")]
    assert story_of(events_a) == LEAK_STORY
    assert events_a[2]["alarm"]["acknowledged_by"] == "opcua" and events_a[2]["alarm"]["comment"] == "crew sent"
    assert events_a[-1]["state"] == "OFFLINE"
    assert json.loads(retained(mosquitto.port, "plant1/cam-a/state"))["state"] == "OFFLINE"
    assert retained(mosquitto.port, "plant1/status") == "offline"
    assert mqtt_recorder.on("plant1/status")[0] == "online"


def test_mqtt_ack_topic_acknowledges_the_alarm(tmp_path, mosquitto, mqtt_recorder):
    async def scenario(monitor):
        await mqtt_online(mqtt_recorder)
        monitor.emit(monitor.cameras["cam-b"].logic.camera_failed("lost: connection refused"))
        fault = await asyncio.to_thread(
            mqtt_recorder.wait_for, lambda m: m[0] == "plant1/cam-b/event" and '"alarm_raised"' in m[1])
        fault_id = json.loads(fault[0][1])["alarm"]["id"]
        await asyncio.to_thread(mqtt_recorder.publish, "plant1/cam-b/ack",
                                json.dumps({"alarm_id": fault_id, "by": "night shift"}))
        await asyncio.to_thread(
            mqtt_recorder.wait_for, lambda m: m[0] == "plant1/cam-b/event" and '"alarm_acknowledged"' in m[1])

    run_monitor(mqtt_config(tmp_path, mosquitto), scenario)

    ack_b = [json.loads(p) for p in mqtt_recorder.on("plant1/cam-b/event") if '"alarm_acknowledged"' in p][0]
    assert ack_b["alarm"]["acknowledged_by"] == "mqtt:night shift"


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


# -- OPC UA ---------------------------------------------------------------------------------------------

CAMERA_VARIABLES = ("State", "StateCode", "LeakActive", "LeakAreaPixels", "LeakAreaFraction", "HighestScore",
                    "CentroidX", "CentroidY", "FramesAnalysed", "WindowsDropped", "CameraHealthy", "ServiceHealthy",
                    "AlarmId", "AlarmAcknowledged", "LastFrameTime", "FaultReason", "Degraded", "DegradedReason")


class Events:
    def __init__(self):
        self.items = []

    def event_notification(self, event):
        self.items.append(event)


@pytest.fixture
def opcua(tmp_path, monkeypatch):
    """A two-camera configuration with an OPC UA server that has one user, ``operator``; and its endpoint."""
    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/leakseg"
    config = two_cameras(tmp_path, opcua={"endpoint": endpoint,
                                          "users": [{"name": "operator", "password_env": PASSWORD_ENV}]})
    return config, endpoint


async def camera_node(client, name="cam-a"):
    """The camera's object and the namespace index of the monitor's nodes."""
    idx = await client.get_namespace_index("urn:leakseg:monitor")
    return await client.nodes.objects.get_child([f"{idx}:LeakSeg", f"{idx}:{name}"]), idx


async def subscribe_alarms(client, cam, idx) -> Events:
    etype = await client.nodes.root.get_child(
        ["0:Types", "0:EventTypes", "0:BaseEventType", "0:ConditionType", "0:AcknowledgeableConditionType",
         "0:AlarmConditionType", f"{idx}:LeakSegAlarmType"])
    events = Events()
    sub = await client.create_subscription(50, events)
    await sub.subscribe_events(cam, etype)
    return events


async def _is(node, value):
    return await node.read_value() == value


def test_opcua_variables_and_alarm_events_follow_the_leak(opcua):
    from asyncua import Client

    config, endpoint = opcua

    async def scenario(monitor):
        async with Client(endpoint) as anonymous:
            cam, idx = await camera_node(anonymous)
            var = {n: await cam.get_child(f"{idx}:{n}") for n in CAMERA_VARIABLES}
            assert await var["State"].read_value() == "NORMAL"
            events = await subscribe_alarms(anonymous, cam, idx)

            raise_leak(monitor)
            await until(lambda: events.items, what="the LEAK event")
            leak = events.items[0]
            assert leak.ConditionName == "LEAK" and leak.Transition == "raised" and leak.Severity == 900
            assert leak.AlarmId.startswith("cam-a-LEAK-") and leak.SourceName == "cam-a"
            assert leak.Message.Text.startswith("LEAK raised") and leak.AreaPixels == 900 and leak.CentroidX == 25.0
            assert await var["State"].read_value() == "LEAK"
            await until(lambda: _is(var["LeakAreaPixels"], 900), what="LeakAreaPixels")
            assert await var["LeakActive"].read_value() is True
            assert await var["StateCode"].read_value() == 1
            assert await var["AlarmId"].read_value() == leak.AlarmId
            assert await var["AlarmAcknowledged"].read_value() is False
            assert await var["FramesAnalysed"].read_value() == 4
            assert abs(await var["LeakAreaFraction"].read_value() - 900 / FRAME_PIXELS) < 1e-9
            assert await var["CameraHealthy"].read_value() is True

    run_monitor(config, scenario)


def test_opcua_variables_and_event_say_a_camera_cannot_see_gas(opcua):
    from asyncua import Client

    config, endpoint = opcua

    async def scenario(monitor):
        async with Client(endpoint) as anonymous:
            cam, idx = await camera_node(anonymous, "cam-b")
            var = {n: await cam.get_child(f"{idx}:{n}") for n in CAMERA_VARIABLES}
            assert await var["Degraded"].read_value() is False and await var["DegradedReason"].read_value() == ""
            events = await subscribe_alarms(anonymous, cam, idx)

            degrade(monitor)
            await until(lambda: events.items, what="the DEGRADED event")
            raised = events.items[0]
            assert (raised.ConditionName, raised.Transition, raised.Severity) == ("DEGRADED", "raised", 400)
            await until(lambda: _is(var["Degraded"], True), what="Degraded")
            assert await var["State"].read_value() == "DEGRADED" and await var["StateCode"].read_value() == 5
            assert await var["DegradedReason"].read_value() == f"picture: {BLURRED}"
            assert await var["FaultReason"].read_value() == "" and await var["CameraHealthy"].read_value() is True

            degrade(monitor, None)
            await until(lambda: _is(var["Degraded"], False), what="Degraded back to false")
            assert await var["State"].read_value() == "NORMAL" and await var["DegradedReason"].read_value() == ""
            await until(lambda: len(events.items) == 2, what="the cleared event")
            assert events.items[1].Transition == "cleared" and events.items[1].AlarmId == raised.AlarmId

    run_monitor(config, scenario)


def operator(endpoint, password=PASSWORD):
    from asyncua import Client

    client = Client(endpoint)
    client.set_user("operator")
    client.set_password(password)
    return client


def test_opcua_anonymous_only_reads(opcua):
    from asyncua import Client, ua

    config, endpoint = opcua

    async def scenario(monitor):
        leak_id = raise_leak(monitor)
        async with Client(endpoint) as anonymous:
            cam, idx = await camera_node(anonymous)
            with pytest.raises(ua.UaError):
                await (await cam.get_child(f"{idx}:State")).write_value("NORMAL")
            with pytest.raises(ua.UaError):
                await cam.call_method(f"{idx}:Acknowledge", leak_id, "anonymous try")
            assert monitor.cameras["cam-a"].logic.leak.acknowledged is False

    run_monitor(config, scenario)


def test_opcua_operator_acknowledges_and_a_wrong_password_is_refused(opcua):
    from asyncua import ua

    config, endpoint = opcua
    published = []

    async def scenario(monitor):
        monitor.event_listeners.append(published.append)
        leak_id = raise_leak(monitor)
        async with operator(endpoint) as client:
            cam, idx = await camera_node(client)
            with pytest.raises(ua.UaError):
                await (await cam.get_child(f"{idx}:State")).write_value("NORMAL")
            for vague in ("", "0"):  # an acknowledgement names its alarm (or "all"); it never guesses
                with pytest.raises(ua.UaError):
                    await cam.call_method(f"{idx}:Acknowledge", vague, "crew sent")
            count = await cam.call_method(f"{idx}:Acknowledge", leak_id, "crew sent")
            assert count == 1
            acknowledged = await cam.get_child(f"{idx}:AlarmAcknowledged")
            await until(lambda: _is(acknowledged, True), what="AlarmAcknowledged")
        with pytest.raises(Exception):
            async with operator(endpoint, "wrong"):
                pass

    run_monitor(config, scenario)
    acks = [e.alarm for e in published if e.type == "alarm_acknowledged"]
    assert [(a.acknowledged_by, a.comment) for a in acks] == [("opcua", "crew sent")]


# -- Modbus TCP -----------------------------------------------------------------------------------------


@pytest.fixture
def modbus(tmp_path):
    """A two-camera configuration with a Modbus server (heartbeat every 0.2 s), and its port."""
    port = free_port()
    return two_cameras(tmp_path, modbus={"host": "127.0.0.1", "port": port, "heartbeat_seconds": 0.2}), port


@asynccontextmanager
async def modbus_client(port):
    from pymodbus.client import AsyncModbusTcpClient

    client = AsyncModbusTcpClient("127.0.0.1", port=port)
    await client.connect()
    try:
        yield client
    finally:
        client.close()


async def holding(client, base, count=16):
    return (await client.read_holding_registers(base, count=count, device_id=1)).registers


async def inputs(client, base, count=16):
    return (await client.read_input_registers(base, count=count, device_id=1)).registers


async def leak_registers(monitor, client):
    """Raise cam-a's LEAK; its 16 registers (base 0) once they show it."""
    raise_leak(monitor)

    async def read():
        regs = await holding(client, 0)
        return regs if regs[11] == 900 else None

    return await until(read, what="cam-a's LEAK registers")


def test_modbus_registers_follow_the_leak_and_a_camera_fault(modbus):
    config, port = modbus

    async def fault_registers(client):
        regs = await inputs(client, 16)
        return regs if regs[0] == 2 else None

    async def scenario(monitor):
        async with modbus_client(port) as client:
            regs = await leak_registers(monitor, client)  # camera a at base 0, camera b at base 16
            assert regs[0:4] == [1, 1, round(1000 * 900 / FRAME_PIXELS), 800]
            assert regs[5:7] == [4, 0] and regs[8:11] == [1, 1, 0] and regs[11:14] == [900, 25, 40] and regs[14] == 1
            regs_b = await inputs(client, 16)
            assert regs_b[0:2] == [0, 0] and regs_b[12:14] == [65535, 65535]

            monitor.emit(monitor.cameras["cam-b"].logic.camera_failed("lost: connection refused"))
            regs_b = await until(lambda: fault_registers(client), what="cam-b's CAMERA_FAULT registers")
            assert regs_b[0] == 2 and regs_b[8] == 0  # CAMERA_FAULT, camera unhealthy

    run_monitor(config, scenario)


def test_modbus_state_5_and_can_see_gas_register_for_a_degraded_camera(modbus):
    config, port = modbus

    async def degraded_registers(client):
        regs = await holding(client, 16)
        return regs if regs[0] == 5 else None

    async def scenario(monitor):
        async with modbus_client(port) as client:
            assert (await holding(client, 16))[15] == 1  # can see gas
            degrade(monitor)
            regs = await until(lambda: degraded_registers(client), what="cam-b's DEGRADED registers")
            assert regs[15] == 0 and regs[8:10] == [1, 1]  # cannot see gas; camera and service healthy
            assert (await inputs(client, 16))[15] == 0
            regs_a = await leak_registers(monitor, client)  # another camera is untouched
            assert regs_a[0] == 1 and regs_a[15] == 1
            degrade(monitor, None)
            await until(lambda: _is_register(client, 16 + 15, 1), what="can see gas again")
            assert (await holding(client, 16))[0] == 0

    run_monitor(config, scenario)


async def _is_register(client, address, value):
    return (await holding(client, address, count=1))[0] == value


def test_modbus_map_is_read_only_and_the_heartbeat_moves(modbus):
    config, port = modbus

    async def scenario(monitor):
        async with modbus_client(port) as client:
            beat = (await leak_registers(monitor, client))[4]
            await asyncio.sleep(0.6)
            assert (await inputs(client, 4, count=1))[0] > beat
            refused = await client.write_register(0, 0, device_id=1)
            assert refused.isError()
            assert (await holding(client, 0, count=1))[0] == 1

    run_monitor(config, scenario)


# -- what a hostile HMI, a flapping camera, a broker outage and a failing disk do -----------------------


def mqtt_sink(monitor):
    return next(s for s in monitor.sinks if s.name == "mqtt")


async def link(monitor, up: bool):
    """Until the monitor's MQTT client is (dis)connected."""
    await until(lambda: mqtt_sink(monitor).client.is_connected() == up, what=f"MQTT link {'up' if up else 'down'}")


@pytest.fixture
def restartable_broker(tmp_path):
    """A broker that keeps retained messages and sessions across a restart (stop() ... start())."""
    from support.monitor_fixtures import Mosquitto

    folder = tmp_path / "broker"
    folder.mkdir()
    broker = Mosquitto(folder, persistent=True)
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def session_recorder(restartable_broker):
    """Subscribed to plant1/# with a session the broker keeps across its restart."""
    recorder = MqttRecorder(restartable_broker.port, "plant1", session=f"scada-{os.getpid()}")
    try:
        yield recorder
    finally:
        recorder.close()


@pytest.mark.parametrize("ack", [{"alarm_id": "all", "by": "hmi"}, {"by": "hmi"}])
def test_mqtt_retained_ack_is_not_replayed_on_alarms_raised_while_the_link_was_down(
        tmp_path, restartable_broker, session_recorder, ack):
    """An HMI publishes an "acknowledge all" with retain=1 (today's ``{...}`` without an id, or the explicit
    "all"): the broker replays it at every reconnect; it must not acknowledge the LEAK raised during the outage."""
    async def scenario(monitor):
        await mqtt_online(session_recorder)
        await asyncio.to_thread(session_recorder.client.publish, "plant1/cam-a/ack", json.dumps(ack), 1, True)
        await until(lambda: retained(restartable_broker.port, "plant1/cam-a/ack"), what="the retained ack")
        restartable_broker.stop()
        await link(monitor, up=False)
        leak = monitor.cameras["cam-a"].logic.recent[raise_leak(monitor)]  # while SCADA cannot see it
        await asyncio.to_thread(restartable_broker.start)
        await link(monitor, up=True)
        await asyncio.sleep(1.0)  # the broker replays the retained ack when the monitor subscribes again
        assert leak.acknowledged is False
        assert mqtt_sink(monitor).health()["acks_refused"] >= 1

    run_monitor(mqtt_config(tmp_path, restartable_broker), scenario)


def test_mqtt_ack_needs_an_explicit_alarm_id_and_bounded_printable_fields(tmp_path, mosquitto, mqtt_recorder):
    refused = ["", "{}", json.dumps({"alarm_id": 0}), json.dumps({"alarm_id": None}), "[1]",
               json.dumps({"alarm_id": "all", "by": "x" * 65}), json.dumps({"alarm_id": "all", "comment": "c" * 257}),
               json.dumps({"alarm_id": "all", "by": "ops\nFAKE LOG LINE"}), json.dumps({"alarm_id": "all", "by": 7})]

    async def scenario(monitor):
        await mqtt_online(mqtt_recorder)
        leak_id = raise_leak(monitor)
        for payload in refused:
            await asyncio.to_thread(mqtt_recorder.publish, "plant1/cam-a/ack", payload)
        await asyncio.to_thread(mqtt_recorder.publish, "plant1/cam-a/ack",
                                json.dumps({"alarm_id": leak_id, "by": "night shift", "comment": "crew sent"}))
        await until(lambda: monitor.cameras["cam-a"].logic.leak.acknowledged, what="the good ack")

    monitor = run_monitor(mqtt_config(tmp_path, mosquitto), scenario)
    acks = [json.loads(p)["alarm"] for p in mqtt_recorder.on("plant1/cam-a/event") if '"alarm_acknowledged"' in p]
    assert [(a["acknowledged_by"], a["comment"]) for a in acks] == [("mqtt:night shift", "crew sent")]
    assert mqtt_sink(monitor).health()["acks_refused"] == len(refused)


def test_mqtt_acknowledges_the_active_leak_after_a_hundred_newer_alarms(tmp_path, mosquitto, mqtt_recorder):
    """A flapping camera raises and clears a fault 120 times after the LEAK: the LEAK stays acknowledgeable."""
    async def scenario(monitor):
        await mqtt_online(mqtt_recorder)
        leak_id = raise_leak(monitor)
        logic = monitor.cameras["cam-a"].logic
        for _ in range(120):
            monitor.emit(logic.camera_failed("lost: flapping") + logic.camera_ok())
        await asyncio.to_thread(mqtt_recorder.publish, "plant1/cam-a/ack", json.dumps({"alarm_id": leak_id}))
        await until(lambda: logic.leak.acknowledged, what="the LEAK acknowledged")
        assert len(logic.recent) <= 100

    run_monitor(mqtt_config(tmp_path, mosquitto), scenario)


def test_mqtt_broker_outage_queues_events_bounded_counts_drops_and_sends_no_stale_states(
        tmp_path, restartable_broker, session_recorder):
    """During the outage cam-b flaps (25 x 4 events) and cam-a sends 200 states; the event queue holds 10.
    After the restart SCADA gets the newest 10 events, the drops in sink_health, and one state per camera."""
    config = two_cameras(tmp_path, mqtt={"port": restartable_broker.port, "topic_prefix": "plant1",
                                         "client_id": "monitor-under-test", "event_queue": 10})
    emitted = []

    async def scenario(monitor):
        await mqtt_online(session_recorder)
        restartable_broker.stop()
        await link(monitor, up=False)
        monitor.event_listeners.append(emitted.append)
        logic_b = monitor.cameras["cam-b"].logic
        for _ in range(25):
            monitor.emit(logic_b.camera_failed("lost: outage") + logic_b.camera_ok())
        feed(monitor, "cam-a", [0] * 200)
        before = len(session_recorder.messages)
        await asyncio.to_thread(restartable_broker.start)
        await asyncio.to_thread(session_recorder.wait_for, lambda m: m[0] == "plant1/sink_health"
                                and json.loads(m[1])["mqtt"]["events_dropped"] == 90)
        await asyncio.to_thread(session_recorder.wait_for, lambda m: m[0] == "plant1/cam-b/event"
                                and json.loads(m[1])["time"] == emitted[-1].time and '"state_changed"' in m[1])
        await asyncio.sleep(1.0)  # a flood of stale messages would arrive now
        after = session_recorder.messages[before:]
        events = [json.loads(p) for t, p, _ in after if t == "plant1/cam-b/event"]
        assert [(e["type"], e["time"]) for e in events] == [(e.type, e.time) for e in emitted[-10:]]
        live_states = [t for t, _, retain in after if t == "plant1/cam-a/state" and not retain]
        assert len(live_states) <= 2  # (the broker's own retained copy comes too, when the recorder resubscribes)

    run_monitor(config, scenario)
    assert json.loads(retained(restartable_broker.port, "plant1/cam-a/state"))["state"] == "OFFLINE"


def test_mqtt_stop_is_bounded_when_the_broker_hangs(tmp_path, mosquitto, mqtt_recorder):
    stop_requested = []

    async def scenario(monitor):
        await mqtt_online(mqtt_recorder)
        os.killpg(mosquitto.proc.pid, signal.SIGSTOP)  # the broker keeps the connection but never answers
        stop_requested.append(time.monotonic())

    try:
        run_monitor(mqtt_config(tmp_path, mosquitto), scenario)
        took = time.monotonic() - stop_requested[0]
    finally:
        os.killpg(mosquitto.proc.pid, signal.SIGCONT)
    assert took < 4.0, f"the monitor took {took:.1f} s to stop"


def test_jsonl_log_survives_a_failed_rotation_and_keeps_every_line(tmp_path):
    """The rotation target is in the way (a folder named events.jsonl.1): lines wait, then go to disk in order
    once it is gone; the failure is counted in a sink_health line."""
    log_path = tmp_path / "events.jsonl"
    log_path.write_text(json.dumps({"type": "previous run", "pad": "x" * 9750}) + "\n")
    emitted = []

    async def scenario(monitor):
        monitor.event_listeners.append(emitted.append)
        blocker = tmp_path / "events.jsonl.1"
        (blocker / "inside").mkdir(parents=True)
        leak_story(monitor)  # the first event needs a rotation: it fails
        await asyncio.sleep(0.5)
        (blocker / "inside").rmdir()
        blocker.rmdir()
        await until(lambda: "alarm_cleared" in log_path.read_text(), what="the waiting lines written")
        feed(monitor, "cam-a", [0, 600, 0, 700], start_seq=6)

    run_monitor(two_cameras(tmp_path, jsonl={"path": str(log_path), "max_bytes": 10_000, "backups": 1}), scenario)
    old, new = ([json.loads(line) for line in p.read_text().splitlines()]
                for p in (tmp_path / "events.jsonl.1", log_path))
    lines = old + new
    assert lines[0]["type"] == "previous run" and lines[1]["type"] == "monitor_started"
    assert lines[-1]["type"] == "monitor_stopped"
    logged = [(e["type"], e["camera"], e["time"]) for e in lines if e["type"] not in
              ("previous run", "monitor_started", "monitor_stopped", "sink_health")]
    assert logged == [(e.type, e.camera, e.time) for e in emitted]
    health = [e for e in lines if e["type"] == "sink_health"]
    assert health and health[0]["sinks"]["jsonl"]["write_failures"] >= 1


def test_jsonl_log_bounds_the_lines_it_keeps_and_counts_the_rest(tmp_path, monkeypatch):
    from leakseg.monitor.config import JsonlSink
    from leakseg.monitor.sinks import jsonl

    class M:
        cameras = {"c": None}

    monkeypatch.setattr(jsonl, "MAX_PENDING_LINES", 5)
    path = tmp_path / "ev.jsonl"
    path.write_text("x" * 990 + "\n")  # the next line needs a rotation
    blocker = tmp_path / "ev.jsonl.1" / "inside"
    blocker.mkdir(parents=True)
    log = jsonl.JsonlLog(JsonlSink(path=path, max_bytes=1000, backups=1))

    async def run():
        await log.start(M())
        for i in range(8):
            log.write({"type": "n", "i": i})
        assert log.health() == {"lines_pending": 5, "lines_dropped": 4, "write_failures": 9}
        blocker.rmdir()
        blocker.parent.rmdir()
        await log.heartbeat([])
        await log.stop()

    asyncio.run(run())
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x.get("i") for x in lines if x["type"] == "n"] == [3, 4, 5, 6, 7]
    assert lines[-2]["type"] == "sink_health" and lines[-2]["sinks"]["jsonl"]["lines_dropped"] == 4


def test_opcua_empty_password_is_refused_at_start_and_at_login(opcua, monkeypatch):
    from leakseg.monitor.runner import Monitor, SinkStartError
    from leakseg.monitor.sinks import build_sinks

    config, endpoint = opcua
    monkeypatch.setenv(PASSWORD_ENV, "")
    with pytest.raises(SinkStartError, match="empty"):
        Monitor(config, NoModel(), build_sinks(config), status_table=False).run()

    async def scenario(monitor):
        monkeypatch.setenv(PASSWORD_ENV, "")  # emptied while the server runs (it reads it at each login)
        with pytest.raises(Exception):
            async with operator(endpoint, ""):
                pass

    monkeypatch.setenv(PASSWORD_ENV, PASSWORD)
    run_monitor(config, scenario)


# -- self-test outputs (the self-test itself: test_monitor_selftest.py) ---------------------------------


def with_selftest(config):
    """cam-a gets an on-demand self-test block (every_hours null). No model runs: its folder stays empty, so a
    requested self-test waits for its background; cam-b has none ("off")."""
    from leakseg.selftest.settings import SelfTestSchedule

    config.cameras[0].selftest = SelfTestSchedule(every_hours=None, background_frames=8)
    return config


def test_mqtt_selftest_run_topic_refuses_retained_requests_and_unknown_cameras(tmp_path, mosquitto, mqtt_recorder):
    """A retained request waits on the broker (an HMI's mistake): the monitor gets it at its subscription and
    refuses it; a plain request is taken (the self-test then waits for its background)."""
    mqtt_recorder.client.publish("plant1/cam-a/selftest/run", "go", qos=1, retain=True).wait_for_publish(5)

    async def scenario(monitor):
        await mqtt_online(mqtt_recorder)
        await until(lambda: mqtt_sink(monitor).health()["requests_refused"] == 1, what="the retained request refused")
        assert json.loads(retained(mosquitto.port, "plant1/cam-a/selftest"))["status"] == "never"
        await asyncio.to_thread(mqtt_recorder.publish, "plant1/cam-b/selftest/run", "")  # no selftest block
        await asyncio.to_thread(mqtt_recorder.publish, "plant1/cam-a/selftest/run", "")
        waiting = await asyncio.to_thread(mqtt_recorder.wait_for, lambda m: m[0] == "plant1/cam-a/selftest"
                                          and json.loads(m[1])["status"] == "waiting")
        assert json.loads(waiting[0][1])["reason"] == "waiting for 8 contiguous gas-free frames (has 0)"
        assert mqtt_sink(monitor).health()["requests_refused"] == 2
        state = json.loads(retained(mosquitto.port, "plant1/cam-b/state"))
        assert state["selftest_status"] == "off" and state["selftest_time"] is None

    run_monitor(with_selftest(mqtt_config(tmp_path, mosquitto)), scenario)
    assert mqtt_recorder.on("plant1/cam-b/selftest") == []  # only cameras with a selftest block


def test_opcua_run_selftest_is_an_operator_action_on_a_camera_with_a_selftest_block(opcua):
    from asyncua import Client, ua

    config, endpoint = opcua

    async def scenario(monitor):
        async with Client(endpoint) as anonymous:
            cam, idx = await camera_node(anonymous)
            assert await (await cam.get_child(f"{idx}:SelfTestStatus")).read_value() == "never"
            assert await (await cam.get_child(f"{idx}:PodAtReference")).read_value() == -1.0
            with pytest.raises(ua.UaError):  # anonymous_can_acknowledge is false: no method calls
                await cam.call_method(f"{idx}:RunSelfTest")
        async with operator(endpoint) as client:
            cam, idx = await camera_node(client)
            assert await cam.call_method(f"{idx}:RunSelfTest") == "requested"
            status = await cam.get_child(f"{idx}:SelfTestStatus")
            await until(lambda: _is(status, "waiting"), what="the requested self-test waits for its background")
            reason = await (await cam.get_child(f"{idx}:SelfTestReason")).read_value()
            assert reason.startswith("waiting for 8 contiguous gas-free frames")
            cam_b, _ = await camera_node(client, "cam-b")
            assert await (await cam_b.get_child(f"{idx}:SelfTestStatus")).read_value() == "off"
            with pytest.raises(ua.UaStatusCodeError) as refused:
                await cam_b.call_method(f"{idx}:RunSelfTest")
            assert refused.value.code == ua.StatusCodes.BadNotSupported

    run_monitor(with_selftest(opcua[0]), scenario)


def test_modbus_selftest_blocks_start_at_the_offset(modbus):
    config, port = modbus

    async def scenario(monitor):
        async with modbus_client(port) as client:
            await until(lambda: _is_register(client, 4096, 1), what="cam-a's self-test: never run")
            assert await holding(client, 4096, count=8) == [1, 0, 65535, 65535, 0, 0, 65535, 0]
            assert await inputs(client, 4112, count=8) == [0, 0, 65535, 65535, 0, 0, 65535, 0]  # cam-b: off
            monitor.request_selftest("cam-a")
            await until(lambda: _is_register(client, 4096, 2), what="cam-a's self-test waiting")

    run_monitor(with_selftest(config), scenario)
