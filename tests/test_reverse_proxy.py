"""deploy/proxy: the real nginx (Debian's package) in front of the session's real TorchServe.

TorchServe cannot refuse a body early or time out an idle connection; the shipped proxy config must:
slowloris connections are closed within the proxy's timeouts, an oversized body is refused (413) before
TorchServe sees it, connections per client are bounded, and everything else passes through unchanged
(answers, TorchServe's own auth errors). nginx runs as an unprivileged foreground process with a config
rendered by deploy/proxy/render.py into a temporary folder, on a free loopback port.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Tuple

import numpy as np
import pytest
import requests

from leakseg.serving import torchserve_process as serve
from support.bad_requests import good_multipart
from support.loopback import free_ports

REPO = Path(__file__).resolve().parents[1]
RENDER = REPO / "deploy" / "proxy" / "render.py"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
#: The test proxy's timeouts (seconds): short, so slowloris tests take seconds, not the defaults' minutes.
HEADER_TIMEOUT, BODY_TIMEOUT = 3, 3
MAX_CONNS = 4
TIMEOUT = 180

pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (`make system-deps` installs "
                                                      "Debian's package: apt-get install nginx)")


@dataclass
class Proxy:
    url: str
    port: int
    state_dir: Path
    process: subprocess.Popen

    def access_log(self) -> List[str]:
        path = self.state_dir / "access.log"
        return path.read_text().splitlines() if path.exists() else []


def _unprivileged() -> dict:
    """Popen arguments that run nginx as nobody when the tests run as root (an unprivileged master
    needs no `user` directive and binds only the high loopback port it is given)."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


def _hand_over(root: Path, ids: dict) -> None:
    """The rendered folder to the user nginx runs as: it writes its pid, logs and body buffers there."""
    if ids:
        for path in [root, *root.rglob("*")]:
            os.chown(path, ids["user"], ids["group"])


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nginx not listening on {port} after {timeout} s")


def start_proxy(served, *render_args: str) -> Proxy:
    """nginx with the shipped template, rendered from the served TorchServe's effective config."""
    root = Path(tempfile.mkdtemp(prefix="leakseg-nginx-"))  # not under pytest's 0700 folders: nobody reads it
    root.chmod(0o755)
    (port,) = free_ports(1)
    state = root / "state"
    upstream = served.inference_url.removeprefix("http://")
    subprocess.run([sys.executable, str(RENDER), "--out", str(root / "nginx.conf"), "--config", str(served.config_file),
                    "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--state-dir", str(state),
                    "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
                    "--max-conns", str(MAX_CONNS), *render_args], check=True, capture_output=True, timeout=60)
    ids = _unprivileged()
    _hand_over(root, ids)
    process = subprocess.Popen([NGINX, "-p", str(root), "-c", str(root / "nginx.conf"), "-e", str(state / "error.log"),
                                "-g", "daemon off;"], **ids)
    try:
        _wait_listening(port, process)
    except RuntimeError:
        stop_proxy(Proxy("", port, state, process))
        raise
    return Proxy(f"http://127.0.0.1:{port}", port, state, process)


def stop_proxy(proxy: Proxy) -> None:
    proxy.process.terminate()
    try:
        proxy.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proxy.process.kill()
        proxy.process.wait()
    shutil.rmtree(proxy.state_dir.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def proxy(served):
    running = start_proxy(served)
    yield running
    stop_proxy(running)


# --- helpers --------------------------------------------------------------------------------------


def _frames(seed: int, count: int = 3) -> List[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40, 56), dtype=np.uint8) for _ in range(count)]


def _predictions_path(served) -> str:
    return served.prediction_url.removeprefix(served.inference_url)


def _open_slow(proxy: Proxy, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=30)
    sock.sendall(head)
    return sock


def _seconds_until_closed(sock: socket.socket, limit: float) -> Tuple[float, bytes]:
    """Seconds until the peer closes (EOF or reset), and what it sent before; ``limit`` if it never does."""
    started, received = time.monotonic(), b""
    sock.settimeout(0.2)
    while time.monotonic() - started < limit:
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except ConnectionResetError:  # reset_timedout_connection: the proxy frees the connection with RST
            break
        if not data:
            break
        received += data
    return time.monotonic() - started, received


def _comparable(response: requests.Response) -> dict:
    return {k: v for k, v in response.json().items() if k not in ("timings", "request_id")}


# --- the rendered config --------------------------------------------------------------------------


