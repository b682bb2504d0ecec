"""Typed errors of the leakseg client, and the one function that maps HTTP answers onto them.

Two kinds of error bodies reach the client:

* ours, written by the leakseg handler: ``{"error": {"code", "message", "field", "request_id"}}``
  with the status of :data:`leakseg.schema.ERROR_STATUS`;
* TorchServe's own, written by its frontend before or after the handler runs:
  ``{"code": 503, "type": "ServiceUnavailableException", "message": "..."}`` (no free worker),
  404 ``ModelNotFoundException``, 400/401 ``InvalidKeyException`` ("Token Authorization failed"),
  a bare 413 for bodies over ``max_request_size``, and ``InternalServerException`` carrying the
  worker's status (503 "Prediction failed", 507 "Out of resources") when a handler crashed, or
  "Worker died." (507, or 500) when the worker process died under the request.

:func:`error_from_response` is pure (status and parsed body in, exception out), so every
combination is tested without a server.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Union

from leakseg.schema import ErrorCode

#: Client-side codes for 4xx answers that did not come from the leakseg handler.
REQUEST_TOO_LARGE = "request_too_large"
BAD_REQUEST = "bad_request"

#: TorchServe's default ``max_request_size`` in bytes; bigger bodies are refused with 413.
TORCHSERVE_DEFAULT_MAX_REQUEST_SIZE = 6553500


class LeakSegError(Exception):
    """Base class of every error the client raises (except plain ValueError/TypeError for bad arguments)."""

    def __init__(self, message: str, *, status: Optional[int] = None, request_id: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.request_id = request_id

    def __str__(self) -> str:
        text = self.message
        if self.status is not None:
            text = f"{text} (HTTP {self.status})"
        if self.request_id:
            text = f"{text} [request_id {self.request_id}]"
        return text


class InvalidInput(LeakSegError, ValueError):
    """The service refused the request's content (4xx); sending it again will not help.

    ``code`` is an :class:`~leakseg.schema.ErrorCode` value (it compares equal to the plain
    string), or :data:`REQUEST_TOO_LARGE` / :data:`BAD_REQUEST` for TorchServe's own refusals.
    ``field`` names the request part or option at fault. Options are also validated before
    sending, in which case ``status`` is None.
    """

    def __init__(
        self,
        code: Union[ErrorCode, str],
        message: str,
        *,
        field: Optional[str] = None,
        status: Optional[int] = None,
        request_id: Optional[str] = None,
    ):
        super().__init__(message, status=status, request_id=request_id)
        self.code = _as_code(code)
        self.field = field

    def __str__(self) -> str:
        where = f" (field {self.field!r})" if self.field else ""
        return f"[{_code_text(self.code)}]{where} {super().__str__()}"


class AuthError(LeakSegError):
    """The inference token was missing, wrong or expired."""


class ServiceUnavailable(LeakSegError):
    """503 from TorchServe: no worker can take the request now. Retried by the client."""


class ModelNotReady(ServiceUnavailable):
    """No worker has the model loaded (yet).

    TorchServe 0.12 words "no worker" and "job queue full" identically, so a busy server also
    lands here unless its message names a full queue; catch :class:`ServiceUnavailable` for both.
    """


class ModelNotFound(LeakSegError):
    """404: no model of that name is registered, or the base URL is not TorchServe's inference API.

    Not retried: TorchServe registers its startup models before it opens the inference port,
    so waiting does not help (unless someone registers the model through the management API).
    """


class ServerBusy(ServiceUnavailable):
    """The model's job queue is full. Retried by the client."""


class Timeout(LeakSegError):
    """No answer within the read timeout (or the server reported one). Not retried: see client docs."""


class ConnectionFailed(LeakSegError):
    """The server could not be reached, or dropped the connection. Retried by the client."""


class ServiceError(LeakSegError):
    """The service failed (5xx) or answered something the client cannot read.

    Quote ``request_id`` when reporting it: the server logs the traceback under that id.
    """

    def __init__(
        self,
        message: str,
        *,
        status: Optional[int] = None,
        request_id: Optional[str] = None,
        code: Optional[str] = None,
    ):
        super().__init__(message, status=status, request_id=request_id)
        self.code = code


class WorkerDied(ServiceError):
    """TorchServe's "Worker died." (HTTP 507, or 500): the worker process running the request died
    (killed, out of memory, restarted) and TorchServe starts a new one. Retried by the client: a
    segmentation is idempotent, so sending the clip again gives its answer from the new worker."""


#: What the client retries: nothing reached the model, or TorchServe turned it away at the door.
RETRYABLE = (ConnectionFailed, ServerBusy, ModelNotReady, WorkerDied)

