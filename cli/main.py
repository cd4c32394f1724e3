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

def _print_version(value: bool) -> None:
    if value:
        from kaecompress import __version__

        print(f"kaecompress {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True,
                                 callback=_print_version),
) -> None:
    """Image compression with CNN autoencoders whose bottlenecks are Kolmogorov-Arnold (KAE) layers.

    Add --debug anywhere to see a traceback instead of a one-line error."""


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


MULTI_VALUE = {"-ec", "--exclude", "-sc", "--sort"}


@app.command()
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
    fmt: str = typer.Option("markdown", "-f", "--format", help="markdown, csv or json."),
    hide_constant: bool = typer.Option(False, "--hide-constant", help="Leave out columns that never change."),
) -> None:
    """Print the experiment's results table (unfinished and diverged runs included, marked as such)."""
    from kaecompress.config import load_experiment
    from kaecompress.results import FORMATS, results_table

    if fmt not in FORMATS:
        raise KaecError(f"--format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    table = results_table(load_experiment(config), runs_dir, exclude_columns=exclude or [],
                          sort_columns=sort or [], aggregate_column=aggregate,
                          aggregate_stats=aggregate_stats or [], hide_constant_columns=hide_constant)
    sys.stdout.write(FORMATS[fmt](table))


@app.command()
def plot(
    config: Path = CONFIG,
    output: Path = typer.Option(..., "-o", "--output", help="Image file to write (.png, .svg, .pdf)."),
    runs_dir: Path = RUNS_DIR,
    only: Optional[List[str]] = typer.Option(None, "--only", help="Only runs whose slug matches; repeatable."),
    color_by: Optional[str] = typer.Option(None, "--color-by", help="Matrix key whose value picks the colour."),
    log: bool = typer.Option(False, "--log", help="Logarithmic loss axis."),
    recon: bool = typer.Option(False, "--recon", help="Instead of loss curves: originals above the "
                               "reconstructions of each selected finished run, for fixed validation images."),
    images: int = typer.Option(10, "--images", min=1, max=32, help="Validation images in a --recon grid."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for --recon."),
) -> None:
    """Plot loss curves of an experiment's runs, or a reconstruction grid."""
    from kaecompress.config import load_experiment
    from kaecompress.sweep import run_dir, select

    selected = select(load_experiment(config), only)
    if recon:
        from kaecompress.data import load_images
        from kaecompress.plots import plot_reconstructions
        from kaecompress.runs import run_status
        from kaecompress.zoo import load_run

        done = [r for r in selected if run_status(run_dir(runs_dir, r)) == "finished"][:8]
        if not done:
            raise KaecError(f"{config}: no finished run among the selected ones; train them first")
        first = done[0]
        val = load_images(first.data.dataset, False, data_root or first.data.root, first.model.shape)
        models = [(r.matrix_slug, load_run(run_dir(runs_dir, r)).model) for r in done]
        path = plot_reconstructions(models, val[:images], output)
    else:
        from kaecompress.plots import plot_curves

        path = plot_curves(selected, runs_dir, output, color_by=color_by, log=log)
    print(path)


@app.command("export")
def export_command(
    source: Optional[str] = typer.Argument(None, help="Finished run folder, checkpoint file or trained model name."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder to create for the artefacts."),
    formats: Optional[List[str]] = typer.Option(None, "--format", help="onnx, torchscript or pt2; repeatable "
                                                "(default: all three)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    verify_only: Optional[Path] = typer.Option(None, "--verify-only", help="Re-check an existing export folder "
                                               "against its manifest and source model; write nothing."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for the verification images."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Export the encoder and decoder to ONNX, TorchScript and torch.export, verified against PyTorch."""
    from kaecompress.data import load_images
    from kaecompress.exporters import FORMATS, check_formats, export, read_manifest, verify_dir
    from kaecompress.zoo import load_model

    if verify_only is not None:
        manifest = read_manifest(verify_only)
        loaded = load_model(source or manifest["source"])
    else:
        if source is None or output is None:
            raise KaecError("export: give a SOURCE (run folder, checkpoint or model name) and -o OUTDIR")
        check_formats(formats or FORMATS)
        loaded = load_model(source)
    images = load_images(loaded.dataset, False, data_root, loaded.model.shape)[:64]
    if verify_only is not None:
        report = verify_dir(verify_only, loaded.model, images)
        result = {"folder": str(verify_only), "source": loaded.name, "verified": report}
    else:
        paths = export(loaded.model, output, formats or FORMATS, images=images, source=loaded.name,
                       weights_sha256=loaded.weights_sha256, force=force)
        report = read_manifest(output)["verification"]["max_abs_diff"]
        result = {"folder": str(output), "source": loaded.name,
                  "files": {fmt: [str(p) for p in ps] for fmt, ps in paths.items()}, "verified": report}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from kaecompress.cli.progress import out, runs_table

    rows = [{"file": name, **{k: f"{v:.2e}" for k, v in diffs.items()}} for name, diffs in report.items()]
    out.print(runs_table(rows, ["file", "batch 1", "batch 37"],
                         title=f"{result['folder']}: max abs diff vs PyTorch (tolerance 1e-4), all verified"))


@app.command()
def bench(
    provider: str = typer.Option("cpu", "--provider", help="onnxruntime execution provider: cpu or cuda."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Trained model name, run folder or checkpoint "
                                        "(default: mnist-kae-dec3)."),
    batch_sizes: str = typer.Option("1,32,256", "--batch-sizes", help="Comma-separated batch sizes."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for onnxruntime and torch."),
    seconds: float = typer.Option(1.0, "--seconds", min=0.0, help="Minimum measured time per figure."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every figure and the environment "
                                            "to this JSON file."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for the test images."),
) -> None:
    """Benchmark compress (encoder) and decompress (decoder) in onnxruntime against PyTorch, TorchScript and
    Pillow's JPEG, WebP and PNG, on real test images."""
    from kaecompress.bench import run_bench
    from kaecompress.cli.progress import console, out, runs_table
    from kaecompress.runs import atomic_write_json
    from kaecompress.zoo import load_model

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
        if min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise KaecError(f"--batch-sizes: expected positive integers separated by commas, got {batch_sizes!r}") from None
    if json_out is not None and not json_out.parent.is_dir():
        raise KaecError(f"{json_out}: folder {json_out.parent} does not exist")
    with console.status("benchmarking") as status:
        result = run_bench(load_model(model), provider=provider, batch_sizes=sizes, threads=threads,
                           min_seconds=seconds, data_root=data_root, progress=lambda s: status.update(s))
    env = result["environment"]
    rows = [{**r, "images/s": f"{r['images_per_s']:,.0f}", "MB/s": f"{r['MB_per_s']:,.1f}",
             "p50 ms": f"{r['p50_ms']:.3f}", "p90 ms": f"{r['p90_ms']:.3f}", "p99 ms": f"{r['p99_ms']:.3f}",
             "vs eager": f"{r['vs_pytorch_eager']:.2f}x"} for r in result["inference"]]
    out.print(runs_table(rows, ["part", "runtime", "batch", "images/s", "MB/s", "p50 ms", "p90 ms", "p99 ms",
                                "vs eager"],
                         title=f"{result['model']} on {env['cpu']} ({env['cores']} cores), provider used: "
                               f"{result['provider_used']}"))
    q = result["quality"]
    codecs = [{"codec": "kae (this model, uint8)", "bytes/image": f"{q['kae_bytes_per_image']:.1f}",
               "PSNR dB": f"{q['kae_uint8_psnr_db']:.2f}", "settings": f"float PSNR {q['psnr_db']:.2f} dB"}]
    codecs += [{"codec": b["codec"], "bytes/image": f"{b['bytes_per_image']:.1f}", "PSNR dB": f"{b['psnr_db']:.2f}",
                "settings": ", ".join(f"{k}={v}" for k, v in b["settings"].items()),
                "enc+dec images/s": f"{b['encode_decode_images_per_s']:,.0f}"} for b in result["pillow"]]
    out.print(runs_table(codecs, ["codec", "bytes/image", "PSNR dB", "enc+dec images/s", "settings"],
                         title=f"bytes and quality on {result['images']} test images "
                               f"({result['raw_bytes_per_image']} raw bytes each)"))
    if json_out is not None:
        atomic_write_json(json_out, result)


def _expand_multi_value(argv: list[str]) -> list[str]:
    """`-ec a b c` -> `-ec a -ec b -ec c`, as the study typed it (click options take one value each)."""
    out, flag = [], None
    for arg in argv:
        if arg in MULTI_VALUE:
            flag = arg
            out.append(arg)
            continue
        if flag and out[-1] != flag and not arg.startswith("-"):
            out += [flag, arg]
            continue
        if arg.startswith("-"):
            flag = None
        out.append(arg)
    return out


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


from kaecompress.cli import coding  # noqa: E402  (commands register after the app exists)

coding.register(app)


def main() -> None:
    """Console entry point: user mistakes become one line on stderr and exit 2 (`--debug` shows the trace)."""
    argv = sys.argv[1:]
    debug = "--debug" in argv or os.environ.get("KAEC_DEBUG") == "1"
    argv = _expand_multi_value([a for a in argv if a != "--debug"])
    try:
        app(args=argv, prog_name="kaec")
    except KaecError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
