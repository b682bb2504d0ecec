"""leakseg.training: the published loss, identical triplet augmentation, few-shot caps, and real steps."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.lib.stride_tricks import sliding_window_view

from support.models import small_model

from leakseg.commands import POSTPROCESS_FLAGS, postprocess_overrides
from leakseg.commands import train as train_command
from leakseg.model import triplet_neighbours
from leakseg.synth import write_clip, write_dataset
from leakseg.training.augment import AugmentConfig, AugmentParams, augment_triplet
from leakseg.training.loop import TrainConfig, clip_step, min_input_size, train, train_step
from leakseg.training.loss import structure_loss
from leakseg.training.samplers import ClipSet, TripletSet, few_shot_indices, load_clips
from leakseg.training.start import load_start, scratch_prompt_bank

SIZE = 232  # the smallest multiple of 8 the network takes (its stride-32 map must be >= 8 x 8)


def _hand_loss(logits: np.ndarray, mask: np.ndarray) -> float:
    """The published loss (docs/MODELS.md), spelled out in float64 numpy: 31x31 box filter with zero padding."""
    total = 0.0
    for z, m in zip(logits[:, 0].astype(np.float64), mask[:, 0].astype(np.float64)):
        box = sliding_window_view(np.pad(m, 15), (31, 31)).sum(axis=(2, 3)) / 961.0
        w = 1 + 5 * np.abs(box - m)
        bce = np.maximum(z, 0) - z * m + np.log1p(np.exp(-np.abs(z)))
        wbce = (w * bce).sum() / w.sum()
        p = 1 / (1 + np.exp(-z))
        inter = (w * p * m).sum()
        union = (w * (p + m)).sum()
        total += wbce + 1 - (inter + 1) / (union - inter + 1)
    return total / len(logits)


def test_loss_equals_hand_computation():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (3, 1, 40, 36)).astype(np.float32)
    mask = np.zeros((3, 1, 40, 36), np.float32)
    mask[0, 0, 5:20, 8:30] = 1
    mask[1, 0, 30:, :10] = 1  # item 2 has no gas at all
    got = float(structure_loss(torch.from_numpy(logits), torch.from_numpy(mask)))
    assert got == pytest.approx(_hand_loss(logits, mask), rel=1e-5)
    # the boundary weighting matters: the unweighted loss is a different number
    flat = float(torch.nn.functional.binary_cross_entropy_with_logits(torch.from_numpy(logits), torch.from_numpy(mask)))
    assert abs(got - flat) > 1e-3


def test_perfect_prediction_has_small_loss():
    mask = torch.zeros(1, 1, 32, 32)
    mask[..., 8:24, 8:24] = 1
    good = structure_loss((mask * 2 - 1) * 20, mask)
    bad = structure_loss((1 - mask * 2) * 20, mask)
    assert float(good) < 0.01 < 1.0 < float(bad)


def _blob_frame(h=48, w=64):
    img = np.zeros((h, w), np.uint8)
    img[6:30, 4:22] = 255  # asymmetric, off-centre: flips and rotations move it
    img[30:40, 40:60] = 255
    return img


def test_augmentation_is_identical_on_the_three_frames_and_follows_the_mask():
    base = _blob_frame()
    params = AugmentParams(flip=True, angle=12.0, brightness=1.15, contrast=0.85, sharpness=1.2)
    frames, mask = augment_triplet([base, base.copy(), base.copy()], base > 0, params)
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[0], frames[2])
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    # the mask moved with the frames: thresholded frame and mask agree away from the blob edges
    agree = ((frames[0] > 127) == (mask > 0)).mean()
    assert agree > 0.97
    assert ((mask > 0) != (base > 0)).mean() > 0.05  # and the transform did something
    # flipping alone is exact on frames and mask
    f2, m2 = augment_triplet([base] * 3, base > 0, AugmentParams(flip=True))
    assert all(np.array_equal(f, base[:, ::-1]) for f in f2) and np.array_equal(m2 > 0, base[:, ::-1] > 0)


def test_sampled_augmentation_is_shared_by_the_triplet(tmp_path):
    """Through TripletSet: random parameters, drawn once per sample, applied to all three frames."""
    base = _blob_frame()
    write_clip(tmp_path / "still", np.stack([base] * 4), np.stack([base > 0] * 4), {})
    ts = TripletSet(load_clips(tmp_path), SIZE, AugmentConfig(flip_p=1.0, rotate_p=1.0))
    rng = np.random.default_rng(0)
    plain, _ = ts.get(0)
    for i in range(3):
        x, m = ts.get(i, rng)
        assert np.array_equal(x[0], x[1]) and np.array_equal(x[0], x[2])
        assert not np.allclose(x[0], plain[0])
        assert ((x[0, 0] > 0) == (m[0] > 0.5)).mean() > 0.95


def test_few_shot_cap(tmp_path):
    picks = few_shot_indices(range(100), 30)
    assert len(picks) == 30 == len(set(picks)) and picks == sorted(picks) and picks[0] == 0 and picks[-1] == 99
    assert few_shot_indices([4, 1, 2], 30) == [1, 2, 4]
    write_dataset(tmp_path, 3, seed=1, frames=7, height=32, width=32, leak_free_fraction=0, partial_fraction=0,
                  progress=False)
    # a partially labelled video: frames 0-2 lose their masks
    for i in range(3):
        (tmp_path / "synth_00001" / "masks" / f"{i:05d}.png").unlink()
    clips = load_clips(tmp_path, few_shot=3)
    assert [len(c.masks) for c in clips] == [3, 3, 3]
    assert sorted(clips[1].masks) == [3, 5, 6]  # spread over the labelled frames only
    assert all(len(c.frames) == 7 for c in clips)
    assert len(TripletSet(clips, SIZE)) == 9
    assert [len(c.masks) for c in load_clips(tmp_path)] == [7, 4, 7]


def test_scratch_prompt_bank_is_fixed_and_orthogonal():
    a, b = scratch_prompt_bank(), scratch_prompt_bank()
    assert np.array_equal(a.embeddings, b.embeddings)
    assert a.embeddings.shape == (4, 512)
    gram = a.embeddings @ a.embeddings.T / 512
    assert np.allclose(gram, np.eye(4), atol=1e-5)


def test_min_input_size_is_the_real_limit():
    s = min_input_size()
    model, bank, _ = load_start(None)
    text = torch.from_numpy(bank.matrix())[None]
    with torch.no_grad():
        model.forward_triplet(torch.zeros(1, 3, 3, s, s), text)
        with pytest.raises(RuntimeError):
            model.forward_triplet(torch.zeros(1, 3, 3, s - 1, s - 1), text)


def _train_parser():
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser


def test_the_command_line_sets_config_fields_by_name():
    parser = _train_parser()
    defaults = parser.parse_args(["data", "--out", "o"])
    assert TrainConfig.from_args(defaults, postprocess=postprocess_overrides(defaults)) == TrainConfig("data", "o")
    # every argument but the post-processing flags is the config field of its name: none is dropped
    assert set(vars(defaults)) - set(POSTPROCESS_FLAGS) <= {f.name for f in fields(TrainConfig)}
    args = parser.parse_args(["data", "--out", "o", "--save-every", "5", "--no-augment", "--no-progress", "--lr",
                              "2e-4", "--batch-size", "3", "--few-shot", "30", "--threshold", "0.3", "--arch", "fgstp"])
    cfg = TrainConfig.from_args(args, postprocess=postprocess_overrides(args))
    assert cfg == TrainConfig("data", "o", save_every_minutes=5.0, augment=False, progress=False, lr=2e-4,
                              batch_size=3, few_shot=30, postprocess={"threshold": 0.3}, arch="fgstp")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_train")
    write_dataset(root, 2, seed=7, frames=4, height=48, width=48, leak_free_fraction=0, partial_fraction=0,
                  progress=False)
    return root


def test_a_few_steps_reduce_the_loss(tiny_set):
    torch.manual_seed(0)
    model, bank, _ = load_start(None)
    model.train()
    text = torch.from_numpy(bank.matrix())[None]
    x, m = TripletSet(load_clips(tiny_set), SIZE).batch([0, 5])
    assert m.sum() > 0  # there is gas to learn
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [train_step(model, opt, x, m, text) for _ in range(4)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.02, losses


def test_train_stops_on_the_time_budget_and_saves(tiny_set, tmp_path):
    from leakseg.model.checkpoint import load_native

    cfg = TrainConfig(data=str(tiny_set), val=str(tiny_set), out=str(tmp_path / "run"), size=SIZE, batch_size=2,
                      max_minutes=1e-6, progress=False)
    result = train(cfg)
    assert result.steps == 1 and "time budget" in result.stopped
    assert len(result.val) == 1 and result.val[0]["frames"] == 8
    for name in ("best", "last"):
        model, bank = load_native(tmp_path / "run" / name)
        raw = json.loads((tmp_path / "run" / name / "config.json").read_text())
        assert raw["input_size"] == 352 and raw["training"]["size"] == SIZE
        assert "NOT OWLv2" in raw["prompt_bank_note"]
        assert np.array_equal(bank.embeddings, scratch_prompt_bank().embeddings)
    log = json.loads((tmp_path / "run" / "train_log.json").read_text())
    assert len(log["losses"]) == 1


def test_authors_checkpoint_start_uses_its_frozen_text_model(authors_checkpoint, onnx_archive, tiny_set):
    """Fine-tuning from a .pth: the prompt embeddings are exactly what export precomputed from it."""
    from leakseg.inference.predictor import Predictor

    model, bank, info = load_start(str(authors_checkpoint))
    exported = Predictor.from_archive(onnx_archive, device="cpu").bank
    assert np.allclose(bank.matrix(), exported.matrix(), atol=1e-5)
    assert bank.dim == model.config.text_dim == 64 and "frozen" in info["prompt_bank_note"]
    assert not any(name.startswith("nlpmodel") or "text_model" in name for name, _ in model.named_parameters())
    model.train()
    text = torch.from_numpy(bank.matrix())[None]
    x, m = TripletSet(load_clips(tiny_set), SIZE).batch([0])
    before = model.vlf.visual_proj.weight.detach().clone()
    train_step(model, torch.optim.Adam(model.parameters(), lr=1e-4), x, m, text)
    assert not torch.equal(before, model.vlf.visual_proj.weight)


def test_clip_batches_offset_neighbours_and_target_only_labelled_frames(tmp_path):
    write_dataset(tmp_path, 2, seed=3, frames=5, height=40, width=40, leak_free_fraction=0, partial_fraction=0,
                  progress=False)
    (tmp_path / "synth_00001" / "masks" / "00002.png").unlink()
    cs = ClipSet(load_clips(tmp_path), SIZE)
    assert len(cs) == 2 and cs.targets == 9
    x, m, targets, nb = cs.batch([0, 1])
    assert x.shape == (10, 3, SIZE, SIZE) and m.shape == (9, 1, SIZE, SIZE)
    assert targets.tolist() == [0, 1, 2, 3, 4, 5, 6, 8, 9]
    rule = np.asarray(triplet_neighbours(5))
    assert np.array_equal(nb.numpy(), np.concatenate([rule, rule + 5]))


def test_clip_samples_give_the_triplet_loss(tiny_set):
    """Same inputs, same targets: a clip step's loss is the mean of its triplets' losses."""
    torch.manual_seed(0)
    model, bank, _ = load_start(None)
    model.eval()  # no dropout, so both ways see the same network
    text = torch.from_numpy(bank.matrix())[None]
    clips = load_clips(tiny_set)
    x, m, targets, nb = ClipSet(clips, SIZE).batch([0])
    tx, tm = TripletSet(clips, SIZE).batch(range(4))  # clip 0's four triplets
    assert torch.equal(m, tm) and torch.equal(x[nb[:, 0]], tx[:, 1]) and torch.equal(x[nb[:, 1]], tx[:, 2])
    with torch.no_grad():
        clip_loss = structure_loss(model(x, text.expand(4, -1, -1), nb)[targets], m)
        triplet_loss = structure_loss(model.forward_triplet(tx, text.expand(4, -1, -1))[0], tm)
    assert float(clip_loss) == pytest.approx(float(triplet_loss), abs=1e-5)


def test_crops_cut_frames_and_masks_alike(tmp_path):
    base = np.zeros((SIZE + 40, SIZE + 40), np.uint8)
    base[30:120, 50:200] = 255
    base[150:, 100:130] = 255
    write_clip(tmp_path / "still", np.stack([base] * 3), np.stack([base > 0] * 3), {})
    size = SIZE + 40  # frames are resized to size (here: unchanged), then cropped to SIZE
    cs = ClipSet(load_clips(tmp_path), size, AugmentConfig(flip_p=0.5, rotate_p=0.5), crop=SIZE)
    rng = np.random.default_rng(1)
    seen = set()
    for _ in range(4):
        x, m, _, _ = cs.batch([0], rng)
        assert x.shape == (3, 3, SIZE, SIZE) and m.shape == (3, 1, SIZE, SIZE)
        assert ((x[:, 0] > 0) == (m[:, 0] > 0.5)).float().mean() > 0.97
        seen.add(round(float(m.mean()), 4))
    assert len(seen) > 1  # the window moves


def test_a_few_clip_steps_reduce_the_loss(tiny_set):
    torch.manual_seed(0)
    model, bank, _ = load_start(None)
    model.train()
    text = torch.from_numpy(bank.matrix())[None]
    batch = ClipSet(load_clips(tiny_set), SIZE).batch([0, 1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = [clip_step(model, opt, *batch, text) for _ in range(4)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 0.02, losses


def test_clip_training_records_the_recommended_postprocessing(tiny_set, tmp_path):
    from leakseg.model.checkpoint import native_postprocess_defaults

    cfg = TrainConfig(data=str(tiny_set), val=str(tiny_set), out=str(tmp_path / "run"), size=SIZE + 16, crop=SIZE,
                      sampler="clip", batch_size=1, max_steps=2, postprocess={"normalization": "absolute"},
                      progress=False)
    result = train(cfg)
    assert result.steps == 2 and result.val[-1]["frames"] == 8
    assert native_postprocess_defaults(tmp_path / "run" / "last") == {"normalization": "absolute"}
    raw = json.loads((tmp_path / "run" / "last" / "config.json").read_text())
    assert raw["training"]["sampler"] == "clip" and raw["training"]["crop"] == SIZE
    # fine-tuning from it keeps the recommendation unless told otherwise
    again = TrainConfig(data=str(tiny_set), out=str(tmp_path / "ft"), init=str(tmp_path / "run" / "last"),
                        size=SIZE, sampler="clip", max_steps=1, postprocess={"threshold": 0.6}, progress=False)
    train(again)
    assert native_postprocess_defaults(tmp_path / "ft" / "last") == {"normalization": "absolute", "threshold": 0.6}


@pytest.mark.parametrize("bad, words", [
    ({"crop": SIZE - 8}, "--crop"), ({"crop": 400}, "larger than --size"), ({"sampler": "frames"}, "sampler"),
    ({"postprocess": {"normalization": "log"}}, "normalization"),
])
def test_bad_training_settings_are_refused(tiny_set, tmp_path, bad, words):
    cfg = TrainConfig(data=str(tiny_set), out=str(tmp_path / "run"), size=SIZE + 8, progress=False, **bad)
    with pytest.raises(ValueError, match=words):
        train(cfg)


def test_windows_are_short_clips_with_a_target(tmp_path):
    write_dataset(tmp_path, 2, seed=4, frames=8, height=40, width=40, leak_free_fraction=0, partial_fraction=0,
                  progress=False)
    clips = load_clips(tmp_path, few_shot=1)  # one labelled frame per clip: every window must contain it
    cs = ClipSet(clips, SIZE, window=3)
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, m, targets, nb = cs.batch([0, 1], rng)
        assert x.shape[0] == 6 and m.shape[0] == len(targets) == 2
        rule = np.asarray(triplet_neighbours(3))
        assert np.array_equal(nb.numpy(), np.concatenate([rule, rule + 3]))
        assert targets[0] < 3 <= targets[1] < 6
    with pytest.raises(ValueError, match="at least 3"):
        ClipSet(clips, SIZE, window=2)


def test_resume_continues_exactly_where_the_run_stopped(tiny_set, tmp_path):
    """2 steps, stop, resume to 4: the same losses, step count, epochs and lr drop as 4 steps in one go
    (so the weights, Adam moments, batch order inside and across epochs, RNGs and schedule were restored)."""
    from leakseg.training.loop import STATE_FILE

    # 8 triplets in batches of 3: 3 steps an epoch, so the split falls inside epoch 1 and the run crosses
    # into epoch 2; the lr drops at 75 % of 4 steps (step 3), after the first session's end
    common = dict(data=str(tiny_set), size=SIZE, batch_size=3, lr=1e-3, lr_drop_at=0.75, progress=False)
    whole = train(TrainConfig(out=str(tmp_path / "whole"), max_steps=4, **common))
    first = train(TrainConfig(out=str(tmp_path / "split"), max_steps=2, **common))
    state = torch.load(tmp_path / "split" / "last" / STATE_FILE, weights_only=False)
    assert state["steps"] == 2 and state["next"] == 6 and state["epoch"] == 0 and not state["dropped"]
    assert len(state["optimizer"]["state"]) > 0
    rest = train(TrainConfig(out=str(tmp_path / "split"), max_steps=4, resume=str(tmp_path / "split"), **common))
    assert first.steps == 2 and rest.steps == whole.steps == 4
    assert len(rest.losses) == 4 and rest.losses[:2] == first.losses
    np.testing.assert_allclose(rest.losses, whole.losses, rtol=1e-5, atol=1e-6)
    assert rest.epochs == pytest.approx(whole.epochs)
    np.testing.assert_allclose(rest.epoch_losses, whole.epoch_losses, rtol=1e-5)
    end = torch.load(tmp_path / "split" / "last" / STATE_FILE, weights_only=False)
    assert end["dropped"] and end["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-4)


def test_resume_refuses_a_different_run_or_a_folder_without_state(tiny_set, tmp_path):
    common = dict(data=str(tiny_set), batch_size=2, progress=False)
    train(TrainConfig(out=str(tmp_path / "a"), size=SIZE, max_steps=1, **common))
    with pytest.raises(ValueError, match="size"):
        train(TrainConfig(out=str(tmp_path / "b"), size=SIZE + 8, max_steps=2, resume=str(tmp_path / "a"), **common))
    with pytest.raises(FileNotFoundError, match="train_state.pt"):
        train(TrainConfig(out=str(tmp_path / "c"), size=SIZE, max_steps=2, resume=str(tmp_path), **common))


# -- each family trains as published (docs/MODELS.md, "Training") ----------------------------------

#: Each family's published loss: how many structure-loss terms (fused logits, then the decoder maps of both
#: neighbours) and whether their BCE is pixel-weighted.
PUBLISHED_LOSS = {"jvlgs": (1, True), "fgstp": (9, False)}


def test_training_step_uses_the_published_loss(family):
    from leakseg.training.loop import train_step
    from leakseg.training.loss import published_loss, structure_loss

    torch.manual_seed(0)
    model = small_model(family=family).train()
    triplets = torch.randn(2, 3, 3, 256, 256)
    masks = (torch.rand(2, 1, 256, 256) > 0.7).float()
    text = torch.randn(1, model.config.text_dim, model.config.prompt_count) if "text" in model.input_names else None
    logits, maps1, maps2 = model.forward_triplet(triplets, *([] if text is None else [text.expand(2, -1, -1)]))
    loss = published_loss(family, logits, maps1, maps2, masks)
    count, weighted = PUBLISHED_LOSS[family]
    terms = [structure_loss(m, masks, weighted_bce=weighted) for m in [logits, *maps1, *maps2]][:count]
    assert len(terms) == count and torch.allclose(loss, sum(terms))
    before = [p.detach().clone() for p in model.fusion_conv.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    assert train_step(model, optimizer, triplets, masks, text) > 0
    assert any(not torch.equal(b, p) for b, p in zip(before, model.fusion_conv.parameters()))


def test_fgstp_code_computes_the_plain_mean_bce():
    """The research code's BCE term: reduce='none' is PyTorch's legacy spelling that means "mean"."""
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 1, 32, 32), (torch.rand(2, 1, 32, 32) > 0.7).float()
    with pytest.warns(UserWarning):
        legacy = F.binary_cross_entropy_with_logits(logits, masks, reduce="none")
    assert torch.allclose(legacy, F.binary_cross_entropy_with_logits(logits, masks))


def test_train_command_trains_and_fine_tunes_fgstp(family_checkpoint, tmp_path):
    """`leakseg train --arch fgstp` from scratch, then `--init` an authors' checkpoint with the clip sampler:
    native FGSTP checkpoints with no prompt bank, recommending FGSTP's post-processing; --arch must fit --init."""
    from leakseg.cli import main
    from leakseg.model.checkpoint import import_authors_checkpoint, load_native, native_postprocess_defaults
    from leakseg.synth import write_dataset

    checkpoint = family_checkpoint("fgstp")
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
