"""The thin client, the overlays and `leakseg segment` work with torch & co. unimportable.

The venv has torch, onnxruntime, timm and transformers installed, so each check runs in a
fresh interpreter where tests/support/blockers.py makes them (and the other packages `pip install
leakseg` does not bring) raise ModuleNotFoundError, and records any attempt to import them.
"""

import json
import sys

import numpy as np

from support.blockers import HEAVY, NOT_IN_THIN_CLIENT, blocking_env, run_python
from support.fake_service import FakeService, answer_clip

IMPORTS_AND_BUILDS = """
import json, sys
import numpy as np
from PIL import Image

import leakseg.client, leakseg.utils.overlay, leakseg.commands.segment
from leakseg.client import LeakSegClient, build_request, clip_array_from
from leakseg.utils.overlay import render_overlays

body = build_request(np.zeros((3, 8, 8), np.uint16), ["gas leak"], {"threshold": 0.4})
json_body = build_request([Image.new("I;16", (8, 8))] * 2, form="json")
decoded = clip_array_from([Image.new("I;16", (8, 8))] * 2)  # leakseg.io.frames, the service's reader
client = LeakSegClient("http://127.0.0.1:9", token="t")
client.close()

import _leakseg_blocker
heavy = sorted(m for m in sys.modules if m.partition(".")[0] in _leakseg_blocker.blocked)
print(json.dumps({"size": body.size, "json_frames": len(json_body.json["frames"]), "decoded": decoded.shape,
                  "attempts": _leakseg_blocker.attempts, "loaded": heavy}))
"""


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_blocker_really_blocks():
    proc = run_python("import torch")
    assert proc.returncode != 0 and "blocked by tests/support/blockers.py" in proc.stderr
    proc = run_python("import onnxruntime.capi", blocked=["onnxruntime"])
    assert "blocked" in proc.stderr


def test_client_overlay_and_command_import_without_heavy_packages():
    proc = run_python(IMPORTS_AND_BUILDS, blocked=NOT_IN_THIN_CLIENT)
    assert proc.returncode == 0, proc.stderr
    report = last_json_line(proc.stdout)
    assert report["size"] > 3 * 8 * 8 * 2 and report["json_frames"] == 2 and report["decoded"] == [2, 8, 8]
    assert report["attempts"] == [] and report["loaded"] == []


def test_segment_command_end_to_end_against_a_loopback_service(tmp_path):
    """The segment command in a blocked interpreter (sitecustomize), talking HTTP to a fake service."""
    np.save(tmp_path / "clip.npy", np.zeros((3, 48, 64), np.uint8))
    env = blocking_env(tmp_path / "site", blocked=HEAVY)
    code = (
        "import sys, argparse, _leakseg_blocker\n"
        "from leakseg.commands import segment\n"
        "p = argparse.ArgumentParser(); segment.add_arguments(p)\n"
        "status = segment.run(p.parse_args(sys.argv[1:]))\n"
        "print('ATTEMPTS', _leakseg_blocker.attempts)\n"
        "sys.exit(status)\n"
    )
    import subprocess

    with FakeService(answer_clip) as service:
        proc = subprocess.run(
            [sys.executable, "-c", code, "--url", service.url, "--token", "t", "--clip", str(tmp_path / "clip.npy"),
             "--out", str(tmp_path / "r.json"), "--overlay", str(tmp_path / "o.gif")],
            env=env, capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr
    assert "leak in 3 of 3 frames" in proc.stdout and "ATTEMPTS []" in proc.stdout
    assert json.loads((tmp_path / "r.json").read_text())["clip"]["frames"] == 3
    assert (tmp_path / "o.gif").exists()
