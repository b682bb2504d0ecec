"""Writing the TorchServe archive (.mar) with torch-model-archiver's Python API."""

from __future__ import annotations

import contextlib
import logging
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from leakseg.inference.manifest import MANIFEST_FILE, ArchiveManifest

log = logging.getLogger(__name__)

#: The file TorchServe imports: a one-class module around leakseg.serving.
HANDLER_ENTRY = Path(__file__).resolve().parent.parent / "serving" / "torchserve_entry.py"


def model_config_yaml(batch_size: int, max_batch_delay_ms: int, workers: int, response_timeout_s: int) -> str:
    """TorchServe's per-model config, carried inside the archive."""
    return (
        f"minWorkers: {workers}\n"
        f"maxWorkers: {workers}\n"
        f"batchSize: {batch_size}\n"
        f"maxBatchDelay: {max_batch_delay_ms}\n"
        f"responseTimeout: {response_timeout_s}\n"
    )


def write_archive(
    graph_path: Path,
    bank_path: Path,
    manifest: ArchiveManifest,
    output_dir: Path,
    batch_size: int = 4,
    max_batch_delay_ms: int = 50,
    workers: int = 1,
    response_timeout_s: int = 120,
    force: bool = True,
    extra_files: Sequence[Path] = (),
) -> Path:
    from model_archiver.model_archiver_config import ModelArchiverConfig
    from model_archiver.model_packaging import generate_model_archive

    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="leakseg-mar-") as tmp:
        manifest_path = Path(tmp) / MANIFEST_FILE
        manifest_path.write_text(manifest.model_dump_json(indent=2) + "\n")
        yaml_path = Path(tmp) / "model-config.yaml"
        yaml_path.write_text(model_config_yaml(batch_size, max_batch_delay_ms, workers, response_timeout_s))
        config = ModelArchiverConfig(
            model_name=manifest.name,
            handler=str(HANDLER_ENTRY),
            version=manifest.version,
            serialized_file=str(graph_path),
            extra_files=",".join(str(p) for p in (manifest_path, bank_path, *dict.fromkeys(extra_files))),
            export_path=str(output_dir),
            config_file=str(yaml_path),
            force=force,
        )
        with _private_tempdir(Path(tmp) / "staging"):
            generate_model_archive(config)
    return output_dir / f"{manifest.name}.mar"


_TEMPDIR_LOCK = threading.Lock()


@contextlib.contextmanager
def _private_tempdir(folder: Path):
    """torch-model-archiver stages in ``tempfile.gettempdir()/MODEL_NAME`` and deletes that folder
    before and after, which would wipe a user's ``/tmp/NAME`` and let two exports of one name
    destroy each other's staging. Point the process's temp dir at a folder of our own meanwhile."""
    folder.mkdir()
    with _TEMPDIR_LOCK:
        previous = tempfile.tempdir
        tempfile.tempdir = str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = previous
