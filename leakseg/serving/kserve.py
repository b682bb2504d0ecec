"""leakseg on KServe's own Python model server: the Open Inference Protocol v2, no TorchServe.

``leakseg kserve --archive model_store/jvlgs.mar`` serves the archive's :class:`Predictor` with
``kserve.ModelServer`` (the ``kserve`` extra: ``pip install 'leakseg[kserve]'``):

    GET  /v2/health/live, /v2/health/ready       liveness, readiness (the model is loaded)
    GET  /v2/models/NAME, /v2/models/NAME/ready  model metadata, model readiness
    POST /v2/models/NAME/infer                   one clip -> the ClipResult JSON (leakseg/serving/oip.py)
    GET  /metrics                                Prometheus (KServe's request latency histograms)

Same archive, same Predictor, same masks as TorchServe's ``/predictions``. Concurrent requests
are batched like the TorchServe handler does: frames are decoded and preprocessed on a thread
pool, and the clips waiting (up to ``batch_size``, at most ``max_batch_delay_ms``) share ONE
forward pass, run on one model thread. Bad requests answer 4xx in the protocol's error form
``{"error": "..."}`` (plus leakseg's ``code``/``field``/``request_id``) with the status of the
error table in docs/API.md.

The server binds 127.0.0.1 unless told otherwise (``--host 0.0.0.0`` in a container: KServe's
own ``ModelServer`` always binds 0.0.0.0, so the REST server's address is set here). It has no
authentication of its own: under KServe it sits behind the ingress / service mesh, which does
that (docs/DEPLOY.md). gRPC is off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import kserve
import numpy as np
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from leakseg.inference import PreparedClip, Predictor
from leakseg.schema import ErrorCode, InputError
from leakseg.serving import oip
from leakseg.serving.parse import decode_frames

log = logging.getLogger(__name__)

DEFAULT_PORT = 8080
#: The largest request body, as `leakseg serve`'s max_request_size (config.properties): the densest
#: lossless form of the largest clip. KServe's model server has no limit of its own.
DEFAULT_MAX_REQUEST_SIZE = 822083584


class LeakSegRequestError(InvalidInput):
    """An :class:`InputError` on its way to the HTTP answer (status from the error table)."""

    def __init__(self, error: InputError, request_id: Optional[str]):
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


async def _request_error_handler(_request, exc: LeakSegRequestError) -> JSONResponse:
    return JSONResponse(status_code=exc.error.status, content=oip.error_body(exc.error, exc.request_id))


async def _validation_error_handler(_request, exc: RequestValidationError) -> JSONResponse:
    """A body that is not a v2 inference request: the protocol's error form, 400 (FastAPI would say 422)."""
    first = (exc.errors() or [{}])[0]
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
    error = InputError(ErrorCode.INVALID_BODY,
                       f"not a v2 inference request: {where}: {first.get('msg', 'invalid')}", where)
    return JSONResponse(status_code=400, content=oip.error_body(error))


class LeakSegModel(kserve.Model):
    """One leakseg archive as a KServe model (``predict`` takes and returns v2 objects)."""

    def __init__(self, name: str, archive: Union[str, Path], *, device: str = "auto", threads: Optional[int] = None,
                 batch_size: int = 4, max_batch_delay_ms: float = 20.0, decode_workers: int = 2):
        super().__init__(name)
        self.archive = Path(archive)
        self.device = device
        self.threads = threads
        self.batch_size = max(1, int(batch_size))
        self.max_batch_delay = max(0.0, float(max_batch_delay_ms)) / 1000.0
        self.predictor: Optional[Predictor] = None
        self._decode_pool = ThreadPoolExecutor(max_workers=max(1, decode_workers), thread_name_prefix="leakseg-decode")
        self._model_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="leakseg-model")
        self._queue: List[Tuple[PreparedClip, "asyncio.Future"]] = []
        self._timer: Optional[asyncio.TimerHandle] = None

    # --- loading -------------------------------------------------------------------------------
    def load(self) -> bool:
        t0 = time.perf_counter()
        self.predictor = Predictor.from_archive(self.archive, device=self.device, threads=self.threads)
        limits = self.predictor.limits
        self.predictor.run([self.predictor.prepare([np.zeros((64, 64), np.uint8)] * limits.min_frames)])  # warm-up
        self.ready = True
        log.info("leakseg model %s ready from %s in %.1f s (%s)", self.name, self.archive,
                 time.perf_counter() - t0, self.predictor.graph.name)
        return self.ready

    def get_input_types(self) -> List[Dict]:
        return oip.model_metadata_inputs()

    def get_output_types(self) -> List[Dict]:
        return oip.model_metadata_outputs()

    # --- serving -------------------------------------------------------------------------------
    async def predict(self, payload: Union[InferRequest, Dict], headers: Optional[Dict[str, str]] = None,
                      response_headers: Optional[Dict[str, str]] = None) -> InferResponse:
        if not isinstance(payload, InferRequest):  # a v1 body ({"instances": ...}) on /v1/models/NAME:predict
            raise LeakSegRequestError(InputError(ErrorCode.INVALID_BODY,
                                                 "leakseg speaks the v2 protocol: POST /v2/models/NAME/infer"), None)
        rid = (headers or {}).get("x-request-id") or payload.id or str(uuid.uuid4())
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        try:
            outcome = await loop.run_in_executor(self._decode_pool, self._prepare, payload, t0)
            if not isinstance(outcome, tuple):  # the model description
                body = outcome.model_dump_json()
            else:
                clip, decode_ms = outcome
                result = await self._infer(clip)
                result.request_id = rid  # the transport's facts, as the TorchServe handler stamps them
                result.timings.decode_ms += decode_ms
                result.timings.total_ms += decode_ms
                body = result.model_dump_json()
        except InputError as exc:
            log.info("request %s: %s %s: %s", rid, exc.status, exc.code.value, exc.message)
            raise LeakSegRequestError(exc, rid) from None
        output = InferOutput(name=oip.RESULT_OUTPUT, shape=[1], datatype="BYTES", data=[body])
        return InferResponse(response_id=rid, model_name=self.name, infer_outputs=[output],
                             model_version=self.predictor.version)

    def _prepare(self, payload: InferRequest, t0: float):
        """(clip, decode ms) for the graph, parsed, checked, decoded and preprocessed on the decode pool;
        the description for a describe request."""
        inputs, arrays = [], {}
        for inp in payload.inputs:
            item = {"name": inp.name, "datatype": inp.datatype, "shape": list(inp.shape),
                    "parameters": dict(inp.parameters or {})}
            if inp.name == oip.FRAMES_INPUT and inp.datatype in oip.TENSOR_DATATYPES:
                try:
                    arrays[inp.name] = inp.as_numpy()
                except (ValueError, TypeError, OverflowError) as exc:
                    raise InputError(ErrorCode.FRAME_DECODE_ERROR,
                                     f"input frames: data does not fit datatype {inp.datatype} and shape "
                                     f"{list(inp.shape)} ({exc})", oip.FRAMES_INPUT) from exc
            else:
                item["data"] = inp.data
            inputs.append(item)
        request = oip.request_from_v2(inputs, dict(payload.parameters or {}), arrays)
        predictor = self.predictor
        if request.describe:
            return predictor.describe()
        settings = predictor.settings(request.prompts, request.options)  # cheap checks before decoding
        frames, names = decode_frames(request, predictor.limits, None)
        clip = predictor.prepare(frames, settings, names)
        return clip, max(0.0, (time.perf_counter() - t0) * 1000.0 - clip.prepare_ms)

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
            task = asyncio.get_running_loop().run_in_executor(self._model_pool, self._run, [c for c, _ in batch])
            task.add_done_callback(lambda t, futures=[f for _, f in batch]: _deliver(t, futures))

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
        super().stop()
        self._decode_pool.shutdown(wait=False)
        self._model_pool.shutdown(wait=False)


