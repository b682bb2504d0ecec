"""JVLGSConfig: everything needed to rebuild the network; saved next to its weights as JSON."""

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


@dataclass
class JVLGSConfig:
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
        if self.backbone not in PVT_VARIANTS:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(PVT_VARIANTS)}")
        if len(self.prompts) != self.prompt_count:
            raise ValueError(f"{len(self.prompts)} prompts given for a model with prompt_count={self.prompt_count}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "JVLGSConfig":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "JVLGSConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
