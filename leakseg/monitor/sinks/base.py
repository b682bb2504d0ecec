"""The interface every sink implements (all coroutines run on the monitor's loop), and what sinks share:
bounded stops and the rules for an acknowledgement's fields."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Awaitable, Dict, List, Optional

log = logging.getLogger("leakseg.monitor.sinks")

#: Each sink's stop (its final publications included) finishes within this, so the whole shutdown fits a
#: container's grace period even when a broker or a client hangs.
STOP_SECONDS = 3.0

#: An acknowledgement's ``by`` and ``comment``: printable text of at most these lengths (they reach logs, event
#: payloads and HMIs verbatim).
MAX_BY = 64
MAX_COMMENT = 256
MAX_ALARM_ID = 128
#: The explicit "acknowledge every unacknowledged alarm of the camera" (MQTT ``{"alarm_id": "all"}``).
ALL_ALARMS = "all"


class Sink:
    name = "sink"

    async def start(self, monitor) -> None:
        """Open connections / start servers. ``monitor.cameras`` and ``monitor.config`` are set."""

    async def publish_event(self, event) -> None:
        """An :class:`~leakseg.monitor.alarm.Event` (alarm raised/updated/cleared/acknowledged, state change)."""

    async def publish_state(self, snapshot: Dict[str, Any]) -> None:
        """A camera's current values (after every analysed window and every event)."""

    async def publish_selftest(self, camera: str, summary: Dict[str, Any]) -> None:
        """A camera's self-test status changed (waiting, running, its outcome): ``summary`` is
        :meth:`leakseg.monitor.selftests.SelfTestStatus.to_dict`."""

    async def heartbeat(self, snapshots: List[Dict[str, Any]]) -> None:
        """Every ``status_interval`` seconds, all cameras."""

    async def stop(self) -> None:
        """The cameras are OFFLINE (their last state was published); close everything within STOP_SECONDS."""

    def health(self) -> Dict[str, Any]:
        """Counters of what this sink could not deliver (published as sink health); empty when it loses nothing."""
        return {}


def sink_health(sinks) -> Dict[str, Dict[str, Any]]:
    """Every sink's health counters, by sink name (those that report any)."""
    return {sink.name: sink.health() for sink in sinks if sink.health()}


async def bounded(step: Awaitable[Any], what: str, seconds: float = STOP_SECONDS) -> None:
    """Await one step of a sink's stop, giving up (with a warning) after ``seconds``."""
    try:
        await asyncio.wait_for(step, seconds)
    except asyncio.TimeoutError:
        log.warning("%s did not finish within %.1f s; abandoned", what, seconds)


async def bounded_call(fn, what: str, seconds: float = STOP_SECONDS) -> None:
    """Run a blocking ``fn()`` in a daemon thread and wait for it at most ``seconds``: an abandoned one neither
    blocks the loop nor the interpreter's exit (``asyncio.to_thread`` would be waited for at exit)."""
    thread = threading.Thread(target=fn, name=what, daemon=True)
    thread.start()
    deadline = time.monotonic() + seconds
    while thread.is_alive() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    if thread.is_alive():
        log.warning("%s did not finish within %.1f s; abandoned", what, seconds)


def ack_text(value: Any, field: str, limit: int, default: str = "") -> str:
    """An acknowledgement's free-text field, checked: printable, at most ``limit`` characters.
    Raises ValueError otherwise (the acknowledgement is refused, so the alarm stays unacknowledged)."""
    if value is None:
        return default
    if not isinstance(value, str):
        raise ValueError(f"{field} must be a string")
    if len(value) > limit:
        raise ValueError(f"{field} is longer than {limit} characters")
    if not value.isprintable():
        raise ValueError(f"{field} holds non-printable characters")
    return value


def ack_target(value: Any) -> Optional[str]:
    """The alarm an acknowledgement names: an alarm id, or None for the explicit ``"all"``.
    Anything else (missing, empty, a number) is refused: an acknowledgement never guesses."""
    if not isinstance(value, str) or not value:
        raise ValueError(f'alarm_id must be an alarm id or "{ALL_ALARMS}"')
    text = ack_text(value, "alarm_id", MAX_ALARM_ID)
    return None if text == ALL_ALARMS else text
