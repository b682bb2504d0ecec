"""The wire contract: pydantic models shared by the predictor, the handler and the client.

Everything a request may carry besides its frames (``prompts``, ``options``) and everything a
response holds is described here, so `leakseg predict`, the HTTP API and the SDK speak one
language. ``leakseg schema`` prints the JSON Schema generated from these models.
Only pydantic and numpy are imported: the thin client depends on this module.
"""

from __future__ import annotations

from enum import Enum
from typing import List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "1"


class ErrorCode(str, Enum):
    """Machine-readable error codes of the API; each maps to one HTTP status."""

    NO_FRAMES = "no_frames"
    FRAME_DECODE_ERROR = "frame_decode_error"
    FRAME_SIZE_MISMATCH = "frame_size_mismatch"
    TOO_FEW_FRAMES = "too_few_frames"
    TOO_MANY_FRAMES = "too_many_frames"
    FRAME_TOO_LARGE = "frame_too_large"
    UNKNOWN_PROMPT = "unknown_prompt"
    WRONG_PROMPT_COUNT = "wrong_prompt_count"
    PROMPTS_NOT_SUPPORTED = "prompts_not_supported"
    INVALID_OPTIONS = "invalid_options"
    UNSUPPORTED_CONTENT_TYPE = "unsupported_content_type"
    INVALID_BODY = "invalid_body"
    INTERNAL_ERROR = "internal_error"


#: HTTP status for each error code. 413 and 415 follow their HTTP meaning; the rest of the
#: input errors are 400 (the request is well-formed HTTP but its content is unusable).
ERROR_STATUS = {
    ErrorCode.NO_FRAMES: 400,
    ErrorCode.FRAME_DECODE_ERROR: 400,
    ErrorCode.FRAME_SIZE_MISMATCH: 400,
    ErrorCode.TOO_FEW_FRAMES: 400,
    ErrorCode.TOO_MANY_FRAMES: 413,
    ErrorCode.FRAME_TOO_LARGE: 413,
    ErrorCode.UNKNOWN_PROMPT: 400,
    ErrorCode.WRONG_PROMPT_COUNT: 400,
    ErrorCode.PROMPTS_NOT_SUPPORTED: 400,
    ErrorCode.INVALID_OPTIONS: 400,
    ErrorCode.UNSUPPORTED_CONTENT_TYPE: 415,
    ErrorCode.INVALID_BODY: 400,
    ErrorCode.INTERNAL_ERROR: 500,
}


class StrictModel(BaseModel):
    """Models of what people write (requests, the monitor's configuration): an unknown field is an
    error, because a typo must not pass silently."""

    model_config = ConfigDict(extra="forbid")


class _Response(BaseModel):
    """Response models: unknown fields are ignored, so older clients read newer servers' answers."""

    model_config = ConfigDict(extra="ignore")


class ClipOptions(StrictModel):
    """Per-request post-processing options (all optional; defaults are the published ones)."""

    threshold: float = Field(0.5, gt=0.0, lt=1.0, description="Probability threshold, after normalisation.")
    normalization: Literal["minmax", "absolute"] = Field(
        "minmax",
        description="'minmax' rescales each frame's probabilities to [0, 1] before thresholding "
        "(as published); 'absolute' thresholds the sigmoid probabilities directly.",
    )
    opening_kernel: int = Field(
        9, ge=0, le=31, description="Size of the elliptical opening kernel in pixels; 0 turns the opening off."
    )
    return_masks: bool = Field(True, description="Include the RLE mask of every frame.")

    @field_validator("opening_kernel")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v and v % 2 == 0:
            raise ValueError("opening_kernel must be 0 (off) or odd, so the ellipse has a centre pixel")
        return v

    return_probabilities: bool = Field(
        False, description="Include a low-resolution probability map (sigmoid, 0-255) per frame."
    )
    probability_size: int = Field(88, ge=8, le=352, description="Side of the square probability map.")


class RLEMask(_Response):
    """COCO compressed RLE, decodable by ``pycocotools.mask.decode``. Column-major runs."""

    size: List[int] = Field(..., min_length=2, max_length=2, description="[height, width]")
    counts: str


class ProbabilityMap(_Response):
    """Sigmoid probabilities resized to size x size, scaled to 0-255, row-major uint8, base64."""

    size: List[int] = Field(..., min_length=2, max_length=2, description="[height, width]")
    data: str = Field(..., description="base64 of height*width uint8 values")


class BoundingBox(_Response):
    x: int = Field(..., description="left column of the box, pixels")
    y: int = Field(..., description="top row of the box, pixels")
    width: int
    height: int


class Point(_Response):
    x: float
    y: float


class FrameResult(_Response):
    index: int
    leak: bool = Field(..., description="True when the frame's mask is not empty.")
    area_pixels: int
    area_fraction: float = Field(..., description="area_pixels / (height * width)")
    bbox: Optional[BoundingBox] = None
    centroid: Optional[Point] = None
    max_score: float = Field(
        ..., description="Highest sigmoid probability in the frame, before any normalisation."
    )
    mask: Optional[RLEMask] = None
    probability: Optional[ProbabilityMap] = None


