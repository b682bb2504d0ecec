"""End to end through a real TorchServe on loopback (tests/support/torchserve_fixture.py) serving the tiny exported model.

Results are compared with the in-process Predictor (and `leakseg predict`) on the same frames:
the service must add transport, batching and errors, and change nothing else.
"""

import base64
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone

import numpy as np
import psutil
import pytest
import requests
from PIL import Image

from leakseg.serving import torchserve_process as serve
from leakseg.inference.manifest import extract_archive
from leakseg.schema import ClipResult, ErrorResponse, ModelDescription
from support.torchserve_fixture import loopback_overrides

TIMEOUT = 180  # seconds per request: 2 shared cores, a busy machine


# --- helpers -------------------------------------------------------------------------------------


def clip(seed, t=3, h=40, w=56, dtype=np.uint8, channels=0):
    rng = np.random.default_rng(seed)
    shape = (h, w, channels) if channels else (h, w)
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1000.0}[dtype]
    base = rng.random(shape) * top
    return [np.clip(base + rng.normal(0, top / 12, shape), 0, top).astype(dtype) for _ in range(t)]


def png(frame) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    return buf.getvalue()


def frame_parts(frames):
    return [(f"frame_{i:04d}", (f"f{i}.png", png(f), "image/png")) for i, f in enumerate(frames)]


def post(served, files=None, data=None, json_body=None, headers=None):
    headers = {**served.auth, **(headers or {})}
    return requests.post(served.prediction_url, files=files, data=data, json=json_body, headers=headers,
                         timeout=TIMEOUT)


def comparable(result) -> dict:
    data = result.model_dump() if isinstance(result, ClipResult) else ClipResult.model_validate(result).model_dump()
    return {k: v for k, v in data.items() if k not in ("timings", "request_id")}


def assert_same_result(response, expected: ClipResult):
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]  # TorchServe's id, in the body too
    assert comparable(body) == comparable(expected)


#: Options under which the random test model's masks are neither empty nor full.
NO_OPENING = {"opening_kernel": 0}


def nontrivial(result: ClipResult) -> bool:
    masks = result.masks()
    return bool(masks.any() and not masks.all())


# --- request forms -------------------------------------------------------------------------------


def test_describe_returns_the_prompts_and_limits(served, predictor):
    response = post(served, json_body={"describe": True})
    assert response.status_code == 200, response.text
    got = ModelDescription.model_validate(response.json())
    want = predictor.describe()
    assert got.model_dump(exclude={"runtime"}) == want.model_dump(exclude={"runtime"})
    assert got.available_prompts == ["white steam", "floating steam", "billowing smoke", "flowing smoke",
                                     "gas plume", "vapour cloud"]


