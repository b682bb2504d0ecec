"""MQTT (paho-mqtt): retained JSON state per camera, alarm events, acknowledgements, last will.

Topics (PREFIX is ``topic_prefix``, default ``leakseg``), all QoS ``qos`` (default 1):

* ``PREFIX/status``          retained ``online`` / ``offline`` (also the last will, so a crashed
  monitor or a broken link reads ``offline``);
* ``PREFIX/CAMERA/state``    retained JSON: state, leak_active, areas, score, centroid, counters
  (the fields of docs/SCADA.md); ``"state": "OFFLINE"`` after a clean stop;
* ``PREFIX/CAMERA/event``    JSON events: alarm_raised, alarm_updated, alarm_cleared,
  alarm_acknowledged, state_changed (not retained);
* ``PREFIX/CAMERA/ack``      subscribed: publish ``{"alarm_id": "...", "by": "name", "comment": "..."}``
  (or an empty payload: every unacknowledged alarm of the camera) to acknowledge.

TLS (``tls``: ca_certs, certfile, keyfile) and credentials (``username``, ``password_env``) are
configurable. Messages published while the broker is unreachable are queued by paho, at most
1000 (the JSON lines log keeps everything).
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from typing import Any, Dict

from leakseg.monitor.config import MqttSink
from leakseg.monitor.sinks.base import Sink

log = logging.getLogger("leakseg.monitor.mqtt")


class MqttPublisher(Sink):
    name = "mqtt"

    def __init__(self, config: MqttSink):
        self.config = config
        self.prefix = config.topic_prefix.rstrip("/")
        self.client = None
        self.monitor = None

    def topic(self, *levels: str) -> str:
        return "/".join((self.prefix, *levels))

    async def start(self, monitor) -> None:
        import paho.mqtt.client as mqtt

        c = self.config
        self.monitor = monitor
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id,
                             clean_session=True)
        client.max_queued_messages_set(1000)
        client.reconnect_delay_set(1, 30)
        if c.username:
            client.username_pw_set(c.username, os.environ.get(c.password_env) if c.password_env else None)
        if c.tls is not None:
            client.tls_set(ca_certs=str(c.tls.ca_certs) if c.tls.ca_certs else None,
                           certfile=str(c.tls.certfile) if c.tls.certfile else None,
                           keyfile=str(c.tls.keyfile) if c.tls.keyfile else None,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(c.tls.insecure)
        client.will_set(self.topic("status"), "offline", qos=c.qos, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self.client = client
        client.connect_async(c.host, c.port, keepalive=c.keepalive)
        client.loop_start()

    # paho thread
    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.config.host, self.config.port, reason_code)
            return
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)
        client.publish(self.topic("status"), "online", qos=self.config.qos, retain=True)
        client.subscribe(self.topic("+", "ack"), qos=self.config.qos)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code != 0:
            log.warning("MQTT link to %s:%d lost (%s); paho reconnects", self.config.host, self.config.port, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        parts = message.topic.split("/")
        camera = parts[-2] if len(parts) >= 2 else ""
        try:
            body = json.loads(message.payload.decode("utf-8")) if message.payload.strip() else {}
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
        except ValueError as exc:
            log.warning("MQTT ack on %s ignored: %s", message.topic, exc)
            return
        alarm_id, by, comment = body.get("alarm_id"), str(body.get("by") or "mqtt"), str(body.get("comment") or "")
        self.monitor.call(self._ack, camera, alarm_id, by, comment)

    def _ack(self, camera: str, alarm_id, by: str, comment: str) -> None:
        try:
            self.monitor.acknowledge(camera, alarm_id, by=f"mqtt:{by}", comment=comment)
        except KeyError as exc:
            log.warning("MQTT ack ignored: %s", exc.args[0])

    # loop
    def _publish(self, topic: str, payload: Dict[str, Any], retain: bool) -> None:
        if self.client is not None:
            self.client.publish(topic, json.dumps(payload, default=str, separators=(",", ":")),
                                qos=self.config.qos, retain=retain)

    async def publish_event(self, event) -> None:
        self._publish(self.topic(event.camera, "event"), event.to_dict(), retain=False)

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        self._publish(self.topic(snapshot["camera"], "state"), snapshot, retain=True)

    async def stop(self) -> None:
        import asyncio

        if self.client is None:
            return
        # The cameras' OFFLINE state was published just before; then the monitor goes offline.
        for snap in [c.snapshot() for c in self.monitor.cameras.values()]:
            self._publish(self.topic(snap["camera"], "state"), snap, retain=True)
        info = self.client.publish(self.topic("status"), "offline", qos=self.config.qos, retain=True)
        for _ in range(50):  # up to 5 s for the broker to take the last messages
            if info.is_published() or not self.client.is_connected():
                break
            await asyncio.sleep(0.1)
        self.client.disconnect()
        self.client.loop_stop()
        self.client = None
