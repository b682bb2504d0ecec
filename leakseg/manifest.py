"""The archive manifest: what a .mar holds and how to run it. Written by export, read by the pipeline."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from leakseg.schema import ClipOptions

MANIFEST_FILE = "leakseg_manifest.json"
PROMPT_BANK_FILE = "prompt_bank.safetensors"
GRAPH_FILES = {"onnx": "graph.onnx", "torchscript": "graph.pt"}


class ClipLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_frames: int = 3
    max_frames: int = Field(32, description="Frames per request; the body limit is config.properties' max_request_size.")
    max_frame_pixels: int = Field(2048 * 2048, description="Height x width of one frame.")


class ArchiveManifest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    version: str
    leakseg_version: str
    format: Literal["onnx", "torchscript"]
    graph_file: str
    prompt_bank_file: str = PROMPT_BANK_FILE
    config: dict = Field(..., description="JVLGSConfig of the network (text_model is informational)")
    postprocess: ClipOptions = Field(default_factory=ClipOptions)
    limits: ClipLimits = Field(default_factory=ClipLimits)
    checkpoint: str = Field(..., description="file name of the imported checkpoint")
    checkpoint_sha256: str
    max_abs_logit_error: float = Field(..., description="exported graph vs eager model, measured at export")
    opset: Optional[int] = None
