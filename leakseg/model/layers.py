"""Small building blocks shared by several parts of the network."""

from torch import nn


class ConvBN(nn.Module):
    """Conv2d without bias + BatchNorm2d ("CB"); with ``relu=True`` it is "CBR".

    Sub-module names ``conv`` and ``bn`` are the checkpoint's (``*.conv.weight``, ``*.bn.*``).
    """

    def __init__(self, in_ch, out_ch, kernel_size, padding=0, dilation=1, relu=False):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)))
