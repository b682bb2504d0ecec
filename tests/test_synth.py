"""The synthetic clip generator, the SCENE/images + SCENE/masks reader and the `leakseg synth` command."""

import argparse
import filecmp
import json

import numpy as np
import pytest
from PIL import Image

from leakseg.commands import synth as synth_command
from leakseg.training.dataset import list_scenes, load_scene, read_mask, scene_frames
from leakseg.synth import (VISIBILITY_THRESHOLD, blur, clip_plan, generate_clip, simulate_clip, write_clip,
                           write_dataset)

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


@pytest.mark.parametrize("version", [2, 3])
def test_a_burst_leaks_stops_and_clears_within_the_clip(version):
    """Leak mode "burst" (the monitor's tests and demo): no gas, then gas, then none again, for good."""
    clip = simulate_clip(5, leak="burst", frames=40, height=96, width=128, version=version)
    first, stop = clip.meta["emission"]["first_frame"], clip.meta["emission"]["stop_frame"]
    assert 0 < first < stop < 40
    gas = clip.masks.any(axis=(1, 2))
    runs = np.flatnonzero(gas)
    assert not gas[:first].any() and not clip.density[:first].any()
    assert runs[0] >= first and runs.tolist() == list(range(runs[0], runs[-1] + 1))  # one unbroken stretch
    assert runs[-1] < 39 and not clip.density[runs[-1] + 2:].max() > VISIBILITY_THRESHOLD
    # the scene, camera and noise are the leak-free clip's
    none = simulate_clip(5, leak="none", frames=40, height=96, width=128, version=version)
    assert np.array_equal(none.background, clip.background)
    assert np.array_equal(none.frames[:first], clip.frames[:first])


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


# --- generator version 3 ---------------------------------------------------------------------------

from support.synth_golden import GOLDEN_CLIPS, GOLDEN_SIZE, fingerprint, golden, mismatches  # noqa: E402

from leakseg.synth import CALM_EFFECTS, DEFAULT_FRACTIONS, V3_EFFECTS, ClipSpec  # noqa: E402

V3 = dict(SMALL, version=3)


@pytest.mark.parametrize("name", GOLDEN_CLIPS)
def test_clips_match_their_golden_fingerprints(name):
    """The generator renders what it rendered when the fingerprints were recorded (the version-2 ones:
    before version 3 existed), to within what another numpy build may change (support/synth_golden.py)."""
    clip = simulate_clip(**GOLDEN_CLIPS[name], **GOLDEN_SIZE)
    assert mismatches(golden()[name], fingerprint(clip)) == []


@pytest.mark.parametrize("seed, leak", [(1, "full"), (2, "none"), (3, "start"), (4, "stop"), (5, "burst")])
def test_version_2_is_unchanged_by_version_3(seed, leak):
    """Version 3 is a pass over the version-2 recipe that draws only from its own streams: with every
    effect off it renders version 2's clip byte for byte, on any numpy build."""
    v2 = simulate_clip(seed, leak=leak, version=2, **GOLDEN_SIZE)
    calm = simulate_clip(seed, leak=leak, version=3, effects=CALM_EFFECTS, **GOLDEN_SIZE)
    for layer in ("frames", "masks", "density", "background"):
        assert np.array_equal(getattr(v2, layer), getattr(calm, layer)), layer
    assert v2.meta["version"] == 2 and "distractors" not in v2.meta
    assert {k: v for k, v in calm.meta.items() if k not in ("version", "distractors", "plume_polarity")} == \
        {k: v for k, v in v2.meta.items() if k != "version"}
    default = simulate_clip(seed, leak=leak, **GOLDEN_SIZE)  # the library default is version 2
    assert np.array_equal(default.frames, v2.frames) and default.meta == v2.meta


def test_a_clip_spec_holds_the_settings():
    spec = ClipSpec(frames=4, height=48, width=64, version=3, effects={"birds": 0})
    a = simulate_clip(7, spec)
    b = simulate_clip(7, frames=4, height=48, width=64, version=3, effects={"birds": 0})
    assert np.array_equal(a.frames, b.frames) and a.meta == b.meta
    frames, masks, meta = generate_clip(7, spec, leak="none")  # settings given beside a spec override it
    assert meta["leak"] == "none" and not masks.any() and frames.shape == (4, 48, 64)
    assert ClipSpec(leak=True).leak == "full" and ClipSpec(leak=False).leak == "none"


def test_version_3_is_deterministic_and_differs_from_version_2():
    a, b = simulate_clip(5, **V3), simulate_clip(5, **V3)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.masks, b.masks) and a.meta == b.meta
    assert a.meta["version"] == 3 and set(a.meta["distractors"]["strengths"]) == set(V3_EFFECTS)
    assert not np.array_equal(a.frames, simulate_clip(5, **SMALL).frames)
    assert not np.array_equal(a.frames, simulate_clip(6, **V3).frames)


