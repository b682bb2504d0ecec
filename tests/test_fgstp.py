"""FGSTP: import in the published key layout with no flags, the exported clip graph, and masks equal to an
independent write-up of the published forward (triplet by triplet, three encoder passes per frame)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from support.fgstp_format import fgstp_archive, fgstp_checkpoint, small_fgstp, to_fgstp_state_dict
from leakseg.model import build_model, triplet_neighbours
from leakseg.model.checkpoint import (
    CheckpointError, checkpoint_family, import_authors_checkpoint, infer_config, read_torch_checkpoint,
)

MANIFEST = Path(__file__).parent / "data" / "fgstp_b5_reference_manifest.json"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return fgstp_checkpoint(tmp_path_factory.mktemp("fgstp_ckpt"))


@pytest.fixture(scope="module")
def archive(checkpoint, tmp_path_factory):
    return fgstp_archive(checkpoint, tmp_path_factory.mktemp("fgstp_store"))


# --- the published key layout --------------------------------------------------------------------------

def test_b5_model_has_exactly_the_published_keys_and_shapes():
    manifest = json.loads(MANIFEST.read_text())
    assert len(manifest) == 1606
    written = {k: list(v.shape) for k, v in to_fgstp_state_dict(build_model("pvt_v2_b5", "fgstp")).items()}
    assert written == manifest


def test_b5_manifest_is_recognised_and_its_variant_inferred():
    manifest = json.loads(MANIFEST.read_text())
    sd = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    assert checkpoint_family(sd) == "fgstp"
    config = infer_config(sd)
    assert (config.model_type, config.backbone, config.feature_channels) == ("fgstp", "pvt_v2_b5", 32)


def test_import_with_no_flags(checkpoint):
    model, text_sd = import_authors_checkpoint(checkpoint)
    assert text_sd == {} and model.family == "fgstp" and model.config.backbone == "pvt_v2_b0"
    reference = small_fgstp()
    for k, v in reference.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_a_checkpoint_of_neither_family_names_both(tmp_path):
    sd = {"backbone.encoder.pvtv2_en.patch_embed1.proj.weight": torch.zeros(32, 3, 7, 7), "other.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError) as err:
        checkpoint_family(sd)
    assert "JVLGS" in str(err.value) and "FGSTP" in str(err.value) and "NCD" in str(err.value)
    # an FGSTP checkpoint missing a decoder part says what is missing
    full = to_fgstp_state_dict(small_fgstp())
    del full["backbone.decoder.RS4.medium_gra.score.bias"]
    path = tmp_path / "broken.pth"
    torch.save(full, path)
    with pytest.raises(CheckpointError, match=r"FGSTP: missing 1 keys: decoder\.rs4\.medium_gra\.score\.bias"):
        import_authors_checkpoint(path)


# --- an independent write-up of the published forward -----------------------------------------------------

def _cb(sd, p, x):
    """BasicConv2d: conv without bias (3x3, padding 1) + BatchNorm in eval mode, no ReLU."""
    x = F.conv2d(x, sd[p + ".conv.weight"], padding=1)
    return F.batch_norm(x, sd[p + ".bn.running_mean"], sd[p + ".bn.running_var"], sd[p + ".bn.weight"],
                        sd[p + ".bn.bias"], False, 0.0, 1e-5)


def _ncd(sd, x1, x2, x3):
    up = lambda t: F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True)  # noqa: E731
    p = "backbone.decoder.NCD."
    x2_1 = _cb(sd, p + "conv_upsample1", up(x1)) * x2
    x3_1 = _cb(sd, p + "conv_upsample2", up(x2_1)) * _cb(sd, p + "conv_upsample3", up(x2)) * x3
    x2_2 = _cb(sd, p + "conv_concat2", torch.cat((x2_1, _cb(sd, p + "conv_upsample4", up(x1))), 1))
    x3_2 = _cb(sd, p + "conv_concat3", torch.cat((x3_1, _cb(sd, p + "conv_upsample5", up(x2_2))), 1))
    return F.conv2d(_cb(sd, p + "conv4", x3_2), sd[p + "conv5.weight"], sd[p + "conv5.bias"])


def _gra(sd, p, x, y, group):
    cat = []
    for chunk in torch.chunk(x, group, dim=1):
        cat += [chunk, y]
    x = x + F.relu(F.conv2d(torch.cat(cat, 1), sd[p + ".conv.0.weight"], sd[p + ".conv.0.bias"], padding=1))
    return x, y + F.conv2d(x, sd[p + ".score.weight"], sd[p + ".score.bias"], padding=1)


def _reverse_stage(sd, p, x, y):
    y = -1 * torch.sigmoid(y) + 1
    x, y = _gra(sd, p + ".weak_gra", x, y, 1)
    x, y = _gra(sd, p + ".medium_gra", x, y, 4)
    _, y = _gra(sd, p + ".strong_gra", x, y, 32)
    return y


def _decoder_s3(sd, x2, x3, x4):
    s_g = _ncd(sd, x4, x3, x2)
    g = F.interpolate(s_g, scale_factor=0.25, mode="bilinear")
    s_5 = _reverse_stage(sd, "backbone.decoder.RS5", x4, g) + g
    g = F.interpolate(s_5, scale_factor=2, mode="bilinear")
    s_4 = _reverse_stage(sd, "backbone.decoder.RS4", x3, g) + g
    g = F.interpolate(s_4, scale_factor=2, mode="bilinear")
    s_3 = _reverse_stage(sd, "backbone.decoder.RS3", x2, g) + g
    return F.interpolate(s_3, scale_factor=8, mode="bilinear")


@torch.no_grad()
def _published_forward(model, sd, frame1, frame2, frame3):
    """FGSTP.forward of the research code on one triplet: three encoder passes; the shared modules
    (encoder, CTC, GSA) are JVLGS's, checked against the JVLGS reference elsewhere."""
    f1, f2, f3 = model.encoder(frame1), model.encoder(frame2), model.encoder(frame3)
    outs = []
    for fk in (f2, f3):
        corr = model.ctc(f1, fk)
        u = [model.gsa[s](corr[s] + f1[s]) for s in range(3)]
        outs.append(_decoder_s3(sd, *u))
    x = torch.cat(outs, 1)
    for i in range(3):
        x = F.conv2d(x, sd[f"fusion_conv.{i}.weight"], sd[f"fusion_conv.{i}.bias"], padding=1)
    return x


