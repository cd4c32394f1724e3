"""The study's rows (docs/study.md): its transcribed tables against our experiment files, our committed runs
under results/ against the same files, `kaec results --runs-dir results` over them, and the flag rule."""

import importlib.util
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kaecompress.experiments.config import load_experiment, recipe_of

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results"
STUDY = json.loads((ROOT / "docs" / "results" / "study-cnn-kae.json").read_text())
GRIDS = {"grid1": ROOT / "experiments" / "cnn-kae-01.yml", "grid2": ROOT / "experiments" / "cnn-kae-02.yml"}
LOSS = "validation loss (300,000 steps)"
STUDY_ARGS = ["-ec", "matrix_id", "matrix_slug", "compression-ratio", "-sc", f"{LOSS}-", "-ac", "trial", "-acs", LOSS]


def _module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _keys(experiment) -> list[str]:
    return [k for k in experiment.matrix if k != "trial"]


def _committed(grid: str) -> dict[tuple, list[dict]]:
    """Our committed finished runs of a grid, their summaries grouped by settings (trial left out)."""
    experiment = load_experiment(GRIDS[grid])
    grouped: dict[tuple, list[dict]] = {}
    for cfg in experiment.runs:
        path = RESULTS / cfg.run_folder / "summary.json"
        if path.exists():
            grouped.setdefault(tuple(cfg.matrix[k] for k in _keys(experiment)), []).append(json.loads(path.read_text()))
    return grouped


@pytest.mark.parametrize("grid, size", [("grid1", 64), ("grid2", 48)])
def test_the_transcribed_rows_are_the_settings_of_our_experiment_file(grid, size):
    experiment = load_experiment(GRIDS[grid])
    keys = _keys(experiment)
    study = [tuple(row[k] for k in keys) for row in STUDY[grid]]
    assert len(study) == size and len(set(study)) == size
    assert set(study) == {tuple(cfg.matrix[k] for k in keys) for cfg in experiment.runs}
    assert all(isinstance(row["loss"], float) and row["loss"] > 0 and isinstance(row["params"], int)
               for row in STUDY[grid])


def test_the_transcription_names_its_source_and_keeps_the_study_figures():
    assert "cnn-kae-01.md" in STUDY["source"]["log"]
    assert "-acs \"validation loss (300,000 steps)\"" in STUDY["source"]["command"]
    best = next(r for r in STUDY["grid1"] if (r["bs"], r["opt"], r["ks"], r["enckae"], r["deckae"], r["outact"])
                == (64, "AdamW", 7, 0, 3, "sigmoid"))
    assert (best["loss"], best["loss_std"], best["params"], best["throughput"]) == (0.015391, 0.000306, 1257713, 2056)
    assert all("loss_std" not in r for r in STUDY["grid2"])
    # A model's size depends on kernel size and the two bottlenecks alone: a swapped cell would break this.
    params = {}
    for row in STUDY["grid1"] + STUDY["grid2"]:
        params.setdefault((row["ks"], row["enckae"], row["deckae"]), set()).add(row["params"])
    assert all(len(sizes) == 1 for sizes in params.values())


def test_the_flag_rule():
    gen = _module(ROOT / "docs" / "gen.py", "docs_gen")
    # ours 0.0200 +- 0.0001 against 0.0150 +- 0.0003: far outside 2 sqrt(0.0001^2 + 0.0003^2)
    assert gen.grid1_flag([0.0199, 0.0200, 0.0201], 0.0150, 0.0003) == f"{gen.DIFFERS}, 31.1 SE"
    assert gen.grid1_flag([0.01535, 0.01540, 0.01545], 0.015391, 0.000306) == "within 2 std, 0.1 SE"
    assert gen.grid1_flag([0.0300], 0.0150, 0.0003) == "1 trial"  # far off, but one trial has no spread
    assert gen.grid1_flag([], 0.0150, 0.0003) == ""
    # on either side of the bound: mean 1.0, sample std 0.1414, so 2 sqrt(0.1414^2 + 0) = 0.2828
    assert gen.grid1_flag([0.9, 1.1], 1.28, 0.0) == "within 2 std, 2.8 SE"  # gap / (0.1414 / sqrt 2)
    assert gen.grid1_flag([0.9, 1.1], 1.29, 0.0).startswith(gen.DIFFERS)
    assert gen.grid2_flag([0.0111], 0.0100) == gen.DIFFERS and gen.grid2_flag([0.0109], 0.0100) == "agrees"


