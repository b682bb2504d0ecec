"""The exported graphs equal the eager model; the archive holds what the manifest says."""

import json
import zipfile

import numpy as np
import pytest
import torch

from leakseg.inference.manifest import extract_archive
from leakseg.model.checkpoint import import_authors_checkpoint, sha256_file
from leakseg.export.graph import check_graph, example_inputs
from leakseg.inference.manifest import MANIFEST_FILE, ArchiveManifest
from leakseg.inference.runtime import TorchGraph, load_graph


def _graph(archive, tmp_path):
    folder = extract_archive(archive, tmp_path / "x")
    manifest = ArchiveManifest.model_validate_json((folder / MANIFEST_FILE).read_text())
    return manifest, folder, load_graph(str(folder / manifest.graph_file), manifest.format, "cpu")


#: The published post-processing each family's archive defaults to (docs/MODELS.md, "Post-processing").
PUBLISHED_OPENING = {"jvlgs": 9, "fgstp": 0}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_graph_equals_eager(fmt, family, family_archive, family_checkpoint, tmp_path):
    manifest, _, graph = _graph(family_archive(family, fmt), tmp_path)
    assert manifest.config["model_type"] == family and manifest.postprocess.opening_kernel == PUBLISHED_OPENING[family]
    assert manifest.max_abs_logit_error < 1e-3
    assert manifest.graph_check["mask_iou"] >= 0.99 and manifest.graph_check["relative_error"] < 1e-4
    model, _ = import_authors_checkpoint(family_checkpoint(family))
    # clips of lengths the trace never saw, alone and batched together (with different prompts each)
    for lengths in [(3,), (7, 4), (5, 3, 6), (7, 3, 4)]:
        inputs = example_inputs(model, clip_lengths=lengths, seed=sum(lengths))
        with torch.no_grad():
            expected = model(*inputs).numpy()
        named = dict(zip(model.input_names, (x.numpy() for x in inputs)))
        got = graph(named["frames"], named.get("text"), named["neighbours"]).numpy()
        assert got.shape == expected.shape == (sum(lengths), 1, 352, 352)
        assert np.abs(got - expected).max() < 1e-4


def test_export_refuses_prompts_for_a_family_without_text(promptless_family, family_checkpoint, tmp_path):
    from leakseg.export.exporter import ExportOptions, export_archive

    with pytest.raises(ValueError, match="takes no prompts"):
        export_archive(ExportOptions(checkpoint=family_checkpoint(promptless_family), output_dir=tmp_path,
                                     extra_prompts=["gas plume"]))


def test_archive_contents(onnx_archive, authors_checkpoint):
    with zipfile.ZipFile(onnx_archive) as zf:
        names = set(zf.namelist())
        manifest = ArchiveManifest.model_validate_json(zf.read(MANIFEST_FILE))
        mar = json.loads(zf.read("MAR-INF/MANIFEST.json"))
    assert {"graph.onnx", "prompt_bank.safetensors", MANIFEST_FILE, "torchserve_entry.py", "model-config.yaml"} <= names
    assert manifest.format == "onnx" and manifest.config["backbone"] == "pvt_v2_b0"
    assert manifest.checkpoint_sha256 == sha256_file(authors_checkpoint)
    assert manifest.postprocess.opening_kernel == 9 and manifest.postprocess.normalization == "minmax"
    assert mar["model"]["handler"] == "torchserve_entry.py"


def test_verification_catches_a_wrong_graph(authors_checkpoint):
    """The check export runs before archiving fails for a graph that is not the model."""
    model, _ = import_authors_checkpoint(authors_checkpoint)
    same = check_graph(model, TorchGraph(model, "cpu"))
    assert same.max_abs_error == 0.0 and same.mask_iou == 1.0 and same.passed
    other, _ = import_authors_checkpoint(authors_checkpoint)
    with torch.no_grad():
        other.fusion_conv[2].bias += 0.01
    shifted = check_graph(model, TorchGraph(other, "cpu"))
    assert shifted.max_abs_error == pytest.approx(0.01, rel=1e-3)
    assert shifted.relative_error == pytest.approx(0.01 / max(1.0, shifted.logit_scale), rel=1e-3)
    assert not shifted.passed  # 1e-2 relative to a scale of about 1 is a real mismatch
    with torch.no_grad():
        other.fusion_conv[2].weight.mul_(-1.0)  # a different network
    wrong = check_graph(model, TorchGraph(other, "cpu"), tolerance=1e6)
    assert wrong.mask_iou < 0.9 and not wrong.passed  # the masks disagree whatever the tolerance


