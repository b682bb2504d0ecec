"""What JVLGS and FGSTP have in common: the triplet network and its clip-level forward.

Both families are compositions of the same modules: per frame, the encoder (PVTv2 + RFB) and a
family-specific feature step (JVLGS: VLF with the text matrix; FGSTP: none); per target frame and
each of its two neighbours, the temporal correlation (CTC), the three GSA modules and a decoder
(JVLGS: FPN; FGSTP: SINet-V2's reverse attention decoder); the fusion head over the two
neighbours' final maps gives the target's logits.

``TripletNetwork.forward_maps`` decodes every frame's triplet from features encoded once per frame;
``forward_triplet`` is the research code's way (three encoder passes per triplet). docs/MODELS.md
describes each part.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
from torch import nn

from leakseg.model.decoder import fusion_head
from leakseg.model.encoder import VisionEncoder
from leakseg.model.gsa import GroupSplitAttention
from leakseg.model.temporal import TemporalCorrelation

Features = List[torch.Tensor]  # one frame batch at strides 8, 16, 32: 3 x (B, C, h, w)


class TripletNetwork(nn.Module):
    """Encoder, CTC, three GSA modules, a decoder and the fusion head. Subclasses add the feature
    step and the forward signature their exported graph has (``input_names``)."""

    #: The exported graph's inputs, in order (the output is "logits").
    input_names: Tuple[str, ...] = ("frames", "neighbours")

    def __init__(self, config, decoder: nn.Module):
        super().__init__()
        self.config = config
        c = config.feature_channels
        self.encoder = VisionEncoder(config.backbone, c)
        self.ctc = TemporalCorrelation(c)
        self.gsa = nn.ModuleList(GroupSplitAttention(c) for _ in range(3))
        self.decoder = decoder
        self.fusion_conv = fusion_head(c)

    @property
    def family(self) -> str:
        return self.config.model_type

    def neighbour_maps(self, target: Features, neighbour: Features, out_size) -> List[torch.Tensor]:
        """The decoder's maps for one neighbour (CTC -> GSA -> decoder), coarse to fine; the last is fused."""
        corr = self.ctc(target, neighbour)
        maps = self.decoder([gsa(t + c) for gsa, t, c in zip(self.gsa, target, corr)], out_size)
        return list(maps) if isinstance(maps, (list, tuple)) else [maps]

    def decode(self, target: Features, first: Features, second: Features, out_size
               ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """(logits of the target frames, maps of the first neighbour, maps of the second)."""
        maps1 = self.neighbour_maps(target, first, out_size)
        maps2 = self.neighbour_maps(target, second, out_size)
        return self.fusion_conv(torch.cat([maps1[-1], maps2[-1]], dim=1)), maps1, maps2

    def decode_clip(self, feats: Features, neighbours: torch.Tensor, out_size):
        """:meth:`decode` for every frame of a batch from features computed once per frame;
        ``neighbours`` (N, 2) int64 row indices of each frame's two neighbours (``batch_neighbours``)."""
        first = [f.index_select(0, neighbours[:, 0]) for f in feats]
        second = [f.index_select(0, neighbours[:, 1]) for f in feats]
        return self.decode(feats, first, second, out_size)

    def decode_targets(self, feats: Features, targets: torch.Tensor, neighbours: torch.Tensor, out_size):
        """:meth:`decode` for some frames of a batch: ``targets`` (M,) int64 rows to decode, ``neighbours``
        (M, 2) int64 rows of their two neighbours. A stream decodes each frame once its triplet is complete,
        from features computed when each frame arrived (leakseg.model.stream)."""
        target = [f.index_select(0, targets) for f in feats]
        first = [f.index_select(0, neighbours[:, 0]) for f in feats]
        second = [f.index_select(0, neighbours[:, 1]) for f in feats]
        return self.decode(target, first, second, out_size)

    def encode(self, frames: torch.Tensor, *text: torch.Tensor) -> Features:
        """Features of each frame at strides 8, 16, 32; ``text`` is the text matrix of a family that takes prompts."""
        raise NotImplementedError

    def forward_maps(self, frames: torch.Tensor, *inputs: torch.Tensor
                     ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """The clip forward on the graph's inputs (``input_names``: frames, [text,] neighbours), each frame
        encoded once, with the decoder's maps of both neighbours (which a published loss may supervise)."""
        *text, neighbours = inputs
        return self.decode_clip(self.encode(frames, *text), neighbours, frames.shape[-2:])

    def forward_triplet(self, triplet: torch.Tensor, *text: torch.Tensor
                        ) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
        """The research code's way on (B, 3, 3, S, S) triplets, target first: three encoder passes per
        triplet. Returns (logits, first neighbour's maps, second's maps), the maps coarse to fine."""
        target, first, second = (self.encode(triplet[:, i], *text) for i in range(3))
        return self.decode(target, first, second, triplet.shape[-2:])

