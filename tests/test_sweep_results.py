import csv
import io
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from kaecompress.experiments import runs
from kaecompress.experiments.config import load_experiment
from kaecompress.experiments.results import results_table, to_markdown
from kaecompress.experiments.sweep import run_dir, run_sweep

from conftest import TINY, kaec

GRID = TINY.replace("experiment_name: tiny", """experiment_name: grid
matrix:
  trial: [1, 2]
  deckae: [0, 2]""").replace("decoder_kae_order: 2", "decoder_kae_order: ${deckae}")
LOSS = "validation loss (320 inputs)"
STUDY_LOSS = "validation loss (320 steps)"  # the study's name for it, accepted as an alias


@pytest.fixture(scope="module")
def grid(tmp_path_factory, mnist_root):
    """A 4-run grid trained through the CLI, as a user would."""
    home = tmp_path_factory.mktemp("grid")
    cfg = home / "grid.yml"
    cfg.write_text(GRID)
    r = kaec("train", "-c", cfg, "--runs-dir", home / "runs", "--data-root", mnist_root)
    assert r.returncode == 0, r.stderr
    return cfg, home / "runs"


def summaries(runs_root, exp):
    return [runs.read_json(run_dir(runs_root, r) / runs.SUMMARY) for r in exp.runs]


def test_the_study_command_aggregates_over_trials(grid):
    cfg, root = grid
    r = kaec("results", "--config", cfg, "--runs-dir", root, "-ec", "matrix_id", "matrix_slug", "compression-ratio",
             "-sc", f"{STUDY_LOSS}-", "-ac", "trial", "-acs", STUDY_LOSS)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["deckae", LOSS, "(std)", "(min)", "(max)", "model params", "train time (minutes)",
                      "throughput", "count"]
    assert lines[1].startswith("|") and "--:" in lines[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert len(rows) == 2 and all(row[-1] == "2" for row in rows)
    exp = load_experiment(cfg)
    by_deckae = {}
    for s in summaries(root, exp):
        by_deckae.setdefault(s["matrix"]["deckae"], []).append(s["final_val_loss"])
    for row in rows:
        losses = by_deckae[int(row[0])]
        mean = sum(losses) / 2
        std = abs(losses[0] - losses[1]) / 2 ** 0.5
        assert float(row[1]) == pytest.approx(mean, abs=1e-6)
        assert float(row[2]) == pytest.approx(std, abs=1e-6)
        assert float(row[3]) == pytest.approx(min(losses), abs=1e-6)
    assert float(rows[0][1]) >= float(rows[1][1])  # sorted descending
    assert {row[5] for row in rows} == {"514,289".replace("514,289", f"{p:,}") for p in
                                        {s["params"] for s in summaries(root, exp)}}
    assert all(row[7].endswith("/s") for row in rows)


def test_csv_and_json_and_repeated_flags(grid):
    cfg, root = grid
    r = kaec("results", "-c", cfg, "--runs-dir", root, "-f", "csv", "-ec", "matrix_id", "-ec", "throughput",
             "--sort", "deckae", "trial")
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader(io.StringIO(r.stdout)))
    assert [(row["deckae"], row["trial"]) for row in rows] == [("0", "1"), ("0", "2"), ("2", "1"), ("2", "2")]
    assert "matrix_id" not in rows[0] and "throughput" not in rows[0]
    data = json.loads(kaec("results", "-c", cfg, "--runs-dir", root, "-f", "json").stdout)
    assert len(data) == 4 and data[0]["compression-ratio"] == 784 / 8
    assert isinstance(data[0][LOSS], float)


def test_hide_constant_columns(grid):
    cfg, root = grid
    table = results_table(load_experiment(cfg), root, hide_constant_columns=True)
    assert "compression-ratio" not in table.columns and "trial" in table.columns


def test_bad_column_names_are_exit_2(grid):
    cfg, root = grid
    r = kaec("results", "-c", cfg, "--runs-dir", root, "-sc", "loss")
    assert r.returncode == 2 and "--sort 'loss': no such column" in r.stderr
    r = kaec("results", "-c", cfg, "--runs-dir", root, "-f", "xml")
    assert r.returncode == 2 and "--table-format" in r.stderr


def test_unfinished_and_diverged_runs_are_shown(tmp_path, grid):
    cfg, root = grid
    exp = load_experiment(cfg)
    diverged = run_dir(root, exp.runs[1])
    summary = runs.read_json(diverged / runs.SUMMARY)
    try:
        runs.atomic_write_json(diverged / runs.SUMMARY, {**summary, "status": "diverged"})
        table = results_table(exp, tmp_path / "nothing-here")
        assert [r["status"] for r in table.rows] == ["pending"] * 4
        table = results_table(exp, root, aggregate_column="trial")
        assert "status" in table.columns
        assert sorted(r["status"] for r in table.rows) == ["1 finished, 1 diverged", "finished"]
        md = to_markdown(results_table(exp, root))
        assert md.count("diverged") == 2  # in the loss cell and in the status column
    finally:
        runs.atomic_write_json(diverged / runs.SUMMARY, summary)


