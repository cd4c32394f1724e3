"""`kaec encode`, `kaec decode`, `kaec models`, `kaec promote`: compressing images with trained models."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from kaecompress.errors import KaecError

MODEL = typer.Option(None, "--model", "-m", help="Trained model name (see `kaec models`), run folder or "
                     "checkpoint. Default: mnist-kae-dec3 (decode: the model the file names).")
BACKEND = typer.Option("torch", "--backend", help="torch (PyTorch) or onnx (the exported ONNX files in "
                       "onnxruntime, exported and verified on first use).")
BATCH = typer.Option(256, "--batch-size", min=1, help="Tiles per network call.")
DATA_ROOT = typer.Option(None, "--data-root", help="Dataset root (for verifying an ONNX export).")
JSON = typer.Option(False, "--json", help="Print what was written as JSON.")

def _inputs(paths: List[Path], suffixes: tuple[str, ...]) -> list[Path]:
    found = []
    for p in paths:
        if p.is_dir():
            found += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
        elif p.is_file():
            found.append(p)
        else:
            raise KaecError(f"{p}: no such file or folder")
    if not found:
        raise KaecError(f"{', '.join(map(str, paths))}: no input files (expected {', '.join(suffixes)})")
    return found


def _to_folder(inputs: list[Path], files: list[Path], output: Path) -> bool:
    """Outputs go into the folder `output` for several inputs, an existing folder, or a name without suffix."""
    return len(files) > 1 or any(p.is_dir() for p in inputs) or output.is_dir() or not output.suffix


def _outputs(inputs: list[Path], output: Path, to_folder: bool, suffix: str) -> list[Path]:
    """One output path per input: `output` itself for one file, else files inside the folder `output`."""
    if not to_folder:
        if not output.parent.is_dir():
            raise KaecError(f"{output}: folder {output.parent} does not exist")
        return [output]
    if not output.is_dir() and (not output.parent.is_dir() or output.suffix or output.exists()):
        raise KaecError(f"{output}: for several inputs or a name without suffix, -o is a folder (an existing "
                        "one, or a new one in an existing folder)")
    targets = [output / (p.stem + suffix) for p in inputs]
    clash = {t for t in targets if targets.count(t) > 1}
    if clash:
        raise KaecError(f"{sorted(clash)[0]}: several inputs would write this file; rename one")
    return targets


def encode(
    inputs: List[Path] = typer.Argument(..., help="Images (PNG, JPEG, BMP, TIFF, WebP, ...) or folders of them."),
    output: Path = typer.Option(..., "-o", "--output", help="z.npy / z.npz / z.kae for one image; a folder "
                                "for several."),
    model: Optional[str] = MODEL,
    fit: str = typer.Option("tile", "--fit", help="tile: cut into model-sized tiles (edges padded), decoded "
                            "at the original size; resize: the whole image as one tile."),
    fmt: Optional[str] = typer.Option(None, "--format", help="npy, npz or kae (default) for outputs in a "
                                      "folder; a file's own suffix says it otherwise."),
    quant: str = typer.Option("uint8", "--quant", help=".kae latents: uint8 (one scale per file) or float16."),
    backend: str = BACKEND,
    batch_size: int = BATCH,
    data_root: Optional[Path] = DATA_ROOT,
    as_json: bool = JSON,
) -> None:
    """Compress images to latents."""
    from kaecompress.codec import Codec, open_image
    from kaecompress.containers import QUANTS, SUFFIXES, write
    from kaecompress.data import IMAGE_SUFFIXES
    from kaecompress.zoo import load_model

    if quant not in QUANTS:
        raise KaecError(f"--quant: expected one of {', '.join(QUANTS)}, got {quant!r}")
    if fmt is not None and f".{fmt}" not in SUFFIXES:
        raise KaecError(f"--format: expected npy, npz or kae, got {fmt!r}")
    files = _inputs(inputs, tuple(IMAGE_SUFFIXES))
    to_folder = _to_folder(inputs, files, output)
    suffix = f".{fmt or 'kae'}" if to_folder else output.suffix.lower()
    if suffix not in SUFFIXES:
        raise KaecError(f"{output}: unknown output type (expected {', '.join(SUFFIXES)}, or a folder)")
    if fmt is not None and suffix != f".{fmt}":
        raise KaecError(f"--format {fmt}: -o {output} says {suffix}; give one or the other")
    targets = _outputs(files, output, to_folder, suffix)
    images = [open_image(p) for p in files]  # every input is read before anything is written
    codec = Codec(load_model(model), backend, batch_size, data_root)
    encoded = codec.compress_many(images, fit)
    if to_folder:
        output.mkdir(exist_ok=True)
    rows = []
    for src, dst, enc in zip(files, targets, encoded):
        write(enc, dst, quant)
        rows.append({"input": str(src), "output": str(dst), "bytes": dst.stat().st_size,
                     "size": [enc.width, enc.height], "mode": enc.mode, "latents": list(enc.latents.shape)})
    _report(rows, as_json, f"encoded with {codec.loaded.name}")


def decode(
    inputs: List[Path] = typer.Argument(..., help=".npy, .npz or .kae files, or folders of them."),
    output: Path = typer.Option(..., "-o", "--output", help="out.png for one input; a folder for several."),
    model: Optional[str] = MODEL,
    backend: str = BACKEND,
    batch_size: int = BATCH,
    data_root: Optional[Path] = DATA_ROOT,
    as_json: bool = JSON,
) -> None:
    """Decompress latents to PNG images (original size and mode)."""
    from kaecompress.codec import Codec
    from kaecompress.containers import SUFFIXES, read
    from kaecompress.zoo import DEFAULT_MODEL, load_model

    files = _inputs(inputs, SUFFIXES)
    to_folder = _to_folder(inputs, files, output)
    if not to_folder and output.suffix.lower() != ".png":
        raise KaecError(f"{output}: decode writes PNG files (use a .png name or a folder)")
    targets = _outputs(files, output, to_folder, ".png")
    loaded = load_model(model or _model_of(files[0]) or DEFAULT_MODEL)
    codec = Codec(loaded, backend, batch_size, data_root)
    shape = (codec.height, codec.width)
    encoded = [read(p, codec.latent_dim, shape, codec.channels, codec.check_model) for p in files]
    images = codec.decompress_many(encoded)
    if to_folder:
        output.mkdir(exist_ok=True)
    import io

    from kaecompress.runs import atomic_write_bytes

    rows = []
    for src, dst, im in zip(files, targets, images):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        atomic_write_bytes(dst, buf.getvalue())
        rows.append({"input": str(src), "output": str(dst), "size": list(im.size), "mode": im.mode})
    _report(rows, as_json, f"decoded with {loaded.name}")


def _model_of(path: Path) -> str | None:
    """The shipped model a .kae/.npz file was encoded with, if it names one we have."""
    from kaecompress.containers import from_kae
    from kaecompress.zoo import find_by_hash

    if path.suffix.lower() == ".kae":  # a damaged .kae is reported as such, before any model is loaded
        return find_by_hash(from_kae(path.read_bytes(), str(path))[0].weights_sha256)
    import zipfile

    try:
        if path.suffix.lower() == ".npz":
            import numpy as np

            with np.load(path, allow_pickle=False) as z:
                return find_by_hash(str(z["weights_sha256"]))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None  # reading it properly later gives the precise error
    return None


def _report(rows: list[dict], as_json: bool, title: str) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from kaecompress.cli.progress import out, runs_table

    columns = [c for c in ("input", "output", "bytes", "size", "mode", "latents") if c in rows[0]]
    out.print(runs_table(rows, columns, title=f"{len(rows)} file{'s' if len(rows) != 1 else ''} {title}"))


def models(as_json: bool = typer.Option(False, "--json", help="Print the model cards as JSON.")) -> None:
    """List the trained models shipped in trained/."""
    from kaecompress.zoo import DEFAULT_MODEL, cards

    found = cards()
    if as_json:
        print(json.dumps(found, indent=2))
        return
    from kaecompress.cli.progress import out, runs_table

    rows = [{"name": n + (" (default)" if n == DEFAULT_MODEL else ""), "dataset": c["dataset"],
             "val MSE": f"{c['metrics']['mse']:.6f}", "PSNR dB": f"{c['metrics']['psnr_db']:.2f}",
             "params": f"{c['params']:,}", "ratio": f"{c['compression_ratio']:g}",
             "enc/dec KAE": f"{c['config']['model']['encoder_kae_order']}/{c['config']['model']['decoder_kae_order']}",
             "recipe": c.get("recipe") or ""} for n, c in found.items()]
    out.print(runs_table(rows, ["name", "dataset", "enc/dec KAE", "val MSE", "PSNR dB", "params", "ratio",
                                "recipe"], title="trained models"))


def promote(
    run: Path = typer.Argument(..., help="A finished run folder."),
    name: str = typer.Option(..., "--name", help="Name to ship it under, e.g. mnist-kae-dec3."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="The experiment file that trained it."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Folder for the weights and card (default: trained/)."),
    data_root: Optional[Path] = DATA_ROOT,
    force: bool = typer.Option(False, "--force", help="Replace a model of the same name."),
) -> None:
    """Ship a finished run as a trained model: safetensors weights and a model card with its metrics."""
    from kaecompress.zoo import promote as promote_run

    card = promote_run(run, name, dest=dest, recipe=recipe, data_root=data_root, force=force)
    print(card)


def register(app: typer.Typer) -> None:
    app.command()(encode)
    app.command()(decode)
    app.command()(models)
    app.command()(promote)
