"""A fake leakseg service over real HTTP on loopback that misbehaves on purpose, for the monitor's supervisor.

Each behaviour is a script for :class:`support.fake_service.FakeService`: the first ``bad`` requests get the
bad answer, later ones a correct answer sized to what was sent (so the test sees the camera recover).
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Dict, Optional

from support.fake_service import Answer, Received, answer_clip, canned_result


def _sent(received: Received):
    """(frames, height, width) of the clip the monitor sent."""
    t, h, w = received.array().shape[:3]
    return t, h, w


def short_answer(received: Received) -> Answer:
    """200 with one frame result, whatever was sent (a proxy, another model version)."""
    _, h, w = _sent(received)
    return 200, canned_result(1, h, w)


def huge_size(received: Received) -> Answer:
    """200 announcing a 100000 x 100000 clip: ``masks()`` would allocate 10 GB per frame."""
    t, _, _ = _sent(received)
    body = canned_result(t, 6, 8)
    body["clip"]["height"] = body["clip"]["width"] = 100_000
    for frame in body["frames"]:
        frame["mask"]["size"] = [100_000, 100_000]
    return 200, body


def bad_rle(received: Received) -> Answer:
    """200 whose masks' counts strings do not decode (a last group that says more follow; not ASCII)."""
    t, h, w = _sent(received)
    body = canned_result(t, h, w)
    for i, frame in enumerate(body["frames"]):
        frame["mask"]["counts"] = "0PPP" if i % 2 else "ÿ1"
    return 200, body


def garbage(received: Received) -> Answer:
    """200 whose body is not JSON at all."""
    return 200, b"\x00\xffnot json{"


BAD_ANSWERS: Dict[str, Callable[[Received], Answer]] = {
    "short": short_answer, "huge-size": huge_size, "bad-rle": bad_rle, "garbage": garbage,
}


def bad_then_good(bad: Optional[Callable[[Received], Answer]], count: int, delay: float = 0.0):
    """A script: the first ``count`` requests get ``bad``, later ones a correct answer (after ``delay`` s)."""

    def script(received: Received, n: int) -> Answer:
        if n < count:
            return bad(received)
        time.sleep(delay)
        return answer_clip(received, n)

    return script


class Hang:
    """A script whose requests hang until :meth:`release` (then answer correctly)."""

    def __init__(self):
        self.released = threading.Event()

    def __call__(self, received: Received, n: int) -> Answer:
        self.released.wait(120)
        return answer_clip(received, n)

    def release(self) -> None:
        self.released.set()
