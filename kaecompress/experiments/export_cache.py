"""Verified exports made on first use and kept under the user's cache dir: the ONNX backend of a run folder
or checkpoint (shipped models carry their own graphs), and the artefacts `kaec bench` times."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kaecompress.errors import KaecError
from kaecompress.exporters import check_files, export


def export_cache(loaded, data_root=None, formats: tuple[str, ...] = ("onnx",)) -> Path:
    """The model's verified export in `formats`, made once and kept under the user's cache dir."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kaecompress" / "exports"
    folder = base / loaded.weights_sha256[:16]
    have: set[str] = set()
    try:
        manifest = check_files(folder)
        if manifest.get("weights_sha256") == loaded.weights_sha256:
            have = {info["format"] for info in manifest["files"].values()}
    except KaecError:  # damaged: the cache is ours to clear, then it is exported again
        shutil.rmtree(folder, ignore_errors=True)
    if set(formats) <= have:
        return folder
    from kaecompress.experiments.data import load_images

    base.mkdir(parents=True, exist_ok=True)
    images = load_images(loaded.dataset, False, data_root, loaded.model.shape)[:64]
    export(loaded.model, folder, tuple(sorted(have | set(formats))), images=images, source=loaded.name,
           weights_sha256=loaded.weights_sha256, force=True)
    return folder
