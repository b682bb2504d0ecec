"""`leakseg monitor --check`: the YAML file, validated, with errors naming the key and the camera."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from leakseg.monitor.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "monitor.yaml"


def write(tmp_path, data) -> Path:
    path = tmp_path / "monitor.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def base(tmp_path):
    (tmp_path / "drop").mkdir(exist_ok=True)
    return {"cameras": [{"name": "north", "source": "rtsp://10.0.0.5/stream1"},
                        {"name": "east-flare", "source": "drop"}]}


def test_a_minimal_file_gets_documented_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, base(tmp_path)))
    north, east = cfg.cameras
    assert north.kind == "stream" and east.kind == "folder"
    assert east.source == str(tmp_path / "drop")  # relative to the file, not the working directory
    assert (north.alarm.k, north.alarm.n, north.alarm.clear_frames) == (3, 5, 10)
    assert north.clip_frames is None and north.analysis_fps == 5.0  # None: 3 streaming in process, 8 via the service
    assert cfg.sinks.jsonl is not None and cfg.sinks.mqtt is None
    assert cfg.modbus_base(0) == 0 and cfg.modbus_base(1) == 16


@pytest.mark.parametrize("patch, expected", [
    ({"alarm": {"k": 6, "n": 5}}, "cameras[1] (name 'east-flare') -> alarm: k (6) must be <= n (5)"),
    ({"clip_frames": 2}, "cameras[1] (name 'east-flare') -> clip_frames: Input should be greater than or equal to 3"),
    ({"alarm": {"min_area_pixel": 5}}, "cameras[1] (name 'east-flare') -> alarm -> min_area_pixel: unknown key"),
    ({"options": {"threshold": 1.5}}, "cameras[1] (name 'east-flare') -> options -> threshold: Input should be less than 1"),
    ({"options": {"return_masks": False}}, "return_masks cannot be false"),
    ({"ignore_mask": "missing.png"}, "cameras[1] (name 'east-flare') -> ignore_mask: file not found"),
    ({"name": "bad name/1"}, "cameras[1] (name 'bad name/1') -> name: use 1-64 letters"),
    ({"faults": {"reconnect_initial": 10, "reconnect_max": 1}}, "reconnect_max must be >= reconnect_initial"),
])
def test_errors_name_the_key_and_the_camera(tmp_path, patch, expected):
    data = base(tmp_path)
    data["cameras"][1].update(patch)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    assert expected in str(err.value), str(err.value)
    assert str(err.value).startswith(str(tmp_path / "monitor.yaml"))


def test_whole_file_errors(tmp_path):
    data = base(tmp_path)
    data["cameras"][1]["name"] = "north"
    with pytest.raises(ConfigError, match="camera name 'north' is used twice"):
        load_config(write(tmp_path, data))
    data = base(tmp_path)
    data["cameras"][1]["modbus_base"] = 8
    with pytest.raises(ConfigError, match="overlap in the Modbus map"):
        load_config(write(tmp_path, data))
    data = base(tmp_path)
    data["sinks"] = {"opcua": {"security_policies": ["Basic256Sha256_SignAndEncrypt"]}}
    with pytest.raises(ConfigError, match=r"sinks -> opcua: .*need certificate and private_key"):
        load_config(write(tmp_path, data))
    with pytest.raises(ConfigError, match="cameras: Field required"):
        load_config(write(tmp_path, {"service": {"url": "http://x"}}))
    (tmp_path / "bad.yaml").write_text("cameras: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_every_problem_is_listed_at_once(tmp_path):
    data = base(tmp_path)
    data["cameras"][0]["alarm"] = {"k": 0}
    data["cameras"][1]["analysis_fps"] = -1
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, data))
    lines = str(err.value).splitlines()
    assert len(lines) == 2
    assert "cameras[0] (name 'north') -> alarm -> k" in lines[0]
    assert "cameras[1] (name 'east-flare') -> analysis_fps" in lines[1]


def test_the_shipped_example_is_valid_and_check_explains_it(tmp_path):
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--check", str(EXAMPLE)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "OK," in out.stdout and "LEAK when >=" in out.stdout


def test_check_exits_2_and_prints_the_problems(tmp_path):
    data = base(tmp_path)
    data["cameras"][0]["alarm"] = {"n": 0}
    path = write(tmp_path, data)
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--check", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "cameras[0] (name 'north') -> alarm -> n" in out.stderr


def test_help_explains_itself():
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--help"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for words in ("--config", "--check", "--archive", "CAMERA_FAULT", "SERVICE_FAULT", "docs/SCADA.md"):
        assert words in out.stdout


def test_an_output_that_cannot_start_is_exit_1_with_the_reason(tmp_path):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        data = base(tmp_path)
        data["sinks"] = {"jsonl": {"path": "events.jsonl"}, "modbus": {"host": "127.0.0.1", "port": port}}
        out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--config", str(write(tmp_path, data))],
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "cannot start the modbus output" in out.stderr
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert '"monitor_stopped"' in lines[-1]  # the log that had started was closed properly


def test_check_says_which_cameras_are_replays_analysed_completely(tmp_path):
    """`realtime: false` on a drop folder (or its END file already there) makes a replay: --check says so."""
    live, replay, ended = (tmp_path / name for name in ("live", "replay", "ended"))
    for folder in (live, replay, ended):
        folder.mkdir()
    (ended / "END").touch()
    data = base(tmp_path)
    data["cameras"] = [{"name": "live", "source": str(live)},
                       {"name": "replay", "source": str(replay), "realtime": False},
                       {"name": "ended", "source": str(ended)}]
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--check", str(write(tmp_path, data))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {line.split(":")[0].strip(): line for line in out.stdout.splitlines()[1:4]}
    assert "drops nothing" not in rows["live"]
    assert "a replay: waits for the service, drops nothing" in rows["replay"] and "drops nothing" in rows["ended"]


def test_check_says_what_watches_each_camera_besides_its_alarm_rule(tmp_path):
    """The picture check (when off), the change gate and the self-test's schedule show in --check's summary."""
    data = base(tmp_path)
    data["cameras"] = [{"name": "plain", "source": "rtsp://cam/plain"},
                       {"name": "watched", "source": "rtsp://cam/watched", "change_gate": {"enabled": True},
                        "selftest": {"every_hours": 12}, "detectability": {"enabled": False}},
                       {"name": "on-demand", "source": "rtsp://cam/od", "selftest": {"every_hours": None}}]
    out = subprocess.run([sys.executable, "-m", "leakseg.cli", "monitor", "--check", str(write(tmp_path, data))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = {line.split(":")[0].strip(): line for line in out.stdout.splitlines()[1:4]}
    assert "gate" not in rows["plain"] and "self-test" not in rows["plain"] and "picture" not in rows["plain"]
    assert all(part in rows["watched"] for part in ("picture check off", "change gate on", "self-test every 12 h"))
    assert "self-test on demand" in rows["on-demand"]


def test_check_refuses_an_opcua_user_whose_password_variable_is_set_but_empty(tmp_path):
    """An empty password would let anyone who knows the user name log in: `--check` says so (exit 2), as
    the sink refuses to start; with the variable set to a password the same file passes."""
    import os

    data = base(tmp_path)
    data["sinks"] = {"opcua": {"users": [{"name": "operator", "password_env": "LEAKSEG_TEST_OPCUA_PW"}]}}
    path = write(tmp_path, data)
    command = [sys.executable, "-m", "leakseg.cli", "monitor", "--check", str(path)]
    empty = subprocess.run(command, capture_output=True, text=True, timeout=120,
                           env={**os.environ, "LEAKSEG_TEST_OPCUA_PW": ""})
    assert empty.returncode == 2 and "'operator': its password variable is set but empty" in empty.stderr
    good = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "LEAKSEG_TEST_OPCUA_PW": "s3cret"})
    assert good.returncode == 0, good.stderr
