"""leakseg on KServe's own Python model server: the Open Inference Protocol v2, no TorchServe.

``leakseg kserve --archive model_store/jvlgs.mar`` serves the archive's :class:`Predictor` with
``kserve.ModelServer`` (the ``kserve`` extra: ``pip install 'leakseg[kserve]'``):

    GET  /v2/health/live, /v2/health/ready       liveness, readiness (the model can answer)   no key
    GET  /v2/models/NAME/ready                   model readiness (the pod's readiness probe)  no key
    GET  /v2, /v2/models/NAME                    server and model metadata                    key
    POST /v2/models/NAME/infer                   one clip -> the ClipResult JSON (oip.py)     key
    GET  /metrics                                Prometheus (KServe's latency histograms)     key, or --open-metrics

Nothing else: KServe's app also carries model-repository routes (``/v2/repository/models/NAME/unload``
would leave a pod that is live and ready and answers every infer 404), v1 routes, versioned paths
and docs. :class:`LeakSegGate`, an ASGI layer in front of KServe's FastAPI app, answers only the
table above; everything else is 404. The gate also holds the API key (``Authorization: Bearer``),
reads the infer body itself (the size limit counts the bytes that arrive, chunked or not; a
body that is late is 408), parses it off the event loop (big bodies in a parser process: a JSON
parse holds the GIL, so a thread would stall the health probes just the same), bounds the
requests in flight (503 + Retry-After beyond) and the time of each (504), and answers every
refusal in the protocol's error form ``{"error": "..."}`` with a small body (leakseg's ``code``,
``field`` and a sanitised ``request_id`` beside it for input errors, the status of docs/API.md).

Concurrent requests are batched like the TorchServe handler does: frames are decoded and
preprocessed on a thread pool, and the clips waiting (up to ``batch_size``, at most
``max_batch_delay_ms``) share ONE forward pass, run on one model thread.

The server binds 127.0.0.1 unless told otherwise (KServe's own ``ModelServer`` always binds
0.0.0.0, so the REST server's address is set here); gRPC is off. docs/DEPLOY.md has the key and
the mesh set-up that may turn it off.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import multiprocessing
import re
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import kserve
import numpy as np

from leakseg import __version__
from leakseg.inference import PreparedClip, Predictor
from leakseg.io.frames import MAX_REQUEST_BYTES
from leakseg.schema import ErrorCode, InputError
from leakseg.serving import oip
from leakseg.serving.parse import decode_request_frames

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
#: The largest request body, as `leakseg serve`'s max_request_size (config.properties): the densest
#: lossless form of the largest clip. KServe's model server has no limit of its own.
DEFAULT_MAX_REQUEST_SIZE = MAX_REQUEST_BYTES
#: Requests read, parsed or run at once; more get 503 (each may hold a body of max_request_size).
DEFAULT_MAX_IN_FLIGHT = 8
#: Seconds for a body to arrive, and again for its answer: the archive's responseTimeout, KServe's `timeout: 120`.
DEFAULT_REQUEST_TIMEOUT = 120.0
#: Bodies up to this size are parsed on the event loop (well under a millisecond); bigger ones in the parser process.
INLINE_PARSE_BYTES = 64 * 1024


@dataclass
class GateSettings:
    """What the gate enforces. ``api_key`` None: no key (loopback, or the mesh authenticates: docs/DEPLOY.md)."""

    max_request_size: int = DEFAULT_MAX_REQUEST_SIZE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    api_key: Optional[str] = None
    open_metrics: bool = False


class LeakSegModel(kserve.Model):
    """One leakseg archive as a KServe model: ``predict`` takes an :class:`oip.V2Request`, returns the answer's bytes."""

    def __init__(self, name: str, archive: Union[str, Path], *, device: str = "auto", threads: Optional[int] = None,
                 batch_size: int = 4, max_batch_delay_ms: float = 20.0, decode_workers: int = 2,
                 stuck_after_s: float = DEFAULT_REQUEST_TIMEOUT):
        super().__init__(name)
        self.archive = Path(archive)
        self.device = device
        self.threads = threads
        self.batch_size = max(1, int(batch_size))
        self.max_batch_delay = max(0.0, float(max_batch_delay_ms)) / 1000.0
        self.stuck_after_s = float(stuck_after_s)
        self.predictor: Optional[Predictor] = None
        self._decode_pool = ThreadPoolExecutor(max_workers=max(1, decode_workers), thread_name_prefix="leakseg-decode")
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leakseg-model")
        self._queue: List[Tuple[PreparedClip, "asyncio.Future"]] = []
        self._timer: Optional[asyncio.TimerHandle] = None
        self._batch_started: Optional[float] = None  # monotonic start of the forward pass running now
        self._stopped = False

    # --- loading, health -----------------------------------------------------------------------
    def load(self) -> bool:
        t0 = time.perf_counter()
        self.predictor = Predictor.from_archive(self.archive, device=self.device, threads=self.threads)
        limits = self.predictor.limits
        self.predictor.run([self.predictor.prepare([np.zeros((64, 64), np.uint8)] * limits.min_frames)])  # warm-up
        self.ready = True
        log.info("leakseg model %s ready from %s in %.1f s (%s)", self.name, self.archive,
                 time.perf_counter() - t0, self.predictor.graph.name)
        return self.ready

    def unavailable_reason(self) -> Optional[str]:
        """Why a clip sent now would not be answered (None: it would): readiness is this, not a flag."""
        if self._stopped:
            return "the model is stopped"
        if not self.ready or self.predictor is None:
            return "the model is not loaded"
        busy = self.busy_seconds()
        if busy > self.stuck_after_s:
            return f"the model has been running one batch for {busy:.0f} s"
        return None

    def busy_seconds(self) -> float:
        started = self._batch_started
        return 0.0 if started is None else time.monotonic() - started

    def get_input_types(self) -> List[Dict]:
        return oip.model_metadata_inputs()

    def get_output_types(self) -> List[Dict]:
        return oip.model_metadata_outputs()

    # --- serving -------------------------------------------------------------------------------
    def validate(self, payload: oip.V2Request) -> oip.V2Request:
        return payload  # parsed and checked by the gate (oip.parse_v2_*); KServe's checks expect its own dicts

    async def predict(self, payload: oip.V2Request, headers: Optional[Dict[str, str]] = None,
                      response_headers: Optional[Dict[str, str]] = None) -> bytes:
        """The v2 answer's bytes. Raises :class:`InputError` for a clip the service cannot use."""
        rid = (headers or {}).get("x-request-id") or str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        outcome = await loop.run_in_executor(self._decode_pool, self._prepare, payload, t0)
        if not isinstance(outcome, tuple):  # the model description
            return await loop.run_in_executor(self._decode_pool, self._answer, outcome, rid)
        clip, decode_ms = outcome
        result = await self._infer(clip)
        result.request_id = rid  # the transport's facts, as the TorchServe handler stamps them
        result.timings.decode_ms += decode_ms
        result.timings.total_ms += decode_ms
        return await loop.run_in_executor(self._decode_pool, self._answer, result, rid)

    def _prepare(self, payload: oip.V2Request, t0: float):
        """(clip, decode ms) for the graph, checked, decoded and preprocessed on the decode pool;
        the description for a describe request."""
        request = payload.clip_request()
        predictor = self.predictor
        if request.describe:
            return predictor.describe()
        settings = predictor.settings(request.prompts, request.options)  # cheap checks before decoding
        frames, names = decode_request_frames(request, predictor.limits, None)
        clip = predictor.prepare(frames, settings, names)
        return clip, max(0.0, (time.perf_counter() - t0) * 1000.0 - clip.prepare_ms)

    def _answer(self, document: Any, rid: str) -> bytes:
        """The v2 inference response holding ``document`` (serialised off the event loop: it may be megabytes)."""
        response = {"model_name": self.name, "model_version": self.predictor.version, "id": rid,
                    "outputs": [oip.result_output(document.model_dump_json())]}
        return json.dumps(response, separators=(",", ":")).encode()

    # --- batching ------------------------------------------------------------------------------
    async def _infer(self, clip: PreparedClip):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.append((clip, future))
        if len(self._queue) >= self.batch_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.max_batch_delay, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size:]
            task = asyncio.get_running_loop().run_in_executor(self._model_pool, self._run_timed,
                                                              [c for c, _ in batch])
            task.add_done_callback(lambda t, futures=[f for _, f in batch]: _deliver(t, futures))

    def _run_timed(self, clips: List[PreparedClip]) -> List[Any]:
        """:meth:`_run`, its start visible to readiness (a forward pass that never ends makes the pod unready)."""
        self._batch_started = time.monotonic()
        try:
            return self._run(clips)
        finally:
            self._batch_started = None

    def _run(self, clips: List[PreparedClip]) -> List[Any]:
        """One forward pass for the batch; if it fails, each clip alone, so only a culprit fails."""
        try:
            return list(self.predictor.run(clips))
        except Exception as exc:  # noqa: BLE001
            if len(clips) == 1:
                log.exception("unexpected error running the model on one clip")
                return [exc]
            return [r for c in clips for r in self._run([c])]

    def stop(self) -> None:
        self._stopped = True
        super().stop()
        self._decode_pool.shutdown(wait=False)
        self._model_pool.shutdown(wait=False)


