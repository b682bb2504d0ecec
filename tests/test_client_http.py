"""LeakSegClient against :class:`support.fake_service.FakeService`, a real HTTP server on 127.0.0.1: retry policy,
timeouts, auth refresh, ready(), segment_many order, the JSON form on the wire, and the `leakseg segment`
command. No mocks of requests.
"""

from __future__ import annotations

import argparse
import base64
import json
import socket
import threading
import time
from typing import List

import numpy as np
import pytest
from PIL import Image

from leakseg.client import (
    AuthError,
    ClipResult,
    ConnectionFailed,
    InvalidInput,
    LeakSegClient,
    ModelDescription,
    ModelNotFound,
    ModelNotReady,
    ServerBusy,
    ServiceError,
    Timeout,
)
from leakseg.schema import (
    ClipOptions,
    ErrorCode,
)

from support.fake_service import (  # noqa: F401
    CLIP, DESCRIPTION, OURS_400, TS_503, TS_NO_WORKER, TS_TOKEN, FakeService, answer_clip, canned_result, client_for,
    fail_then,
)

# =============================================================================================
# retries, timeouts, auth


def test_success_returns_typed_result_and_sends_auth_header():
    with FakeService(answer_clip) as service, client_for(service, token="secret") as client:
        result = client.segment(CLIP, ["gas leak"], threshold=0.4)
    assert isinstance(result, ClipResult) and result.leak_frames == [0, 1, 2]
    assert result.frames[1].area_pixels == 2 and result.frames[1].bbox is None
    assert result.masks().shape == (3, 6, 8)
    (received,) = service.received
    assert received.path == "/predictions/jvlgs"
    assert received.headers["Authorization"] == "Bearer secret"
    assert json.loads(received.parts["options"][2]) == {"threshold": 0.4}
    assert received.array().shape == (3, 6, 8)


def test_our_400_is_sent_exactly_once():
    with FakeService(lambda r, n: OURS_400) as service, client_for(service, retries=3) as client:
        with pytest.raises(InvalidInput) as info:
            client.segment(CLIP)
    assert service.count == 1
    error = info.value
    assert (error.code, error.field, error.status) == (ErrorCode.TOO_FEW_FRAMES, "frames", 400)
    assert error.request_id == "req-7"


@pytest.mark.parametrize("answer, expected", [
    (TS_503, ModelNotReady),
    ((503, {"code": 503, "type": "ServiceUnavailableException", "message": "job queue is full"}), ServerBusy),
])
def test_503_is_retried_then_raised(answer, expected):
    with FakeService(lambda r, n: answer) as service, client_for(service, retries=2) as client:
        with pytest.raises(expected):
            client.segment(CLIP)
    assert service.count == 3  # the first try and 2 retries


def test_503_then_success():
    with FakeService(fail_then(TS_503, 2)) as service, client_for(service, retries=3) as client:
        assert client.segment(CLIP).clip.frames == 3
    assert service.count == 3


@pytest.mark.parametrize("answer", [
    (500, {"error": {"code": "internal_error", "message": "boom", "request_id": "r1"}}),
    (503, {"code": 503, "type": "InternalServerException", "message": "Prediction failed"}),
    (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found"}),
    (413, b""),
], ids=["internal-error", "prediction-failed", "not-found", "bare-413"])
def test_failures_that_would_repeat_are_not_retried(answer):
    with FakeService(lambda r, n: answer) as service, client_for(service, retries=3) as client:
        with pytest.raises((ServiceError, ModelNotFound, InvalidInput)):
            client.segment(CLIP)
    assert service.count == 1


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_connection_refused_is_retried_then_raises():
    delays = []
    client = client_for(f"http://127.0.0.1:{closed_port()}", retries=2)
    client._delay = lambda attempt: delays.append(attempt) or 0.0  # count the retries, skip the waits
    with client, pytest.raises(ConnectionFailed, match="cannot reach"):
        client.segment(CLIP)
    assert delays == [0, 1]


def test_dropped_connections_are_retried_and_counted():
    accepted = []
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)

    def accept_and_drop():
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn.recv(65536)[:4])
            conn.close()

    threading.Thread(target=accept_and_drop, daemon=True).start()
    url = f"http://127.0.0.1:{server.getsockname()[1]}"
    try:
        with client_for(url, retries=2) as client, pytest.raises(ConnectionFailed):
            client.segment(CLIP)
        assert accepted == [b"POST"] * 3
        # An upload cut off half-way may be TorchServe refusing an oversized body: say so.
        with client_for(url, retries=0) as client:
            with pytest.raises(ConnectionFailed, match="8.0 MB: check the service's max_request_size"):
                client.segment(np.zeros((2, 2000, 2000), np.uint8))
    finally:
        server.close()


