"""`kaec export` and `kaec bench`: deployable artefacts and how fast they run."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from kaecompress.cli.options import Artefact, Provider, values, wide_option
from kaecompress.errors import KaecError

def export_command(
    sources: Optional[List[str]] = typer.Argument(None, metavar="SOURCE...", help="Finished run folder, checkpoint "
                                                  "file or trained model name; with --format web, one or more "
                                                  "shipped model names (the first is the page's default)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Folder to create for the artefacts."),
    formats: Optional[List[Artefact]] = typer.Option(None, "--format", help="What to write, repeatable; onnx, "
                                                     "torchscript and pt2 come from the PyTorch model (default: "
                                                     "those three), web is a folder that codes .kae files in a web "
                                                     "page or Node (shipped models only; not with the others)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    verify_only: Optional[Path] = typer.Option(None, "--verify-only", help="Re-check an existing export folder "
                                               "against its manifest and source model; write nothing."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for the verification images."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    wide: bool = wide_option(),
) -> None:
    """Export a model's encoder and decoder to ONNX, TorchScript and torch.export, verified against PyTorch, or
    shipped models to a folder for a web page (--format web).

    ONNX, TorchScript and torch.export files are checked against the PyTorch model on real images; a web
    export needs no PyTorch (it works in the runtime install)."""
    kinds = values(formats or [])
    if "web" in kinds:
        _export_web(sources or [], output, kinds, force, verify_only, as_json)
        return
    from kaecompress.exporters import FORMATS, check_files, check_formats

    # Everything that can be refused from the command line and the folder alone, before torch is imported.
    if len(sources or []) > 1:
        raise KaecError(f"export: one SOURCE at a time (got {len(sources)}); several models only with --format web")
    source = sources[0] if sources else None
    if verify_only is not None:
        manifest = check_files(verify_only)  # names, sizes and hashes first, before any model or data is loaded
        if source is None and not (isinstance(manifest.get("source"), str) and manifest["source"]):
            raise KaecError(f"{verify_only}: manifest.json names no source model; give SOURCE")
    else:
        if source is None or output is None:
            raise KaecError("export: give a SOURCE (run folder, checkpoint or model name) and -o OUTDIR")
        check_formats(kinds or FORMATS)
    from kaecompress.experiments.data import load_images
    from kaecompress.exporters import export, read_manifest, verify_dir
    from kaecompress.experiments.loading import load_model

    loaded = load_model(source if verify_only is None else source or manifest["source"])
    images = load_images(loaded.dataset, False, data_root, loaded.model.shape)[:64]
    if verify_only is not None:
        report = verify_dir(verify_only, loaded.model, images)
        result = {"folder": str(verify_only), "source": loaded.name, "verified": report}
    else:
        paths = export(loaded.model, output, kinds or FORMATS, images=images, source=loaded.name,
                       weights_sha256=loaded.weights_sha256, force=force, codec_id=loaded.card.get("codec_id"))
        report = read_manifest(output)["verification"]["max_abs_diff"]
        result = {"folder": str(output), "source": loaded.name,
                  "files": {fmt: [str(p) for p in ps] for fmt, ps in paths.items()}, "verified": report}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    from kaecompress.cli.progress import print_table

    rows = [{"file": name, **{k: f"{v:.2e}" for k, v in diffs.items()}} for name, diffs in report.items()]
    print_table(rows, ["file", "batch 1", "batch 37"], keys=("file",), wide=wide,
                title=f"{result['folder']}: max abs diff vs PyTorch (tolerance 1e-4), all verified")


def _export_web(sources: list[str], output: Optional[Path], kinds: list[str], force: bool,
                verify_only: Optional[Path], as_json: bool) -> None:
    """`--format web`: shipped models only, named; no PyTorch is loaded (kaecompress.exporters.web)."""
    if len(set(kinds)) > 1:
        raise KaecError(f"--format web: write it on its own, not with {', '.join(k for k in kinds if k != 'web')}")
    if verify_only is not None:
        raise KaecError("--format web: --verify-only checks ONNX, TorchScript and pt2 exports, not web ones")
    names = [n.strip() for spec in sources for n in spec.split(",") if n.strip()]
    if not names or output is None:
        raise KaecError("--format web: give shipped model names (see `kaec models`) and -o OUTDIR")
    for name in names:
        if Path(name).exists() or "/" in name or name.endswith((".pt", ".ckpt")):
            raise KaecError(f"--format web {name}: exports shipped models only, by name (see `kaec models`), "
                            "not a run folder or checkpoint")
    from kaecompress.exporters.web import write_web_export

    files = write_web_export(names, output, force=force, install=lambda line: print(line, file=sys.stderr))
    result = {"folder": str(output), "models": names, "files": [str(p) for p in files]}
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{output}: web export of {', '.join(names)} ({len(files)} files); serve it with "
              f"`python -m http.server -d {output}` or run `node {output / 'kae-node.mjs'} --help`")


def bench(
    provider: Provider = typer.Option("cpu", "--provider", help="onnxruntime execution provider."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Trained model name, run folder or checkpoint "
                                        "(default: mnist-kae-dec3)."),
    batch_sizes: str = typer.Option("1,32,256", "--batch-sizes", help="Comma-separated batch sizes."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="Threads for onnxruntime and torch "
                                          "(default: one per core the load average leaves free, at least 1)."),
    seconds: float = typer.Option(1.0, "--seconds", min=0.0, help="Minimum measured time per figure."),
    as_json: bool = typer.Option(False, "--json", help="Print every figure and the environment as JSON on stdout, "
                                 "instead of the tables."),
    json_file: Optional[Path] = typer.Option(None, "--json-file", help="Also write every figure and the "
                                             "environment to this JSON file."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for the test images: "
                                             "MNIST/raw/ or FashionMNIST/raw/ holding the IDX (*-ubyte) files."),
    images: int = typer.Option(1000, "--images", "-n", min=1, help="Test images for the quality figures (at least "
                               "the largest batch is read)."),
    wide: bool = wide_option(),
) -> None:
    """Benchmark compressing and decompressing in onnxruntime against PyTorch, TorchScript and Pillow's JPEG,
    WebP and PNG, on real test images.

    Without PyTorch (the runtime install): a shipped model's ONNX graphs in onnxruntime and Pillow, the
    PyTorch baselines skipped."""
    from kaecompress.api import open_model, torch_installed
    from kaecompress.evaluation.bench import run_bench
    from kaecompress.cli.progress import console, print_table
    from kaecompress.experiments.runs import atomic_write_json
    from kaecompress.zoo import DEFAULT_MODEL

    try:
        sizes = [int(b) for b in batch_sizes.split(",")]
        if min(sizes) < 1:
            raise ValueError
    except ValueError:
        raise KaecError(f"--batch-sizes: expected positive integers separated by commas, got {batch_sizes!r}") from None
    if json_file is not None:  # found out now, not after the whole benchmark
        if json_file.is_dir():
            raise KaecError(f"--json-file {json_file}: is a folder; expected a file name such as bench.json")
        if not json_file.parent.is_dir() or not os.access(json_file.parent, os.W_OK):
            raise KaecError(f"--json-file {json_file}: folder {json_file.parent} does not exist or is not writable")
    if torch_installed():
        from kaecompress.experiments.loading import load_model

        loaded = load_model(model or DEFAULT_MODEL)
    else:  # a shipped model's graphs; anything else is refused as needing the training install
        loaded = open_model(model or DEFAULT_MODEL, "onnx")
    with console.status("benchmarking") as status:
        result = run_bench(loaded, provider=provider, batch_sizes=sizes, threads=threads, min_seconds=seconds,
                           images=images, data_root=data_root, progress=lambda s: status.update(s))
    if json_file is not None:
        atomic_write_json(json_file, result)
    if as_json:
        print(json.dumps(result, indent=2))
    env = result["environment"]
    rows = [{**r, "images/s": f"{r['images_per_s']:,.0f}", "MB/s": f"{r['MB_per_s']:,.1f}",
             "p50 ms": f"{r['p50_ms']:.3f}", "p90 ms": f"{r['p90_ms']:.3f}", "p99 ms": f"{r['p99_ms']:.3f}",
             "vs eager": "" if r["vs_pytorch_eager"] is None else f"{r['vs_pytorch_eager']:.2f}x"}
            for r in result["inference"]]
    eager = any(r["vs_pytorch_eager"] is not None for r in result["inference"])
    if not as_json:
        print_table(rows, ["part", "runtime", "batch", "images/s", "MB/s", "p50 ms", "p90 ms", "p99 ms"]
                    + (["vs eager"] if eager else []), keys=("part", "runtime", "batch"), wide=wide,
                    title=f"{result['model']} on {env['cpu']} ({env['cores']} cores), provider used: "
                          f"{result['provider_used']}")
    q = result["quality"]
    kind = "entropy-coded" if q.get("kae_version") == 2 else "uint8"
    codecs = [{"codec": f"kae (this model, {kind})", "bytes/image": f"{q['kae_bytes_per_image']:.1f}",
               "PSNR dB": f"{q['kae_uint8_psnr_db']:.2f}", "settings": f"float PSNR {q['psnr_db']:.2f} dB"}]
    codecs += [{"codec": b["codec"], "bytes/image": f"{b['bytes_per_image']:.1f}", "PSNR dB": f"{b['psnr_db']:.2f}",
                "settings": ", ".join(f"{k}={v}" for k, v in b["settings"].items()),
                "enc+dec images/s": f"{b['encode_decode_images_per_s']:,.0f}"} for b in result["pillow"]]
    if not as_json:
        print_table(codecs, ["codec", "bytes/image", "PSNR dB", "enc+dec images/s", "settings"], keys=("codec",),
                    wide=wide, title=f"bytes and quality on {result['images']} test images "
                                     f"({result['raw_bytes_per_image']} raw bytes each)")
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


def register(app: typer.Typer) -> None:
    from kaecompress.cli.progress import register as add

    add(app, export_command, "export")
    add(app, bench)