def _deliver(task: "asyncio.Future", futures: List["asyncio.Future"]) -> None:
    try:
        results = task.result()
    except Exception as exc:  # noqa: BLE001
        results = [exc] * len(futures)
    for future, result in zip(futures, results):
        if future.done():  # its request timed out and went
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


# --- the gate ------------------------------------------------------------------------------------


class Refusal(Exception):
    """A request answered without reaching the model: a status and the protocol's error form."""

    def __init__(self, status: int, message: str, headers: Tuple[Tuple[bytes, bytes], ...] = (), close: bool = True,
                 payload: Optional[Dict[str, Any]] = None):
        super().__init__(message)
        self.status = status
        self.payload = payload or {"error": message}
        self.headers = headers
        self.close = close  # the body may be unread: the connection cannot carry another request

    @classmethod
    def of(cls, error: InputError, close: bool = True) -> "Refusal":
        """An input error found before the body is read (its status, leakseg's code and field)."""
        return cls(error.status, error.message, close=close, payload=oip.error_body(error))


class ClientGone(Exception):
    """The client disconnected before its body arrived: nobody to answer."""


#: (method, path pattern, endpoint, the key is required). Only these reach anything.
ROUTES = (
    ("GET", re.compile(r"/v2/health/live"), "live", False),
    ("GET", re.compile(r"/v2/health/ready"), "ready", False),
    ("GET", re.compile(r"/v2/models/([^/]+)/ready"), "model_ready", False),
    ("GET", re.compile(r"/v2"), "server_metadata", True),
    ("GET", re.compile(r"/v2/models/([^/]+)"), "model_metadata", True),
    ("POST", re.compile(r"/v2/models/([^/]+)/infer"), "infer", True),
    ("GET", re.compile(r"/metrics"), "metrics", True),
)
#: Endpoints KServe's app answers (behind the gate's checks); the gate answers the others itself.
PASSED_TO_KSERVE = ("model_metadata", "metrics")