def test_dry_run_only_and_rerun_trains_nothing(grid, mnist_root):
    cfg, root = grid
    r = kaec("train", "-c", cfg, "--runs-dir", root, "--dry-run", "--json", "--only", "deckae:2")
    rows = json.loads(r.stdout)
    assert [x["matrix_slug"] for x in rows] == ["trial:1_deckae:2", "trial:2_deckae:2"]
    assert {x["status"] for x in rows} == {"finished"}
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    r = kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root)
    assert r.returncode == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps
    r = kaec("train", "-c", cfg, "--runs-dir", root, "--only", "nothing-like-this")
    assert r.returncode == 2 and "matches none of the 4 runs" in r.stderr


def test_a_killed_sweep_resumes_without_training_anything_twice(tmp_path, mnist_root):
    cfg = tmp_path / "grid.yml"
    cfg.write_text(GRID.replace("max_inputs: 320", "max_inputs: 6400\n  checkpoint_every_s: 0.2"))
    root = tmp_path / "runs"
    exp = load_experiment(cfg)
    first = run_dir(root, exp.runs[0]) / runs.SUMMARY
    proc = subprocess.Popen([sys.executable, "-m", "kaecompress.cli.main", "train", "-c", str(cfg), "--runs-dir",
                             str(root), "--data-root", str(mnist_root)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    second_ckpt = run_dir(root, exp.runs[1]) / runs.CHECKPOINT
    deadline = time.time() + 300
    while not second_ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists() and runs.run_status(run_dir(root, exp.runs[1])) == "interrupted"
    done_at_kill = load_checkpoint_inputs(run_dir(root, exp.runs[1]))
    first_stamp = first.stat().st_mtime_ns
    r = kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, "--json")
    assert r.returncode == 0, r.stderr
    assert first.stat().st_mtime_ns == first_stamp  # the finished run was skipped
    assert all(s["status"] == "finished" and s["inputs"] == 6400 for s in json.loads(r.stdout))
    logged = [m["inputs"] for m in runs.read_metrics(run_dir(root, exp.runs[1])) if "train_loss" in m]
    assert logged == sorted(set(logged)) and logged[-1] == 6400  # resumed, nothing logged twice
    assert done_at_kill > 0
    assert not list(root.rglob(".*.tmp"))


def load_checkpoint_inputs(directory):
    from kaecompress.experiments.train import load_checkpoint

    return load_checkpoint(directory / runs.CHECKPOINT)["inputs"]


def test_a_failing_run_does_not_stop_the_sweep(tmp_path, monkeypatch, mnist_train, mnist_val):
    cfg = tmp_path / "grid.yml"
    cfg.write_text(GRID)
    exp = load_experiment(cfg)
    import kaecompress.experiments.train as train_module

    real = train_module.train_run

    def flaky(cfg, directory, **kw):
        if cfg.matrix_slug == "trial:1_deckae:2":
            raise RuntimeError("out of memory (simulated)")
        return real(cfg, directory, **kw)

    monkeypatch.setattr(train_module, "train_run", flaky)
    monkeypatch.setattr("kaecompress.experiments.data.load_images",
                        lambda name, train, *a, **k: (mnist_train if train else mnist_val)[:256])
    report = run_sweep(exp.runs, tmp_path / "runs")
    assert report.failed == ["trial:1_deckae:2"]
    assert [s["status"] for s in report.summaries] == ["finished", "failed", "finished", "finished"]
    failed = runs.read_json(run_dir(tmp_path / "runs", exp.runs[1]) / runs.SUMMARY)
    assert "out of memory" in failed["error"]
    assert runs.run_status(run_dir(tmp_path / "runs", exp.runs[1])) == "failed"


def test_reset_starts_over(grid, tmp_path, mnist_root):
    cfg, _ = grid
    root = tmp_path / "runs"
    only = ("--only", "trial:1_deckae:0")
    assert kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, *only).returncode == 0
    summary = run_dir(root, load_experiment(cfg).runs[0]) / runs.SUMMARY
    before = summary.stat().st_mtime_ns
    assert kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, *only, "--reset").returncode == 0
    assert summary.stat().st_mtime_ns != before


def test_runs_trained_with_other_settings_are_stale_and_nothing_is_touched(grid, tmp_path, mnist_root):
    cfg, root = grid
    changed = tmp_path / "grid.yml"  # same experiment and run folders, another learning rate
    changed.write_text(cfg.read_text().replace("lr: 1.0e-3", "lr: 2.0e-3"))
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    r = kaec("train", "-c", changed, "--runs-dir", root, "--dry-run", "--json")
    assert r.returncode == 0 and {x["status"] for x in json.loads(r.stdout)} == {"stale"}
    r = kaec("train", "-c", changed, "--runs-dir", root, "--data-root", mnist_root)
    assert r.returncode == 2 and "trained with other settings (train.lr); use --reset" in r.stderr
    table = results_table(load_experiment(changed), root)
    assert {row["status"] for row in table.rows} == {"stale"} and all(row.get(LOSS) is None for row in table.rows)
    # --reset with data that cannot be had fails before any folder is deleted
    (tmp_path / "a-file").write_text("not a folder")
    r = kaec("train", "-c", changed, "--runs-dir", root, "--reset", "--data-root", tmp_path / "a-file")
    assert r.returncode == 2 and "a-file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()} == stamps


