"""The model storage layout KServe's TorchServe runtime reads (``leakseg export --kserve DIR``).

KServe's ``kserve-torchserve`` ClusterServingRuntime downloads ``storageUri`` to /mnt/models
and starts (config/runtimes/kserve-torchserve.yaml in kserve/kserve)::

    torchserve --start --model-store=/mnt/models/model-store --ts-config=/mnt/models/config/config.properties

with ``TS_SERVICE_ENVELOPE`` set from the InferenceService's protocol (``kserve`` for v1,
``kservev2`` for v2; ``PROTOCOL_VERSION`` too). In the ``torchserve-kfs`` image a KServe model
server (``kserve_wrapper``) listens on :8080, reads the model names from ``model_snapshot`` in the
same config.properties and forwards each request to TorchServe's inference address. So the
layout is::

    DIR/config/config.properties
    DIR/config/metrics.yaml           the handler's metric declarations
    DIR/model-store/NAME.mar

Settings, and why (they differ from the repository's config.properties for `leakseg serve`):

* ``enable_envvars_config=true``: required, it is how ``TS_SERVICE_ENVELOPE`` reaches TorchServe.
  It also lets the pod's environment override any other ``TS_*`` key (not ``allowed_urls``):
  whoever writes the pod spec controls the server, as with any container.
* token authorization OFF: the wrapper calls TorchServe without a key (it cannot read
  key_file.json), and keys would change at every pod start. TorchServe's inference and
  management ports are therefore bound to 127.0.0.1 inside the pod, where only the wrapper
  reaches them; authentication moves to the ingress / service mesh in front of the
  InferenceService (docs/DEPLOY.md).
* metrics on 0.0.0.0:8082, the port KServe's runtime annotates for Prometheus scraping.
* ``batchSize`` 1: the kservev2 envelope reads only the first request of a batch (TorchServe
  0.12, ``ts/torch_handler/request_envelope/kservev2.py``). Scale with replicas instead.
* model registration over HTTP off; no per-model pip installs (the image carries leakseg).
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Dict, Optional, Union

from leakseg.io.frames import MAX_REQUEST_BYTES
from leakseg.serving.torchserve_process import FRONTEND_VMARGS

#: Where KServe's storage initializer puts storageUri, and the paths its runtime passes.
MOUNT = "/mnt/models"
CONFIG_REL = "config/config.properties"
METRICS_REL = "config/metrics.yaml"
STORE_REL = "model-store"
PACKAGED_METRICS = Path(__file__).resolve().parent.parent / "serving" / "metrics.yaml"

#: Addresses inside the pod. The wrapper listens on 8080 (the container port KServe routes to).
TORCHSERVE_INFERENCE = "http://127.0.0.1:8085"
TORCHSERVE_MANAGEMENT = "http://127.0.0.1:8085"
TORCHSERVE_METRICS = "http://0.0.0.0:8082"


def archive_info(mar: Union[str, Path]) -> Dict[str, str]:
    """modelName and modelVersion from a .mar's MAR-INF/MANIFEST.json."""
    with zipfile.ZipFile(mar) as zf:
        model = json.loads(zf.read("MAR-INF/MANIFEST.json"))["model"]
    return {"name": model["modelName"], "version": str(model.get("modelVersion") or "1.0")}


def config_properties(name: str, version: str, mar_name: str, *, workers: int = 1, response_timeout_s: int = 120,
                      max_request_size: int = MAX_REQUEST_BYTES, job_queue_size: int = 32) -> str:
    """TorchServe's config.properties for KServe's TorchServe runtime (see the module docstring)."""
    snapshot = {"name": "startup.cfg", "modelCount": 1, "models": {name: {version: {
        "defaultVersion": True, "marName": mar_name, "minWorkers": workers, "maxWorkers": workers,
        "batchSize": 1, "maxBatchDelay": 5, "responseTimeout": response_timeout_s}}}}
    return "\n".join([
        "# TorchServe configuration for KServe's TorchServe runtime, written by `leakseg export --kserve`.",
        f"# KServe mounts this layout at {MOUNT} and runs: torchserve --start --model-store={MOUNT}/{STORE_REL} "
        f"--ts-config={MOUNT}/{CONFIG_REL}",
        "# The KServe wrapper in the same container listens on :8080 and forwards to the inference address below.",
        "# See leakseg/export/kserve_layout.py and docs/DEPLOY.md for why each setting differs from `leakseg serve`.",
        f"inference_address={TORCHSERVE_INFERENCE}",
        f"management_address={TORCHSERVE_MANAGEMENT}",
        f"metrics_address={TORCHSERVE_METRICS}",
        "grpc_inference_address=127.0.0.1",
        "grpc_inference_port=7070",
        "grpc_management_address=127.0.0.1",
        "grpc_management_port=7071",
        "# TS_SERVICE_ENVELOPE (kservev2) and PROTOCOL_VERSION come from the runtime's environment.",
        "enable_envvars_config=true",
        "# Only the wrapper in this pod reaches the loopback ports above; authentication is the ingress's/mesh's.",
        "disable_token_authorization=true",
        "enable_model_api=false",
        "install_py_dep_per_model=false",
        f"model_store={MOUNT}/{STORE_REL}",
        "load_models=all",
        f"model_snapshot={json.dumps(snapshot, separators=(',', ':'))}",
        f"max_request_size={max_request_size}",
        "# The frontend's memory, bounded: room for 4 of the largest requests at once (see leakseg serve's config).",
        f"vmargs={FRONTEND_VMARGS}",
        "max_response_size=268435456",
        f"job_queue_size={job_queue_size}",
        "metrics_mode=prometheus",
        "enable_metrics_api=true",
        f"metrics_config={MOUNT}/{METRICS_REL}",
        "",
    ])


def write_kserve_layout(mar: Union[str, Path], out_dir: Union[str, Path], *, name: Optional[str] = None,
                        workers: int = 1, response_timeout_s: int = 120) -> Path:
    """Write ``out_dir/config/config.properties``, ``config/metrics.yaml`` and ``model-store/NAME.mar``.

    Upload ``out_dir`` as the InferenceService's ``storageUri`` (S3, GCS, PVC, ...).
    Returns ``out_dir``.
    """
    mar, out = Path(mar), Path(out_dir)
    info = archive_info(mar)
    model_name = name or info["name"]
    (out / "config").mkdir(parents=True, exist_ok=True)
    (out / STORE_REL).mkdir(parents=True, exist_ok=True)
    mar_name = f"{model_name}.mar"
    if mar.resolve() != (out / STORE_REL / mar_name).resolve():
        shutil.copyfile(mar, out / STORE_REL / mar_name)
    shutil.copyfile(PACKAGED_METRICS, out / METRICS_REL)
    (out / CONFIG_REL).write_text(config_properties(model_name, info["version"], mar_name, workers=workers,
                                                    response_timeout_s=response_timeout_s))
    return out


__all__ = ["CONFIG_REL", "METRICS_REL", "MOUNT", "STORE_REL", "archive_info", "config_properties",
           "write_kserve_layout"]
