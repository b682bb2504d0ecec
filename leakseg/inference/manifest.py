"""The archive manifest: what a .mar holds and how to run it. Written by export, read by the Predictor."""

from __future__ import annotations

import zipfile
from pathlib import Path, PureWindowsPath
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from leakseg.io.frames import ClipLimits
from leakseg.schema import ClipOptions

MANIFEST_FILE = "leakseg_manifest.json"
PROMPT_BANK_FILE = "prompt_bank.safetensors"
GRAPH_FILES = {"onnx": "graph.onnx", "torchscript": "graph.pt"}


class StreamFiles(BaseModel):
    """The network's two halves for camera streams (leakseg.model.stream): each frame encoded once, each frame
    decoded as soon as its triplet is complete. The same file twice for TorchScript (one module, two methods)."""

    model_config = ConfigDict(extra="forbid")

    encoder_file: str
    head_file: str
    check: dict = Field(..., description="the export check of the halves against the eager clip forward "
                        "(leakseg.export.graph.check_stream)")

    @field_validator("encoder_file", "head_file")
    @classmethod
    def _plain_names(cls, name: str) -> str:
        return plain_file_name(name)


class ArchiveManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    leakseg_version: str
    format: Literal["onnx", "torchscript"]
    graph_file: str
    prompt_bank_file: str = PROMPT_BANK_FILE
    config: dict = Field(..., description="the network's config (JVLGSConfig or FGSTPConfig; model_type is the "
                                          "family; text_model is informational)")
    postprocess: ClipOptions = Field(default_factory=ClipOptions)
    limits: ClipLimits = Field(default_factory=ClipLimits)
    checkpoint: str = Field(..., description="file name of the imported checkpoint")
    checkpoint_sha256: str
    max_abs_logit_error: float = Field(..., description="exported graph vs eager model, measured at export")
    graph_check: Optional[dict] = Field(None, description="the export check: absolute and relative logit "
                                        "difference, mask IoU, tolerances (leakseg.export.graph.GraphCheck)")
    opset: Optional[int] = None
    quantization: Optional[dict] = Field(None, description="an int8 clip graph's check against the float graph "
                                         "(leakseg.export.quantize.QuantizationCheck); None: float")
    stream: Optional[StreamFiles] = Field(None, description="the stream halves, when the archive has them "
                                          "(older archives, and those exported with --no-stream, do not)")

    @field_validator("graph_file", "prompt_bank_file")
    @classmethod
    def _plain_names(cls, name: str) -> str:
        return plain_file_name(name)


def plain_file_name(name: str) -> str:
    """``name`` when it names a file at the archive's top level; ValueError for anything a path join
    would take outside it (folders, ``..``, absolute or drive paths)."""
    if name in ("", ".", "..") or any(c in name for c in "/\\\0") or PureWindowsPath(name).drive:
        raise ValueError(f"{name!r} is not a plain file name inside the archive (no folders, no '..')")
    return name


def archive_file(model_dir: Path, name: str) -> Path:
    """The file ``name`` of an extracted archive, refused (ValueError) unless it is a plain name of a file
    in ``model_dir`` itself, a link out of the folder included: the manifest is the archive's, not ours."""
    folder = Path(model_dir).resolve()
    path = (folder / plain_file_name(name)).resolve()
    if path.parent != folder:
        raise ValueError(f"{name!r} in the archive {model_dir} leads outside it (to {path})")
    return path


def extract_archive(mar_path: Path, into: Path) -> Path:
    """Unzip a .mar (a zip file) into the folder ``into``, as TorchServe does, and return it."""
    with zipfile.ZipFile(mar_path) as zf:
        zf.extractall(into)
    return into
