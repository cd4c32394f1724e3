"""An export folder's manifest.json: what it must say, and the files it lists read back and checked. Needs
no torch, so that a bad export folder is refused before anything heavy is loaded."""

from __future__ import annotations

import hashlib
import re
import stat
from pathlib import Path

from kaecompress.errors import KaecError
from kaecompress.fileio import MiB, read_json, read_regular

MANIFEST = "manifest.json"
MANIFEST_MAX_BYTES = MiB  # ours are 2-10 KB
ARTEFACT_MAX_BYTES = 1 << 30
PARTS = {"encoder": ("images", "latents"), "decoder": ("latents", "images")}
EXTENSIONS = {"onnx": "onnx", "torchscript": "pt", "pt2": "pt2"}
FORMATS = tuple(EXTENSIONS)
# The artefacts an export may list: each format's encoder and decoder; and a codec model's extras.
ARTEFACTS = {f"{part}.{ext}": (fmt, part) for fmt, ext in EXTENSIONS.items() for part in PARTS}
TABLES, DECODER = "prior.npz", "kae_decode.py"
CODEC_FILES = {TABLES: "probability tables", DECODER: "reference decoder"}  # each one's "part"
SHA256 = re.compile(r"[0-9a-f]{64}")


def read_manifest(folder: str | Path) -> dict:
    """The manifest of an export folder, checked for the shape `export` writes: format_version 1, the weights'
    sha256, and "files" listing the encoder and decoder of every format it names (and nothing an export does
    not write), each with its sha256 and size. Nothing else in the folder is looked at."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise KaecError(f"{folder}: not a folder (expected an export folder holding {MANIFEST})")
    if path.is_symlink():
        raise KaecError(f"{path}: a symbolic link; an export's files are plain files inside its folder")
    manifest = read_json(path, MANIFEST_MAX_BYTES, "an export manifest", follow=False)
    _check_manifest(manifest, path)
    return manifest


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_manifest(manifest, path: Path) -> None:
    if not isinstance(manifest, dict):
        raise KaecError(f"{path}: not an export manifest (expected a JSON object, got {type(manifest).__name__})")
    version = manifest.get("format_version")
    if type(version) is not int or version != 1:
        raise KaecError(f"{path}: format_version {_short(version)}; this kaecompress reads format_version 1")
    if not (isinstance(manifest.get("weights_sha256"), str) and SHA256.fullmatch(manifest["weights_sha256"])):
        raise KaecError(f"{path}: weights_sha256 must be the 64 hex digits of the exported weights' sha256")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        raise KaecError(f"{path}: 'files' lists no artefacts (expected the encoder and decoder of each exported "
                        "format, each with its sha256 and bytes)")
    for name, info in files.items():
        if name not in ARTEFACTS and name not in CODEC_FILES:
            raise KaecError(f"{path}: lists {_short(name)}, which no export writes (expected file names among "
                            f"{', '.join([*ARTEFACTS, *CODEC_FILES])})")
        if not isinstance(info, dict):
            raise KaecError(f"{path}: entry {name!r} must be an object with its format, part, sha256 and bytes")
        fmt, part = ARTEFACTS.get(name, (None, CODEC_FILES.get(name)))
        if info.get("part") != part or (fmt is not None and info.get("format") != fmt):
            raise KaecError(f"{path}: entry {name!r} must say part {part!r}" + (f" and format {fmt!r}" if fmt else ""))
        if not (isinstance(info.get("sha256"), str) and SHA256.fullmatch(info["sha256"])):
            raise KaecError(f"{path}: entry {name!r} without a sha256 (64 hex digits)")
        size = info.get("bytes")
        if type(size) is not int or not 0 < size <= ARTEFACT_MAX_BYTES:
            raise KaecError(f"{path}: entry {name!r}: bytes {_short(size)}; expected the file's size, 1 to "
                            f"{ARTEFACT_MAX_BYTES:,}")
    formats = {ARTEFACTS[name][0] for name in files if name in ARTEFACTS}
    missing = [name for name, (fmt, _) in ARTEFACTS.items() if fmt in formats and name not in files]
    if not formats or missing:
        raise KaecError(f"{path}: lists no {' or '.join(missing) or 'encoder or decoder'}; an export lists the "
                        "encoder and decoder of each format it holds")
    for name in CODEC_FILES.keys() & files.keys():
        if files[name].get("format") not in formats:
            raise KaecError(f"{path}: entry {name!r} must name one of the exported formats "
                            f"({', '.join(sorted(formats))}) as its format")


def read_listed(folder: Path, name: str, info: dict) -> bytes:
    """The bytes of `name`, a plain file in `folder` of exactly the size and sha256 its manifest entry gives."""
    path = folder / name
    try:
        st = path.lstat()
    except FileNotFoundError:
        raise KaecError(f"{path}: missing (listed in {MANIFEST})") from None
    except OSError as e:
        raise KaecError(f"{path}: cannot read it ({e.strerror or e})") from None
    if stat.S_ISLNK(st.st_mode):
        raise KaecError(f"{path}: a symbolic link; an export's files are plain files inside its folder")
    if not stat.S_ISREG(st.st_mode):
        raise KaecError(f"{path}: not a regular file (listed in {MANIFEST})")
    if st.st_size != info["bytes"]:
        raise KaecError(f"{path}: {st.st_size:,} bytes where {MANIFEST} lists {info['bytes']:,}; the file was changed")
    data = read_regular(path, info["bytes"], f"the file {MANIFEST} lists", follow=False)
    if len(data) != info["bytes"] or hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise KaecError(f"{path}: sha256 differs from {MANIFEST}; the file was changed")
    return data


def check_files(folder: str | Path) -> dict:
    """The manifest of an export folder whose every listed file is present with the size and sha256 it gives."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name, info in manifest["files"].items():
        read_listed(folder, name, info)
    return manifest
