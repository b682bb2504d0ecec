"""Modbus TCP server (pymodbus) for PLCs and older SCADA: a fixed register map per camera.

Each camera owns 16 registers from its base (``modbus_base``, default 16 x its position in the
``cameras`` list). The same values answer *holding register* reads (function 3) and *input
register* reads (function 4); every write is refused (exception 2, illegal address): the map is
read-only for clients. Offsets from the camera's base:

====  =======================  =============================================================
 +0   state                    0 NORMAL, 1 LEAK, 2 CAMERA_FAULT, 3 SERVICE_FAULT, 4 OFFLINE, 5 DEGRADED
 +1   leak active              0 / 1
 +2   leak area, per mille     largest plume of the last window, 0..1000 (of the frame)
 +3   score, per mille         highest max_score of the last window, 0..1000
 +4   heartbeat                +1 every ``heartbeat_seconds`` while the monitor runs (wraps at 65535)
 +5   frames analysed, low 16 bits
 +6   frames analysed, high 16 bits
 +7   windows dropped          saturates at 65535
 +8   camera healthy           0 / 1
 +9   service healthy          0 / 1
+10   alarm acknowledged       0 / 1 (1 when no alarm is active)
+11   leak area, pixels        saturates at 65535
+12   centroid x, pixels       65535 when no plume
+13   centroid y, pixels       65535 when no plume
+14   alarm counter            LEAK alarms raised since start (wraps)
+15   can see gas              1 / 0: 0 while the camera is DEGRADED (its picture cannot show gas, or its
                               self-test failed), also while a fault or LEAK outranks DEGRADED in +0
====  =======================  =============================================================

Each camera also owns 8 *self-test* registers from its base + ``selftest_offset`` (default 4096: camera 0's
are 4096-4103, camera 1's 4112-4119, ...). They say what its last scheduled or requested self-test
(:mod:`leakseg.monitor.selftests`) measured; between self-tests, and after one that could not run (status 6),
+1..+6 keep the last completed self-test's values:

====  =======================  =============================================================
 +0   self-test status         0 off (no selftest block), 1 never run, 2 waiting (for gas-free
                               background frames), 3 running, 4 passed, 5 failed, 6 error (could not run)
 +1   passed                   0 / 1: the probability of detection at the reference plume reached the target
 +2   PoD at reference         per mille, 0..1000; 65535 when no self-test completed yet
 +3   detection limit, pixels  the smallest plume detected with the target probability; saturates at
                               65534; 65535 when none in the grid reached it, or no self-test yet
 +4   time, high 16 bits       Unix time (s) the last completed self-test finished; 0 / 0 when never
 +5   time, low 16 bits
 +6   false alarms per day x10 on the camera's clean background; saturates at 65534; 65535 when never
 +7   reserved                 0
====  =======================  =============================================================
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Dict, List

from leakseg.monitor.alarm import State
from leakseg.monitor.config import CAMERA_REGISTERS, SELFTEST_REGISTERS, ModbusSink
from leakseg.monitor.sinks.base import Sink, bounded

log = logging.getLogger("leakseg.monitor.modbus")

REGISTERS_PER_CAMERA = CAMERA_REGISTERS
#: The self-test status register's codes (+0 of the self-test block).
SELFTEST_CODES = {"off": 0, "never": 1, "waiting": 2, "running": 3, "passed": 4, "failed": 5, "error": 6}
#: A self-test register without a value (never run; no detection limit in the grid).
NONE = 65535


def sat(v: float, top: int = 65535) -> int:
    return max(0, min(top, int(round(v))))


def registers(snapshot: Dict[str, Any], heartbeat: int, alarms: int) -> List[int]:
    """The 16 registers of one camera."""
    frames = int(snapshot["frames_analysed"]) & 0xFFFFFFFF
    cx, cy = snapshot.get("centroid_x"), snapshot.get("centroid_y")
    return [
        int(snapshot["state_code"]),
        int(bool(snapshot["leak_active"])),
        sat(1000 * float(snapshot["leak_area_fraction"])),
        sat(1000 * float(snapshot["score"])),
        heartbeat & 0xFFFF,
        frames & 0xFFFF,
        frames >> 16,
        sat(snapshot["windows_dropped"]),
        int(bool(snapshot["camera_ok"])),
        int(bool(snapshot["service_ok"])),
        int(bool(snapshot["acknowledged"])),
        sat(snapshot["leak_area_pixels"]),
        sat(cx) if cx is not None else 65535,
        sat(cy) if cy is not None else 65535,
        alarms & 0xFFFF,
        int(not snapshot["degraded"]),
    ]


def selftest_registers(summary: Dict[str, Any]) -> List[int]:
    """The 8 self-test registers of one camera, from its self-test summary (SelfTestStatus.to_dict)."""
    def known(value, scale: float) -> int:
        return NONE if value is None else sat(scale * value, NONE - 1)

    finished = int(summary["time"] or 0) & 0xFFFFFFFF
    pod = summary.get("probability_at_reference")
    return [
        SELFTEST_CODES[summary["status"]],
        int(bool(summary.get("passed"))),
        NONE if pod is None else sat(1000 * pod, 1000),
        known(summary.get("detection_limit_pixels"), 1),
        finished >> 16,
        finished & 0xFFFF,
        known(summary.get("false_alarms_per_day"), 10),
        0,
    ]


#: A camera without a self-test (or before the scheduler's first word).
SELFTEST_OFF = selftest_registers({"status": "off", "time": None})


class ModbusServer(Sink):
    name = "modbus"

    def __init__(self, config: ModbusSink):
        self.config = config
        self.values: List[int] = []
        self.bases: Dict[str, int] = {}
        self.heartbeat_count = 0
        self.alarms: Dict[str, int] = {}
        self.last: Dict[str, Dict[str, Any]] = {}
        self.server = None
        self._task = None
        self._beat = None

    async def start(self, monitor) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        self.bases = {name: monitor.config.modbus_base(i) for i, name in enumerate(monitor.cameras)}
        size = max(self.bases.values()) + self.config.selftest_offset + SELFTEST_REGISTERS
        self.values = [0] * size
        for name, camera in monitor.cameras.items():
            self.alarms[name] = 0
            self._store(camera.snapshot())
            self._store_selftest(name, SELFTEST_OFF)
        device = SimDevice(
            id=self.config.device_id,
            simdata=[SimData(0, count=size, values=0, datatype=DataType.REGISTERS, readonly=True)],
            action=self._action,
        )
        self.server = ModbusTcpServer(device, address=(self.config.host, self.config.port))
        if not await self.server.listen():  # pymodbus logs the reason and returns False
            self.server = None
            raise OSError(f"cannot listen on {self.config.host}:{self.config.port} (in use, or not allowed)")
        self._beat = asyncio.create_task(self._heartbeat())
        log.info("Modbus TCP server on %s:%d (device id %d, %d registers, read-only)",
                 self.config.host, self.config.port, self.config.device_id, size)

    async def _action(self, function_code, start_address, address, count, current_registers, set_values):
        """Called by pymodbus on every request: serve the current values (writes never get here:
        the block is read-only)."""
        current_registers[:] = self.values
        return None

    def _store(self, snapshot: Dict[str, Any]) -> None:
        name = snapshot["camera"]
        self.last[name] = snapshot
        base = self.bases[name]
        self.values[base : base + REGISTERS_PER_CAMERA] = registers(snapshot, self.heartbeat_count,
                                                                     self.alarms.get(name, 0))

    def _store_selftest(self, camera: str, block: List[int]) -> None:
        start = self.bases[camera] + self.config.selftest_offset
        self.values[start : start + SELFTEST_REGISTERS] = block

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            self.heartbeat_count = (self.heartbeat_count + 1) & 0xFFFF
            for name, base in self.bases.items():
                self.values[base + 4] = self.heartbeat_count

    async def publish_event(self, event) -> None:
        if event.type == "alarm_raised" and event.alarm is not None and event.alarm.kind == State.LEAK:
            self.alarms[event.camera] = self.alarms.get(event.camera, 0) + 1

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        if self.values:
            self._store(snapshot)

    async def publish_selftest(self, camera: str, summary: Dict[str, Any]) -> None:
        if self.values:
            self._store_selftest(camera, selftest_registers(summary))

    async def stop(self) -> None:
        if self._beat is not None:
            self._beat.cancel()
        if self.server is not None:
            await bounded(self.server.shutdown(), "stopping the Modbus server", seconds=2.0)
            self.server = None