class ClipInfo(_Response):
    frames: int
    height: int
    width: int
    leak_detected: bool
    leak_frames: List[int]
    max_leak_fraction: float = Field(..., description="Largest area_fraction over the clip's frames.")


class ModelInfo(_Response):
    name: str
    version: str
    family: str = Field(
        "jvlgs", description="The model family: 'jvlgs' (prompted) or 'fgstp' (no prompts; 'prompts' is empty)."
    )
    prompts: List[str] = Field(..., description="The prompts the masks were computed with, in order.")


class Timings(_Response):
    decode_ms: float = 0.0
    model_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = 0.0


class ClipResult(_Response):
    """What ``POST /predictions/{model}`` and ``leakseg predict`` return for one clip."""

    schema_version: str = SCHEMA_VERSION
    request_id: Optional[str] = None
    model: ModelInfo
    clip: ClipInfo
    frames: List[FrameResult]
    timings: Timings = Field(default_factory=Timings)

    @property
    def leak_detected(self) -> bool:
        return self.clip.leak_detected

    @property
    def leak_frames(self) -> List[int]:
        return self.clip.leak_frames

    def masks(self):
        """The masks as a T x H x W boolean array, decoded in pure numpy."""
        import numpy as np

        from leakseg.utils.rle import decode_rle

        h, w = self.clip.height, self.clip.width
        out = np.zeros((len(self.frames), h, w), dtype=bool)
        for i, frame in enumerate(self.frames):
            if frame.mask is None:
                raise ValueError("this result was requested without masks (options.return_masks=false)")
            out[i] = decode_rle(frame.mask.model_dump())
        return out


class ErrorDetail(_Response):
    code: ErrorCode
    message: str
    field: Optional[str] = Field(None, description="The request part or option the error is about.")
    request_id: Optional[str] = None


class ErrorResponse(_Response):
    error: ErrorDetail


class ModelDescription(_Response):
    """What ``{"describe": true}`` returns: the model's prompts, limits and defaults.

    A 200 answer also proves that a worker has loaded the model, so clients use it as the
    readiness probe (TorchServe's /ping says Healthy before the workers are up).
    """

    schema_version: str = SCHEMA_VERSION
    name: str
    version: str
    family: str = Field(
        "jvlgs", description="The model family: 'jvlgs' (takes prompts) or 'fgstp' (takes none: a request with "
        "prompts gets 'prompts_not_supported'; prompt_count is 0)."
    )
    backbone: str
    input_size: int
    prompt_count: int
    default_prompts: List[str]
    available_prompts: List[str]
    min_frames: int
    max_frames: int
    max_frame_pixels: int
    defaults: ClipOptions
    runtime: str = Field(..., description="onnxruntime or torchscript, and the device")


class InputError(ValueError):
    """A request the service cannot use: the error code, a message and the offending field.

    Raised wherever input is checked (frame decoding, prompts, options) and turned into an
    :class:`ErrorResponse` by whoever answers: the handler, `leakseg predict`, the KServe runtime.
    """

    #: Longest message and field an error carries: they may quote the request, and an error body
    #: must stay small whatever the request held (TorchServe resets the connection on a large 4xx).
    MAX_MESSAGE_CHARS = 1000
    MAX_FIELD_CHARS = 100

    def __init__(self, code: ErrorCode, message: str, field: Optional[str] = None):
        if len(message) > self.MAX_MESSAGE_CHARS:
            message = f"{message[:self.MAX_MESSAGE_CHARS]}... ({len(message)} characters)"
        if field is not None and len(field) > self.MAX_FIELD_CHARS:
            field = f"{field[:self.MAX_FIELD_CHARS]}..."
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.field = field

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]

    def to_response(self, request_id: Optional[str] = None) -> ErrorResponse:
        return ErrorResponse(
            error=ErrorDetail(code=self.code, message=self.message, field=self.field, request_id=request_id)
        )


class JsonClipRequest(StrictModel):
    """The ``application/json`` request form."""

    frames: List[str] = Field(
        default_factory=list, description="base64-encoded image files (PNG, JPEG, TIFF, BMP)"
    )
    prompts: Optional[List[str]] = None
    options: Optional[ClipOptions] = None
    describe: bool = Field(False, description="Return the ModelDescription instead of segmenting.")


def json_schema() -> dict:
    """One JSON Schema document describing requests, responses and errors."""
    from pydantic.json_schema import models_json_schema

    _, schema = models_json_schema(
        [(m, "validation") for m in (JsonClipRequest, ClipOptions, ClipResult, ModelDescription, ErrorResponse)],
        title="leakseg wire contract v" + SCHEMA_VERSION,
    )
    return schema