def test_read_timeout_raises_timeout_without_retry():
    def slow(received, n):
        time.sleep(1.0)
        return answer_clip(received, n)

    with FakeService(slow) as service, client_for(service, timeout=0.2, retries=3) as client:
        with pytest.raises(Timeout, match="within 0.2 s"):
            client.segment(CLIP)
        time.sleep(0.1)
    assert service.count == 1


def test_auth_error_rereads_the_key_file(tmp_path):
    key_file = tmp_path / "key_file.json"

    def write_key(key):
        key_file.write_text(json.dumps({"management": {"key": "m"}, "inference": {"key": key, "expiration time": "x"},
                                        "API": {"key": "a"}}))

    def check_token(received, n):
        if received.headers.get("Authorization") != "Bearer fresh":
            return 400, {"code": 400, "type": "InvalidKeyException", "message": TS_TOKEN}
        return answer_clip(received, n)

    write_key("stale")
    with FakeService(check_token) as service, client_for(service, key_file=key_file) as client:
        write_key("fresh")  # TorchServe renewed the key after the client started
        assert client.segment(CLIP).clip.frames == 3
        assert [r.headers["Authorization"] for r in service.received] == ["Bearer stale", "Bearer fresh"]
    with FakeService(check_token) as service, client_for(service, token="wrong", key_file=key_file) as client:
        with pytest.raises(AuthError, match="Token Authorization failed"):
            client.segment(CLIP)
        assert service.count == 1  # an explicit token is not replaced by the file's


def test_token_resolution_order(tmp_path, monkeypatch):
    key_file = tmp_path / "key_file.json"
    key_file.write_text(json.dumps({"inference": {"key": "from-file"}}))
    monkeypatch.delenv("LEAKSEG_TOKEN", raising=False)
    monkeypatch.setenv("LEAKSEG_KEY_FILE", str(key_file))
    assert LeakSegClient()._token == "from-file"
    monkeypatch.setenv("LEAKSEG_TOKEN", "from-env")
    assert LeakSegClient(key_file=key_file)._token == "from-env"
    assert LeakSegClient(token="from-arg")._token == "from-arg"
    assert "from-arg" not in repr(LeakSegClient(token="from-arg"))
    monkeypatch.delenv("LEAKSEG_TOKEN")
    monkeypatch.delenv("LEAKSEG_KEY_FILE")
    assert LeakSegClient()._token is None
    key_file.write_text("{}")
    with pytest.raises(AuthError, match="no inference key"):
        LeakSegClient(key_file=key_file)


# =============================================================================================
# ready, describe, segment_many, json form on the wire


