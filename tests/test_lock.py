"""The per-run lock (kaecompress.experiments.runlock) with real `kaec train` processes: two at once never train a run
twice, a kill -9 never blocks a run, and a dead node's lease is waited out, bounded, then taken over."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_config

GRID = """
experiment_name: lockgrid
matrix:
  trial: [1, 2, 3]
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
  max_inputs: 12000
  validation_batch_size: 1000
  log_every: 320
  checkpoint_every_s: 0.2
"""


def start_kaec(*args, env=None, sigint=signal.SIG_DFL) -> subprocess.Popen:
    """`kaec` in its own session, so that a kill of its group never reaches pytest. SIGINT is as a terminal
    leaves it (a shell without job control starts background commands with it ignored: `pytest ... &` in a
    script), unless `sigint=signal.SIG_IGN` asks for such a start."""
    return subprocess.Popen([sys.executable, "-m", "kaecompress.cli.main", *map(str, args)],
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def attempts(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "attempts.jsonl").read_text().splitlines()]


def check_metrics_complete(run: Path, max_inputs=12000, log_every=320):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r["inputs"] for r in rows if "train_loss" in r]
    assert train == sorted(set(train)), "metrics rows duplicated or out of order"
    # a row per log interval up to the budget; a resume starts a fresh interval at its checkpoint
    gaps = [b - a for a, b in zip([0] + train, train)]
    assert train[-1] == max_inputs and max(gaps) < 2 * log_every, gaps


def test_two_processes_never_train_a_run_twice(tmp_path, mnist_root):
    # runs long enough (about 10 s each on an idle machine) that the second process, which needs a few
    # seconds to start, always finds run 1 still being trained
    long_inputs = 36000
    cfg = write_config(tmp_path / "grid.yml", GRID.replace("max_inputs: 12000", f"max_inputs: {long_inputs}"))
    runs = tmp_path / "runs"
    args = ("train", "-c", cfg, "--runs-dir", runs, "--data-root", mnist_root)
    first = start_kaec(*args)
    try:  # the second starts while the first holds run 1
        wait_for(lambda: (runs / "lockgrid" / "trial:1" / "checkpoint.pt").is_file(), what="first run to start")
        second = start_kaec(*args)
        out2, err2 = second.communicate(timeout=300)
        out1, err1 = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0 and second.returncode == 0, (err1, err2)
    assert f"skipped trial:1: being trained by pid {first.pid} on " in err2
    for trial in (1, 2, 3):
        run = runs / "lockgrid" / f"trial:{trial}"
        assert len(attempts(run)) == 1, f"{run} trained {len(attempts(run))} times"
        assert json.loads((run / "summary.json").read_text())["status"] == "finished"
        check_metrics_complete(run, max_inputs=long_inputs)
        assert not (run / ".lease.json").exists()  # released
    trainers = {attempts(runs / "lockgrid" / f"trial:{t}")[0]["pid"] for t in (1, 2, 3)}
    assert trainers == {first.pid, second.pid}  # both did work, each run once


def test_a_killed_trainer_never_blocks_its_run(tmp_path, mnist_root):
    cfg = write_config(tmp_path / "grid.yml", GRID.replace("trial: [1, 2, 3]", "trial: [1]"))
    runs = tmp_path / "runs"
    run = runs / "lockgrid" / "trial:1"
    args = ("train", "-c", cfg, "--runs-dir", runs, "--data-root", mnist_root)
    victim = start_kaec(*args)
    try:
        wait_for(lambda: (run / "checkpoint.pt").is_file() and (run / ".lease.json").is_file(),
                 what="a checkpoint")
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate()
    lease = json.loads((run / ".lease.json").read_text())
    assert lease["pid"] == victim.pid  # left behind by the dead process, heartbeat still fresh
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "kaecompress.cli.main", *map(str, args), "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "being trained" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 60  # not the lease's 60 s expiry: a dead pid of this node frees it at once
    (summary,) = json.loads(r.stdout)
    assert summary["status"] == "finished" and summary["inputs"] == 12000
    first, second = attempts(run)
    assert first["pid"] == victim.pid and second["resumed_from"] > 0
    check_metrics_complete(run)


def test_a_dead_nodes_lease_is_waited_out_then_taken_over(tmp_path, mnist_root, mnist_train, mnist_val):
    """A trainer on "another node" (its own node id) is killed: its flock goes with it, but from here its
    lease is the only sign, so a plain sweep skips the run while the lease is fresh, and a task that must
    train it waits for the lease to expire (15 s here) and resumes from the checkpoint."""
    from kaecompress.experiments.config import load_experiment
    from kaecompress.experiments.runlock import RunLock
    from kaecompress.experiments.sweep import run_one

    cfg_path = write_config(tmp_path / "grid.yml", GRID.replace("trial: [1, 2, 3]", "trial: [1]"))
    runs = tmp_path / "runs"
    run = runs / "lockgrid" / "trial:1"
    args = ("train", "-c", cfg_path, "--runs-dir", runs, "--data-root", mnist_root)
    victim = start_kaec(*args, env={"KAEC_NODE_ID": "node-b", "KAEC_LOCK_EXPIRY_S": "15"})
    try:
        wait_for(lambda: (run / "checkpoint.pt").is_file() and (run / ".lease.json").is_file(),
                 what="a checkpoint")
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate()
    killed_at = time.time()
    lease = json.loads((run / ".lease.json").read_text())
    assert lease["node"] == "node-b"

    r = subprocess.run([sys.executable, "-m", "kaecompress.cli.main", *map(str, args)], capture_output=True,
                       text=True, timeout=120)
    assert time.time() - lease["heartbeat_at"] < 15, "the machine is too slow for this test's 15 s lease"
    assert r.returncode == 0 and f"skipped trial:1: being trained by pid {victim.pid}" in r.stderr
    assert len(attempts(run)) == 1

    (cfg,) = load_experiment(cfg_path).runs
    lock = RunLock(run)
    kind, summary = run_one(cfg, run, wait_s=30, data_root=mnist_root, images=(mnist_train, mnist_val))
    assert kind == "trained" and summary["status"] == "finished"
    assert time.time() - killed_at <= 30
    waited_until = attempts(run)[-1]["started_at"]
    assert waited_until >= lease["heartbeat_at"] + 15  # not before the lease expired
    assert attempts(run)[-1]["resumed_from"] > 0 and attempts(run)[0]["pid"] == victim.pid
    assert lock.try_acquire() is None  # released afterwards
    lock.release()


def test_a_task_that_must_train_gives_up_bounded_with_the_holder_named(tmp_path):
    from kaecompress.experiments.runlock import RunBusy, RunLock

    held = RunLock(tmp_path / "run")
    assert held.try_acquire() is None
    t0 = time.monotonic()
    with pytest.raises(RunBusy, match=f"being trained by pid {os.getpid()} on "):
        RunLock(tmp_path / "run").acquire(wait_s=1.0)
    assert 1.0 <= time.monotonic() - t0 < 3
    held.release()
    again = RunLock(tmp_path / "run").acquire(wait_s=0)
    assert again.held and json.loads((tmp_path / "run" / ".lease.json").read_text())["token"] == again.token
    again.release()
    assert not (tmp_path / "run" / ".lease.json").exists()


def test_dry_run_shows_who_trains_a_run(tmp_path):
    from kaecompress.experiments.runlock import RunLock

    cfg = write_config(tmp_path / "grid.yml", GRID)
    lock = RunLock(tmp_path / "runs" / "lockgrid" / "trial:2")
    assert lock.try_acquire() is None
    try:
        r = subprocess.run([sys.executable, "-m", "kaecompress.cli.main", "train", "-c", str(cfg), "--runs-dir",
                            str(tmp_path / "runs"), "--dry-run", "--json"], capture_output=True, text=True, timeout=120)
    finally:
        lock.release()
    assert r.returncode == 0, r.stderr
    status = {row["matrix_slug"]: row["status"] for row in json.loads(r.stdout)}
    assert status["trial:1"] == "pending"
    assert status["trial:2"].startswith(f"pending, being trained by pid {os.getpid()} on ")
