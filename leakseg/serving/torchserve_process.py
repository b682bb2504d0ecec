"""Start, wait for, check and stop TorchServe: the logic behind `leakseg serve`, reused by the tests.

Why not plain ``torchserve --start``: it keeps ONE pid file for the whole machine
(``$TMPDIR/.model_server.pid``), names its worker sockets ``/tmp/.ts.sock.<port>`` and writes
``key_file.json`` into its working folder, so two servers on one host (a test run next to a
dev server) trip over each other. :func:`start` runs TorchServe's own launcher in the
foreground, in a new process group, with a private run folder as working folder, ``TMPDIR`` and
``TEMP`` (hence java.io.tmpdir: sockets and extracted archives), and logs in a known folder.
The run folder keeps ``serve.json`` (pid, URLs, models), the effective ``config.properties``
and ``key_file.json``; :meth:`Server.load` reads it back for ``--stop``, ``--check``, ...

Nothing the user owns is touched: a run folder must be new or empty, and leakseg marks it as its own
with :data:`OWNER_FILE` (a random id, also recorded in ``serve.json``). A state file is only believed
for the folder it lives in and when its id matches that folder's mark; nothing is signalled, written or
deleted otherwise.

TorchServe's /ping answers "Healthy" before any worker has loaded a model, so readiness is
taken from the management API (``GET /models/NAME``: every worker READY).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit, urlunsplit

import requests

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
REPO_CONFIG = Path(__file__).resolve().parents[2] / "config.properties"
PACKAGED_METRICS = Path(__file__).resolve().parent / "metrics.yaml"
DEFAULT_RUN_DIR = Path(".leakseg/serve")
DEFAULT_LOG_DIR = Path("logs")
STATE_FILE = "serve.json"
KEY_FILE = "key_file.json"
#: The mark of a run folder leakseg serve created: a random id, the same as serve.json's ``run_id``.
OWNER_FILE = ".leakseg-serve-run"
#: TorchServe's own defaults for the addresses a config may leave out; written into the effective config
#: so that leakseg and TorchServe agree on them (--stop must find every TorchServe it started).
DEFAULT_ADDRESSES = {"inference_address": "http://127.0.0.1:8080", "management_address": "http://127.0.0.1:8081",
                     "metrics_address": "http://127.0.0.1:8082"}
LAUNCHER = "ts.model_server"
#: The frontend's JVM memory when a config does not set ``vmargs``: room for a batch of 4 of the largest
#: requests (config.properties explains the figures), instead of the JVM's default of a quarter of the RAM.
FRONTEND_VMARGS = "-Xms256m -Xmx4g -XX:+AlwaysPreTouch -XX:MaxDirectMemorySize=4g -XX:+UseG1GC -XX:G1PeriodicGCInterval=60000"


class ServeError(RuntimeError):
    """TorchServe did not start, is not running, or did not answer."""


class NotStarted(ServeError):
    """No TorchServe was started from this run folder (it has no state file)."""


# --- configuration ----------------------------------------------------------------------------


def default_config() -> Path:
    """./config.properties when there is one, else the repository's."""
    local = Path("config.properties")
    return local if local.is_file() else REPO_CONFIG


#: Java's .properties syntax (java.util.Properties.load), which TorchServe's frontend reads the file with.
_PROPERTY_SPACE = " \t\f"
_PROPERTY_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}
_CONTROL_ESCAPES = {value: "\\" + name for name, value in _PROPERTY_ESCAPES.items()}


def read_properties(path: PathLike) -> Dict[str, str]:
    """A .properties file as Java reads it: ``=``, ``:`` or whitespace separators, backslash
    continuation lines, escapes (``\\t``, ``\\uXXXX``, ...), ``#`` and ``!`` comments; Latin-1."""
    try:
        return parse_properties(Path(path).read_text(encoding="latin-1"))
    except ValueError as exc:
        raise ServeError(f"{path}: {exc}") from exc


def parse_properties(text: str) -> Dict[str, str]:
    props = {}
    for line in _logical_lines(text):
        key, value = _split_property(line)
        props[_unescape(key)] = _unescape(value)
    return props


