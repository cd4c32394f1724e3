import json

import numpy as np
import pytest
import torch

from kaecompress.evaluation.bench import Timing

from conftest import kaec


def test_percentiles_interpolate_between_calls():
    t = Timing(calls=100, images=3200, seconds=2.0, latencies_ms=[float(i) for i in range(1, 101)])
    assert t.percentile(50) == pytest.approx(50.5)
    assert t.percentile(90) == pytest.approx(90.1)
    assert t.percentile(99) == pytest.approx(99.01)
    assert t.images_per_s == 1600
    assert t.summary(784)["MB_per_s"] == pytest.approx(1600 * 784 / 1e6)


def test_cpu_benchmark_end_to_end(env, tmp_path, mnist_root):
    out = tmp_path / "bench.json"
    r = kaec("bench", "--provider", "cpu", "-m", "tiny-a", "--batch-sizes", "1,4", "--seconds", "0.02",
             "--threads", "1", "--json", out, "--data-root", mnist_root,
             env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "onnxruntime-cpu" in r.stdout and "jpeg" in r.stdout
    result = json.loads(out.read_text())
    assert result["provider_used"] == "CPUExecutionProvider" and result["model"] == "tiny-a"
    combos = {(row["part"], row["runtime"], row["batch"]) for row in result["inference"]}
    assert combos == {(p, rt, b) for p in ("encoder", "decoder") for b in (1, 4)
                      for rt in ("onnxruntime-cpu", "pytorch-eager-cpu", "torchscript-cpu")}
    for row in result["inference"]:
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["MB_per_s"] == pytest.approx(row["images_per_s"] * 784 / 1e6)
        if row["runtime"].startswith("pytorch"):
            assert row["vs_pytorch_eager"] == 1.0
    q = result["quality"]
    assert q["compression_ratio_values"] == 98.0 and 40 < q["kae_bytes_per_image"] < 60
    assert q["kae_uint8_psnr_db"] <= q["psnr_db"] + 0.5
    assert {b["codec"] for b in result["pillow"]} == {"jpeg", "webp", "png"}
    png = next(b for b in result["pillow"] if b["codec"] == "png")
    assert png["lossless"] and png["psnr_db"] is None  # strict JSON: the infinite PSNR is null
    assert not any(b["lossless"] for b in result["pillow"] if b["codec"] != "png")
    json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    env_info = result["environment"]
    assert env_info["cores"] >= 1 and env_info["ort_intra_op_threads"] == 1 and env_info["onnxruntime"]
    assert env_info["threads_chosen"] is False and env_info["torch_threads"] == 1
    load = result["machine_load"]
    assert {"cores", "load_1min_start", "others_cpu_share", "steal_share", "busy", "why"} <= set(load)
    assert 0 <= load["others_cpu_share"] <= 1 and 0 <= load["steal_share"] <= 1
    assert ("warning: the machine was busy while measuring" in r.stderr) == load["busy"]
    assert ("machine not busy" in r.stderr) != load["busy"]
    assert result["skipped"] == [] and "note: skipped" not in r.stderr


# What the runtime install lacks: a sitecustomize on PYTHONPATH makes these unimportable (None in sys.modules
# is what `import` refuses and importlib.util.find_spec reports as absent), as in a venv without them.
TRAINING_ONLY = ("torch", "torchvision", "onnx", "onnxscript", "safetensors", "yaml", "scipy", "matplotlib",
                 "numba", "bjontegaard")


def without_torch(tmp_path, env) -> dict:
    import os

    folder = tmp_path / "no-torch"
    folder.mkdir(exist_ok=True)
    (folder / "sitecustomize.py").write_text(f"import sys\nfor name in {TRAINING_ONLY!r}:\n    sys.modules[name] = None\n")
    path = os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH", "")) if p)
    return {**env, "PYTHONPATH": path, "XDG_CACHE_HOME": str(tmp_path / "cache")}


def test_without_torch_the_benchmark_measures_onnxruntime_and_says_what_it_skipped(env, tmp_path, mnist_root):
    """The runtime install's bench: the shipped graphs in onnxruntime and Pillow; the PyTorch rows are
    skipped, with one line on stderr and the reason in the JSON."""
    out = tmp_path / "bench.json"
    r = kaec("bench", "--provider", "cpu", "-m", "tiny-a", "--batch-sizes", "1,8", "--seconds", "0.02",
             "--threads", "1", "--images", "50", "--json", out, "--data-root", mnist_root,
             env=without_torch(tmp_path, env))
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["provider_used"] == "CPUExecutionProvider" and result["model"] == "tiny-a"
    assert result["images"] == 50 and result["device"] == "cpu"
    combos = {(row["part"], row["runtime"], row["batch"]) for row in result["inference"]}
    assert combos == {(p, "onnxruntime-cpu", b) for p in ("encoder", "decoder") for b in (1, 8)}
    for row in result["inference"]:
        assert row["images_per_s"] > 0 and 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["vs_pytorch_eager"] is None
    assert [s["runtime"] for s in result["skipped"]] == ["pytorch-eager", "torchscript"]
    assert all("PyTorch is not installed" in s["why"] for s in result["skipped"])
    notes = [line for line in r.stderr.splitlines() if line.startswith("note: skipped")]
    assert len(notes) == 1 and "pytorch-eager, torchscript" in notes[0] and "kaecompress[cpu,train]" in notes[0]
    assert "Traceback" not in r.stderr and "vs eager" not in r.stdout
    env_info = result["environment"]
    assert env_info["torch"] is None and env_info["torch_threads"] is None and env_info["onnxruntime"]
    assert env_info["ort_intra_op_threads"] == 1 and env_info["threads_chosen"] is False
    q = result["quality"]  # the same figures as with torch (test_cpu_benchmark_end_to_end), through the Codec
    assert q["compression_ratio_values"] == 98.0 and 40 < q["kae_bytes_per_image"] < 60 and q["kae_version"] == 1
    assert q["kae_uint8_psnr_db"] <= q["psnr_db"] + 0.5 and q["psnr_db"] > 10
    assert {b["codec"] for b in result["pillow"]} == {"jpeg", "webp", "png"}
    assert not (tmp_path / "cache" / "kaecompress" / "exports").exists()  # the shipped graphs, not an export


def test_without_torch_what_the_benchmark_cannot_run_is_refused_in_one_line(env, tmp_path, mnist_root):
    run = tmp_path / "run"
    run.mkdir()
    r = kaec("bench", "-m", run, "--data-root", mnist_root, env=without_torch(tmp_path, env))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "kaecompress[cpu,train]" in r.stderr, r.stderr
    if not _cuda_ready():
        r = kaec("bench", "--provider", "cuda", "-m", "tiny-a", "--data-root", mnist_root,
                 env=without_torch(tmp_path, env))
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("error: --provider cuda: ")


def test_a_busy_machine_is_detected_and_gets_fewer_threads(monkeypatch):
    """Real load: one busy-looping process per core while the monitor samples /proc/stat."""
    import os
    import subprocess
    import sys

    from kaecompress.evaluation.bench import MachineLoad

    from kaecompress.runtime.sessions import default_threads

    cores = os.cpu_count()
    monitor = MachineLoad()
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 1.5\nwhile time.time() < end: pass"])
               for _ in range(cores)]
    for b in burners:
        b.wait()
    report = monitor.report()
    assert report["busy"] and report["others_cpu_share"] > 0.25, report
    assert "other processes used" in report["why"]
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores) + 3, 0.0, 0.0))
    assert default_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert default_threads() == cores
    monkeypatch.setattr(os, "getloadavg", lambda: (cores - 1.0, 0.0, 0.0))
    assert default_threads() == 1


