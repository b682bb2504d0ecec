"""The model-family registry: one :class:`ModelFamily` per published network, looked up by name.

timm keeps a family's builder, configs and checkpoint filter together and registers it; leakseg does the
same: each family module (``jvlgs.py``, ``fgstp.py``) defines its config, its network and its ``FAMILY``
spec side by side and registers it, and everything else (config loading, checkpoint import, export,
training, serving) asks :func:`get_family` instead of branching on a family's name.
docs/MODELS.md describes both published networks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Tuple

from leakseg.model.layout import Rename

#: The family of a config without ``model_type``: configs written before FGSTP existed are JVLGS.
DEFAULT_FAMILY = "jvlgs"

#: (authors' state dict, its PVTv2 variant, the prompts asked for or None) -> the family's config.
ConfigFromCheckpoint = Callable[[Mapping[str, object], str, Optional[List[str]]], object]


@dataclass(frozen=True)
class ModelFamily:
    """What leakseg knows about one published family, in one place (docs/MODELS.md)."""

    name: str  #: a config's ``model_type`` and the archive's ``family``
    config_class: type  #: the config dataclass that fully describes a model of the family
    model_class: type  #: the network built from that config

    # --- the authors' checkpoints (docs/MODELS.md, "Checkpoints") ---
    #: Key prefixes that mark a checkpoint as this family's. Families are asked in registration order,
    #: so a checkpoint with the marks of several (none is published) goes to the first.
    checkpoint_markers: Tuple[str, ...] = ()
    #: Keys every authors' checkpoint of the family has, whatever its backbone and text-model size.
    required_keys: Tuple[str, ...] = ()
    #: The family's own authors' name -> leakseg name rules, tried before the shared ones (layout.SHARED_RENAMES).
    checkpoint_renames: Tuple[Rename, ...] = ()
    #: Reads the family's config off an authors' state dict's tensor shapes.
    config_from_checkpoint: Optional[ConfigFromCheckpoint] = None

    # --- the published recipe (docs/MODELS.md, "Post-processing" and "Training") ---
    #: ClipOptions fields over the defaults, as the authors' test script post-processes.
    published_postprocess: Mapping[str, object] = field(default_factory=dict)
    #: Share of the epochs after which the published schedule drops the learning rate x0.1.
    lr_drop_at: float = 0.8
    #: The training loss also supervises every decoder map of both neighbours, not only the fused logits.
    loss_on_decoder_maps: bool = False
    #: The structure loss's BCE term is pixel-weighted (False: the plain mean BCE).
    weighted_bce: bool = True

    def __post_init__(self):
        declared = self.config_class.__dataclass_fields__["model_type"].default
        if declared != self.name:
            raise ValueError(f"family {self.name!r}: its config class says model_type {declared!r}")

    @property
    def takes_prompts(self) -> bool:
        return "text" in self.model_class.input_names

    @property
    def title(self) -> str:
        """The name as messages write it ("FGSTP")."""
        return self.name.upper()

    def marks(self, keys) -> bool:
        """Whether a state dict with these keys carries this family's marks."""
        return any(k.startswith(self.checkpoint_markers) for k in keys)


_REGISTRY: Dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry (each family module does this once, at import)."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def get_family(name: str, kind: str = "model family") -> ModelFamily:
    """The registered family called ``name``; a ValueError naming the known ones otherwise
    (``kind`` says what the caller calls the name: "model_type", "--arch")."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown {kind} {name!r}; leakseg knows {list(_REGISTRY)}") from None


def family_names() -> Tuple[str, ...]:
    """The registered families' names, in registration order (JVLGS first)."""
    return tuple(_REGISTRY)


def registered_families() -> Tuple[ModelFamily, ...]:
    """The registered families, in registration order."""
    return tuple(_REGISTRY.values())
