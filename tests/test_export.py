import json
import subprocess
import sys

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch

from kaecompress import KaecError, runs
from kaecompress.exporters import MANIFEST, export, verify_dir
from kaecompress.train import load_checkpoint
from kaecompress.zoo import load_run

from conftest import TINY, kaec, write_config

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
    import onnxruntime as ort

    out, _, _ = exported
    model = load_run(trained[1]).model
    x = mnist_val[100:117]
    enc = ort.InferenceSession(str(out / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(out / "decoder.onnx"), providers=["CPUExecutionProvider"])
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
    assert r.returncode == 2 and "unknown format" in r.stderr
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
