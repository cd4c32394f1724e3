"""What the runtime install (`pip install "kaecompress[cpu]"`: numpy and onnxruntime, no torch) must do.

These tests pass in both installs. In the training install they take the runtime's code path through
`--backend onnx`; .ci/run also runs them in a runtime venv, from outside the checkout, against the installed
(not editable) package, which is checked below."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kaecompress

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
EXAMPLES = REPO / "examples"
TRAINING = importlib.util.find_spec("torch") is not None
BACKEND = ("--backend", "onnx")  # `auto` means torch where torch is installed
TRAINING_EXTRA = "kaecompress[cpu,train]"

if not TRAINING:
    _installed = Path(kaecompress.__file__).resolve()
    assert _installed.is_relative_to(Path(sys.prefix).resolve()) and \
        not _installed.is_relative_to(REPO / "kaecompress"), \
        f"kaecompress comes from {_installed}, not from this environment's installed copy ({sys.prefix})"


def python(*args, cwd: Path, cache: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """This interpreter running ARGS from `cwd` (never the checkout: `-m` and `-c` put the working directory
    first on sys.path). `cache` is its XDG_CACHE_HOME, where the training install would keep exports of
    models that ship no ONNX graphs."""
    env = {k: v for k, v in os.environ.items() if k != "KAEC_TRAINED"}  # the shipped models, always
    env.update(ORT_DISABLE_TELEMETRY="1", KAEC_OFFLINE="1", XDG_CACHE_HOME=str(cache or cwd / ".cache"))
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def kaec(*args, cwd: Path, cache: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: `python -m kaecompress.cli.main ARGS`."""
    return python("-m", "kaecompress.cli.main", *args, cwd=cwd, cache=cache, timeout=timeout)


def in_parallel(fn, items, workers: int = 2) -> list:
    """`[fn(x) for x in items]`, two at a time: each call starts processes, which mostly import (one core)."""
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def ok(r: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert r.returncode == 0, f"kaec {' '.join(r.args[3:])}\n{r.stderr}"
    return r


def exported_nothing(cache: Path) -> bool:
    """No model was exported on first use: `--backend onnx` ran the shipped graphs themselves."""
    return not (cache / "kaecompress" / "exports").exists()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).astype(np.int16)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def rgb_70x50() -> Image.Image:
    """A 70x50 RGB image: three crops of the example digit grid as its channels."""
    with Image.open(EXAMPLES / "mnist-grid.png") as grid:
        g = np.asarray(grid.convert("L"))
    return Image.fromarray(np.stack([g[0:50, 0:70], g[30:80, 60:130], g[60:110, 150:220]], -1), "RGB")


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")
