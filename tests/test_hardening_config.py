"""Issue 10, the config / training / results side: the study's real file, escapes, inputs that would hang
or exhaust the machine, and what the user sees."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from kaecompress import KaecError

from kaecompress.experiments import runs
from kaecompress.experiments.config import MAX_RUNS, MAX_YAML_NODES, build_run, expand, load_experiment
from kaecompress.experiments.sweep import run_dir

from conftest import TINY, kaec, kaec_bounded, write_config

STUDY = Path("tests/data/study-cnn-kae-01.yml")
# The bounds the issue sets for refusals: start-up and `import torch` included.
WALL_S, RSS_MB = 5.0, 400


def assert_refused_fast(args, message, cwd=None):
    r, wall, rss = kaec_bounded(*args, cwd=cwd)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert wall < WALL_S, f"took {wall:.1f} s"
    assert rss < RSS_MB, f"peak {rss:.0f} MB"
    return r


# ---- 1. the study's real file ----------------------------------------------------------------------------

def test_the_study_file_expands_to_its_256_runs_each_in_its_own_folder():
    exp = load_experiment(STUDY)
    assert len(exp.runs) == 256 and exp.runs[-1].matrix_id == "256"
    first = exp.runs[0]
    slug = "trial:1_bs:64_lr:0.0003_opt:Adam_ch:[32]_ks:3_enckae:0_deckae:0_act:relu_outact:None"
    assert first.matrix_slug == slug
    assert first.matrix == {"trial": 1, "bs": 64, "lr": 0.0003, "opt": "Adam", "ch": [32], "ks": 3, "enckae": 0,
                            "deckae": 0, "act": "relu", "outact": None}
    assert first.experiment_name == f"ae/kae/cnn-kae-mnist_{slug}"
    assert run_dir("runs", first) == Path("runs/ae/kae") / f"cnn-kae-mnist_{slug}"  # no second slug level
    assert first.model.channels == (32,) and first.model.output_activation == "none"
    assert first.train.lr == 3e-4 and first.train.max_inputs == 300_000 and first.train.batch_size == 64
    assert len({run_dir("runs", r) for r in exp.runs}) == 256
    # The same grid as our native file of it, run for run.
    native = load_experiment("experiments/cnn-kae-01.yml")
    assert [(r.model, r.train, r.data, r.trial) for r in exp.runs] == \
        [(r.model, r.train, r.data, r.trial) for r in native.runs]


def test_the_full_study_file_passes_dry_run(tmp_path):
    r = kaec("train", "-c", STUDY, "--runs-dir", tmp_path / "runs", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 256 and {row["status"] for row in rows} == {"pending"}
    assert rows[0]["dir"].startswith(str(tmp_path / "runs" / "ae" / "kae" / "cnn-kae-mnist_trial:1_"))
    assert not (tmp_path / "runs").exists()


def cut_down(tmp_path, inputs=3_000):
    """The study's file with its budget cut to a few thousand inputs and its matrix to 2 runs."""
    text = STUDY.read_text()
    for old, new in (("max_inputs: 300_000", f"max_inputs: {inputs:_}"),
                     ("    - 3\n    - 4\n", ""), ("    - 64\n    - 128\n", "    - 64\n"),
                     ('    - "Adam"\n    - "AdamW"\n', '    - "AdamW"\n'),
                     ("  ks:\n    - 3\n    - 7\n", "  ks:\n    - 7\n"),
                     ("  enckae:\n    - 0\n    - 3\n", "  enckae:\n    - 0\n"),
                     ("  deckae:\n    - 0\n    - 3\n", "  deckae:\n    - 3\n"),
                     ('    - "None"\n    - "\'sigmoid\'"\n', '    - "\'sigmoid\'"\n')):
        assert old in text, old
        text = text.replace(old, new)
    return write_config(tmp_path / "cnn-kae-01.yml", text)


