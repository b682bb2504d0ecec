"""The interface every sink implements (all coroutines run on the monitor's loop)."""

from __future__ import annotations

from typing import Any, Dict, List


class Sink:
    name = "sink"

    async def start(self, monitor) -> None:
        """Open connections / start servers. ``monitor.cameras`` and ``monitor.config`` are set."""

    async def publish_event(self, event) -> None:
        """An :class:`~leakseg.monitor.alarm.Event` (alarm raised/updated/cleared/acknowledged, state change)."""

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        """A camera's current values (after every analysed window and every event)."""

    async def heartbeat(self, snapshots: List[Dict[str, Any]]) -> None:
        """Every ``status_interval`` seconds, all cameras."""

    async def stop(self) -> None:
        """The cameras are OFFLINE (their last state was published); close everything."""
