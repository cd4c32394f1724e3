"""Fixtures of the JavaScript runtime's tests: a web export built once per session, Node, headless Chromium.

Each skips with a one-line reason where what it needs is missing (Node, `npm ci --prefix web`, Chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from kaecompress.errors import KaecError

# The shipped models whose golden files (tests/data/golden/onnx, shipped) the tests decode; mnist-q2 first,
# the page's default.
EXPORTED = ["mnist-q2", "mnist-q2-v1", "mnist-q3", "mnist-q6", "fashion-q3", "fashion-q9", "mnist-kae-dec3",
            "fashion-kae-dec3", "mnist-kae-enc3"]


@pytest.fixture(scope="session")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("node is not installed (Node 20 runs the JavaScript runtime)")
    major = subprocess.run([path, "-p", "process.versions.node.split('.')[0]"], capture_output=True, text=True,
                           check=False)
    if major.returncode != 0 or int(major.stdout.strip() or 0) < 20:
        pytest.skip(f"node {major.stdout.strip()} found; the JavaScript runtime needs Node 20 or later")
    return path


@pytest.fixture(scope="session")
def web_export(tmp_path_factory) -> Path:
    """`kaec export ... --format web` of EXPORTED, once per session."""
    from kaecompress.exporters.web import ORT_PACKAGE, ort_folder, write_web_export

    try:
        ort_folder()
    except KaecError as e:
        pytest.skip(f"{ORT_PACKAGE} is not installed: {e}")
    out = tmp_path_factory.mktemp("web") / "export"
    write_web_export(EXPORTED, out)
    return out


def run_driver(node: str, script: Path, job: dict, timeout: int = 900) -> dict:
    """A test driver (a .mjs beside the tests) run on one job given as JSON on stdin; its last stdout line is
    its JSON answer, which holds "fatal" where the driver itself failed."""
    r = subprocess.run([node, str(script)], input=json.dumps(job), capture_output=True, text=True, timeout=timeout,
                       check=False)
    lines = r.stdout.strip().splitlines()
    out = json.loads(lines[-1]) if lines else {}
    assert r.returncode == 0 and "fatal" not in out, f"{script.name} failed: {out.get('fatal')}\n{r.stderr[-3000:]}"
    return out
