"""JVLGS: the whole network, and the clip-level forward that encodes every frame once."""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from leakseg.model.config import JVLGSConfig
from leakseg.model.decoder import FPNDecoder, fusion_head
from leakseg.model.encoder import VisionEncoder
from leakseg.model.fusion import VisionLanguageFusion
from leakseg.model.gsa import GroupSplitAttention
from leakseg.model.temporal import TemporalCorrelation

class JVLGS(nn.Module):
    def __init__(self, config: JVLGSConfig):
        super().__init__()
        self.config = config
        c = config.feature_channels
        self.encoder = VisionEncoder(config.backbone, c)
        self.vlf = VisionLanguageFusion(c, config.text_dim, config.prompt_count)
        self.ctc = TemporalCorrelation(c)
        self.gsa = nn.ModuleList(GroupSplitAttention(c) for _ in range(3))
        self.decoder = FPNDecoder(c)
        self.fusion_conv = fusion_head(c)

    def encode(self, frames: torch.Tensor, text: torch.Tensor) -> List[torch.Tensor]:
        """Fused features of each frame at strides 8, 16, 32: (B, 3, H, W), (B, D, P) -> 3 x (B, C, h, w)."""
        return [self.vlf(f, text) for f in self.encoder(frames)]

    def _decode_neighbour(self, target, neighbour, out_size):
        corr = self.ctc(target, neighbour)
        return self.decoder([gsa(t + c) for gsa, t, c in zip(self.gsa, target, corr)], out_size)

    def decode(self, target, first, second, out_size) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits of the target frames and the two auxiliary per-neighbour maps."""
        d1 = self._decode_neighbour(target, first, out_size)
        d2 = self._decode_neighbour(target, second, out_size)
        return self.fusion_conv(torch.cat([d1, d2], dim=1)), d1, d2

    def forward(self, frames: torch.Tensor, text: torch.Tensor, neighbours: torch.Tensor) -> torch.Tensor:
        """Logits for N frames from N frames: each frame is encoded once.

        frames (N, 3, S, S) normalised; text (N, D, P) the text matrix of each frame's clip;
        neighbours (N, 2) int64, the row indices (into this batch) of each frame's two
        neighbours, as ``triplet_neighbours`` gives them offset by the clip's first row.
        Frames of several clips go in one call. Returns (N, 1, S, S).
        """
        feats = self.encode(frames, text)
        first = [f.index_select(0, neighbours[:, 0]) for f in feats]
        second = [f.index_select(0, neighbours[:, 1]) for f in feats]
        logits, _, _ = self.decode(feats, first, second, frames.shape[-2:])
        return logits

    def forward_triplet(self, triplet: torch.Tensor, text: torch.Tensor):
        """The research code's way: (B, 3, 3, S, S) triplets, target first; three encoder passes.

        Returns (logits, d1, d2), each (B, 1, S, S).
        """
        target, first, second = (self.encode(triplet[:, i], text) for i in range(3))
        return self.decode(target, first, second, triplet.shape[-2:])


def build_model(config: JVLGSConfig | str = "pvt_v2_b5", **overrides) -> JVLGS:
    """A JVLGS from a config or a backbone variant name (``build_model("pvt_v2_b0")``)."""
    if isinstance(config, str):
        config = JVLGSConfig(backbone=config, **overrides)
    return JVLGS(config).eval()