def test_bad_batch_sizes_and_json_paths_are_refused_before_measuring(env, tmp_path):
    r = kaec("bench", "--batch-sizes", "1,x", env=env)
    assert r.returncode == 2 and "--batch-sizes" in r.stderr
    r = kaec("bench", "--json-file", tmp_path, env=env)
    assert r.returncode == 2 and "is a folder" in r.stderr
    r = kaec("bench", "--json-file", tmp_path / "no" / "b.json", env=env)
    assert r.returncode == 2 and "does not exist" in r.stderr


@pytest.fixture
def exported_tiny(env, tmp_path, monkeypatch, mnist_root):
    from kaecompress.experiments.export_cache import export_cache
    from kaecompress.experiments.loading import load_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    loaded = load_model("tiny-a")
    return loaded, export_cache(loaded, mnist_root)


def test_io_binding_runs_the_session_and_keeps_the_result_on_the_device(exported_tiny, mnist_val):
    """The CUDA figure's IO-binding code, run on CPU OrtValues so it is exercised without a GPU."""
    from kaecompress.evaluation.bench import iobinding_run
    from kaecompress.runtime.sessions import onnx_session

    loaded, folder = exported_tiny
    session = onnx_session(folder / "encoder.onnx")
    x = mnist_val[:5].numpy()
    run, binding = iobinding_run(session, "images", x, device="cpu")
    run()
    (z,) = binding.copy_outputs_to_cpu()
    np.testing.assert_allclose(z, session.run(None, {"images": x})[0], rtol=0, atol=0)
    np.testing.assert_allclose(z, loaded.model.encoder(torch.from_numpy(x)).detach().numpy(), atol=1e-4)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_cuda_session_that_fell_back_to_cpu_is_refused(exported_tiny, monkeypatch):
    """onnxruntime asked for CUDA where it cannot load builds a CPU session and only logs it; with a GPU
    pretended visible, that session is what the check sees, and it must refuse."""
    from kaecompress.runtime.sessions import cuda_sessions
    from kaecompress.errors import KaecError
    from kaecompress.runtime.sessions import import_onnxruntime

    ort = import_onnxruntime()  # the module the package uses, imported with its telemetry off

    if _cuda_ready():
        pytest.skip("CUDA really works here")
    from kaecompress.runtime import sessions

    monkeypatch.setattr(sessions, "_gpu_visible", lambda: True)
    available = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", *available])
    with pytest.raises(KaecError, match=r"^--provider cuda: .*session runs on \['CPUExecutionProvider'\]"):
        cuda_sessions(exported_tiny[1], None)
    with pytest.raises(KaecError, match=r"^--device cuda: .*session runs on \['CPUExecutionProvider'\]"):
        cuda_sessions(exported_tiny[1], None, "--device cuda")  # as the codec's onnx backend asks


def _cuda_ready() -> bool:
    import torch

    from kaecompress.runtime.sessions import import_onnxruntime

    ort = import_onnxruntime()

    return torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.skipif(_cuda_ready(), reason="this machine has a usable CUDA onnxruntime")
def test_cuda_without_a_usable_gpu_is_refused(env, tmp_path, mnist_root):
    r = kaec("bench", "--provider", "cuda", "-m", "tiny-a", "--seconds", "0.01", "--data-root", mnist_root,
             env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "pip install" in r.stderr or "CUDA is not usable" in r.stderr


@pytest.mark.skipif(not _cuda_ready(), reason="needs a GPU and onnxruntime-gpu")
def test_cuda_benchmark(env, tmp_path, mnist_root):
    out = tmp_path / "bench.json"
    r = kaec("bench", "--provider", "cuda", "-m", "tiny-a", "--batch-sizes", "1,256", "--seconds", "0.2",
             "--json", out, "--data-root", mnist_root, env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["provider_used"] == "CUDAExecutionProvider"
    assert {row["runtime"] for row in result["inference"]} >= {"onnxruntime-cuda", "onnxruntime-cuda-iobinding"}
