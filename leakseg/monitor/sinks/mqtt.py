"""MQTT (paho-mqtt): retained JSON state per camera, alarm events, acknowledgements, last will, sink health.

Topics (PREFIX is ``topic_prefix``, default ``leakseg``), all QoS ``qos`` (default 1):

* ``PREFIX/status``          retained ``online`` / ``offline`` (also the last will, so a crashed
  monitor or a broken link reads ``offline``);
* ``PREFIX/CAMERA/state``    retained JSON: state, leak_active, areas, score, centroid, counters, health
  (``degraded``, ``degraded_reason`` among them: the fields of docs/SCADA.md); ``"state": "OFFLINE"`` after
  a clean stop;
* ``PREFIX/CAMERA/event``    JSON events: alarm_raised, alarm_updated, alarm_cleared,
  alarm_acknowledged, state_changed (not retained);
* ``PREFIX/CAMERA/ack``      subscribed: publish ``{"alarm_id": "...", "by": "name", "comment": "..."}``
  (``"alarm_id": "all"``: every unacknowledged alarm of the camera) to acknowledge. Retained acks are
  ignored (the broker would replay them at every reconnect, acknowledging alarms nobody saw);
* ``PREFIX/CAMERA/selftest`` retained JSON: the camera's self-test (status never/waiting/running/passed/failed/
  error, the last verdict: time, passed, probability of detection at the reference plume, detection limit,
  false alarms per day, reason, report folder) whenever its status changes;
* ``PREFIX/CAMERA/selftest/run`` subscribed: any non-retained message asks for the camera's self-test now
  (the payload is not read); the answer is the ``selftest`` topic going to waiting or running. Retained
  requests (replayed at every reconnect) and unknown cameras are refused and logged;
* ``PREFIX/sink_health``     retained JSON: every sink's delivery counters (events queued and dropped ...).

While the broker is unreachable nothing is handed to paho: retained messages (states, self-tests) are not
queued (the last one per topic is republished once the link is back), events wait in a queue of
``event_queue`` (the oldest are dropped beyond it, counted in ``sink_health``; the JSON lines log keeps
everything). TLS (``tls``: ca_certs, certfile, keyfile) and credentials (``username``, ``password_env``) are
configurable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from collections import deque
from typing import Any, Deque, Dict, Optional, Tuple

from leakseg.monitor.config import MqttSink
from leakseg.monitor.sinks.base import (MAX_BY, MAX_COMMENT, Sink, ack_target, ack_text, bounded, bounded_call,
                                        sink_health)

log = logging.getLogger("leakseg.monitor.mqtt")

#: Messages paho itself may hold (sent but not yet confirmed, e.g. while a dead link is not noticed yet).
PAHO_QUEUE = 100
#: An acknowledgement is a small JSON object; anything larger is refused unread.
MAX_ACK_BYTES = 4096


class MqttPublisher(Sink):
    name = "mqtt"

    def __init__(self, config: MqttSink):
        self.config = config
        self.prefix = config.topic_prefix.rstrip("/")
        self.client = None
        self.monitor = None
        self.events: Deque[Tuple[str, str]] = deque()  # (topic, payload) not yet handed to paho, oldest first
        self.retained: Dict[str, str] = {}  # topic -> its latest retained payload (states, self-tests)
        self.unsent: set = set()  # topics whose latest retained payload the broker does not have yet
        self.events_dropped = 0
        self.acks_refused = 0
        self.requests_refused = 0  # self-test requests
        self._relink = False  # set by paho's thread on (re)connection; the loop then resends the states
        self._health_sent: Optional[str] = None

    def topic(self, *levels: str) -> str:
        return "/".join((self.prefix, *levels))

    async def start(self, monitor) -> None:
        self.monitor = monitor
        self.client = self._client()
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive)
        self.client.loop_start()

    def _client(self):
        import paho.mqtt.client as mqtt

        c = self.config
        client = mqtt.Client(callback_api_version=mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id,
                             clean_session=True)
        client.max_queued_messages_set(PAHO_QUEUE)
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
        return client

    # -- paho's thread ---------------------------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.config.host, self.config.port, reason_code)
            return
        log.info("MQTT connected to %s:%d", self.config.host, self.config.port)
        client.publish(self.topic("status"), "online", qos=self.config.qos, retain=True)
        client.subscribe(self.topic("+", "ack"), qos=self.config.qos)
        client.subscribe(self.topic("+", "selftest", "run"), qos=self.config.qos)
        self._relink = True
        self._wake_loop()

    def _wake_loop(self) -> None:
        """Send what waited for the link on the loop, now (the heartbeat would do it within status_interval)."""
        call = getattr(self.monitor, "call", None)
        if call is not None:
            call(self._send_pending)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties=None) -> None:
        if reason_code != 0:
            log.warning("MQTT link to %s:%d lost (%s); paho reconnects", self.config.host, self.config.port, reason_code)

    def _on_message(self, client, userdata, message) -> None:
        camera, _, command = message.topic[len(self.prefix) + 1:].partition("/")  # camera names hold no "/"
        if command == "selftest/run":
            self._on_selftest_request(camera, message)
        else:
            self._on_ack(camera, message)

    def _on_selftest_request(self, camera: str, message) -> None:
        if message.retain:
            self.requests_refused += 1
            log.warning("MQTT self-test request on %s refused: retained requests are ignored (publish with "
                        "retain=0)", message.topic)
            return
        self.monitor.call(self._request_selftest, camera)

    def _on_ack(self, camera: str, message) -> None:
        if message.retain:
            self._refuse_ack(message.topic, "retained acks are ignored (publish acks with retain=0)")
            return
        try:
            alarm_id, by, comment = self._ack_fields(message.payload)
        except ValueError as exc:
            self._refuse_ack(message.topic, str(exc))
            return
        self.monitor.call(self._ack, camera, alarm_id, by, comment)

    @staticmethod
    def _ack_fields(payload: bytes) -> Tuple[Optional[str], str, str]:
        """(alarm id or None for "all", by, comment) from an ack payload; ValueError when it is not a valid ack."""
        if len(payload) > MAX_ACK_BYTES:
            raise ValueError(f"larger than {MAX_ACK_BYTES} bytes")
        try:
            body = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError("not a JSON object") from None
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        return (ack_target(body.get("alarm_id")), ack_text(body.get("by"), "by", MAX_BY, default="mqtt") or "mqtt",
                ack_text(body.get("comment"), "comment", MAX_COMMENT))

    def _refuse_ack(self, topic: str, why: str) -> None:
        self.acks_refused += 1
        log.warning("MQTT ack on %s refused: %s", topic, why)

    # -- the loop --------------------------------------------------------------------------------

    def _ack(self, camera: str, alarm_id: Optional[str], by: str, comment: str) -> None:
        try:
            self.monitor.acknowledge(camera, alarm_id, by=f"mqtt:{by}", comment=comment)
        except KeyError as exc:
            log.warning("MQTT ack ignored: %s", exc.args[0])

    def _request_selftest(self, camera: str) -> None:
        try:
            answer = self.monitor.request_selftest(camera)
        except KeyError as exc:
            self.requests_refused += 1
            log.warning("MQTT self-test request ignored: %s", exc.args[0])
            return
        log.info("MQTT: self-test of %s %s", camera, "already running" if answer == "running" else "requested")

    def _encode(self, payload: Dict[str, Any]) -> str:
        return json.dumps(payload, default=str, separators=(",", ":"))

    def _hand_to_paho(self, topic: str, payload: str, retain: bool) -> bool:
        """False when paho's own queue is full (the message stays with us)."""
        import paho.mqtt.client as mqtt

        info = self.client.publish(topic, payload, qos=self.config.qos, retain=retain)
        return info.rc != mqtt.MQTT_ERR_QUEUE_SIZE

    def _linked(self) -> bool:
        return self.client is not None and self.client.is_connected()

    def _send_pending(self) -> None:
        """Hand paho what waited: after a (re)connection every camera's latest state first, then the events."""
        if not self._linked():
            return
        if self._relink:
            self._relink = False
            self.unsent.update(self.retained)
            self._publish_health(force=True)
        for topic in list(self.unsent):
            if not self._hand_to_paho(topic, self.retained[topic], retain=True):
                return
            self.unsent.discard(topic)
        while self.events and self._hand_to_paho(*self.events[0], retain=False):
            self.events.popleft()

    async def publish_event(self, event) -> None:
        if len(self.events) >= self.config.event_queue:
            self.events.popleft()  # the oldest goes: the newest events say what is happening now
            self.events_dropped += 1
            if self.events_dropped == 1 or self.events_dropped % 1000 == 0:
                log.warning("MQTT event queue full (%d): %d event(s) dropped so far (the JSON lines log has them)",
                            self.config.event_queue, self.events_dropped)
        self.events.append((self.topic(event.camera, "event"), self._encode(event.to_dict())))
        self._send_pending()

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        self._retain(self.topic(snapshot["camera"], "state"), snapshot)

    async def publish_selftest(self, camera: str, summary: Dict[str, Any]) -> None:
        self._retain(self.topic(camera, "selftest"), summary)

    def _retain(self, topic: str, payload: Dict[str, Any]) -> None:
        """Retained: only the latest matters, so it is never queued while the link is down."""
        self.retained[topic] = self._encode(payload)
        self.unsent.add(topic)
        self._send_pending()

    async def heartbeat(self, snapshots) -> None:
        self._send_pending()
        if self._linked():
            self._publish_health()

    def health(self) -> Dict[str, Any]:
        return {"connected": self._linked(), "events_queued": len(self.events), "events_dropped": self.events_dropped,
                "acks_refused": self.acks_refused, "requests_refused": self.requests_refused}

    def _publish_health(self, force: bool = False) -> None:
        """Retained PREFIX/sink_health, when a counter changed (connected/queued change with every outage)."""
        payload = self._encode(sink_health(getattr(self.monitor, "sinks", [self])))
        if force or payload != self._health_sent:
            self._hand_to_paho(self.topic("sink_health"), payload, retain=True)
            self._health_sent = payload

    async def stop(self) -> None:
        if self.client is None:
            return
        # The cameras' OFFLINE state was published just before; then the monitor goes offline.
        for camera in self.monitor.cameras.values():
            await self.publish_state(camera.snapshot())
        self._publish_health()
        info = self.client.publish(self.topic("status"), "offline", qos=self.config.qos, retain=True)
        await bounded(self._delivered(info), "MQTT's last publications", seconds=2.0)
        if self.events:
            log.warning("MQTT: %d event(s) not delivered at stop (the JSON lines log has them)", len(self.events))
        self.client.disconnect()
        await bounded_call(self.client.loop_stop, "stopping paho's thread", seconds=1.0)
        self.client = None

    async def _delivered(self, info) -> None:
        """Until the broker took the message (nothing to wait for when paho could not even send it)."""
        while info.rc == 0 and self.client.is_connected() and not info.is_published():
            await asyncio.sleep(0.05)
