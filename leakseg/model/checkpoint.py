"""Checkpoint import: the authors' ``.pth`` files and leakseg's native format.

The authors' checkpoints of every registered family, optionally prefixed ``module.``
(docs/MODELS.md, "Checkpoints"; tests/data holds the published b5 layouts). :func:`checkpoint_family`
tells the families apart by their keys, :func:`infer_config` reads the architecture off tensor
shapes, and :func:`filter_authors_state_dict` translates the names to leakseg's modules, as timm's
checkpoint filter functions do. What differs between families (marks, required keys, their own
renames, their config's shape) is each family's spec (leakseg.model.family); this module holds what
they share.

The native format is a folder: ``config.json`` (the model's config, its ``model_type`` the family,
plus the prompt bank's prompt list) and ``model.safetensors`` (vision weights and prompt
embeddings; no text encoder; a family that takes no prompts has an empty prompt bank).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from leakseg.model import PVT_VARIANTS, TripletConfig, TripletNetwork, build_model, config_from_dict, get_family
from leakseg.model.family import ModelFamily, registered_families
from leakseg.model.layout import PVT_PREFIX, SHARED_RENAMES, TEXT_PREFIX, CheckpointError, rename_key
from leakseg.model.prompts import PromptBank


def _summarise(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{shown} (+{len(keys) - limit} more)" if len(keys) > limit else shown


def sha256_file(path: Union[str, Path]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_sha256(path: Union[str, Path]) -> str:
    """sha256 of a .pth file, or of a native checkpoint folder's weights file."""
    p = Path(path)
    return sha256_file(p / NATIVE_WEIGHTS if p.is_dir() else p)


def read_torch_checkpoint(path: Union[str, Path]) -> Dict[str, torch.Tensor]:
    """A flat state dict from a ``.pth``: unwraps ``{"state_dict": ...}``, strips ``module.``."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, not a torch file at all
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {exc}") from exc
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def _infer_backbone(sd: Dict[str, torch.Tensor]) -> str:
    embed = sd[PVT_PREFIX + "patch_embed1.proj.weight"].shape[0]
    depths = []
    for stage in range(1, 5):
        blocks = {int(m[1]) for k in sd if (m := re.match(re.escape(PVT_PREFIX) + rf"block{stage}\.(\d+)\.", k))}
        depths.append(max(blocks) + 1 if blocks else 0)
    for name, (dim, variant_depths) in PVT_VARIANTS.items():
        if dim == embed and tuple(depths) == variant_depths:
            return name
    raise CheckpointError(
        f"the PVTv2 encoder has stage-1 width {embed} and depths {tuple(depths)}, which match no "
        f"variant b0-b5 ({ {k: v for k, v in PVT_VARIANTS.items()} })"
    )


def _family_of(sd: Dict[str, torch.Tensor]) -> Optional[ModelFamily]:
    """The first registered family whose marks the state dict carries."""
    return next((family for family in registered_families() if family.marks(sd)), None)


def checkpoint_family(sd: Dict[str, torch.Tensor]) -> str:
    """The name of the family whose marks the state dict carries, when it has that family's required
    keys; a CheckpointError naming what each family misses otherwise."""
    family = _family_of(sd)
    if family is not None and all(k in sd for k in family.required_keys):
        return family.name
    misses = "; ".join(
        f"as {f.title} it is missing {_summarise([k for k in f.required_keys if k not in sd], 3)}"
        for f in registered_families() if any(k not in sd for k in f.required_keys)
    )
    names = " or ".join(f.title for f in registered_families())
    raise CheckpointError(f"not a {names} checkpoint: {misses}; it has keys like {_summarise(sd, 5)}")


def infer_config(sd: Dict[str, torch.Tensor], prompts: Optional[List[str]] = None) -> TripletConfig:
    """The architecture of an authors' checkpoint (any family), read off tensor shapes alone."""
    family = get_family(checkpoint_family(sd))
    if prompts and not family.takes_prompts:
        raise CheckpointError(f"this is an {family.title} checkpoint: {family.title} takes no prompts (drop --prompts)")
    return family.config_from_checkpoint(sd, _infer_backbone(sd), prompts)


