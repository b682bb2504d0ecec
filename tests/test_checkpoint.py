"""Importing the authors' checkpoints of every family (b0 test checkpoints, b5 as in the published manifests)
and leakseg's native format."""

import json
from pathlib import Path

import pytest
import torch

from support.authors_format import to_authors_state_dict
from support.models import small_model
from leakseg.model.checkpoint import (
    CheckpointError, checkpoint_family, import_authors_checkpoint, infer_config, load_native, read_torch_checkpoint,
    save_native,
)
from leakseg.model import build_model

#: Every key and shape of each family's published b5 checkpoint, and how many tensors that is
#: (docs/MODELS.md, "Reference manifests").
DATA = Path(__file__).resolve().parent / "data"
B5_MANIFESTS = {"jvlgs": (DATA / "b5_reference_manifest.json", 1726),
                "fgstp": (DATA / "fgstp_b5_reference_manifest.json", 1606)}


def _manifest(family):
    path, count = B5_MANIFESTS[family]
    manifest = json.loads(path.read_text())
    assert len(manifest) == count
    return manifest


def test_b0_small_text_model_is_inferred_and_loaded(authors_checkpoint):
    model, text_sd = import_authors_checkpoint(authors_checkpoint)
    cfg = model.config
    assert cfg.backbone == "pvt_v2_b0" and cfg.prompt_count == 4 and cfg.text_dim == 64
    tm = cfg.text_model
    assert (tm.hidden_size, tm.intermediate_size, tm.num_hidden_layers, tm.num_attention_heads) == (64, 128, 2, 1)
    # the loaded weights are the file's weights, not a fresh initialisation
    sd = read_torch_checkpoint(authors_checkpoint)
    assert torch.equal(model.vlf.fmap_proj.weight, sd["fmap_proj.weight"])
    assert torch.equal(model.ctc.nl_layers[2].nonlocal_block.W.weight, sd["ctc.nl_layer3.nonlocals.0.W.weight"])
    assert torch.equal(model.encoder.pvt.stages[3].blocks[1].mlp.dwconv.weight,
                       sd["backbone.encoder.pvtv2_en.block4.1.mlp.dwconv.dwconv.weight"])
    assert "text_model.final_layer_norm.weight" in text_sd


def test_the_test_checkpoint_imports_with_no_flags(family, family_checkpoint):
    """Every family's b0 test checkpoint is recognised and loaded as written: the weights are the file's."""
    model, text_sd = import_authors_checkpoint(family_checkpoint(family))
    assert model.family == family and model.config.backbone == "pvt_v2_b0"
    assert bool(text_sd) == ("text" in model.input_names)  # a text model only where prompts are taken
    for k, v in small_model(family=family).state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_b5_manifest_is_recognised_and_its_config_inferred(family):
    sd = {k: torch.empty(shape, device="meta") for k, shape in _manifest(family).items()}
    assert checkpoint_family(sd) == family
    config = infer_config(sd)
    assert (config.model_type, config.backbone, config.feature_channels) == (family, "pvt_v2_b5", 32)


def test_b5_jvlgs_manifest_has_the_published_text_model():
    sd = {k: torch.empty(shape, device="meta") for k, shape in _manifest("jvlgs").items()}
    cfg = infer_config(sd)
    assert cfg.backbone == "pvt_v2_b5" and cfg.prompt_count == 4 and cfg.text_dim == 512
    assert cfg.text_model.num_hidden_layers == 12 and cfg.text_model.intermediate_size == 2048


def test_b5_checkpoint_with_manifest_shapes_imports(family, tmp_path):
    manifest = _manifest(family)
    g = torch.Generator().manual_seed(0)
    sd = {k: torch.randn(shape, generator=g) if shape else torch.tensor(0) for k, shape in manifest.items()}
    path = tmp_path / "b5.pth"
    torch.save({"module." + k: v for k, v in sd.items()}, path)
    model, text_sd = import_authors_checkpoint(path)
    assert model.family == family and model.config.backbone == "pvt_v2_b5"
    assert torch.equal(model.gsa[1].fuse_conv.conv.weight, sd["fsp2.BNReLU.conv.weight"])
    # and the test helper that writes authors' files is the exact inverse for b5
    from leakseg.model.text import build_text_model

    text_model = build_text_model(model.config.text_model, text_sd) if text_sd else None
    written = to_authors_state_dict(model, text_model)
    assert {k: list(v.shape) for k, v in written.items()} == manifest


