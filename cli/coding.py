"""`kaec encode`, `kaec decode`, `kaec models`, `kaec promote`: compressing images with trained models."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import List, Optional

import typer

from kaecompress.errors import KaecError

from kaecompress.cli.options import QUALITY_HELP, Backend, Container, Device, Family, Fit, Quant, wide_option

MODEL = typer.Option(None, "--model", "-m", help="Trained model name (see `kaec models`), run folder or "
                     "checkpoint. Default: the MNIST codec family's default model.")
DECODE_MODEL = typer.Option(None, "--model", "-m", help="Trained model name, run folder or checkpoint to "
                            "decode with. Default: the shipped model each file names (bare .npy latents: the "
                            "MNIST codec family's default model).")
BACKEND = typer.Option("auto", "--backend", help="auto: torch where it is installed, else onnx; torch: PyTorch "
                       "(the training install); onnx: onnxruntime, with a shipped model's own ONNX graphs (a run "
                       "folder or checkpoint is exported and verified on first use).")
DEVICE = typer.Option("cpu", "--device", help="Where the networks run; auto: cuda when usable. "
                      "The entropy coding runs on the CPU, so a file decodes to the same latents on any device; "
                      "decoded pixels may differ by one level between devices.")
BATCH = typer.Option(256, "--batch-size", min=1, help="Tiles per network call.")
DATA_ROOT = typer.Option(None, "--data-root", help="Dataset root (for verifying an ONNX export).")
JSON = typer.Option(False, "--json", help="Print what was written as JSON on stdout, instead of the table.")
WIDE = wide_option()
MAX_PIXELS = typer.Option(40_000_000, "--max-pixels", min=1, help="Refuse images (and files claiming images) "
                          "over this many pixels, before reading their pixels (and images so thin that their tiles "
                          "cover twice that). Large images are worked on in strips: at the default, encoding or "
                          "decoding the largest (RGBA) peaks at about 1,300 MB, measured.")
QUALITY = typer.Option(None, "--quality", "-q", min=0, help=QUALITY_HELP.format(levels="`kaec models` lists "
                       "the levels."))
PROMOTE_QUALITY = typer.Option(None, "--quality", "-q", min=0, help="Codec models: its quality level in the "
                               "family (0 = smallest files).")


def describe_levels() -> None:
    """--quality's help names the levels each shipped family has (read from the cards: only for --help)."""
    from kaecompress.cli.options import quality_levels

    QUALITY.help = QUALITY_HELP.format(levels=quality_levels())


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
    clash = [t for t, n in Counter(targets).items() if n > 1]
    if clash:
        raise KaecError(f"{sorted(clash)[0]}: several inputs would write this file; rename one")
    return targets


