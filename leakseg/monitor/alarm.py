"""Per-camera alarm logic: NORMAL, DEGRADED, LEAK, CAMERA_FAULT, SERVICE_FAULT. No model, no I/O.

The rules (docs/SCADA.md, "Alarm logic"):

* a frame is a *leak frame* when its plume outside the ignore mask has at least
  ``min_area_pixels`` pixels and ``min_area_fraction`` of the frame, and max_score >= ``min_score``;
* LEAK is raised when at least ``k`` of the last ``n`` analysed frames are leak frames;
* LEAK clears after ``clear_frames`` leak-free frames in a row (hysteresis: one noisy frame
  neither raises nor clears);
* a camera fault (lost, frozen, stale stream) and a service fault (unreachable, failing) are
  alarms of their own. While a fault lasts no frame is analysed, so an active LEAK stays active
  (it is never cleared by not looking), and the k-of-n history restarts when frames come back;
* DEGRADED (the camera cannot see gas: its picture is flat, without contrast, saturated or blurred, or
  its self-test failed) is an alarm of its own too. Sources say so with :meth:`AlarmLogic.set_degraded`
  (``"picture"``: :mod:`leakseg.monitor.detectability`; ``"selftest"``); the camera is degraded while any
  source says so, and the alarm's reason names every one. A degraded camera is still analysed (it may
  still see a large plume): a LEAK it sees is raised, and being degraded never clears an active LEAK;
* the camera's ``state`` is the most severe of what is active: CAMERA_FAULT, SERVICE_FAULT,
  LEAK, DEGRADED, NORMAL (OFFLINE once the monitor stops): a degraded camera is never NORMAL.

Every change produces :class:`Event` objects the sinks publish. Each alarm has an id
(``CAMERA-KIND-YYYYmmddTHHMMSS-N``), start and end time, and for LEAK the peak area, its bounding
box and centroid, and the evidence folder. Operators acknowledge alarms (active or cleared).
"""

from __future__ import annotations

import copy
import itertools
import time
from collections import deque
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any, Deque, Dict, List, Optional, Tuple

from leakseg.monitor.config import AlarmSettings


class State(str, Enum):
    NORMAL = "NORMAL"
    LEAK = "LEAK"
    CAMERA_FAULT = "CAMERA_FAULT"
    SERVICE_FAULT = "SERVICE_FAULT"
    OFFLINE = "OFFLINE"
    DEGRADED = "DEGRADED"


#: Numeric codes (Modbus register, OPC UA StateCode).
STATE_CODES = {State.NORMAL: 0, State.LEAK: 1, State.CAMERA_FAULT: 2, State.SERVICE_FAULT: 3, State.OFFLINE: 4,
               State.DEGRADED: 5}
#: OPC UA event severity (1-1000) per alarm kind.
SEVERITY = {State.LEAK: 900, State.CAMERA_FAULT: 600, State.SERVICE_FAULT: 500, State.DEGRADED: 400}


@dataclass
class Observation:
    """What one analysed frame says, after the ignore mask."""

    seq: int
    time: float
    area_pixels: int
    area_fraction: float
    score: float
    bbox: Optional[Tuple[int, int, int, int]] = None  # x, y, width, height
    centroid: Optional[Tuple[float, float]] = None  # x, y
    evidence: Optional[str] = None


@dataclass
class Alarm:
    id: str
    camera: str
    kind: State
    start: float
    end: Optional[float] = None
    reason: str = ""
    peak_area_pixels: int = 0
    peak_area_fraction: float = 0.0
    peak_score: float = 0.0
    bbox: Optional[Tuple[int, int, int, int]] = None
    centroid: Optional[Tuple[float, float]] = None
    evidence: Optional[str] = None
    first_seq: Optional[int] = None  # LEAK: the analysed frame that raised it
    end_seq: Optional[int] = None  # LEAK: the analysed frame that cleared it (replays line alarms up with frames)
    acknowledged: bool = False
    acknowledged_by: Optional[str] = None
    acknowledged_at: Optional[float] = None
    comment: Optional[str] = None

    @property
    def active(self) -> bool:
        return self.end is None

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["kind"] = self.kind.value
        d["active"] = self.active
        d["start_iso"] = iso(self.start)
        d["end_iso"] = iso(self.end) if self.end is not None else None
        return d


@dataclass
class Event:
    """What the sinks publish. ``type``: alarm_raised, alarm_updated, alarm_cleared,
    alarm_acknowledged or state_changed."""

    type: str
    camera: str
    time: float
    state: State
    previous_state: Optional[State] = None
    alarm: Optional[Alarm] = None
    message: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return {
            "type": self.type,
            "camera": self.camera,
            "time": self.time,
            "time_iso": iso(self.time),
            "state": self.state.value,
            "previous_state": self.previous_state.value if self.previous_state else None,
            "message": self.message,
            "alarm": self.alarm.to_dict() if self.alarm else None,
        }


def iso(t: Optional[float]) -> Optional[str]:
    if t is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int((t % 1) * 1000):03d}Z"


