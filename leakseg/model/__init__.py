"""The JVLGS network, one module per part, as REFERENCE.md describes it."""

from leakseg.model.config import DEFAULT_PROMPTS, PVT_VARIANTS, JVLGSConfig, TextModelConfig
from leakseg.model.jvlgs import JVLGS, build_model
from leakseg.model.temporal import MIN_CLIP_FRAMES, batch_neighbours, triplet_neighbours

__all__ = [
    "DEFAULT_PROMPTS",
    "JVLGS",
    "JVLGSConfig",
    "MIN_CLIP_FRAMES",
    "PVT_VARIANTS",
    "TextModelConfig",
    "batch_neighbours",
    "build_model",
    "triplet_neighbours",
]
