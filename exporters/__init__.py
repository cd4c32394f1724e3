"""Deployable artefacts of a CNN-KAE model: encoder and decoder as ONNX (with the KAE layer as the named
op kaecompress.KAEPoly), TorchScript and torch.export files, a JSON manifest, and built-in verification
against PyTorch on real validation images.

    from kaecompress.exporters import export
    paths = export(model, "exported/", formats=("onnx", "torchscript", "pt2"), images=val_images)
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from kaecompress import __version__
from kaecompress.errors import KaecError
from kaecompress.exporters.manifest import (ARTEFACTS, EXTENSIONS, FORMATS, MANIFEST, PARTS, check_files,
                                            read_listed, read_manifest)
from kaecompress.fileio import atomic_write_json, public_mode
from kaecompress.outputs import replace_folder

if TYPE_CHECKING:  # torch is imported where it is used: reading a manifest needs none of it
    import torch

    from kaecompress.nn.models import CNNKAE

TOLERANCE = 1e-4
BATCH_SIZES = (1, 37)

__all__ = ["export", "export_onnx", "export_torchscript", "export_pt2", "verify", "verify_dir", "check_files",
           "read_manifest", "FORMATS", "MANIFEST"]


class VerificationError(KaecError):
    """An artefact's outputs differ from PyTorch's by more than the tolerance."""


def check_formats(formats: Iterable[str]) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(formats))
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise KaecError(f"--format {bad[0] if bad else ''!r}: unknown format (expected: {', '.join(FORMATS)})")
    return formats


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _metadata(model: CNNKAE, source: str, weights: str) -> dict:
    c, h, w = model.shape
    return {"kaecompress_version": __version__, "source": source, "weights_sha256": weights,
            "model_config": model.config, "input_shape": ["batch", c, h, w], "input_range": [0.0, 1.0],
            "latent_dim": model.latent_dim}


def verify(folder: Path, model: CNNKAE, images: torch.Tensor, files: Iterable[str],
           data: Mapping[str, bytes] | None = None) -> dict:
    """Run each artefact among `files` in its own runtime on `images` at batch sizes 1 and 37 and compare with
    the PyTorch model; other files (a codec's tables and reference decoder) are skipped, and nothing outside
    `files` is touched. `data` holds artefacts' bytes already checked against a manifest, loaded from memory
    so that what runs is what was checked. Returns {file: {"batch 1": max_abs_diff, ...}}; raises
    VerificationError past the tolerance and KaecError for an artefact that does not load or run."""
    import torch

    from kaecompress.exporters.formats import load_runner

    model = model.eval()
    report, failures = {}, []
    for name in files:
        if name not in ARTEFACTS:
            continue
        fmt, part = ARTEFACTS[name]
        try:
            run = load_runner(folder / name, data=(data or {}).get(name))
        except KaecError:
            raise
        except Exception as e:  # the bytes are anyone's: each runtime has its own ways of refusing them
            raise KaecError(f"{folder / name}: does not load as the {fmt} {part} ({_first_line(e)})") from e
        report[name] = {}
        for batch in BATCH_SIZES:
            x = images[:batch].float()
            with torch.no_grad():
                if part == "decoder":
                    x = model.encoder(x)
                expected = getattr(model, part)(x)
            try:
                got = run(x.contiguous())
                if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
                    failures.append(f"{name} batch {batch}: output {_describe(got)}, expected shape "
                                    f"{tuple(expected.shape)}")
                    continue
                diff = (got.float() - expected).abs().max().item()
            except Exception as e:
                raise KaecError(f"{folder / name}: does not run as this model's {part} on a batch of {batch} "
                                f"({_first_line(e)})") from e
            report[name][f"batch {batch}"] = diff
            if not diff <= TOLERANCE:
                failures.append(f"{name} batch {batch}: max abs diff {diff:.3g} > {TOLERANCE:g}")
    if failures:
        raise VerificationError("verification failed: " + "; ".join(failures))
    return report


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _describe(out) -> str:
    import torch

    return f"of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else f"a {type(out).__name__}"


def export(model: CNNKAE, out_dir: str | Path, formats: Iterable[str] = FORMATS, *, images: torch.Tensor,
           source: str = "", weights_sha256: str = "", force: bool = False, prior=None,
           codec_id: int | None = None) -> dict[str, list[Path]]:
    """Write, verify and describe the encoder and decoder in each format. Everything is written to a
    temporary folder beside `out_dir` and renamed into place only once verified, so a failed export leaves
    nothing behind. Returns {format: [paths]}. A codec model's tables (`prior`, a rangecoder.IntegerTables;
    by default its own frozen prior's) add prior.npz, the reference decoder kae_decode.py (with onnx) and a
    "bitstream" section to the manifest; `codec_id` is its shipped id, if any."""
    from kaecompress.exporters.formats import WRITERS

    formats = check_formats(formats)
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise KaecError(f"{out_dir}: already exists (use --force to replace it)")
    if out_dir.exists() and (not out_dir.is_dir() or Path.cwd().resolve().is_relative_to(out_dir.resolve())
                             or (any(out_dir.iterdir()) and not _only_an_export(out_dir))):
        raise KaecError(f"{out_dir}: --force replaces only a folder holding an earlier export and nothing else "
                        f"(every file listed in its {MANIFEST}), never the working directory or another folder")
    if not out_dir.parent.is_dir():
        raise KaecError(f"{out_dir}: folder {out_dir.parent} does not exist")
    if len(images) < max(BATCH_SIZES):
        raise KaecError(f"verification needs at least {max(BATCH_SIZES)} images, got {len(images)}")
    from kaecompress.nn.models import weights_sha256 as hash_weights

    model = model.eval()
    weights_sha256 = weights_sha256 or hash_weights(model)
    metadata = _metadata(model, source, weights_sha256)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    public_mode(tmp, directory=True)
    try:
        written = {fmt: WRITERS[fmt](model, tmp, metadata) for fmt in formats}
        report = verify(tmp, model, images, [p.name for paths in written.values() for p in paths])
        manifest = _manifest(model, metadata, formats, tmp, report)
        context = None
        if prior is None and getattr(model, "prior", None) is not None and model.prior.frozen:
            prior, context = model.prior.tables(), model.prior.context()  # a codec model carries its own
        if prior is not None:
            from kaecompress.exporters.codecfiles import write_codec_files

            extra, manifest["bitstream"] = write_codec_files(tmp, prior, codec_id, formats, context)
            manifest["files"].update(extra)
        atomic_write_json(tmp / MANIFEST, manifest)
        replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {fmt: [out_dir / p.name for p in paths] for fmt, paths in written.items()}


def _only_an_export(folder: Path) -> bool:
    """True when `folder` holds an export's files and nothing else: all that --force may delete."""
    try:
        manifest = read_manifest(folder)
    except KaecError:
        return False
    listed = {*manifest["files"], MANIFEST}
    return all(p.name in listed and p.is_file() and not p.is_symlink() for p in folder.iterdir())


def _manifest(model: CNNKAE, metadata: dict, formats, folder: Path, report: dict) -> dict:
    import onnx
    import torch

    from kaecompress.exporters.kaepoly import DOMAIN, ONNX_OPSET, OP

    c, h, w = model.shape
    files = {}
    for fmt in formats:
        for part, (inp, out) in PARTS.items():
            name = f"{part}.{EXTENSIONS[fmt]}"
            files[name] = {"format": fmt, "part": part, "input": inp, "output": out,
                           "sha256": _sha256(folder / name), "bytes": (folder / name).stat().st_size}
    return {
        "format_version": 1,
        **metadata,
        "compression_ratio": model.compression_ratio,
        "input": {"name": "images", "shape": ["batch", c, h, w], "dtype": "float32", "range": [0.0, 1.0]},
        "latent": {"name": "latents", "shape": ["batch", model.latent_dim], "dtype": "float32"},
        "onnx": {"opset": ONNX_OPSET, "custom_op": f"{DOMAIN}.{OP} (an ONNX function of standard ops)"}
        if "onnx" in formats else None,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__},
        "files": files,
        "verification": {"tolerance": TOLERANCE, "max_abs_diff": report},
    }