def _clip(seed, t=6, h=72, w=96):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h, w)).astype(np.float32)
    return [np.clip(base + rng.normal(0, 25, (h, w)), 0, 255).astype(np.uint8) for _ in range(t)]


def test_masks_equal_the_published_forward(archive, checkpoint):
    """Frames 0..T-3 (those the research code predicts): the archive's masks equal the write-up's,
    post-processed as FGSTP's test script does (resize, sigmoid, min-max, > 0.5, no opening)."""
    from leakseg.inference.predictor import Predictor

    model, _ = import_authors_checkpoint(checkpoint)
    sd = read_torch_checkpoint(checkpoint)
    predictor = Predictor.from_archive(archive, device="cpu")
    assert predictor.defaults.opening_kernel == 0 and predictor.defaults.normalization == "minmax"
    frames = _clip(0)
    result = predictor.predict(frames)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = [(np.asarray(Image.fromarray(f).convert("RGB").resize((352, 352), Image.BILINEAR)) / 255.0 - mean) / std
         for f in frames]
    x = torch.tensor(np.stack(x).transpose(0, 3, 1, 2), dtype=torch.float32)
    expected = []
    for t in range(len(frames) - 2):
        logits = _published_forward(model, sd, x[t:t + 1], x[t + 1:t + 2], x[t + 2:t + 3])
        p = torch.sigmoid(F.interpolate(logits, size=frames[0].shape, mode="bilinear", align_corners=False))[0, 0]
        expected.append(((p - p.min()) / (p.max() - p.min() + 1e-8)).numpy() > 0.5)
    expected = np.stack(expected)
    assert expected.any() and not expected.all()
    assert np.array_equal(result.masks()[: len(frames) - 2], expected)
    assert result.model.family == "fgstp" and result.model.prompts == []


def test_encoder_runs_once_per_frame_in_the_clip_forward():
    model = small_fgstp()
    seen = []
    hook = model.encoder.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[0]))
    try:
        frames = torch.randn(5, 3, 256, 256)
        with torch.no_grad():
            clip = model(frames, torch.tensor(triplet_neighbours(5)))
            assert seen == [5]
            seen.clear()
            triplets = torch.stack([frames[[t, a, b]] for t, (a, b) in enumerate(triplet_neighbours(5))])
            research, maps1, maps2 = model.forward_triplet(triplets)
            assert seen == [5, 5, 5]
    finally:
        hook.remove()
    assert len(maps1) == len(maps2) == 4 and all(m.shape == (5, 1, 256, 256) for m in maps1 + maps2)
    assert torch.allclose(clip, research, atol=1e-5)


