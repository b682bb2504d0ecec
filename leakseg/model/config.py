"""Model configs: everything needed to rebuild a network; saved next to its weights as JSON.

The families share the encoder, the temporal correlation, GSA and the fusion head, and so the fields
of :class:`TripletConfig`; each family's config (``JVLGSConfig`` in jvlgs.py, ``FGSTPConfig`` in
fgstp.py) adds its own. A config's ``model_type`` is its family; :func:`config_from_dict` rebuilds
any registered family's from JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Union

from leakseg.model.family import DEFAULT_FAMILY, get_family

#: The published prompt list. Order matters: column j of the text matrix feeds fmap_proj input j.
DEFAULT_PROMPTS = ["white steam", "floating steam", "billowing smoke", "flowing smoke"]

#: PVTv2 variants as timm builds them: (embed dim of stage 1, depths). Used to infer a variant
#: from checkpoint shapes and to describe its feature pyramid.
PVT_VARIANTS = {
    "pvt_v2_b0": (32, (2, 2, 2, 2)),
    "pvt_v2_b1": (64, (2, 2, 2, 2)),
    "pvt_v2_b2": (64, (3, 4, 6, 3)),
    "pvt_v2_b3": (64, (3, 4, 18, 3)),
    "pvt_v2_b4": (64, (3, 8, 27, 3)),
    "pvt_v2_b5": (64, (3, 6, 40, 3)),
}


@dataclass
class TextModelConfig:
    """The OWLv2 text transformer's shape (google/owlv2-base-patch16 by default)."""

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 16

    def to_hf(self):
        from transformers import Owlv2TextConfig

        return Owlv2TextConfig(**asdict(self))


@dataclass
class TripletConfig:
    """The fields every family has (the shared encoder, CTC, GSA and fusion head) and the JSON round trip.

    A family's config adds its own fields and, last, ``model_type``: the family's name (leakseg.model.family).
    Unknown keys in JSON (e.g. a native checkpoint's extras) are ignored.
    """

    backbone: str = "pvt_v2_b5"
    input_size: int = 352
    feature_channels: int = 32  # RFB output width, the width of every later stage

    def __post_init__(self):
        if self.backbone not in PVT_VARIANTS:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(PVT_VARIANTS)}")

    @property
    def family(self) -> str:
        return self.model_type

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]):
        return cls.from_dict(json.loads(Path(path).read_text()))


def config_from_dict(data: dict):
    """The config of any registered family from its JSON (``model_type``; configs written before FGSTP are JVLGS)."""
    family = get_family(data.get("model_type") or DEFAULT_FAMILY, kind="model_type")
    return family.config_class.from_dict(data)