_counter = itertools.count(1)
#: Alarms each camera keeps for acknowledgement by id (its active ones are never dropped).
RECENT_ALARMS = 100


class AlarmLogic:
    """The state machine of one camera. Feed it observations and fault reports; read events."""

    def __init__(self, camera: str, settings: AlarmSettings, clock=time.time):
        self.camera = camera
        self.settings = settings
        self.clock = clock
        self.history: Deque[bool] = deque(maxlen=settings.n)
        self.clear_run = 0
        self.leak: Optional[Alarm] = None
        self.camera_fault: Optional[Alarm] = None
        self.service_fault: Optional[Alarm] = None
        self.degraded: Optional[Alarm] = None
        self.degraded_by: Dict[str, str] = {}  # source -> its reason, while it says the camera cannot see gas
        self.recent: Dict[str, Alarm] = {}  # id -> alarm, for acknowledgement (bounded)
        self.last: Optional[Observation] = None
        self.frames_analysed = 0
        self.leak_frames = 0
        self._state = State.NORMAL
        self.offline = False

    # -- derived state -------------------------------------------------------------------------

    @property
    def state(self) -> State:
        if self.offline:
            return State.OFFLINE
        if self.camera_fault:
            return State.CAMERA_FAULT
        if self.service_fault:
            return State.SERVICE_FAULT
        if self.leak:
            return State.LEAK
        if self.degraded:
            return State.DEGRADED
        return State.NORMAL

    def is_leak_frame(self, obs: Observation) -> bool:
        s = self.settings
        return (obs.area_pixels >= s.min_area_pixels and obs.area_fraction >= s.min_area_fraction
                and obs.score >= s.min_score)

    # -- inputs --------------------------------------------------------------------------------

    def observe(self, obs: Observation) -> List[Event]:
        """One analysed frame (in stream order)."""
        before = self.state
        hit = self._count(obs)
        if self.leak is None:
            events = self._raise_at_k_of_n(obs, before)
        else:
            events = self._follow_leak(obs, before, hit)
        return self._with_state_change(events, before, obs.time)

    def _count(self, obs: Observation) -> bool:
        """Record the frame in the counters and the k-of-n history; True for a leak frame."""
        self.frames_analysed += 1
        self.last = obs
        hit = self.is_leak_frame(obs)
        self.leak_frames += hit
        self.history.append(hit)
        self.clear_run = 0 if hit else self.clear_run + 1
        return hit

    def _raise_at_k_of_n(self, obs: Observation, before: State) -> List[Event]:
        if sum(self.history) < self.settings.k:
            return []
        self.leak = self._new_alarm(State.LEAK, obs.time, f"leak in {sum(self.history)} of the last "
                                    f"{len(self.history)} frames")
        self.leak.first_seq = obs.seq
        self._grow(self.leak, obs)
        return [self._event("alarm_raised", obs.time, before, self.leak,
                            f"LEAK raised: {obs.area_pixels} px ({obs.area_fraction:.2%})")]

    def _follow_leak(self, obs: Observation, before: State, hit: bool) -> List[Event]:
        """The active LEAK grows with a larger plume and clears after ``clear_frames`` clear frames."""
        events: List[Event] = []
        if hit and self._grow(self.leak, obs):
            events.append(self._event("alarm_updated", obs.time, before, self.leak,
                                      f"LEAK peak area {self.leak.peak_area_pixels} px"))
        if self.clear_run >= self.settings.clear_frames:
            alarm, self.leak = self.leak, None
            alarm.end, alarm.end_seq = obs.time, obs.seq
            events.append(self._event("alarm_cleared", obs.time, before, alarm,
                                      f"LEAK cleared after {self.clear_run} clear frames"))
        return events

    def camera_failed(self, reason: str, when: Optional[float] = None) -> List[Event]:
        return self._fault("camera_fault", State.CAMERA_FAULT, reason, when)

    def camera_ok(self, when: Optional[float] = None) -> List[Event]:
        return self._fault_cleared("camera_fault", when, "camera delivers frames again")

    def service_failed(self, reason: str, when: Optional[float] = None) -> List[Event]:
        return self._fault("service_fault", State.SERVICE_FAULT, reason, when)

    def service_ok(self, when: Optional[float] = None) -> List[Event]:
        return self._fault_cleared("service_fault", when, "service answers again")

    def set_degraded(self, source: str, reason: Optional[str], when: Optional[float] = None) -> List[Event]:
        """``source`` (``"picture"``, ``"selftest"``) says the camera cannot see gas (``reason``) or can (None).

        DEGRADED is raised when the first source says so and cleared when the last one takes it back; a source
        joining or leaving in between updates the alarm (its reason names every source). A new reason from a
        source already counted only refreshes the alarm's reason, without an event (as a fault's does)."""
        before_sources = set(self.degraded_by)
        if reason:
            self.degraded_by[source] = reason
        else:
            self.degraded_by.pop(source, None)
        if self.degraded is not None and self.degraded_by:
            self.degraded.reason = self._degraded_reason()
        if set(self.degraded_by) == before_sources:
            return []
        now = when if when is not None else self.clock()
        if self.degraded is None:
            return self._fault("degraded", State.DEGRADED, self._degraded_reason(), now, restart_history=False)
        if not self.degraded_by:
            return self._fault_cleared("degraded", now, f"{source} no longer says so")
        return [self._event("alarm_updated", now, self.state, self.degraded, f"DEGRADED: {self.degraded.reason}")]

    def _degraded_reason(self) -> str:
        return "; ".join(f"{source}: {reason}" for source, reason in sorted(self.degraded_by.items()))

    def go_offline(self, when: Optional[float] = None) -> List[Event]:
        before = self.state
        self.offline = True
        return self._with_state_change([], before, when or self.clock())

    def acknowledge(self, alarm_id: Optional[str] = None, by: str = "operator", comment: str = "") -> List[Event]:
        """Acknowledge one alarm by id (or, with None, every unacknowledged alarm of the camera)."""
        targets = [a for a in self.recent.values() if not a.acknowledged and (alarm_id is None or a.id == alarm_id)]
        if alarm_id is not None and not targets:
            known = self.recent.get(alarm_id)
            if known is None:
                raise KeyError(f"camera {self.camera} has no alarm {alarm_id!r}")
            return []  # already acknowledged
        now = self.clock()
        events = []
        for alarm in targets:
            alarm.acknowledged, alarm.acknowledged_by, alarm.acknowledged_at, alarm.comment = True, by, now, comment
            events.append(self._event("alarm_acknowledged", now, self.state, alarm,
                                      f"{alarm.kind.value} alarm {alarm.id} acknowledged by {by}"))
        return events

    # -- helpers -------------------------------------------------------------------------------

    def _fault(self, attr: str, kind: State, reason: str, when: Optional[float],
               restart_history: bool = True) -> List[Event]:
        now = when if when is not None else self.clock()
        before = self.state
        current: Optional[Alarm] = getattr(self, attr)
        if current is not None:
            current.reason = reason  # still faulty; keep the latest reason, no new event
            return []
        alarm = self._new_alarm(kind, now, reason)
        setattr(self, attr, alarm)
        if restart_history:  # nothing is analysed during a fault: k-of-n restarts when frames come back
            self.history.clear()
            self.clear_run = 0
        events = [self._event("alarm_raised", now, before, alarm, f"{kind.value}: {reason}")]
        return self._with_state_change(events, before, now)

    def _fault_cleared(self, attr: str, when: Optional[float], message: str) -> List[Event]:
        current: Optional[Alarm] = getattr(self, attr)
        if current is None:
            return []
        now = when if when is not None else self.clock()
        before = self.state
        current.end = now
        setattr(self, attr, None)
        events = [self._event("alarm_cleared", now, before, current, f"{current.kind.value} cleared: {message}")]
        return self._with_state_change(events, before, now)

    def _new_alarm(self, kind: State, now: float, reason: str) -> Alarm:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        alarm = Alarm(id=f"{self.camera}-{kind.value}-{stamp}-{next(_counter)}", camera=self.camera, kind=kind,
                      start=now, reason=reason)
        self.recent[alarm.id] = alarm
        self._forget_old_alarms()
        return alarm

    def _forget_old_alarms(self) -> None:
        """Keep at most RECENT_ALARMS for acknowledgement: the oldest *ended* ones go. Active alarms (at most one
        per kind) always stay, or a flapping camera would make its active LEAK impossible to acknowledge."""
        ended = (alarm_id for alarm_id, alarm in self.recent.items() if not alarm.active)
        for alarm_id in list(itertools.islice(ended, max(0, len(self.recent) - RECENT_ALARMS))):
            del self.recent[alarm_id]

    @staticmethod
    def _grow(alarm: Alarm, obs: Observation) -> bool:
        """Record a larger plume; True when the peak grew."""
        if obs.area_pixels <= alarm.peak_area_pixels:
            alarm.peak_score = max(alarm.peak_score, obs.score)
            return False
        alarm.peak_area_pixels, alarm.peak_area_fraction = obs.area_pixels, obs.area_fraction
        alarm.peak_score = max(alarm.peak_score, obs.score)
        alarm.bbox, alarm.centroid = obs.bbox, obs.centroid
        if obs.evidence:
            alarm.evidence = obs.evidence
        return True

    def _event(self, kind: str, now: float, before: State, alarm: Optional[Alarm], message: str) -> Event:
        # A snapshot of the alarm: sinks publish asynchronously, after later frames may have changed it.
        return Event(kind, self.camera, now, self.state, before, copy.copy(alarm) if alarm else None, message)

    def _with_state_change(self, events: List[Event], before: State, now: float) -> List[Event]:
        after = self.state
        for e in events:
            e.state = after
        if after != before:
            events.append(Event("state_changed", self.camera, now, after, before, None,
                                f"{self.camera}: {before.value} -> {after.value}"))
        return events
