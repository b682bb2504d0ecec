"""The authors' checkpoint layout that every family shares (docs/MODELS.md, "Checkpoints").

Both families' research code names the shared modules alike: the PVTv2 encoder under
``backbone.encoder.pvtv2_en.`` (the original PVT names, which timm's ``checkpoint_filter_fn``
translates), the RFBs, ``ctc.*``, ``fsp1..3`` (GSA) and the decoder under ``backbone.decoder.``.
:data:`SHARED_RENAMES` maps those names to leakseg's modules; a family's own names (its
``checkpoint_renames``) are tried first.
"""

from __future__ import annotations

import re
from typing import Callable, Sequence, Tuple

PVT_PREFIX = "backbone.encoder.pvtv2_en."
#: The OWLv2 text model of a family that takes prompts (its weights are kept apart, never in the graph).
TEXT_PREFIX = "nlpmodel."

#: One rename: a regular expression on the whole authors' key and the leakseg name it becomes.
Rename = Tuple[str, Callable[[re.Match], str]]

SHARED_RENAMES: Tuple[Rename, ...] = (
    (r"^backbone\.encoder\.rfb(\d)_1\.branch(\d)\.", lambda m: f"encoder.rfb.{int(m[1]) - 2}.branches.{m[2]}."),
    (r"^backbone\.encoder\.rfb(\d)_1\.", lambda m: f"encoder.rfb.{int(m[1]) - 2}."),
    (r"^backbone\.decoder\.", lambda m: "decoder."),
    (r"^ctc\.nl_layer(\d)\.nonlocals\.0\.", lambda m: f"ctc.nl_layers.{int(m[1]) - 1}.nonlocal_block."),
    (r"^ctc\.nl_layer(\d)\.", lambda m: f"ctc.nl_layers.{int(m[1]) - 1}."),
    (r"^ctc\.conv(\d)\.", lambda m: f"ctc.convs.{int(m[1]) - 1}."),
    (r"^fsp(\d)\.gate_genator\.", lambda m: f"gsa.{int(m[1]) - 1}.gate_generator."),
    (r"^fsp(\d)\.BNReLU\.", lambda m: f"gsa.{int(m[1]) - 1}.fuse_conv."),
    (r"^fsp(\d)\.", lambda m: f"gsa.{int(m[1]) - 1}."),
)


class CheckpointError(ValueError):
    """A file that is not a checkpoint of a family leakseg can import; the message names the keys."""


def rename_key(key: str, renames: Sequence[Rename]) -> str:
    """``key`` under the first rename whose pattern matches it (unchanged when none does)."""
    for pattern, repl in renames:
        new, n = re.subn(pattern, repl, key, count=1)
        if n:
            return new
    return key
