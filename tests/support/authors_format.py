"""Writing checkpoints in the authors' layout, for tests: leakseg names -> research-code names.

This is the inverse of leakseg.model.checkpoint's filter, written independently of it (docs/MODELS.md,
"Checkpoints"): the names every family shares, then each family's own. test_checkpoint checks that a
b5 model of every registered family written this way has exactly the keys and shapes of its manifest in
tests/data, so the inverse cannot drift from the real layout unnoticed.
"""

from __future__ import annotations

import re
from typing import Dict

import torch

_PVT = [
    (r"^patch_embed\.", lambda m: "patch_embed1."),
    (r"^stages\.(\d)\.downsample\.", lambda m: f"patch_embed{int(m[1]) + 1}."),
    (r"^stages\.(\d)\.blocks\.(\d+)\.", lambda m: f"block{int(m[1]) + 1}.{m[2]}."),
    (r"^stages\.(\d)\.norm\.", lambda m: f"norm{int(m[1]) + 1}."),
]
_REST = [
    (r"^encoder\.rfb\.(\d)\.branches\.(\d)\.", lambda m: f"backbone.encoder.rfb{int(m[1]) + 2}_1.branch{m[2]}."),
    (r"^encoder\.rfb\.(\d)\.", lambda m: f"backbone.encoder.rfb{int(m[1]) + 2}_1."),
    (r"^decoder\.", lambda m: "backbone.decoder."),
    (r"^ctc\.nl_layers\.(\d)\.nonlocal_block\.", lambda m: f"ctc.nl_layer{int(m[1]) + 1}.nonlocals.0."),
    (r"^ctc\.nl_layers\.(\d)\.", lambda m: f"ctc.nl_layer{int(m[1]) + 1}."),
    (r"^ctc\.convs\.(\d)\.", lambda m: f"ctc.conv{int(m[1]) + 1}."),
    (r"^gsa\.(\d)\.gate_generator\.", lambda m: f"fsp{int(m[1]) + 1}.gate_genator."),
    (r"^gsa\.(\d)\.fuse_conv\.", lambda m: f"fsp{int(m[1]) + 1}.BNReLU."),
    (r"^gsa\.(\d)\.", lambda m: f"fsp{int(m[1]) + 1}."),
]


#: Each family's own names, tried before _REST: JVLGS's VLF projections sit at the top level; FGSTP's
#: SINet-V2 decoder keeps the research code's names (``NCD``, ``RS5/RS4/RS3``, each GRA's conv as ``conv.0``).
_FAMILY = {
    "jvlgs": [(r"^vlf\.", lambda m: "")],
    "fgstp": [
        (r"^decoder\.ncd\.", lambda m: "backbone.decoder.NCD."),
        (r"^decoder\.rs(\d)\.(\w+_gra)\.conv\.", lambda m: f"backbone.decoder.RS{m[1]}.{m[2]}.conv.0."),
        (r"^decoder\.rs(\d)\.", lambda m: f"backbone.decoder.RS{m[1]}."),
    ],
}


def _apply(rules, key):
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, key, count=1)
        if n:
            return new
    return key


def to_authors_state_dict(model, text_model=None, prefix: str = "") -> Dict[str, torch.Tensor]:
    """The model's (and its text model's) weights under the authors' names, each key prefixed by ``prefix``."""
    out = {}
    for k, v in model.state_dict().items():
        if k.startswith("encoder.pvt."):
            k = k[len("encoder.pvt."):]
            if k.startswith("head."):
                continue
            k = "backbone.encoder.pvtv2_en." + _apply(_PVT, k).replace("mlp.dwconv.", "mlp.dwconv.dwconv.")
        else:
            k = _apply(_FAMILY[model.family] + _REST, k)
        out[prefix + k] = v
    if text_model is not None:
        for k, v in text_model.state_dict().items():
            if not k.endswith("position_ids"):
                out[prefix + "nlpmodel." + k] = v
    return out


def randomise_(model, seed: int = 0):
    """Non-default BN statistics, affine parameters and biases (weights keep their scaled init),
    so equality tests mean something while activations stay in a realistic range."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if not t.dtype.is_floating_point or t.dim() != 1:
                continue
            noise = torch.randn(t.shape, generator=g) * 0.1
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("weight"):  # norm scales
                t.add_(noise)
            else:  # biases, running means
                t.copy_(noise)
    return model
