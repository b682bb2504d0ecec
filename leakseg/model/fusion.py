"""VLF, the vision-language fusion (docs/MODELS.md, "Text and VLF")."""

import torch
from torch import nn


class VisionLanguageFusion(nn.Module):
    """Per pixel: 32 features -> 512 (visual_proj) -> P prompt scores (x E) -> 32 (fmap_proj).

    ``text`` is the text matrix E per frame, (B, D, P): prompt embeddings as columns. It is an
    input rather than a buffer so that requests with different prompt lists share a batch.
    """

    def __init__(self, channels: int = 32, text_dim: int = 512, prompt_count: int = 4):
        super().__init__()
        self.visual_proj = nn.Linear(channels, text_dim, bias=False)
        self.fmap_proj = nn.Linear(prompt_count, channels, bias=False)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        v = self.visual_proj(x.permute(0, 2, 3, 1).reshape(b, h * w, c))  # (B, HW, D)
        scores = torch.bmm(v, text)  # (B, HW, P)
        return self.fmap_proj(scores).reshape(b, h, w, c).permute(0, 3, 1, 2)
