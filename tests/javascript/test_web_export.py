"""`kaec export --format web`'s folder (kaecompress/exporters/web.py): what it holds, checked against the
shipped files, and what it refuses without writing anything."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from kaecompress.exporters import web

from kaecompress import zoo
from kaecompress.errors import KaecError
from kaecompress.runtime.shipped import load_shipped


def test_the_folder_lists_every_file_with_its_hash(web_export: Path):
    manifest = json.loads((web_export / "manifest.json").read_text())
    on_disk = {p.relative_to(web_export).as_posix() for p in web_export.rglob("*") if p.is_file()}
    assert on_disk == {*manifest["files"], "manifest.json"}
    for rel, entry in manifest["files"].items():
        data = (web_export / rel).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"], rel
    assert manifest["onnxruntime-web"] == web.pinned_ort_version()
    assert {f"ort/{name}" for name in web.ORT_FILES} <= on_disk
    assert json.loads((web_export / "models.json").read_text())["default"] == "mnist-q2"


@pytest.mark.parametrize("name", ["mnist-q2", "fashion-q9", "mnist-kae-dec3"])
def test_model_json_holds_the_models_own_tables_and_files(web_export: Path, name: str):
    doc = json.loads((web_export / "models" / name / "model.json").read_text())
    card = zoo.cards()[name]
    shipped = load_shipped(name)
    assert doc["schema"] == web.SCHEMA and doc["weights_sha256"] == card["weights_sha256"]
    assert doc["codec_id"] == card.get("codec_id") and doc["latent_dim"] == shipped.latent_dim
    # the out-of-domain check's calibration, as the card has it, and the dataset that names the domain
    assert doc["domain"] == card["domain"] and doc["dataset"] == shipped.dataset
    for part in ("encoder", "decoder", "weights"):
        data = (web_export / "models" / name / doc[part]["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == doc[part]["sha256"]
    if shipped.tables is None:
        assert doc["tables"] is None and doc["context"] is None
        return
    arrays = shipped.tables.to_arrays()
    assert np.array_equal(doc["tables"]["offsets"], arrays["offsets"])
    assert np.array_equal(doc["tables"]["freqs"], arrays["freqs"])
    assert doc["tables"]["precision"] == int(np.asarray(arrays["precision"]).reshape(-1)[0])
    if shipped.context is None:
        assert doc["context"] is None
    else:
        for key, values in shipped.context.to_arrays().items():
            assert np.array_equal(doc["context"][key], values), key


def test_refusals_write_nothing(tmp_path: Path, monkeypatch):
    out = tmp_path / "site"
    with pytest.raises(KaecError, match="not a shipped model"):
        web.write_web_export(["mnist-q2", "no-such-model"], out)
    monkeypatch.setenv(web.ORT_ENV, str(tmp_path))
    with pytest.raises(KaecError, match="ort.wasm.min.mjs is missing"):
        web.write_web_export(["mnist-q2"], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_force_replaces_only_an_earlier_web_export(web_export: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv(web.ORT_ENV, str(web_export / "ort"))
    out = tmp_path / "site"
    web.write_web_export(["mnist-q2"], out)
    with pytest.raises(KaecError, match="already exists"):
        web.write_web_export(["mnist-q2"], out)
    web.write_web_export(["fashion-q3"], out, force=True)
    assert json.loads((out / "models.json").read_text())["models"] == ["fashion-q3"]
    assert not (out / "models" / "mnist-q2").exists()
    (out / "notes.txt").write_text("mine")  # a file the export did not write: --force must not delete it
    with pytest.raises(KaecError, match="replaces only a folder holding an earlier web export"):
        web.write_web_export(["mnist-q2"], out, force=True)
    assert (out / "notes.txt").read_text() == "mine"
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"x")
    with pytest.raises(KaecError, match="replaces only"):
        web.write_web_export(["mnist-q2"], other, force=True)
    assert (other / "a.jpg").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos", "site"]  # no staging folder left behind


def test_the_javascript_modules_import_no_circles_and_lib_never_imports_the_api():
    import re

    source = web.web_source()
    graph = {}
    for path in [*source.glob("*.mjs"), *(source / "lib").glob("*.mjs")]:
        deps = re.findall(r"""^\s*(?:import|export)\b[^'"]*?from\s+['"](\.{1,2}/[^'"]+)['"]""", path.read_text(), re.MULTILINE)
        graph[path.resolve()] = {(path.parent / d).resolve() for d in deps}
    assert len(graph) >= 10 and all(dep in graph for deps in graph.values() for dep in deps)
    for module, deps in graph.items():
        if module.parent.name == "lib":
            assert all(d.parent.name == "lib" for d in deps), f"{module.name} imports above lib/"
    state: dict = {}

    def visit(node, trail):
        if state.get(node) == "done":
            return
        assert state.get(node) != "open", "import circle: " + " -> ".join(p.name for p in [*trail, node])
        state[node] = "open"
        for dep in graph[node]:
            visit(dep, [*trail, node])
        state[node] = "done"

    for module in graph:
        visit(module, [])


def test_a_missing_onnxruntime_web_is_installed_from_the_lock_file(web_export: Path, tmp_path: Path, monkeypatch):
    """A fresh clone has no web/node_modules: the export runs `npm ci` on the pinned lock file (the npm
    registry must be reachable), saying so first; without the `install` permission it refuses in one line."""
    import shutil

    if shutil.which("npm") is None:
        pytest.skip("npm is not installed")
    source = tmp_path / "web"
    shutil.copytree(web.web_source(), source, ignore=shutil.ignore_patterns("node_modules", "__pycache__"))
    monkeypatch.setattr(web, "web_source", lambda: source)
    monkeypatch.delenv(web.ORT_ENV, raising=False)
    with pytest.raises(KaecError, match=r"needs onnxruntime-web 1\.\d+\.\d+ in .*: run `npm ci --prefix"):
        web.write_web_export(["mnist-q2"], tmp_path / "refused")
    said = []
    try:
        web.write_web_export(["mnist-q2"], tmp_path / "site", install=said.append)
    except KaecError as e:  # no registry: the refusal must still be one line naming npm ci
        assert "npm ci" in str(e) and "\n" not in str(e)
        pytest.skip(f"the npm registry is not reachable here: {e}")
    assert len(said) == 1 and "npm ci" in said[0]
    for name in web.ORT_FILES:
        assert (tmp_path / "site" / "ort" / name).read_bytes() == (web_export / "ort" / name).read_bytes()
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("listed", [["../models/mnist-q2"], ["/etc"], ["mnist-q2/../../x"], ["%2e%2e"],
                                    ["mnist-q2", "mnist-q2"]])
def test_kae_mjs_refuses_model_names_that_are_paths_or_repeated(node: str, web_export: Path, tmp_path: Path, listed):
    import shutil
    import subprocess

    site = tmp_path / "site"
    shutil.copytree(web_export, site)
    (site / "models.json").write_text(json.dumps({"models": listed, "default": listed[0]}))
    script = ("import('./kae.mjs').then(m => m.open('.')).then(() => console.log('opened'), "
              "e => console.log(`${e.name}: ${e.message}`))")
    r = subprocess.run([node, "--input-type=module", "-e", script], cwd=site, capture_output=True, text=True,
                       timeout=120, check=False)
    assert r.stdout.strip().startswith("KaeError: models.json: expected"), (r.stdout, r.stderr)
