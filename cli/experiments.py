"""`kaec train`, `kaec results`, `kaec plot`: experiments, their runs and their results."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kaecompress.cli.options import Device, TableFormat, wide_option
from kaecompress.errors import Interrupted, KaecError

RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", help="Folder holding one folder per experiment run.",
                        envvar="KAEC_RUNS")
CONFIG = typer.Option(..., "--config", "-c", help="Experiment YAML file.", dir_okay=False)


def train(
    config: Path = CONFIG,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root (default: $KAEC_DATA or "
                                             "the user cache dir)."),
    device: Optional[Device] = typer.Option(None, "--device", help="Where the runs train (overrides the "
                                           "config's train.device); auto: cuda when usable."),
    reset: bool = typer.Option(False, "--reset", help="Delete the selected runs' folders and start over."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and their state; train nothing."),
    only: Optional[List[str]] = typer.Option(None, "--only", help="Only runs whose slug matches (glob or "
                                             "substring); repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summaries as JSON on stdout."),
    wide: bool = wide_option(),
    max_memory: Optional[str] = typer.Option(None, "--max-memory", envvar="KAEC_MAX_MEMORY",
                                             help="Refuse runs estimated to need more memory than this (12G, "
                                             "512M, 50%); default: 80% of this machine's memory."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, envvar="KAEC_THREADS",
                                          help="CPU threads per run (overrides train.threads); default: 1, "
                                          "the fastest on a busy 2-core machine (benchmarks/train_threads.py)."),
    workers: str = typer.Option("1", "--workers", help="Runs trained at once, each in its own process on this "
                                "machine: a number, or auto (one per core, or --runs-per-gpu per GPU). Threads "
                                "per worker: cores / workers unless --threads or train.threads is set."),
    runs_per_gpu: int = typer.Option(1, "--runs-per-gpu", min=1, help="With CUDA, workers sharing one GPU."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]", help="Train the runs as tasks of a Ray "
                                      "cluster (needs Ray: the optional extra named ray): ADDRESS, or alone for Ray's own discovery "
                                      "(a running `ray start` cluster, else a local one). --runs-dir must be a "
                                      "folder every node sees."),
    pack: str = typer.Option("auto", "--pack", metavar="auto|N|off", help="Train runs that differ only in "
                             "numbers (trial, optimizer, lr) together as one batched model, each with its own "
                             "folder, checkpoint and summary: at most N per pack; auto: off until packing is measured "
                             "to pay (on the CPU it does not); off: one by one. Codec runs pack across lambdas; with "
                             "--workers or --ray a pack is one worker's task."),
) -> None:
    """Train every run of an experiment; finished runs are skipped and interrupted ones resume."""
    import os

    from kaecompress.experiments.config import check_device, load_experiment
    from kaecompress.experiments.resources import check_memory, parse_size
    from kaecompress.experiments.sweep import run_dir, select

    from kaecompress.cli.progress import SweepProgress, plural, print_table

    from kaecompress.experiments.packing import parse_pack

    pack_mode = parse_pack(pack)  # before anything loads
    limit = parse_size(max_memory) if max_memory else None
    if max_memory:  # runs trained in this process check against the same limit
        os.environ["KAEC_MAX_MEMORY"] = max_memory
    if threads:
        os.environ["KAEC_THREADS"] = str(threads)
    exp = load_experiment(config)
    selected = select(exp, only)
    if device:
        check_device(device, "--device")
    check_memory(selected, limit)
    from kaecompress.experiments.workers import parse_workers

    n_workers = parse_workers(workers, runs_per_gpu)
    if dry_run:  # rejects what a real run would reject at once
        from kaecompress.experiments.runlock import describe, holder
        from kaecompress.experiments.sweep import plan

        states = plan(selected, runs_dir, device)
        rows = [{"matrix_id": r.matrix_id, "matrix_slug": r.matrix_slug, "status": status,
                 "dir": str(run_dir(runs_dir, r))} for r, (status, _) in zip(selected, states)]
        for row in rows:  # a run some process trains right now (its lock's lease)
            lease = holder(Path(row["dir"]))
            if lease:
                row["status"] = f"{row['status']}, being trained by {describe(lease)}"
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            print_table(rows, ["matrix_slug", "status", "matrix_id", "dir"],
                        title=f"{plural(len(rows), 'run')} of {config}", keys=("matrix_slug",), wide=wide)
        return

    from kaecompress.experiments.sweep import run_sweep

    executor, display = None, SweepProgress(len(selected), quiet=as_json)
    if ray is not None or n_workers > 1:  # several runs at once: one display for all of them
        from kaecompress.cli.workers_progress import WorkersProgress

        display = WorkersProgress(selected, quiet=as_json)
        if ray is not None:
            from kaecompress.experiments.raysweep import RayCluster

            executor = RayCluster(None if ray == "auto" else ray, on_event=display.on_event)
        else:
            from kaecompress.experiments.workers import LocalWorkers

            executor = LocalWorkers(n_workers, threads=threads, runs_per_gpu=runs_per_gpu, on_event=display.on_event)
    with display as progress:
        try:
            report = run_sweep(selected, runs_dir, reset=reset, data_root=data_root, device=device,
                               on_run=getattr(progress, "on_run", None), executor=executor, pack=pack_mode)
        except KeyboardInterrupt:
            progress.stop()
            raise Interrupted("a run cut short keeps its checkpoint; run the same command again to resume") from None
    if as_json:
        print(json.dumps(report.summaries, indent=2))
    else:
        rows = [_summary_row(s) for s in report.summaries]
        print_table(rows, ["matrix_slug", "status", "val loss", "matrix_id", "params", "throughput", "train time",
                           "ratio"], title=f"{exp.path}: {plural(len(rows), 'run')} ({len(report.skipped)} already "
                                           "done)", keys=("matrix_slug",), wide=wide)
    for line in report.busy:  # left to the process that holds them (kaecompress.experiments.runlock)
        print(f"skipped {line}", file=sys.stderr)
    if report.diverged:
        print(f"{plural(len(report.diverged), 'run')} diverged: {', '.join(report.diverged)}", file=sys.stderr)
    for s in report.summaries:
        if s.get("status") == "failed":
            print(f"run {s['matrix_slug']} failed: {s['error']}", file=sys.stderr)
    if report.failed or (ray is not None and report.busy):  # a Ray task never skips its run silently
        raise typer.Exit(1)


def _summary_row(s: dict) -> dict:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    return {
        "matrix_id": s.get("matrix_id", ""), "matrix_slug": s.get("matrix_slug", ""), "status": s["status"],
        "val loss": num(s.get("final_val_loss"), ".6f"), "params": num(s.get("params"), ","),
        "throughput": num(s.get("throughput"), ",.0f") + ("/s" if s.get("throughput") else ""),
        "train time": "" if s.get("train_time_s") is None else f"{s['train_time_s'] / 60:.2f} min",
        "ratio": num(s.get("compression_ratio"), ".1f"),
    }


def results(
    config: Path = CONFIG,
    runs_dir: Path = RUNS_DIR,
    exclude: Optional[List[str]] = typer.Option(None, "-ec", "--exclude", help="Columns to leave out; several "
                                                "may follow one flag."),
    sort: Optional[List[str]] = typer.Option(None, "-sc", "--sort", help="Sort columns, first primary; a "
                                             "trailing '-' sorts descending."),
    aggregate: Optional[str] = typer.Option(None, "-ac", "--aggregate", help="Merge runs that differ only in "
                                            "this column (e.g. trial): means and a count column."),
    aggregate_stats: Optional[List[str]] = typer.Option(None, "-acs", "--aggregate-stats", help="Add (std), "
                                                        "(min) and (max) after this column."),
    fmt: TableFormat = typer.Option("markdown", "-f", "--table-format", help="How the table is written on stdout."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON on stdout (--table-format json)."),
    hide_constant: bool = typer.Option(False, "--hide-constant", help="Leave out columns that never change."),
) -> None:
    """Print the experiment's results table, one row per run; unfinished and diverged runs are included and
    marked as such.

    The loss column counts the training inputs, `validation loss (N inputs)`; the study's own name for it,
    `validation loss (N steps)`, is accepted wherever a column is named."""
    from kaecompress.experiments.config import load_experiment
    from kaecompress.experiments.results import FORMATS, results_table

    if as_json:
        if fmt not in ("markdown", "json"):
            raise KaecError(f"--json prints JSON; it cannot go with --table-format {fmt}")
        fmt = "json"
    from kaecompress.experiments.sweep import run_dir

    exp = load_experiment(config)
    if not any(run_dir(runs_dir, r).parent.is_dir() for r in exp.runs):  # likelier a mistyped --runs-dir
        raise KaecError(f"{runs_dir}: no runs of {config} there yet (train them with kaec train -c {config}, "
                        "or pass the --runs-dir they were trained in)")
    table = results_table(exp, runs_dir, exclude_columns=exclude or [],
                          sort_columns=sort or [], aggregate_column=aggregate,
                          aggregate_stats=aggregate_stats or [], hide_constant_columns=hide_constant)
    sys.stdout.write(FORMATS[fmt](table))


def plot(
    config: Path = CONFIG,
    output: Path = typer.Option(..., "-o", "--output", help="Image file to write (.png, .svg, .pdf)."),
    runs_dir: Path = RUNS_DIR,
    only: Optional[List[str]] = typer.Option(None, "--only", help="Only runs whose slug matches; repeatable."),
    color_by: Optional[str] = typer.Option(None, "--color-by", help="Matrix key whose value picks the colour."),
    log: bool = typer.Option(False, "--log", help="Logarithmic loss axis."),
    recon: bool = typer.Option(False, "--recon", help="Instead of loss curves: originals above the "
                               "reconstructions of each selected finished run, for fixed validation images."),
    images: int = typer.Option(10, "--images", "-n", min=1, max=32, help="Validation images in a --recon grid."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for --recon."),
) -> None:
    """Plot the loss curves of an experiment's runs, or a grid of reconstructions."""
    from kaecompress.experiments.config import load_experiment

    if not output.parent.is_dir():  # before the runs, data or models are read
        raise KaecError(f"-o {output}: folder {output.parent} does not exist")
    from kaecompress.experiments.sweep import run_dir, select

    selected = select(load_experiment(config), only)
    if recon:
        from kaecompress.experiments.data import load_images
        from kaecompress.experiments.plots import plot_reconstructions
        from kaecompress.experiments.runs import run_status
        from kaecompress.experiments.loading import load_run

        done = [r for r in selected if run_status(run_dir(runs_dir, r), r.recipe()) == "finished"][:8]
        if not done:
            raise KaecError(f"{config}: no finished run among the selected ones; train them first")
        first = done[0]
        val = load_images(first.data.dataset, False, data_root or first.data.root, first.model.shape)
        models = [(r.matrix_slug, load_run(run_dir(runs_dir, r)).model) for r in done]
        path = plot_reconstructions(models, val[:images], output)
    else:
        from kaecompress.experiments.plots import plot_curves

        path = plot_curves(selected, runs_dir, output, color_by=color_by, log=log)
    print(path)


def register(app: typer.Typer) -> None:
    from kaecompress.cli.progress import register as add

    for command in (train, results, plot):
        add(app, command)
