"""Checkpoint import: the authors' ``.pth`` files and leakseg's native format.

The authors' checkpoints of both families, optionally prefixed ``module.``: JVLGS (keys and shapes
as in shared/reference/b5_reference_manifest.json; the whole network, text model included) and
FGSTP (fgstp_b5_reference_manifest.json: no text, ``backbone.decoder.NCD.*``). ``checkpoint_family``
tells them apart by their keys, ``infer_config`` reads the architecture off tensor shapes, and
``filter_authors_state_dict`` translates the names to leakseg's modules, as timm's checkpoint
filter functions do.

The native format is a folder: ``config.json`` (the model's config, its ``model_type`` the family,
plus the prompt bank's prompt list) and ``model.safetensors`` (vision weights and prompt
embeddings; no text encoder; an FGSTP checkpoint has an empty prompt bank).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from leakseg.model import (
    PVT_VARIANTS, FGSTPConfig, JVLGSConfig, TextModelConfig, TripletNetwork, build_model, config_from_dict,
)
from leakseg.model.prompts import PromptBank

PVT_PREFIX = "backbone.encoder.pvtv2_en."
TEXT_PREFIX = "nlpmodel."
#: Keys every authors' checkpoint of a family has, whatever its backbone and text model size.
REQUIRED_KEYS = {
    "jvlgs": (
        PVT_PREFIX + "patch_embed1.proj.weight",
        "visual_proj.weight",
        "fmap_proj.weight",
        "backbone.decoder.final_conv.weight",
        "fusion_conv.0.weight",
    ),
    "fgstp": (
        PVT_PREFIX + "patch_embed1.proj.weight",
        "backbone.decoder.NCD.conv5.weight",
        "backbone.decoder.RS3.strong_gra.score.weight",
        "fusion_conv.0.weight",
    ),
}

#: Authors' name -> leakseg name, applied in order (regular expressions on the whole key).
_RENAMES = [
    (r"^backbone\.encoder\.rfb(\d)_1\.branch(\d)\.", lambda m: f"encoder.rfb.{int(m[1]) - 2}.branches.{m[2]}."),
    (r"^backbone\.encoder\.rfb(\d)_1\.", lambda m: f"encoder.rfb.{int(m[1]) - 2}."),
    (r"^backbone\.decoder\.NCD\.", lambda m: "decoder.ncd."),
    (r"^backbone\.decoder\.RS(\d)\.(\w+_gra)\.conv\.0\.", lambda m: f"decoder.rs{m[1]}.{m[2]}.conv."),
    (r"^backbone\.decoder\.RS(\d)\.", lambda m: f"decoder.rs{m[1]}."),
    (r"^backbone\.decoder\.", lambda m: "decoder."),
    (r"^(visual_proj|fmap_proj)\.", lambda m: f"vlf.{m[1]}."),
    (r"^ctc\.nl_layer(\d)\.nonlocals\.0\.", lambda m: f"ctc.nl_layers.{int(m[1]) - 1}.nonlocal_block."),
    (r"^ctc\.nl_layer(\d)\.", lambda m: f"ctc.nl_layers.{int(m[1]) - 1}."),
    (r"^ctc\.conv(\d)\.", lambda m: f"ctc.convs.{int(m[1]) - 1}."),
    (r"^fsp(\d)\.gate_genator\.", lambda m: f"gsa.{int(m[1]) - 1}.gate_generator."),
    (r"^fsp(\d)\.BNReLU\.", lambda m: f"gsa.{int(m[1]) - 1}.fuse_conv."),
    (r"^fsp(\d)\.", lambda m: f"gsa.{int(m[1]) - 1}."),
]


class CheckpointError(ValueError):
    """A file that is not a JVLGS or FGSTP checkpoint leakseg can import; the message names the keys."""


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


def _infer_text_model(sd: Dict[str, torch.Tensor]) -> Optional[TextModelConfig]:
    token = sd.get(TEXT_PREFIX + "text_model.embeddings.token_embedding.weight")
    if token is None:
        return None
    layers = {int(m[1]) for k in sd if (m := re.match(r"nlpmodel\.text_model\.encoder\.layers\.(\d+)\.", k))}
    try:
        positions = sd[TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"].shape[0]
        mlp = sd[TEXT_PREFIX + "text_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
    except KeyError as exc:
        raise CheckpointError(f"the text model is incomplete: missing {exc.args[0]}") from exc
    vocab, hidden = token.shape
    # Head count is not visible in any shape; OWLv2/CLIP text models use 64-wide heads.
    return TextModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=max(layers) + 1 if layers else 0,
        num_attention_heads=max(1, hidden // 64),
        max_position_embeddings=positions,
    )


def checkpoint_family(sd: Dict[str, torch.Tensor]) -> str:
    """"fgstp" for ``backbone.decoder.NCD.*`` without text keys, else "jvlgs" when its keys fit;
    a CheckpointError naming what each family misses otherwise."""
    has_text = any(k.startswith((TEXT_PREFIX, "visual_proj.", "fmap_proj.")) for k in sd)
    has_ncd = any(k.startswith("backbone.decoder.NCD.") for k in sd)
    family = "fgstp" if has_ncd and not has_text else "jvlgs"
    if all(k in sd for k in REQUIRED_KEYS[family]):
        return family
    misses = "; ".join(
        f"as {name.upper()} it is missing {_summarise([k for k in keys if k not in sd], 3)}"
        for name, keys in REQUIRED_KEYS.items() if any(k not in sd for k in keys)
    )
    raise CheckpointError(
        f"not a JVLGS or FGSTP checkpoint: {misses}; it has keys like {_summarise(sd, 5)}"
    )


def infer_config(sd: Dict[str, torch.Tensor], prompts: Optional[List[str]] = None) -> Union[JVLGSConfig, FGSTPConfig]:
    """The architecture of an authors' checkpoint (either family), read off tensor shapes alone."""
    if checkpoint_family(sd) == "fgstp":
        if prompts:
            raise CheckpointError("this is an FGSTP checkpoint: FGSTP takes no prompts (drop --prompts)")
        channels = sd["backbone.decoder.NCD.conv_upsample1.conv.weight"].shape[0]
        return FGSTPConfig(backbone=_infer_backbone(sd), feature_channels=channels)
    text_dim, channels = sd["visual_proj.weight"].shape
    prompt_count = sd["fmap_proj.weight"].shape[1]
    text_model = _infer_text_model(sd)
    if prompts is None:
        from leakseg.model import DEFAULT_PROMPTS

        if prompt_count != len(DEFAULT_PROMPTS):
            raise CheckpointError(
                f"this checkpoint was trained with {prompt_count} prompts; pass its {prompt_count} prompts in order"
            )
        prompts = list(DEFAULT_PROMPTS)
    return JVLGSConfig(
        backbone=_infer_backbone(sd),
        feature_channels=channels,
        text_dim=text_dim,
        prompt_count=prompt_count,
        prompts=list(prompts),
        text_model=text_model,
    )


def _rename(key: str) -> str:
    for pattern, repl in _RENAMES:
        new, n = re.subn(pattern, repl, key, count=1)
        if n:
            return new
    return key


def filter_authors_state_dict(sd: Dict[str, torch.Tensor], model: TripletNetwork) -> Dict[str, torch.Tensor]:
    """The vision part of an authors' state dict under leakseg's names (text keys dropped)."""
    from timm.models.pvt_v2 import checkpoint_filter_fn

    pvt = {k[len(PVT_PREFIX):]: v for k, v in sd.items() if k.startswith(PVT_PREFIX)}
    out = {f"encoder.pvt.{k}": v for k, v in checkpoint_filter_fn(pvt, model.encoder.pvt).items()}
    for k, v in sd.items():
        if not k.startswith((PVT_PREFIX, TEXT_PREFIX)):
            out[_rename(k)] = v
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
    """(vision model with weights, text model state dict) from an authors' ``.pth`` of either
    family (an FGSTP checkpoint has no text model: the dict is empty)."""
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
