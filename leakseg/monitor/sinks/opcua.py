"""OPC UA server (asyncua): per-camera variables, Alarms & Conditions events, acknowledgement.

Address space (namespace ``namespace``, default ``urn:leakseg:monitor``)::

    Objects/
      LeakSeg/
        Status            String   "online" / "offline"
        SinkHealth        String   JSON: every sink's delivery counters (MQTT events dropped ...)
        <camera>/                           (one object per camera; an event notifier)
          State             String   NORMAL | LEAK | CAMERA_FAULT | SERVICE_FAULT | OFFLINE | DEGRADED
          StateCode         Int32    0 | 1 | 2 | 3 | 4 | 5
          LeakActive        Boolean
          LeakAreaPixels    Int32    largest plume of the last window, outside the ignore mask
          LeakAreaFraction  Double   0..1
          HighestScore      Double   highest max_score of the last window (0..1)
          CentroidX, CentroidY  Double  plume centroid, pixels (-1 when no plume)
          LastFrameTime     DateTime  when the last frame arrived (UTC)
          FramesAnalysed    Int64
          WindowsDropped    Int64
          WindowsSkipped    Int64    still windows the change gate did not send to the model
          FramesSkipped     Int64    their reported frames (judged clear without the model)
          CameraHealthy     Boolean
          ServiceHealthy    Boolean
          FaultReason       String
          Degraded          Boolean  the camera cannot see gas (DEGRADED, also under a LEAK or a fault)
          DegradedReason    String   why, per source ("" when not degraded)
          AlarmId           String   active LEAK alarm ("" when none)
          AlarmAcknowledged Boolean
          SelfTestStatus    String   off | never | waiting | running | passed | failed | error
          SelfTestTime      DateTime when the last completed self-test finished (UTC; null: never)
          SelfTestPassed    Boolean  its probability of detection at the reference plume reached the target
          PodAtReference    Double   that probability, 0..1 (-1: no self-test yet)
          DetectionLimitPixels Int32 smallest plume detected with the target probability (-1: none, or never)
          SelfTestReason    String   why it passed or failed, why it could not run, or what it waits for
          Acknowledge(AlarmId: String, Comment: String) -> Int32   (alarms acknowledged; "all" = all)
          RunSelfTest() -> String   "requested", or "running" when it already runs (BadNotSupported: the
                                    camera has no selftest block)

Every variable is read-only for every client. Events are of type ``LeakSegAlarmType`` (a
subtype of AlarmConditionType) emitted by the camera object, with the standard fields
(Message, Severity, SourceName, ConditionName = LEAK/CAMERA_FAULT/SERVICE_FAULT/DEGRADED, ActiveState,
AckedState, Retain) and AlarmId, Camera, Transition (raised/updated/cleared/acknowledged),
AreaPixels, AreaFraction, CentroidX, CentroidY, Evidence.

Security: ``security_policies`` (None, Basic256Sha256_Sign, Basic256Sha256_SignAndEncrypt; the
last two need ``certificate`` and ``private_key``), ``users`` (username/password, passwords from
environment variables; an empty password never logs in, and a user whose variable is set but empty stops
the server's start), ``allow_anonymous`` (anonymous sessions browse, read and subscribe;
they call Acknowledge and RunSelfTest only with ``anonymous_can_acknowledge``). Nobody writes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hmac
import json
import logging
import os
from typing import Any, Dict, List

from leakseg.monitor.config import OpcUaSink
from leakseg.monitor.sinks.base import MAX_COMMENT, Sink, ack_target, ack_text, bounded, sink_health

log = logging.getLogger("leakseg.monitor.opcua")

#: name -> (variant type name, initial value)
VARIABLES = {
    "State": ("String", "NORMAL"),
    "StateCode": ("Int32", 0),
    "LeakActive": ("Boolean", False),
    "LeakAreaPixels": ("Int32", 0),
    "LeakAreaFraction": ("Double", 0.0),
    "HighestScore": ("Double", 0.0),
    "CentroidX": ("Double", -1.0),
    "CentroidY": ("Double", -1.0),
    "LastFrameTime": ("DateTime", None),
    "FramesAnalysed": ("Int64", 0),
    "WindowsDropped": ("Int64", 0),
    "WindowsSkipped": ("Int64", 0),
    "FramesSkipped": ("Int64", 0),
    "CameraHealthy": ("Boolean", True),
    "ServiceHealthy": ("Boolean", True),
    "FaultReason": ("String", ""),
    "Degraded": ("Boolean", False),
    "DegradedReason": ("String", ""),
    "AlarmId": ("String", ""),
    "AlarmAcknowledged": ("Boolean", True),
}

#: The self-test's variables (name -> (variant type name, initial value)), written from its summary
#: (:meth:`OpcUaServer.publish_selftest`); "off" until the monitor's self-test scheduler says otherwise.
SELFTEST_VARIABLES = {
    "SelfTestStatus": ("String", "off"),
    "SelfTestTime": ("DateTime", None),
    "SelfTestPassed": ("Boolean", False),
    "PodAtReference": ("Double", -1.0),
    "DetectionLimitPixels": ("Int32", -1),
    "SelfTestReason": ("String", ""),
}
VARIANT_TYPES = {name: kind for name, (kind, _) in {**VARIABLES, **SELFTEST_VARIABLES}.items()}

EVENT_FIELDS = [("AlarmId", "String"), ("Camera", "String"), ("Transition", "String"), ("AreaPixels", "Int32"),
                ("AreaFraction", "Double"), ("CentroidX", "Double"), ("CentroidY", "Double"), ("Evidence", "String")]


def _values(snapshot: Dict[str, Any]) -> Dict[str, Any]:
    t = snapshot.get("last_frame_time")
    return {
        "State": snapshot["state"],
        "StateCode": int(snapshot["state_code"]),
        "LeakActive": bool(snapshot["leak_active"]),
        "LeakAreaPixels": int(min(snapshot["leak_area_pixels"], 2**31 - 1)),
        "LeakAreaFraction": float(snapshot["leak_area_fraction"]),
        "HighestScore": float(snapshot["score"]),
        "CentroidX": float(snapshot["centroid_x"]) if snapshot.get("centroid_x") is not None else -1.0,
        "CentroidY": float(snapshot["centroid_y"]) if snapshot.get("centroid_y") is not None else -1.0,
        "LastFrameTime": _utc(t),
        "FramesAnalysed": int(snapshot["frames_analysed"]),
        "WindowsDropped": int(snapshot["windows_dropped"]),
        "WindowsSkipped": int(snapshot["windows_skipped"]),
        "FramesSkipped": int(snapshot["frames_skipped"]),
        "CameraHealthy": bool(snapshot["camera_ok"]),
        "ServiceHealthy": bool(snapshot["service_ok"]),
        "FaultReason": snapshot.get("camera_fault") or snapshot.get("service_fault") or "",
        "Degraded": bool(snapshot["degraded"]),
        "DegradedReason": snapshot.get("degraded_reason") or "",
        "AlarmId": snapshot.get("alarm_id") or "",
        "AlarmAcknowledged": bool(snapshot["acknowledged"]),
    }


def _selftest_values(summary: Dict[str, Any]) -> Dict[str, Any]:
    t, pod, limit = summary.get("time"), summary.get("probability_at_reference"), summary.get("detection_limit_pixels")
    return {
        "SelfTestStatus": summary["status"],
        "SelfTestTime": _utc(t),
        "SelfTestPassed": bool(summary.get("passed")),
        "PodAtReference": float(pod) if pod is not None else -1.0,
        "DetectionLimitPixels": int(min(limit, 2**31 - 1)) if limit is not None else -1,
        "SelfTestReason": summary.get("reason") or "",
    }


def _utc(t: Any) -> Any:
    return dt.datetime.fromtimestamp(t, dt.timezone.utc) if t else None


class OpcUaServer(Sink):
    name = "opcua"

    def __init__(self, config: OpcUaSink):
        self.config = config
        self.server = None
        self.monitor = None
        self.nodes: Dict[str, Dict[str, Any]] = {}
        self.objects: Dict[str, Any] = {}
        self.generators: Dict[str, Any] = {}
        self.status = None
        self.sink_health = None
        self._vt = {}
        # One event generator per camera holds the fields of the next event: set them and trigger under
        # a lock, or a burst of events (raised + cleared in one window) would send the last one's fields twice.
        self._event_lock = asyncio.Lock()
        self._state_lock = asyncio.Lock()

    async def start(self, monitor) -> None:
        from asyncua import ua

        self.monitor = monitor
        c = self.config
        empty = empty_passwords(c)
        if empty:
            raise ValueError(f"the password of OPC UA user(s) {', '.join(empty)} is empty (set its variable)")
        server = await self._configured_server()
        idx = await server.register_namespace(c.namespace)
        vt = {name: getattr(ua.VariantType, name) for name in ("String", "Int32", "Int64", "Double", "Boolean", "DateTime")}
        self._vt = vt
        etype = await server.create_custom_event_type(
            idx, "LeakSegAlarmType", ua.ObjectIds.AlarmConditionType,
            [(name, vt[kind]) for name, kind in EVENT_FIELDS])
        root = await server.nodes.objects.add_object(idx, "LeakSeg")
        self.status = await root.add_variable(idx, "Status", "online", varianttype=vt["String"])
        self.sink_health = await root.add_variable(idx, "SinkHealth", "{}", varianttype=vt["String"])
        for name in monitor.cameras:
            await self._add_camera(server, root, idx, etype, name)
        await server.start()
        self.server = server
        log.info("OPC UA server on %s (policies %s, anonymous %s)", c.endpoint, ",".join(c.security_policies),
                 "read-only" if c.allow_anonymous else "off")

    async def _configured_server(self):
        """The endpoint, its security policies, who may log in and the certificate, from the configuration."""
        from asyncua import Server, ua

        c = self.config
        server = Server(user_manager=_Users(c))
        await server.init()
        server.set_endpoint(c.endpoint)
        server.set_server_name("leakseg monitor")
        policies = {"None": ua.SecurityPolicyType.NoSecurity,
                    "Basic256Sha256_Sign": ua.SecurityPolicyType.Basic256Sha256_Sign,
                    "Basic256Sha256_SignAndEncrypt": ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt}
        server.set_security_policy([policies[p] for p in c.security_policies], permission_ruleset=_Rules(c))
        tokens = [ua.UserNameIdentityToken] if c.users else []
        if c.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        if c.certificate and c.private_key:
            await server.load_certificate(str(c.certificate))
            await server.load_private_key(str(c.private_key))
        return server

    async def _add_camera(self, server, root, idx: int, etype, name: str) -> None:
        """The camera's object: its variables, its Acknowledge method and its alarm events."""
        from asyncua import ua

        vt = self._vt
        obj = await root.add_object(idx, name)
        await obj.write_attribute(ua.AttributeIds.EventNotifier, ua.DataValue(ua.Variant(1, ua.VariantType.Byte)))
        nodes = {}
        for var, (kind, initial) in {**VARIABLES, **SELFTEST_VARIABLES}.items():
            nodes[var] = await obj.add_variable(idx, var, initial, varianttype=vt[kind])
        await obj.add_method(idx, "Acknowledge", self._acknowledge_method(name),
                             [vt["String"], vt["String"]], [vt["Int32"]])
        await obj.add_method(idx, "RunSelfTest", self._run_selftest_method(name), [], [vt["String"]])
        self.nodes[name] = nodes
        self.objects[name] = obj
        self.generators[name] = await server.get_event_generator(etype, obj)

    def _acknowledge_method(self, camera: str):
        from asyncua import ua

        async def acknowledge(parent, alarm_id, comment):
            alarm = alarm_id.Value if hasattr(alarm_id, "Value") else alarm_id
            text = comment.Value if hasattr(comment, "Value") else comment
            try:
                alarm = ack_target(alarm)  # an alarm id or "all", as over MQTT: an empty id never means all
                text = ack_text(text, "Comment", MAX_COMMENT)
                count = self.monitor.acknowledge(camera, alarm, by="opcua", comment=text)
            except (KeyError, ValueError) as exc:
                return _refused(ua.StatusCodes.BadInvalidArgument, f"Acknowledge on {camera}", exc)
            return [ua.Variant(count, ua.VariantType.Int32)]

        return acknowledge

    def _run_selftest_method(self, camera: str):
        from asyncua import ua

        async def run_selftest(parent):
            try:
                answer = self.monitor.request_selftest(camera)
            except KeyError as exc:
                return _refused(ua.StatusCodes.BadNotSupported, f"RunSelfTest on {camera}", exc)
            log.info("OPC UA: self-test of %s %s", camera, "already running" if answer == "running" else "requested")
            return [ua.Variant(answer, ua.VariantType.String)]

        return run_selftest

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        await self._write(snapshot["camera"], _values(snapshot))

    async def publish_selftest(self, camera: str, summary: Dict[str, Any]) -> None:
        await self._write(camera, _selftest_values(summary))

    async def _write(self, camera: str, values: Dict[str, Any]) -> None:
        """The camera's variables, written whole and in order (None leaves a value as it is)."""
        if self.server is None:
            return
        from asyncua import ua

        nodes = self.nodes.get(camera)
        async with self._state_lock:
            for name, value in values.items():
                if value is not None:
                    await nodes[name].write_value(ua.Variant(value, self._vt[VARIANT_TYPES[name]]))

    async def publish_event(self, event) -> None:
        if self.server is None or event.alarm is None:
            return
        from asyncua import ua

        from leakseg.monitor.alarm import SEVERITY

        async with self._event_lock:
            await self._trigger(event, ua, SEVERITY)

    async def _trigger(self, event, ua, SEVERITY) -> None:
        alarm = event.alarm
        transition = event.type.replace("alarm_", "")
        gen = self.generators[event.camera]
        ev = gen.event
        ev.Message = ua.LocalizedText(event.message)
        ev.Severity = SEVERITY.get(alarm.kind, 500)
        ev.SourceName = event.camera
        ev.ConditionName = alarm.kind.value
        ev.Retain = alarm.active or not alarm.acknowledged
        ev.ActiveState = ua.LocalizedText("Active" if alarm.active else "Inactive")
        setattr(ev, "ActiveState/Id", alarm.active)
        ev.AckedState = ua.LocalizedText("Acknowledged" if alarm.acknowledged else "Unacknowledged")
        setattr(ev, "AckedState/Id", alarm.acknowledged)
        ev.Time = dt.datetime.fromtimestamp(event.time, dt.timezone.utc)
        ev.AlarmId = alarm.id
        ev.Camera = event.camera
        ev.Transition = transition
        ev.AreaPixels = int(alarm.peak_area_pixels)
        ev.AreaFraction = float(alarm.peak_area_fraction)
        ev.CentroidX = float(alarm.centroid[0]) if alarm.centroid else -1.0
        ev.CentroidY = float(alarm.centroid[1]) if alarm.centroid else -1.0
        ev.Evidence = alarm.evidence or ""
        await gen.trigger(message=event.message)

    async def heartbeat(self, snapshots) -> None:
        if self.server is not None:
            await self.sink_health.write_value(json.dumps(sink_health(self.monitor.sinks), separators=(",", ":")))

    async def stop(self) -> None:
        if self.server is None:
            return
        await bounded(self._publish_offline(), "OPC UA's last values", seconds=1.0)
        await bounded(self.server.stop(), "stopping the OPC UA server", seconds=2.0)
        self.server = None

    async def _publish_offline(self) -> None:
        for camera in self.monitor.cameras.values():
            await self.publish_state(camera.snapshot())
        await self.status.write_value("offline")


