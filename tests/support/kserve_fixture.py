"""Real servers for the KServe tests: `leakseg kserve` (KServe's model server) and TorchServe as KServe runs it.

The ``kserve`` package pins psutil<6 and protobuf<7, older than what torch/torchserve/onnx
bring into the main venv, so it is not in the ``all`` extra. The `leakseg kserve` server
therefore runs in an interpreter that has it: the current one if ``import kserve`` works,
else ``$LEAKSEG_KSERVE_PYTHON``, else an overlay venv ``.leakseg/kserve-venv`` (created here
once, a few hundred MB from PyPI): its own site-packages hold kserve and the pins it needs,
and a .pth appends the main venv's site-packages, so leakseg, torch and onnxruntime are the
main venv's. Without PyPI and without such an interpreter the tests that need it are skipped
with the reason. The tests themselves run in the main venv and only talk HTTP.

Every server binds 127.0.0.1 on free ports, runs in its own process group with a private
working folder and TMPDIR, and is stopped by its process group at the end.
"""

from __future__ import annotations

import os
import secrets
import signal
import site
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import requests
from support.loopback import free_ports

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / ".leakseg" / "kserve-venv"
#: What the overlay installs: the kserve extra's requirement (pyproject.toml).
KSERVE_REQUIREMENT = "kserve>=0.20,<0.22"



