"""The bundled default model (model_store/jvlgs-default): exported as `make demo` exports it, it segments clips
it has never seen, and the README's first command serves it from a fresh clone."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from leakseg.synth import clip_plan, generate_clip

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "model_store" / "jvlgs-default"
#: docs/DEFAULT_MODEL.md: the training set is `leakseg synth --clips 160 --seed 0`.
TRAINING_SEEDS = {s for s, _ in clip_plan(160, 0)}
#: A fresh clip: a seed never used in training, at a size and length the model was not trained on.
FRESH_SEED = 20261122
CLIP = dict(frames=8, height=240, width=320)


@pytest.fixture(scope="module")
def default_predictor(default_archive):
    """The archive `make demo` builds (tests/conftest.py: default_archive), in process."""
    from leakseg.inference.predictor import Predictor

    return Predictor.from_archive(default_archive, device="cpu")


def test_the_default_model_defaults_to_its_calibrated_operating_point(default_predictor):
    """The checkpoint's post-processing is the operating point `leakseg evaluate --sweep --budget 0.05` chose on
    its calibration clips (docs/DEFAULT_MODEL.md), and export made it the archive's default."""
    config = json.loads((DEFAULT_MODEL / "config.json").read_text())
    assert config["calibration"]["false_alarm_rate"] <= 0.05
    defaults = default_predictor.describe().defaults
    chosen = config["postprocess"]
    assert (defaults.normalization, defaults.threshold, defaults.opening_kernel) == \
        (chosen["normalization"], chosen["threshold"], chosen["opening_kernel"]) == ("minmax", 0.999, 9)


def test_the_default_model_segments_a_fresh_clip(default_predictor):
    """A clip of a seed never used in training, at a size it was not trained at: one mask per frame, of the
    frame's size. (Its quality is measured by `leakseg evaluate`, see docs/DEFAULT_MODEL.md.)"""
    assert FRESH_SEED not in TRAINING_SEEDS
    frames, truth, _ = generate_clip(FRESH_SEED, leak="full", **CLIP)
    result = default_predictor.predict(list(frames))
    assert result.masks().shape == truth.shape and len(result.frames) == CLIP["frames"]


def _port_busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.serve
def test_the_readme_first_command_works_from_a_fresh_clone(tmp_path):
    """`make demo` in a fresh clone of this repository's last commit: export the bundled checkpoint, serve it,
    segment the sample clip over HTTP, write the overlay, stop. The clone reuses this test run's environment
    (`make -o` keeps make from reinstalling it), so a working tree's uncommitted code is what runs."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    busy = [p for p in (8080, 8081, 8082) if _port_busy(p)]
    if busy:
        pytest.skip(f"ports {busy} in use: the demo serves on config.properties' fixed ports")
    assert "make demo" in (REPO / "README.md").read_text()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    venv = Path(sys.prefix)
    run = subprocess.run(["make", "demo", f"VENV={venv}", "-o", f"{venv}/.installed"], cwd=clone,
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    from leakseg.training.dataset import load_scene
    from leakseg.schema import ClipResult

    demo = clone / ".leakseg" / "demo"
    result = ClipResult.model_validate(json.loads((demo / "result.json").read_text()))
    frames, _ = load_scene(next((demo / "clips").iterdir()))
    assert result.masks().shape == frames.shape and result.clip.frames == len(frames)
    # the calm sample clip at the README's options: the plume is marked (measured: in 8 of 8 frames)
    assert len(result.clip.leak_frames) >= 6, result.clip.leak_frames
    assert (demo / "overlay.gif").stat().st_size > 0
    assert not _port_busy(8080), "the demo left TorchServe running"


# --- issue 12: quality on fresh generator-v3 clips -------------------------------------------------

#: Fresh version-3 clips: dataset seed 303, chosen (runs/SEEDS.txt, docs/DEFAULT_MODEL.md) before the v3
#: training run, whose training, validation and held-out sets used dataset seeds 300, 301 and 302.
QUALITY_PLAN = clip_plan(12, 303, 1 / 3, 1 / 3)  # 4 leak-free, 4 start/stop, 4 steady leaks
QUALITY_CLIP = dict(frames=12, height=240, width=320, version=3)
#: What the shipped archive reaches on these 12 clips at its own (calibrated) defaults, measured 2026-11-23,
#: 02:30 UTC: leak-clip IoUs 0.035, 0.002, 0.000, 0.000, 0.065, 0.027, 0.000, 0.000 (gas overlapped in 4 of 8
#: clips, IoU > 0.5 in none), and 3 of 4 leak-free clips left empty (the fourth: 2 of 12 frames marked).
#: "Finds most leaks" is not reached (docs/DEFAULT_MODEL.md), so it stays a strict xfail: it turns into a
#: failure (XPASS) the day a shipped model reaches it. The other assertions are the levels it really reaches.
LEAK_CLIPS_OVERLAPPED = 3


@pytest.fixture(scope="module")
def v3_quality(default_predictor):
    """(IoU over the frames with gas, per leak clip), (all masks empty?, per leak-free clip)."""
    seen = {s for n, seed in ((120, 300), (24, 301), (60, 302)) for s, _ in clip_plan(n, seed, 1 / 3, 1 / 3)}
    assert not {s for s, _ in QUALITY_PLAN} & (seen | TRAINING_SEEDS)
    ious, quiet = [], []
    for seed, mode in QUALITY_PLAN:
        frames, truth, _ = generate_clip(seed, leak=mode, **QUALITY_CLIP)
        pred = default_predictor.predict(list(frames)).masks()
        gas = truth.any(axis=(1, 2))
        if gas.any():
            ious.append(float((pred[gas] & truth[gas]).sum() / max((pred[gas] | truth[gas]).sum(), 1)))
        else:
            quiet.append(not pred.any())
    return ious, quiet


def test_the_default_model_overlaps_the_gas_in_some_fresh_v3_leak_clips(v3_quality):
    """At its quiet operating point it still marks gas in some leak clips (measured: 4 of 8)."""
    ious, _ = v3_quality
    assert len(ious) == 8
    assert sum(iou > 0 for iou in ious) >= LEAK_CLIPS_OVERLAPPED, ious


@pytest.mark.xfail(strict=True, reason="issue 12 target not reached: IoU > 0.5 on 0 of 8 fresh v3 leak clips")
def test_the_default_model_finds_most_leaks_on_fresh_v3_clips(v3_quality):
    ious, _ = v3_quality
    assert sum(iou > 0.5 for iou in ious) > len(ious) / 2, ious


def test_the_default_model_stays_quiet_on_most_fresh_leak_free_v3_clips(v3_quality):
    """Measured: 3 of 4 leak-free clips with empty masks in every frame."""
    _, quiet = v3_quality
    assert len(quiet) == 4
    assert sum(quiet) > len(quiet) / 2, quiet
