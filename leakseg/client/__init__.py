"""Thin Python client of the leakseg service: ``pip install leakseg`` is enough (no torch).

>>> from leakseg.client import LeakSegClient
>>> with LeakSegClient("http://127.0.0.1:8080", token="...") as client:
...     result = client.segment(["f0.png", "f1.png", "f2.png"], threshold=0.4)
>>> result.leak_frames, result.frames[0].bbox, result.masks().shape

Only requests, pydantic, numpy and pillow are imported, here and in every module this one
imports; a test runs it with torch, onnxruntime, timm and transformers blocked.

The modules:

* ``client``: :class:`LeakSegClient`, the HTTP session (token, retries, timeouts, both protocols);
* ``inputs``: request bodies from paths, folders, arrays and PIL images (multipart or JSON);
* ``protocols``: the Open Inference Protocol v2 request and answer forms;
* ``errors``: the exception per error code and TorchServe answer.

Frames are read by :mod:`leakseg.io.frames`, the service's own reader (:func:`clip_array_from`
decodes any accepted input as the service would, e.g. to draw overlays).
"""

from leakseg.client.client import DEFAULT_BASE_URL, DEFAULT_MODEL, LeakSegClient, read_inference_key, resolve_token
from leakseg.client.errors import (
    AuthError,
    ConnectionFailed,
    InvalidInput,
    LeakSegError,
    ModelNotFound,
    ModelNotReady,
    ServerBusy,
    ServiceError,
    ServiceUnavailable,
    Timeout,
    WorkerDied,
    error_from_response,
)
from leakseg.client.inputs import RequestBody, build_request
from leakseg.io.frames import clip_array_from
from leakseg.schema import ClipOptions, ClipResult, FrameResult, ModelDescription

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MODEL",
    "AuthError",
    "ClipOptions",
    "ClipResult",
    "ConnectionFailed",
    "FrameResult",
    "InvalidInput",
    "LeakSegClient",
    "LeakSegError",
    "ModelDescription",
    "ModelNotFound",
    "ModelNotReady",
    "RequestBody",
    "ServerBusy",
    "ServiceError",
    "ServiceUnavailable",
    "Timeout",
    "WorkerDied",
    "build_request",
    "clip_array_from",
    "error_from_response",
    "read_inference_key",
    "resolve_token",
]