def _active(name, meta):
    d = meta["distractors"]
    return {"structures": d["structures"] > 0, "shimmer": d["exhaust_outlets"] > 0, "birds": d["birds"] > 0,
            "insects": d["insects"] > 0, "reflections": d["reflections"] > 0, "shake": not d["still"],
            "distance": d["distance_scale"] != 1.0, "thin_faint": d["thin"] or d["faint"],
            "clouds": d["clouds"]["amplitude"] > 0 and d["sky_fraction"] > 0.05}.get(name, True)


#: effects that change only the scene or the sensor: the gas and so the labels stay exactly as they were
SCENE_ONLY = {"structures", "shimmer", "clouds", "birds", "insects", "reflections", "fixed_pattern", "drift"}


@pytest.mark.parametrize("name", V3_EFFECTS)
def test_each_v3_effect_is_present_and_can_be_switched_off(name):
    for seed in range(12):
        on = simulate_clip(seed, **V3)
        if _active(name, on.meta):
            break
    else:
        pytest.fail(f"no seed in 0-11 has {name}")
    off = simulate_clip(seed, effects={name: 0}, **V3)
    assert off.meta["distractors"]["strengths"][name] == 0 and on.meta["distractors"]["strengths"][name] == 1
    if name in SCENE_ONLY:
        assert not np.array_equal(on.background, off.background), name
        assert np.array_equal(on.masks, off.masks) and np.array_equal(on.density, off.density)
    else:  # shake moves the view (and the labels with it); distance and thin_faint change the plume
        assert not np.array_equal(on.density, off.density), name
    # every other effect drew exactly what it drew before: same counts in the metadata
    keep = {k: v for k, v in on.meta["distractors"].items() if k != "strengths"}
    keep_off = {k: v for k, v in off.meta["distractors"].items() if k != "strengths"}
    changed = {k for k in keep if keep[k] != keep_off[k]}
    assert changed <= {"still", "distance_scale", "thin", "faint", "clouds", "gain_drift", "structures",
                       "exhaust_outlets", "birds", "insects", "reflections", "sky_fraction"} and len(changed) <= 2, changed


def test_v3_distractors_are_strong_and_move():
    """All distractors on versus all off, same seeds: the scene without gas changes a lot, over time too."""
    gain_moves = []
    for seed in range(4):
        full = simulate_clip(seed, leak="none", **V3)
        calm = simulate_clip(seed, leak="none", effects={k: 0 for k in V3_EFFECTS}, **V3)
        noise = full.meta["camera"]["noise_sigma"] * abs(full.meta["camera"]["gain"])
        temporal_full = np.abs(np.diff(full.background, axis=0)).mean()
        temporal_calm = np.abs(np.diff(calm.background, axis=0)).mean()
        gain_moves.append(temporal_full > temporal_calm)
        assert not full.masks.any() and not calm.masks.any()
        assert np.abs(full.background - calm.background).mean() > 2 * noise, seed
    assert sum(gain_moves) >= 3


def test_v3_labels_mark_only_visible_gas():
    for seed in range(6):
        clip = simulate_clip(seed, **V3)
        thr = clip.meta["visibility_threshold"]
        assert np.array_equal(clip.masks, clip.density > thr)
        cam = clip.meta["camera"]
        assert 4.0 <= cam["edge_snr"] <= 8.0  # v2's visibility rule: gas at the threshold is >= 4 sigma
        if clip.meta["distractors"]["faint"]:
            assert cam["edge_snr"] <= 5.0 and clip.meta["plume"]["strength"] <= 5.0
        if clip.masks.sum() < 50:
            continue
        diff = np.abs(clip.frames.astype(np.float32) - clip.background)
        noise = cam["noise_sigma"] * abs(cam["gain"])
        assert diff[clip.masks].mean() > 2 * max(noise, 0.5), seed  # at least half a grey level of quantisation
        assert diff[clip.masks].mean() > 2 * diff[~clip.masks].mean(), seed


def test_v3_leak_free_clips_are_empty_and_leaks_can_start_mid_clip():
    for seed in range(4):
        none = simulate_clip(seed, leak="none", **V3)
        assert not none.masks.any() and not none.density.any() and none.meta["leak_frames"] == []
        start = simulate_clip(seed, leak="start", **V3)
        first = start.meta["emission"]["first_frame"]
        gas = start.masks.any(axis=(1, 2))
        assert 0 < first and not gas[:first].any()
        assert np.array_equal(none.background, start.background)  # the gas-free twin


