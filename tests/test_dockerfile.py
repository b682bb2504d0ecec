"""The Dockerfile cannot be built here (no Docker engine): it is linted with hadolint and its
commands are checked against `leakseg serve`, config.properties and .dockerignore."""

import fnmatch
import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from leakseg.cli import build_parser
from leakseg.serving.torchserve_process import read_properties

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
#: Referenced by the Dockerfile before it exists: the native default checkpoint, added later.
PENDING = {"model_store/jvlgs-default"}


def instructions():
    """(KEYWORD, arguments) of each instruction, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, args = current.partition(" ")
            lines.append((keyword.upper(), args.strip()))
            current = ""
    return lines


def arguments(keyword):
    return [args for key, args in instructions() if key == keyword]


def serve_args(argv):
    assert argv[:2] == ["leakseg", "serve"], argv
    args = build_parser().parse_args(argv[1:])
    assert args.command == "serve"
    return args


def test_hadolint_finds_nothing():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_cmd_is_leakseg_serve_in_the_foreground_with_the_built_archive():
    (cmd,) = arguments("CMD")
    args = serve_args(json.loads(cmd))
    assert args.foreground and not (args.stop or args.check)
    overrides = dict(item.partition("=")[::2] for item in args.overrides)
    assert set(overrides) <= set(read_properties(REPO / "config.properties"))  # real keys, no typos
    port = urlsplit(overrides["inference_address"]).port
    assert arguments("EXPOSE") == [str(port)]
    (export,) = [run for run in arguments("RUN") if "leakseg export" in run]
    name = re.search(r"--name (\S+)", export).group(1)
    store = re.search(r"--output-dir (\S+)", export).group(1)
    assert str(args.model_store) == store and args.models == [f"{name}={name}.mar"]


def test_healthcheck_is_leakseg_serve_check():
    (health,) = arguments("HEALTHCHECK")
    assert serve_args(json.loads(health.split("CMD", 1)[1])).check


def test_gpu_image_non_root_with_tini_and_the_serve_and_gpu_extras():
    assert arguments("FROM")[0].startswith("nvidia/cuda:")
    assert any('pip install ".[serve,gpu]"' in run for run in arguments("RUN"))
    assert any("openjdk-17" in run for run in arguments("RUN"))
    (user,) = arguments("USER")
    assert user.split(":")[0] not in ("root", "0")
    assert json.loads(arguments("ENTRYPOINT")[0])[0].endswith("tini")


def test_copied_paths_exist_and_are_not_dockerignored():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = [src for copy in arguments("COPY") for src in copy.split()[:-1]]
    assert "config.properties" in sources and "leakseg" in sources
    for src in sources:
        assert (REPO / src).exists() or src in PENDING, src
        assert not any(fnmatch.fnmatch(src, pattern) for pattern in ignored), (src, "is in .dockerignore")
    assert {".git", ".venv"} <= set(ignored)
