"""The FPN decoder and the fusion head (docs/MODELS.md, "FPN decoder and fusion head"). No activations anywhere."""

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def _up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class FPNDecoder(nn.Module):
    def __init__(self, channels: int = 32):
        super().__init__()
        self.smooth_convs = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(3))
        self.final_conv = nn.Conv2d(channels, 1, 1)

    def forward(self, feats: List[torch.Tensor], out_size: Tuple[int, int]) -> torch.Tensor:
        a0, a1, a2 = feats
        p2 = self.smooth_convs[1](a1 + _up(a2, a1))
        p1 = self.smooth_convs[0](a0 + _up(p2, a0))
        d = self.final_conv(self.smooth_convs[2](p1))
        return F.interpolate(d, size=out_size, mode="bilinear", align_corners=False)


def fusion_head(channels: int = 32) -> nn.Sequential:
    """Three 3x3 convolutions over the two per-neighbour maps: the logits of the target frame."""
    return nn.Sequential(
        nn.Conv2d(2, channels, 3, padding=1),
        nn.Conv2d(channels, channels, 3, padding=1),
        nn.Conv2d(channels, 1, 3, padding=1),
    )