_AUTH_WORDS = re.compile(r"token|authori[sz]", re.IGNORECASE)
# "job queue is full", "queue full", "queue_full"; but not TorchServe 0.12's standard "no worker"
# text, which ends with "... or exceeds maxSequenceJobQueueSize" (a sequence-batching limit).
_WORKER_DIED = re.compile(r"\bworker\s+died\b", re.IGNORECASE)
_QUEUE_FULL = re.compile(r"\bqueue(?:\s+is)?[\s_]+full\b|\bjob\s+queue\b", re.IGNORECASE)


def error_from_response(
    status: int, body: Any, *, request_bytes: Optional[int] = None
) -> LeakSegError:
    """The exception for a non-200 answer. ``body`` is the parsed JSON, or None/str if it was not JSON.

    ``request_bytes`` (the size of the body sent) only improves the message of a 413.
    """
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return _from_leakseg_error(status, body["error"])
    if isinstance(body, dict) and ("type" in body or "message" in body):
        return _from_torchserve_error(status, str(body.get("type") or ""), str(body.get("message") or ""),
                                      request_bytes)
    text = body.strip() if isinstance(body, str) else ""
    return _from_bare_status(status, text, request_bytes)


def _from_leakseg_error(status: int, err: dict) -> LeakSegError:
    code = str(err.get("code") or ErrorCode.INTERNAL_ERROR.value)
    message = str(err.get("message") or "no message")
    request_id = err.get("request_id")
    if status in (401, 403):
        return AuthError(message, status=status, request_id=request_id)
    if status >= 500 or code == ErrorCode.INTERNAL_ERROR:
        return ServiceError(message, status=status, request_id=request_id, code=code)
    return InvalidInput(code, message, field=err.get("field"), status=status, request_id=request_id)


def _from_torchserve_error(status: int, kind: str, message: str, request_bytes: Optional[int]) -> LeakSegError:
    if kind == "InvalidKeyException" or (status in (400, 401, 403) and _AUTH_WORDS.search(message)):
        return AuthError(f"{message} (check the inference key: --token, LEAKSEG_TOKEN or the key file)",
                         status=status)
    if status == 404:
        return ModelNotFound(message or "model not found", status=status)
    if status == 503 and kind != "InternalServerException":
        if _QUEUE_FULL.search(message):
            return ServerBusy(message, status=status)
        return ModelNotReady(f"{message} [the model is still loading, or its job queue is full]",
                             status=status)
    if status == 413:
        return _too_large(status, message, request_bytes)
    if status in (408, 504):
        return Timeout(message or "the server timed out", status=status)
    if 400 <= status < 500:
        return InvalidInput(BAD_REQUEST, f"{kind}: {message}" if kind else message, status=status)
    if status >= 500 and _WORKER_DIED.search(message):
        return WorkerDied(f"{kind}: {message}" if kind else message, status=status, code=kind or None)
    # InternalServerException with the worker's status: the handler raised (503 "Prediction
    # failed") or ran out of memory (507). Retrying the same clip would fail the same way.
    return ServiceError(f"{kind}: {message}" if kind else message, status=status, code=kind or None)


def _from_bare_status(status: int, text: str, request_bytes: Optional[int]) -> LeakSegError:
    """Answers without a JSON body: TorchServe's netty layer, or a proxy in front of it."""
    detail = text[:200] or f"HTTP {status} without a body"
    if status in (401, 403):
        return AuthError(detail, status=status)
    if status == 404:
        return ModelNotFound(f"{detail}: check the base URL and the model name", status=status)
    if status == 413:
        return _too_large(status, text, request_bytes)
    if status == 503:
        return ServerBusy(detail, status=status)
    if status in (408, 504):
        return Timeout(detail, status=status)
    if 400 <= status < 500:
        return InvalidInput(BAD_REQUEST, detail, status=status)
    return ServiceError(detail, status=status)


def _too_large(status: int, text: str, request_bytes: Optional[int]) -> InvalidInput:
    size = f" ({request_bytes / 1e6:.1f} MB)" if request_bytes else ""
    message = (
        f"the request body{size} exceeds the server's max_request_size "
        f"(TorchServe's default is {TORCHSERVE_DEFAULT_MAX_REQUEST_SIZE / 1e6:.1f} MB): "
        "send fewer or smaller frames, or raise max_request_size in config.properties"
    )
    if text:
        message = f"{message}; server said: {text[:200]}"
    return InvalidInput(REQUEST_TOO_LARGE, message, status=status)


def _as_code(code: Union[ErrorCode, str]) -> Union[ErrorCode, str]:
    try:
        return ErrorCode(code)
    except ValueError:  # a code newer than this client, or one of the client-side ones
        return str(code)


def _code_text(code: Union[ErrorCode, str]) -> str:
    return code.value if isinstance(code, ErrorCode) else code
