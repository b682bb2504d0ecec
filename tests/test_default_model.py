"""The bundled default model (model_store/jvlgs-default): exported as `make demo` exports it, it segments clips
it has never seen, and the README's first command serves it from a fresh clone."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from leakseg.training.synth import clip_plan, generate_clip

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "model_store" / "jvlgs-default"
#: docs/DEFAULT_MODEL.md: the training set is `leakseg synth --clips 160 --seed 0`.
TRAINING_SEEDS = {s for s, _ in clip_plan(160, 0)}
#: A fresh clip: a seed never used in training, at a size and length the model was not trained on.
FRESH_SEED = 20261122
CLIP = dict(frames=8, height=240, width=320)


@pytest.fixture(scope="module")
def default_predictor(tmp_path_factory):
    """The archive `make demo` builds, exported exactly as the Makefile does (ONNX, the checkpoint's defaults)."""
    from leakseg.export.exporter import ExportOptions, export_archive
    from leakseg.inference.predictor import Predictor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mar = export_archive(ExportOptions(checkpoint=DEFAULT_MODEL, name="jvlgs",
                                           output_dir=tmp_path_factory.mktemp("default_store")))
    return Predictor.from_archive(mar, device="cpu")


def test_the_default_model_recommends_absolute_thresholds(default_predictor):
    """Min-max normalisation stretches every frame to [0, 1], so only absolute probabilities can leave a
    leak-free frame empty; the checkpoint says so and export made it the archive's default."""
    defaults = default_predictor.describe().defaults
    assert defaults.normalization == "absolute" and defaults.threshold == 0.5 and defaults.opening_kernel == 9


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
    assert (demo / "overlay.gif").stat().st_size > 0
    assert not _port_busy(8080), "the demo left TorchServe running"