# --- the exported graph --------------------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_graph_equals_eager_on_several_clip_lengths(fmt, checkpoint, tmp_path_factory):
    from leakseg.inference.manifest import extract_archive
    from leakseg.export.graph import example_inputs
    from leakseg.inference.manifest import MANIFEST_FILE, ArchiveManifest
    from leakseg.inference.runtime import load_graph

    mar = fgstp_archive(checkpoint, tmp_path_factory.mktemp(f"fgstp_{fmt}"), fmt)
    folder = extract_archive(mar, tmp_path_factory.mktemp("x"))
    manifest = ArchiveManifest.model_validate_json((folder / MANIFEST_FILE).read_text())
    assert manifest.config["model_type"] == "fgstp" and manifest.postprocess.opening_kernel == 0
    assert manifest.graph_check["mask_iou"] >= 0.99 and manifest.graph_check["relative_error"] < 1e-4
    graph = load_graph(str(folder / manifest.graph_file), manifest.format, "cpu")
    model, _ = import_authors_checkpoint(checkpoint)
    for lengths in [(3,), (7, 4), (5, 3, 6)]:
        frames, neighbours = example_inputs(model, clip_lengths=lengths, seed=sum(lengths))
        with torch.no_grad():
            expected = model(frames, neighbours).numpy()
        got = graph(frames.numpy(), None, neighbours.numpy()).numpy()
        assert got.shape == expected.shape == (sum(lengths), 1, 352, 352)
        assert np.abs(got - expected).max() < 1e-4


def test_export_refuses_prompts_for_fgstp(checkpoint, tmp_path):
    from leakseg.export.exporter import ExportOptions, export_archive

    with pytest.raises(ValueError, match="takes no prompts"):
        export_archive(ExportOptions(checkpoint=checkpoint, output_dir=tmp_path, extra_prompts=["gas plume"]))


# --- training ------------------------------------------------------------------------------------------

def test_fgstp_training_step_uses_the_published_loss():
    """The loss is the fused logits' plus the four decoder maps' of both neighbours (nine terms)."""
    from leakseg.training.loop import train_step
    from leakseg.training.loss import published_loss, structure_loss

    torch.manual_seed(0)
    model = small_fgstp().train()
    triplets = torch.randn(2, 3, 3, 256, 256)
    masks = (torch.rand(2, 1, 256, 256) > 0.7).float()
    logits, maps1, maps2 = model.forward_triplet(triplets)
    loss = published_loss("fgstp", logits, maps1, maps2, masks)
    terms = [structure_loss(m, masks, weighted_bce=False) for m in [logits, *maps1, *maps2]]
    assert len(terms) == 9 and torch.allclose(loss, sum(terms))
    # the research code's BCE term: reduce='none' is PyTorch's legacy spelling that means "mean"
    with pytest.warns(UserWarning):
        legacy = F.binary_cross_entropy_with_logits(logits, masks, reduce="none")
    assert torch.allclose(legacy, F.binary_cross_entropy_with_logits(logits, masks))
    before = [p.detach().clone() for p in model.fusion_conv.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    assert train_step(model, optimizer, triplets, masks, None) > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.fusion_conv.parameters()))


def test_train_command_trains_and_fine_tunes_fgstp(checkpoint, tmp_path):
    """`leakseg train --arch fgstp` from scratch, then `--init gasvid_best.pth` with the clip sampler: native
    FGSTP checkpoints with no prompt bank, recommending FGSTP's post-processing; --arch must fit --init."""
    from leakseg.cli import main
    from leakseg.model.checkpoint import load_native, native_postprocess_defaults
    from leakseg.training.synth import write_dataset

    data = tmp_path / "data"
    write_dataset(data, 2, seed=3, frames=4, height=48, width=48, leak_free_fraction=0, partial_fraction=0,
                  progress=False)
    common = ["--size", "256", "--batch-size", "2", "--max-steps", "1", "--no-progress"]
    assert main(["train", str(data), "--arch", "fgstp", "--out", str(tmp_path / "scratch"), "--val", str(data),
                 *common]) == 0
    model, bank = load_native(tmp_path / "scratch" / "last")
    assert model.family == "fgstp" and not bank.takes_prompts
    assert native_postprocess_defaults(tmp_path / "scratch" / "best") == {"opening_kernel": 0}
    raw = json.loads((tmp_path / "scratch" / "last" / "config.json").read_text())
    assert raw["model_type"] == "fgstp" and abs(raw["training"]["lr_drop_at"] - 44 / 60) < 1e-9
    assert main(["train", str(data), "--init", str(checkpoint), "--sampler", "clip", "--out", str(tmp_path / "ft"),
                 *common]) == 0
    tuned, _ = load_native(tmp_path / "ft" / "last")
    start, _ = import_authors_checkpoint(checkpoint)
    assert tuned.family == "fgstp"
    assert not torch.equal(tuned.fusion_conv[0].weight, start.fusion_conv[0].weight)  # it trained
    with pytest.raises(ValueError, match="FGSTP checkpoint"):
        main(["train", str(data), "--init", str(checkpoint), "--arch", "jvlgs", "--out", str(tmp_path / "x"), *common])
