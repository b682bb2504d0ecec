"""The model-family registry: one :class:`ModelFamily` per published network, looked up by name.

timm keeps a family's builder, configs and checkpoint filter together and registers it; leakseg does the
same: each family module (``jvlgs.py``, ``fgstp.py``) defines its ``FAMILY`` spec beside its model and
registers it, and everything else (config loading, checkpoint import, export, training, serving)
asks :func:`get_family` instead of branching on a family's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Mapping, Tuple


@dataclass(frozen=True)
class ModelFamily:
    """What leakseg knows about one published family, in one place."""

    name: str  #: a config's ``model_type`` and the archive's ``family``
    config_class: type  #: the config dataclass that fully describes a model of the family
    model_class: type  #: the network built from that config
    #: Keys every authors' checkpoint of the family has, whatever its backbone and text-model size.
    required_keys: Tuple[str, ...] = ()
    #: ClipOptions fields over the defaults, as the authors' test script post-processes.
    published_postprocess: Mapping[str, object] = field(default_factory=dict)
    #: Share of the epochs after which the published schedule drops the learning rate x0.1.
    lr_drop_at: float = 0.8

    @property
    def takes_prompts(self) -> bool:
        return "text" in self.model_class.input_names


_REGISTRY: Dict[str, ModelFamily] = {}


def register_family(family: ModelFamily) -> ModelFamily:
    """Add a family to the registry (each family module does this once, at import)."""
    if family.name in _REGISTRY and _REGISTRY[family.name] is not family:
        raise ValueError(f"model family {family.name!r} is registered twice")
    _REGISTRY[family.name] = family
    return family


def get_family(name: str) -> ModelFamily:
    """The registered family called ``name``; a ValueError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; leakseg knows {list(_REGISTRY)}") from None


def family_names() -> Tuple[str, ...]:
    """The registered families' names, in registration order (JVLGS first)."""
    return tuple(_REGISTRY)