def test_large_logits_are_judged_relative_to_their_scale(authors_checkpoint, tmp_path):
    """A faithful graph of a checkpoint whose logits are large differs by more than 1e-3 in absolute terms
    (float rounding scales with the activations), yet it is archived: the relative error is tiny and the masks
    agree. A tolerance the user sets below it refuses, naming both figures."""
    from leakseg.cli import main
    from leakseg.model.checkpoint import read_torch_checkpoint

    sd = read_torch_checkpoint(authors_checkpoint)
    for i in (0, 1, 2):  # logits x 1e5: the fusion head is linear
        sd[f"fusion_conv.{i}.weight"] = sd[f"fusion_conv.{i}.weight"] * (10.0 if i < 2 else 1000.0)
        sd[f"fusion_conv.{i}.bias"] = sd[f"fusion_conv.{i}.bias"] * (10.0 ** (i + 1) if i < 2 else 1e5)
    big = tmp_path / "big_logits.pth"
    torch.save(sd, big)
    assert main(["export", "--checkpoint", str(big), "--format", "onnx", "--name", "big",
                 "--output-dir", str(tmp_path)]) == 0
    with zipfile.ZipFile(tmp_path / "big.mar") as zf:
        manifest = ArchiveManifest.model_validate_json(zf.read(MANIFEST_FILE))
    check = manifest.graph_check
    assert check["logit_scale"] > 1e3 and check["max_abs_error"] > 1e-3  # the old absolute rule refused this
    assert check["relative_error"] < 1e-4 and check["mask_iou"] >= 0.99
    assert main(["export", "--checkpoint", str(big), "--format", "onnx", "--name", "strict",
                 "--output-dir", str(tmp_path), "--tolerance", "1e-9"]) == 1
    assert not (tmp_path / "strict.mar").exists()


def test_export_command_reports_bad_checkpoint(tmp_path, capsys):
    from leakseg.cli import main

    bad = tmp_path / "bad.pth"
    torch.save({"some.weight": torch.zeros(2)}, bad)
    assert main(["export", "--checkpoint", str(bad), "--output-dir", str(tmp_path)]) == 1
    assert not list(tmp_path.glob("*.mar"))


def test_prompt_bank_in_archive_holds_the_text_models_embeddings(onnx_archive, authors_checkpoint, tmp_path):
    from leakseg.model.text import build_text_model, embed_prompts
    from leakseg.model.tokenizer import load_tokenizer
    from leakseg.model.prompts import PromptBank

    folder = extract_archive(onnx_archive, tmp_path / "y")
    bank = PromptBank.load(folder / "prompt_bank.safetensors")
    assert bank.defaults == ["white steam", "floating steam", "billowing smoke", "flowing smoke"]
    assert bank.prompts[4:] == ["gas plume", "vapour cloud"]
    model, text_sd = import_authors_checkpoint(authors_checkpoint)
    tm = build_text_model(model.config.text_model, text_sd)
    expected = embed_prompts(tm, load_tokenizer(), ["vapour cloud", "white steam"])
    np.testing.assert_allclose(bank.matrix(["vapour cloud", "white steam", "gas plume", "flowing smoke"])[:, :2],
                               expected.T, atol=1e-5)  # float sums differ with the thread count