class LeakSegGate:
    """The ASGI application uvicorn runs: the routes of :data:`ROUTES`, the key, the limits; KServe's app behind."""

    def __init__(self, app: Any, model: LeakSegModel, registry: Any, settings: GateSettings):
        self.app = app
        self.model = model
        self.registry = registry
        self.settings = settings
        self.in_flight = 0
        self._parser = _new_parser()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        try:
            endpoint = self._admit(scope)
            if endpoint in PASSED_TO_KSERVE:
                await self.app(scope, receive, send)
            else:
                await getattr(self, f"_{endpoint}")(scope, receive, send)
        except Refusal as refusal:
            await send_json(send, refusal.status, refusal.payload, refusal.headers, refusal.close)
        except ClientGone:
            pass

    def _admit(self, scope) -> str:
        """The endpoint of a request that may proceed; :class:`Refusal` (404, 401) for any other."""
        method, path = scope["method"], scope["path"]
        for route_method, pattern, endpoint, needs_key in ROUTES:
            match = pattern.fullmatch(path)
            if match and route_method == method:
                if needs_key and not (endpoint == "metrics" and self.settings.open_metrics):
                    self._authorize(scope)
                if match.groups() and match.group(1) != self.model.name:
                    raise Refusal(404, f"model {match.group(1)[:64]!r} is not served here; the model is "
                                  f"{self.model.name!r}")
                return endpoint
        raise Refusal(404, f"no endpoint {method} {path[:64]!r}; this server answers POST "
                      f"/v2/models/{self.model.name}/infer, GET /v2/models/{self.model.name}[/ready], "
                      "/v2/health/live|ready, /v2 and /metrics")

    def _authorize(self, scope) -> None:
        key = self.settings.api_key
        if key is None:
            return
        scheme, _, given = request_headers(scope).get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise Refusal(401, "missing or wrong API key: send Authorization: Bearer <key>",
                          ((b"www-authenticate", b"Bearer"),))

    # --- health and metadata -------------------------------------------------------------------
    def unavailable_reason(self) -> Optional[str]:
        """Why the model cannot answer now (readiness fails: Knative stops routing here); None if it can."""
        return self.dead_reason() or self.model.unavailable_reason()

    def dead_reason(self) -> Optional[str]:
        """Why only a restart helps (liveness fails, so Kubernetes restarts the pod)."""
        if self.registry.get_model(self.model.name) is not self.model:
            return "the model is no longer registered"
        if self.model.busy_seconds() > 3 * self.model.stuck_after_s:
            return f"the model has been running one batch for {self.model.busy_seconds():.0f} s"
        return None

    async def _live(self, scope, receive, send) -> None:
        await send_health(send, "live", self.dead_reason(), {"live": True})

    async def _ready(self, scope, receive, send) -> None:
        await send_health(send, "ready", self.unavailable_reason(), {"ready": True})

    async def _model_ready(self, scope, receive, send) -> None:
        await send_health(send, "ready", self.unavailable_reason(), {"name": self.model.name, "ready": True})

    async def _server_metadata(self, scope, receive, send) -> None:
        await send_json(send, 200, {"name": "leakseg", "version": __version__, "extensions": ["binary_tensor_data"]})

    # --- inference -----------------------------------------------------------------------------
    async def _infer(self, scope, receive, send) -> None:
        if self.in_flight >= self.settings.max_in_flight:
            raise Refusal(503, f"{self.in_flight} requests in flight, the most this server takes; retry shortly",
                          ((b"retry-after", b"1"),))
        self.in_flight += 1
        try:
            status, body = await self._answer(scope, receive)
        finally:
            self.in_flight -= 1
        await send_bytes(send, status, body)

    async def _answer(self, scope, receive) -> Tuple[int, bytes]:
        """(status, body) of one infer request; Refusal for what never reached the model."""
        headers = request_headers(scope)
        given_rid = oip.safe_request_id(headers.get("x-request-id"))
        rid = given_rid or str(uuid.uuid4())
        timeout = self.settings.request_timeout
        try:
            body = await within(read_body(receive, headers, self.settings.max_request_size), timeout, 408,
                                f"the request body did not arrive within {timeout:.0f} s")
            request = await within(self._parse(body, headers.get("inference-header-content-length")), timeout, 504,
                                   f"the body was not parsed within {timeout:.0f} s", close=False)
            rid = given_rid or request.request_id or rid
            reason = self.unavailable_reason()
            if reason:
                raise Refusal(503, f"model {self.model.name} is not ready: {reason}", close=False)
            answer, _ = await within(self.model(request, headers={"x-request-id": rid}), timeout, 504,
                                     f"no answer within {timeout:.0f} s (request {rid})", close=False)
            return 200, answer
        except InputError as exc:
            log.info("request %s: %s %s: %s", rid, exc.status, exc.code.value, exc.message)
            return exc.status, json.dumps(oip.error_body(exc, rid)).encode()
        except (Refusal, ClientGone):
            raise
        except Exception:  # noqa: BLE001 - the log has the traceback; the answer stays small and generic
            log.exception("request %s: unexpected error", rid)
            error = InputError(ErrorCode.INTERNAL_ERROR, "the service failed on this request; see its log")
            return 500, json.dumps(oip.error_body(error, rid)).encode()

    async def _parse(self, body: bytes, header_length: Optional[str]) -> oip.V2Request:
        """The request, parsed on the event loop when small, else in the parser process."""
        if len(body) <= INLINE_PARSE_BYTES:
            return oip.parse_v2_body(body, header_length)
        loop = asyncio.get_running_loop()
        try:
            request, error = await loop.run_in_executor(self._parser, oip.parse_v2_body_outcome, body, header_length)
        except BrokenProcessPool:  # the parser died under this body: out of memory, most likely
            self._parser = _new_parser()
            raise InputError(ErrorCode.FRAME_TOO_LARGE, "parsing this body took more memory than one request may "
                             "use; send a tensor with the binary extension, or encoded frames as BYTES", "body")
        if error is not None:
            raise InputError(*error)
        return request

    def warm_up(self) -> None:
        """Start the parser process now, not under the first big request."""
        self._parser.submit(oip.parse_v2_body_outcome, b"{}", None).result(timeout=300)