def test_multipart_frames_equal_in_process_and_leakseg_predict(served, predictor, onnx_archive, tmp_path):
    frames = clip(0, t=4)
    expected = predictor.predict(frames, options=NO_OPENING)
    assert nontrivial(expected)
    response = post(served, files=frame_parts(frames), data={"options": json.dumps(NO_OPENING)})
    assert_same_result(response, expected)

    paths = []
    for i, f in enumerate(frames):
        paths.append(tmp_path / f"f{i}.png")
        paths[-1].write_bytes(png(f))
    cli = subprocess.run([sys.executable, "-m", "leakseg.cli", "predict", "--archive", str(onnx_archive),
                          "--device", "cpu", "--opening-kernel", "0", *map(str, paths)],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr
    assert comparable(json.loads(cli.stdout)) == comparable(response.json())


def test_frames_are_ordered_by_number_not_by_part_order(served, predictor):
    frames = clip(1, t=3)
    parts = frame_parts(frames)
    response = post(served, files=[parts[2], parts[0], parts[1]])
    assert_same_result(response, predictor.predict(frames))


def test_json_form(served, predictor):
    frames = clip(2, t=3)
    body = {"frames": [base64.b64encode(png(f)).decode() for f in frames], "options": {"threshold": 0.6}}
    assert_same_result(post(served, json_body=body), predictor.predict(frames, options={"threshold": 0.6}))


@pytest.mark.parametrize("dtype, channels, suffix", [(np.uint16, 0, "npy"), (np.float32, 3, "npz"),
                                                     (np.uint8, 3, "npy")])
def test_clip_array(served, predictor, dtype, channels, suffix):
    frames = clip(3, t=3, dtype=dtype, channels=channels)
    buf = io.BytesIO()
    if suffix == "npy":
        np.save(buf, np.stack(frames))
    else:
        np.savez_compressed(buf, clip=np.stack(frames))
    response = post(served, files=[("clip", (f"clip.{suffix}", buf.getvalue(), "application/octet-stream"))])
    assert_same_result(response, predictor.predict(frames))


def test_16_bit_png_frames(served, predictor):
    frames = clip(4, t=3, dtype=np.uint16)
    assert_same_result(post(served, files=frame_parts(frames)), predictor.predict(frames))


def test_prompts_and_options(served, predictor):
    frames = clip(5, t=3)
    prompts = ["gas plume", "vapour cloud", "white steam", "flowing smoke"]
    options = {"threshold": 0.4, "opening_kernel": 0, "return_probabilities": True, "probability_size": 16}
    response = post(served, files=frame_parts(frames),
                    data={"prompts": json.dumps(prompts), "options": json.dumps(options)})
    expected = predictor.predict(frames, prompts, options)
    assert expected.model.prompts == prompts and expected.frames[0].probability is not None
    assert_same_result(response, expected)


# --- errors --------------------------------------------------------------------------------------

FRAMES = clip(6, t=3)
GOOD = frame_parts(FRAMES)
BIG = np.zeros((2048, 2049), np.uint8)


def _npy(frames):
    buf = io.BytesIO()
    np.save(buf, np.stack(frames))
    return buf.getvalue()


ERROR_CASES = {
    "no frames": (dict(files=[("options", (None, "{}"))]), "no_frames", 400, "frames"),
    "undecodable frame": (dict(files=GOOD[:2] + [("frame_0002", ("x.png", b"not an image", "image/png"))]),
                          "frame_decode_error", 400, "frame_0002"),
    "size mismatch": (dict(files=GOOD[:2] + frame_parts([np.zeros((8, 8), np.uint8)] * 3)[2:]),
                      "frame_size_mismatch", 400, "frame_0002"),
    "too few frames": (dict(files=GOOD[:2]), "too_few_frames", 400, "frames"),
    "too many frames": (dict(files=frame_parts([FRAMES[0]] * 33)), "too_many_frames", 413, "frames"),
    "frame too large": (dict(files=frame_parts([BIG] * 3)), "frame_too_large", 413, "frame_0000"),
    "unknown prompt": (dict(files=GOOD, data={"prompts": '["gas leak", "a", "b", "c"]'}),
                       "unknown_prompt", 400, "prompts"),
    "wrong prompt count": (dict(files=GOOD, data={"prompts": '["gas plume"]'}), "wrong_prompt_count", 400,
                           "prompts"),
    "bad option value": (dict(files=GOOD, data={"options": '{"threshold": 2}'}), "invalid_options", 400,
                         "options.threshold"),
    "unknown option": (dict(files=GOOD, data={"options": '{"treshold": 0.2}'}), "invalid_options", 400,
                       "options.treshold"),
    "options not JSON": (dict(files=GOOD, data={"options": "threshold=0.2"}), "invalid_options", 400, "options"),
    "text/plain": (dict(data=b"hello", headers={"Content-Type": "text/plain"}), "unsupported_content_type",
                   415, "Content-Type"),
    "form-urlencoded": (dict(data={"frames": "x"}), "unsupported_content_type", 415, "Content-Type"),
    "JSON not an object": (dict(json_body=["a"]), "invalid_body", 400, "body"),
    "malformed JSON": (dict(data=b'{"frames": [', headers={"Content-Type": "application/json"}),
                       "invalid_body", 400, "body"),
    "clip and frames": (dict(files=GOOD + [("clip", ("c.npy", _npy(FRAMES), "application/octet-stream"))]),
                        "invalid_body", 400, "clip"),
    "unknown part": (dict(files=GOOD + [("image", ("i.png", png(FRAMES[0]), "image/png"))]),
                     "invalid_body", 400, "image"),
    "bad base64": (dict(json_body={"frames": ["%%%"]}), "frame_decode_error", 400, "frames[0]"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES), ids=list(ERROR_CASES))
def test_error_responses(served, case):
    kwargs, code, status, field = ERROR_CASES[case]
    response = post(served, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = ErrorResponse.model_validate(response.json()).error
    assert (error.code.value, error.field) == (code, field)
    assert error.request_id == response.headers["x-request-id"]
    if code == "unknown_prompt":  # the message lists what is available
        assert "gas plume" in error.message and "vapour cloud" in error.message
    if code == "frame_decode_error" and field.startswith("frame_"):
        assert field in error.message


# --- batching and concurrency --------------------------------------------------------------------


def _send_together(served, bodies):
    """POST every (files, data) body at the same moment; the responses in order."""
    barrier = threading.Barrier(len(bodies))

    def send(body):
        barrier.wait()
        return post(served, files=body[0], data=body[1])

    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(send, bodies))


def _batch_lines(served, request_ids, timeout=15.0):
    """The handler's "batch of N request(s): ids" log lines naming any of request_ids."""
    deadline = time.monotonic() + timeout
    while True:
        log = (served.log_dir / "model_log.log").read_text(errors="replace")
        lines = [line for line in log.splitlines() if "batch of" in line and any(r in line for r in request_ids)]
        if len(lines) >= 1 or time.monotonic() > deadline:
            return lines
        time.sleep(0.5)


def test_a_bad_request_in_a_batch_fails_alone(served, predictor):
    goods = [clip(10 + i, t=3) for i in range(3)]
    expected = predictor.run([predictor.prepare(g, predictor.settings(options=NO_OPENING)) for g in goods])
    bad = (GOOD[:2] + [("frame_0002", ("x.png", b"junk", "image/png"))], None)
    batched = False
    for _ in range(3):  # concurrent requests nearly always share a batch (maxBatchDelay 200 ms); retry if not
        goods_bodies = [(frame_parts(g), {"options": json.dumps(NO_OPENING)}) for g in goods]
        responses = _send_together(served, [bad] + goods_bodies)
        assert responses[0].status_code == 400
        assert responses[0].json()["error"]["code"] == "frame_decode_error"
        for response, want in zip(responses[1:], expected):
            assert_same_result(response, want)
        bad_id = responses[0].headers["x-request-id"]
        good_ids = [r.headers["x-request-id"] for r in responses[1:]]
        lines = _batch_lines(served, [bad_id])
        if any(g in line for line in lines for g in good_ids):
            batched = True
            break
    assert batched, "the bad request never shared a batch with a good one"


def test_sixteen_concurrent_clients_get_their_own_results(served, predictor):
    clips = [clip(100 + i, t=3, h=32 + i, w=48) for i in range(16)]  # distinct sizes: a mix-up cannot pass
    expected = predictor.run([predictor.prepare(c, predictor.settings(options=NO_OPENING)) for c in clips])
    assert all(nontrivial(e) for e in expected)
    responses = _send_together(served, [(frame_parts(c), {"options": json.dumps(NO_OPENING)}) for c in clips])
    for response, want in zip(responses, expected):
        assert_same_result(response, want)
    assert len({r.headers["x-request-id"] for r in responses}) == 16


# --- auth, ports, metrics ------------------------------------------------------------------------


def test_requests_without_the_inference_key_get_torchserves_auth_error(served):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {served.management_token}"}):
        response = requests.post(served.prediction_url, files=GOOD, headers=headers, timeout=TIMEOUT)
        assert response.status_code in (400, 401), response.text
        body = response.json()
        assert body["type"] == "InvalidKeyException" and "clip" not in body and "frames" not in body
    assert requests.get(f"{served.inference_url}/ping", timeout=30).status_code in (400, 401)
    ping = requests.get(f"{served.inference_url}/ping", headers=served.auth, timeout=30)
    assert ping.status_code == 200 and ping.json()["status"] == "Healthy"


def test_keys_live_for_the_configured_year_not_torchserves_hour(served):
    keys = json.loads(served.key_file.read_text())
    for kind in ("inference", "management"):
        expires = datetime.fromisoformat(keys[kind]["expiration time"][:19]).replace(tzinfo=timezone.utc)
        assert expires - datetime.now(timezone.utc) > timedelta(days=364)


def _torchserve_listening(served):
    """(ip, port) of every listening TCP socket of TorchServe's processes (its process group)."""
    found = set()
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) != served.server.pid:
                continue
            found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN}
        except (OSError, psutil.Error):
            continue
    return found


