"""The JVLGS network, one module per part, as REFERENCE.md describes it."""

from leakseg.model.config import DEFAULT_PROMPTS, PVT_VARIANTS, JVLGSConfig, TextModelConfig
from leakseg.model.jvlgs import JVLGS, MIN_CLIP_FRAMES, build_model, triplet_neighbours

__all__ = [
    "DEFAULT_PROMPTS",
    "JVLGS",
    "JVLGSConfig",
    "MIN_CLIP_FRAMES",
    "PVT_VARIANTS",
    "TextModelConfig",
    "build_model",
    "triplet_neighbours",
]
