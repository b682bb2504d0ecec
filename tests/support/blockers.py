"""Run Python with heavy packages made unimportable, to prove the thin client never needs them.

The venv used for tests has torch & co. installed, so "it imports fine" proves nothing; a
meta-path finder placed first on ``sys.meta_path`` makes ``import torch`` (and every
submodule) raise ModuleNotFoundError and records the attempt, even when the importer catches
the error. Two ways to use it:

* :func:`run_python` runs ``python -c`` with the blocker prepended to the code;
* :func:`blocking_env` writes it as a ``sitecustomize.py`` and returns an environment for any
  subprocess (e.g. the ``leakseg`` console script), to be reused by the end-to-end tests.

In the blocked interpreter, ``import _leakseg_blocker; _leakseg_blocker.attempts`` lists the
blocked names something tried to import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]

#: What the thin client must never import (the brief's list).
HEAVY = ("torch", "onnxruntime", "timm", "transformers")
#: Everything installed in the test venv that `pip install leakseg` does not bring.
NOT_IN_THIN_CLIENT = HEAVY + (
    "torchvision", "onnx", "open_clip", "safetensors", "cv2", "pycocotools", "imageio", "imageio_ffmpeg", "ts",
)

_BLOCKER = '''
import importlib.abc as _abc, sys as _sys, types as _types

_state = _types.ModuleType("_leakseg_blocker")
_state.blocked = frozenset({blocked!r})
_state.attempts = []


class _Blocker(_abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _state.blocked:
            _state.attempts.append(name)
            raise ModuleNotFoundError(f"import of {{name!r}} blocked by tests/support/blockers.py", name=name)
        return None


for _name in [m for m in _sys.modules if m.partition(".")[0] in _state.blocked]:
    del _sys.modules[_name]
_sys.meta_path.insert(0, _Blocker())
_sys.modules["_leakseg_blocker"] = _state
'''


def blocker_source(blocked: Iterable[str] = HEAVY) -> str:
    """Python source that, run first, makes ``blocked`` top-level packages unimportable."""
    return _BLOCKER.format(blocked=tuple(sorted(set(blocked))))


def blocking_env(
    directory: os.PathLike, blocked: Iterable[str] = HEAVY, base: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """An environment whose Python processes start with the blocker (via ``sitecustomize.py`` in ``directory``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(blocker_source(blocked))
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(directory), str(REPO), env.get("PYTHONPATH", "")) if p
    )
    return env


def run_python(
    code: str,
    blocked: Iterable[str] = HEAVY,
    *,
    args: Sequence[str] = (),
    env: Optional[Mapping[str, str]] = None,
    timeout: float = 120.0,
) -> "subprocess.CompletedProcess[str]":
    """Run ``code`` in a fresh interpreter with ``blocked`` unimportable; captures text output."""
    run_env = dict(os.environ if env is None else env)
    run_env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), run_env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-c", blocker_source(blocked) + "\n" + code, *args],
        cwd=str(REPO), env=run_env, capture_output=True, text=True, timeout=timeout,
    )
