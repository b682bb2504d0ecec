"""Probability of detection over a self-test's trials: per size, the detection limit and the reference plume.

Shared by :mod:`leakseg.selftest.run` (the camera's own alarm rule) and
:mod:`leakseg.selftest.operating_point` (candidate rules), which judge the same trials with different
``detected`` flags. Trials of every duration (and, for the reference plume, both polarities) are pooled:
the probability at a size is the fraction of the trials of that size that were detected.
"""

from __future__ import annotations

import bisect
import math
from typing import Dict, List, Optional, Sequence

from leakseg.selftest.result import TrialResult
from leakseg.selftest.settings import SelfTestTarget


def reference_contrast(contrasts: Sequence[float], target: SelfTestTarget) -> float:
    """The grid contrast the reference plume is judged at: the target's, else the grid's middle one. A target
    contrast between grid contrasts uses the next lower one (a fainter plume: the conservative side); one
    below every grid contrast uses the lowest."""
    ordered = sorted(contrasts)
    if target.reference_contrast is None:
        return ordered[len(ordered) // 2]
    lower = [c for c in ordered if c <= target.reference_contrast]
    return lower[-1] if lower else ordered[0]


def pod_by_size(trials: Sequence[TrialResult], detected: Sequence[bool], contrast: float,
                polarity: Optional[str] = None) -> Dict[int, float]:
    """Size -> fraction detected, over the trials at ``contrast`` (and ``polarity``; None: both)."""
    counts: Dict[int, List[int]] = {}
    for trial, hit in zip(trials, detected):
        if trial.cell.contrast == contrast and polarity in (None, trial.cell.polarity):
            tally = counts.setdefault(trial.cell.size_pixels, [0, 0])
            tally[0] += bool(hit)
            tally[1] += 1
    return {size: hits / total for size, (hits, total) in sorted(counts.items())}


def detection_limit(pod: Dict[int, float], probability: float) -> Optional[int]:
    """The smallest size from which every larger size of the grid is detected with at least ``probability``
    (a lucky small plume does not set the limit while a bigger one is missed); None when the largest fails."""
    limit = None
    for size in sorted(pod, reverse=True):
        if pod[size] < probability:
            break
        limit = size
    return limit


def pod_at(pod: Dict[int, float], size: int) -> float:
    """The probability at ``size``: the grid's own when it has that size, else linear in log(size) between
    the neighbouring sizes; outside the grid's sizes, the nearest size's (no extrapolation)."""
    if not pod:
        return 0.0
    sizes = sorted(pod)
    if size in pod:
        return pod[size]
    if size <= sizes[0]:
        return pod[sizes[0]]
    if size >= sizes[-1]:
        return pod[sizes[-1]]
    upper = bisect.bisect(sizes, size)
    lo, hi = sizes[upper - 1], sizes[upper]
    w = (math.log(size) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (1 - w) * pod[lo] + w * pod[hi]


def reference_pod(trials: Sequence[TrialResult], detected: Sequence[bool], contrasts: Sequence[float],
                  target: SelfTestTarget) -> Dict[int, float]:
    """Size -> probability at the reference contrast, both polarities pooled."""
    return pod_by_size(trials, detected, reference_contrast(contrasts, target))
