"""The in-field self-test: synthetic plumes blended into a camera's own frames, run through exactly what the
camera runs in production, to measure what it can detect (docs/SCADA.md, "Commissioning a camera")."""

from leakseg.selftest.result import (Cell, CellResult, CleanResult, Example, OperatingPoint, SelfTestResult,
                                    SelfTestRun, TrialResult)
from leakseg.selftest.settings import PlumeGrid, SelfTestSchedule, SelfTestTarget

__all__ = ["Cell", "CellResult", "CleanResult", "Example", "OperatingPoint", "PlumeGrid", "SelfTestResult",
           "SelfTestRun", "SelfTestSchedule", "SelfTestTarget", "TrialResult"]
