"""OWLv2's tokenizer is built offline from open_clip's CLIP BPE vocabulary."""

import torch

from leakseg.model.text import build_text_model, embed_prompts
from leakseg.model.tokenizer import load_tokenizer
from leakseg.model import TextModelConfig


def test_clip_token_ids(tmp_path, monkeypatch):
    monkeypatch.setenv("LEAKSEG_CACHE", str(tmp_path))
    tok = load_tokenizer()
    assert len(tok) == 49408
    # CLIP's well-known ids: <|startoftext|> a photo of a cat <|endoftext|>
    assert tok("a photo of a cat")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 49407]
    batch = tok(["white steam", "billowing smoke"], padding=True)
    assert batch["input_ids"][0][-1] == 0  # OWLv2 pads with "!" (id 0)
    assert (tmp_path / "owlv2-tokenizer" / "vocab.json").exists()


def test_embedding_is_pooler_output_at_end_of_text():
    cfg = TextModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    tm = build_text_model(cfg)
    tok = load_tokenizer()
    emb = embed_prompts(tm, tok, ["white steam", "billowing smoke"])
    assert emb.shape == (2, 64)
    # padding to the longest prompt does not change a prompt's embedding (causal attention)
    alone = embed_prompts(tm, tok, ["white steam"])
    assert abs(emb[0] - alone[0]).max() < 1e-5
    with torch.no_grad():
        ids = tok(["billowing smoke"], return_tensors="pt")["input_ids"]
        hidden = tm(input_ids=ids).last_hidden_state[0, ids[0].argmax()]
    assert abs(emb[1] - hidden.numpy()).max() < 1e-5
