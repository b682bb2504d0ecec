"""Small real models for tests: PVTv2-b0 with a 2-layer, 64-wide text model, seeded end to end."""

from __future__ import annotations

SMALL_TEXT = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)


def small_model(backbone: str = "pvt_v2_b0", seed: int = 0):
    """A JVLGS with a small text width, randomised (BN statistics too) so outputs are not trivial."""
    import torch
    from support.authors_format import randomise_

    from leakseg.model import TextModelConfig, build_model

    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the weights' own init too: the same model whatever ran before
        model = build_model(backbone, text_dim=SMALL_TEXT["hidden_size"], text_model=TextModelConfig(**SMALL_TEXT))
    return randomise_(model, seed)
