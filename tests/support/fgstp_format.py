"""Writing FGSTP checkpoints in the authors' layout, for tests (the inverse of leakseg's import).

The shared parts are named as in JVLGS checkpoints (tests/support/authors_format.py); the SINet-V2 decoder
keeps the research code's names (``backbone.decoder.NCD.*``, ``RS5/RS4/RS3``, GRA ``conv.0``).
test_fgstp checks that a b5 model written this way has exactly the keys and shapes of
tests/data/fgstp_b5_reference_manifest.json.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict

import torch
from support.authors_format import randomise_, to_authors_state_dict

_DECODER = [
    (r"^backbone\.decoder\.ncd\.", lambda m: "backbone.decoder.NCD."),
    (r"^backbone\.decoder\.rs(\d)\.(\w+_gra)\.conv\.", lambda m: f"backbone.decoder.RS{m[1]}.{m[2]}.conv.0."),
    (r"^backbone\.decoder\.rs(\d)\.", lambda m: f"backbone.decoder.RS{m[1]}."),
]


def to_fgstp_state_dict(model, prefix: str = "") -> Dict[str, torch.Tensor]:
    out = {}
    for k, v in to_authors_state_dict(model).items():
        for pattern, repl in _DECODER:
            k, n = re.subn(pattern, repl, k, count=1)
            if n:
                break
        out[prefix + k] = v
    return out


def small_fgstp(backbone: str = "pvt_v2_b0", seed: int = 0):
    """An FGSTP with randomised BN statistics, norms and biases (see authors_format.randomise_)."""
    from leakseg.model import build_model

    torch.manual_seed(seed)  # the weights' own init, so two calls give the same model
    return randomise_(build_model(backbone, "fgstp"), seed)


#: Built once per session (pytest makes one FixtureDef per importing module, so cache here).
_cache: Dict[str, object] = {}


def fgstp_checkpoint(folder) -> Path:
    """gasvid_best.pth-like: a randomised b0 FGSTP in the authors' layout with the ``module.`` prefix."""

    if "checkpoint" not in _cache:
        path = Path(folder) / "gasvid_best.pth"
        torch.save(to_fgstp_state_dict(small_fgstp(), prefix="module."), path)
        _cache["checkpoint"] = path
    return _cache["checkpoint"]


def fgstp_archive(checkpoint, folder, fmt: str = "onnx") -> "Path":
    """The FGSTP test checkpoint exported with no flags but a name (fgstp.mar / fgstp_ts.mar)."""
    import warnings

    from leakseg.export.exporter import ExportOptions, export_archive

    key = f"archive-{fmt}"
    if key not in _cache:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _cache[key] = export_archive(ExportOptions(
                checkpoint=checkpoint, name="fgstp" if fmt == "onnx" else "fgstp_ts", format=fmt, output_dir=folder))
    return _cache[key]