def encode(
    inputs: List[Path] = typer.Argument(..., metavar="IMAGES...", help="Images (PNG, JPEG, BMP, TIFF, WebP, ...) "
                                        "or folders of them."),
    output: Path = typer.Option(..., "-o", "--output", help="z.npy / z.npz / z.kae for one image; a folder "
                                "for several."),
    model: Optional[str] = MODEL,
    fit: Fit = typer.Option("tile", "--fit", help="tile: cut into model-sized tiles (edges padded), decoded "
                            "at the original size; resize: the whole image as one tile."),
    container: Optional[Container] = typer.Option(None, "--container", help="File type of outputs written "
                                                  "into a folder (default: kae); one output file's own suffix "
                                                  "says it otherwise."),
    quant: Quant = typer.Option("uint8", "--quant", help="Latents of a version-1 .kae file (plain models): "
                                "uint8 (one scale per file) or float16."),
    backend: Backend = BACKEND,
    device: Device = DEVICE,
    batch_size: int = BATCH,
    data_root: Optional[Path] = DATA_ROOT,
    max_pixels: int = MAX_PIXELS,
    quality: Optional[int] = QUALITY,
    dataset: Family = typer.Option("mnist", "--dataset", "-d", help="The codec family that --quality and the "
                                   "default model come from."),
    rdo: int = typer.Option(0, "--rdo", min=0, max=16, help="Codec models: N passes of rate–distortion optimised "
                            "rounding (2 is a good choice): about the same bytes, 1-3 dB more PSNR; each pass runs "
                            "the decoder once per tile and latent. 0: plain rounding."),
    as_json: bool = JSON,
    wide: bool = WIDE,
    force: bool = typer.Option(False, "--force", help="Encode images outside the model's domain anyway "
                               "(with a warning) instead of refusing them."),
) -> None:
    """Compress images to .kae files (or latents in .npz / .npy files) with a trained model.

    The shipped models are for 28x28 grey handwritten digits (MNIST) or clothing (Fashion-MNIST), not
    photographs: every image is checked against the model's own test images while encoding, and one outside
    its domain is refused (exit 2) unless --force is given."""
    from kaecompress.cli.progress import SearchProgress
    from kaecompress.api import resolve_backend
    from kaecompress.codec.containers import FITS, QUANTS, SUFFIXES, serialize
    from kaecompress.codec.domain import DOMAINS
    from kaecompress.codec.images import IMAGE_SUFFIXES, check_backend, open_image

    if quant not in QUANTS:
        raise KaecError(f"--quant: expected one of {', '.join(QUANTS)}, got {quant!r}")
    if fit not in FITS:
        raise KaecError(f"--fit: expected {' or '.join(FITS)}, got {fit!r}")
    check_backend(backend, device)
    if dataset not in DOMAINS:  # the codec families --quality and the default model come from
        raise KaecError(f"--dataset: expected {' or '.join(DOMAINS)}, got {dataset!r}")
    backend = resolve_backend(backend)
    spec = _encoding_model(model, quality, dataset)  # a level the family lacks is an option mistake: first
    files = _inputs(inputs, tuple(IMAGE_SUFFIXES))
    to_folder = _to_folder(inputs, files, output)
    suffix = f".{container or 'kae'}" if to_folder else output.suffix.lower()
    if suffix not in SUFFIXES:
        raise KaecError(f"{output}: unknown output type (expected {', '.join(SUFFIXES)}, or a folder)")
    if container is not None and suffix != f".{container}":
        raise KaecError(f"--container {container}: -o {output} says {suffix}; give one or the other")
    targets = _outputs(files, output, to_folder, suffix)
    early = _shipped_layout(spec)
    if rdo and early is not None and not early.rate_model:
        raise KaecError(f"--rdo: {spec} has no probability model (expected a codec model: see `kaec models`)")
    images = [open_image(p, max_pixels) for p in files]  # every input is read before anything is written
    if early is not None:
        _check_tiles(files, images, fit, early.tile, max_pixels)
    codec = _codec(spec, backend, device, batch_size, data_root, rdo)  # only once the inputs and files are good
    if early is None:
        _check_tiles(files, images, fit, (codec.height, codec.width), max_pixels)
    if rdo and not codec.rate_model:
        raise KaecError(f"--rdo: {codec.loaded.name} has no probability model (expected a codec model: see "
                        "`kaec models`)")
    with SearchProgress(codec, quiet=as_json):
        encoded = codec.compress_many(images, fit, check_domain=True)
    _refuse_outside(codec, files, force)  # before anything is written
    coded = [i for i, dst in enumerate(targets) if codec.rate_model and dst.suffix.lower() == ".kae"]
    v2 = dict(zip(coded, codec.to_kae_many([encoded[i] for i in coded])))  # together: one context pass
    blobs = [v2[i] if i in v2 else serialize(enc, dst, quant) for i, (enc, dst) in enumerate(zip(encoded, targets))]
    if to_folder:
        output.mkdir(exist_ok=True)
    from kaecompress.outputs import write_all

    write_all(list(zip(targets, blobs)))  # all outputs land, or none
    rows = []
    for src, dst, enc, blob in zip(files, targets, encoded, blobs):
        rows.append({"input": str(src), "output": str(dst), "bytes": len(blob),
                     "size": [enc.width, enc.height], "mode": enc.mode, "latents": list(enc.latents.shape)})
    _warn_outside(codec, files, rows)
    _note_larger(files, rows)
    _report(rows, as_json, f"encoded with {codec.loaded.name}", wide)


def _codec(spec: str, backend: str, device: str, batch_size: int, data_root, rdo: int = 0):
    """A Codec of the model `spec` on `backend` (torch or onnx, resolved)."""
    from kaecompress.api import open_model
    from kaecompress.codec.images import Codec

    loaded = open_model(spec, backend)
    if backend == "torch":  # torch's default of one thread per core is far slower on a busy machine
        import torch

        from kaecompress.runtime.sessions import default_threads

        torch.set_num_threads(default_threads())
    return Codec(loaded, backend, batch_size, data_root, device, rdo_sweeps=rdo)


