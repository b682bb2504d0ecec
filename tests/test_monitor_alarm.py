"""The monitor's alarm state machine and windows, on sequences of per-frame results (no model, no I/O)."""

from __future__ import annotations

import numpy as np
import pytest

from leakseg.monitor.alarm import AlarmLogic, Observation, State
from leakseg.monitor.config import AlarmSettings
from leakseg.monitor.windows import Frame, WindowBuilder


class Clock:
    def __init__(self):
        self.t = 1_000_000.0

    def __call__(self):
        return self.t


def obs(seq, area, score=0.9, fraction=None, t=None):
    return Observation(seq=seq, time=t if t is not None else 1_000_000.0 + seq, area_pixels=area,
                       area_fraction=area / 10000 if fraction is None else fraction, score=score,
                       bbox=(1, 2, 3, 4) if area else None, centroid=(5.0, 6.0) if area else None)


def run(logic, areas, start=0):
    """Feed areas; return [(seq, event type, state)] of the events."""
    out = []
    for i, a in enumerate(areas, start):
        for e in logic.observe(obs(i, a)):
            out.append((i, e.type, e.state))
    return out


def settings(**kw):
    base = dict(min_area_pixels=100, k=3, n=5, clear_frames=4)
    base.update(kw)
    return AlarmSettings(**base)


def test_k_of_n_raises_on_the_kth_leak_frame_within_n():
    logic = AlarmLogic("cam", settings())
    # hits at 0, 2, 4 -> the third hit within the last 5 frames is frame 4
    events = run(logic, [500, 0, 500, 0, 500])
    assert [(s, t) for s, t, _ in events] == [(4, "alarm_raised"), (4, "state_changed")]
    assert logic.state == State.LEAK


def test_hits_spread_wider_than_n_never_raise():
    logic = AlarmLogic("cam", settings())
    # one hit every 3 frames: at most 2 in any 5 consecutive frames
    assert run(logic, [500, 0, 0] * 10) == []
    assert logic.state == State.NORMAL
    assert logic.leak_frames == 10 and logic.frames_analysed == 30


def test_small_plumes_and_low_scores_are_not_leak_frames():
    logic = AlarmLogic("cam", settings(min_score=0.5, min_area_fraction=0.02))
    assert not logic.is_leak_frame(obs(0, 99))               # below min_area_pixels
    assert not logic.is_leak_frame(obs(0, 150, fraction=0.01))  # below min_area_fraction
    assert not logic.is_leak_frame(obs(0, 500, score=0.4))   # below min_score
    assert logic.is_leak_frame(obs(0, 500, fraction=0.05))


def test_hysteresis_one_noisy_frame_neither_raises_nor_clears():
    logic = AlarmLogic("cam", settings(k=2, n=3, clear_frames=3))
    assert run(logic, [500, 0, 0, 0, 500, 0, 0]) == []  # isolated single hits
    events = run(logic, [500, 500], start=7)
    assert ("alarm_raised" in [t for _, t, _ in events])
    # a single clear frame inside the plume does not clear; neither do two
    assert [t for _, t, _ in run(logic, [0, 500, 0, 0, 500], start=9) if t != "alarm_updated"] == []
    assert logic.state == State.LEAK
    events = run(logic, [0, 0, 0], start=14)
    assert [(s, t) for s, t, _ in events] == [(16, "alarm_cleared"), (16, "state_changed")]
    assert logic.state == State.NORMAL


def test_a_leak_that_starts_and_stops_gives_exactly_one_alarm_with_its_facts():
    logic = AlarmLogic("cam", settings(k=3, n=4, clear_frames=3))
    areas = [0] * 10 + [300, 800, 1200, 900, 700, 400] + [0] * 10
    events = run(logic, areas)
    raised = [e for e in events if e[1] == "alarm_raised"]
    cleared = [e for e in events if e[1] == "alarm_cleared"]
    assert [s for s, _, _ in raised] == [12] and [s for s, _, _ in cleared] == [18]
    alarm = next(iter(logic.recent.values()))
    assert alarm.kind == State.LEAK and not alarm.active
    assert alarm.peak_area_pixels == 1200 and alarm.bbox == (1, 2, 3, 4) and alarm.centroid == (5.0, 6.0)
    assert alarm.start == 1_000_000.0 + 12 and alarm.end == 1_000_000.0 + 18
    assert alarm.first_seq == 12 and alarm.end_seq == 18