def test_the_cut_down_study_file_trains_is_interrupted_resumes_and_gives_the_study_table(tmp_path, mnist_root):
    cfg = cut_down(tmp_path)
    exp = load_experiment(cfg)
    assert len(exp.runs) == 2
    root = tmp_path / "runs"
    second = run_dir(root, exp.runs[1])
    proc = subprocess.Popen([sys.executable, "-m", "kaecompress.cli.main", "train", "-c", str(cfg), "--runs-dir",
                             str(root), "--data-root", str(mnist_root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not any(
            "train_loss" in m for m in runs.read_metrics(second)):
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # Ctrl-C in the middle of the second run
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err.splitlines()[-1]
    assert runs.run_status(run_dir(root, exp.runs[0])) == "finished"
    assert runs.run_status(second) == "interrupted"
    done_at_interrupt = runs.read_json(second / runs.SUMMARY)
    assert done_at_interrupt is None
    r = kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, "--json")
    assert r.returncode == 0, r.stderr
    summaries = json.loads(r.stdout)
    assert [s["status"] for s in summaries] == ["finished", "finished"]
    assert all(s["inputs"] == 3_000 for s in summaries)
    logged = [m["inputs"] for m in runs.read_metrics(second) if "train_loss" in m]
    assert logged == sorted(set(logged)) and logged[-1] == 3_000  # resumed, nothing logged twice
    # The study's exact command (README), with the cut budget in the column name.
    loss = "validation loss (3,000 steps)"
    r = kaec("results", "--config", cfg, "--runs-dir", root, "-ec", "matrix_id", "matrix_slug", "compression-ratio",
             "-sc", f"{loss}-", "-ac", "trial", "-acs", loss)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    # our name for the column counts inputs; the study's name (steps) above is read as it
    assert header == ["bs", "lr", "opt", "ch", "ks", "enckae", "deckae", "act", "outact",
                      "validation loss (3,000 inputs)", "(std)", "(min)",
                      "(max)", "model params", "train time (minutes)", "throughput", "count"]
    (row,) = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    losses = [s["final_val_loss"] for s in summaries]
    assert row[:9] == ["64", "0.0003", "AdamW", "[32]", "7", "0", "3", "relu", "sigmoid"]
    assert float(row[9]) == pytest.approx(sum(losses) / 2, abs=1e-6)
    assert float(row[11]) == pytest.approx(min(losses), abs=1e-6) and row[-1] == "2"
    assert row[13] == "1,257,713"  # the study's parameter count for this model


# ---- 2. escapes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", ".", "../outside", "a/../../outside", "/tmp/abs", "a//b", "a/./b", "x\\..",
                                  "~/home"])
def test_names_that_could_leave_the_runs_folder_are_refused(name):
    data = yaml.safe_load(TINY)
    data["experiment_name"] = name
    with pytest.raises(KaecError, match=r"x.yml: experiment_name: expected folder names"):
        build_run(data, "x.yml")


def test_a_matrix_value_cannot_smuggle_a_parent_folder_into_the_name():
    data = yaml.safe_load(TINY)
    data["experiment_name"] = "exp/${where}"
    data["matrix"] = {"where": ["ok", ".."]}
    with pytest.raises(KaecError, match=r"experiment_name: expected folder names .* got 'exp/\.\.'"):
        expand(data, "x.yml")
    data["experiment_name"] = "exp/${where}_${matrix_slug}"
    data["matrix"] = {"where": ["../../x"]}  # slugs never hold '/', the name part does
    with pytest.raises(KaecError, match="experiment_name: expected folder names"):
        expand(data, "x.yml")