def filter_authors_state_dict(sd: Dict[str, torch.Tensor], model: TripletNetwork) -> Dict[str, torch.Tensor]:
    """The vision part of an authors' state dict under leakseg's names (text keys dropped)."""
    from timm.models.pvt_v2 import checkpoint_filter_fn

    pvt = {k[len(PVT_PREFIX):]: v for k, v in sd.items() if k.startswith(PVT_PREFIX)}
    out = {f"encoder.pvt.{k}": v for k, v in checkpoint_filter_fn(pvt, model.encoder.pvt).items()}
    renames = (*get_family(model.family).checkpoint_renames, *SHARED_RENAMES)
    for k, v in sd.items():
        if not k.startswith((PVT_PREFIX, TEXT_PREFIX)):
            out[rename_key(k, renames)] = v
    return out


def load_vision_weights(model: TripletNetwork, sd: Dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a readable error naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    shapes = [f"{k} {tuple(sd[k].shape)} != {tuple(own[k].shape)}" for k in set(own) & set(sd) if sd[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys: {_summarise(missing)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys: {_summarise(unexpected)}")
        if shapes:
            parts.append(f"wrong shapes: {_summarise(shapes)}")
        raise CheckpointError(f"{source} does not fit a {model.config.backbone} {model.family.upper()}: " + "; ".join(parts))
    model.load_state_dict(sd, strict=True)


def text_state_dict(sd: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The ``Owlv2TextModel`` weights of an authors' checkpoint (``nlpmodel.`` stripped)."""
    return {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)}


def import_authors_checkpoint(
    path: Union[str, Path], prompts: Optional[List[str]] = None
) -> Tuple[TripletNetwork, Dict[str, torch.Tensor]]:
    """(vision model with weights, text model state dict) from an authors' ``.pth`` of any family
    (a family that takes no prompts has no text model: the dict is empty)."""
    sd = read_torch_checkpoint(path)
    config = infer_config(sd, prompts)
    model = build_model(config)
    load_vision_weights(model, filter_authors_state_dict(sd, model), str(path))
    return model, text_state_dict(sd)


# --- native format ---------------------------------------------------------------------------

NATIVE_WEIGHTS = "model.safetensors"
NATIVE_CONFIG = "config.json"


def is_native_checkpoint(path: Union[str, Path]) -> bool:
    p = Path(path)
    return p.is_dir() and (p / NATIVE_WEIGHTS).exists() and (p / NATIVE_CONFIG).exists()


def save_native(out_dir: Union[str, Path], model: TripletNetwork, bank: PromptBank, extra: Optional[dict] = None) -> Path:
    """Vision weights + prompt embeddings (safetensors) and config + prompt list (JSON)."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    tensors.update({k: torch.from_numpy(v) for k, v in bank.to_tensors().items()})
    save_file(tensors, str(out / NATIVE_WEIGHTS))
    config = model.config.to_dict()
    if "text_model" in config:
        config["text_model"] = None  # native checkpoints carry embeddings, not the text encoder
    config["prompt_bank"] = bank.to_meta()
    if extra:
        config.update(extra)
    (out / NATIVE_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return out


def native_postprocess_defaults(path: Union[str, Path]) -> dict:
    """Post-processing defaults a native checkpoint recommends (config.json "postprocess"), if any."""
    p = Path(path)
    if not is_native_checkpoint(p):
        return {}
    return dict(json.loads((p / NATIVE_CONFIG).read_text()).get("postprocess") or {})


def load_native(path: Union[str, Path]) -> Tuple[TripletNetwork, PromptBank]:
    from safetensors.torch import load_file

    p = Path(path)
    if not is_native_checkpoint(p):
        raise CheckpointError(f"{p} is not a native leakseg checkpoint (a folder with {NATIVE_CONFIG} and {NATIVE_WEIGHTS})")
    raw = json.loads((p / NATIVE_CONFIG).read_text())
    config = config_from_dict(raw)
    tensors = load_file(str(p / NATIVE_WEIGHTS))
    bank_tensors = {k: tensors.pop(k).numpy() for k in list(tensors) if k.startswith("prompt_bank.")}
    model = build_model(config)
    load_vision_weights(model, tensors, str(p))
    return model, PromptBank.from_parts(bank_tensors, raw["prompt_bank"])