def _new_parser() -> ProcessPoolExecutor:
    # spawn, not fork: the server has threads and a loaded model, which a forked child must not inherit.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))


def request_headers(scope) -> Dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}


async def within(awaitable, seconds: float, status: int, message: str, close: bool = True):
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        raise Refusal(status, message, close=close) from None


async def read_body(receive, headers: Dict[str, str], limit: int) -> bytes:
    """The whole body, counted as it arrives (Content-Length may be absent or false): 413 past ``limit``."""
    announced = headers.get("content-length", "")
    if announced.isdigit() and int(announced) > limit:
        raise Refusal.of(too_large(f"{int(announced)} bytes", limit))
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refusal.of(too_large(f"over {limit} bytes", limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def too_large(size: str, limit: int) -> InputError:
    return InputError(ErrorCode.FRAME_TOO_LARGE, f"the request body is {size}; the limit is {limit} bytes (send "
                      "fewer frames, or encoded images as BYTES)", "body")


async def send_health(send, what: str, reason: Optional[str], healthy: Dict[str, Any]) -> None:
    """200 and the protocol's answer, or 503 and why not (a probe that fails is what Kubernetes acts on)."""
    if reason is None:
        await send_json(send, 200, healthy)
    else:
        await send_json(send, 503, {"error": f"not {what}: {reason}"})


async def send_json(send, status: int, payload: Dict[str, Any], headers=(), close: bool = False) -> None:
    await send_bytes(send, status, json.dumps(payload).encode(), headers, close)


async def send_bytes(send, status: int, body: bytes, headers=(), close: bool = False) -> None:
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]
    if close:
        head.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


# --- the server ----------------------------------------------------------------------------------


class LeakSegModelServer(kserve.ModelServer):
    """KServe's ModelServer on a chosen address (KServe binds 0.0.0.0 always), REST only, behind the gate."""

    def __init__(self, host: str = "127.0.0.1", http_port: int = DEFAULT_PORT,
                 settings: Optional[GateSettings] = None, **kwargs: Any):
        kwargs.setdefault("enable_grpc", False)
        kwargs.setdefault("enable_docs_url", False)
        super().__init__(http_port=http_port, **kwargs)
        self.host = host
        self.settings = settings or GateSettings()

    def start(self, models: List[kserve.Model]) -> None:
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.model_server import app
        from kserve.protocol.rest.server import RESTServer

        (model,) = models
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile,
        )
        gate = LeakSegGate(app, model, self.registered_models, self.settings)
        gate.warm_up()
        config = self._rest_server.config  # the uvicorn.Config the server binds with
        config.host, config.app = self.host, gate  # KServe adds its routes to `app`; uvicorn runs the gate
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def serve(archive: Union[str, Path], name: Optional[str] = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          *, device: str = "auto", threads: Optional[int] = None, batch_size: int = 4,
          max_batch_delay_ms: float = 20.0, settings: Optional[GateSettings] = None) -> None:
    """Load the archive and serve it until SIGTERM/SIGINT (blocks)."""
    settings = settings or GateSettings()
    model = LeakSegModel(name or _archive_name(archive), archive, device=device, threads=threads,
                         batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms,
                         stuck_after_s=settings.request_timeout)
    model.load()
    log.info("serving %s on http://%s:%d/v2/models/%s/infer (%s)", model.name, host, port, model.name,
             "API key required" if settings.api_key else "no API key")
    LeakSegModelServer(host=host, http_port=port, settings=settings).start([model])


def _archive_name(archive: Union[str, Path]) -> str:
    """The model name: the manifest's name inside the archive, else the file's stem."""
    p = Path(archive)
    try:
        import zipfile

        with zipfile.ZipFile(p) as zf:
            manifest = json.loads(zf.read("MAR-INF/MANIFEST.json"))
        return manifest["model"]["modelName"]
    except Exception:  # noqa: BLE001 - a folder, or not a .mar: the stem
        return p.stem


__all__ = ["GateSettings", "LeakSegGate", "LeakSegModel", "LeakSegModelServer", "serve"]