def _encoding_model(model: Optional[str], quality: Optional[int], dataset: str) -> str:
    """--model as given; else the codec family's model at --quality, or the family's default."""
    from kaecompress.zoo import codec_model

    if model is not None:
        if quality is not None:
            raise KaecError("--quality picks a model of a codec family; give it or --model, not both")
        return model
    return codec_model(dataset, quality)


def _outside(codec, files: list[Path]) -> list:
    return [(src, check) for src, check in zip(files, codec.domain_checks) if check is not None and check.outside]


def _refuse_outside(codec, files: list[Path], force: bool) -> None:
    """One line and exit 2 when a calibrated check finds images outside the model's domain (not with --force)."""
    from kaecompress.codec.domain import domain_of

    outside = [(src, check) for src, check in _outside(codec, files) if check.calibrated]
    if not outside or force:
        return
    src, check = outside[0]
    what = f"{src}" if len(outside) == 1 else \
        f"{len(outside)} of {len(files)} images ({', '.join(str(s) for s, _ in outside[:3])}" \
        f"{f' and {len(outside) - 3} more' if len(outside) > 3 else ''}); {src}"
    raise KaecError(f"{what}: outside {codec.loaded.name}'s domain, {domain_of(codec.loaded)}: "
                    f"{check.describe()}; --force encodes anyway")


def _warn_outside(codec, files: list[Path], rows: list[dict]) -> None:
    """One line on stderr per image outside the model's domain (at most 5, then a count): those --force let
    through, or those the uncalibrated PSNR check flags (a card without a "domain" entry)."""
    import sys

    from kaecompress.codec.domain import domain_of

    for row, check in zip(rows, codec.domain_checks):
        if check is not None:
            row["domain_check"] = {"statistic": check.statistic, "value": round(check.value, 4),
                                   "threshold": round(check.threshold, 4), "outside": check.outside}
    outside = _outside(codec, files)
    for src, check in outside[:5]:
        print(f"warning: {src}: outside {codec.loaded.name}'s domain, {domain_of(codec.loaded)}: "
              f"{check.describe()}; it will decode poorly", file=sys.stderr)
    if len(outside) > 5:
        print(f"warning: {len(outside) - 5} more images outside {codec.loaded.name}'s domain", file=sys.stderr)


def _note_larger(files: list[Path], rows: list[dict]) -> None:
    """One line when written files are larger than the inputs they came from."""
    import sys

    larger = [(src, row) for src, row in zip(files, rows) if row["bytes"] > src.stat().st_size]
    if not larger:
        return
    src, row = larger[0]
    more = f" (and {len(larger) - 1} more files larger than their inputs)" if len(larger) > 1 else ""
    print(f"note: {row['output']} ({row['bytes']:,} bytes) is larger than {src} ({src.stat().st_size:,} bytes)"
          f"{more}", file=sys.stderr)


def decode(
    inputs: List[Path] = typer.Argument(..., metavar="FILES...", help=".kae, .npz or .npy files, or folders of "
                                        "them."),
    output: Path = typer.Option(..., "-o", "--output", help="out.png for one input; a folder for several."),
    model: Optional[str] = DECODE_MODEL,
    backend: Backend = BACKEND,
    device: Device = DEVICE,
    batch_size: int = BATCH,
    data_root: Optional[Path] = DATA_ROOT,
    max_pixels: int = MAX_PIXELS,
    as_json: bool = JSON,
    wide: bool = WIDE,
) -> None:
    """Decompress .kae, .npz or .npy files to PNG images, at their original size and mode."""
    from kaecompress.api import resolve_backend
    from kaecompress.codec.bitstream import precheck
    from kaecompress.codec.containers import SUFFIXES, read_input
    from kaecompress.codec.images import check_backend

    check_backend(backend, device)
    backend = resolve_backend(backend)
    files = _inputs(inputs, SUFFIXES)
    to_folder = _to_folder(inputs, files, output)
    if not to_folder and output.suffix.lower() != ".png":
        raise KaecError(f"{output}: decode writes PNG files (use a .png name or a folder)")
    targets = _outputs(files, output, to_folder, ".png")
    # Every file is read and checked before torch and the model are loaded: its header, the size it claims,
    # and, when the model is a shipped one (its card says enough), all but the entropy decoding.
    data = {p: read_input(p, max_pixels) for p in files}
    for p in files:
        precheck(p, data[p], max_pixels)
    from kaecompress.zoo import default_model

    spec = model or _model_of(files[0], data[files[0]]) or default_model()
    early = _shipped_layout(spec)
    read_early = _read_files(files, data, early, max_pixels) if early is not None else {}
    codec = _codec(spec, backend, device, batch_size, data_root)
    if codec.layout != early:  # a run folder or checkpoint: only now is its layout known
        read_early = _read_files(files, data, codec.layout, max_pixels)
    v2 = [p for p in files if _is_v2(p, data[p])]  # together: a context model restores all their latents at once
    read_v2 = dict(zip(v2, codec.from_kae_many([data[p] for p in v2], [str(p) for p in v2], max_pixels)))
    encoded = [read_v2[p] if p in read_v2 else read_early[p] for p in files]
    del data, read_early, read_v2
    images = codec.decompress_many(encoded)
    del encoded
    import io

    from kaecompress.outputs import write_all

    blobs, rows = [], []
    for i, (src, dst) in enumerate(zip(files, targets)):
        im, images[i] = images[i], None  # each image is let go once it is a PNG
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        blobs.append(buf.getbuffer())  # the PNG itself, not a copy
        rows.append({"input": str(src), "output": str(dst), "size": list(im.size), "mode": im.mode})
        del im
    if to_folder:
        output.mkdir(exist_ok=True)
    write_all(list(zip(targets, blobs)))  # all outputs land, or none
    _report(rows, as_json, f"decoded with {codec.loaded.name}", wide)


