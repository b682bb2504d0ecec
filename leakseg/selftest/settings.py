"""What a self-test tries (:class:`PlumeGrid`), what it must show (:class:`SelfTestTarget`), and when the
monitor runs it (:class:`SelfTestSchedule`). pydantic and the standard library only: the monitor's
configuration (``cameras[].selftest``) embeds these models.

Units. *Size* is the plume's visible area: the pixels where its optical depth is above the visibility
threshold (opacity 9.5 %), averaged over the frames in which the leak runs. *Contrast* is the gas's
apparent-temperature difference to the background, in the frame's own units (grey levels of 8-bit
frames, counts of 16-bit radiometric frames): the change a fully opaque layer of gas would make. A pixel
behind gas of optical depth tau changes by ``contrast * (1 - exp(-tau))``, so the plume's visible edge
changes the frame by 9.5 % of the contrast and its core by more.
"""

from __future__ import annotations

from typing import List, Literal, Optional

from pydantic import Field, model_validator

from leakseg.schema import StrictModel

Polarity = Literal["brighter", "darker"]


class PlumeGrid(StrictModel):
    """The synthetic plumes a self-test blends into the camera's own frames: every combination of
    size, contrast, polarity and duration (a *cell*), each at ``positions`` source positions."""

    sizes_pixels: List[int] = Field([300, 1000, 3000], min_length=1, description="Plume sizes: visible area in "
                                    "pixels, averaged over the frames with gas (the report also gives them as a "
                                    "fraction of the frame).")
    contrasts: List[float] = Field([20.0, 40.0, 80.0], min_length=1, description="Gas-to-background contrast in "
                                   "the frame's units (grey levels for 8-bit frames, counts for 16-bit): the "
                                   "change a fully opaque layer would make.")
    polarities: List[Polarity] = Field(["brighter", "darker"], min_length=1, description="Gas warmer than the "
                                       "scene shows brighter (white-hot palettes), cooler shows darker.")
    durations_frames: List[int] = Field([16], min_length=1, description="How many analysed frames each leak "
                                        "runs before it stops (its gas then drifts off and clears).")
    positions: int = Field(2, ge=1, le=64, description="Source positions per cell, spread over the region of "
                           "interest and outside the ignore zones.")
    lead_frames: int = Field(8, ge=0, le=1000, description="Gas-free frames before each leak starts.")
    tail_frames: int = Field(16, ge=0, le=1000, description="Frames after each leak stops: the time to clear is "
                             "measured in them.")
    seed: int = Field(0, ge=0, description="Seeds the plumes' physics (turbulence, wind, puffing) and the "
                      "positions: the same seed on the same frames repeats the self-test exactly.")

    @model_validator(mode="after")
    def _positive(self) -> "PlumeGrid":
        if any(s < 1 for s in self.sizes_pixels):
            raise ValueError("sizes_pixels must be >= 1")
        if any(c <= 0 for c in self.contrasts):
            raise ValueError("contrasts must be > 0 (the polarity gives the sign)")
        if any(d < 1 for d in self.durations_frames):
            raise ValueError("durations_frames must be >= 1")
        return self

    @property
    def trials(self) -> int:
        return (len(self.sizes_pixels) * len(self.contrasts) * len(self.polarities) * len(self.durations_frames)
                * self.positions)


class SelfTestTarget(StrictModel):
    """What the camera must show to pass, and what the recommended operating point aims at."""

    probability: float = Field(0.9, gt=0, le=1, description="Probability of detection a plume must reach "
                               "(0.9: the 90 % of continuous-monitoring rules).")
    reference_size_pixels: int = Field(1000, ge=1, description="The reference plume: its detection probability "
                                       "is published (PoD at the reference plume) and must reach `probability`.")
    reference_contrast: Optional[float] = Field(None, gt=0, description="The reference plume's contrast "
                                                "(default: the grid's middle contrast).")
    max_false_alarms_per_day: float = Field(1.0, ge=0, description="The recommended operating point raises at "
                                            "most this many LEAK alarms per day of the camera's clean footage.")
    alarm_within_frames: Optional[int] = Field(None, ge=1, description="A plume counts as detected when LEAK is "
                                               "raised at most this many analysed frames after its gas first "
                                               "shows (default: its duration plus the alarm rule's n).")


class SelfTestSchedule(StrictModel):
    """A camera's self-test inside the running monitor (``cameras[].selftest``)."""

    every_hours: Optional[float] = Field(24.0, gt=0, description="Run the self-test this often (null: only on "
                                         "demand, from OPC UA's RunSelfTest or MQTT's PREFIX/CAMERA/selftest/run).")
    first_after_minutes: float = Field(10.0, ge=0, description="The first scheduled self-test after the monitor "
                                       "starts (it needs background frames first).")
    background_frames: int = Field(64, ge=8, le=4096, description="Recent gas-free frames of the camera kept as "
                                   "the background (frames of windows with a leak frame or an active LEAK are "
                                   "never kept).")
    grid: PlumeGrid = Field(default_factory=PlumeGrid)
    target: SelfTestTarget = Field(default_factory=SelfTestTarget)
    degrade_on_fail: bool = Field(True, description="A failed self-test puts the camera in DEGRADED (\"cannot "
                                  "see gas now\") until a later self-test passes.")
