"""`leakseg serve` touches nothing the user owns, reads config.properties as Java does, and loads only
an archive's own files.

Through the real parts: the `leakseg serve` command (a real TorchServe where a start is needed), Java's own
java.util.Properties as the judge of the .properties syntax, and the Predictor loader TorchServe's handler
runs on an extracted archive.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import psutil
import pytest

from leakseg.inference.manifest import MANIFEST_FILE, extract_archive
from leakseg.inference.predictor import Predictor
from leakseg.serving import torchserve_process as serve
from support.loopback import free_ports
from support.torchserve_fixture import loopback_overrides

JAVA = shutil.which("java")


def _cli(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "leakseg.cli", "serve", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _running_from(folder: Path) -> List[psutil.Process]:
    """Live processes whose working folder is ``folder`` (TorchServe's launcher and java run in the run folder)."""
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and proc.info["cwd"] == str(folder.resolve()):
            found.append(proc)
    return found


def _kill_left_over(folder: Path) -> None:
    """Kill what a failing test left running from ``folder`` (a TorchServe this test started)."""
    for proc in _running_from(folder):
        try:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _user_files(folder: Path) -> Dict[str, bytes]:
    """A user's folder the way leakseg serve once clobbered: its own tmp/, config and key file."""
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    files = {"tmp/notes.txt": b"the user's notes", "key_file.json": b'{"mine": true}',
             "config.properties": b"inference_address=http://127.0.0.1:1\n"}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return files


def _assert_untouched(folder: Path, files: Dict[str, bytes]) -> None:
    for name, data in files.items():
        assert (folder / name).read_bytes() == data, name
    assert not (folder / serve.STATE_FILE).exists() and not (folder / serve.OWNER_FILE).exists()


# --- state files that are not leakseg's ------------------------------------------------------------


def _plant_state(state_dir: Path, run_dir: Path, **extra) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    state = {"pid": 999999, "run_dir": str(run_dir), "log_dir": str(run_dir), "models": ["tiny=tiny.mar"],
             "inference_url": "http://127.0.0.1:1", "management_url": "http://127.0.0.1:1",
             "metrics_url": "http://127.0.0.1:1", **extra}
    (state_dir / serve.STATE_FILE).write_text(json.dumps(state))


def test_stop_refuses_a_state_file_naming_another_folder(tmp_path):
    """A planted .leakseg/serve/serve.json naming the user's folder: a plain `leakseg serve --stop` used to
    delete that folder's tmp/ and key_file.json."""
    victim = tmp_path / "victim"
    files = _user_files(victim)
    _plant_state(tmp_path / "work" / ".leakseg" / "serve", victim)
    stopped = _cli("--stop", cwd=tmp_path / "work")
    assert stopped.returncode == 1 and "names another run folder" in stopped.stderr, stopped.stdout + stopped.stderr
    _assert_untouched(victim, files)


def test_stop_refuses_a_state_file_without_the_folders_mark(tmp_path):
    """A state file in its own folder, but that folder was never made by leakseg serve (or the ids differ)."""
    run_dir = tmp_path / "run"
    files = _user_files(run_dir)
    _plant_state(run_dir, run_dir, run_id="0" * 32)
    stopped = _cli("--stop", "--run-dir", str(run_dir))
    assert stopped.returncode == 1 and "not written by leakseg serve" in stopped.stderr, stopped.stderr
    for name, data in files.items():
        assert (run_dir / name).read_bytes() == data, name
    assert (run_dir / serve.STATE_FILE).exists()  # not ours: left as it is


@pytest.mark.parametrize("where", ["cwd", "home"])
def test_serve_refuses_a_user_folder_as_run_dir(onnx_archive, tmp_path, where):
    """`--run-dir .` or `~`: the user's own config.properties, tmp/ and key file must survive, and no
    TorchServe starts (it would write its key file and config there, and --stop would delete them)."""
    user = tmp_path / "user"
    files = _user_files(user)
    store = user / "model_store"
    store.mkdir()
    (store / "tiny.mar").symlink_to(onnx_archive)
    overrides = [f"--set={k}={v}" for k, v in loopback_overrides().items()]
    run_dir = "." if where == "cwd" else str(user)  # the shell expands ~ to the home folder's path
    try:
        started = _cli("--model-store", "model_store", "--run-dir", run_dir, "--config", "config.properties",
                       "--log-dir", str(tmp_path / "logs"), *overrides, cwd=user)
        assert started.returncode == 1, started.stdout + started.stderr
        assert "was not created by leakseg serve" in started.stderr
        assert not _running_from(user)
    finally:
        _kill_left_over(user)
    _assert_untouched(user, files)


# --- config.properties as Java reads it ------------------------------------------------------------

#: Java's .properties syntax at its corners: separators, continuations, escapes, comments, line endings.
TRICKY_PROPERTIES = (
    "# a comment = not a key\n"
    "! another comment\n"
    "   indented = value with trailing spaces  \n"
    "colon:x\n"
    "space   y z\n"
    "key\\ with\\ spaces\\:and\\=signs = v\n"
    "continued = a, \\\n"
    "            b, \\\n"
    "   # not a comment here\n"
    "escapes = tab\\there \\u00e9\\u20ac \\\\ and \\q\n"
    "even.backslashes = ends\\\\\\\\\n"
    "empty\n"
    "dup = first\n"
    "dup = second\n"
    "\\#not.a.comment = 1\n"
    "url=file://.*/model_store/[^/]+\\\\.mar\n"
    "crlf = one\r\n"
    "cr = two\r"
    "latin1 = caf\xe9\n"
    "last = \\\n"
)

READ_WITH_JAVA = """
import java.io.FileInputStream;
import java.nio.charset.StandardCharsets;
import java.util.Base64;
import java.util.Properties;

public class ReadProperties {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) { props.load(in); }  // as TorchServe does
        Base64.Encoder b64 = Base64.getEncoder();
        for (String key : props.stringPropertyNames()) {
            System.out.println(b64.encodeToString(key.getBytes(StandardCharsets.UTF_8)) + " "
                + b64.encodeToString(props.getProperty(key).getBytes(StandardCharsets.UTF_8)));
        }
    }
}
"""


def _java_reads(path: Path, tmp_path: Path) -> Dict[str, str]:
    source = tmp_path / "ReadProperties.java"
    source.write_text(READ_WITH_JAVA)
    out = subprocess.run([JAVA, str(source), str(path)], capture_output=True, text=True, timeout=120, check=True)
    pairs = (line.split(" ") for line in out.stdout.splitlines())
    return {base64.b64decode(k).decode(): base64.b64decode(v).decode() for k, v in pairs}


@pytest.mark.skipif(JAVA is None, reason="no java (TorchServe's runtime) on PATH")
def test_properties_are_read_and_written_as_java_reads_them(tmp_path):
    path = tmp_path / "tricky.properties"
    path.write_bytes(TRICKY_PROPERTIES.encode("latin-1"))
    ours = serve.read_properties(path)
    assert ours == _java_reads(path, tmp_path)
    assert ours["continued"] == "a, b, # not a comment here" and ours["colon"] == "x"
    # what leakseg writes, Java reads back unchanged, odd keys and values included
    ours.update({" lead": " space", "unicode": "\u00e9\u20ac\U0001F600", "newline": "a\nb", "#hash": "!"})
    written = serve.write_properties(ours, tmp_path / "written.properties")
    assert _java_reads(written, tmp_path) == ours == serve.read_properties(written)


def _colon_form(properties: str, values: Dict[str, str], drop: str) -> str:
    """The repository's config rewritten as ``key: value`` lines (comments kept), with ``values`` set,
    ``drop`` and vmargs left out."""
    lines = []
    for line in properties.splitlines():
        key, sep, value = line.partition("=")
        if line.startswith("#") or not sep:
            lines.append(line)
        elif key not in (drop, "vmargs"):
            lines.append(f"{key}: {values.get(key, value)}")
    return "\n".join(lines) + "\n"


@pytest.mark.serve  # starts a TorchServe of its own
def test_a_config_in_colon_form_without_metrics_address_starts_and_stops_cleanly(onnx_archive, tmp_path):
    """`key: value` lines, a continued vmargs and no metrics_address: TorchServe gets what the file says,
    leakseg knows every address it listens on, and `--stop` leaves no orphan (a missing address used to
    fail after the launch, before the state file, so --stop could not find that TorchServe)."""
    inference, management, grpc_inference, grpc_management, worker = free_ports(5)
    ports = {"inference_address": f"http://127.0.0.1:{inference}", "grpc_inference_port": str(grpc_inference),
             "management_address": f"http://127.0.0.1:{management}", "grpc_management_port": str(grpc_management),
             "initial_worker_port": str(worker)}
    vmargs = serve.read_properties(serve.REPO_CONFIG)["vmargs"]
    config = tmp_path / "config.properties"
    config.write_text(_colon_form(serve.REPO_CONFIG.read_text(), ports, drop="metrics_address")
                      + "vmargs   " + vmargs.replace(" -XX:", " \\\n    -XX:") + "\n")  # space separator, continued
    store, run_dir = tmp_path / "store", tmp_path / "run"
    store.mkdir()
    (store / "tiny.mar").symlink_to(onnx_archive)
    common = ["--run-dir", str(run_dir)]
    try:
        started = _cli("--model-store", str(store), "--config", str(config), "--log-dir", str(tmp_path / "logs"),
                       *common)
        server = serve.Server.load(run_dir) if started.returncode == 0 else None
        assert server is not None, started.stdout + started.stderr
        assert server.inference_url == f"http://127.0.0.1:{inference}"
        assert server.metrics_url == "http://127.0.0.1:8082"  # TorchServe's default, now explicit
        (java,) = server.processes()["frontend"]
        assert set(vmargs.split()) <= set(java.cmdline())
        stopped = _cli("--stop", *common)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stderr
        assert not _running_from(run_dir)
        assert sorted(p.name for p in run_dir.iterdir()) == [serve.OWNER_FILE, "config.properties"]
    finally:
        _kill_left_over(run_dir)


# --- archives: only their own files --------------------------------------------------------------


def _repack(model_dir: Path, mar: Path) -> Path:
    with zipfile.ZipFile(mar, "w") as zf:
        for path in model_dir.iterdir():
            zf.write(path, path.name)
    return mar


@pytest.mark.parametrize("field, name", [("graph_file", "../outside/graph.onnx"),
                                         ("graph_file", "{outside}/graph.onnx"),
                                         ("prompt_bank_file", "../outside/prompt_bank.safetensors"),
                                         ("prompt_bank_file", "sub/../../outside/prompt_bank.safetensors")])
def test_manifest_names_leading_outside_the_archive_are_refused(onnx_archive, tmp_path, field, name):
    """What TorchServe's handler loads (Predictor.from_model_dir on the extracted archive) and what
    `leakseg predict --archive` loads: a manifest naming a file outside the archive used to load it."""
    model_dir = extract_archive(onnx_archive, tmp_path / "model")
    outside = tmp_path / "outside"
    outside.mkdir()
    (model_dir / "sub").mkdir()  # so that sub/../.. resolves as a path
    manifest = json.loads((model_dir / MANIFEST_FILE).read_text())
    shutil.copy(model_dir / manifest[field], outside / Path(name).name)  # a valid file, only in the wrong place
    manifest[field] = name.format(outside=outside)
    (model_dir / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not a plain file name"):
        Predictor.from_model_dir(model_dir, device="cpu")
    with pytest.raises(ValueError, match="not a plain file name"):
        Predictor.from_archive(_repack(model_dir, tmp_path / "bad.mar"), device="cpu")


def test_an_archive_file_linked_out_of_the_archive_is_refused(onnx_archive, tmp_path):
    model_dir = extract_archive(onnx_archive, tmp_path / "model")
    graph = json.loads((model_dir / MANIFEST_FILE).read_text())["graph_file"]
    shutil.move(model_dir / graph, tmp_path / graph)
    (model_dir / graph).symlink_to(tmp_path / graph)
    with pytest.raises(ValueError, match="leads outside it"):
        Predictor.from_model_dir(model_dir, device="cpu")


def test_every_body_limit_is_the_contracts_largest_request():
    """config.properties, the KServe layout and `leakseg kserve` refuse bodies at one size: the largest clip the
    contract admits (io.frames.MAX_REQUEST_BYTES), so no server refuses what another accepts."""
    from leakseg.export.kserve_layout import config_properties
    from leakseg.io.frames import MAX_CLIP_BYTES, MAX_REQUEST_BYTES

    repo_config = Path(__file__).resolve().parents[1] / "config.properties"
    assert int(serve.read_properties(repo_config)["max_request_size"]) == MAX_REQUEST_BYTES > MAX_CLIP_BYTES + 128
    assert f"max_request_size={MAX_REQUEST_BYTES}" in config_properties("m", "1.0", "m.mar").splitlines()
    from leakseg.commands import kserve as kserve_command
    import argparse

    parser = argparse.ArgumentParser()
    kserve_command.add_arguments(parser)
    assert parser.parse_args(["--archive", "x.mar"]).max_request_size == MAX_REQUEST_BYTES