def test_v3_plumes_are_brighter_or_darker_than_the_background():
    seen = set()
    for seed in range(16):
        clip = simulate_clip(seed, **V3)
        if clip.masks.sum() < 30:
            continue
        signed = (clip.frames.astype(np.float32) - clip.background)[clip.masks].mean()
        polarity = clip.meta["plume_polarity"]
        assert (signed > 0) == (polarity == "brighter"), (seed, signed, polarity)
        seen.add(polarity)
        if seen == {"brighter", "darker"}:
            break
    assert seen == {"brighter", "darker"}


def test_v3_far_near_thin_and_faint_plumes_occur():
    kinds = set()
    for seed in range(30):
        d = simulate_clip(seed, frames=2, height=64, width=64, version=3).meta["distractors"]
        kinds |= {"far" if d["distance_scale"] < 1 else "near" if d["distance_scale"] > 1 else "mid"}
        kinds |= {k for k in ("thin", "faint") if d[k]}
    assert kinds == {"far", "near", "mid", "thin", "faint"}


def test_v3_dataset_has_a_third_hard_negatives(tmp_path):
    scenes = write_dataset(tmp_path, 6, seed=2, frames=3, height=48, width=64, progress=False, version=3)
    metas = [json.loads((s / "meta.json").read_text()) for s in scenes]
    assert DEFAULT_FRACTIONS[3] == (1 / 3, 1 / 3)
    assert sum(m["leak"] == "none" for m in metas) == 2 and all(m["version"] == 3 for m in metas)
    for s, m in zip(scenes, metas):
        _, masks = load_scene(s)
        assert masks.any() == bool(m["leak_frames"])
        if m["leak"] == "none":
            assert not masks.any()


def test_v3_bad_arguments():
    with pytest.raises(ValueError, match="unknown"):
        simulate_clip(0, effects={"fog": 1}, **V3)
    with pytest.raises(ValueError, match=">= 0"):
        simulate_clip(0, effects={"birds": -1}, **V3)
    with pytest.raises(ValueError, match="version 3"):
        simulate_clip(0, effects={"birds": 0}, **SMALL)
    with pytest.raises(ValueError, match="version"):
        simulate_clip(0, frames=2, height=32, width=32, version=4)


def test_command_versions_and_effects(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    synth_command.add_arguments(parser)
    base = ["--clips", "3", "--frames", "3", "--size", "48", "64", "--seed", "4", "--no-progress"]
    assert synth_command.run(parser.parse_args([str(tmp_path / "v3"), *base])) == 0
    assert synth_command.run(parser.parse_args([str(tmp_path / "v2"), "--version", "2", *base])) == 0
    assert synth_command.run(parser.parse_args([str(tmp_path / "calm"), "--effect", "insects=0", *base])) == 0
    assert "generator version 3" in capsys.readouterr().out
    v3 = [json.loads((s / "meta.json").read_text()) for s in list_scenes(tmp_path / "v3")]
    v2 = [json.loads((s / "meta.json").read_text()) for s in list_scenes(tmp_path / "v2")]
    calm = [json.loads((s / "meta.json").read_text()) for s in list_scenes(tmp_path / "calm")]
    assert {m["version"] for m in v3} == {3} and {m["version"] for m in v2} == {2}
    assert sum(m["leak"] == "none" for m in v3) == 1  # a third of 3
    assert all(m["distractors"]["strengths"]["insects"] == 0 for m in calm)
    for bad in (["--effect", "fog=1"], ["--effect", "birds"], ["--effect", "birds=-1"], ["--version", "1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["x", *bad])
    with pytest.raises(SystemExit):
        synth_command.run(parser.parse_args([str(tmp_path / "bad"), "--version", "2", "--effect", "birds=0"]))
    with pytest.raises(SystemExit):
        synth_command.run(parser.parse_args([str(tmp_path / "bad"), "--version", "2", "--calm"]))


def test_command_calm_turns_every_distractor_off_unless_an_effect_turns_one_back_on(tmp_path):
    parser = argparse.ArgumentParser()
    synth_command.add_arguments(parser)
    base = ["--clips", "2", "--frames", "3", "--size", "48", "64", "--seed", "4", "--no-progress"]
    assert synth_command.run(parser.parse_args([str(tmp_path / "calm"), "--calm", *base])) == 0
    assert synth_command.run(parser.parse_args([str(tmp_path / "birds"), "--calm", "--effect", "birds=1", *base])) == 0
    for folder, birds in (("calm", 0), ("birds", 1)):
        for scene in list_scenes(tmp_path / folder):
            strengths = json.loads((scene / "meta.json").read_text())["distractors"]["strengths"]
            assert strengths == {**{name: 0 for name in V3_EFFECTS}, "birds": birds}
