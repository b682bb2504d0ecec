"""Prompt embeddings from the checkpoint's own (fine-tuned) OWLv2 text model, computed once."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from leakseg.model.config import TextModelConfig
from leakseg.model.prompts import PromptBank

log = logging.getLogger(__name__)


def build_text_model(config: TextModelConfig, state_dict: Optional[Dict[str, torch.Tensor]] = None):
    """An ``Owlv2TextModel`` of the given shape, with the checkpoint's weights when given."""
    from transformers import Owlv2TextModel

    model = Owlv2TextModel(config.to_hf()).eval()
    if state_dict is not None:
        result = model.load_state_dict(state_dict, strict=False)
        # position_ids is a buffer the authors' checkpoints do not carry; nothing else may be missing.
        missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
        if missing or result.unexpected_keys:
            raise ValueError(f"text model weights do not fit: missing {missing}, unexpected {result.unexpected_keys}")
    return model


def load_text_model_dir(path: Union[str, Path]):
    """A local Hugging Face OWLv2 folder's text model (a full Owlv2Model folder or a text-only one)."""
    from transformers import AutoConfig, Owlv2Model, Owlv2TextModel

    config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    if config.model_type == "owlv2":
        return Owlv2Model.from_pretrained(str(path), local_files_only=True).text_model.eval()
    return Owlv2TextModel.from_pretrained(str(path), local_files_only=True).eval()


@torch.no_grad()
def embed_prompts(text_model, tokenizer, prompts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """``pooler_output`` (the final-layer-normed end-of-text state) of each prompt: (K, D)."""
    max_len = text_model.config.max_position_embeddings
    out: List[np.ndarray] = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        tokens = tokenizer(chunk, padding=True, return_tensors="pt")
        if tokens["input_ids"].shape[1] > max_len:
            lengths = tokens["attention_mask"].sum(1).tolist()
            too_long = [p for p, n in zip(chunk, lengths) if n > max_len]
            raise ValueError(f"prompts longer than {max_len} tokens: {too_long}")
        pooled = text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output
        out.append(pooled.float().numpy())
    return np.concatenate(out, axis=0)


def build_prompt_bank(
    text_model, tokenizer, defaults: Sequence[str], extra: Sequence[str] = ()
) -> PromptBank:
    """Embeddings of the P default prompts plus any extra ones a request may use instead."""
    prompts = list(dict.fromkeys([*defaults, *extra]))
    log.info("embedding %d prompts with the checkpoint's text model", len(prompts))
    return PromptBank(prompts, embed_prompts(text_model, tokenizer, prompts), defaults)
