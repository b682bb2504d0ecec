"""SINet-V2's decoder parts, as FGSTP uses them (docs/MODELS.md, "FGSTP decoder").

* :class:`NeighbourConnectionDecoder` (NCD): a coarse map S_g at stride 8 from the three scales;
* :class:`GroupReversalAttention` (GRA): features split into g channel groups, each followed by the
  reversed guidance map, convolved back and used to refine the guidance;
* :class:`ReverseStage`: three GRAs (1, 4 and 32 groups) on r = 1 - sigmoid(guidance);
* :class:`ReverseAttentionDecoder`: NCD, then reverse stages at strides 32, 16, 8 (S_5, S_4, S_3).

"BasicConv2d" in the research code is conv + BN without activation: :class:`ConvBN`.
"""

from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from leakseg.model.layers import ConvBN


def _up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The NCD's upsampling: bilinear x2 with align_corners=True (to ``like``'s size, which is twice
    x's at inputs that are multiples of 32, and the nearest size at others, e.g. 232 training crops)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=True)


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """Bilinear, align_corners=False: the research code's ``F.interpolate(scale_factor=...)`` at the
    sizes those factors give (exact for inputs that are multiples of 32, e.g. 352)."""
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class NeighbourConnectionDecoder(nn.Module):
    """Coarse map from (stride 8, 16, 32) features: neighbouring scales multiplied, then concatenated."""

    def __init__(self, channels: int = 32):
        super().__init__()
        c = channels
        self.conv_upsample1 = ConvBN(c, c, 3, padding=1)
        self.conv_upsample2 = ConvBN(c, c, 3, padding=1)
        self.conv_upsample3 = ConvBN(c, c, 3, padding=1)
        self.conv_upsample4 = ConvBN(c, c, 3, padding=1)
        self.conv_upsample5 = ConvBN(2 * c, 2 * c, 3, padding=1)
        self.conv_concat2 = ConvBN(2 * c, 2 * c, 3, padding=1)
        self.conv_concat3 = ConvBN(3 * c, 3 * c, 3, padding=1)
        self.conv4 = ConvBN(3 * c, 3 * c, 3, padding=1)
        self.conv5 = nn.Conv2d(3 * c, 1, 1)

    def forward(self, x8: torch.Tensor, x16: torch.Tensor, x32: torch.Tensor) -> torch.Tensor:
        mid = self.conv_upsample1(_up(x32, x16)) * x16
        fine = self.conv_upsample2(_up(mid, x8)) * self.conv_upsample3(_up(x16, x8)) * x8
        mid2 = self.conv_concat2(torch.cat([mid, self.conv_upsample4(_up(x32, x16))], dim=1))
        fine2 = self.conv_concat3(torch.cat([fine, self.conv_upsample5(_up(mid2, x8))], dim=1))
        return self.conv5(self.conv4(fine2))


class GroupReversalAttention(nn.Module):
    """x split into ``groups`` channel chunks, each followed by the one-channel map r; then
    x = x + ReLU(conv(that)), r = r + score(x)."""

    def __init__(self, channels: int = 32, groups: int = 1):
        super().__init__()
        if channels % groups:
            raise ValueError(f"{channels} channels do not split into {groups} groups")
        self.groups = groups
        self.conv = nn.Conv2d(channels + groups, channels, 3, padding=1)
        self.score = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, x: torch.Tensor, r: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = x.shape
        g = self.groups
        # (B, g, c/g, H, W) chunks with r appended to each -> (B, c + g, H, W): chunk0, r, chunk1, r, ...
        chunks = x.reshape(b, g, c // g, h, w)
        interleaved = torch.cat([chunks, r.unsqueeze(1).expand(b, g, 1, h, w)], dim=2).reshape(b, c + g, h, w)
        x = x + torch.relu(self.conv(interleaved))
        return x, r + self.score(x)


class ReverseStage(nn.Module):
    """Refines a guidance map with features of one scale: returns the residual added to the guidance."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.weak_gra = GroupReversalAttention(channels, 1)
        self.medium_gra = GroupReversalAttention(channels, channels // 8)
        self.strong_gra = GroupReversalAttention(channels, channels)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        r = 1.0 - torch.sigmoid(guidance)
        x, r = self.weak_gra(x, r)
        x, r = self.medium_gra(x, r)
        _, r = self.strong_gra(x, r)
        return r


class ReverseAttentionDecoder(nn.Module):
    """SINet-V2's decoder on the three scales: S_g (NCD), then S_5, S_4, S_3 by reverse attention.

    Returns the four maps resized to ``out_size``, coarse to fine; the last (S_3) is the prediction.
    """

    def __init__(self, channels: int = 32):
        super().__init__()
        self.ncd = NeighbourConnectionDecoder(channels)
        self.rs5 = ReverseStage(channels)
        self.rs4 = ReverseStage(channels)
        self.rs3 = ReverseStage(channels)

    def forward(self, feats: List[torch.Tensor], out_size) -> List[torch.Tensor]:
        x8, x16, x32 = feats
        s_g = self.ncd(x8, x16, x32)
        guidance = _resize(s_g, x32.shape[-2:])
        s_5 = self.rs5(x32, guidance) + guidance
        guidance = _resize(s_5, x16.shape[-2:])
        s_4 = self.rs4(x16, guidance) + guidance
        guidance = _resize(s_4, x8.shape[-2:])
        s_3 = self.rs3(x8, guidance) + guidance
        return [_resize(s, out_size) for s in (s_g, s_5, s_4, s_3)]