def _port(url):
    return int(url.rsplit(":", 1)[1])


def test_every_port_listens_on_loopback_only(served):
    listening = _torchserve_listening(served)
    ports = {port for _, port in listening}
    for url in (served.inference_url, served.management_url, served.metrics_url):
        assert _port(url) in ports
    # Java reports IPv4 sockets as IPv4-mapped IPv6 (::ffff:127.0.0.1)
    assert {ip.removeprefix("::ffff:") for ip, _ in listening} == {"127.0.0.1"}
    config = serve.read_properties(served.config_file)
    for key in ("inference_address", "management_address", "metrics_address"):
        assert config[key].startswith("http://127.0.0.1:")
    assert config["disable_token_authorization"] == "false" and config["enable_model_api"] == "false"

    others = [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
              if a.family == socket.AF_INET and not a.address.startswith("127.")]
    for address in others:  # the machine's other addresses refuse connections to these ports
        for url in (served.management_url, served.metrics_url, served.inference_url):
            with pytest.raises(OSError):
                socket.create_connection((address, _port(url)), timeout=5).close()


def _bytes(java_size: str) -> int:
    """A JVM size ("4g", "512m", "1024") in bytes."""
    unit = java_size[-1].lower()
    if unit.isdigit():
        return int(java_size)
    return int(java_size[:-1]) * 1024 ** ("kmg".index(unit) + 1)


