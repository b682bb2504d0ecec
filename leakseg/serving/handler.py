"""The TorchServe handler: transport, batching and errors around :class:`leakseg.inference.predictor.Predictor`.

TorchServe calls ``handle(data, context)`` with a batch of up to ``batchSize`` requests. Each
request is parsed and decoded on its own (frames decoded in parallel on a thread pool); every
valid clip of the batch then goes through ONE ``Predictor.run`` call. Each request gets its own
HTTP status through ``context.set_response_status(code, phrase, idx)``: a bad request answers
4xx with ``{"error": {...}}`` and never fails the others, and nothing raises out of ``handle``
(an exception there would turn the whole batch into TorchServe's bare 503).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http import HTTPStatus
from typing import List, Optional, Union

import numpy as np

from leakseg.inference.predictor import PreparedClip, Predictor
from leakseg.inference.runtime import default_threads
from leakseg.schema import ClipResult, ErrorCode, InputError, ModelDescription
from leakseg.serving.oip import is_v2_input, request_from_envelope_input
from leakseg.serving.parse import content_type, decode_request_frames, parse_request

log = logging.getLogger(__name__)

#: Custom metrics, declared in leakseg/serving/metrics.yaml (TorchServe 0.12 drops undeclared ones).
FRAMES_METRIC = "LeakSegFrames"
LEAK_FRAMES_METRIC = "LeakSegLeakFrames"
CLIPS_METRIC = "LeakSegClips"
ERRORS_METRIC = "LeakSegErrors"
LATENCY_METRIC = "LeakSegStageLatency"

Outcome = Union[ClipResult, ModelDescription, InputError, "InternalError"]


@dataclass
class InternalError:
    """An unexpected failure of one request; the traceback is in the log under ``request_id``."""

    message: str = "internal error; the service log has the details under this request_id"


class LeakSegHandler:
    """TorchServe entry point (see leakseg/serving/torchserve_entry.py)."""

    def __init__(self) -> None:
        self.predictor: Optional[Predictor] = None
        self.model_name = "leakseg"
        self.initialized = False
        self._pool: Optional[ThreadPoolExecutor] = None

    # --- loading -------------------------------------------------------------------------------
    def initialize(self, context) -> None:
        props = context.system_properties
        device = _pin_gpu(props.get("gpu_id"))
        threads = _threads(context)
        _set_torch_threads(threads)
        self.model_name = getattr(context, "model_name", None) or self.model_name
        self.predictor = Predictor.from_model_dir(props["model_dir"], device=device, threads=threads)
        # Pillow releases the GIL while decoding, so the frames of a request decode in parallel.
        self._pool = ThreadPoolExecutor(max_workers=max(2, threads), thread_name_prefix="leakseg-decode")
        self._warm_up()
        self.initialized = True
        log.info("leakseg handler ready: %s on %s, %d threads, batch size %s", self.model_name,
                 self.predictor.graph.name, threads, props.get("batch_size"))

    def _warm_up(self) -> None:
        """One dummy clip, so the first real request does not pay for the runtime's lazy set-up."""
        self.predictor.predict([np.zeros((64, 64), np.uint8)] * self.predictor.limits.min_frames)

    # --- serving -------------------------------------------------------------------------------
    def handle(self, data: List[dict], context) -> List[str]:
        ids = [_request_id(context, i) for i in range(len(data))]
        log.info("batch of %d request(s): %s", len(ids), " ".join(ids))  # ties request ids to batches
        try:
            outcomes = self._outcomes(data, context, ids)
        except Exception:  # noqa: BLE001 - never let a batch fail as TorchServe's bare 503
            log.exception("request(s) %s: unexpected error handling the batch", ", ".join(ids))
            outcomes = [InternalError() for _ in data]
        return [self._respond(context, i, rid, outcome) for i, (rid, outcome) in enumerate(zip(ids, outcomes))]

    def _outcomes(self, data: List[dict], context, ids: List[str]) -> List[Outcome]:
        """Each request on its own up to the model; then one graph call for all valid clips."""
        outcomes: List[Optional[Outcome]] = [None] * len(data)
        clips, decode_ms = [], {}
        for i, parts in enumerate(data):
            t0 = time.perf_counter()
            outcome = self._request(parts, context, i, ids[i])
            if isinstance(outcome, PreparedClip):
                clips.append((i, outcome))
                decode_ms[i] = (time.perf_counter() - t0) * 1000.0 - outcome.prepare_ms
            else:
                outcomes[i] = outcome
        for i, result in self._run(clips, ids):
            if isinstance(result, ClipResult):
                _stamp(result, ids[i], decode_ms[i])
            outcomes[i] = result
        return outcomes

    def _request(self, parts: dict, context, idx: int, rid: str) -> Union[PreparedClip, Outcome]:
        """Parse, check, decode (frames in parallel on the pool) and preprocess one request."""
        try:
            if is_v2_input(parts):  # one input of a v2 request, from KServe's kservev2 envelope (docs/DEPLOY.md)
                request = request_from_envelope_input(parts)
            else:
                request = parse_request(parts, content_type(context.get_all_request_header(idx)), self.predictor.limits)
            if request.describe:
                return self.predictor.describe()
            settings = self.predictor.settings(request.prompts, request.options)  # cheap checks before decoding
            frames, names = decode_request_frames(request, self.predictor.limits, self._pool)
            return self.predictor.prepare(frames, settings, names)
        except InputError as exc:
            return exc
        except Exception:  # noqa: BLE001 - one request's surprise must not fail the batch
            log.exception("request %s: unexpected error reading the request", rid)
            return InternalError()

    def _run(self, clips: List[tuple], ids: List[str]):
        """One graph call for the batch; if it fails, each clip alone, so only a culprit fails."""
        if not clips:
            return []
        try:
            return list(zip([i for i, _ in clips], self.predictor.run([c for _, c in clips])))
        except Exception:  # noqa: BLE001
            if len(clips) == 1:
                log.exception("request %s: unexpected error running the model", ids[clips[0][0]])
                return [(clips[0][0], InternalError())]
            log.warning("batch of %d clips failed in the model; running them one by one", len(clips), exc_info=True)
            return [pair for clip in clips for pair in self._run([clip], ids)]

    # --- responses -----------------------------------------------------------------------------
    def _respond(self, context, idx: int, rid: str, outcome: Outcome) -> str:
        if isinstance(outcome, (ClipResult, ModelDescription)):
            status, body = 200, outcome.model_dump_json()
            if isinstance(outcome, ClipResult):
                self._count_result(context, outcome)
        elif isinstance(outcome, InputError):
            log.info("request %s: %s %s: %s", rid, outcome.status, outcome.code.value, outcome.message)
            status, body = outcome.status, outcome.to_response(rid).model_dump_json()
            self._count(context, ERRORS_METRIC, 1, [self.model_name, outcome.code.value], rid)
        else:
            error = InputError(ErrorCode.INTERNAL_ERROR, outcome.message)
            status, body = error.status, error.to_response(rid).model_dump_json()
            self._count(context, ERRORS_METRIC, 1, [self.model_name, error.code.value], rid)
        context.set_response_status(status, HTTPStatus(status).phrase, idx)
        context.set_response_content_type(idx, "application/json")
        return body

    # --- metrics -------------------------------------------------------------------------------
    def _count_result(self, context, result: ClipResult) -> None:
        rid, model = result.request_id, [self.model_name]
        self._count(context, CLIPS_METRIC, 1, model, rid)
        self._count(context, FRAMES_METRIC, result.clip.frames, model, rid)
        self._count(context, LEAK_FRAMES_METRIC, len(result.clip.leak_frames), model, rid)
        t = result.timings
        for stage, ms in (("decode", t.decode_ms), ("model", t.model_ms), ("postprocess", t.postprocess_ms),
                          ("total", t.total_ms)):
            self._observe(context, LATENCY_METRIC, ms / 1000.0, [self.model_name, stage], rid)

    def _count(self, context, name: str, value: float, dims: List[str], rid: Optional[str]) -> None:
        self._emit(context, name, "counter", value, dims, rid)

    def _observe(self, context, name: str, value: float, dims: List[str], rid: Optional[str]) -> None:
        self._emit(context, name, "histogram", value, dims, rid)

    @staticmethod
    def _emit(context, name: str, kind: str, value: float, dims: List[str], rid: Optional[str]) -> None:
        """Update a declared metric; metrics never fail a request (a missing declaration is logged)."""
        metrics = getattr(context, "metrics", None)
        if metrics is None:
            return
        try:
            from ts.metrics.metric_type_enum import MetricTypes

            metrics.get_metric(name, MetricTypes(kind)).add_or_update(value, dims, rid or "")
        except Exception as exc:  # noqa: BLE001
            log.warning("metric %s not updated: %s", name, exc)


