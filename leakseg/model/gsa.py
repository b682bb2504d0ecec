"""GSA, the group split attention applied after the temporal correlation (docs/MODELS.md, "GSA")."""

import torch
from torch import nn

from leakseg.model.layers import ConvBN


class GroupSplitAttention(nn.Module):
    """Six groups of 16 channels, each convolved with the previous group's fork, gated by a softmax."""

    def __init__(self, channels: int = 32, groups: int = 6, width: int = 16):
        super().__init__()
        self.width = width
        self.expand_conv = ConvBN(channels, groups * width, 1, relu=True)
        interact = [ConvBN(width, 3 * width, 3, padding=1, relu=True)]
        interact += [ConvBN(2 * width, 3 * width, 3, padding=1, relu=True) for _ in range(groups - 2)]
        interact += [ConvBN(2 * width, 2 * width, 3, padding=1, relu=True)]
        self.interact = nn.ModuleList(interact)
        self.gate_generator = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(groups * width, width, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, groups * width, 1),
            nn.Softmax(dim=1),
        )
        self.fuse_conv = ConvBN(groups * width, channels, 3, padding=1)  # "BNReLU": no ReLU

    def forward(self, u):
        parts = torch.split(self.expand_conv(u), self.width, dim=1)
        outs, gates = [], []
        out, fork, gate = torch.split(self.interact[0](parts[0]), self.width, dim=1)
        outs.append(out)
        gates.append(gate)
        for conv, part in zip(self.interact[1:-1], parts[1:-1]):
            out, fork, gate = torch.split(conv(torch.cat([part, fork], dim=1)), self.width, dim=1)
            outs.append(out)
            gates.append(gate)
        out, gate = torch.split(self.interact[-1](torch.cat([parts[-1], fork], dim=1)), self.width, dim=1)
        outs.append(out)
        gates.append(gate)
        v = torch.cat(outs, dim=1) * self.gate_generator(torch.cat(gates, dim=1))
        return torch.relu(self.fuse_conv(v) + u)
