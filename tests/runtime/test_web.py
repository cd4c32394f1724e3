"""`kaec export --format web` in the runtime install: no torch, the installed package's JavaScript files, and
the folder it writes decodes a golden file in Node as the library does."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from .conftest import GOLDEN, REPO, kaec, ok

ORT_DIST = REPO / "web" / "node_modules" / "onnxruntime-web" / "dist"


def test_web_export_runs_in_node(tmp_path, monkeypatch):
    if not ORT_DIST.is_dir():
        pytest.skip("onnxruntime-web is not installed in the checkout (npm ci --prefix web)")
    monkeypatch.setenv("KAEC_ONNXRUNTIME_WEB", str(ORT_DIST))  # the installed package has no node_modules
    r = ok(kaec("export", "mnist-q2", "--format", "web", "-o", "site", "--json", cwd=tmp_path))
    assert '"models": [\n    "mnist-q2"' in r.stdout and (tmp_path / "site" / "kae.mjs").is_file()
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    run = subprocess.run([node, str(tmp_path / "site" / "kae-node.mjs"), "decode", str(GOLDEN / "onnx" / "mnist-q2-0.kae"),
                          "-o", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    ours = np.asarray(Image.open(tmp_path / "out.png"), dtype=int)
    golden = np.asarray(Image.open(GOLDEN / "onnx" / "mnist-q2-0-decoded.png"), dtype=int)
    assert ours.shape == golden.shape and np.abs(ours - golden).max() <= 1