def _refused(code: int, what: str, exc: Exception):
    """A method call refused with its own status code (asyncua answers an exception raised in a method with
    BadUnexpectedError, whatever it is)."""
    from asyncua import ua

    log.warning("OPC UA %s refused: %s", what, exc)
    return ua.StatusCode(code)


def empty_passwords(config: OpcUaSink) -> List[str]:
    """The users whose password variable is set but empty (a login with an empty password would pass)."""
    return [user.name for user in config.users if os.environ.get(user.password_env) == ""]


class _Users:
    """Username/password from the configuration (passwords from environment variables)."""

    def __init__(self, config: OpcUaSink):
        self.config = config

    def get_user(self, iserver, username=None, password=None, certificate=None):
        from asyncua.crypto.permission_rules import User, UserRole

        if username is None:  # anonymous token (a certificate here only secures the channel)
            return User(role=UserRole.Anonymous) if self.config.allow_anonymous else None
        for user in self.config.users:
            expected = os.environ.get(user.password_env)
            if (username == user.name and expected and password  # an empty password is no password
                    and hmac.compare_digest(str(password).encode(), expected.encode())):
                return User(role=UserRole.User, name=username)
        return None


class _Rules:
    """Anonymous: browse, read, subscribe (and call Acknowledge if allowed). Users: also call. Nobody writes."""

    def __init__(self, config: OpcUaSink):
        from asyncua import ua
        from asyncua.crypto.permission_rules import USER_TYPES, UserRole

        write = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
        call = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
        user = {ua.NodeId(t) for t in USER_TYPES} - {write}
        anonymous = user if config.anonymous_can_acknowledge else user - {call}
        self.allowed = {UserRole.Admin: user, UserRole.User: user, UserRole.Anonymous: anonymous}

    def check_validity(self, user, action_type_id, body):
        return action_type_id in self.allowed.get(user.role, set())
