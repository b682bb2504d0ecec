"""Where alarms go: a JSON lines log on disk, MQTT, OPC UA and Modbus TCP (docs/SCADA.md).

Each sink has the same small asynchronous interface (:class:`leakseg.monitor.sinks.base.Sink`);
:func:`build_sinks` makes the ones the configuration asks for. A sink that fails logs a warning
and never stops the others or the alarm logic.
"""

from __future__ import annotations

from typing import List

from leakseg.monitor.config import MonitorConfig
from leakseg.monitor.sinks.base import Sink


def build_sinks(config: MonitorConfig) -> List[Sink]:
    sinks: List[Sink] = []
    s = config.sinks
    if s.jsonl is not None:
        from leakseg.monitor.sinks.jsonl import JsonlLog

        sinks.append(JsonlLog(s.jsonl))
    if s.mqtt is not None:
        from leakseg.monitor.sinks.mqtt import MqttPublisher

        sinks.append(MqttPublisher(s.mqtt))
    if s.opcua is not None:
        from leakseg.monitor.sinks.opcua import OpcUaServer

        sinks.append(OpcUaServer(s.opcua))
    if s.modbus is not None:
        from leakseg.monitor.sinks.modbus import ModbusServer

        sinks.append(ModbusServer(s.modbus))
    return sinks


__all__ = ["Sink", "build_sinks"]
