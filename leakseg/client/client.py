"""The HTTP client of a running leakseg service (TorchServe with the leakseg handler, or a KServe runtime).

Retry policy, and why:

* retried, with capped exponential backoff and jitter, at most ``retries`` times and within
  ``retry_time`` seconds in all, each retry logged (WARNING, logger ``leakseg.client.client``):
  connection errors (refused, reset, connect timeout, an answer that broke off), 503 (no free
  worker, queue full, model loading) and TorchServe's "Worker died." (507/500: the worker was
  killed or restarted under the request). A segmentation is idempotent: the service keeps no
  state between requests, so the answer to a repeated clip is the same answer, never a
  duplicate effect. This covers a worker SIGKILLed or OOM-killed, ``leakseg serve`` restarts
  and model reloads, provided the service is back within ``retry_time``;
* never retried: every 4xx (the same bytes get the same answer), 5xx other than 503 and "Worker
  died." (the handler failed on this clip), and read timeouts. A read timeout means the request was
  delivered and a worker may still be running it: a retry would queue a second copy behind the
  first and make an overloaded service slower still. Raise ``timeout`` instead;
* an auth failure with a token read from TorchServe's key file re-reads the file once: the
  inference key expires and TorchServe writes the renewed one to the same file.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence, Type, TypeVar, Union

import requests
from pydantic import BaseModel, ValidationError
from requests.adapters import HTTPAdapter

from leakseg import __version__
from leakseg.client.errors import (
    TORCHSERVE_DEFAULT_MAX_REQUEST_SIZE,
    RETRYABLE,
    AuthError,
    ConnectionFailed,
    ModelNotFound,
    ModelNotReady,
    ServiceError,
    ServiceUnavailable,
    Timeout,
    error_from_response,
)
from leakseg.client.inputs import Form, Frames, RequestBody, build_request, describe_request, validate_options
from leakseg.client.protocols import (
    TORCHSERVE, V2, check_protocol, v2_describe_request, v2_document, v2_error_body, v2_segment_request,
)
from leakseg.schema import ClipOptions, ClipResult, ModelDescription

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_MODEL = "jvlgs"

_M = TypeVar("_M", bound=BaseModel)

#: What ready() reports as False (and wait_until_ready() waits out): the service is up but
#: the model cannot answer yet, or the service cannot be reached or is failing.
_NOT_READY = (ServiceUnavailable, ModelNotFound, ConnectionFailed, Timeout, ServiceError)


class LeakSegClient:
    """Client of ``POST {base_url}/predictions/{model}``; one keep-alive session, safe to share across threads.

    >>> with LeakSegClient("http://127.0.0.1:8080", key_file="key_file.json") as client:
    ...     result = client.segment("clip_folder/", threshold=0.4)
    ...     print(result.leak_frames, result.masks().shape)

    ``base_url`` defaults to ``$LEAKSEG_URL``, then http://127.0.0.1:8080. The token is, in
    order: ``token``, ``$LEAKSEG_TOKEN``, the "inference" key of TorchServe's ``key_file.json``
    (``key_file`` or ``$LEAKSEG_KEY_FILE``); with none, no Authorization header is sent.
    ``timeout`` is the read timeout in seconds (a whole clip's inference must fit in it);
    ``retries`` is how many times a retryable failure is retried (so at most retries + 1 tries),
    ``retry_time`` the seconds all retries of one call may take together (the default rides out a
    worker restart or a ``leakseg serve`` restart of about a minute); see the module docstring.
    ``pool_size`` bounds the kept-alive connections; keep it >= the concurrency you use.
    ``protocol`` is ``"torchserve"`` (``POST /predictions/MODEL``, the default, or
    ``$LEAKSEG_PROTOCOL``) or ``"v2"`` (Open Inference Protocol: ``POST /v2/models/MODEL/infer``,
    for KServe deployments and ``leakseg kserve``; see leakseg/client/protocols.py). Results,
    errors and retries are the same with both.
    """

    def __init__(
        self,
        base_url: Optional[str] = None,
        token: Optional[str] = None,
        model: str = DEFAULT_MODEL,
        timeout: float = 60.0,
        retries: int = 20,
        key_file: Optional[Union[str, "os.PathLike[str]"]] = None,
        *,
        connect_timeout: float = 10.0,
        backoff: float = 0.25,
        max_backoff: float = 8.0,
        pool_size: int = 16,
        protocol: Optional[str] = None,
        retry_time: float = 90.0,
    ):
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if retry_time < 0:
            raise ValueError("retry_time must be >= 0")
        self.base_url = (base_url or os.environ.get("LEAKSEG_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.model = model
        self.protocol = check_protocol(protocol or os.environ.get("LEAKSEG_PROTOCOL") or TORCHSERVE)
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.retry_time = retry_time
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._key_file = key_file or os.environ.get("LEAKSEG_KEY_FILE") or None
        self._token = resolve_token(token, self._key_file)
        # Only a token that came from the key file may be refreshed from it.
        self._token_from_file = self._token is not None and not (token or os.environ.get("LEAKSEG_TOKEN"))
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._session.headers.update({"User-Agent": f"leakseg-client/{__version__}", "Accept": "application/json"})

    # -- lifecycle ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the kept-alive connections."""
        self._session.close()

    def __enter__(self) -> "LeakSegClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:  # never shows the token
        auth = "token" if self._token else "no token"
        return f"LeakSegClient({self.base_url!r}, model={self.model!r}, protocol={self.protocol!r}, {auth})"

    @property
    def url(self) -> str:
        """The prediction endpoint."""
        if self.protocol == V2:
            return f"{self.base_url}/v2/models/{self.model}/infer"
        return f"{self.base_url}/predictions/{self.model}"

    # -- API ------------------------------------------------------------------------------------

    def segment(
        self,
        frames: Frames,
        prompts: Union[str, Sequence[str], None] = None,
        *,
        form: Form = "multipart",
        options: Union[ClipOptions, Mapping[str, Any], None] = None,
        **option_fields: Any,
    ) -> ClipResult:
        """Segment one clip and return the service's :class:`~leakseg.schema.ClipResult`.

        ``frames``: image paths, a folder of images, a ``.npy``/``.npz`` clip path, a
        T x H x W [x 3] array or a list of H x W [x 3] arrays (uint8, uint16, float32), or PIL
        images. ``prompts`` override the model's default prompts. Options (``threshold=0.4``,
        ``opening_kernel=0``, ...) are the :class:`~leakseg.schema.ClipOptions` fields, passed
        as keywords or as ``options=``; they are validated before anything is sent.
        """
        merged = {**validate_options(options), **option_fields}
        if self.protocol == V2:
            return _parse(ClipResult, self._post(v2_segment_request(frames, prompts, merged, form)))
        body = build_request(frames, prompts, merged, form)
        return _parse(ClipResult, self._post(body))

    def segment_many(
        self,
        clips: Iterable[Frames],
        concurrency: int = 4,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> Iterator[Union[ClipResult, Exception]]:
        """Segment clips ``concurrency`` at a time; results come back in input order.

        ``clips`` may be a lazy iterable: at most ``2 * concurrency`` clips are read ahead.
        ``kwargs`` go to :meth:`segment` for every clip. With ``return_exceptions`` a clip's
        error is yielded in its place instead of ending the iteration.
        """
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        source = iter(clips)
        pending: "deque[Future[ClipResult]]" = deque()
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="leakseg-client") as pool:
            try:
                for clip in itertools.islice(source, 2 * concurrency):
                    pending.append(pool.submit(self.segment, clip, **kwargs))
                while pending:
                    done = pending.popleft()
                    for clip in itertools.islice(source, 1):  # keep the read-ahead window full
                        pending.append(pool.submit(self.segment, clip, **kwargs))
                    yield _outcome(done, return_exceptions)
            finally:
                for future in pending:  # stopped early: do not send what is still queued
                    future.cancel()

    def describe(self) -> ModelDescription:
        """The model's prompts, limits and default options (also proves a worker has it loaded)."""
        return _parse(ModelDescription, self._post(self._describe_body()))

    def ready(self, timeout: Optional[float] = None) -> bool:
        """True when a worker answers a describe request; False while the service is not ready.

        One try, no retries: False on 503/404, connection errors, timeouts and 5xx. Raises
        :class:`AuthError` and :class:`InvalidInput`, which waiting will not fix.
        """
        try:
            if self.protocol == V2:  # KServe's model readiness; the TorchServe runtime's wrapper has it too
                return bool(self._get(f"/v2/models/{self.model}/ready", timeout).get("ready"))
            self._post(describe_request(), retries=0, timeout=timeout)
        except _NOT_READY:  # AuthError and InvalidInput propagate
            return False
        return True

    def metadata(self) -> dict:
        """The v2 model metadata (``GET /v2/models/MODEL``: name, versions, platform, inputs, outputs); v2 only."""
        if self.protocol != V2:
            raise ValueError("metadata() is part of the v2 protocol; use describe() with TorchServe")
        return self._get(f"/v2/models/{self.model}")

    def server_ready(self, timeout: Optional[float] = None) -> bool:
        """v2 ``GET /v2/health/ready`` (every model loaded); False while not ready. v2 only."""
        if self.protocol != V2:
            raise ValueError("server_ready() is part of the v2 protocol; use ready() with TorchServe")
        try:
            return bool(self._get("/v2/health/ready", timeout).get("ready"))
        except _NOT_READY:
            return False

    def _describe_body(self) -> RequestBody:
        return v2_describe_request() if self.protocol == V2 else describe_request()

    def wait_until_ready(self, timeout: float = 300.0, interval: float = 2.0) -> ModelDescription:
        """Poll :meth:`describe` until a worker answers; raises :class:`ModelNotReady` after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return _parse(ModelDescription, self._post(self._describe_body(), retries=0))
            except _NOT_READY as exc:
                if time.monotonic() + interval > deadline:
                    raise ModelNotReady(f"{self.url} not ready after {timeout:.0f} s; last error: {exc}") from exc
            time.sleep(interval)

    # -- transport ------------------------------------------------------------------------------

    def _post(self, body: RequestBody, *, retries: Optional[int] = None, timeout: Optional[float] = None) -> Any:
        """POST with the retry policy of the module docstring; returns the parsed JSON of a 200."""
        retries = self.retries if retries is None else retries
        deadline = time.monotonic() + self.retry_time
        attempt = 0
        refreshed = False
        while True:
            try:
                return self._send_once(body, timeout)
            except AuthError:
                if refreshed or not self._reload_token():
                    raise
                refreshed = True
            except RETRYABLE as exc:
                left = deadline - time.monotonic()
                delay = self._delay(attempt) if attempt < retries else 0.0
                if attempt >= retries or delay > left:
                    if attempt:
                        log.warning("giving up after %d retries (%.1f s): %s", attempt, self.retry_time - left, exc)
                    raise
                attempt += 1
                log.warning("retry %d/%d in %.2f s (%.0f s of retry time left) after: %s",
                            attempt, retries, delay, left, exc)
                time.sleep(delay)

    def _send_once(self, body: RequestBody, timeout: Optional[float]) -> Any:
        headers = dict(body.headers)
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        read_timeout = self.timeout if timeout is None else timeout
        try:
            response = self._session.post(
                self.url, data=body.data, headers=headers, timeout=(self.connect_timeout, read_timeout)
            )
        except requests.ConnectionError as exc:
            if not _is_read_timeout(exc):
                raise ConnectionFailed(self._connection_message(exc, body)) from exc
            raise Timeout(_timeout_message(self.url, read_timeout)) from exc
        except requests.Timeout as exc:
            raise Timeout(_timeout_message(self.url, read_timeout)) from exc
        except requests.RequestException as exc:  # the answer broke off half-way (e.g. a restart): retryable
            raise ConnectionFailed(f"the connection to {self.url} broke off during the answer: {exc}") from exc
        if response.status_code == 200:
            payload = _json_of(response)
            if self.protocol == V2:
                try:
                    return v2_document(payload)
                except (ValueError, TypeError) as exc:
                    raise ServiceError(f"the service answered 200 without a leakseg result: {exc}", status=200) from exc
            return payload
        error = _error_body(response)
        if self.protocol == V2:
            error = v2_error_body(error)
        raise error_from_response(response.status_code, error, request_bytes=body.size)

    def _get(self, path: str, timeout: Optional[float] = None) -> Any:
        """One GET (no retries) of a v2 endpoint; the parsed JSON of a 200, else the typed error."""
        url = f"{self.base_url}{path}"
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        read_timeout = self.timeout if timeout is None else timeout
        try:
            response = self._session.get(url, headers=headers, timeout=(self.connect_timeout, read_timeout))
        except requests.Timeout as exc:
            raise Timeout(_timeout_message(url, read_timeout)) from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(f"cannot reach {url}: {exc}") from exc
        if response.status_code == 200:
            return _json_of(response)
        raise error_from_response(response.status_code, v2_error_body(_error_body(response)))

    def _connection_message(self, exc: Exception, body: RequestBody) -> str:
        chain = list(_causes(exc))
        message = f"cannot reach {self.url}: {chain[-1] or type(chain[-1]).__name__}"
        refused = any(isinstance(e, ConnectionRefusedError) for e in chain)
        if body.size > TORCHSERVE_DEFAULT_MAX_REQUEST_SIZE and not refused:
            # TorchServe may drop the connection of an oversized upload instead of answering 413.
            message += (f" (the body is {body.size / 1e6:.1f} MB: check the service's "
                        "max_request_size)")
        return message

    def _delay(self, attempt: int) -> float:
        # Jitter keeps the threads of segment_many from retrying in lockstep.
        return min(self.max_backoff, self.backoff * 2 ** attempt) * random.uniform(0.5, 1.0)

    def _reload_token(self) -> bool:
        """Re-read the key file after an auth failure; True if it now holds another key."""
        if not (self._token_from_file and self._key_file):
            return False
        try:
            fresh = read_inference_key(self._key_file)
        except (OSError, AuthError):
            return False
        changed = fresh != self._token
        self._token = fresh
        return changed


# -- tokens ---------------------------------------------------------------------------------------


def resolve_token(
    token: Optional[str] = None, key_file: Optional[Union[str, "os.PathLike[str]"]] = None
) -> Optional[str]:
    """``token``, else ``$LEAKSEG_TOKEN``, else the inference key of ``key_file``/``$LEAKSEG_KEY_FILE``."""
    if token:
        return token
    if os.environ.get("LEAKSEG_TOKEN"):
        return os.environ["LEAKSEG_TOKEN"]
    key_file = key_file or os.environ.get("LEAKSEG_KEY_FILE")
    return read_inference_key(key_file) if key_file else None


def read_inference_key(path: Union[str, "os.PathLike[str]"]) -> str:
    """The "inference" key of a TorchServe ``key_file.json``, or the whole of a one-line key file (the API key
    of `leakseg kserve`, a Kubernetes Secret mounted as a file); AuthError if the file has none.
    `leakseg kserve --api-key-file` reads its key with this too, so one file serves server and client."""
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    try:
        keys = json.loads(text)
    except ValueError:
        keys = None
    if not isinstance(keys, dict):  # a plain key file
        if text and not any(c.isspace() for c in text):
            return text
        raise AuthError(f"{path} is neither a one-line key file nor a TorchServe key file")
    key = keys.get("inference", {}).get("key") if isinstance(keys.get("inference"), dict) else None
    if not isinstance(key, str) or not key:
        raise AuthError(f"{path} holds no inference key (expected {{\"inference\": {{\"key\": ...}}}})")
    return key


# -- helpers --------------------------------------------------------------------------------------


def _parse(model: Type[_M], payload: Any) -> _M:
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        raise ServiceError(f"the service answered something that is not a {model.__name__}: {exc}") from exc


def _json_of(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise ServiceError(f"the service answered 200 with a body that is not JSON: {response.text[:200]!r}",
                           status=200) from exc


def _error_body(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _outcome(future: "Future[ClipResult]", return_exceptions: bool) -> Union[ClipResult, Exception]:
    if not return_exceptions:
        return future.result()
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - handed to the caller in the clip's place
        return exc


def _timeout_message(url: str, seconds: float) -> str:
    return (f"no answer from {url} within {seconds} s (the server may still be working on it; "
            "raise timeout for long clips)")


def _is_read_timeout(exc: BaseException) -> bool:
    """requests wraps a read timeout hit while reading the body in a ConnectionError."""
    from urllib3.exceptions import ReadTimeoutError

    return any(isinstance(arg, ReadTimeoutError) for arg in exc.args)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and what it was raised from, outermost first (requests wraps urllib3 wraps OSError)."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


__all__ = ["DEFAULT_BASE_URL", "DEFAULT_MODEL", "LeakSegClient", "read_inference_key", "resolve_token"]