def _deliver(task: "asyncio.Future", futures: List["asyncio.Future"]) -> None:
    try:
        results = task.result()
    except Exception as exc:  # noqa: BLE001
        results = [exc] * len(futures)
    for future, result in zip(futures, results):
        if future.done():
            continue
        if isinstance(result, Exception):
            future.set_exception(result)
        else:
            future.set_result(result)


# --- the server ----------------------------------------------------------------------------------


def _body_limit(limit: int):
    """Refuse a body over ``limit`` bytes from its Content-Length (413, the protocol's error form), unread."""

    async def middleware(request, call_next):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            error = InputError(ErrorCode.FRAME_TOO_LARGE,
                               f"the request body is {int(length)} bytes; the limit is {limit} bytes "
                               "(send fewer frames, or encoded images as BYTES)", "body")
            return JSONResponse(status_code=413, content=oip.error_body(error), headers={"Connection": "close"})
        return await call_next(request)

    return middleware


class LeakSegModelServer(kserve.ModelServer):
    """KServe's ModelServer on a chosen address (KServe binds 0.0.0.0 always), REST only, with a body limit."""

    def __init__(self, host: str = "127.0.0.1", http_port: int = DEFAULT_PORT,
                 max_request_size: int = DEFAULT_MAX_REQUEST_SIZE, **kwargs: Any):
        kwargs.setdefault("enable_grpc", False)
        kwargs.setdefault("enable_docs_url", False)
        super().__init__(http_port=http_port, **kwargs)
        self.host = host
        self.max_request_size = int(max_request_size)

    def start(self, models: List[kserve.Model]) -> None:
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.model_server import app
        from kserve.protocol.rest.server import RESTServer

        self._register_and_check_atleast_one_model_is_ready(models)
        app.add_exception_handler(LeakSegRequestError, _request_error_handler)
        app.add_exception_handler(RequestValidationError, _validation_error_handler)
        app.middleware("http")(_body_limit(self.max_request_size))
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension, self.http_port,
            access_log_format=self.access_log_format, workers=1, grace_period=self.grace_period,
            event_loop=self.event_loop, timeout_keep_alive=self.timeout_keep_alive,
            ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile,
        )
        self._rest_server.config.host = self.host  # the uvicorn.Config the server binds with
        self.servers.append(self._rest_server.start())
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


def serve(archive: Union[str, Path], name: Optional[str] = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          *, device: str = "auto", threads: Optional[int] = None, batch_size: int = 4,
          max_batch_delay_ms: float = 20.0, max_request_size: int = DEFAULT_MAX_REQUEST_SIZE) -> None:
    """Load the archive and serve it until SIGTERM/SIGINT (blocks)."""
    model = LeakSegModel(name or _archive_name(archive), archive, device=device, threads=threads,
                         batch_size=batch_size, max_batch_delay_ms=max_batch_delay_ms)
    model.load()
    log.info("serving %s on http://%s:%d/v2/models/%s/infer", model.name, host, port, model.name)
    LeakSegModelServer(host=host, http_port=port, max_request_size=max_request_size).start([model])


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


__all__ = ["LeakSegModel", "LeakSegModelServer", "LeakSegRequestError", "serve"]
