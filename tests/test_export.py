import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch

from kaecompress import KaecError

from kaecompress.experiments import runs
from kaecompress.exporters import MANIFEST, export, verify_dir
from kaecompress.experiments.train import load_checkpoint
from kaecompress.experiments.loading import load_run

from conftest import TINY, kaec, kaec_bounded, write_config

KAE_BOTH = TINY.replace("decoder_kae_order: 2", "encoder_kae_order: 3\n  decoder_kae_order: 2")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mnist_root):
    """A briefly trained run with KAE layers on both sides."""
    home = tmp_path_factory.mktemp("export")
    cfg = write_config(home / "kae.yml", KAE_BOTH)
    r = kaec("train", "-c", cfg, "--runs-dir", home / "runs", "--data-root", mnist_root)
    assert r.returncode == 0, r.stderr
    return home, home / "runs" / "tiny" / "run"


@pytest.fixture(scope="module")
def exported(trained, mnist_root):
    home, run = trained
    out = home / "exported"
    r = kaec("export", run, "-o", out, "--data-root", mnist_root, "--json")
    assert r.returncode == 0, r.stderr
    return out, json.loads(r.stdout), r.stderr


def test_export_writes_verified_files_and_a_manifest(exported, trained):
    out, result, stderr = exported
    names = sorted(p.name for p in out.iterdir())
    assert names == ["decoder.onnx", "decoder.pt", "decoder.pt2", "encoder.onnx", "encoder.pt", "encoder.pt2",
                     MANIFEST]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["latent_dim"] == 8 and manifest["input"]["shape"] == ["batch", 1, 28, 28]
    assert manifest["input"]["range"] == [0.0, 1.0] and manifest["model_config"]["encoder_kae_order"] == 3
    assert manifest["source"] == str(trained[1].resolve()) and manifest["onnx"]["opset"] >= 17
    import hashlib

    for name, info in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == info["sha256"]
    for name, diffs in result["verified"].items():
        assert set(diffs) == {"batch 1", "batch 37"} and max(diffs.values()) <= 1e-4
    assert "Warning" not in stderr and "warn" not in stderr.lower()


