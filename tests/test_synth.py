"""The synthetic clip generator, the SCENE/images + SCENE/masks reader and the `leakseg synth` command."""

import argparse
import filecmp
import json

import numpy as np
import pytest
from PIL import Image

from leakseg.commands import synth as synth_command
from leakseg.training.dataset import list_scenes, load_scene, read_mask, scene_frames
from leakseg.training.synth import (VISIBILITY_THRESHOLD, blur, clip_plan, generate_clip, simulate_clip,
                                write_clip, write_dataset)

SMALL = dict(frames=10, height=96, width=128)


def _files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_same_arrays_different_seed_different():
    f1, m1, meta1 = generate_clip(5, **SMALL)
    f2, m2, meta2 = generate_clip(5, **SMALL)
    f3, _, _ = generate_clip(6, **SMALL)
    assert f1.shape == (10, 96, 128) and f1.dtype == np.uint8 and m1.dtype == bool
    assert np.array_equal(f1, f2) and np.array_equal(m1, m2) and meta1 == meta2
    assert not np.array_equal(f1, f3)


def test_write_dataset_is_byte_identical_for_a_seed(tmp_path):
    a = write_dataset(tmp_path / "a", 3, seed=11, progress=False, frames=4, height=64, width=64)
    b = write_dataset(tmp_path / "b", 3, seed=11, progress=False, frames=4, height=64, width=64)
    c = write_dataset(tmp_path / "c", 3, seed=12, progress=False, frames=4, height=64, width=64)
    names = _files(tmp_path / "a")
    assert len(a) == len(b) == 3 and names == _files(tmp_path / "b")
    assert len(names) == 3 * (4 + 4 + 1)
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", [str(n) for n in names], shallow=False)
    assert mismatch == [] and errors == []
    _, mismatch_c, _ = filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", [str(n) for n in names], shallow=False)
    assert any(n.startswith("synth_00000/images/") for n in mismatch_c)
    assert [p.name for p in c] == ["synth_00000", "synth_00001", "synth_00002"]


@pytest.mark.parametrize("leak", ["full", "start", "stop"])
def test_mask_is_density_above_the_threshold(leak):
    clip = simulate_clip(3, leak=leak, **SMALL)
    thr = clip.meta["visibility_threshold"]
    assert thr == VISIBILITY_THRESHOLD
    assert np.array_equal(clip.masks, clip.density > thr)
    assert clip.masks.any() and not clip.masks.all()


def test_a_higher_threshold_labels_a_subset_of_the_same_gas():
    low = simulate_clip(3, visibility_threshold=0.1, **SMALL)
    high = simulate_clip(3, visibility_threshold=0.3, **SMALL)
    assert high.meta["visibility_threshold"] == 0.3
    assert np.array_equal(high.masks, high.density > 0.3)
    # The density is scaled relative to the threshold, so compare shapes through the ratio.
    assert np.allclose(high.density / 0.3, low.density / 0.1, rtol=1e-4, atol=1e-6)


def test_leak_free_clip_has_empty_masks_and_shares_the_scene():
    none = simulate_clip(8, leak="none", **SMALL)
    full = simulate_clip(8, leak=True, **SMALL)
    assert not none.masks.any() and not none.density.any()
    assert none.meta["leak_frames"] == [] and none.meta["emission"] is None
    assert full.meta["leak"] == "full" and full.masks.any()
    # Same seed: the same scene, camera and noise; only the gas differs.
    assert np.array_equal(none.background, full.background)
    outside = ~blur(full.masks.astype(np.float32), 2.0).astype(bool)
    diff = np.abs(none.frames.astype(int) - full.frames.astype(int))
    assert diff[full.masks].mean() > 5 * max(diff[outside].mean(), 0.1)


def test_leak_that_starts_mid_clip():
    clip = simulate_clip(2, leak="start", **SMALL)
    first = clip.meta["emission"]["first_frame"]
    gas = clip.masks.any(axis=(1, 2))
    assert 0 < first < SMALL["frames"]
    assert not gas[:first].any() and not clip.density[:first].any()
    assert np.flatnonzero(gas).tolist() == clip.meta["leak_frames"]
    assert gas[first:].all()


def test_leak_that_stops_mid_clip_ends_leak_free():
    clip = simulate_clip(3, leak="stop", frames=16, height=96, width=128)
    stop = clip.meta["emission"]["stop_frame"]
    gas = clip.masks.any(axis=(1, 2))
    leak_frames = clip.meta["leak_frames"]
    assert np.flatnonzero(gas).tolist() == leak_frames
    assert gas[:stop].all()
    assert not gas[-1] and leak_frames == list(range(len(leak_frames)))  # the cloud clears and stays clear


def test_16_bit_output():
    clip = simulate_clip(4, bit_depth=16, **SMALL)
    assert clip.frames.dtype == np.uint16
    assert len(np.unique(clip.frames)) > 256
    assert clip.frames.max() > 255


def test_plume_is_visible_where_the_mask_says():
    for seed in range(4):
        clip = simulate_clip(seed, **SMALL)
        diff = np.abs(clip.frames.astype(np.float32) - clip.background)
        inside, outside = diff[clip.masks].mean(), diff[~clip.masks].mean()
        noise = clip.meta["camera"]["noise_sigma"] * abs(clip.meta["camera"]["gain"])
        assert inside > 3 * outside, (seed, inside, outside)
        assert inside > 2 * noise, (seed, inside, noise)