def _has_kserve(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import kserve, leakseg.serving.kserve_runtime"], capture_output=True,
                              timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _build_overlay() -> Optional[str]:
    """The overlay venv described in the module docstring; None if it cannot be built (no PyPI)."""
    python = OVERLAY / "bin" / "python"
    base = getattr(sys, "_base_executable", None) or sys.executable
    if not python.exists():
        subprocess.run([base, "-m", "venv", str(OVERLAY)], check=True, capture_output=True, timeout=300)
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    main_site = site.getsitepackages()[0] if hasattr(site, "getsitepackages") else sysconfig.get_paths()["purelib"]
    (purelib / "zz_leakseg_main_venv.pth").write_text(f"import site; site.addsitedir({main_site!r})\n")
    done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", KSERVE_REQUIREMENT],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        return None
    return str(python)


_python_cache: Dict[str, Optional[str]] = {}


def kserve_python() -> str:
    """An interpreter with kserve and this checkout's leakseg; skips the test when there is none."""
    if "python" not in _python_cache:
        found = None
        for candidate in (sys.executable, os.environ.get("LEAKSEG_KSERVE_PYTHON"), str(OVERLAY / "bin" / "python")):
            if candidate and Path(candidate).exists() and _has_kserve(candidate):
                found = candidate
                break
        if found is None:
            try:
                built = _build_overlay()
            except (OSError, subprocess.SubprocessError):
                built = None
            found = built if built and _has_kserve(built) else None
        _python_cache["python"] = found
    python = _python_cache["python"]
    if python is None:
        pytest.skip("no interpreter with the kserve package: pip install 'leakseg[kserve]' in a venv and set "
                    "LEAKSEG_KSERVE_PYTHON, or allow PyPI so the tests can build .leakseg/kserve-venv")
    return python


@dataclass
class Process:
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(timeout=30)

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def spawn(argv: List[str], workdir: Path, env: Optional[Dict[str, str]] = None, name: str = "server") -> Process:
    """argv in its own process group, cwd and TMPDIR in ``workdir``, output to ``workdir/NAME.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / "tmp"
    tmp.mkdir(exist_ok=True)
    full_env = {**os.environ, "TMPDIR": str(tmp), "TEMP": str(tmp), "LEAKSEG_THREADS": "2", **(env or {})}
    log = workdir / f"{name}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=workdir, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return Process(proc, log)


def wait_for(url: str, process: Process, timeout: float = 240.0, ok=lambda r: r.status_code == 200) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.proc.poll() is not None:
            raise RuntimeError(f"the server exited with {process.proc.returncode}:\n{process.tail()}")
        try:
            if ok(requests.get(url, timeout=5)):
                return
        except requests.RequestException:
            pass
        time.sleep(1.0)
    process.stop()
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s:\n{process.tail()}")


def listening_addresses(pid: int) -> List[tuple]:
    """(ip, port) of every listening TCP socket of ``pid`` and its children."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    found = []
    for p in procs:
        try:
            conns = p.net_connections(kind="inet") if hasattr(p, "net_connections") else p.connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [tuple(c.laddr) for c in conns if c.status == psutil.CONN_LISTEN]
    return found


@dataclass
class KServeRuntime:
    """A running `leakseg kserve`; ``key`` is the API key it requires (None: it was started without one)."""

    process: Process
    url: str
    model: str
    key: Optional[str] = None
    key_file: Optional[Path] = None

    @property
    def auth(self) -> Dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def start_kserve_runtime(archive: Path, workdir: Path, model: str, extra: Optional[List[str]] = None,
                         api_key: bool = True) -> KServeRuntime:
    """`leakseg kserve` on a free loopback port; with ``api_key`` (as the image runs it) a fresh key in a key file."""
    python = kserve_python()
    (port,) = free_ports(1)
    key, key_file, key_args = None, None, []
    if api_key:
        workdir.mkdir(parents=True, exist_ok=True)
        key, key_file = secrets.token_urlsafe(24), workdir / "api-key"
        key_file.write_text(key + "\n")
        key_file.chmod(0o600)
        key_args = ["--api-key-file", str(key_file)]
    argv = [python, "-m", "leakseg.cli", "kserve", "--archive", str(archive), "--host", "127.0.0.1",
            "--http-port", str(port), "--device", "cpu", "--threads", "2", *key_args, *(extra or [])]
    process = spawn(argv, workdir, name="kserve")
    url = f"http://127.0.0.1:{port}"
    wait_for(f"{url}/v2/health/ready", process)
    return KServeRuntime(process, url, model, key, key_file)


@dataclass
class KServeTorchServe:
    """TorchServe started as KServe's TorchServe runtime starts it, on loopback ports."""

    process: Process
    storage: Path
    inference_url: str
    management_url: str
    metrics_url: str
    model: str


def start_torchserve_as_kserve(storage: Path, workdir: Path, model: str) -> KServeTorchServe:
    """``torchserve --start --model-store=S/model-store --ts-config=S/config/config.properties``.

    The same arguments as KServe's ``kserve-torchserve`` runtime (plus ``--foreground``, so the
    test owns the process), with the environment it gets from KServe: ``TS_SERVICE_ENVELOPE=
    kservev2`` and ``PROTOCOL_VERSION=v2``. The addresses and the metrics file, which in the pod
    are 127.0.0.1:8085 and /mnt/models/config/metrics.yaml, are moved to free loopback ports and
    the test's storage folder through the same mechanism KServe relies on for the envelope:
    ``enable_envvars_config=true`` makes TorchServe read ``TS_*`` environment variables.
    """
    inference, metrics, grpc_i, grpc_m, worker = free_ports(5)
    torchserve = str(Path(sys.executable).with_name("torchserve"))
    argv = [torchserve, "--start", "--foreground", f"--model-store={storage / 'model-store'}",
            f"--ts-config={storage / 'config' / 'config.properties'}"]
    env = {
        "TS_SERVICE_ENVELOPE": "kservev2",
        "PROTOCOL_VERSION": "v2",
        "TS_INFERENCE_ADDRESS": f"http://127.0.0.1:{inference}",
        "TS_MANAGEMENT_ADDRESS": f"http://127.0.0.1:{inference}",
        "TS_METRICS_ADDRESS": f"http://127.0.0.1:{metrics}",
        "TS_GRPC_INFERENCE_PORT": str(grpc_i),
        "TS_GRPC_MANAGEMENT_PORT": str(grpc_m),
        "TS_INITIAL_WORKER_PORT": str(worker),
        "TS_METRICS_CONFIG": str(storage / "config" / "metrics.yaml"),
        "LOG_LOCATION": str(workdir / "logs"),
        "METRICS_LOCATION": str(workdir / "logs"),
    }
    process = spawn(argv, workdir, env, name="torchserve")
    url = f"http://127.0.0.1:{inference}"

    def workers_ready(response) -> bool:
        if response.status_code != 200:
            return False
        return any(w.get("status") == "READY" for v in response.json() for w in v.get("workers", []))

    wait_for(f"{url}/models/{model}", process, ok=workers_ready)
    return KServeTorchServe(process, storage, url, url, f"http://127.0.0.1:{metrics}", model)