def test_native_round_trip(tmp_path):
    from leakseg.model.prompts import PromptBank
    import numpy as np

    model = small_model(seed=3)
    bank = PromptBank(["a", "b", "c", "d", "e"], np.random.default_rng(0).normal(size=(5, 64)), ["d", "c", "b", "a"])
    model.config.prompts = ["d", "c", "b", "a"]
    save_native(tmp_path / "native", model, bank)
    loaded, bank2 = load_native(tmp_path / "native")
    assert loaded.config.backbone == "pvt_v2_b0" and loaded.config.text_model is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert bank2.prompts == bank.prompts and bank2.defaults == bank.defaults
    assert np.array_equal(bank2.embeddings, bank.embeddings.astype(np.float32))


def test_every_family_round_trips_through_the_native_format(family, tmp_path):
    from leakseg.model.prompts import PromptBank
    from leakseg.training.start import scratch_prompt_bank

    model = small_model(seed=4, family=family)
    takes_prompts = "text" in model.input_names
    bank = scratch_prompt_bank(model.config.prompts, model.config.text_dim) if takes_prompts else PromptBank.empty()
    save_native(tmp_path / "native", model, bank)
    loaded, bank2 = load_native(tmp_path / "native")
    assert loaded.family == family and type(loaded) is type(model) and bank2.takes_prompts == takes_prompts
    assert {**loaded.config.to_dict(), "text_model": None} == {**model.config.to_dict(), "text_model": None}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_not_a_checkpoint(tmp_path):
    p = tmp_path / "junk.pth"
    p.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        import_authors_checkpoint(p)


def test_missing_keys_are_named(tmp_path, authors_checkpoint):
    sd = read_torch_checkpoint(authors_checkpoint)
    del sd["fmap_proj.weight"]
    torch.save(sd, tmp_path / "a.pth")
    with pytest.raises(CheckpointError, match="missing fmap_proj.weight"):
        import_authors_checkpoint(tmp_path / "a.pth")
    sd = read_torch_checkpoint(authors_checkpoint)
    del sd["ctc.conv2.bn.running_var"]
    sd["extra.layer.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(CheckpointError) as err:
        import_authors_checkpoint(tmp_path / "b.pth")
    assert "ctc.convs.1.bn.running_var" in str(err.value) and "extra.layer.weight" in str(err.value)


def test_unknown_backbone_depths(family, family_checkpoint):
    sd = read_torch_checkpoint(family_checkpoint(family))
    sd = {k: v for k, v in sd.items() if ".block3.1." not in k}
    with pytest.raises(CheckpointError, match=r"depths \(2, 2, 1, 2\)"):
        infer_config(sd)


def test_a_checkpoint_of_no_family_names_what_each_misses(tmp_path):
    from leakseg.model import family_names

    sd = {"backbone.encoder.pvtv2_en.patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7), "other.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as err:
        checkpoint_family(sd)
    assert all(f"as {name.upper()} it is missing" in str(err.value) for name in family_names())
    assert "NCD" in str(err.value) and "fmap_proj" in str(err.value)


def test_an_fgstp_checkpoint_missing_a_decoder_part_says_which(tmp_path):
    full = to_authors_state_dict(small_model(family="fgstp"))
    del full["backbone.decoder.RS4.medium_gra.score.bias"]
    path = tmp_path / "broken.pth"
    torch.save(full, path)
    with pytest.raises(CheckpointError, match=r"FGSTP: missing 1 keys: decoder\.rs4\.medium_gra\.score\.bias"):
        import_authors_checkpoint(path)


def test_prompts_are_refused_for_a_family_without_text(promptless_family, family_checkpoint):
    with pytest.raises(CheckpointError, match=f"{promptless_family.upper()} takes no prompts"):
        import_authors_checkpoint(family_checkpoint(promptless_family), prompts=["white steam"])


def test_build_model_from_variant_name():
    assert build_model("pvt_v2_b1", text_dim=64, text_model=None).config.backbone == "pvt_v2_b1"
    with pytest.raises(ValueError, match="unknown backbone"):
        build_model("resnet50")