def test_the_committed_runs_are_finished_summaries_of_our_experiment_files():
    assert {p.name for p in RESULTS.iterdir()} - {"__pycache__"} <= {"collect.py", "cnn-kae-01", "cnn-kae-02"}
    for grid, path in GRIDS.items():
        experiment = load_experiment(path)
        by_slug = {cfg.matrix_slug: cfg for cfg in experiment.runs}
        study = {tuple(row[k] for k in _keys(experiment)): row for row in STUDY[grid]}
        folder = RESULTS / experiment.name
        for run in sorted(folder.iterdir()) if folder.exists() else []:
            assert run.is_dir() and not run.is_symlink() and run.name in by_slug, run
            assert sorted(os.listdir(run)) == ["config.yml", "summary.json"], run
            assert not any((run / f).is_symlink() for f in os.listdir(run)), run
            cfg, summary = by_slug[run.name], json.loads((run / "summary.json").read_text())
            assert summary["status"] == "diverged" or summary["inputs"] == cfg.train.max_inputs, run
            assert summary["status"] in ("finished", "diverged"), run
            assert summary["matrix_slug"] == run.name and summary["recipe"] == cfg.recipe(), run
            assert recipe_of(yaml.safe_load((run / "config.yml").read_text())) == cfg.recipe(), run
            assert summary["params"] == study[tuple(cfg.matrix[k] for k in _keys(experiment))]["params"], run