def _check_tiles(files: list[Path], images: list, fit: str, tile: tuple[int, int], max_pixels: int) -> None:
    """An image too thin for its tiles (see containers.check_tiles) is refused before it is encoded, as its
    file would be when decoded."""
    from kaecompress.codec.containers import check_tiles

    if fit != "tile":
        return
    for path, im in zip(files, images):
        check_tiles((1, -(-im.height // tile[0]), -(-im.width // tile[1])), tile, str(path), max_pixels)


def _shipped_layout(spec: str):
    """The layout of the shipped model `spec` from its card alone (no torch); None for a run folder or a
    checkpoint, or a card too damaged to say (loading the model then gives the precise error)."""
    from kaecompress.codec.images import Layout
    from kaecompress.zoo import cards

    card = cards().get(spec)
    try:
        return Layout.of_card(spec, card) if card is not None else None
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _read_files(files: list[Path], data: dict, layout, max_pixels: int) -> dict:
    """Version-1 .kae, .npz and .npy files read and checked against the model's `layout`; version-2 files
    checked as far as they can be without its probability tables (header, layout, pixels, checksum)."""
    from kaecompress.codec.containers import read

    found = {}
    for p in files:
        if _is_v2(p, data[p]):
            layout.kae_header(data[p], str(p), max_pixels, checksum=True)
        else:
            found[p] = read(p, layout.latent_dim, layout.tile, layout.channels, layout.check_model, max_pixels, data[p])
    return found


def _model_of(path: Path, data: bytes) -> str | None:
    """The shipped model a .kae/.npz file (its bytes `data`) was encoded with, if it names one we have."""
    from kaecompress.codec.containers import from_kae
    from kaecompress.zoo import find_by_hash

    if _is_v2(path, data):
        from kaecompress.codec import bitstream
        from kaecompress.zoo import by_codec_id

        header = bitstream.parse_header(data, str(path))
        found = by_codec_id(header.codec_id) if header.codec_id is not None else find_by_hash(header.model_id)
        if found is None:  # v2 files only decode with their own model: say so rather than try the default
            made = f"codec id {header.codec_id}" if header.codec_id is not None else f"id {header.model_id}"
            raise KaecError(f"{path}: made with a model that is not shipped here ({made}); pass --model with the "
                            "run folder or checkpoint that encoded it")
        return found
    if path.suffix.lower() == ".kae":  # a damaged .kae is reported as such, before any model is loaded
        return find_by_hash(from_kae(data, str(path))[0].weights_sha256)
    if path.suffix.lower() == ".npz":
        from kaecompress.codec.containers import npz_weights_id

        return find_by_hash(npz_weights_id(data, str(path)) or "")
    return None


def _is_v2(path: Path, data: bytes) -> bool:
    """A .kae file of version 2 (entropy-coded, from a codec model), judged by its first byte; any other
    first byte is left to the version-1 reader, which says what is wrong."""
    return path.suffix.lower() == ".kae" and bool(data) and bool(data[0] & 0x80)


def _report(rows: list[dict], as_json: bool, title: str, wide: bool = False) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from kaecompress.cli.progress import print_table

    columns = [c for c in ("input", "output", "bytes", "size", "mode", "latents") if c in rows[0]]
    caption = None
    if len(rows) > TABLE_ROWS:  # a screenful says what happened; thousands of rows would take longer to draw
        total = f", {sum(r['bytes'] for r in rows):,} bytes in all" if "bytes" in rows[0] else ""
        caption = f"and {len(rows) - TABLE_ROWS:,} more{total}; --json lists every file"
    print_table(rows[:TABLE_ROWS], columns, title=f"{len(rows):,} file{'s' if len(rows) != 1 else ''} {title}",
                keys=("input", "output"), wide=wide, caption=caption)


TABLE_ROWS = 20


def models(as_json: bool = typer.Option(False, "--json", help="Print the model cards as JSON on stdout."),
           wide: bool = WIDE) -> None:
    """List the trained models shipped in trained/: their family and level, bytes per image and PSNR."""
    from kaecompress.zoo import cards, check_card, default_model, trained_dir

    found = cards()
    for name, card in found.items():
        check_card(card, trained_dir() / f"{name}.json")
    if as_json:
        print(json.dumps(found, indent=2))
        return
    from kaecompress.cli.progress import print_table

    default = default_model()
    folder = trained_dir()

    def weights(card: dict) -> str:
        path = folder / card["weights_file"]
        size = f"{path.stat().st_size / 1e6:.1f} MB" if path.is_file() else "missing"
        return size + (" f16" if card.get("weights_dtype") == "float16" else "")

    rows = [{"name": n + (" (default)" if n == default else ""), "dataset": c["dataset"],
             "family": f"{c['family']} q{c['quality']}" if c.get("family") else "",
             "bytes/image": f"{c['codec_metrics']['bytes_per_image']:.2f}" if "codec_metrics" in c else "",
             "val MSE": f"{c['metrics']['mse']:.6f}",
             "PSNR dB": f"{c['codec_metrics']['psnr'] if 'codec_metrics' in c else c['metrics']['psnr_db']:.2f}",
             "params": f"{c['params']:,}", "weights": weights(c), "ratio": f"{c['compression_ratio']:g}",
             "enc/dec KAE": f"{c['config']['model']['encoder_kae_order']}/{c['config']['model']['decoder_kae_order']}",
             "recipe": c.get("recipe") or ""} for n, c in found.items()]
    print_table(rows, ["name", "family", "bytes/image", "PSNR dB", "dataset", "enc/dec KAE", "val MSE", "params",
                       "weights", "recipe"], title="trained models", keys=("name",), wide=wide)


def promote(
    run: Path = typer.Argument(..., metavar="RUN", help="A finished run folder."),
    name: str = typer.Option(..., "--name", help="Name to ship it under, e.g. mnist-kae-dec3."),
    recipe: Optional[str] = typer.Option(None, "--recipe", help="The experiment file that trained it."),
    dest: Optional[Path] = typer.Option(None, "--dest", help="Folder for the weights and card (default: trained/)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root for the card's validation MSE and PSNR (default: $KAEC_DATA or the user cache dir)."),
    force: bool = typer.Option(False, "--force", help="Replace a model of the same name."),
    family: Optional[str] = typer.Option(None, "--family", help="Codec models: the quality family it joins "
                                         "(mnist, fashion-mnist)."),
    quality: Optional[int] = PROMOTE_QUALITY,
    float16: bool = typer.Option(False, "--float16", help="Store the weights as float16: half the size; they "
                                 "load as float32 and the card measures them as stored."),
    context: bool = typer.Option(False, "--context", help="Codec models: fit a linear context model to the "
                                 "training split's latents (each latent predicted from the earlier ones, the "
                                 "residual coded); kept where it saves bits."),
) -> None:
    """Ship a finished run as a trained model: safetensors weights and a model card with its metrics."""
    from kaecompress.experiments.promote import promote as promote_run

    card = promote_run(run, name, dest=dest, recipe=recipe, data_root=data_root, force=force, family=family,
                       quality=quality, float16=float16, context=context)
    print(card)


def register(app: typer.Typer) -> None:
    from kaecompress.cli.progress import register as add

    for command in (encode, decode, models, promote):
        add(app, command)
