"""The networks, one module per part, as docs/MODELS.md describes them.

JVLGS and FGSTP are two compositions of the same modules (:class:`~leakseg.model.network.TripletNetwork`):
encoder, temporal correlation, GSA and fusion head, with VLF + FPN decoder (JVLGS) or SINet-V2's
reverse attention decoder (FGSTP). Each family module registers its spec (leakseg.model.family);
the order of the imports below is the registry's order, the default family first.
"""

from __future__ import annotations

from typing import Union

from leakseg.model.config import DEFAULT_PROMPTS, PVT_VARIANTS, TextModelConfig, TripletConfig, config_from_dict
from leakseg.model.family import DEFAULT_FAMILY, ModelFamily, family_names, get_family, register_family
from leakseg.model.jvlgs import JVLGS, JVLGSConfig
from leakseg.model.fgstp import FGSTP, FGSTPConfig
from leakseg.model.network import TripletNetwork
from leakseg.model.temporal import MIN_CLIP_FRAMES, batch_neighbours, triplet_neighbours

#: The registered families' names (a config's ``model_type``), the default first.
FAMILIES = family_names()


def build_model(config: Union[TripletConfig, str] = "pvt_v2_b5", family: str = DEFAULT_FAMILY,
                **overrides) -> TripletNetwork:
    """A network in eval mode from a config, or from a backbone variant name and a family
    (``build_model("pvt_v2_b0")``, ``build_model("pvt_v2_b0", "fgstp")``)."""
    if isinstance(config, str):
        config = get_family(family).config_class(backbone=config, **overrides)
    return get_family(config.model_type).model_class(config).eval()


__all__ = [
    "DEFAULT_FAMILY",
    "DEFAULT_PROMPTS",
    "FAMILIES",
    "FGSTP",
    "FGSTPConfig",
    "JVLGS",
    "JVLGSConfig",
    "MIN_CLIP_FRAMES",
    "PVT_VARIANTS",
    "TextModelConfig",
    "TripletConfig",
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