def test_camera_fault_is_never_no_leak_and_does_not_clear_an_active_leak():
    clock = Clock()
    logic = AlarmLogic("cam", settings(k=2, n=2, clear_frames=2), clock=clock)
    run(logic, [500, 500])
    assert logic.state == State.LEAK
    events = logic.camera_failed("lost: connection refused")
    assert [e.type for e in events] == ["alarm_raised", "state_changed"]
    assert events[0].alarm.kind == State.CAMERA_FAULT and logic.state == State.CAMERA_FAULT
    assert logic.leak is not None  # the leak stays active while nobody can see
    assert logic.camera_failed("still lost") == []  # one fault alarm, not one per retry
    events = logic.camera_ok()
    assert [e.type for e in events] == ["alarm_cleared", "state_changed"]
    assert logic.state == State.LEAK
    # the k-of-n history restarted: one frame with gas after the fault does not matter, clearing needs 2 clear frames
    run(logic, [0], start=2)
    assert logic.state == State.LEAK
    run(logic, [0], start=3)
    assert logic.state == State.NORMAL


def test_fault_restarts_k_of_n_history():
    logic = AlarmLogic("cam", settings(k=3, n=5))
    run(logic, [500, 500])
    logic.service_failed("ConnectionFailed: refused")
    assert logic.state == State.SERVICE_FAULT
    logic.service_ok()
    assert run(logic, [500], start=2) == []  # two hits before the fault do not count
    assert logic.state == State.NORMAL


def test_state_priority_camera_fault_over_service_fault_over_leak():
    logic = AlarmLogic("cam", settings(k=1, n=1))
    run(logic, [500])
    logic.service_failed("down")
    assert logic.state == State.SERVICE_FAULT
    logic.camera_failed("frozen")
    assert logic.state == State.CAMERA_FAULT
    logic.camera_ok()
    assert logic.state == State.SERVICE_FAULT
    logic.service_ok()
    assert logic.state == State.LEAK
    events = logic.go_offline()
    assert logic.state == State.OFFLINE and events[-1].type == "state_changed"


# -- DEGRADED: the camera cannot see gas ------------------------------------------------------------------


def kinds(events):
    return [(e.type, e.alarm.kind.value if e.alarm else None, e.state.value) for e in events]


def test_degraded_is_an_alarm_of_its_own_below_leak_and_never_normal():
    clock = Clock()
    logic = AlarmLogic("cam", settings(k=2, n=2, clear_frames=2), clock=clock)
    assert kinds(logic.set_degraded("picture", "flat picture: p99-p1 0")) == [
        ("alarm_raised", "DEGRADED", "DEGRADED"), ("state_changed", None, "DEGRADED")]
    assert logic.degraded.reason == "picture: flat picture: p99-p1 0" and logic.degraded.start == clock.t
    # a degraded camera is still analysed, and a LEAK it sees outranks DEGRADED
    assert kinds(run_events(logic, [500, 500]))[-1] == ("state_changed", None, "LEAK")
    assert logic.set_degraded("picture", "blurred: sharpness 0.2") == []  # a new reason, no new alarm
    assert logic.degraded.reason == "picture: blurred: sharpness 0.2"
    # the LEAK clears by its own rule; the camera then is DEGRADED, not NORMAL
    run(logic, [0, 0], start=2)
    assert logic.leak is None and logic.state == State.DEGRADED
    events = logic.set_degraded("picture", None)
    assert kinds(events) == [("alarm_cleared", "DEGRADED", "NORMAL"), ("state_changed", None, "NORMAL")]
    assert events[0].alarm.end is not None and events[0].message == "DEGRADED cleared: picture no longer says so"
    assert logic.set_degraded("picture", None) == []


def test_degraded_never_clears_an_active_leak_nor_restarts_its_history():
    logic = AlarmLogic("cam", settings(k=3, n=5, clear_frames=2))
    run(logic, [500, 500])
    logic.set_degraded("picture", "low contrast")
    assert run(logic, [500], start=2)[0][1] == "alarm_raised"  # the two hits before still count
    logic.set_degraded("selftest", "no plume found")
    logic.set_degraded("picture", None)
    logic.set_degraded("selftest", None)
    assert logic.leak is not None and logic.state == State.LEAK


def test_faults_outrank_degraded():
    logic = AlarmLogic("cam", settings())
    logic.set_degraded("picture", "saturated")
    logic.service_failed("down")
    assert logic.state == State.SERVICE_FAULT
    logic.camera_failed("lost")
    assert logic.state == State.CAMERA_FAULT
    logic.camera_ok()
    logic.service_ok()
    assert logic.state == State.DEGRADED  # still degraded: nothing said otherwise
    logic.go_offline()
    assert logic.state == State.OFFLINE