def _logical_lines(text: str) -> Iterator[str]:
    """Lines joined where a line ends in an odd number of backslashes (the next line's leading
    whitespace dropped); blank lines and comments dropped (only at the start of a logical line)."""
    current: Optional[str] = None
    for natural in re.split(r"\r\n|\r|\n", text):
        stripped = natural.lstrip(_PROPERTY_SPACE)
        if current is None and (not stripped or stripped[0] in "#!"):
            continue
        continued = (len(stripped) - len(stripped.rstrip("\\"))) % 2 == 1
        current = (current or "") + (stripped[:-1] if continued else stripped)
        if not continued:
            yield current
            current = None
    if current:  # a continuation at the end of the file
        yield current


def _split_property(line: str) -> Tuple[str, str]:
    """(key, value): the key ends at the first unescaped ``=``, ``:`` or whitespace."""
    escaped = False
    for end, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in "=:" or char in _PROPERTY_SPACE:
            rest = line[end:].lstrip(_PROPERTY_SPACE)
            if rest[:1] in ("=", ":"):
                rest = rest[1:].lstrip(_PROPERTY_SPACE)
            return line[:end], rest
    return line, ""


def _unescape(text: str) -> str:
    def one(match: "re.Match[str]") -> str:
        code = match.group(1)
        if code.startswith("u"):
            if not re.fullmatch(r"u[0-9a-fA-F]{4}", code):
                raise ValueError(f"malformed \\uxxxx escape in {text!r}")
            return chr(int(code[1:], 16))
        return _PROPERTY_ESCAPES.get(code, code)

    # \\u takes its four hex digits (or what stands there, to be refused); a lone trailing backslash is dropped
    chars = re.sub(r"\\(u.{0,4}|.|$)", one, text, flags=re.DOTALL)
    # \\uXXXX are UTF-16 code units, as Java's chars are: a surrogate pair becomes one character
    return chars.encode("utf-16-be", "surrogatepass").decode("utf-16-be", "surrogatepass")


