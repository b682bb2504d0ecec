"""Shared fixtures: small real models (PVTv2-b0, a 2-layer text model) written and exported once."""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

os.environ.setdefault("LEAKSEG_THREADS", "2")

# Property-based fuzzing (tests marked ``fuzz``) runs with a fixed budget in `make test`; `make fuzz`
# (HYPOTHESIS_PROFILE=long) runs the same properties with many more examples.
settings.register_profile("default", max_examples=150, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("long", parent=settings.get_profile("default"), max_examples=5000, derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: Fixtures shared by every test module: a folder of test frames (support/fake_service.py) and one real
#: TorchServe per session (support/torchserve_fixture.py). tests/ is on sys.path (pytest's rootdir-relative
#: "prepend" import mode puts a conftest's folder there), so the support package imports by its name.
pytest_plugins = ["support.fake_service", "support.torchserve_fixture"]


def pytest_generate_tests(metafunc):
    """A test that takes ``family`` runs once per registered model family (``promptless_family``: once per
    family that takes no prompts), so a new family is tested without a new test file."""
    if {"family", "promptless_family"} & set(metafunc.fixturenames):
        from leakseg.model import family_names, get_family

        if "family" in metafunc.fixturenames:
            metafunc.parametrize("family", family_names(), scope="module")
        if "promptless_family" in metafunc.fixturenames:
            promptless = [name for name in family_names() if not get_family(name).takes_prompts]
            metafunc.parametrize("promptless_family", promptless, scope="module")


@pytest.fixture(scope="session")
def family_checkpoint(tmp_path_factory):
    """family name -> a b0 checkpoint of that family in the authors' layout (``module.`` prefix, the text
    model included when it takes prompts), written once."""
    from support.models import write_authors_checkpoint

    @functools.lru_cache(maxsize=None)
    def checkpoint(family: str) -> Path:
        return write_authors_checkpoint(tmp_path_factory.mktemp(f"ckpt_{family}") / "tiny_authors.pth", family)

    return checkpoint


@pytest.fixture(scope="session")
def family_archive(family_checkpoint, tmp_path_factory):
    """(family name, format) -> its test checkpoint exported once: JVLGS's as tiny.mar / tiny_ts.mar with two
    extra prompts, another family's as NAME.mar / NAME_ts.mar."""
    from leakseg.export.exporter import ExportOptions, export_archive
    from leakseg.model import get_family

    @functools.lru_cache(maxsize=None)
    def archive(family: str, fmt: str = "onnx") -> Path:
        name = ("tiny" if family == "jvlgs" else family) + ("_ts" if fmt == "torchscript" else "")
        extra = ["gas plume", "vapour cloud"] if get_family(family).takes_prompts else []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return export_archive(ExportOptions(checkpoint=family_checkpoint(family), name=name, format=fmt,
                                                output_dir=tmp_path_factory.mktemp(f"store_{name}"),
                                                extra_prompts=extra))

    return archive


@pytest.fixture(scope="session")
def authors_checkpoint(family_checkpoint) -> Path:
    """The JVLGS b0 checkpoint in the authors' layout (``module.`` prefix, text model included)."""
    return family_checkpoint("jvlgs")


@pytest.fixture(scope="session")
def onnx_archive(family_archive) -> Path:
    """tiny.mar: the JVLGS b0 test checkpoint exported to ONNX, with two extra prompts."""
    return family_archive("jvlgs", "onnx")


@pytest.fixture(scope="session")
def torchscript_archive(family_archive) -> Path:
    return family_archive("jvlgs", "torchscript")


@pytest.fixture(scope="session")
def default_archive(tmp_path_factory) -> Path:
    """The bundled default model exported exactly as `make demo` exports it, once per session."""
    from support.models import export_default_archive

    return export_default_archive(tmp_path_factory.mktemp("default_store"))


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
