"""The networks, one module per part, as REFERENCE.md describes them.

JVLGS and FGSTP are two compositions of the same modules (:class:`~leakseg.model.network.TripletNetwork`):
encoder, temporal correlation, GSA and fusion head, with VLF + FPN decoder (JVLGS) or SINet-V2's
reverse attention decoder (FGSTP).
"""

from __future__ import annotations

from typing import Union

from leakseg.model.config import (
    CONFIG_CLASSES, DEFAULT_PROMPTS, FAMILIES, PUBLISHED_POSTPROCESS, PVT_VARIANTS, FGSTPConfig, JVLGSConfig, TextModelConfig,
    config_from_dict,
)
from leakseg.model.family import ModelFamily, family_names, get_family, register_family
from leakseg.model.fgstp import FGSTP
from leakseg.model.jvlgs import JVLGS
from leakseg.model.network import TripletNetwork
from leakseg.model.temporal import MIN_CLIP_FRAMES, batch_neighbours, triplet_neighbours

MODEL_CLASSES = {"jvlgs": JVLGS, "fgstp": FGSTP}


def build_model(config: Union[JVLGSConfig, FGSTPConfig, str] = "pvt_v2_b5", family: str = "jvlgs",
                **overrides) -> TripletNetwork:
    """A network in eval mode from a config, or from a backbone variant name and a family
    (``build_model("pvt_v2_b0")``, ``build_model("pvt_v2_b0", "fgstp")``)."""
    if isinstance(config, str):
        if family not in MODEL_CLASSES:
            raise ValueError(f"unknown model family {family!r}; choose one of {list(FAMILIES)}")
        config = CONFIG_CLASSES[family](backbone=config, **overrides)
    return MODEL_CLASSES[config.model_type](config).eval()


__all__ = [
    "DEFAULT_PROMPTS",
    "FAMILIES",
    "FGSTP",
    "FGSTPConfig",
    "JVLGS",
    "JVLGSConfig",
    "MIN_CLIP_FRAMES",
    "PUBLISHED_POSTPROCESS",
    "PVT_VARIANTS",
    "TextModelConfig",
    "TripletNetwork",
    "batch_neighbours",
    "ModelFamily",
    "build_model",
    "family_names",
    "get_family",
    "register_family",
    "config_from_dict",
    "triplet_neighbours",
]