def _escape(text: str, specials: str) -> str:
    """Java .properties escaping: backslash, ``specials``, control characters; non-ASCII as \\uXXXX
    (Java reads the file as Latin-1)."""
    out = []
    for char in text:
        if char == "\\" or char in specials:
            out.append("\\" + char)
        elif char in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[char])
        elif " " <= char <= "~":
            out.append(char)
        else:  # UTF-16 code units, as Java's chars are
            units = char.encode("utf-16-be")
            out.extend(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    return "".join(out)


def format_property(key: str, value: str) -> str:
    """One ``key=value`` line that Java reads back as (key, value). Only what Java needs is escaped in the
    value: TorchServe's Python launcher reads ``vmargs`` from the same file without unescaping."""
    value = _escape(value, "")
    leading_space = "\\" if value.startswith(" ") else ""  # else Java would skip it as separator whitespace
    return f"{_escape(key, ' =:#!')}={leading_space}{value}"


def write_properties(props: Mapping[str, str], path: PathLike) -> Path:
    path = Path(path)
    lines = ["# written by leakseg serve: the effective TorchServe configuration"]
    path.write_text("\n".join(lines + [format_property(k, v) for k, v in props.items()]) + "\n", encoding="latin-1")
    return path


def effective_properties(config: PathLike, model_store: PathLike,
                         overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The config with absolute paths (TorchServe runs in the run folder) and ``overrides`` applied."""
    config = Path(config).resolve()
    props = read_properties(config)
    store = Path(model_store).resolve()
    props["model_store"] = str(store)
    # Without leakseg's metrics.yaml TorchServe would drop the handler's metrics.
    metrics = Path(props.get("metrics_config") or PACKAGED_METRICS)
    metrics = metrics if metrics.is_absolute() else config.parent / metrics
    props["metrics_config"] = str(metrics if metrics.is_file() else PACKAGED_METRICS)
    # Registration only from this model store (write_properties escapes the regex's backslashes).
    props["allowed_urls"] = "file://" + re.escape(str(store)) + r"/[^/]+\.mar"
    props.setdefault("vmargs", FRONTEND_VMARGS)
    # The worker hands the handler raw bytes, which it counts before parsing (config.properties says why).
    props.setdefault("decode_input_request", "false")
    for key, address in DEFAULT_ADDRESSES.items():
        props.setdefault(key, address)
    props.update(overrides or {})
    return props


def model_args(model_store: PathLike, models: Optional[Sequence[str]] = None) -> List[str]:
    """NAME=FILE for each model to load: the given ones (FILE alone means NAME=stem), else every .mar."""
    store = Path(model_store)
    if not models:
        models = sorted(p.name for p in store.glob("*.mar"))
        if not models:
            raise ServeError(f"no .mar archive in {store}; run `leakseg export` first")
    out = []
    for spec in models:
        name, _, file = spec.rpartition("=")
        name = name or Path(file).name.removesuffix(".mar")
        if not (store / file).is_file():
            raise ServeError(f"{store / file} does not exist (models are loaded from the model store)")
        out.append(f"{name}={file}")
    return out


def _client_url(address: str) -> str:
    """A URL to reach a bound address from this host (0.0.0.0 / :: mean every interface)."""
    parts = urlsplit(address)
    host = parts.hostname or "127.0.0.1"
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme or "http", netloc, "", "", "")).rstrip("/")


# --- the running server -----------------------------------------------------------------------


@dataclass
class Server:
    """A TorchServe started by :func:`start`, or found again with :meth:`load`."""

    pid: int  # the launcher's pid = the process group of TorchServe and its workers
    run_dir: Path
    log_dir: Path
    models: List[str]
    inference_url: str
    management_url: str
    metrics_url: str
    process: Optional[subprocess.Popen] = field(default=None, repr=False, compare=False)
    run_id: str = ""  # the id in the run folder's OWNER_FILE: proves the folder is this server's

    # -- ownership ----------------------------------------------------------------------------
    def owns_run_dir(self) -> bool:
        """Is the run folder the one leakseg serve created for this server (its mark holds our id)?"""
        return bool(self.run_id) and _owner_id(self.run_dir) == self.run_id

    # -- state --------------------------------------------------------------------------------
    @property
    def key_file(self) -> Path:
        return self.run_dir / KEY_FILE

    def save(self) -> None:
        state = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "process"}
        state.update(run_dir=str(self.run_dir), log_dir=str(self.log_dir))
        (self.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: PathLike = DEFAULT_RUN_DIR) -> "Server":
        """The server whose state file is in ``run_dir``. Refused (ServeError) when the state file names
        another folder or its id is not the folder's mark: then it was not written by leakseg serve for
        this folder, and acting on it (signals, deletes) could hit what the user owns."""
        folder = Path(run_dir).resolve()
        path = folder / STATE_FILE
        if not path.is_file():
            raise NotStarted(f"no TorchServe started by leakseg serve here ({path} not found)")
        try:
            state = json.loads(path.read_text())
            state.update(run_dir=Path(state["run_dir"]), log_dir=Path(state["log_dir"]))
            server = cls(**state)
        except (ValueError, TypeError, KeyError) as exc:
            raise ServeError(f"{path} is not a state file of leakseg serve ({exc}); it is left as it is") from exc
        if server.run_dir.resolve() != folder:
            raise ServeError(f"{path} names another run folder ({server.run_dir}); a state file only ever "
                             "describes its own folder, so it is refused and nothing is stopped or deleted")
        if not server.owns_run_dir():
            raise ServeError(f"{path} was not written by leakseg serve for this folder (its run_id does not match "
                             f"{folder / OWNER_FILE}); nothing is stopped or deleted")
        return server

    @property
    def model_names(self) -> List[str]:
        return [spec.split("=", 1)[0] for spec in self.models]

    def prediction_url(self, model: Optional[str] = None) -> str:
        return f"{self.inference_url}/predictions/{model or self.model_names[0]}"

    # -- keys ---------------------------------------------------------------------------------
    def keys(self) -> Dict[str, str]:
        """The current keys: inference, management and API (read fresh: they change on rotation)."""
        try:
            data = json.loads(self.key_file.read_text())
        except (OSError, ValueError) as exc:
            raise ServeError(f"cannot read TorchServe's key file {self.key_file}: {exc}") from exc
        return {kind: entry["key"] for kind, entry in data.items()}

    @property
    def inference_key(self) -> str:
        return self.keys()["inference"]

    @property
    def management_key(self) -> str:
        return self.keys()["management"]

    def rotate_key(self, kind: str = "inference") -> str:
        """A new inference or management key through the management API's /token (needs the API key)."""
        try:
            response = requests.post(f"{self.management_url}/token", params={"type": kind}, timeout=10,
                                     headers=_bearer(self.keys()["API"]))
        except requests.RequestException as exc:
            raise ServeError(f"key rotation failed: {exc}") from exc
        if response.status_code != 200:
            raise ServeError(f"key rotation failed: HTTP {response.status_code} {response.text.strip()}")
        return self.keys()[kind]

    # -- life ---------------------------------------------------------------------------------
    def is_running(self) -> bool:
        # Our own child is asked directly: just after the fork its command line is still ours.
        if self.process is not None and self.process.poll() is None:
            return True
        return _group_alive(self.pid, self.process)

    def processes(self) -> Dict[str, list]:
        """TorchServe's live processes by role, as psutil.Process lists: "frontend" (the java ModelServer)
        and "workers" (one Python process per model worker; a new pid means the worker was restarted)."""
        import psutil

        found: Dict[str, list] = {"frontend": [], "workers": []}
        for proc in psutil.process_iter(["status", "cmdline"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(proc.pid) != self.pid:
                    continue
            except (OSError, psutil.Error):
                continue
            command = " ".join(proc.info["cmdline"] or ())
            if TORCHSERVE_MARKS[1] in command:
                found["frontend"].append(proc)
            elif TORCHSERVE_MARKS[2] in command:
                found["workers"].append(proc)
        return found

    def worker_pids(self) -> List[int]:
        return sorted(p.pid for p in self.processes()["workers"])

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> None:
        """Until every model's workers are READY; ServeError if TorchServe exits or time runs out."""
        deadline = time.monotonic() + timeout
        waiting = self.model_names
        while waiting:
            if not self.is_running():
                raise ServeError(f"TorchServe exited while starting; see {self.log_dir}:\n"
                                 + log_tail(self.log_dir, "torchserve.out") + "\n" + log_tail(self.log_dir))
            waiting = [name for name in waiting if not self._model_ready(name)]
            if waiting and time.monotonic() > deadline:
                raise ServeError(f"models {waiting} not ready after {timeout:.0f} s; see {self.log_dir}/"
                                 "model_log.log:\n" + log_tail(self.log_dir, "model_log.log"))
            if waiting:
                time.sleep(interval)

    def _model_ready(self, name: str) -> bool:
        try:
            response = requests.get(f"{self.management_url}/models/{name}", headers=_bearer(self.management_key),
                                    timeout=5)
        except (requests.RequestException, ServeError):
            return False  # not listening yet, or the key file is not written yet
        if response.status_code != 200:
            return False
        workers = [w for version in response.json() for w in version.get("workers", [])]
        return bool(workers) and all(w.get("status") == "READY" for w in workers)

    def describe(self, model: Optional[str] = None, timeout: float = 10.0) -> dict:
        """POST {"describe": true}: proves a worker answers predictions (the health check)."""
        try:
            response = requests.post(self.prediction_url(model), json={"describe": True}, timeout=timeout,
                                     headers=_bearer(self.inference_key))
        except requests.RequestException as exc:
            raise ServeError(f"{self.prediction_url(model)}: {exc}") from exc
        if response.status_code != 200:
            raise ServeError(f"{self.prediction_url(model)}: HTTP {response.status_code} {response.text.strip()}")
        return response.json()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM to the process group (launcher, java, workers), SIGKILL after ``timeout``; then the
        state, key file and tmp/ go. Only in a run folder this server owns (ServeError otherwise), and
        only a group that still holds TorchServe processes is signalled (pids get reused).
        """
        if not self.owns_run_dir():
            raise ServeError(f"{self.run_dir} is not the run folder leakseg serve created for this server "
                             f"(no matching {OWNER_FILE}); nothing is stopped or deleted")
        if self.is_running():
            _signal_group(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _group_alive(self.pid, self.process) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _group_alive(self.pid, self.process):
                log.warning("TorchServe (pgid %d) did not stop in %.0f s; killing it", self.pid, timeout)
                _signal_group(self.pid, signal.SIGKILL)
                time.sleep(1.0)
        for name in (STATE_FILE, KEY_FILE):  # stale keys must not look valid
            (self.run_dir / name).unlink(missing_ok=True)
        shutil.rmtree(self.run_dir / "tmp", ignore_errors=True)  # extracted archives, worker sockets


def start(model_store: PathLike = "model_store", models: Optional[Sequence[str]] = None,
          config: Optional[PathLike] = None, log_dir: PathLike = DEFAULT_LOG_DIR,
          run_dir: PathLike = DEFAULT_RUN_DIR, overrides: Optional[Mapping[str, str]] = None,
          timeout: float = 300.0, inherit_output: bool = False) -> Server:
    """Start TorchServe and wait until its models are ready; returns the :class:`Server`.

    ``overrides`` replace config.properties keys (ports, addresses, ...). The server's output
    goes to ``log_dir/torchserve.out`` unless ``inherit_output`` (foreground mode).
    """
    run_dir, log_dir, store = Path(run_dir).resolve(), Path(log_dir).resolve(), Path(model_store).resolve()
    _refuse_if_running(run_dir)
    specs = model_args(store, models)
    config = Path(config or default_config())
    if not config.is_file():
        raise ServeError(f"TorchServe config {config} not found; pass --config (the repository has one)")
    props = effective_properties(config, store, overrides)
    # Everything that can fail on the config fails before the launch: a TorchServe running without a
    # state file would be an orphan that --stop cannot find.
    urls = {f"{kind}_url": _client_url(props[f"{kind}_address"]) for kind in ("inference", "management", "metrics")}
    run_id = claim_run_dir(run_dir)
    process = _launch(props, store, specs, run_dir, log_dir, inherit_output)
    server = Server(pid=process.pid, run_dir=run_dir, log_dir=log_dir, models=specs, process=process,
                    run_id=run_id, **urls)
    log.info("TorchServe starting (pid %d), logs in %s", process.pid, log_dir)
    try:
        server.save()
        server.wait_ready(timeout)
    except BaseException:  # includes the SIGTERM of a foreground run: leave nothing behind
        server.stop()
        raise
    return server


def _launch(props: Mapping[str, str], store: Path, specs: Sequence[str], run_dir: Path, log_dir: Path,
            inherit_output: bool) -> subprocess.Popen:
    """TorchServe's launcher in the foreground, in its own process group, in the run folder."""
    (run_dir / "tmp").mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    config_path = write_properties(props, run_dir / "config.properties")
    cmd = [sys.executable, "-m", LAUNCHER, "--start", "--foreground", "--ncs", "--ts-config", str(config_path),
           "--model-store", str(store), "--models", *specs]
    output = None if inherit_output else open(log_dir / "torchserve.out", "ab")  # noqa: SIM115
    try:
        return subprocess.Popen(cmd, cwd=run_dir, env=_environment(run_dir, log_dir), stdout=output,
                                stderr=subprocess.STDOUT if output else None, start_new_session=True)
    finally:
        if output:
            output.close()


def _environment(run_dir: Path, log_dir: Path) -> Dict[str, str]:
    env = dict(os.environ)
    env.pop("TS_CONFIG_FILE", None)  # it would silently replace --ts-config
    tmp = str(run_dir / "tmp")
    # Two malloc arenas instead of eight per core: the worker's threads (ONNX Runtime, decoding) otherwise
    # spread freed memory over many arenas that glibc rarely returns, and its RSS drifts up under load.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env.update(LOG_LOCATION=str(log_dir), METRICS_LOCATION=str(log_dir), TMPDIR=tmp, TEMP=tmp)
    return env


def claim_run_dir(run_dir: Path) -> str:
    """The run folder's id: the one in its mark when leakseg serve created it, else (a new or empty
    folder) a new mark. Any other folder is the user's: ServeError, and nothing is written into it
    (TorchServe's config, key file and tmp/ would overwrite its files, and --stop deletes them)."""
    run_id = _owner_id(run_dir)
    if run_id:
        return run_id
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ServeError(f"run folder {run_dir} was not created by leakseg serve (no {OWNER_FILE} in it) and is not "
                         "empty; leakseg serve writes and later deletes files in its run folder, so it only takes a "
                         "new or empty one: pass another --run-dir (a folder from an older leakseg: remove it)")
    run_dir.mkdir(parents=True, exist_ok=True)
    run_id = secrets.token_hex(16)
    with open(run_dir / OWNER_FILE, "x") as mark:  # "x": never over a file that appeared meanwhile
        mark.write(run_id + "\n")
    return run_id


def _owner_id(run_dir: Path) -> Optional[str]:
    """The id in the run folder's mark; None when there is no valid mark (a link is no mark)."""
    mark = run_dir / OWNER_FILE
    try:
        if mark.is_symlink() or not mark.is_file():
            return None
        run_id = mark.read_text().strip()
    except OSError:
        return None
    return run_id if re.fullmatch(r"[0-9a-f]{32}", run_id) else None


def _refuse_if_running(run_dir: Path) -> None:
    try:
        server = Server.load(run_dir)
    except NotStarted:
        return
    if server.is_running():
        raise ServeError(f"TorchServe is already running from {run_dir} (pid {server.pid}); "
                         "`leakseg serve --stop` first")
    (run_dir / STATE_FILE).unlink(missing_ok=True)  # left over by a crash


class Stopped(BaseException):
    """Raised in the main thread by SIGTERM/SIGINT once :func:`install_stop_signals` ran."""


def install_stop_signals() -> None:
    """Foreground mode: SIGTERM (docker stop) and SIGINT (Ctrl-C) become :class:`Stopped`, so
    whatever is running - start() waiting for readiness, or serve_forever() - stops TorchServe."""

    def _raise(signum, frame):
        raise Stopped(signum)

    signal.signal(signal.SIGTERM, _raise)
    signal.signal(signal.SIGINT, _raise)


def serve_forever(server: Server) -> int:
    """Wait on TorchServe until a signal stops it (0) or it exits on its own (1)."""
    install_stop_signals()
    try:
        server.process.wait()
    except Stopped:
        server.stop()
        return 0
    # The launcher exits 0 even when java dies: an exit nobody asked for is a failure.
    log.error("TorchServe exited on its own; see %s/ts_log.log", server.log_dir)
    server.stop()
    return 1


# --- helpers ----------------------------------------------------------------------------------


def _bearer(key: str) -> Dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


#: Command-line marks of TorchServe's processes: the launcher, the java frontend, the workers.
TORCHSERVE_MARKS = (LAUNCHER, "org.pytorch.serve.ModelServer", "ts/model_service_worker.py")


def _group_alive(pgid: int, process: Optional[subprocess.Popen]) -> bool:
    """Does the group still hold a live TorchServe process? (psutil: zombies would fool kill(2);
    the command line check keeps a reused pid from looking like TorchServe.)"""
    import psutil

    if process is not None:
        process.poll()  # reap our own child
    for proc in psutil.process_iter(["status", "cmdline"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(proc.pid) != pgid:
                continue
        except (OSError, psutil.Error):
            continue
        command = " ".join(proc.info["cmdline"] or ())
        if any(mark in command for mark in TORCHSERVE_MARKS):
            return True
    return False


def log_tail(log_dir: PathLike, name: str = "ts_log.log", lines: int = 30) -> str:
    path = Path(log_dir) / name
    if not path.is_file():
        return f"({path} not written)"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
