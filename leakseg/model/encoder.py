"""Vision encoder: timm's PVTv2 (stages 2-4) followed by one RFB per stage (docs/MODELS.md, "Encoder")."""

from __future__ import annotations

from typing import List

import torch
from torch import nn

from leakseg.model.layers import ConvBN

#: The PVTv2 stages JVLGS uses: strides 8, 16 and 32.
USED_STAGES = (1, 2, 3)


class RFB(nn.Module):
    """Receptive field block: four branches of growing dilation, concatenated, plus a residual."""

    def __init__(self, in_ch: int, out_ch: int = 32):
        super().__init__()
        branches = [nn.Sequential(ConvBN(in_ch, out_ch, 1))]
        for n in (3, 5, 7):
            branches.append(
                nn.Sequential(
                    ConvBN(in_ch, out_ch, 1),
                    ConvBN(out_ch, out_ch, (1, n), padding=(0, n // 2)),
                    ConvBN(out_ch, out_ch, (n, 1), padding=(n // 2, 0)),
                    ConvBN(out_ch, out_ch, 3, padding=n, dilation=n),
                )
            )
        self.branches = nn.ModuleList(branches)
        self.conv_cat = ConvBN(4 * out_ch, out_ch, 3, padding=1)
        self.conv_res = ConvBN(in_ch, out_ch, 1)

    def forward(self, x):
        cat = torch.cat([branch(x) for branch in self.branches], dim=1)
        return torch.relu(self.conv_cat(cat) + self.conv_res(x))


class VisionEncoder(nn.Module):
    """PVTv2 from timm; ``feature_info`` gives the channels of the used stages (no magic numbers)."""

    def __init__(self, backbone: str, out_ch: int = 32):
        super().__init__()
        import timm

        self.pvt = timm.create_model(backbone, pretrained=False, num_classes=0)
        self.feature_info = [self.pvt.feature_info[i] for i in USED_STAGES]
        self.rfb = nn.ModuleList(RFB(info["num_chs"], out_ch) for info in self.feature_info)

    def forward(self, x) -> List[torch.Tensor]:
        # timm's own stage-by-stage loop; each stage ends with its LayerNorm, as the original.
        x = self.pvt.patch_embed(x)
        feats = []
        for i, stage in enumerate(self.pvt.stages):
            x = stage(x)
            if i in USED_STAGES:
                feats.append(x)
        return [rfb(f) for rfb, f in zip(self.rfb, feats)]
