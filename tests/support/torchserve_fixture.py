"""A real TorchServe on loopback serving the test archive, for end-to-end tests (service, client SDK).

tests/conftest.py imports the fixture, so every test module can ask for it (or for its short
alias ``served``)::

    def test_something(torchserve_server):
        served = torchserve_server
        requests.post(served.prediction_url, headers=served.auth, json={"describe": True})

``torchserve_server`` is session-scoped: TorchServe starts once per session (about 10-40 s on
2 cores), however many modules import the fixture, and is stopped by its process group at the
end of the session. It serves the ``onnx_archive`` fixture's tiny.mar (tests/conftest.py) with
token authorization ON, on free loopback ports, with dynamic batching (batchSize 4,
maxBatchDelay 200 ms: concurrent requests share a batch), its own run folder (key_file.json,
effective config.properties) and log folder. The handler logs one line per batch,
"batch of N request(s): <request ids>", to ``served.log_dir / "model_log.log"``.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict

import pytest

from leakseg.serving import torchserve_process as serve
from support.loopback import free_ports

BATCH_SIZE = 4
MAX_BATCH_DELAY_MS = 200


@dataclass
class ServedModel:
    """What a test needs to talk to the fixture's TorchServe."""

    server: serve.Server
    model: str  # the model name: POST {inference_url}/predictions/{model}
    archive: Path  # the .mar it serves

    @property
    def inference_url(self) -> str:
        return self.server.inference_url

    @property
    def management_url(self) -> str:
        return self.server.management_url

    @property
    def metrics_url(self) -> str:
        return self.server.metrics_url

    @property
    def prediction_url(self) -> str:
        return self.server.prediction_url(self.model)

    @property
    def inference_token(self) -> str:
        """Read fresh from key_file.json (rotation changes it)."""
        return self.server.inference_key

    @property
    def management_token(self) -> str:
        return self.server.management_key

    @property
    def auth(self) -> Dict[str, str]:
        """The Authorization header for the inference API."""
        return {"Authorization": f"Bearer {self.inference_token}"}

    @property
    def key_file(self) -> Path:
        return self.server.key_file

    @property
    def log_dir(self) -> Path:
        return self.server.log_dir

    @property
    def config_file(self) -> Path:
        """The effective config.properties TorchServe runs with."""
        return self.server.run_dir / "config.properties"



def with_model_config(archive: Path, target_dir: Path, **settings) -> Path:
    """A copy of ``archive`` in ``target_dir`` whose model-config.yaml has ``settings`` changed."""
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / archive.name
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "model-config.yaml":
                lines = dict(line.split(":", 1) for line in data.decode().splitlines() if ":" in line)
                lines.update({k: f" {v}" for k, v in settings.items()})
                data = "".join(f"{k}:{v}\n" for k, v in lines.items()).encode()
            dst.writestr(item, data)
    return target


def loopback_overrides() -> Dict[str, str]:
    """config.properties overrides putting every TorchServe port on a free loopback port."""
    inference, management, metrics, grpc_inference, grpc_management, worker = free_ports(6)
    return {
        "inference_address": f"http://127.0.0.1:{inference}",
        "management_address": f"http://127.0.0.1:{management}",
        "metrics_address": f"http://127.0.0.1:{metrics}",
        "grpc_inference_port": str(grpc_inference),
        "grpc_management_port": str(grpc_management),
        "initial_worker_port": str(worker),
    }


#: The one TorchServe of the session. A fixture imported into several modules gets one
#: FixtureDef per module, so pytest would call it once per module: the server is shared here.
_shared: Dict[Path, ServedModel] = {}


def serve_archive(archive: Path, root: Path) -> ServedModel:
    """A TorchServe of its own under ``root`` serving ``archive`` (named after its file) with token
    authorization, on free loopback ports, with the session's dynamic batching. Stop it with ``.server.stop()``."""
    store = root / "model_store"
    archive = with_model_config(archive, store, batchSize=BATCH_SIZE, maxBatchDelay=MAX_BATCH_DELAY_MS)
    server = serve.start(store, [f"{archive.stem}={archive.name}"], serve.REPO_CONFIG, root / "logs", root / "run",
                         loopback_overrides(), timeout=240)
    return ServedModel(server, archive.stem, archive)


@pytest.fixture(scope="session")
def torchserve_server(onnx_archive, tmp_path_factory):
    """A running TorchServe serving tiny.mar; yields a :class:`ServedModel`."""
    if onnx_archive not in _shared:
        _shared[onnx_archive] = serve_archive(onnx_archive, tmp_path_factory.mktemp("torchserve"))
    served = _shared[onnx_archive]
    try:
        yield served
    finally:  # session end: stopping twice is harmless (stop() only signals a live TorchServe)
        served.server.stop()
