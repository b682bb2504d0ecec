"""The recommended operating point: the alarm rule that reaches the self-test's target on this camera.

Every candidate rule is replayed with :class:`~leakseg.monitor.alarm.AlarmLogic` (through
:func:`~leakseg.selftest.trials.alarm_replay`) over what the production path recorded, frame by frame: the
model's area and max_score in every trial (:class:`~leakseg.selftest.result.FrameSeen`) and on the clean
footage. Nothing is re-run through the model, so a sweep costs no model time.

Candidates: ``min_score`` from :data:`MIN_SCORES` and the camera's, ``min_area_pixels`` from the camera's
times :data:`AREA_FACTORS`, ``(k, n)`` from :data:`RULES` and the camera's; ``clear_frames`` and
``min_area_fraction`` stay the camera's. The areas are those of the model's masks at the camera's own
``threshold`` option: the model's threshold is not swept (that needs the model again), so a camera whose
plumes the model does not mark at all cannot be rescued by a rule.

Choice: among the rules with the target probability at the reference plume and at most
``max_false_alarms_per_day`` on the clean footage, the fewest false alarms, then the fastest median time
to alarm, then the rule nearest the camera's own (fewest settings changed). When none reaches the target:
the best probability within the false-alarm budget (or, if every rule is over budget, the fewest false
alarms), ``meets_target`` False and a note saying why. The false alarms per day are extrapolated from the
clean footage: a few minutes of it cannot show a rate of one a day, which the report should say.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from leakseg.monitor.alarm import Observation
from leakseg.monitor.config import AlarmSettings
from leakseg.selftest import detection
from leakseg.selftest.result import FrameSeen, OperatingPoint, SelfTestResult, TrialResult
from leakseg.selftest.settings import SelfTestTarget
from leakseg.selftest.trials import alarm_bound, alarm_replay, judge, observation_of

MIN_SCORES = (0.0, 0.5, 0.9, 0.95, 0.99)
AREA_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
RULES = ((1, 1), (2, 3), (3, 5), (4, 6), (5, 8))


@dataclass
class _Scored:
    rule: AlarmSettings
    probability: float
    false_alarms_per_day: float
    median_time_to_alarm: float  # frames; inf without a detection
    change: Tuple[int, float, float]  # how far from the camera's rule: settings changed, area and score moved


def recommend(result: SelfTestResult, camera_alarm: AlarmSettings, target: SelfTestTarget) -> OperatingPoint:
    """The operating point for ``result``'s camera (its ``recommendation`` is ignored)."""
    pixels = result.frame_size[0] * result.frame_size[1]
    clean = _observed(result.clean.frames_seen, pixels)
    trials = [(trial, _observed(trial.frames, pixels)) for trial in result.trials]
    contrasts = sorted({t.cell.contrast for t in result.trials})
    scored = [_score(rule, _change(rule, camera_alarm), result, trials, clean, contrasts, target)
              for rule in candidates(camera_alarm)]
    return _chosen(scored, target)


def candidates(current: AlarmSettings) -> List[AlarmSettings]:
    """Every rule the sweep tries, the camera's own first."""
    scores = sorted({*MIN_SCORES, current.min_score})
    areas = sorted({max(1, round(current.min_area_pixels * f)) for f in AREA_FACTORS})
    rules = sorted({*RULES, (current.k, current.n)})
    out = [current]
    for score in scores:
        for area in areas:
            for k, n in rules:
                rule = current.model_copy(update=dict(min_score=score, min_area_pixels=area, k=k, n=n))
                if rule != current:
                    out.append(rule)
    return out


def _observed(frames: Sequence[FrameSeen], pixels: int) -> List[Observation]:
    return [observation_of(i, f.area_pixels, f.score, pixels) for i, f in enumerate(frames)]


def _change(rule: AlarmSettings, current: AlarmSettings) -> Tuple[int, float, float]:
    """Ties go to the rule nearest the camera's: fewest settings changed, then the smallest moves."""
    changed = sum(getattr(rule, f) != getattr(current, f) for f in ("min_score", "min_area_pixels", "k", "n"))
    area_moved = abs(math.log(rule.min_area_pixels / current.min_area_pixels))
    return changed, area_moved, abs(rule.min_score - current.min_score)


def _score(rule: AlarmSettings, change: Tuple[int, float, float], result: SelfTestResult,
           trials: List[Tuple[TrialResult, List[Observation]]], clean: List[Observation], contrasts: List[float],
           target: SelfTestTarget) -> _Scored:
    outcomes = [judge(alarm_replay(observed, rule), trial.gas_first,
                      alarm_bound(trial.cell.duration_frames, rule.n, target.alarm_within_frames))
                for trial, observed in trials]
    detected = [o.detected for o in outcomes]
    pod = detection.reference_pod([t for t, _ in trials], detected, contrasts, target)
    delays = [o.alarm_frame - t.gas_first for o, (t, _) in zip(outcomes, trials) if o.detected]
    return _Scored(rule, detection.pod_at(pod, target.reference_size_pixels), _per_day(rule, clean, result),
                   statistics.median(delays) if delays else math.inf, change)


def _per_day(rule: AlarmSettings, clean: List[Observation], result: SelfTestResult) -> float:
    raised = len(alarm_replay(clean, rule).raised)
    hours = result.clean.hours
    return raised * 24 / hours if hours else (math.inf if raised else 0.0)


def _chosen(scored: List[_Scored], target: SelfTestTarget) -> OperatingPoint:
    in_budget = [s for s in scored if s.false_alarms_per_day <= target.max_false_alarms_per_day]
    meeting = [s for s in in_budget if s.probability >= target.probability]
    if meeting:
        best = min(meeting, key=lambda s: (s.false_alarms_per_day, s.median_time_to_alarm, s.change))
        return _point(best, True, "")
    if in_budget:
        best = min(in_budget, key=lambda s: (-s.probability, s.false_alarms_per_day, s.median_time_to_alarm,
                                             s.change))
        return _point(best, False, f"no rule reaches {target.probability:.0%} at the reference plume within "
                                   f"{target.max_false_alarms_per_day:g} false alarms per day: the best is "
                                   f"{best.probability:.0%} (the model's own threshold is not swept)")
    best = min(scored, key=lambda s: (s.false_alarms_per_day, -s.probability, s.median_time_to_alarm, s.change))
    return _point(best, False, f"every rule raises more than {target.max_false_alarms_per_day:g} false alarms per "
                               f"day on the clean footage: the quietest raises {best.false_alarms_per_day:.3g}")


def _point(s: _Scored, meets: bool, note: str) -> OperatingPoint:
    r = s.rule
    return OperatingPoint(min_score=r.min_score, min_area_pixels=r.min_area_pixels, k=r.k, n=r.n,
                          clear_frames=r.clear_frames, probability_at_reference=s.probability,
                          false_alarms_per_day=s.false_alarms_per_day, meets_target=meets, note=note)