def export_onnx(model: CNNKAE, out_dir, **kw) -> list[Path]:
    return export(model, out_dir, ("onnx",), **kw)["onnx"]


def export_torchscript(model: CNNKAE, out_dir, **kw) -> list[Path]:
    return export(model, out_dir, ("torchscript",), **kw)["torchscript"]


def export_pt2(model: CNNKAE, out_dir, **kw) -> list[Path]:
    return export(model, out_dir, ("pt2",), **kw)["pt2"]


def verify_dir(folder: str | Path, model: CNNKAE, images: torch.Tensor) -> dict:
    """Re-check an export folder: its manifest, every listed file's size and sha256, then each artefact's
    outputs against `model`. Only the files the manifest lists are read, and each is loaded from the very
    bytes whose sha256 was checked."""
    from kaecompress.nn.models import weights_sha256 as hash_weights

    folder = Path(folder)
    manifest = read_manifest(folder)
    ours, theirs = hash_weights(model), manifest["weights_sha256"]
    if theirs != ours:
        raise KaecError(f"{folder}: exported from another model (weights id {theirs[:16]}, this one's is {ours[:16]})")
    data = {name: read_listed(folder, name, info) for name, info in manifest["files"].items()}
    return verify(folder, model, images, list(manifest["files"]), data)