def test_export_native_checkpoint_keeps_its_prompt_bank(tmp_path):
    from support.models import small_model
    from leakseg.model.checkpoint import save_native
    from leakseg.export.exporter import ExportOptions, export_archive
    from leakseg.model.prompts import PromptBank

    model = small_model(seed=7)
    rng = np.random.default_rng(1)
    bank = PromptBank(["white steam", "floating steam", "billowing smoke", "flowing smoke", "gas"],
                      rng.normal(size=(5, 64)), ["white steam", "floating steam", "billowing smoke", "flowing smoke"])
    save_native(tmp_path / "native", model, bank)
    mar = export_archive(ExportOptions(checkpoint=tmp_path / "native", name="nat", output_dir=tmp_path))
    folder = extract_archive(mar, tmp_path / "n")
    exported = PromptBank.load(folder / "prompt_bank.safetensors")
    assert exported.prompts == bank.prompts and np.array_equal(exported.embeddings, bank.embeddings)
    # prompts it has no embedding for need a text model
    with pytest.raises(ValueError, match="--text-model"):
        export_archive(ExportOptions(checkpoint=tmp_path / "native", name="nat2", output_dir=tmp_path,
                                     extra_prompts=["never seen"]))


def test_text_model_folder_supplies_tokenizer_and_weights(tmp_path, authors_checkpoint):
    """A checkpoint without nlpmodel.* exports with a local Hugging Face OWLv2 text folder."""
    from leakseg.model.checkpoint import read_torch_checkpoint
    from leakseg.export.exporter import ExportOptions, export_archive
    from leakseg.model.text import build_text_model, embed_prompts
    from leakseg.model.tokenizer import load_tokenizer, write_hf_tokenizer_files
    from leakseg.model import TextModelConfig
    from leakseg.model.prompts import PromptBank

    sd = {k: v for k, v in read_torch_checkpoint(authors_checkpoint).items() if not k.startswith("nlpmodel.")}
    torch.save(sd, tmp_path / "vision_only.pth")
    with pytest.raises(ValueError, match="no text model"):
        export_archive(ExportOptions(checkpoint=tmp_path / "vision_only.pth", output_dir=tmp_path))

    text_dir = tmp_path / "owlv2-text"
    cfg = TextModelConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
    text_model = build_text_model(cfg)
    text_model.save_pretrained(text_dir)
    write_hf_tokenizer_files(text_dir)
    mar = export_archive(ExportOptions(checkpoint=tmp_path / "vision_only.pth", name="hf", output_dir=tmp_path,
                                       text_model_dir=text_dir))
    bank = PromptBank.load(extract_archive(mar, tmp_path / "h") / "prompt_bank.safetensors")
    expected = embed_prompts(text_model, load_tokenizer(text_dir), bank.defaults)
    np.testing.assert_allclose(bank.embeddings, expected, atol=1e-6)


def test_postprocess_defaults_come_from_the_checkpoint_then_the_command(tmp_path):
    from support.models import small_model
    from leakseg.cli import main
    from leakseg.model.checkpoint import save_native
    from leakseg.model.prompts import PromptBank

    model = small_model(seed=8)
    prompts = model.config.prompts
    bank = PromptBank(prompts, np.random.default_rng(2).normal(size=(4, 64)), prompts)
    save_native(tmp_path / "ck", model, bank, extra={"postprocess": {"normalization": "absolute", "threshold": 0.6}})

    def exported(*flags):
        assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--output-dir", str(tmp_path), *flags]) == 0
        with zipfile.ZipFile(tmp_path / "jvlgs.mar") as zf:
            return ArchiveManifest.model_validate_json(zf.read(MANIFEST_FILE)).postprocess

    recommended = exported()
    assert (recommended.normalization, recommended.threshold, recommended.opening_kernel) == ("absolute", 0.6, 9)
    overridden = exported("--normalization", "minmax", "--opening-kernel", "5")
    assert (overridden.normalization, overridden.threshold, overridden.opening_kernel) == ("minmax", 0.6, 5)
    assert main(["export", "--checkpoint", str(tmp_path / "ck"), "--output-dir", str(tmp_path),
                 "--threshold", "1.5"]) == 1
