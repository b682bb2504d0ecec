"""``leakseg monitor``: cameras -> overlapping clips -> the leakseg service -> alarms -> SCADA.

* :mod:`leakseg.monitor.config`     the YAML file, pydantic-validated (every key in docs/SCADA.md)
* :mod:`leakseg.monitor.sources`    video URLs/files through PyAV, drop folders; faults, reconnects
* :mod:`leakseg.monitor.windows`    overlapping windows (every frame gets its published triplet once)
* :mod:`leakseg.monitor.alarm`      the per-camera state machine (k of n, hysteresis, faults)
* :mod:`leakseg.monitor.sinks`      JSON lines log, MQTT, OPC UA, Modbus TCP
* :mod:`leakseg.monitor.measure`    a window's result -> per-frame observations, after the ignore mask
* :mod:`leakseg.monitor.zones`      a camera's ignored pixels (ignore_mask image, zone polygons) per frame size
* :mod:`leakseg.monitor.segmenters` the model: the service through the client SDK, or a .mar in process
* :mod:`leakseg.monitor.camera`     one camera's state on the loop: window queue, counters, snapshot
* :mod:`leakseg.monitor.evidence`   per-alarm evidence folders: alarm JSON, window overlays, pruning
* :mod:`leakseg.monitor.status`     the live status table in a terminal
* :mod:`leakseg.monitor.runner`     the asyncio loop tying them together: start, run until stopped, drain
"""

from leakseg.monitor.alarm import Alarm, AlarmLogic, Event, Observation, State
from leakseg.monitor.config import ConfigError, MonitorConfig, load_config, parse_config

__all__ = ["Alarm", "AlarmLogic", "ConfigError", "Event", "MonitorConfig", "Observation", "State",
           "load_config", "parse_config"]
