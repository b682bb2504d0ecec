"""Where training starts: an authors' checkpoint (JVLGS or FGSTP), a native leakseg checkpoint, or scratch.

A family that takes no prompts (FGSTP) has no text path: its prompt bank is empty and nothing below
applies to it.

The text path is never trained. The text matrix E (D x P) is a constant:

* native checkpoint: its prompt bank's embeddings of its default prompts;
* authors' ``.pth``: its own OWLv2 text model, frozen, embeds the prompts once before training
  (exactly what `leakseg export` would compute); the text weights are not saved, the embeddings are;
* scratch: :func:`scratch_prompt_bank`, fixed seeded embeddings (no pretrained text model exists
  here), described in the saved config under ``prompt_bank_note``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from leakseg.model import DEFAULT_FAMILY, DEFAULT_PROMPTS, TripletNetwork, build_model, get_family
from leakseg.model.prompts import PromptBank

SCRATCH_BANK_SEED = 20240531
SCRATCH_BANK_NOTE = (
    "Scratch training: no pretrained OWLv2 text model was available, so the prompt embeddings are NOT "
    "OWLv2's. They are fixed and derived deterministically: for the prompt list in order, a D x P matrix "
    "of standard normals from numpy.random.default_rng({seed}) is orthonormalised by a reduced QR "
    "decomposition (numpy.linalg.qr, signs fixed so diag(R) > 0) and scaled by sqrt(D), so prompt j's "
    "embedding is sqrt(D) * Q[:, j] (unit-variance entries, mutually orthogonal). The prompt strings "
    "are labels only; these vectors carry no language meaning and the bank cannot embed new prompts."
)


def scratch_prompt_bank(prompts: Sequence[str] = DEFAULT_PROMPTS, dim: int = 512, seed: int = SCRATCH_BANK_SEED) -> PromptBank:
    """Fixed, seeded orthogonal prompt embeddings (see ``SCRATCH_BANK_NOTE``)."""
    prompts = list(prompts)
    g = np.random.default_rng(seed).standard_normal((dim, len(prompts)))
    q, r = np.linalg.qr(g)
    q = q * np.sign(np.diag(r))[None, :]
    emb = np.ascontiguousarray(math.sqrt(dim) * q.T, dtype=np.float32)  # (P, D)
    return PromptBank(prompts, emb, prompts)


def load_start(init: Optional[Union[str, Path]], backbone: str = "pvt_v2_b0", arch: Optional[str] = None
               ) -> Tuple[TripletNetwork, PromptBank, dict]:
    """(model, prompt bank, provenance) from an authors' .pth, a native folder, or scratch (init None).

    ``arch`` (a registered family's name) picks the family for scratch training (default jvlgs); with
    ``init`` the checkpoint's family is used and ``arch``, when given, must match it."""
    from leakseg.model.checkpoint import is_native_checkpoint

    if arch is not None:
        get_family(arch, kind="--arch")  # a name leakseg does not know fails here, naming the known ones
    if init is None:
        return _scratch_start(backbone, arch or DEFAULT_FAMILY)
    if is_native_checkpoint(init):
        return _native_start(init, arch)
    return _authors_start(init, arch)


def _scratch_start(backbone: str, family_name: str) -> Tuple[TripletNetwork, PromptBank, dict]:
    model = build_model(backbone, family_name)
    family = get_family(family_name)
    if not family.takes_prompts:
        return model, PromptBank.empty(), {
            "start": f"scratch ({family.title} {backbone}, random init, no pretrained weights)"}
    bank = scratch_prompt_bank(model.config.prompts, model.config.text_dim)
    return model, bank, {"start": f"scratch ({backbone}, random init, no pretrained weights)",
                         "prompt_bank_note": SCRATCH_BANK_NOTE.format(seed=SCRATCH_BANK_SEED)}


def _native_start(init: Union[str, Path], arch: Optional[str]) -> Tuple[TripletNetwork, PromptBank, dict]:
    from leakseg.model.checkpoint import load_native

    model, bank = load_native(init)
    _check_arch(model, arch, init)
    raw = json.loads((Path(init) / "config.json").read_text())
    info = {"start": f"native checkpoint {Path(init).name}"}
    if "prompt_bank_note" in raw:
        info["prompt_bank_note"] = raw["prompt_bank_note"]
    return model, bank, info


def _authors_start(init: Union[str, Path], arch: Optional[str]) -> Tuple[TripletNetwork, PromptBank, dict]:
    """An authors' .pth; a family that takes prompts embeds them with the checkpoint's own text model."""
    from leakseg.model.checkpoint import import_authors_checkpoint
    from leakseg.model.text import build_prompt_bank, build_text_model
    from leakseg.model.tokenizer import load_tokenizer

    model, text_sd = import_authors_checkpoint(init)
    _check_arch(model, arch, init)
    family = get_family(model.family)
    if not family.takes_prompts:
        return model, PromptBank.empty(), {"start": f"authors' {family.title} checkpoint {Path(init).name}"}
    if not text_sd:
        raise ValueError(f"{init} has no text model (nlpmodel.*) to embed the prompts with")
    text_model = build_text_model(model.config.text_model, text_sd).eval()
    for p in text_model.parameters():
        p.requires_grad_(False)
    bank = build_prompt_bank(text_model, load_tokenizer(None), model.config.prompts)
    return model, bank, {"start": f"authors' checkpoint {Path(init).name}",
                         "prompt_bank_note": "embeddings of the prompts by the checkpoint's own OWLv2 text model, "
                                             "frozen during fine-tuning (the text model is not saved)"}


def _check_arch(model: TripletNetwork, arch: Optional[str], init) -> None:
    if arch is not None and arch != model.family:
        raise ValueError(f"--arch {arch} but {init} is a {model.family.upper()} checkpoint")
