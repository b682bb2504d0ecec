"""Model configs: everything needed to rebuild a network; saved next to its weights as JSON.

Two families share the encoder, the temporal correlation, GSA and the fusion head: JVLGS
(:class:`JVLGSConfig`, with prompts) and FGSTP (:class:`FGSTPConfig`, no text, SINet-V2 decoder).
A config's ``model_type`` is its family; :func:`config_from_dict` rebuilds either from JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Union

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


#: The model families leakseg serves (a config's ``model_type``).
FAMILIES = ("jvlgs", "fgstp")

#: Each family's post-processing as its authors' test script does it (ClipOptions fields over the
#: defaults): JVLGS opens the masks with a 9x9 ellipse (the default), FGSTP does not open them.
PUBLISHED_POSTPROCESS = {"jvlgs": {}, "fgstp": {"opening_kernel": 0}}


class _ConfigIO:
    """JSON round trip shared by the configs (unknown keys, e.g. a native checkpoint's extras, are ignored)."""

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


def _check_backbone(backbone: str) -> None:
    if backbone not in PVT_VARIANTS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(PVT_VARIANTS)}")


@dataclass
class JVLGSConfig(_ConfigIO):
    backbone: str = "pvt_v2_b5"
    input_size: int = 352
    feature_channels: int = 32  # RFB output width, the width of every later stage
    text_dim: int = 512  # width of one prompt embedding (OWLv2 pooler_output)
    prompt_count: int = 4  # P, the input width of fmap_proj
    prompts: List[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    text_model: Optional[TextModelConfig] = field(default_factory=TextModelConfig)
    model_type: str = "jvlgs"

    def __post_init__(self):
        if isinstance(self.text_model, dict):
            self.text_model = TextModelConfig(**self.text_model)
        _check_backbone(self.backbone)
        if len(self.prompts) != self.prompt_count:
            raise ValueError(f"{len(self.prompts)} prompts given for a model with prompt_count={self.prompt_count}")


@dataclass
class FGSTPConfig(_ConfigIO):
    """FGSTP (ICIP 2025): the JVLGS encoder, CTC, GSA and fusion head without text; SINet-V2 decoder."""

    backbone: str = "pvt_v2_b5"
    input_size: int = 352
    feature_channels: int = 32  # RFB output width, the width of every later stage
    model_type: str = "fgstp"

    def __post_init__(self):
        _check_backbone(self.backbone)


CONFIG_CLASSES = {"jvlgs": JVLGSConfig, "fgstp": FGSTPConfig}


def config_from_dict(data: dict):
    """The config of either family from its JSON (``model_type``; configs written before FGSTP are JVLGS)."""
    family = data.get("model_type") or "jvlgs"
    if family not in CONFIG_CLASSES:
        raise ValueError(f"unknown model_type {family!r}; leakseg knows {list(FAMILIES)}")
    return CONFIG_CLASSES[family].from_dict(data)
