"""PromptBank: prompt embeddings computed once at export; requests pick from them by name.

No text encoder runs at request time: a request's prompt list becomes the text matrix E
(D x P, embeddings as columns, in the request's order) by lookup. A model without text (FGSTP)
has the empty bank (:meth:`PromptBank.empty`): a request that sends prompts to it is refused
with ``prompts_not_supported``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from leakseg.schema import ErrorCode, InputError


class PromptBank:
    def __init__(self, prompts: Sequence[str], embeddings: np.ndarray, defaults: Sequence[str]):
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {embeddings.shape[0]} embeddings")
        if len(set(prompts)) != len(prompts):
            raise ValueError("prompts in a bank must be unique")
        self.prompts: List[str] = list(prompts)
        self.embeddings = embeddings
        self.defaults: List[str] = list(defaults)
        self._index: Dict[str, int] = {p: i for i, p in enumerate(self.prompts)}
        missing = [p for p in self.defaults if p not in self._index]
        if missing:
            raise ValueError(f"default prompts missing from the bank: {missing}")

    @classmethod
    def empty(cls) -> "PromptBank":
        """The bank of a model that takes no prompts (FGSTP)."""
        return cls([], np.zeros((0, 0), dtype=np.float32), [])

    @property
    def takes_prompts(self) -> bool:
        return bool(self.defaults)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def prompt_count(self) -> int:
        return len(self.defaults)

    def resolve(self, prompts: Optional[Sequence[str]]) -> List[str]:
        """The request's prompt list, checked: exactly P known prompts, or the defaults."""
        if prompts is None:
            return list(self.defaults)
        if not self.takes_prompts:
            if isinstance(prompts, (list, tuple)) and not prompts:
                return []
            raise InputError(
                ErrorCode.PROMPTS_NOT_SUPPORTED,
                "this model takes no prompts (it is an FGSTP model, which segments without text); "
                "send the request without 'prompts'",
                "prompts",
            )
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise InputError(ErrorCode.INVALID_BODY, "prompts must be a JSON list of strings", "prompts")
        if len(prompts) != self.prompt_count:
            raise InputError(
                ErrorCode.WRONG_PROMPT_COUNT,
                f"this model takes exactly {self.prompt_count} prompts, got {len(prompts)}",
                "prompts",
            )
        unknown = [p for p in prompts if p not in self._index]
        if unknown:
            raise InputError(
                ErrorCode.UNKNOWN_PROMPT,
                f"unknown prompt(s) {[_shorten(p) for p in unknown[:4]]}; available: {self.prompts}",
                "prompts",
            )
        return list(prompts)

    def matrix(self, prompts: Optional[Sequence[str]] = None) -> np.ndarray:
        """E, the D x P text matrix for a prompt list (the defaults when None)."""
        return self.matrix_of(self.resolve(prompts))

    def matrix_of(self, resolved: Sequence[str]) -> np.ndarray:
        """E for a prompt list :meth:`resolve` has already checked."""
        rows = [self._index[p] for p in resolved]
        return np.ascontiguousarray(self.embeddings[rows].T)

    def to_tensors(self) -> Dict[str, np.ndarray]:
        return {"prompt_bank.embeddings": self.embeddings}

    def to_meta(self) -> dict:
        return {"prompts": self.prompts, "defaults": self.defaults}

    @classmethod
    def from_parts(cls, tensors: Dict[str, np.ndarray], meta: dict) -> "PromptBank":
        return cls(meta["prompts"], tensors["prompt_bank.embeddings"], meta["defaults"])

    def save(self, path: Union[str, Path]) -> None:
        from safetensors.numpy import save_file

        save_file(self.to_tensors(), str(path), metadata={"prompt_bank": json.dumps(self.to_meta())})

    @classmethod
    def load(cls, path: Union[str, Path]) -> "PromptBank":
        from safetensors import safe_open

        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads(f.metadata()["prompt_bank"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return cls.from_parts(tensors, meta)


def _shorten(text: str, limit: int = 60) -> str:
    """A prompt as an error message may quote it: error bodies stay small whatever the request holds."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