def test_dry_run_rejects_what_a_real_run_would(tmp_path):
    cfg = tmp_path / "g.yml"
    cfg.write_text(GRID.replace("optimizer: Adam", "optimizer: Adamm"))
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--dry-run")
    assert r.returncode == 2 and "unknown optimizer 'Adamm'" in r.stderr
    cfg.write_text(GRID.replace("dataset: mnist", f"dataset: folder:{tmp_path / 'nowhere'}"))
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--dry-run")
    assert r.returncode == 2 and f"{cfg}: data.dataset: folder {tmp_path / 'nowhere'} does not exist" in r.stderr


def test_results_for_a_runs_folder_that_is_not_there(grid, tmp_path):
    cfg, _ = grid
    r = kaec("results", "-c", cfg, "--runs-dir", tmp_path / "typo")
    assert r.returncode == 2 and "no runs of" in r.stderr and "Traceback" not in r.stderr
    named = tmp_path / "named.yml"  # run folders named from a matrix value
    named.write_text(GRID.replace("experiment_name: grid", "experiment_name: grid-${deckae}"))
    (tmp_path / "runs" / "grid-2").mkdir(parents=True)
    r = kaec("results", "-c", named, "--runs-dir", tmp_path / "runs", "-f", "json")
    assert r.returncode == 0 and {row["status"] for row in json.loads(r.stdout)} == {"pending"}


def test_finished_runs_need_neither_their_device_nor_their_data_here(grid, tmp_path):
    cfg, root = grid
    moved = tmp_path / "grid.yml"  # as if trained on a GPU box with a folder dataset, copied here
    moved.write_text(cfg.read_text().replace("  lr: 1.0e-3", "  lr: 1.0e-3\n  device: cuda:7"))
    for args in (["--dry-run"], []):
        r = kaec("train", "-c", moved, "--runs-dir", root, *args)
        assert r.returncode == 0, r.stderr


def test_loss_curves_and_reconstruction_grid(grid, tmp_path, mnist_root):
    cfg, root = grid
    out = tmp_path / "curves.png"
    r = kaec("plot", "-c", cfg, "--runs-dir", root, "-o", out, "--color-by", "deckae", "--log")
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 500
    grid_png = tmp_path / "recon.png"
    r = kaec("plot", "-c", cfg, "--runs-dir", root, "-o", grid_png, "--recon", "--images", "6",
             "--only", "trial:1", "--data-root", mnist_root)
    assert r.returncode == 0, r.stderr
    with Image.open(grid_png) as im:
        assert im.format == "PNG" and im.height > 200
    r = kaec("plot", "-c", cfg, "--runs-dir", root, "-o", tmp_path / "x.png", "--color-by", "color")
    assert r.returncode == 2 and "not a matrix key" in r.stderr
    r = kaec("plot", "-c", cfg, "--runs-dir", root, "-o", tmp_path / "missing" / "x.png")
    assert r.returncode == 2 and "does not exist" in r.stderr
    assert not (tmp_path / "missing").exists() and not (tmp_path / "x.png").exists()


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    runs.atomic_write_json(target, {"old": True})

    def boom(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        runs.atomic_write_json(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_aggregated_slug_keeps_underscored_keys_and_values(tmp_path):
    cfg = tmp_path / "g.yml"
    cfg.write_text(GRID.replace("deckae: [0, 2]", "dec_kae: [0, 2]\n  act: [leaky_relu]")
                   .replace("${deckae}", "${dec_kae}").replace("  output_activation: sigmoid",
                                                             "  output_activation: sigmoid\n  activation: ${act}"))
    table = results_table(load_experiment(cfg), tmp_path / "none", aggregate_column="trial")
    assert [r["matrix_slug"] for r in table.rows] == ["trial:*_dec_kae:0_act:leaky_relu",
                                                      "trial:*_dec_kae:2_act:leaky_relu"]


def test_the_loss_column_names_the_budget_only_when_all_runs_share_it(tmp_path):
    cfg = tmp_path / "g.yml"
    cfg.write_text(GRID)
    assert LOSS in results_table(load_experiment(cfg), tmp_path / "none").columns
    cfg.write_text(GRID.replace("deckae: [0, 2]", "deckae: [0, 2]\n  budget: [320, 640]")
                   .replace("max_inputs: 320", "max_inputs: ${budget}"))
    columns = results_table(load_experiment(cfg), tmp_path / "none").columns
    assert "validation loss (final)" in columns and not any("steps)" in c for c in columns)