# --- helpers -------------------------------------------------------------------------------------


def _stamp(result: ClipResult, request_id: str, decode_ms: float) -> None:
    """The transport's facts on a result: its request id and the time spent decoding its frames."""
    result.request_id = request_id
    t = result.timings
    t.decode_ms += decode_ms
    t.total_ms += decode_ms


def _request_id(context, idx: int) -> str:
    """TorchServe's id of the request (also its x-request-id response header), else a fresh uuid4."""
    try:
        rid = context.get_request_id(idx)
    except Exception:  # noqa: BLE001
        rid = None
    return str(rid) if rid else str(uuid.uuid4())


def _pin_gpu(gpu_id: Optional[int]) -> str:
    """The device for the runtime: "cpu" when TorchServe gave this worker no GPU, else "auto".

    TorchServe assigns each worker a GPU index, but the runtime knows only "cuda" (device 0):
    the worker's GPU is made its device 0 through CUDA_VISIBLE_DEVICES, which works because
    nothing has initialised CUDA in this process yet. "auto" falls back to the CPU (the log's
    "ready" line names the provider) rather than failing the worker when CUDA is unusable.
    """
    if gpu_id is None:
        return "cpu"
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    index = int(gpu_id)
    os.environ["CUDA_VISIBLE_DEVICES"] = visible[index] if index < len(visible) else str(index)
    return "auto"


def _threads(context) -> int:
    """Intra-op threads per worker: $LEAKSEG_THREADS, else the cores shared among the model's workers."""
    if os.environ.get("LEAKSEG_THREADS"):
        return default_threads()
    config = getattr(context, "model_yaml_config", None) or {}
    workers = max(1, int(config.get("minWorkers", 1) or 1))
    return max(1, default_threads() // workers)


def _set_torch_threads(threads: int) -> None:
    """Post-processing runs in torch: keep it within the worker's share of the cores."""
    import torch

    torch.set_num_threads(threads)