def test_the_body_limit_is_the_contracts_max_request_size(proxy, served):
    conf = (proxy.state_dir.parent / "nginx.conf").read_text()
    limit = int(serve.read_properties(served.config_file)["max_request_size"])
    assert f"client_max_body_size {limit};" in conf
    assert "proxy_request_buffering on;" in conf
    # the shipped defaults render to a config nginx accepts
    out = proxy.state_dir.parent / "defaults.conf"
    subprocess.run([sys.executable, str(RENDER), "--out", str(out), "--state-dir", str(proxy.state_dir.parent / "d")],
                   check=True, capture_output=True, timeout=60)
    checked = subprocess.run([NGINX, "-t", "-p", str(out.parent), "-c", str(out), "-e", "stderr"],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


# --- what passes through --------------------------------------------------------------------------


def test_a_clip_gets_the_same_answer_through_the_proxy_as_direct(proxy, served):
    wire = good_multipart(_frames(0))
    headers = {**wire.headers, **served.auth}
    direct = requests.post(served.prediction_url, data=wire.body, headers=headers, timeout=TIMEOUT)
    proxied = requests.post(proxy.url + _predictions_path(served), data=wire.body, headers=headers, timeout=TIMEOUT)
    assert direct.status_code == proxied.status_code == 200, proxied.text
    assert _comparable(proxied) == _comparable(direct)
    assert proxied.headers["x-request-id"] == proxied.json()["request_id"]  # TorchServe's id, passed on


@pytest.mark.parametrize("auth", [None, "Bearer wrong"])
def test_torchserves_auth_errors_pass_through(proxy, served, auth):
    wire = good_multipart(_frames(1))
    headers = {**wire.headers, **({"Authorization": auth} if auth else {})}
    direct = requests.post(served.prediction_url, data=wire.body, headers=headers, timeout=TIMEOUT)
    proxied = requests.post(proxy.url + _predictions_path(served), data=wire.body, headers=headers, timeout=TIMEOUT)
    assert proxied.status_code == direct.status_code and direct.status_code in (400, 401)
    assert proxied.json()["type"] == direct.json()["type"] == "InvalidKeyException"


# --- what the proxy stops -------------------------------------------------------------------------


def test_an_oversized_body_is_refused_before_torchserve(proxy, served):
    """A Content-Length over the contract's limit: 413 at once, no byte of the body read, TorchServe
    never contacted (TorchServe itself would buffer up to max_request_size before looking at the token)."""
    limit = int(serve.read_properties(served.config_file)["max_request_size"])
    head = (f"POST {_predictions_path(served)} HTTP/1.1\r\nHost: leakseg\r\nContent-Type: application/json\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n").encode()
    sock = _open_slow(proxy, head)
    try:
        sock.settimeout(2)  # at once: the answer does not wait for the body
        answer = sock.recv(65536)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"type": "RequestTooLarge"' in answer
    (line,) = [entry for entry in proxy.access_log() if '" 413 ' in entry]
    assert line.endswith("upstream=-")  # answered by nginx alone


@pytest.mark.parametrize("stage", ["header", "body"])
def test_a_slowloris_connection_is_closed_within_the_proxy_timeout(proxy, served, stage):
    """Headers trickling in, or complete headers and one byte of a promised body: closed after the
    proxy's timeout. (Straight to TorchServe the same connection stayed open for more than 120 s.)"""
    head = f"POST {_predictions_path(served)} HTTP/1.1\r\nHost: leakseg\r\n".encode()
    if stage == "body":
        head += f"Authorization: Bearer {served.inference_token}\r\nContent-Length: 1000\r\n\r\n{{".encode()
    timeout = HEADER_TIMEOUT if stage == "header" else BODY_TIMEOUT
    sock = _open_slow(proxy, head)
    try:
        seconds, _ = _seconds_until_closed(sock, limit=timeout + 30)
    finally:
        sock.close()
    print(f"slowloris ({stage}): closed by the proxy after {seconds:.1f} s (timeout {timeout} s)")
    assert timeout - 0.5 <= seconds <= timeout + 3
    assert all(entry.endswith("upstream=-") for entry in proxy.access_log() if '" 408 ' in entry)  # never forwarded


def test_requests_in_progress_per_client_are_bounded(proxy, served):
    head = (f"POST {_predictions_path(served)} HTTP/1.1\r\nHost: leakseg\r\nContent-Length: 1000\r\n\r\n{{").encode()
    slow = [_open_slow(proxy, head) for _ in range(MAX_CONNS)]
    try:
        time.sleep(0.5)  # the proxy has read their heads: each holds a request in progress
        extra = requests.post(proxy.url + _predictions_path(served), json={"describe": True}, headers=served.auth,
                              timeout=TIMEOUT)
    finally:
        for sock in slow:
            sock.close()
    assert extra.status_code == 429 and extra.json()["type"] == "TooManyConnections", extra.text
    time.sleep(0.5)  # the closed connections are released
    again = requests.post(proxy.url + _predictions_path(served), json={"describe": True}, headers=served.auth,
                          timeout=TIMEOUT)
    assert again.status_code == 200, again.text


def test_the_optional_proxy_key(served, tmp_path):
    """--proxy-key-file: Proxy-Authorization is checked (401 here, TorchServe untouched) and TorchServe's
    own token in Authorization still passes through to TorchServe."""
    key_file = tmp_path / "proxy.key"
    key_file.write_text("s3cret-proxy_key\n")
    keyed = start_proxy(served, "--proxy-key-file", str(key_file))
    try:
        url = keyed.url + _predictions_path(served)
        body = {"describe": True}
        missing = requests.post(url, json=body, headers=served.auth, timeout=TIMEOUT)
        wrong = requests.post(url, json=body, headers={**served.auth, "Proxy-Authorization": "Bearer nope"},
                              timeout=TIMEOUT)
        proxy_key = {"Proxy-Authorization": "Bearer s3cret-proxy_key"}
        no_token = requests.post(url, json=body, headers=proxy_key, timeout=TIMEOUT)
        both = requests.post(url, json=body, headers={**served.auth, **proxy_key}, timeout=TIMEOUT)
        log = keyed.access_log()
    finally:
        stop_proxy(keyed)
    for refused in (missing, wrong):
        assert refused.status_code == 401 and refused.json()["type"] == "ProxyAuthenticationException"
    assert no_token.status_code in (400, 401) and no_token.json()["type"] == "InvalidKeyException"
    assert both.status_code == 200 and both.json()["name"] == served.model
    assert [entry.endswith("upstream=-") for entry in log] == [True, True, False, False]