def test_degraded_while_any_source_says_so_and_its_reason_names_every_source():
    logic = AlarmLogic("cam", settings())
    raised = logic.set_degraded("picture", "blurred")
    joined = logic.set_degraded("selftest", "2 of 3 plumes missed")
    assert kinds(joined) == [("alarm_updated", "DEGRADED", "DEGRADED")]
    assert joined[0].alarm.id == raised[0].alarm.id
    assert joined[0].alarm.reason == "picture: blurred; selftest: 2 of 3 plumes missed"
    left = logic.set_degraded("picture", None)
    assert kinds(left) == [("alarm_updated", "DEGRADED", "DEGRADED")] and left[0].alarm.reason == \
        "selftest: 2 of 3 plumes missed"
    assert logic.state == State.DEGRADED
    assert kinds(logic.set_degraded("selftest", None))[0] == ("alarm_cleared", "DEGRADED", "NORMAL")
    assert [a.kind for a in logic.recent.values()] == [State.DEGRADED]  # one alarm, acknowledgeable by id
    assert [e.alarm.kind for e in logic.acknowledge(raised[0].alarm.id)] == [State.DEGRADED]


def run_events(logic, areas, start=0):
    return [e for i, a in enumerate(areas, start) for e in logic.observe(obs(i, a))]


def test_acknowledge_by_id_and_all():
    logic = AlarmLogic("cam", settings(k=1, n=1, clear_frames=1))
    first = run(logic, [500, 0])
    leak_id = next(a.id for a in logic.recent.values() if a.kind == State.LEAK)
    logic.camera_failed("lost")
    events = logic.acknowledge(leak_id, by="opcua", comment="seen")
    assert [(e.type, e.alarm.id) for e in events] == [("alarm_acknowledged", leak_id)]
    assert logic.recent[leak_id].acknowledged_by == "opcua" and logic.recent[leak_id].comment == "seen"
    assert logic.acknowledge(leak_id) == []  # twice is harmless
    with pytest.raises(KeyError):
        logic.acknowledge("no-such-alarm")
    events = logic.acknowledge(None)  # all: the camera fault is left
    assert [e.alarm.kind for e in events] == [State.CAMERA_FAULT]
    assert first  # (the leak was raised and cleared above)


def test_alarm_ids_are_unique_and_name_camera_and_kind():
    logic = AlarmLogic("east-1", settings(k=1, n=1, clear_frames=1))
    run(logic, [500, 0, 500, 0])
    ids = [a.id for a in logic.recent.values()]
    assert len(ids) == len(set(ids)) == 2
    assert all(i.startswith("east-1-LEAK-") for i in ids)


# -- windows ---------------------------------------------------------------------------------------


def _frames(n):
    return [Frame(seq=i, pixels=np.full((2, 2), i, np.uint8), arrived=float(i)) for i in range(n)]


@pytest.mark.parametrize("length", [3, 4, 8])
def test_windows_overlap_by_two_and_report_every_frame_exactly_once(length):
    builder = WindowBuilder("cam", length)
    windows = [w for w in (builder.push(f) for f in _frames(50)) if w is not None]
    tail = builder.flush()
    for a, b in zip(windows, windows[1:]):
        assert [f.seq for f in a.frames[-2:]] == [f.seq for f in b.frames[:2]]  # the last two start the next
    for w in windows:
        assert len(w.frames) == length and w.final == length - 2
        # each reported frame t has t+1 and t+2 in its own window: its published triplet
        for i, f in enumerate(w.reported):
            assert [x.seq for x in w.frames[i:i + 3]] == [f.seq, f.seq + 1, f.seq + 2]
    reported = [f.seq for w in windows + ([tail] if tail else []) for f in w.reported]
    assert reported == sorted(set(reported))  # never twice, in order
    # the stream's last two frames never got a window of their own (a tail of < 3 frames is not sent)
    assert reported == list(range(50 if tail is not None else 48))


def test_window_flush_reports_the_tail_with_the_fallback_triplets():
    builder = WindowBuilder("cam", 8)
    windows = [w for w in (builder.push(f) for f in _frames(11)) if w is not None]
    tail = builder.flush()
    assert [f.seq for f in windows[0].reported] == list(range(6))
    assert [f.seq for f in tail.frames] == [6, 7, 8, 9, 10] and tail.final == 5


def test_window_flush_needs_three_frames_and_reset_forgets():
    builder = WindowBuilder("cam", 8)
    for f in _frames(2):
        assert builder.push(f) is None
    assert builder.flush() is None
    for f in _frames(5):
        builder.push(f)
    assert builder.reset() == 5 and builder.held == 0
    with pytest.raises(ValueError):
        WindowBuilder("cam", 2)


def test_events_carry_a_snapshot_of_the_alarm_not_the_live_object():
    """Sinks publish asynchronously: a raise followed by a clear in the same window must still say 'active'."""
    logic = AlarmLogic("cam", settings(k=1, n=1, clear_frames=1))
    raised = logic.observe(obs(0, 500))[0]
    cleared = logic.observe(obs(1, 0))[0]
    assert raised.type == "alarm_raised" and raised.alarm.active and raised.to_dict()["alarm"]["end"] is None
    assert cleared.type == "alarm_cleared" and not cleared.alarm.active
    assert logic.recent[raised.alarm.id].end == cleared.alarm.end
