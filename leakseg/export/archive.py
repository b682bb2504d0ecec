"""Writing the TorchServe archive (.mar) with torch-model-archiver's Python API."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Optional

from leakseg.manifest import MANIFEST_FILE, ArchiveManifest

log = logging.getLogger(__name__)

#: The file TorchServe imports: a one-class module around leakseg.handler.
HANDLER_ENTRY = Path(__file__).resolve().parent.parent / "handler" / "torchserve_entry.py"


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
            extra_files=f"{manifest_path},{bank_path}",
            export_path=str(output_dir),
            config_file=str(yaml_path),
            force=force,
        )
        generate_model_archive(config)
    return output_dir / f"{manifest.name}.mar"


def extract_archive(mar_path: Path, into: Optional[Path] = None) -> Path:
    """Unzip a .mar (a zip file) into a folder, as TorchServe does, and return the folder."""
    import zipfile

    target = into or Path(tempfile.mkdtemp(prefix="leakseg-model-"))
    with zipfile.ZipFile(mar_path) as zf:
        zf.extractall(target)
    return target
