"""JVLGS: the shared triplet network with vision-language fusion and the FPN decoder."""

from __future__ import annotations

from typing import List

import torch

from leakseg.model.config import JVLGSConfig
from leakseg.model.decoder import FPNDecoder
from leakseg.model.family import ModelFamily, register_family
from leakseg.model.fusion import VisionLanguageFusion
from leakseg.model.network import TripletNetwork


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
        return self.decode_clip(self.encode(frames, text), neighbours, frames.shape[-2:])[0]

    def forward_triplet(self, triplet: torch.Tensor, text: torch.Tensor):
        """The research code's way: (B, 3, 3, S, S) triplets, target first; three encoder passes.

        Returns (logits, d1, d2), each (B, 1, S, S): the fused logits and the per-neighbour maps.
        """
        logits, maps1, maps2 = self.decode_triplet(triplet, lambda frames: self.encode(frames, text))
        return logits, maps1[-1], maps2[-1]


FAMILY = register_family(ModelFamily(
    name="jvlgs", config_class=JVLGSConfig, model_class=JVLGS, published_postprocess={}, lr_drop_at=0.8,
))
