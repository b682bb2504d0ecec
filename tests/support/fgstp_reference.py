"""FGSTP's published forward, written out independently of leakseg.model (docs/MODELS.md, "FGSTP decoder").

The research code's way: one triplet at a time, three encoder passes, the SINet-V2 decoder spelled out
in functional form on the authors' state dict. The shared modules (encoder, CTC, GSA) are leakseg's:
they are JVLGS's, checked against the JVLGS reference elsewhere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _cb(sd, p, x):
    """BasicConv2d: conv without bias (3x3, padding 1) + BatchNorm in eval mode, no ReLU."""
    x = F.conv2d(x, sd[p + ".conv.weight"], padding=1)
    return F.batch_norm(x, sd[p + ".bn.running_mean"], sd[p + ".bn.running_var"], sd[p + ".bn.weight"],
                        sd[p + ".bn.bias"], False, 0.0, 1e-5)


def _ncd(sd, x1, x2, x3):
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
    p = "backbone.decoder.NCD."
    x2_1 = _cb(sd, p + "conv_upsample1", up(x1)) * x2
    x3_1 = _cb(sd, p + "conv_upsample2", up(x2_1)) * _cb(sd, p + "conv_upsample3", up(x2)) * x3
    x2_2 = _cb(sd, p + "conv_concat2", torch.cat((x2_1, _cb(sd, p + "conv_upsample4", up(x1))), 1))
    x3_2 = _cb(sd, p + "conv_concat3", torch.cat((x3_1, _cb(sd, p + "conv_upsample5", up(x2_2))), 1))
    return F.conv2d(_cb(sd, p + "conv4", x3_2), sd[p + "conv5.weight"], sd[p + "conv5.bias"])


def _gra(sd, p, x, y, group):
    cat = []
    for chunk in torch.chunk(x, group, dim=1):
        cat += [chunk, y]
    x = x + F.relu(F.conv2d(torch.cat(cat, 1), sd[p + ".conv.0.weight"], sd[p + ".conv.0.bias"], padding=1))
    return x, y + F.conv2d(x, sd[p + ".score.weight"], sd[p + ".score.bias"], padding=1)


def _reverse_stage(sd, p, x, y):
    y = -1 * torch.sigmoid(y) + 1
    x, y = _gra(sd, p + ".weak_gra", x, y, 1)
    x, y = _gra(sd, p + ".medium_gra", x, y, 4)
    _, y = _gra(sd, p + ".strong_gra", x, y, 32)
    return y


def _decoder_s3(sd, x2, x3, x4):
    s_g = _ncd(sd, x4, x3, x2)
    g = F.interpolate(s_g, scale_factor=0.25, mode="bilinear")
    s_5 = _reverse_stage(sd, "backbone.decoder.RS5", x4, g) + g
    g = F.interpolate(s_5, scale_factor=2, mode="bilinear")
    s_4 = _reverse_stage(sd, "backbone.decoder.RS4", x3, g) + g
    g = F.interpolate(s_4, scale_factor=2, mode="bilinear")
    s_3 = _reverse_stage(sd, "backbone.decoder.RS3", x2, g) + g
    return F.interpolate(s_3, scale_factor=8, mode="bilinear")


@torch.no_grad()
def published_forward(model, sd, frame1, frame2, frame3):
    """FGSTP.forward of the research code on one triplet (target first): the logits of frame1."""
    f1, f2, f3 = model.encoder(frame1), model.encoder(frame2), model.encoder(frame3)
    outs = []
    for fk in (f2, f3):
        corr = model.ctc(f1, fk)
        u = [model.gsa[s](corr[s] + f1[s]) for s in range(3)]
        outs.append(_decoder_s3(sd, *u))
    x = torch.cat(outs, 1)
    for i in range(3):
        x = F.conv2d(x, sd[f"fusion_conv.{i}.weight"], sd[f"fusion_conv.{i}.bias"], padding=1)
    return x
