"""A JSON lines event log on disk, rotated by size: nothing is lost while a SCADA link is down.

One JSON object per line, flushed at once. ``path`` rotates to ``path.1`` (and ``path.1`` to
``path.2`` ...) when it reaches ``max_bytes``; ``backups`` files are kept.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Dict

from leakseg.monitor.config import JsonlSink
from leakseg.monitor.sinks.base import Sink


class JsonlLog(Sink):
    name = "jsonl"

    def __init__(self, config: JsonlSink):
        self.config = config
        self.path = Path(config.path)
        self._file = None

    async def start(self, monitor) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")
        self.write({"type": "monitor_started", "time": time.time(), "cameras": list(monitor.cameras)})

    def write(self, record: Dict[str, Any]) -> None:
        if self._file is None:
            return
        line = json.dumps(record, default=str, separators=(",", ":")) + "\n"
        if self._file.tell() + len(line) > self.config.max_bytes and self._file.tell() > 0:
            self._rotate()
        self._file.write(line)
        self._file.flush()

    def _rotate(self) -> None:
        self._file.close()
        if self.config.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for i in range(self.config.backups - 1, 0, -1):
                older = self.path.with_name(f"{self.path.name}.{i}")
                if older.exists():
                    os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
            os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file = open(self.path, "a", encoding="utf-8")

    async def publish_event(self, event) -> None:
        self.write(event.to_dict())

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        if self.config.states:
            self.write({"type": "state", **snapshot})

    async def stop(self) -> None:
        self.write({"type": "monitor_stopped", "time": time.time()})
        if self._file is not None:
            self._file.close()
            self._file = None
