import json
import subprocess
import sys

import pytest

from conftest import TINY, kaec, write_config


def test_help_is_instant_because_torch_is_not_imported():
    code = "import sys, kaecompress.cli.main as m; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
    for args in ([], ["train"], ["results"], ["plot"]):
        r = kaec(*args, "--help")
        assert r.returncode == 0 and "Usage" in r.stdout
    r = kaec("--version")
    assert r.returncode == 0 and r.stdout.startswith("kaecompress ")
    r = kaec()  # no command: the help, and no error line
    assert "Usage" in r.stdout and r.stderr == ""


def test_train_end_to_end_and_rerun_skips(tmp_path, mnist_root):
    cfg = write_config(tmp_path / "tiny.yml", TINY)
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--json")
    assert r.returncode == 0, r.stderr
    (summary,) = json.loads(r.stdout)
    assert summary["status"] == "finished" and summary["inputs"] == 320
    assert (tmp_path / "runs" / "tiny" / "run" / "summary.json").is_file()
    again = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--json")
    assert json.loads(again.stdout) == [summary]


@pytest.mark.parametrize("text,message", [
    (TINY.replace("max_inputs: 320", "max_inputs: lots"), "train.max_inputs: expected an integer, got 'lots'"),
    (TINY.replace("optimizer: Adam", "optimizer: Adamish"), "train.optimizer: unknown optimizer 'Adamish'"),
    (TINY.replace("output_activation: sigmoid", "output_activation: sigmoidal"),
     "model.output_activation: unknown activation 'sigmoidal'"),
    (TINY.replace("  lr: 1.0e-3\n", ""), "train.lr: missing required key"),
    (TINY + "extra: 1\n", "unknown key 'extra'"),
])
def test_bad_config_is_one_line_exit_2_and_writes_nothing(tmp_path, text, message):
    cfg = write_config(tmp_path / "bad.yml", text)
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2
    assert message in r.stderr and str(cfg) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()


def test_debug_shows_the_traceback(tmp_path):
    cfg = write_config(tmp_path / "bad.yml", TINY.replace("optimizer: Adam", "optimizer: Adamish"))
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--debug")
    assert r.returncode != 0 and "Traceback" in r.stderr and "KaecError" in r.stderr


def test_missing_dataset_is_exit_2(tmp_path):
    cfg = write_config(tmp_path / "f.yml", TINY.replace("dataset: mnist", "dataset: fashion-mnist"))
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", tmp_path / "empty",
             env={"KAEC_FASHION_MNIST_DIR": str(tmp_path / "nowhere"), "KAEC_OFFLINE": "1"})
    assert r.returncode == 2 and "fashion-mnist data not found" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()


def test_missing_config_file(tmp_path):
    r = kaec("train", "-c", tmp_path / "nope.yml")
    assert r.returncode == 2 and "nope.yml" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["train"], "error: Missing option '--config' / '-c'. (see: kaec train --help)"),
    (["frobnicate"], "error: No such command 'frobnicate'. (see: kaec --help)"),
    (["encode", "examples/mnist-7.png", "-o", "z.kae", "--batch-size", "0"], "error: Invalid value for '--batch-size'"),
    (["encode", "examples/mnist-7.png", "-o", "/proc/z.kae"], "error: /proc/z.kae: "),  # an OSError, one line
])
def test_usage_and_os_errors_are_one_line_exit_2(args, message):
    r = kaec(*args)
    assert r.returncode == 2 and r.stderr.startswith(message), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