def test_the_study_command_reads_the_committed_runs_aggregated_over_trials():
    committed = _committed("grid1")
    assert committed, "results/ holds none of the first grid's runs"
    # The console entry point, as a user types it in a fresh clone (-ec takes several values there).
    result = subprocess.run([sys.executable, "-m", "kaecompress.cli.main", "results", "--config",
                             "experiments/cnn-kae-01.yml", "--runs-dir", "results", *STUDY_ARGS],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert len(rows) == 64  # one row per setting, its four trials merged
    loss = "validation loss (300,000 inputs)"
    with_loss = [r for r in rows if r[loss].replace(".", "", 1).isdigit()]  # others say "4 pending"
    assert len(with_loss) == len(committed)
    values = [float(r[loss]) for r in with_loss]
    assert values == sorted(values, reverse=True) and rows[:len(with_loss)] == with_loss  # sorted as the study did
    keys = _keys(load_experiment(GRIDS["grid1"]))
    for settings, summaries in committed.items():
        shown = tuple("" if v is None else str(v) for v in settings)
        row = next(r for r in rows if tuple(r[k] for k in keys) == shown)
        losses = [s["final_val_loss"] for s in summaries]
        assert row[loss] == f"{statistics.mean(losses):.6f}"
        assert row["count"] == "4"
        if len(losses) > 1:
            assert row["(std)"] == f"{statistics.stdev(losses):.6f}"
        done = "finished" if len(losses) == 4 else f"{len(losses)} finished, "
        assert row.get("status", "finished").startswith(done), row  # no status column once all are finished


def _table_rows(table: str) -> list[str]:
    return [line for line in table.splitlines() if line.startswith("| ")][1:]  # the header left out


def test_the_generated_tables_show_each_committed_setting():
    gen = _module(ROOT / "docs" / "gen.py", "docs_gen")
    table = gen.study_grid1()
    assert len(_table_rows(table)) == 64
    for settings, summaries in _committed("grid1").items():
        losses = [s["final_val_loss"] for s in summaries]
        spread = f" +- {statistics.stdev(losses):.6f}" if len(losses) > 1 else ""
        assert f"| {statistics.mean(losses):.6f}{spread} ({len(losses)}) |" in table, settings
    assert table.count("not trained yet") == 64 - len(_committed("grid1"))
    assert len(_table_rows(gen.study_grid2())) == 48
    assert "| KAE decoder |" in gen.study_questions()


@pytest.mark.parametrize("grid", ["grid1", "grid2"])
def test_the_verdict_counts_the_decoder_pairs_of_the_committed_runs(grid):
    # recount the KAE-decoder line from the committed summaries and the study's rows, apart from gen.py
    gen = _module(ROOT / "docs" / "gen.py", "docs_gen")
    keys = _keys(load_experiment(GRIDS[grid]))
    ours = {k: statistics.mean(s["final_val_loss"] for s in v) for k, v in _committed(grid).items()}
    study = {tuple(row[k] for k in keys): row["loss"] for row in STUDY[grid]}
    deck = keys.index("deckae")
    pairs = [(k, k[:deck] + (0,) + k[deck + 1:]) for k in study
             if k[deck] == 3 and (grid == "grid2" or (dict(zip(keys, k))["bs"] == 64
                                                      and dict(zip(keys, k))["opt"] == "AdamW"))]
    trained = [(a, b) for a, b in pairs if a in ours and b in ours]
    verdict = gen.study_verdict() if grid == "grid1" else gen.study_verdict2()
    line = next(x for x in verdict.splitlines() if x.startswith("- A KAE decoder"))
    if trained:
        wins = sum(ours[a] < ours[b] for a, b in trained)
        theirs = sum(study[a] < study[b] for a, b in trained)
        assert f"in {wins} of the {len(trained)} pairs we trained (the study, on the same pairs: {theirs} of " \
               f"{len(trained)}; on all {len(pairs)}: {sum(study[a] < study[b] for a, b in pairs)})" in line
    else:
        assert "no pair of ours yet" in line


def test_collect_copies_finished_and_diverged_runs_only(tmp_path, capsys):
    collect = _module(RESULTS / "collect.py", "results_collect")
    experiment = load_experiment(GRIDS["grid1"])
    done, running, linked, stale, diverged = experiment.runs[:5]
    runs_dir, dest = tmp_path / "runs", tmp_path / "results"
    for cfg in (done, running, stale, diverged):
        folder = runs_dir / cfg.run_folder
        folder.mkdir(parents=True)
        (folder / "config.yml").write_text(yaml.safe_dump(cfg.to_dict()))
        (folder / "checkpoint.pt").write_bytes(b"weights")
    summary = {"status": "finished", "matrix_slug": done.matrix_slug, "recipe": done.recipe(), "final_val_loss": 0.02}
    (runs_dir / done.run_folder / "summary.json").write_text(json.dumps(summary))
    (runs_dir / stale.run_folder / "summary.json").write_text(json.dumps({**summary, "recipe": running.recipe()}))
    (runs_dir / diverged.run_folder / "summary.json").write_text(json.dumps(
        {"status": "diverged", "matrix_slug": diverged.matrix_slug, "recipe": diverged.recipe()}))
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "summary.json").write_text(json.dumps({**summary, "recipe": linked.recipe()}))
    (outside / "config.yml").write_text("{}")
    (runs_dir / linked.run_folder).symlink_to(outside)
    old = dest / done.run_folder
    old.mkdir(parents=True)
    (old / "summary.json").write_text("{}")  # an earlier copy: replaced

    counts = collect.collect(runs_dir, dest, [GRIDS["grid1"]])
    assert counts == {"copied": 2, "unchanged": 0, "unfinished": 252, "skipped": 2}
    assert sorted(os.listdir(dest / done.run_folder)) == ["config.yml", "summary.json"]
    assert json.loads((dest / done.run_folder / "summary.json").read_text()) == summary
    assert sorted(p.name for p in (dest / experiment.name).iterdir()) == sorted([done.matrix_slug,
                                                                                 diverged.matrix_slug])
    assert "symbolic link" in capsys.readouterr().err
    assert collect.collect(runs_dir, dest, [GRIDS["grid1"]])["unchanged"] == 2