def test_the_frontend_heap_is_bounded_and_holds_a_batch_of_the_largest_requests(served, tmp_path):
    """The JVM runs with the configured ceilings (not a quarter of whatever RAM the host has), and they
    hold 4 bodies of max_request_size, the largest batch the archive's model-config.yaml allows."""
    config = serve.read_properties(served.config_file)
    repo = serve.read_properties(serve.REPO_CONFIG)
    assert config["vmargs"] == repo["vmargs"] == serve.FRONTEND_VMARGS
    (java,) = served.server.processes()["frontend"]
    args = java.cmdline()
    limits = {}
    for flag in ("-Xmx", "-XX:MaxDirectMemorySize="):
        values = [a[len(flag):] for a in args if a.startswith(flag)]
        assert len(values) == 1, (flag, args)
        limits[flag] = _bytes(values[0])
    largest_batch = 4 * int(config["max_request_size"])
    assert all(largest_batch <= v <= 2 * largest_batch for v in limits.values()), limits
    # a config of the user's without vmargs gets the same bound
    (tmp_path / "config.properties").write_text("inference_address=http://127.0.0.1:8080\n")
    assert serve.effective_properties(tmp_path / "config.properties", tmp_path)["vmargs"] == serve.FRONTEND_VMARGS


def _metric(text, name, **labels):
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total, found = 0.0, False
    for line in text.splitlines():
        match = re.match(rf"{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total, found = total + float(match.group(2)), True
    return total if found else None


def _metrics_until(served, predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"{served.metrics_url}/metrics", timeout=30).text
        if predicate(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.5)


def test_metrics_endpoint_shows_the_handler_metrics(served, predictor):
    before = requests.get(f"{served.metrics_url}/metrics", timeout=30).text
    frames_before = _metric(before, "LeakSegFrames", ModelName=served.model) or 0.0
    errors_before = _metric(before, "LeakSegErrors", ModelName=served.model, Code="too_few_frames") or 0.0
    frames = clip(7, t=5)
    expected = predictor.predict(frames)
    assert post(served, files=frame_parts(frames)).status_code == 200
    assert post(served, files=frame_parts(frames[:2])).status_code == 400

    def updated(text):
        return ((_metric(text, "LeakSegFrames", ModelName=served.model) or 0) >= frames_before + 5
                and (_metric(text, "LeakSegErrors", ModelName=served.model, Code="too_few_frames") or 0)
                >= errors_before + 1)

    text = _metrics_until(served, updated)
    assert _metric(text, "LeakSegFrames", ModelName=served.model) == frames_before + 5
    assert _metric(text, "LeakSegErrors", ModelName=served.model, Code="too_few_frames") == errors_before + 1
    assert _metric(text, "LeakSegLeakFrames", ModelName=served.model) >= len(expected.clip.leak_frames)
    for stage in ("decode", "model", "postprocess", "total"):
        assert _metric(text, "LeakSegStageLatency_count", ModelName=served.model, Stage=stage) >= 1
        assert _metric(text, "LeakSegStageLatency_sum", ModelName=served.model, Stage=stage) > 0


# --- the handler in process: unexpected errors -----------------------------------------------------


class PoisonGraph:
    """The real graph, except that it fails on a (near) constant frame (a stand-in for a runtime crash)."""

    def __init__(self, graph):
        self.graph, self.name, self.device = graph, graph.name, graph.device

    def __call__(self, frames, text, neighbours):
        if any(float(f.reshape(3, -1).std(axis=1).max()) < 0.01 for f in frames):
            raise RuntimeError("poisoned frame")
        return self.graph(frames, text, neighbours)


def test_unexpected_errors_are_500_with_a_logged_request_id_and_spare_the_batch(onnx_archive, predictor, caplog,
                                                                               tmp_path):
    """The handler in process, with TorchServe's own Context class (no server needed)."""
    from ts.context import Context, RequestProcessor

    from leakseg.serving.handler import LeakSegHandler

    model_dir = extract_archive(onnx_archive, tmp_path / "model")
    context = Context("tiny", str(model_dir), None, 2, None, "0.12.0")
    handler = LeakSegHandler()
    handler.initialize(context)
    handler.predictor.graph = PoisonGraph(handler.predictor.graph)
    good = clip(8, t=3)
    poison = [np.full((40, 56), 7, np.uint8)] * 3
    parts = [{p: v[1] for p, v in frame_parts(frames)} for frames in (good, poison)]
    context.request_ids = {0: "good-id", 1: "poison-id"}
    context.request_processor = [RequestProcessor({"Content-Type": "multipart/form-data; boundary=b"})
                                 for _ in parts]
    with caplog.at_level("INFO", logger="leakseg.serving.handler"):
        bodies = handler.handle(parts, context)
    assert context.get_response_status(0)[0] == 200
    assert comparable(json.loads(bodies[0])) == comparable(predictor.predict(good))
    assert context.get_response_status(1) == (500, "Internal Server Error")
    error = json.loads(bodies[1])["error"]
    assert (error["code"], error["request_id"]) == ("internal_error", "poison-id")
    logged = [r for r in caplog.records if "poison-id" in r.getMessage() and r.exc_info]
    assert logged and "poisoned frame" in str(logged[0].exc_info[1])


# --- the `leakseg serve` command -------------------------------------------------------------------


def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "leakseg.cli", "serve", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.serve  # starts a TorchServe of its own
def test_leakseg_serve_starts_checks_prints_the_token_and_stops(onnx_archive, tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / "tiny.mar").symlink_to(onnx_archive)
    common = ["--run-dir", str(tmp_path / "run")]
    overrides = [f"--set={k}={v}" for k, v in loopback_overrides().items()]
    started = _cli("--model-store", str(store), "--log-dir", str(tmp_path / "logs"), *common, *overrides)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        server = serve.Server.load(tmp_path / "run")
        assert f"POST {server.prediction_url('tiny')}" in started.stdout
        token = _cli("--print-token", *common).stdout.strip()
        assert token == json.loads(server.key_file.read_text())["inference"]["key"]
        assert _cli("--check", *common).returncode == 0
        rotated = _cli("--rotate-token", *common).stdout.strip()
        assert rotated and rotated != token and rotated == server.inference_key
        ping = f"{server.inference_url}/ping"
        assert requests.get(ping, headers={"Authorization": f"Bearer {token}"}, timeout=30).status_code == 400
        assert requests.get(ping, headers={"Authorization": f"Bearer {rotated}"}, timeout=30).status_code == 200
        again = _cli("--model-store", str(store), *common)
        assert again.returncode == 1 and "already running" in again.stderr
    finally:
        stopped = _cli("--stop", *common)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not serve.Server(server.pid, tmp_path, tmp_path, [], "", "", "").is_running()
    assert not server.key_file.exists()
    assert _cli("--check", *common).returncode == 1  # nothing to check any more


@pytest.mark.serve  # starts a TorchServe of its own
def test_leakseg_serve_foreground_stops_on_sigterm(onnx_archive, tmp_path):
    """The container's CMD: stays attached, prints the URLs once ready, SIGTERM stops everything."""
    store = tmp_path / "store"
    store.mkdir()
    (store / "tiny.mar").symlink_to(onnx_archive)
    overrides = [f"--set={k}={v}" for k, v in loopback_overrides().items()]
    process = subprocess.Popen(
        [sys.executable, "-m", "leakseg.cli", "serve", "--foreground", "--model-store", str(store),
         "--run-dir", str(tmp_path / "run"), "--log-dir", str(tmp_path / "logs"), *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready = threading.Event()

    def drain():  # TorchServe's console log, then our "ready" lines; a full pipe would block java
        for line in process.stdout:
            if "TorchServe is ready" in line:
                ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert ready.wait(timeout=300), "no 'TorchServe is ready' line"
        server = serve.Server.load(tmp_path / "run")
        assert server.describe("tiny")["name"] == "tiny"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=120) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert not serve.Server(server.pid, tmp_path, tmp_path, [], "", "", "").is_running()


def test_leakseg_serve_refuses_an_empty_model_store(tmp_path):
    (tmp_path / "store").mkdir()
    result = _cli("--model-store", str(tmp_path / "store"), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1 and "no .mar archive" in result.stderr
    assert not (tmp_path / "run" / serve.STATE_FILE).exists()


# --- every registered model family, served side by side ------------------------------------------

@pytest.fixture(scope="module")
def every_family(family_archive, tmp_path_factory):
    """A TorchServe of its own serving each registered family's test archive under the archive's name
    (JVLGS as tiny, FGSTP as fgstp), each answering through the same handler, API and client."""
    from leakseg.model import family_names
    from support.torchserve_fixture import with_model_config

    root = tmp_path_factory.mktemp("every_family")
    store = root / "model_store"
    archives = [with_model_config(family_archive(name), store, batchSize=2, maxBatchDelay=50)
                for name in family_names()]
    server = serve.start(store, [f"{a.stem}={a.name}" for a in archives], serve.REPO_CONFIG, root / "logs",
                         root / "run", loopback_overrides(), timeout=300)
    try:
        yield server
    finally:
        server.stop()


def _post_to(server, model, body):
    return requests.post(server.prediction_url(model), json=body, timeout=TIMEOUT,
                         headers={"Authorization": f"Bearer {server.inference_key}"})


def _json_frames(frames):
    return [base64.b64encode(png(f)).decode() for f in frames]


@pytest.mark.serve  # starts a TorchServe of its own
def test_every_family_answers_its_own_requests(every_family, family, family_archive):
    from leakseg.inference.predictor import Predictor
    from leakseg.model import get_family
    from leakseg.schema import ClipOptions

    archive = family_archive(family)
    predictor = Predictor.from_archive(archive, device="cpu")
    described = _post_to(every_family, archive.stem, {"describe": True})
    assert described.status_code == 200, described.text
    d = described.json()
    assert d["name"] == archive.stem and d["family"] == family
    got = ModelDescription.model_validate(d)
    assert got.model_dump(exclude={"runtime"}) == predictor.describe().model_dump(exclude={"runtime"})
    published = ClipOptions(**get_family(family).published_postprocess)
    assert d["defaults"]["opening_kernel"] == published.opening_kernel
    if not get_family(family).takes_prompts:
        assert d["prompt_count"] == 0 and d["default_prompts"] == []
    frames = clip(20, t=5, h=48, w=64)
    response = _post_to(every_family, archive.stem, {"frames": _json_frames(frames)})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["model"]["name"] == archive.stem and result["model"]["family"] == family
    assert len(result["frames"]) == 5
    assert_same_result(response, predictor.predict(frames))  # the served result is the in-process archive's


@pytest.mark.serve  # starts a TorchServe of its own
def test_prompts_to_a_family_that_takes_none_get_the_documented_error(every_family, family, family_archive):
    from leakseg.model import get_family

    body = {"frames": _json_frames(clip(21, t=5, h=48, w=64)),
            "prompts": ["white steam", "floating steam", "billowing smoke", "flowing smoke"]}
    response = _post_to(every_family, family_archive(family).stem, body)
    if get_family(family).takes_prompts:  # the same prompts are fine for a family beside it that takes them
        assert response.status_code == 200, response.text
        return
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "prompts_not_supported" and error["field"] == "prompts"
    assert "takes no prompts" in error["message"]


@pytest.mark.serve  # starts a TorchServe of its own
def test_the_client_speaks_to_every_family(every_family, family, family_archive):
    from leakseg.client import InvalidInput, LeakSegClient
    from leakseg.model import get_family

    token = every_family.inference_key
    with LeakSegClient(every_family.inference_url, token=token, model=family_archive(family).stem) as client:
        assert client.describe().family == family
        result = client.segment(clip(22, t=5, h=48, w=64))
        assert result.model.family == family and result.masks().shape == (5, 48, 64)
        if not get_family(family).takes_prompts:
            with pytest.raises(InvalidInput) as err:
                client.segment(clip(22, t=5, h=48, w=64), prompts=["white steam"])
            assert err.value.code == "prompts_not_supported"
