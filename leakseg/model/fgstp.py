"""FGSTP (ICIP 2025): the JVLGS modules without text, with SINet-V2's decoder (REFERENCE.md, FGSTP).

Per frame: encoder (PVTv2 + RFB). Per target frame t and neighbour k in its triplet:
c = CTC(F_t, F_k); u_s = GSA_s(c_s + F_t,s); (S_g, S_5, S_4, S_3) = decoder(u). The logits of t are
the fusion head over (S_3 of the first neighbour, S_3 of the second). The exported graph takes
(frames, neighbours): no text input.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from leakseg.model.config import FGSTPConfig
from leakseg.model.family import ModelFamily, register_family
from leakseg.model.network import TripletNetwork
from leakseg.model.sinet import ReverseAttentionDecoder


class FGSTP(TripletNetwork):
    input_names = ("frames", "neighbours")

    def __init__(self, config: FGSTPConfig):
        super().__init__(config, ReverseAttentionDecoder(config.feature_channels))

    def encode(self, frames: torch.Tensor) -> List[torch.Tensor]:
        """Features of each frame at strides 8, 16, 32: (B, 3, H, W) -> 3 x (B, C, h, w)."""
        return self.encoder(frames)

    def forward_maps(self, frames: torch.Tensor, neighbours: torch.Tensor
                     ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """Clip forward with the decoder's maps of both neighbours (for the published training loss)."""
        return self.decode_clip(self.encode(frames), neighbours, frames.shape[-2:])

    def forward(self, frames: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Logits (N, 1, S, S) for N frames (N, 3, S, S), each encoded once; ``neighbours`` (N, 2) int64."""
        return self.decode_clip(self.encode(frames), neighbours, frames.shape[-2:])[0]

    def forward_triplet(self, triplet: torch.Tensor):
        """The research code's way on (B, 3, 3, S, S) triplets: three encoder passes per triplet.

        Returns (logits, maps of neighbour t+1, maps of neighbour t+2); maps are [S_g, S_5, S_4, S_3].
        """
        return self.decode_triplet(triplet, self.encode)


#: FGSTP's test script does not open the masks; its train script drops the rate after epoch 44 of 60.
FAMILY = register_family(ModelFamily(
    name="fgstp", config_class=FGSTPConfig, model_class=FGSTP, published_postprocess={"opening_kernel": 0},
    lr_drop_at=44 / 60,
))