def test_gas_at_the_mask_edge_stands_out_of_the_noise():
    """The label marks visible gas: even its outermost pixels differ from the gas-free scene by several
    noise sigmas (the datasets this imitates are labelled by eye)."""
    for seed in range(4):
        clip = simulate_clip(seed, **SMALL)
        m = clip.masks
        interior = np.zeros_like(m)
        interior[:, 1:-1, 1:-1] = m[:, :-2, 1:-1] & m[:, 2:, 1:-1] & m[:, 1:-1, :-2] & m[:, 1:-1, 2:]
        edge = m & ~interior
        diff = np.abs(clip.frames.astype(np.float32) - clip.background)
        noise = clip.meta["camera"]["noise_sigma"] * abs(clip.meta["camera"]["gain"])
        assert 4.0 <= clip.meta["camera"]["edge_snr"] <= 8.0
        assert edge.sum() > 100 and diff[edge].mean() > 4 * noise, (seed, diff[edge].mean() / noise)
        assert diff[~m].mean() < 1.5 * noise  # outside: noise, fixed pattern and jitter only


def test_written_layout_round_trips(tmp_path):
    scenes = write_dataset(tmp_path, 4, seed=3, frames=5, height=64, width=80, leak_free_fraction=0.25,
                           partial_fraction=0.5, bit_depth=16, progress=False)
    assert list_scenes(tmp_path) == scenes
    plan = clip_plan(4, 3, 0.25, 0.5)
    assert sorted(mode for _, mode in plan) == ["full", "none", "start", "stop"]
    for scene, (clip_seed, mode) in zip(scenes, plan):
        frames, masks, meta = generate_clip(clip_seed, frames=5, height=64, width=80, leak=mode, bit_depth=16)
        read_frames, read_masks = load_scene(scene)
        assert read_frames.dtype == np.uint16 and np.array_equal(read_frames, frames)
        assert np.array_equal(read_masks, masks)
        raw_mask = np.asarray(Image.open(scene / "masks" / "00000.png"))
        assert raw_mask.dtype == np.uint8 and set(np.unique(raw_mask)) <= {0, 255}
        written = json.loads((scene / "meta.json").read_text())
        assert written["seed"] == clip_seed and written["leak"] == mode
        assert written["leak_frames"] == meta["leak_frames"]


def test_reader_handles_other_formats(tmp_path):
    scene = tmp_path / "video_7"
    (scene / "images").mkdir(parents=True)
    (scene / "masks").mkdir()
    grey = (np.arange(12 * 16).reshape(12, 16) % 256).astype(np.uint8)
    for i in (1, 2, 10):  # natural order: 1, 2, 10 (not 1, 10, 2)
        Image.fromarray(np.stack([grey + i] * 3, -1)).save(scene / "images" / f"{i}.bmp")
        mask = np.zeros((12, 16), np.uint8)
        mask[i % 12, :] = 1  # a 0/1 mask
        Image.fromarray(mask).save(scene / "masks" / f"{i}.png")
    frames, masks = load_scene(scene)
    # RGB files stay RGB, as the service decodes them (the model sees the same pixels either way)
    assert frames.dtype == np.uint8 and frames.shape == (3, 12, 16, 3)
    assert [int(f[0, 0, 0]) for f in frames] == [1, 2, 10]
    assert masks.sum(axis=(1, 2)).tolist() == [16, 16, 16] and masks[2, 10].all()
    # A JPEG 0/255 mask with ringing is still a clean mask.
    jpg_mask = np.zeros((32, 32), np.uint8)
    jpg_mask[8:24, 8:24] = 255
    Image.fromarray(jpg_mask).save(tmp_path / "m.jpg", quality=70)
    assert np.array_equal(read_mask(tmp_path / "m.jpg"), jpg_mask > 0)
    (scene / "masks" / "10.png").unlink()
    assert scene_frames(scene)[2][1] is None
    with pytest.raises(FileNotFoundError):
        load_scene(scene)
    (scene / "masks" / "1.png").unlink()
    (scene / "masks" / "2.png").unlink()
    (scene / "masks").rmdir()
    assert load_scene(scene)[1] is None


def test_invalid_arguments():
    with pytest.raises(ValueError):
        generate_clip(0, leak="sometimes", **SMALL)
    with pytest.raises(ValueError):
        generate_clip(0, bit_depth=12, **SMALL)
    with pytest.raises(ValueError):
        clip_plan(4, 0, leak_free_fraction=0.7, partial_fraction=0.5)


def test_write_clip_writes_0_255_masks(tmp_path):
    frames = np.full((2, 8, 8), 7, np.uint8)
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:4, 2:4] = True
    write_clip(tmp_path / "s", frames, masks, {"seed": 1})
    assert np.unique(np.asarray(Image.open(tmp_path / "s" / "masks" / "00001.png"))).tolist() == [0, 255]
    assert not np.asarray(Image.open(tmp_path / "s" / "masks" / "00000.png")).any()


def test_command(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth_command.add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "out"), "--clips", "2", "--frames", "3", "--size", "48", "64",
                              "--seed", "9", "--leak-free-fraction", "0.5", "--partial-fraction", "0",
                              "--bit-depth", "16", "--no-progress"])
    assert synth_command.run(args) == 0
    scenes = list_scenes(tmp_path / "out")
    assert len(scenes) == 2
    metas = [json.loads((s / "meta.json").read_text()) for s in scenes]
    assert sorted(m["leak"] for m in metas) == ["full", "none"]
    frames, masks = load_scene(scenes[0])
    assert frames.shape == (3, 48, 64) and frames.dtype == np.uint16
    assert "wrote 2 clips" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        parser.parse_args(["x", "--leak-free-fraction", "1.5"])