def test_onnx_files_are_self_contained_checked_and_carry_the_kae_op(exported):
    out, _, _ = exported
    for part, kae_order in (("encoder", 3), ("decoder", 2)):
        model = onnx.load(str(out / f"{part}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        (kae,) = [n for n in model.graph.node if n.op_type == "KAEPoly"]
        assert kae.domain == "kaecompress" and onnx.helper.get_attribute_value(kae.attribute[0]) == kae_order
        (fn,) = model.functions
        assert (fn.domain, fn.name) == ("kaecompress", "KAEPoly")
        assert {n.op_type for n in fn.node} <= {"Mul", "Concat", "Constant", "Slice", "Transpose", "Reshape",
                                                 "ReduceSum", "Add", "Gemm"}
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["part"] == part and json.loads(meta["latent_dim"]) == 8 and "weights_sha256" in meta


def test_no_batch_by_out_by_in_tensor_in_the_onnx_graph(exported):
    out, _, _ = exported
    model = onnx.load(str(out / "encoder.onnx"))
    inlined = onnx.shape_inference.infer_shapes(onnx.inliner.inline_local_functions(model))
    in_dim, out_dim = 4 * 22 * 22, 8
    batched = []
    for vi in list(inlined.graph.value_info) + list(inlined.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            batched.append(int(np.prod([d.dim_value for d in dims[1:]])))
    assert batched and max(batched) < in_dim * out_dim
    assert max(batched) == 3 * in_dim  # the stacked powers, the largest thing there is


def test_onnxruntime_matches_pytorch_on_real_images(exported, trained, mnist_val):
    from kaecompress.runtime.sessions import onnx_session

    out, _, _ = exported
    model = load_run(trained[1]).model
    x = mnist_val[100:117]
    enc, dec = onnx_session(out / "encoder.onnx"), onnx_session(out / "decoder.onnx")
    z = enc.run(None, {"images": x.numpy()})[0]
    y = dec.run(None, {"latents": z})[0]
    with torch.no_grad():
        np.testing.assert_allclose(z, model.encoder(x).numpy(), atol=1e-4)
        np.testing.assert_allclose(y, model(x).numpy(), atol=1e-4)


def test_torchscript_and_pt2_load_where_kaecompress_cannot_be_imported(exported, trained, mnist_val, tmp_path):
    out, _, _ = exported
    x = mnist_val[:5]
    np.save(tmp_path / "x.npy", x.numpy())
    code = f"""
import sys, warnings
sys.modules['kaecompress'] = None  # importing kaecompress now fails
warnings.simplefilter('ignore')
import numpy as np, torch
x = torch.from_numpy(np.load({str(tmp_path / 'x.npy')!r}))
enc = torch.jit.load({str(out / 'encoder.pt')!r})
dec = torch.export.load({str(out / 'decoder.pt2')!r}).module()
z = enc(x)
np.save({str(tmp_path / 'y.npy')!r}, dec(z).detach().numpy())
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    model = load_run(trained[1]).model
    with torch.no_grad():
        np.testing.assert_allclose(np.load(tmp_path / "y.npy"), model(x).numpy(), atol=1e-5)


def test_verify_only_rechecks_and_catches_a_changed_file(exported, mnist_root, tmp_path):
    out, _, _ = exported
    r = kaec("export", "--verify-only", out, "--data-root", mnist_root, "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["verified"]) == {"encoder.onnx", "decoder.onnx", "encoder.pt", "decoder.pt",
                                                     "encoder.pt2", "decoder.pt2"}
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = bytearray((copy / "decoder.pt2").read_bytes())
    data[-100] ^= 0xFF
    (copy / "decoder.pt2").write_bytes(bytes(data))
    r = kaec("export", "--verify-only", copy, "--data-root", mnist_root)
    assert r.returncode == 2 and "decoder.pt2: sha256 differs" in r.stderr


def test_verify_only_against_another_model_says_so(exported, mnist_root, env):
    out, _, _ = exported
    r = kaec("export", "tiny-a", "--verify-only", out, "--data-root", mnist_root, env=env)
    assert r.returncode == 2 and f"{out}: exported from another model (weights id" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_failed_verification_leaves_nothing(trained, mnist_val, tmp_path, monkeypatch):
    import kaecompress.exporters as exporters

    monkeypatch.setattr(exporters, "TOLERANCE", 0.0)
    model = load_run(trained[1]).model
    with pytest.raises(exporters.VerificationError, match=r"encoder.onnx batch \d+: max abs diff .* > 0"):
        export(model, tmp_path / "out", ("onnx",), images=mnist_val[:64])
    assert list(tmp_path.iterdir()) == []


def test_bad_input_is_exit_2_and_leaves_nothing(trained, mnist_root, tmp_path):
    home, run = trained
    r = kaec("export", run, "-o", tmp_path / "a", "--format", "tflite")
    assert r.returncode == 2 and "'tflite' is not one of 'onnx', 'torchscript', 'pt2', 'web'" in r.stderr
    (tmp_path / "exists").mkdir()
    r = kaec("export", run, "-o", tmp_path / "exists", "--format", "pt2", "--data-root", mnist_root)
    assert r.returncode == 2 and "already exists (use --force" in r.stderr
    r = kaec("export", run, "-o", tmp_path / "exists", "--format", "pt2", "--data-root", mnist_root, "--force")
    assert r.returncode == 0 and (tmp_path / "exists" / "encoder.pt2").is_file()
    # a run that never finished
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / runs.CHECKPOINT).write_bytes((run / runs.CHECKPOINT).read_bytes())
    r = kaec("export", unfinished, "-o", tmp_path / "b")
    assert r.returncode == 2 and "not a finished run (status: interrupted)" in r.stderr
    # a checkpoint whose config does not match its weights
    ckpt = load_checkpoint(run / runs.CHECKPOINT)
    ckpt["config"]["model"]["latent_dim"] = 12
    torch.save(ckpt, tmp_path / "mismatch.pt")
    r = kaec("export", tmp_path / "mismatch.pt", "-o", tmp_path / "c")
    assert r.returncode == 2 and "the config does not match the weights" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists", "mismatch.pt", "unfinished"]


def test_python_api_returns_the_paths(trained, mnist_val, tmp_path):
    from kaecompress.exporters import export_torchscript

    model = load_run(trained[1]).model
    paths = export_torchscript(model, tmp_path / "ts", images=mnist_val[:40])
    assert [p.name for p in paths] == ["encoder.pt", "decoder.pt"]
    report = verify_dir(tmp_path / "ts", model, mnist_val[:40])
    assert set(report) == {"encoder.pt", "decoder.pt"}
    with pytest.raises(KaecError, match="already exists"):
        export_torchscript(model, tmp_path / "ts", images=mnist_val[:40])


def test_force_replaces_only_an_earlier_export(trained, mnist_val, tmp_path, monkeypatch):
    model = load_run(trained[1]).model
    precious = tmp_path / "notes"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    with pytest.raises(KaecError, match="--force replaces only a folder holding an earlier export"):
        export(model, precious, ("pt2",), images=mnist_val[:40], force=True)
    (precious / MANIFEST).write_text('{"name": "a web app"}')  # someone else's manifest.json
    with pytest.raises(KaecError, match="--force replaces only"):
        export(model, precious, ("pt2",), images=mnist_val[:40], force=True)
    assert (precious / "keep.txt").read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(KaecError, match="never the working directory"):
        export(model, tmp_path, ("pt2",), images=mnist_val[:40], force=True)
    export(model, tmp_path / "out", ("pt2",), images=mnist_val[:40])
    export(model, tmp_path / "out", ("torchscript",), images=mnist_val[:40], force=True)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["decoder.pt", "encoder.pt", MANIFEST]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "out"]
    (tmp_path / "out" / "README.txt").write_text("added by hand")  # an export with a user's file in it
    with pytest.raises(KaecError, match="--force replaces only"):
        export(model, tmp_path / "out", ("pt2",), images=mnist_val[:40], force=True)
    assert (tmp_path / "out" / "README.txt").is_file()


# ---- --verify-only: the manifest decides what is read, and only what it lists is loaded ----------------

def _copy_with_manifest(out, dest, edit=None):
    """A copy of the export folder `out` whose manifest has gone through `edit(manifest)` first."""
    import shutil

    shutil.copytree(out, dest)
    manifest = json.loads((dest / MANIFEST).read_text())
    if edit:
        edit(manifest)
    (dest / MANIFEST).write_text(json.dumps(manifest))
    return dest


def _relist(manifest, folder, name):
    """Make the manifest's entry for `name` match the file as it now is (an edit, not an accident)."""
    import hashlib

    data = (folder / name).read_bytes()
    manifest["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))


def _one_line_exit_2(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_verify_only_refuses_a_manifest_that_lists_nothing(exported, tmp_path):
    out, _, _ = exported
    empty = _copy_with_manifest(out, tmp_path / "empty", lambda m: m.update(files={}))
    r, wall, _ = kaec_bounded("export", "--verify-only", empty)
    _one_line_exit_2(r, f"{empty / MANIFEST}: 'files' lists no artefacts")
    assert wall < 5
    # the audit's manifest, verbatim
    (empty / MANIFEST).write_text('{"files": {}, "source": "mnist-q2"}')
    r = kaec("export", "--verify-only", empty)
    _one_line_exit_2(r, f"{empty / MANIFEST}:")
    # half a format: the encoder without its decoder
    half = _copy_with_manifest(out, tmp_path / "half", lambda m: m["files"].pop("decoder.pt"))
    _one_line_exit_2(kaec("export", "--verify-only", half), f"{half / MANIFEST}: lists no decoder.pt;")
    # a file no export writes, and one outside the folder
    for name in ("model.bin", "../exported/encoder.onnx"):
        odd = _copy_with_manifest(out, tmp_path / f"odd{len(name)}",
                                  lambda m: m["files"].update({name: dict(m["files"]["encoder.onnx"])}))
        _one_line_exit_2(kaec("export", "--verify-only", odd), f"{odd / MANIFEST}: lists {name!r}, which no export "
                                                                "writes")


def test_verify_only_loads_only_listed_files_each_checked_first(exported, mnist_root, tmp_path):
    out, _, _ = exported

    def only_onnx(manifest):
        manifest["files"] = {k: v for k, v in manifest["files"].items() if k.endswith(".onnx")}

    folder = _copy_with_manifest(out, tmp_path / "onnx-only", only_onnx)
    for name in ("encoder.pt", "decoder.pt2"):  # unlisted, and no model: never loaded
        (folder / name).write_bytes(b"not a model")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    r = kaec("export", "--verify-only", folder, "--data-root", mnist_root, "--json")
    assert r.returncode == 0, r.stderr
    assert set(json.loads(r.stdout)["verified"]) == {"encoder.onnx", "decoder.onnx"}
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing written


def test_verify_only_a_listed_file_that_is_no_model_is_exit_2(exported, mnist_root, tmp_path):
    """The sha256 matches (the manifest was edited with the file), so only loading it can tell."""
    out, _, _ = exported
    folder = tmp_path / "edited"

    def garbage_pt2(manifest):
        (folder / "decoder.pt2").write_bytes(b"PK\x03\x04 no zip archive")
        _relist(manifest, folder, "decoder.pt2")

    _copy_with_manifest(out, folder, garbage_pt2)
    r, wall, _ = kaec_bounded("export", "--verify-only", folder, "--data-root", mnist_root)
    _one_line_exit_2(r, f"{folder / 'decoder.pt2'}: does not load as the pt2 decoder")
    assert "unexpected" not in r.stderr


def test_verify_dir_refuses_each_kind_of_artefact_that_does_not_load_or_run(exported, trained, mnist_val,
                                                                            tmp_path):
    out, _, _ = exported
    model = load_run(trained[1]).model
    cases = {"encoder.onnx": (b"\x08\x07 not onnx", "does not load as the onnx encoder"),
             "encoder.pt": (b"not torchscript", "does not load as the torchscript encoder"),
             # a real model in the wrong place: loads, then cannot take the encoder's input
             "encoder.pt2": ((out / "decoder.pt2").read_bytes(), "does not run as this model's encoder")}
    for name, (data, message) in cases.items():
        folder = tmp_path / name

        def replace(manifest, folder=folder, name=name, data=data):
            (folder / name).write_bytes(data)
            _relist(manifest, folder, name)

        _copy_with_manifest(out, folder, replace)
        with pytest.raises(KaecError, match="^" + str(folder / name).replace(".", r"\.") + ": " + message) as e:
            verify_dir(folder, model, mnist_val[:64])
        assert "\n" not in str(e.value)


def test_verify_dir_refuses_symlinks_special_files_and_changed_sizes(exported, trained, mnist_val, tmp_path):
    import os

    out, _, _ = exported
    model = load_run(trained[1]).model
    folder = _copy_with_manifest(out, tmp_path / "x")
    (folder / "encoder.pt").unlink()
    (folder / "encoder.pt").symlink_to(out / "encoder.pt")  # same bytes, but outside the folder
    with pytest.raises(KaecError, match=r"encoder\.pt: a symbolic link"):
        verify_dir(folder, model, mnist_val[:64])
    (folder / "encoder.pt").unlink()
    os.mkfifo(folder / "encoder.pt")
    with pytest.raises(KaecError, match=r"encoder\.pt: not a regular file"):
        verify_dir(folder, model, mnist_val[:64])
    (folder / "encoder.pt").unlink()
    (folder / "encoder.pt").write_bytes((out / "encoder.pt").read_bytes() + b"\0")
    with pytest.raises(KaecError, match=r"encoder\.pt: [\d,]+ bytes where manifest\.json lists"):
        verify_dir(folder, model, mnist_val[:64])


@pytest.mark.parametrize("kind", ["deep", "deep-in-files", "fifo", "dev-zero-link", "huge"])
def test_verify_only_refuses_a_special_or_huge_manifest_quickly(kind, tmp_path):
    import os

    folder = tmp_path / "exported"
    folder.mkdir()
    manifest = folder / MANIFEST
    if kind == "deep":
        manifest.write_text("[" * 100_000)
    elif kind == "deep-in-files":
        manifest.write_text('{"format_version": 1, "files": {"encoder.onnx": ' + "[" * 100_000 + "]" * 100_000 + "}}")
    elif kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "dev-zero-link":
        manifest.symlink_to("/dev/zero")
    else:
        manifest.write_text('{"format_version": 1, "files": {}, "pad": "' + "x" * 40_000_000 + '"}')
    r, wall, peak_mb = kaec_bounded("export", "--verify-only", folder, timeout=30)
    _one_line_exit_2(r, f"{manifest}:")
    assert wall < 5 and peak_mb < 300, (wall, peak_mb)
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST]


def _files_under(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_verify_only_and_onnx_encode_leave_nothing_in_home(exported, env, mnist_val, mnist_root, tmp_path):
    """onnxruntime's telemetry writes ~/.cache/Microsoft/DeveloperTools/.onnxruntime/ when it is imported,
    unless told not to before the import (kaecompress.runtime.sessions.import_onnxruntime)."""
    from PIL import Image

    out, _, _ = exported
    control = tmp_path / "control"  # without our switch, this onnxruntime does write there
    control.mkdir()
    # onnxruntime also keeps quiet where CI is set (as in .ci/run): both runs here go without it
    bare = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    subprocess.run([sys.executable, "-c", "import onnxruntime"], check=True, timeout=120,
                   env={**bare, "HOME": str(control), "XDG_CACHE_HOME": str(control / ".cache")})
    if not _files_under(control):
        pytest.skip("this onnxruntime writes nothing to ~/.cache when imported: nothing to switch off")
    home = tmp_path / "home"
    home.mkdir()
    clean = {**env, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "ORT_DISABLE_TELEMETRY": "",
             "CI": ""}
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = kaec("export", "--verify-only", out, "--data-root", mnist_root, env=clean)
    assert r.returncode == 0, r.stderr
    assert _files_under(home) == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    Image.fromarray((mnist_val[0, 0].numpy() * 255).astype("uint8")).save(tmp_path / "d.png")
    r = kaec("encode", tmp_path / "d.png", "-o", tmp_path / "d.kae", "-m", "tiny-a", "--backend", "onnx",
             "--data-root", mnist_root, env=clean)
    assert r.returncode == 0, r.stderr
    assert _files_under(home) == []  # a shipped model runs its own graphs: not even an export cache


@pytest.mark.parametrize("kind", ["fifo", "deep", "dev-zero-link"])
def test_the_reference_decoder_refuses_a_special_or_deep_manifest(kind, tmp_path):
    """exporters/kae_decode.py reads an export's manifest.json without kaecompress: bounded all the same."""
    import os

    folder = tmp_path / "exported"
    folder.mkdir()
    manifest = folder / MANIFEST
    if kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "deep":
        manifest.write_text("[" * 100_000)
    else:
        manifest.symlink_to("/dev/zero")
    (tmp_path / "x.kae").write_bytes(b"\x82" + bytes(20))
    script = Path(__file__).parents[1] / "exporters" / "kae_decode.py"
    r = subprocess.run([sys.executable, script, tmp_path / "x.kae", "-o", tmp_path / "x.png", "--export", folder],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"{manifest}:" in r.stderr and "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "x.kae"]


class _Plants:
    """Unpickled, creates the file it names: what a crafted archive could do on load."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pt2_carrying_a_pickle_does_not_run_it(exported, trained, mnist_val, tmp_path):
    """torch.export.load falls back to unpickling anything (weights_only=False) when a member will not load
    as weights: with the manifest edited to match, verifying such a file must refuse it, not run it."""
    import pickle
    import zipfile

    out, _, _ = exported
    marker = tmp_path / "planted"
    folder = tmp_path / "crafted"

    def craft(manifest):
        with zipfile.ZipFile(out / "encoder.pt2") as src, zipfile.ZipFile(folder / "encoder.pt2", "w") as dst:
            for name in src.namelist():
                dst.writestr(name, pickle.dumps(_Plants(marker)) if name.endswith("sample_inputs/model.pt")
                             else src.read(name))
        _relist(manifest, folder, "encoder.pt2")

    _copy_with_manifest(out, folder, craft)
    with pytest.raises(KaecError, match=r"encoder\.pt2: does not load as the pt2 encoder \(UnpicklingError"):
        verify_dir(folder, load_run(trained[1]).model, mnist_val[:64])
    assert not marker.exists()
    from kaecompress.exporters.formats import load_runner

    for name in ("custom_obj_0", "opaque_obj_0"):  # loaded with plain pickle whatever the setting: refused unread
        crafted = tmp_path / f"{name}.pt2"
        crafted.write_bytes((out / "encoder.pt2").read_bytes())
        with zipfile.ZipFile(crafted, "a") as archive:
            archive.writestr(f"archive/data/constants/{name}", pickle.dumps(_Plants(marker)))
        with pytest.raises(KaecError, match=rf"{name}\.pt2: holds pickled objects \(.*{name}\)"):
            load_runner(crafted, data=crafted.read_bytes())
        assert not marker.exists()
