"""CTC, the temporal correlation of a target frame with one neighbour (docs/MODELS.md, "CTC"), and the triplet rule
that says which two neighbours each frame of a clip is correlated with ("Triplets")."""

from typing import List, Sequence, Tuple

import torch
from torch import nn

from leakseg.model.layers import ConvBN

MIN_CLIP_FRAMES = 3


def triplet_neighbours(num_frames: int) -> List[Tuple[int, int]]:
    """The two neighbours of every frame of a clip, nearer-in-time-and-later first.

    Frame t uses (t+1, t+2), the published rule. The last two frames, which the research code
    leaves without a mask, use the other two frames of the clip's last window of three:
    T-2 uses (T-1, T-3) and T-1 uses (T-2, T-3). Every frame thus sees two distinct frames at
    most two steps away, and a clip needs at least 3 frames.
    """
    if num_frames < MIN_CLIP_FRAMES:
        raise ValueError(f"a clip needs at least {MIN_CLIP_FRAMES} frames, got {num_frames}")
    last = num_frames - 1
    pairs = [(t + 1, t + 2) for t in range(num_frames - 2)]
    pairs += [(last, last - 2), (last - 1, last - 2)]
    return pairs


def batch_neighbours(lengths: Sequence[int]) -> List[Tuple[int, int]]:
    """Neighbour rows of several clips stacked in one batch: each clip's rule, offset by its first row."""
    rows, start = [], 0
    for length in lengths:
        rows += [(a + start, b + start) for a, b in triplet_neighbours(length)]
        start += length
    return rows


#: Max-pool subsampling of keys and values at each scale (strides 8, 16, 32).
SUBSAMPLING = (2, 4, 8)


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local attention without 1/sqrt(d) scaling, keys max-pooled by r."""

    def __init__(self, channels: int = 64, inner: int = 32, r: int = 2):
        super().__init__()
        self.inner = inner
        self.g = nn.Sequential(nn.Conv2d(channels, inner, 1), nn.MaxPool2d(r))
        self.pool = nn.MaxPool2d(r)
        self.W = nn.Conv2d(inner, channels, 1)

    def forward(self, x):
        b, _, h, w = x.shape
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, HW/r^2, inner)
        theta = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        phi = self.pool(x).flatten(2)  # (B, C, HW/r^2)
        attn = torch.softmax(torch.bmm(theta, phi), dim=-1)  # logits are large: keep fp32
        y = torch.bmm(attn, g).transpose(1, 2).reshape(b, self.inner, h, w)
        return self.W(y) + x


class NonLocalLayer(nn.Module):
    """z = NonLocal(x); out = out_conv(concat(x, z))."""

    def __init__(self, channels: int = 64, r: int = 2):
        super().__init__()
        self.nonlocal_block = NonLocalBlock(channels, channels // 2, r)
        self.out_conv = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, x):
        return self.out_conv(torch.cat([x, self.nonlocal_block(x)], dim=1))


class TemporalCorrelation(nn.Module):
    def __init__(self, channels: int = 32):
        super().__init__()
        self.nl_layers = nn.ModuleList(NonLocalLayer(2 * channels, r) for r in SUBSAMPLING)
        self.convs = nn.ModuleList(ConvBN(2 * channels, channels, 3, padding=1) for _ in SUBSAMPLING)

    def forward(self, target: List[torch.Tensor], neighbour: List[torch.Tensor]) -> List[torch.Tensor]:
        return [
            conv(nl(torch.cat([t, k], dim=1)))
            for nl, conv, t, k in zip(self.nl_layers, self.convs, target, neighbour)
        ]
