"""OPC UA server (asyncua): per-camera variables, Alarms & Conditions events, acknowledgement.

Address space (namespace ``namespace``, default ``urn:leakseg:monitor``)::

    Objects/
      LeakSeg/
        Status            String   "online" / "offline"
        SinkHealth        String   JSON: every sink's delivery counters (MQTT events dropped ...)
        <camera>/                           (one object per camera; an event notifier)
          State             String   NORMAL | LEAK | CAMERA_FAULT | SERVICE_FAULT | OFFLINE
          StateCode         Int32    0 | 1 | 2 | 3 | 4
          LeakActive        Boolean
          LeakAreaPixels    Int32    largest plume of the last window, outside the ignore mask
          LeakAreaFraction  Double   0..1
          HighestScore      Double   highest max_score of the last window (0..1)
          CentroidX, CentroidY  Double  plume centroid, pixels (-1 when no plume)
          LastFrameTime     DateTime  when the last frame arrived (UTC)
          FramesAnalysed    Int64
          WindowsDropped    Int64
          CameraHealthy     Boolean
          ServiceHealthy    Boolean
          FaultReason       String
          AlarmId           String   active LEAK alarm ("" when none)
          AlarmAcknowledged Boolean
          Acknowledge(AlarmId: String, Comment: String) -> Int32   (alarms acknowledged; "all" = all)

Every variable is read-only for every client. Events are of type ``LeakSegAlarmType`` (a
subtype of AlarmConditionType) emitted by the camera object, with the standard fields
(Message, Severity, SourceName, ConditionName = LEAK/CAMERA_FAULT/SERVICE_FAULT, ActiveState,
AckedState, Retain) and AlarmId, Camera, Transition (raised/updated/cleared/acknowledged),
AreaPixels, AreaFraction, CentroidX, CentroidY, Evidence.

Security: ``security_policies`` (None, Basic256Sha256_Sign, Basic256Sha256_SignAndEncrypt; the
last two need ``certificate`` and ``private_key``), ``users`` (username/password, passwords from
environment variables; an empty password never logs in, and a user whose variable is set but empty stops
the server's start), ``allow_anonymous`` (anonymous sessions browse, read and subscribe;
they call Acknowledge only with ``anonymous_can_acknowledge``). Nobody writes.
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
    "CameraHealthy": ("Boolean", True),
    "ServiceHealthy": ("Boolean", True),
    "FaultReason": ("String", ""),
    "AlarmId": ("String", ""),
    "AlarmAcknowledged": ("Boolean", True),
}

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
        "LastFrameTime": dt.datetime.fromtimestamp(t, dt.timezone.utc) if t else None,
        "FramesAnalysed": int(snapshot["frames_analysed"]),
        "WindowsDropped": int(snapshot["windows_dropped"]),
        "CameraHealthy": bool(snapshot["camera_ok"]),
        "ServiceHealthy": bool(snapshot["service_ok"]),
        "FaultReason": snapshot.get("camera_fault") or snapshot.get("service_fault") or "",
        "AlarmId": snapshot.get("alarm_id") or "",
        "AlarmAcknowledged": bool(snapshot["acknowledged"]),
    }


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
        for var, (kind, initial) in VARIABLES.items():
            nodes[var] = await obj.add_variable(idx, var, initial, varianttype=vt[kind])
        await obj.add_method(idx, "Acknowledge", self._acknowledge_method(name),
                             [vt["String"], vt["String"]], [vt["Int32"]])
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
                raise ua.UaStatusCodeError(ua.StatusCodes.BadInvalidArgument) from exc
            return [ua.Variant(count, ua.VariantType.Int32)]

        return acknowledge

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        if self.server is None:
            return
        from asyncua import ua

        nodes = self.nodes.get(snapshot["camera"])
        async with self._state_lock:  # snapshots are written whole and in order
            for name, value in _values(snapshot).items():
                if value is None:
                    continue
                await nodes[name].write_value(ua.Variant(value, self._vt[VARIABLES[name][0]]))

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
