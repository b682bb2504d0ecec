"""Shared fixtures: small real models (PVTv2-b0, a 2-layer text model) written and exported once."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

from support.models import small_model

os.environ.setdefault("LEAKSEG_THREADS", "2")

#: Fixtures shared by every test module: a folder of test frames (support/fake_service.py) and one real
#: TorchServe per session (support/torchserve_fixture.py). tests/ is on sys.path (pytest's rootdir-relative
#: "prepend" import mode puts a conftest's folder there), so the support package imports by its name.
pytest_plugins = ["support.fake_service", "support.torchserve_fixture"]


@pytest.fixture(scope="session")
def authors_checkpoint(tmp_path_factory) -> Path:
    """A b0 checkpoint in the authors' layout (``module.`` prefix, text model included)."""
    import torch
    from support.authors_format import randomise_, to_authors_state_dict

    from leakseg.model.text import build_text_model

    model = small_model()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        text_model = randomise_(build_text_model(model.config.text_model), seed=1)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_authors.pth"
    torch.save(to_authors_state_dict(model, text_model, prefix="module."), path)
    return path


def _export(checkpoint: Path, out: Path, fmt: str, name: str) -> Path:
    from leakseg.export.exporter import ExportOptions, export_archive

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_archive(ExportOptions(
            checkpoint=checkpoint, name=name, format=fmt, output_dir=out, extra_prompts=["gas plume", "vapour cloud"],
        ))


@pytest.fixture(scope="session")
def onnx_archive(authors_checkpoint, tmp_path_factory) -> Path:
    """tiny.mar: the b0 test checkpoint exported to ONNX, with two extra prompts."""
    return _export(authors_checkpoint, tmp_path_factory.mktemp("model_store"), "onnx", "tiny")


@pytest.fixture(scope="session")
def torchscript_archive(authors_checkpoint, tmp_path_factory) -> Path:
    return _export(authors_checkpoint, tmp_path_factory.mktemp("model_store_ts"), "torchscript", "tiny_ts")


@pytest.fixture(scope="session")
def default_archive(tmp_path_factory) -> Path:
    """The bundled default model (model_store/jvlgs-default) exported exactly as `make demo` exports it: ONNX,
    the checkpoint's own post-processing defaults. Exported once per session."""
    from leakseg.export.exporter import ExportOptions, export_archive

    checkpoint = Path(__file__).resolve().parents[1] / "model_store" / "jvlgs-default"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_archive(ExportOptions(checkpoint=checkpoint, name="jvlgs",
                                            output_dir=tmp_path_factory.mktemp("default_store")))


@pytest.fixture(scope="session")
def predictor(onnx_archive):
    """In-process reference results for tiny.mar."""
    from leakseg.inference.predictor import Predictor

    return Predictor.from_archive(onnx_archive, device="cpu")


@pytest.fixture(scope="session")
def served(torchserve_server):
    """The session's TorchServe serving tiny.mar (short name for tests)."""
    return torchserve_server


#: Fixtures that start a real TorchServe: a test that uses one is an end-to-end test.
SERVER_FIXTURES = {"served", "torchserve_server"}


def pytest_collection_modifyitems(config, items):
    """Mark every test that asks for the session's TorchServe ``serve``, so ``-m "not serve"`` runs
    exactly the tests that need no server (tests that start servers of their own are marked by hand)."""
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.serve)
