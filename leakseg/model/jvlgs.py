"""JVLGS: the triplet network with vision-language fusion and the FPN decoder (docs/MODELS.md,
"Text and VLF", "FPN decoder and fusion head").

Everything leakseg knows about the family is here: its config, its network, how its authors'
checkpoints are recognised and read (timm keeps a family's ``checkpoint_filter_fn`` beside its layers
the same way), and its published post-processing and training recipe, registered as :data:`FAMILY`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import List, Mapping, Optional

import torch

from leakseg.model.config import DEFAULT_PROMPTS, TextModelConfig, TripletConfig
from leakseg.model.decoder import FPNDecoder
from leakseg.model.family import ModelFamily, register_family
from leakseg.model.fusion import VisionLanguageFusion
from leakseg.model.layout import PVT_PREFIX, TEXT_PREFIX, CheckpointError
from leakseg.model.network import TripletNetwork


@dataclass
class JVLGSConfig(TripletConfig):
    text_dim: int = 512  # width of one prompt embedding (OWLv2 pooler_output)
    prompt_count: int = 4  # P, the input width of fmap_proj
    prompts: List[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    text_model: Optional[TextModelConfig] = field(default_factory=TextModelConfig)
    model_type: str = "jvlgs"

    def __post_init__(self):
        if isinstance(self.text_model, dict):
            self.text_model = TextModelConfig(**self.text_model)
        super().__post_init__()
        if len(self.prompts) != self.prompt_count:
            raise ValueError(f"{len(self.prompts)} prompts given for a model with prompt_count={self.prompt_count}")


class JVLGS(TripletNetwork):
    input_names = ("frames", "text", "neighbours")

    def __init__(self, config: JVLGSConfig):
        super().__init__(config, FPNDecoder(config.feature_channels))
        self.vlf = VisionLanguageFusion(config.feature_channels, config.text_dim, config.prompt_count)

    def encode(self, frames: torch.Tensor, text: torch.Tensor) -> List[torch.Tensor]:
        """Fused features of each frame at strides 8, 16, 32: (B, 3, H, W), (B, D, P) -> 3 x (B, C, h, w)."""
        return [self.vlf(f, text) for f in self.encoder(frames)]

    def forward(self, frames: torch.Tensor, text: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Logits for N frames from N frames: each frame is encoded once.

        frames (N, 3, S, S) normalised; text (N, D, P) the text matrix of each frame's clip;
        neighbours (N, 2) int64, the row indices (into this batch) of each frame's two
        neighbours, as ``triplet_neighbours`` gives them offset by the clip's first row.
        Frames of several clips go in one call. Returns (N, 1, S, S).
        """
        return self.forward_maps(frames, text, neighbours)[0]


# --- the authors' checkpoints (docs/MODELS.md, "Checkpoints") ------------------------------------

def _text_model_config(sd: Mapping[str, torch.Tensor]) -> Optional[TextModelConfig]:
    """The OWLv2 text model's shape, read off its weights; None for a checkpoint without one."""
    token = sd.get(TEXT_PREFIX + "text_model.embeddings.token_embedding.weight")
    if token is None:
        return None
    layers = {int(m[1]) for k in sd if (m := re.match(r"nlpmodel\.text_model\.encoder\.layers\.(\d+)\.", k))}
    try:
        positions = sd[TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"].shape[0]
        mlp = sd[TEXT_PREFIX + "text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"the text model is incomplete: missing {exc.args[0]}") from exc
    vocab, hidden = token.shape
    # Head count is not visible in any shape; OWLv2/CLIP text models use 64-wide heads.
    return TextModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=max(layers) + 1 if layers else 0,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=positions,
    )


def _config_from_checkpoint(sd: Mapping[str, torch.Tensor], backbone: str, prompts: Optional[List[str]]) -> JVLGSConfig:
    """Widths from the VLF projections, P from ``fmap_proj``; the published prompts unless others are given
    (a checkpoint trained with another P needs its own prompts: their order is not in the file)."""
    text_dim, channels = sd["visual_proj.weight"].shape
    prompt_count = sd["fmap_proj.weight"].shape[1]
    text_model = _text_model_config(sd)
    if prompts is None:
        if prompt_count != len(DEFAULT_PROMPTS):
            raise CheckpointError(
                f"this checkpoint was trained with {prompt_count} prompts; pass its {prompt_count} prompts in order"
            )
        prompts = list(DEFAULT_PROMPTS)
    return JVLGSConfig(backbone=backbone, feature_channels=channels, text_dim=text_dim, prompt_count=prompt_count,
                       prompts=list(prompts), text_model=text_model)


FAMILY = register_family(ModelFamily(
    name="jvlgs", config_class=JVLGSConfig, model_class=JVLGS,
    checkpoint_markers=(TEXT_PREFIX, "visual_proj.", "fmap_proj."),
    required_keys=(
        PVT_PREFIX + "patch_embed1.proj.weight",
        "visual_proj.weight",
        "fmap_proj.weight",
        "backbone.decoder.final_conv.weight",
        "fusion_conv.0.weight",
    ),
    checkpoint_renames=((r"^(visual_proj|fmap_proj)\.", lambda m: f"vlf.{m[1]}."),),
    config_from_checkpoint=_config_from_checkpoint,
    # The masks are opened with a 9x9 ellipse: ClipOptions' default. Loss: weighted structure loss on
    # the fused logits only; the rate drops for the last ~20 % of the epochs.
    published_postprocess={}, lr_drop_at=0.8, loss_on_decoder_maps=False, weighted_bce=True,
))
