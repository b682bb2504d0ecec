"""A JSON lines event log on disk, rotated by size: nothing is lost while a SCADA link is down.

One JSON object per line, flushed at once: the monitor's start and stop, every event, a ``selftest`` line
per status change of a camera's self-test, sink health changes (and every state with ``states``). ``path``
rotates to ``path.1`` (and ``path.1`` to ``path.2`` ...) when it reaches ``max_bytes``; ``backups`` files
are kept.

The disk can fail (a rotation target in the way, the folder removed, the disk full): then the lines wait in
memory (at most MAX_PENDING_LINES; beyond it the oldest are dropped and counted) and every later line and
every heartbeat tries again, so the log resumes by itself once the disk is usable. Its counters are the sink's
health (``sink_health`` lines, MQTT's ``PREFIX/sink_health``).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Deque, Dict

from leakseg.monitor.config import JsonlSink
from leakseg.monitor.sinks.base import Sink, sink_health

log = logging.getLogger("leakseg.monitor.jsonl")

#: Lines kept in memory while the file cannot be written.
MAX_PENDING_LINES = 10_000
#: Health values that come and go with every outage; a sink_health line is written when the others change.
TRANSIENT = ("connected", "events_queued", "lines_pending")


class JsonlLog(Sink):
    name = "jsonl"

    def __init__(self, config: JsonlSink):
        self.config = config
        self.path = Path(config.path)
        self._file = None
        self.pending: Deque[str] = deque()  # lines not on disk yet, oldest first
        self.lines_dropped = 0
        self.write_failures = 0
        self._failing = False
        self._health_logged: Dict[str, Any] = {}
        self.monitor = None

    async def start(self, monitor) -> None:
        self.monitor = monitor
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self.write({"type": "monitor_started", "time": time.time(), "cameras": list(monitor.cameras)})

    def write(self, record: Dict[str, Any]) -> None:
        if len(self.pending) >= MAX_PENDING_LINES:
            self.pending.popleft()
            self.lines_dropped += 1
        self.pending.append(json.dumps(record, default=str, separators=(",", ":")) + "\n")
        self._flush()

    def _flush(self) -> None:
        """Write the pending lines, rotating as needed; on a disk error keep them for the next try."""
        try:
            while self.pending:
                self._write_line(self.pending[0])
                self.pending.popleft()
        except OSError as exc:
            self._failed(exc)
            return
        if self._failing:
            self._failing = False
            log.warning("event log %s writable again; the waiting lines are written", self.path)

    def _write_line(self, line: str) -> None:
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")
        size = self._file.tell()
        if size > 0 and size + len(line) > self.config.max_bytes:
            self._rotate()
        self._file.write(line)
        self._file.flush()

    def _failed(self, exc: OSError) -> None:
        self.write_failures += 1
        if not self._failing:  # once per failing spell, not once per line
            self._failing = True
            log.warning("event log %s: %s; keeping lines in memory (at most %d) and retrying", self.path, exc,
                        MAX_PENDING_LINES)

    def _rotate(self) -> None:
        """Shift the backups while the current file stays open: a failed rename leaves everything as it was."""
        if self.config.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.config.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            if self.path.exists():
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file.close()
        self._file = None
        self._file = open(self.path, "a", encoding="utf-8")

    async def publish_event(self, event) -> None:
        self.write(event.to_dict())

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        if self.config.states:
            self.write({"type": "state", **snapshot})

    async def publish_selftest(self, camera: str, summary: Dict[str, Any]) -> None:
        """A line per status change of a camera's self-test (waiting, running, its outcome or why it could not
        run): ``{"type": "selftest", "time": now, "camera": ..., "selftest": summary}``."""
        self.write({"type": "selftest", "time": time.time(), "camera": camera, "selftest": summary})

    async def heartbeat(self, snapshots) -> None:
        self._flush()  # retry a failed disk even when no event comes
        self._log_sink_health()

    def _log_sink_health(self) -> None:
        """A ``sink_health`` line whenever a sink's delivery counters changed (MQTT drops during an outage ...)."""
        health = sink_health(getattr(self.monitor, "sinks", [self]))
        counters = {name: {k: v for k, v in values.items() if k not in TRANSIENT} for name, values in health.items()}
        if counters != self._health_logged and any(any(v.values()) for v in counters.values()):
            self._health_logged = counters
            self.write({"type": "sink_health", "time": time.time(), "sinks": health})

    def health(self) -> Dict[str, Any]:
        return {"lines_pending": len(self.pending), "lines_dropped": self.lines_dropped,
                "write_failures": self.write_failures}

    async def stop(self) -> None:
        self.write({"type": "monitor_stopped", "time": time.time()})
        if self.pending:
            log.error("event log %s: %d line(s) could not be written at stop (%d dropped before)", self.path,
                      len(self.pending), self.lines_dropped)
        if self._file is not None:
            self._file.close()
            self._file = None
