"""`kaec`: train, inspect and use CNN-KAE compression models. Torch is imported inside commands only."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kaecompress.errors import KaecError

app = typer.Typer(
    help="Image compression with CNN autoencoders whose bottlenecks are Kolmogorov-Arnold (KAE) layers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """Image compression with CNN autoencoders whose bottlenecks are Kolmogorov-Arnold (KAE) layers.

    Add --debug anywhere to see a traceback instead of a one-line error."""
    if version:
        from kaecompress import __version__

        print(f"kaecompress {__version__}")
        raise typer.Exit()


RUNS_DIR = typer.Option(Path("runs"), "--runs-dir", help="Folder holding one folder per experiment run.",
                        envvar="KAEC_RUNS")
CONFIG = typer.Option(..., "--config", "-c", help="Experiment YAML file.", dir_okay=False)


@app.command()
def train(
    config: Path = CONFIG,
    runs_dir: Path = RUNS_DIR,
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root (default: $KAEC_DATA or "
                                             "the user cache dir)."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda (overrides the config)."),
    reset: bool = typer.Option(False, "--reset", help="Delete the selected runs' folders and start over."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs and their state; train nothing."),
    only: Optional[List[str]] = typer.Option(None, "--only", help="Only runs whose slug matches (glob or "
                                             "substring); repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print the run summaries as JSON on stdout."),
) -> None:
    """Train every run of an experiment: finished runs are skipped, interrupted ones resume."""
    from kaecompress.config import load_experiment
    from kaecompress.sweep import run_dir, select

    from kaecompress.cli.progress import SweepProgress, console, out, runs_table

    exp = load_experiment(config)
    selected = select(exp, only)
    if dry_run:
        from kaecompress.runs import run_status

        rows = [{"matrix_id": r.matrix_id, "matrix_slug": r.matrix_slug,
                 "status": run_status(run_dir(runs_dir, r)), "dir": str(run_dir(runs_dir, r))} for r in selected]
        if as_json:
            print(json.dumps(rows, indent=2))
        else:
            out.print(runs_table(rows, ["matrix_id", "matrix_slug", "status", "dir"],
                                     title=f"{len(rows)} runs of {config}"))
        return
    if device and device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise KaecError(f"--device: expected auto, cpu or cuda, got {device!r}")

    from kaecompress.sweep import run_sweep

    with SweepProgress(len(selected), quiet=as_json) as progress:
        try:
            report = run_sweep(selected, runs_dir, reset=reset, data_root=data_root, device=device,
                               on_run=progress.on_run)
        except KeyboardInterrupt:
            progress.stop()
            console.print("[yellow]interrupted[/]: the current run saved a checkpoint; run the same command "
                          "again to resume.", highlight=False)
            raise typer.Exit(130)
    if as_json:
        print(json.dumps(report.summaries, indent=2))
    else:
        rows = [_summary_row(s) for s in report.summaries]
        out.print(runs_table(rows, ["matrix_id", "matrix_slug", "status", "val loss", "params",
                                        "throughput", "train time", "ratio"],
                                 title=f"{exp.path}: {len(rows)} runs ({len(report.skipped)} already done)"))
    for label, slugs in (("diverged", report.diverged), ("failed", report.failed)):
        if slugs:
            print(f"{len(slugs)} run(s) {label}: {', '.join(slugs)}", file=sys.stderr)
    if report.failed:
        raise typer.Exit(1)


def _summary_row(s: dict) -> dict:
    def num(v, fmt):
        return "" if v is None else format(v, fmt)

    return {
        "matrix_id": s.get("matrix_id", ""), "matrix_slug": s.get("matrix_slug", ""), "status": s["status"],
        "val loss": num(s.get("final_val_loss"), ".6f"), "params": num(s.get("params"), ","),
        "throughput": num(s.get("throughput"), ",.0f") + ("/s" if s.get("throughput") else ""),
        "train time": num((s.get("train_time_s") or 0) / 60 if "train_time_s" in s else None, ".2f") + " min",
        "ratio": num(s.get("compression_ratio"), ".1f"),
    }


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit 2 (`--debug` shows the trace)."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("KAEC_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    try:
        app(args=argv, prog_name="kaec")
    except KaecError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
