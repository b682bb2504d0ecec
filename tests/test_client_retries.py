"""The client's retry policy for faults (issue 15): what is safe to retry is retried, with backoff and a
total time limit, and logged; a 4xx never is. Against real loopback HTTP servers (tests/support/fake_service.py
and raw sockets); the same policy through a real TorchServe whose worker is killed is in
tests/test_service_faults.py.
"""

from __future__ import annotations

import json
import logging
import socket
import threading

import pytest

from leakseg.client import ConnectionFailed, InvalidInput, LeakSegClient, ServiceError, WorkerDied
from leakseg.client.errors import RETRYABLE, ModelNotReady, ServerBusy, error_from_response
from support.fake_service import CLIP, OURS_400, TS_503, FakeService, answer_clip, canned_result, client_for, fail_then

WORKER_DIED_507 = (507, {"code": 507, "type": "InternalServerException", "message": "Worker died."})
WORKER_DIED_500 = (500, {"code": 500, "type": "InternalServerException", "message": "Worker died."})


@pytest.mark.parametrize("answer", [WORKER_DIED_507, WORKER_DIED_500], ids=["507", "500"])
def test_worker_died_is_retried_and_answered(answer):
    with FakeService(fail_then(answer, 2)) as service, client_for(service, retries=3) as client:
        assert client.segment(CLIP).clip.frames == 3
    assert service.count == 3


def test_worker_died_maps_to_a_retryable_error():
    error = error_from_response(*WORKER_DIED_507)
    assert isinstance(error, WorkerDied) and isinstance(error, ServiceError) and isinstance(error, RETRYABLE)
    assert error.status == 507
    # The handler failing on the clip is not a dead worker: the same clip would fail again.
    failed = error_from_response(503, {"code": 503, "type": "InternalServerException", "message": "Prediction failed"})
    assert not isinstance(failed, RETRYABLE)


def test_each_retry_is_logged(caplog):
    caplog.set_level(logging.WARNING, logger="leakseg.client.client")
    with FakeService(fail_then(WORKER_DIED_507, 1)) as service, client_for(service, retries=3) as client:
        client.segment(CLIP)
    retries = [r for r in caplog.records if "retry 1/3" in r.getMessage()]
    assert len(retries) == 1 and "Worker died" in retries[0].getMessage()
    assert retries[0].levelno == logging.WARNING


def test_retries_stop_at_the_total_time_limit(caplog):
    caplog.set_level(logging.WARNING, logger="leakseg.client.client")
    with FakeService(lambda r, n: TS_503) as service, client_for(service, retries=1000, retry_time=1.0) as client:
        client._delay = lambda attempt: 0.25  # fixed waits: tries at 0, 0.25, 0.5, 0.75 s; the next would pass 1 s
        with pytest.raises(ModelNotReady):
            client.segment(CLIP)
    assert service.count == 4
    assert any("giving up after 3 retries" in r.getMessage() for r in caplog.records)


def test_retry_count_still_bounds_the_retries():
    with FakeService(lambda r, n: WORKER_DIED_507) as service, client_for(service, retries=2, retry_time=60) as client:
        with pytest.raises(WorkerDied):
            client.segment(CLIP)
    assert service.count == 3


def test_backoff_grows_and_is_capped():
    client = LeakSegClient("http://127.0.0.1:1", backoff=0.5, max_backoff=4.0)
    delays = [client._delay(a) for a in range(8)]
    assert all(0.25 <= d <= 4.0 for d in delays)
    assert max(delays[:1]) <= 0.5 and min(delays[5:]) >= 2.0  # 0.5 * 2**a, jittered to [50 %, 100 %], capped
    with pytest.raises(ValueError):
        LeakSegClient("http://127.0.0.1:1", retry_time=-1)


@pytest.mark.parametrize("answer", [
    OURS_400,
    (413, {"error": {"code": "too_many_frames", "message": "at most 32", "field": "frames"}}),
    (415, {"error": {"code": "unsupported_content_type", "message": "no", "field": "Content-Type"}}),
    (413, b""),
    (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found"}),
    (405, {"code": 405, "type": "MethodNotAllowedException", "message": "Requested method is not allowed"}),
    (429, b"slow down"),
], ids=["400", "413", "415", "bare-413", "404", "405", "429"])
def test_a_4xx_is_never_retried(answer):
    with FakeService(lambda r, n: answer) as service, client_for(service, retries=5) as client:
        with pytest.raises(Exception) as info:
            client.segment(CLIP)
    assert not isinstance(info.value, RETRYABLE)
    assert service.count == 1


def test_503_queue_full_and_no_worker_are_retried():
    busy = (503, {"code": 503, "type": "ServiceUnavailableException", "message": "job queue is full"})
    assert isinstance(error_from_response(*busy), ServerBusy)
    script = lambda r, n: busy if n == 0 else TS_503 if n == 1 else answer_clip(r, n)  # noqa: E731
    with FakeService(script) as service, client_for(service, retries=3) as client:
        assert client.segment(CLIP).clip.frames == 3
    assert service.count == 3


def _raw_server(answers):
    """A raw HTTP server on 127.0.0.1: the n-th connection reads a request and gets answers[n](conn)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    seen = []

    def run():
        for answer in answers:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, body = data.partition(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length")))
                while len(body) < length:
                    body += conn.recv(65536)
                seen.append(head.split(b" ")[0])
                answer(conn)

    threading.Thread(target=run, daemon=True).start()
    return server, seen


def _broken(conn):  # headers promise 100000 bytes; 10 arrive, then the connection closes (a restart)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"schema_")


def _whole(conn):
    body = json.dumps(canned_result(3)).encode()
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def test_an_answer_broken_off_is_retried():
    server, seen = _raw_server([_broken, _whole])
    try:
        with client_for(f"http://127.0.0.1:{server.getsockname()[1]}", retries=2) as client:
            assert client.segment(CLIP).clip.frames == 3
        assert seen == [b"POST", b"POST"]
    finally:
        server.close()


def test_an_answer_broken_off_every_time_raises_connection_failed():
    server, seen = _raw_server([_broken] * 3)
    try:
        with client_for(f"http://127.0.0.1:{server.getsockname()[1]}", retries=2) as client:
            with pytest.raises(ConnectionFailed, match="broke off during the answer"):
                client.segment(CLIP)
        assert len(seen) == 3
    finally:
        server.close()


def test_invalid_input_is_not_retried_even_with_a_long_retry_time():
    with FakeService(lambda r, n: OURS_400) as service, client_for(service, retries=50, retry_time=600) as client:
        with pytest.raises(InvalidInput):
            client.segment(CLIP)
    assert service.count == 1
