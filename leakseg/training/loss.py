"""The published losses (docs/MODELS.md, "Training").

Every family trains with the structure loss (weighted BCE + weighted IoU); its spec
(leakseg.model.family) says on what and with which BCE. JVLGS: on the fused logits, weighted BCE.
FGSTP (its train.py): on the fused logits and on all four decoder maps (S_g, S_5, S_4, S_3) of both
neighbours, nine terms summed, with the plain mean BCE, because the research code passes
``reduce='none'``, which PyTorch's legacy argument handling reads as reduction="mean" (the weights then
cancel out).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from leakseg.model import get_family


def structure_loss(logits: torch.Tensor, mask: torch.Tensor, weighted_bce: bool = True) -> torch.Tensor:
    """The published loss on (B, 1, H, W) logits and masks in [0, 1]: mean over the batch of wBCE + wIoU
    (``weighted_bce=False``: the plain mean BCE, as FGSTP's code computes it)."""
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    if weighted_bce:
        bce = F.binary_cross_entropy_with_logits(logits, mask, reduction="none")
        wbce = (weit * bce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    else:
        wbce = F.binary_cross_entropy_with_logits(logits, mask)
    pred = torch.sigmoid(logits)
    inter = (pred * mask * weit).sum(dim=(2, 3))
    union = ((pred + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou).mean()


def published_loss(family: str, logits: torch.Tensor, maps1: Sequence[torch.Tensor], maps2: Sequence[torch.Tensor],
                   mask: torch.Tensor) -> torch.Tensor:
    """The family's published training loss from the fused logits and the two neighbours' decoder maps."""
    spec = get_family(family)
    supervised = (*maps1, *maps2) if spec.loss_on_decoder_maps else ()
    return sum((structure_loss(m, mask, spec.weighted_bce) for m in supervised),
               structure_loss(logits, mask, spec.weighted_bce))