def test_reset_with_a_parent_name_deletes_nothing_outside(tmp_path, mnist_root):
    victim = tmp_path / "precious"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    root = tmp_path / "work" / "runs"
    root.mkdir(parents=True)
    for name in ("..", "../precious", "../../precious"):
        cfg = write_config(tmp_path / "evil.yml", TINY.replace("experiment_name: tiny", f"experiment_name: '{name}'"))
        r = kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, "--reset")
        assert r.returncode == 2 and "experiment_name: expected folder names" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
    assert (victim / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.yml", "precious", "work"]
    assert list(root.iterdir()) == []


def test_run_path_itself_refuses_escapes():
    for folder in ("..", "a/..", "/etc", "", "a//b"):
        with pytest.raises(KaecError, match="relative path inside the runs folder"):
            runs.run_path("runs", folder)
    assert runs.run_path("runs", "ae/kae/x") == Path("runs/ae/kae/x")


# ---- 3. inputs that would hang or exhaust the machine ----------------------------------------------------

def bomb(indent=""):
    lines = [f"{indent}l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for level in range(1, 9):
        lines.append(f"{indent}l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("where", ["top", "matrix", "model"])
def test_yaml_alias_bombs_are_refused_fast(tmp_path, where):
    if where == "top":
        text = bomb() + TINY
    elif where == "matrix":
        text = TINY + "matrix:\n  trial: [1]\n" + bomb("  ") + "  boom: [*l8]\n"
    else:
        text = TINY.replace("model:\n", "model:\n" + bomb("  "))
    cfg = write_config(tmp_path / "bomb.yml", text)
    assert_refused_fast(["train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs"],
                        f"YAML aliases expand to more than {MAX_YAML_NODES:,} values")
    assert not (tmp_path / "runs").exists()


def test_an_alias_inside_its_own_anchor_is_refused(tmp_path):
    cfg = write_config(tmp_path / "loop.yml", TINY + "loop: &a [1, *a]\n")
    with pytest.raises(KaecError, match="refers to its own anchor"):
        load_experiment(cfg)


def test_merge_keys_and_ordinary_aliases_still_work(tmp_path):
    text = TINY.replace("  batch_size: 32\n", "  <<: &defaults {batch_size: 16, lr: 5.0}\n")
    text = text.replace("  channels: [4]\n", "  channels: *ch\n")
    text = text.replace("experiment_name: tiny", "experiment_name: tiny-${c}\nmatrix:\n  c: [&ch [4]]")
    run = load_experiment(write_config(tmp_path / "merge.yml", text)).runs[0]
    assert run.train.batch_size == 16 and run.train.lr == 1.0e-3  # merged, and the explicit key wins
    assert run.model.channels == (4,) and run.experiment_name == "tiny-[4]"


def test_a_million_combinations_are_refused_with_the_count(tmp_path):
    matrix = "matrix:\n" + "".join(f"  k{i}: [{', '.join(str(v) for v in range(10))}]\n" for i in range(6))
    cfg = write_config(tmp_path / "huge.yml", TINY + matrix)
    r = assert_refused_fast(["train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs"],
                            "10 x 10 x 10 x 10 x 10 x 10 = 1,000,000 combinations")
    assert f"at most {MAX_RUNS:,} runs" in r.stderr


def test_a_large_grid_of_large_runs_is_refused_before_expanding(tmp_path):
    """10,000 runs are allowed, but not 10,000 copies of a 5,000-value file (minutes of expansion)."""
    matrix = "matrix:\n  a: [" + ", ".join(map(str, range(100))) + "]\n  b: [" + ", ".join(map(str, range(100))) + "]\n"
    cfg = write_config(tmp_path / "wide.yml", TINY.replace("channels: [4]", "channels: [" + ", ".join(["4"] * 5000) + "]")
                       + matrix)
    assert_refused_fast(["train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs"],
                        "matrix: 10,000 runs of 5,017 values each would build 50,170,000 values; at most 2,000,000")


@pytest.mark.parametrize("change,message", [
    (("decoder_kae_order: 2", "decoder_kae_order: 100000"), "would need about"),
    (("latent_dim: 8", "latent_dim: 1.0e+8"), "would need about"),
])
def test_models_that_cannot_fit_are_refused_by_dry_run_and_by_training(tmp_path, mnist_root, change, message):
    cfg = write_config(tmp_path / "big.yml", TINY.replace(*change))
    r = assert_refused_fast(["train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs"], message)
    assert "80% of this machine's" in r.stderr and "--max-memory" in r.stderr
    assert_refused_fast(["train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root], message)
    assert not (tmp_path / "runs").exists()


def test_max_memory_changes_the_limit(tmp_path):
    cfg = write_config(tmp_path / "tiny.yml", TINY)
    r = kaec("train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs", "--max-memory", "10M")
    assert r.returncode == 2 and "more than 10 MiB (the limit set; --max-memory changes it)" in r.stderr
    r = kaec("train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs", "--max-memory", "4G")
    assert r.returncode == 0, r.stderr
    r = kaec("train", "-c", cfg, "--dry-run", "--max-memory", "lots")
    assert r.returncode == 2 and "--max-memory: expected a size such as 12G" in r.stderr


def test_the_estimate_is_of_the_order_of_what_training_takes(tmp_path, mnist_root):
    """The study's model at its batch size: the estimate must cover the measured peak, and not by 10x."""
    from kaecompress.experiments.resources import estimate_bytes, parameter_count

    cfg = cut_down(tmp_path, inputs=2_000)
    exp = load_experiment(cfg)
    run = exp.runs[0]
    from kaecompress.nn.models import count_parameters
    from kaecompress.experiments.train import build_model

    assert parameter_count(run.model) == count_parameters(build_model(run)) == 1_257_713
    for r in load_experiment(STUDY).runs[:64]:  # every model shape of the grid
        assert parameter_count(r.model) == count_parameters(build_model(r))
    # The child reports its own address space's peak (VmHWM): ru_maxrss survives exec on Linux, so a child
    # started from a pytest process grown large by earlier tests would report pytest's size instead.
    code = ("import re\n"
            "from kaecompress.experiments.config import load_experiment\n"
            "from kaecompress.experiments.train import train_run\n"
            f"run = load_experiment({str(cfg)!r}).runs[0]\n"
            f"train_run(run, {str(tmp_path / 'run')!r}, data_root={str(mnist_root)!r})\n"
            "status = open('/proc/self/status').read()\n"
            "print(int(re.search(r'VmHWM:\\s*(\\d+) kB', status).group(1)) * 1024)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    peak = int(p.stdout.split()[-1])
    estimate = estimate_bytes(run)
    assert peak < estimate < 4 * peak, (peak, estimate)


@pytest.mark.parametrize("optimizer", ["LBFGS", "lbfgs", "SparseAdam"])
def test_optimizers_our_loop_cannot_drive_are_refused_at_check_time(tmp_path, optimizer):
    cfg = write_config(tmp_path / "o.yml", TINY.replace("optimizer: Adam", f"optimizer: {optimizer}"))
    r = kaec("train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2 and "train.optimizer:" in r.stderr and "Adam, AdamW, SGD" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("old,new,where", [
    ("lr: 1.0e-3", "lr: .inf", "train.lr"),
    ("lr: 1.0e-3", "lr: .nan", "train.lr"),
    ("lr: 1.0e-3", "lr: -.inf", "train.lr"),
    ("lr: 1.0e-3", "lr: 1e999", "train.lr"),  # a string to YAML 1.1, infinite as a float
    ("lr: 1.0e-3", "lr: ${lr}\n  weight_decay: 0.0", "matrix.lr[1]"),
    ("latent_dim: 8", "latent_dim: .inf", "model.latent_dim"),
])
def test_non_finite_numbers_are_refused_everywhere(tmp_path, old, new, where):
    text = TINY.replace(old, new)
    if "${lr}" in new:
        text += "matrix:\n  lr: [0.001, .inf]\n"
    cfg = write_config(tmp_path / "inf.yml", text)
    r = kaec("train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 2, r.stderr
    assert where in r.stderr and ("finite number" in r.stderr or "expected an integer" in r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("old,new", [
    ("learnrate: ${lr}", "learnrate: .inf"),
    ("    - 0.0003\n", "    - .nan\n"),
    ("CODE_SIZE: 16", "CODE_SIZE: 1e999"),
    ("latent_dim=CODE_SIZE", "latent_dim=1e999"),
])
def test_non_finite_numbers_are_refused_in_the_study_format_too(tmp_path, old, new):
    text = STUDY.read_text()
    assert old in text
    cfg = write_config(tmp_path / "study.yml", text.replace(old, new))
    with pytest.raises(KaecError, match="finite number|expected an integer"):
        load_experiment(cfg)


# ---- 4. what the user sees -------------------------------------------------------------------------------

def test_help_shows_no_type_after_flags():
    for command in ("train", "results", "plot", "encode", "promote"):
        r = kaec(command, "--help")
        assert r.returncode == 0 and "<bool>" not in r.stdout, command
    r = kaec("promote", "--help")
    assert "validation MSE" in " ".join(r.stdout.split()) and "ONNX" not in r.stdout


def test_one_run_is_one_run_and_a_failed_run_shows_no_bare_minutes(tmp_path, mnist_root):
    cfg = write_config(tmp_path / "tiny.yml", TINY)
    r = kaec("train", "-c", cfg, "--dry-run", "--runs-dir", tmp_path / "runs")
    assert r.returncode == 0 and "1 run of" in r.stdout and "1 runs" not in r.stdout
    from kaecompress.cli.experiments import _summary_row  # the row the summary table prints

    row = _summary_row({"status": "failed", "matrix_id": "1", "matrix_slug": "run", "error": "boom"})
    assert row["train time"] == "" and "min" not in json.dumps(row)
    assert _summary_row({"status": "finished", "train_time_s": 90.0})["train time"] == "1.50 min"


def test_progress_lines_when_stdout_and_stderr_are_not_a_terminal(tmp_path, mnist_root):
    cfg = write_config(tmp_path / "tiny.yml", TINY.replace("max_inputs: 320", "max_inputs: 3200"))
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path / "runs", "--data-root", mnist_root)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "[1/1] train tiny/run"
    tenths = [line for line in lines if "inputs  loss" in line]
    assert 9 <= len(tenths) <= 11 and tenths[-1].split()[1] == "100%"
    assert any("validation loss" in line and "(done)" in line for line in lines)


# ---- 2. a full disk during training ----------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs), so writes fail with ENOSPC as on a full disk."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_full_disk_during_training_fails_the_run_in_one_line_and_keeps_its_checkpoint(small_disk, mnist_root):
    from kaecompress.experiments.train import load_checkpoint

    cfg = write_config(small_disk.parent / "tiny.yml", TINY.replace("max_inputs: 320", "max_inputs: 600_000\n"
                                                                    "  checkpoint_every_s: 0.1"))
    root = small_disk / "runs"
    run = run_dir(root, load_experiment(cfg).runs[0])
    proc = subprocess.Popen([sys.executable, "-m", "kaecompress.cli.main", "train", "-c", str(cfg), "--runs-dir",
                             str(root), "--data-root", str(mnist_root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (run / runs.CHECKPOINT).exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    # Fill the disk, leaving room for a few small files but not for the next checkpoint (about 0.8 MB).
    stat = os.statvfs(small_disk)
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * (stat.f_bavail * stat.f_frsize - 64 * 1024))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert "disk full" in lines[-1] and "last checkpoint kept" in lines[-1] and "Traceback" not in err
    assert not [line for line in lines if line.startswith("error:")][1:]  # one error line
    assert runs.run_status(run) == "failed"
    assert "disk full" in runs.read_json(run / runs.SUMMARY)["error"]
    assert load_checkpoint(run / runs.CHECKPOINT)["inputs"] > 0  # the last good one, whole
    assert not list(run.glob(".*.tmp"))


# ---- 3/4. results and plots ------------------------------------------------------------------------------

GRID = TINY.replace("experiment_name: tiny", "experiment_name: grid\nmatrix:\n  trial: [1, 2]\n  deckae: [0, 2]")\
    .replace("decoder_kae_order: 2", "decoder_kae_order: ${deckae}")


@pytest.fixture(scope="module")
def trained_grid(tmp_path_factory, mnist_root):
    home = tmp_path_factory.mktemp("grid")
    cfg = write_config(home / "grid.yml", GRID)
    r = kaec("train", "-c", cfg, "--runs-dir", home / "runs", "--data-root", mnist_root)
    assert r.returncode == 0, r.stderr
    return cfg, home / "runs"


@pytest.mark.parametrize("damage,message", [
    (lambda s: s.pop("train_time_s"), "damaged run summary (missing train_time_s)"),
    (lambda s: s.update(params="many"), "damaged run summary (not a number: params)"),
    ("{not json", "not a readable run summary"),
    ("[1, 2]", "not a readable run summary"),
])
def test_a_damaged_summary_is_one_line_naming_it(trained_grid, tmp_path, damage, message):
    import shutil

    cfg, root = trained_grid
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    path = run_dir(copy, load_experiment(cfg).runs[1]) / runs.SUMMARY
    if callable(damage):
        summary = json.loads(path.read_text())
        damage(summary)
        path.write_text(json.dumps(summary))
    else:
        path.write_text(damage)
    r = kaec("results", "-c", cfg, "--runs-dir", copy)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {path}: {message}" + r.stderr.strip().split(message)[1]
    assert len(r.stderr.strip().splitlines()) == 1 and str(path) in r.stderr


def test_color_by_gives_each_run_of_a_colour_its_own_line_style_marker_and_label(trained_grid, tmp_path):
    from kaecompress.experiments.plots import curve_styles

    cfg, root = trained_grid
    text = GRID.replace("trial: [1, 2]", "trial: [1, 2, 3, 4]")
    exp = load_experiment(write_config(tmp_path / "g.yml", text))
    styles = curve_styles(exp.runs, "deckae")
    by_colour = {}
    for s in styles:
        by_colour.setdefault(s["colour"], []).append(s)
    assert len(by_colour) == 2 and all(len(v) == 4 for v in by_colour.values())
    for members in by_colour.values():
        assert len({(m["linestyle"], m["marker"]) for m in members}) == 4
        assert len({m["label"] for m in members}) == 4
    assert styles[0]["label"] == "deckae=0: trial=1"
    out = tmp_path / "curves.png"
    r = kaec("plot", "-c", cfg, "--runs-dir", root, "-o", out, "--color-by", "deckae")
    assert r.returncode == 0 and out.stat().st_size > 10_000


def test_threads_default_to_one_and_follow_the_flag_or_the_config(tmp_path, mnist_root):
    cfg = write_config(tmp_path / "tiny.yml", TINY)
    for extra, expected in (([], 1), (["--threads", "2"], 2)):
        root = tmp_path / f"runs{expected}"
        r = kaec("train", "-c", cfg, "--runs-dir", root, "--data-root", mnist_root, "--json", *extra)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)[0]["threads"] == expected
    cfg2 = write_config(tmp_path / "t2.yml", TINY.replace("  log_every: 64", "  log_every: 64\n  threads: 2"))
    r = kaec("train", "-c", cfg2, "--runs-dir", tmp_path / "runs-cfg", "--data-root", mnist_root, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)[0]["threads"] == 2
    r = kaec("train", "-c", write_config(tmp_path / "t0.yml", TINY.replace("  log_every: 64", "  threads: 0")),
             "--dry-run")
    assert r.returncode == 2 and "train.threads: expected a positive value" in r.stderr


# ---- issue 26: deep nesting, special files and names too long for the file system ------------------------

def _study_with_model(text: str) -> str:
    study = STUDY.read_text()
    start = study.index("model: |")
    end = study.index("\n", study.index("  )", start))
    return study[:start] + f'model: "{text}"' + study[end:]


@pytest.mark.parametrize("kind, text", [
    ("flow", "experiment_name: x\ndata: " + "[" * 100_000 + "\n"),
    ("block", "experiment_name: x\ndata:\n" + "- " * 50_000 + "1\n"),
    ("mappings", "".join(" " * i + f"k{i}:\n" for i in range(1000)) + " " * 1000 + "v\n"),
    ("study-unary-minus", _study_with_model("-" * 200_000 + "1")),
    ("study-operator-chain", _study_with_model("1" + "+1" * 100_000)),
], ids=lambda v: v if len(v) < 30 else "")
def test_deep_nesting_in_an_experiment_file_is_one_line_naming_it(tmp_path, kind, text):
    path = write_config(tmp_path / f"{kind}.yml", text)
    assert_refused_fast(["train", "-c", path, "--runs-dir", tmp_path / "runs"], f"{path}")
    assert_refused_fast(["train", "-c", path, "--dry-run"], "nested more than 100 levels deep")
    assert not (tmp_path / "runs").exists()


def test_nesting_as_deep_as_a_real_file_could_go_is_still_read(tmp_path):
    data = "[" * 98 + "]" * 98  # with the file's mapping and train: 100 levels, the limit
    path = write_config(tmp_path / "deep.yml", TINY.replace("  batch_size: 32\n", f"  batch_size: 32\n  x: {data}\n"))
    with pytest.raises(KaecError, match="train.x: unknown key"):  # read whole, then validated as usual
        load_experiment(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero-link", "huge"])
def test_an_experiment_file_that_is_no_regular_file_or_too_big_is_refused_unread(tmp_path, kind):
    path = tmp_path / "exp.yml"
    if kind == "fifo":
        os.mkfifo(path)  # reading it would wait for a writer for ever
    elif kind == "dev-zero-link":
        path.symlink_to("/dev/zero")  # reading it would never end
    else:
        with open(path, "wb") as f:
            f.truncate(5 << 30)  # 5 GB, sparse
    message = "at most 1,048,576 bytes" if kind == "huge" else "not a regular file (expected an experiment file)"
    r = assert_refused_fast(["train", "-c", path, "--dry-run"], message)
    assert str(path) in r.stderr


@pytest.mark.parametrize("change, key", [
    ({"experiment_name": "a" * 300}, "experiment_name: folder name 'aaaa"),
    ({"experiment_name": "é" * 200}, "is 400 bytes"),
    ({"experiment_name": "/".join(["b" * 250] * 5)}, "experiment_name: the run folder"),
    ({"experiment_name": "exp/${matrix_slug}", "matrix": {"v": ["c" * 300]}}, "${matrix_slug}"),
    ({"matrix": {"v": ["d" * 300]}}, "matrix: folder name 'v:ddd"),
])
def test_a_run_folder_name_the_file_system_would_refuse_is_refused_before_training(tmp_path, change, key):
    data = yaml.safe_load(TINY)
    data.update(change)
    path = write_config(tmp_path / "long.yml", yaml.safe_dump(data, allow_unicode=True))
    r = assert_refused_fast(["train", "-c", path, "--runs-dir", tmp_path / "runs"], key)
    assert "long.yml" in r.stderr and "File name too long" not in r.stderr
    assert not (tmp_path / "runs").exists()
    data["experiment_name"] = data["experiment_name"].replace("a" * 300, "a" * 255).replace("é" * 200, "é" * 127)
    if "matrix" not in change and "/" not in data["experiment_name"]:  # the longest names that fit are fine
        write_config(path, yaml.safe_dump(data, allow_unicode=True))
        assert len(load_experiment(path).runs) == 1
