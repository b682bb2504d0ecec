"""The archive manifest: what a .mar holds and how to run it. Written by export, read by the Predictor."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from leakseg.io.frames import ClipLimits
from leakseg.schema import ClipOptions

MANIFEST_FILE = "leakseg_manifest.json"
PROMPT_BANK_FILE = "prompt_bank.safetensors"
GRAPH_FILES = {"onnx": "graph.onnx", "torchscript": "graph.pt"}


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


def extract_archive(mar_path: Path, into: Path) -> Path:
    """Unzip a .mar (a zip file) into the folder ``into``, as TorchServe does, and return it."""
    with zipfile.ZipFile(mar_path) as zf:
        zf.extractall(into)
    return into
