"""`kaec export` and `kaec bench`: deployable artefacts and how fast they run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer

from kaecompress.errors import KaecError

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
    from kaecompress.exporters import FORMATS, check_files, check_formats

    # Everything that can be refused from the command line and the folder alone, before torch is imported.
    if verify_only is not None:
        manifest = check_files(verify_only)  # names, sizes and hashes first, before any model or data is loaded
        if source is None and not (isinstance(manifest.get("source"), str) and manifest["source"]):
            raise KaecError(f"{verify_only}: manifest.json names no source model; give SOURCE")
    else:
        if source is None or output is None:
            raise KaecError("export: give a SOURCE (run folder, checkpoint or model name) and -o OUTDIR")
        check_formats(formats or FORMATS)
    from kaecompress.experiments.data import load_images
    from kaecompress.exporters import export, read_manifest, verify_dir
    from kaecompress.experiments.loading import load_model

    loaded = load_model(source if verify_only is None else source or manifest["source"])
    images = load_images(loaded.dataset, False, data_root, loaded.model.shape)[:64]
    if verify_only is not None:
        report = verify_dir(verify_only, loaded.model, images)
        result = {"folder": str(verify_only), "source": loaded.name, "verified": report}
    else:
        paths = export(loaded.model, output, formats or FORMATS, images=images, source=loaded.name,
                       weights_sha256=loaded.weights_sha256, force=force, codec_id=loaded.card.get("codec_id"))
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


def bench(
    provider: str = typer.Option("cpu", "--provider", help="onnxruntime execution provider: cpu or cuda."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Trained model name, run folder or checkpoint "
                                        "(default: mnist-kae-dec3)."),
    batch_sizes: str = typer.Option("1,32,256", "--batch-sizes", help="Comma-separated batch sizes."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for onnxruntime and torch "
                                          "(default: one per core the load average leaves free, at least 1)."),
    seconds: float = typer.Option(1.0, "--seconds", min=0.0, help="Minimum measured time per figure."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write every figure and the environment "
                                            "to this JSON file."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for the test images: "
                                             "MNIST/raw/ or FashionMNIST/raw/ holding the IDX (*-ubyte) files."),
    images: int = typer.Option(1000, "--images", min=1, help="Test images for the quality figures (at least the "
                               "largest batch is read)."),
) -> None:
    """Benchmark compress (encoder) and decompress (decoder) in onnxruntime against PyTorch, TorchScript and
    Pillow's JPEG, WebP and PNG, on real test images. Without PyTorch (the runtime install): a shipped
    model's ONNX graphs in onnxruntime and Pillow, the PyTorch baselines skipped."""
    from kaecompress.api import open_model, torch_installed
    from kaecompress.evaluation.bench import run_bench
    from kaecompress.cli.progress import console, out, runs_table
    from kaecompress.experiments.runs import atomic_write_json
    from kaecompress.zoo import DEFAULT_MODEL

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
        if min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise KaecError(f"--batch-sizes: expected positive integers separated by commas, got {batch_sizes!r}") from None
    if json_out is not None:  # found out now, not after the whole benchmark
        if json_out.is_dir():
            raise KaecError(f"--json {json_out}: is a folder; expected a file name such as bench.json")
        if not json_out.parent.is_dir() or not os.access(json_out.parent, os.W_OK):
            raise KaecError(f"--json {json_out}: folder {json_out.parent} does not exist or is not writable")
    if torch_installed():
        from kaecompress.experiments.loading import load_model

        loaded = load_model(model or DEFAULT_MODEL)
    else:  # a shipped model's graphs; anything else is refused as needing the training install
        loaded = open_model(model or DEFAULT_MODEL, "onnx")
    with console.status("benchmarking") as status:
        result = run_bench(loaded, provider=provider, batch_sizes=sizes, threads=threads, min_seconds=seconds,
                           images=images, data_root=data_root, progress=lambda s: status.update(s))
    env = result["environment"]
    rows = [{**r, "images/s": f"{r['images_per_s']:,.0f}", "MB/s": f"{r['MB_per_s']:,.1f}",
             "p50 ms": f"{r['p50_ms']:.3f}", "p90 ms": f"{r['p90_ms']:.3f}", "p99 ms": f"{r['p99_ms']:.3f}",
             "vs eager": "" if r["vs_pytorch_eager"] is None else f"{r['vs_pytorch_eager']:.2f}x"}
            for r in result["inference"]]
    eager = any(r["vs_pytorch_eager"] is not None for r in result["inference"])
    out.print(runs_table(rows, ["part", "runtime", "batch", "images/s", "MB/s", "p50 ms", "p90 ms", "p99 ms"]
                         + (["vs eager"] if eager else []),
                         title=f"{result['model']} on {env['cpu']} ({env['cores']} cores), provider used: "
                               f"{result['provider_used']}"))
    q = result["quality"]
    kind = "entropy-coded" if q.get("kae_version") == 2 else "uint8"
    codecs = [{"codec": f"kae (this model, {kind})", "bytes/image": f"{q['kae_bytes_per_image']:.1f}",
               "PSNR dB": f"{q['kae_uint8_psnr_db']:.2f}", "settings": f"float PSNR {q['psnr_db']:.2f} dB"}]
    codecs += [{"codec": b["codec"], "bytes/image": f"{b['bytes_per_image']:.1f}", "PSNR dB": f"{b['psnr_db']:.2f}",
                "settings": ", ".join(f"{k}={v}" for k, v in b["settings"].items()),
                "enc+dec images/s": f"{b['encode_decode_images_per_s']:,.0f}"} for b in result["pillow"]]
    out.print(runs_table(codecs, ["codec", "bytes/image", "PSNR dB", "enc+dec images/s", "settings"],
                         title=f"bytes and quality on {result['images']} test images "
                               f"({result['raw_bytes_per_image']} raw bytes each)"))
    load = result["machine_load"]
    n_threads = env["ort_intra_op_threads"]  # torch ran with as many, where it ran
    threads_note = f"{n_threads} thread{'s' if n_threads != 1 else ''}" + (
        " (chosen from the load)" if env["threads_chosen"] else "")
    import sys

    if result["skipped"]:  # one line, not wrapped: scripts grep for it
        print(f"note: skipped {', '.join(s['runtime'] for s in result['skipped'])} baselines: "
              f"{result['skipped'][0]['why']}", file=sys.stderr)

    if load["busy"]:  # one line, not wrapped: scripts grep for it
        print(f"warning: the machine was busy while measuring: {load['why']}; figures are lower and noisier "
              f"than on an idle machine ({threads_note})", file=sys.stderr)
    else:
        share = {k: "?" if load[k] is None else f"{load[k]:.0%}" for k in ("others_cpu_share", "steal_share")}
        print(f"machine not busy: other processes used {share['others_cpu_share']} of the CPU, steal "
              f"{share['steal_share']}; {threads_note}", file=sys.stderr)
    if json_out is not None:
        atomic_write_json(json_out, result)


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
    app.command()(bench)
