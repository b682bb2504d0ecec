"""OWLv2's tokenizer, offline: CLIP's byte-level BPE built from the vocabulary open_clip ships.

OWLv2 uses CLIP's tokenizer unchanged (49408 tokens) with "!" (id 0) as padding and 16 positions.
``load_tokenizer(None)`` writes the Hugging Face files (vocab.json, merges.txt, configs) once into
a cache folder and loads them from there; ``load_tokenizer(DIR)`` loads a local OWLv2 folder.
Nothing is ever fetched from a model hub.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path
from typing import Optional, Union

#: Number of BPE merges in CLIP's vocabulary: 49408 tokens = 2 * 256 bytes + merges + 2 specials.
NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict:
    """CLIP/GPT-2's reversible map from bytes to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def open_clip_vocab_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the CLIP BPE vocabulary comes from the open-clip-torch package: pip install 'leakseg[export]',"
            " or pass --text-model DIR with a local OWLv2 folder"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"


def write_hf_tokenizer_files(out_dir: Union[str, Path], bpe_path: Optional[Path] = None) -> Path:
    """Write vocab.json/merges.txt/tokenizer_config.json for OWLv2 from CLIP's BPE merges file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(bpe_path or open_clip_vocab_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "!"}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=16, do_lower_case=True)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def _cache_dir() -> Path:
    root = os.environ.get("LEAKSEG_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "leakseg")
    return Path(root) / "owlv2-tokenizer"


def load_tokenizer(text_model_dir: Optional[Union[str, Path]] = None):
    """The OWLv2 tokenizer from a local HF folder, or built from open_clip's vocabulary."""
    from transformers import CLIPTokenizer

    if text_model_dir is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(text_model_dir), local_files_only=True)
    folder = _cache_dir()
    if not (folder / "tokenizer_config.json").exists():
        write_hf_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
