"""FGSTP (ICIP 2025): the JVLGS modules without text, with SINet-V2's decoder (docs/MODELS.md,
"FGSTP decoder").

Per frame: encoder (PVTv2 + RFB). Per target frame t and neighbour k in its triplet:
c = CTC(F_t, F_k); u_s = GSA_s(c_s + F_t,s); (S_g, S_5, S_4, S_3) = decoder(u). The logits of t are
the fusion head over (S_3 of the first neighbour, S_3 of the second). The exported graph takes
(frames, neighbours): no text input.

Like jvlgs.py, this module holds the family's config, network, checkpoint rules and published recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional

import torch

from leakseg.model.config import TripletConfig
from leakseg.model.family import ModelFamily, register_family
from leakseg.model.layout import PVT_PREFIX
from leakseg.model.network import TripletNetwork
from leakseg.model.sinet import ReverseAttentionDecoder


@dataclass
class FGSTPConfig(TripletConfig):
    """FGSTP: the shared fields only (no text, no prompts)."""

    model_type: str = "fgstp"


class FGSTP(TripletNetwork):
    input_names = ("frames", "neighbours")

    def __init__(self, config: FGSTPConfig):
        super().__init__(config, ReverseAttentionDecoder(config.feature_channels))

    def encode(self, frames: torch.Tensor) -> List[torch.Tensor]:
        """Features of each frame at strides 8, 16, 32: (B, 3, H, W) -> 3 x (B, C, h, w)."""
        return self.encoder(frames)

    def forward(self, frames: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, S, S) for N frames (N, 3, S, S), each encoded once; ``neighbours`` (N, 2) int64."""
        return self.forward_maps(frames, neighbours)[0]


# --- the authors' checkpoints (docs/MODELS.md, "Checkpoints") ------------------------------------

def _config_from_checkpoint(sd: Mapping[str, torch.Tensor], backbone: str, prompts: Optional[List[str]]) -> FGSTPConfig:
    """The width is the NCD's; there is nothing else to read (``prompts`` is refused before this is asked)."""
    channels = sd["backbone.decoder.NCD.conv_upsample1.conv.weight"].shape[0]
    return FGSTPConfig(backbone=backbone, feature_channels=channels)


#: SINet-V2's decoder keeps the research code's names: ``NCD``, ``RS5/RS4/RS3``, each GRA's conv as ``conv.0``.
_DECODER_RENAMES = (
    (r"^backbone\.decoder\.NCD\.", lambda m: "decoder.ncd."),
    (r"^backbone\.decoder\.RS(\d)\.(\w+_gra)\.conv\.0\.", lambda m: f"decoder.rs{m[1]}.{m[2]}.conv."),
    (r"^backbone\.decoder\.RS(\d)\.", lambda m: f"decoder.rs{m[1]}."),
)

FAMILY = register_family(ModelFamily(
    name="fgstp", config_class=FGSTPConfig, model_class=FGSTP,
    checkpoint_markers=("backbone.decoder.NCD.",),
    required_keys=(
        PVT_PREFIX + "patch_embed1.proj.weight",
        "backbone.decoder.NCD.conv5.weight",
        "backbone.decoder.RS3.strong_gra.score.weight",
        "fusion_conv.0.weight",
    ),
    checkpoint_renames=_DECODER_RENAMES,
    config_from_checkpoint=_config_from_checkpoint,
    # Its test script does not open the masks. Its train script: structure loss with the plain mean BCE
    # (``reduce='none'`` is PyTorch's legacy spelling of "mean") on the fused logits and all four decoder
    # maps of both neighbours; the rate drops after epoch 44 of 60 (``adjust_lr(decay_epoch=45)``).
    published_postprocess={"opening_kernel": 0}, lr_drop_at=44 / 60, loss_on_decoder_maps=True, weighted_bce=False,
))