def test_ready_and_describe():
    with FakeService(answer_clip) as service, client_for(service) as client:
        assert client.ready() is True
        description = client.describe()
        assert isinstance(description, ModelDescription) and description.max_frames == 64
        assert service.received[0].json == {"describe": True}
    for answer in (TS_503, (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found"})):
        with FakeService(lambda r, n, answer=answer: answer) as service, client_for(service, retries=3) as client:
            assert client.ready() is False
            assert service.count == 1  # a probe does not retry
    with client_for(f"http://127.0.0.1:{closed_port()}") as client:
        assert client.ready() is False
    with FakeService(lambda r, n: (400, {"code": 400, "type": "InvalidKeyException", "message": TS_TOKEN})) as service:
        with client_for(service) as client, pytest.raises(AuthError):
            client.ready()


def test_wait_until_ready_polls():
    with FakeService(fail_then(TS_503, 2)) as service, client_for(service) as client:
        assert client.wait_until_ready(timeout=10, interval=0.05).name == "jvlgs"
    assert service.count == 3


def test_segment_many_keeps_input_order_under_concurrency():
    def shuffled(received, n):
        t = received.frame_count()
        time.sleep(0.02 * (8 - t))  # bigger clips answer first
        return 200, canned_result(t, request_id=f"clip-{t}")

    clips = (np.zeros((t, 6, 8), np.uint8) for t in range(1, 9))  # lazy input
    with FakeService(shuffled) as service, client_for(service) as client:
        results = list(client.segment_many(clips, concurrency=4))
    assert [r.clip.frames for r in results] == list(range(1, 9))
    assert [r.request_id for r in results] == [f"clip-{t}" for t in range(1, 9)]
    assert service.max_in_flight > 1


def test_segment_many_errors_raise_in_order_or_are_returned():
    def fail_two(received, n):
        return OURS_400 if received.frame_count() == 2 else answer_clip(received, n)

    clips = [np.zeros((t, 6, 8), np.uint8) for t in (1, 2, 3)]
    with FakeService(fail_two) as service, client_for(service) as client:
        outcomes = list(client.segment_many(clips, concurrency=2, return_exceptions=True))
        assert [type(o) for o in outcomes] == [ClipResult, InvalidInput, ClipResult]
        results = client.segment_many(clips, concurrency=2)
        assert next(results).clip.frames == 1
        with pytest.raises(InvalidInput):
            next(results)


def test_json_form_on_the_wire(image_folder):
    folder, contents = image_folder
    with FakeService(answer_clip) as service, client_for(service) as client:
        assert client.segment(folder, form="json", opening_kernel=0).clip.frames == 10
    sent = service.received[0]
    assert sent.headers["Content-Type"] == "application/json"
    assert [base64.b64decode(f) for f in sent.json["frames"]] == contents
    assert sent.json["options"] == {"opening_kernel": 0}


def test_bad_options_never_reach_the_server():
    with FakeService(answer_clip) as service, client_for(service) as client:
        with pytest.raises(InvalidInput, match="unknown option 'thresold'"):
            client.segment(CLIP, thresold=0.5)
        with pytest.raises(InvalidInput, match="opening_kernel"):
            client.segment(CLIP, options=ClipOptions(threshold=0.3), opening_kernel=-1)
    assert service.count == 0


# =============================================================================================
# `leakseg segment`


def run_segment(argv: List[str]) -> int:
    from leakseg.commands import segment

    parser = argparse.ArgumentParser(prog="leakseg segment")
    segment.add_arguments(parser)
    return segment.run(parser.parse_args(argv))


def test_segment_command_writes_json_and_overlay(tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((3, 48, 64), np.uint16))
    out, gif = tmp_path / "result.json", tmp_path / "overlay.gif"
    with FakeService(answer_clip) as service:
        code = run_segment(["--url", service.url, "--token", "t", "--clip", str(tmp_path / "clip.npy"),
                            "--threshold", "0.4", "--out", str(out), "--overlay", str(gif)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "leak in 3 of 3 frames: 0-2" in printed and "largest leak: frame 2, 3 px" in printed
    assert ClipResult.model_validate_json(out.read_text()).clip.frames == 3
    assert Image.open(gif).n_frames == 3
    assert json.loads(service.received[0].parts["options"][2]) == {"threshold": 0.4}


def test_segment_command_errors_are_readable(tmp_path, capsys):
    np.save(tmp_path / "clip.npy", np.zeros((3, 6, 8), np.uint8))
    with FakeService(lambda r, n: OURS_400) as service:
        assert run_segment(["--url", service.url, "--clip", str(tmp_path / "clip.npy")]) == 1
    err = capsys.readouterr().err
    assert "invalid input [too_few_frames, field frames] (HTTP 400): need 2 frames" in err
    assert "Traceback" not in err
    assert run_segment(["--url", f"http://127.0.0.1:{closed_port()}", "--retries", "0",
                        "--clip", str(tmp_path / "clip.npy")]) == 1
    assert "ConnectionFailed" in capsys.readouterr().err
    assert run_segment(["--url", "http://127.0.0.1:1"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert run_segment(["--clip", str(tmp_path / "missing.npy")]) == 2
    assert run_segment(["--clip", str(tmp_path / "clip.npy"), "--threshold", "2"]) == 2
    assert "invalid input [invalid_options, field options.threshold] (before sending)" in capsys.readouterr().err


def test_sample_frames_and_frame_ranges():
    from leakseg.commands.segment import frame_ranges, sample_frames

    assert list(sample_frames(range(10), native_fps=30, fps=10)) == [0, 3, 6, 9]
    assert list(sample_frames(range(10), native_fps=25, fps=10)) == [0, 3, 5, 8]
    assert list(sample_frames(range(10), native_fps=None, fps=5, max_frames=4)) == [0, 1, 2, 3]
    assert list(sample_frames(range(5), native_fps=10, fps=30)) == [0, 1, 2, 3, 4]
    assert frame_ranges([9, 1, 2, 3, 7, 10]) == "1-3, 7, 9-10" and frame_ranges([]) == ""
