"""Run directories: layout, atomic writes and status.

    RUNS_ROOT/EXPERIMENT/RUN_SLUG/       (or RUNS_ROOT/NAME when experiment_name holds ${matrix_slug})
        config.yml       the resolved configuration of this run
        metrics.jsonl    one JSON object a line: train loss about every `log_every` inputs, validation per epoch
        checkpoint.pt    model + optimizer + progress, written atomically (resume point)
        summary.json     written last, atomically: only a run with one is finished (or diverged)
        tb/              TensorBoard scalars, when tensorboard is installed

A run is `finished` or `diverged` only once summary.json says so. A checkpoint without a summary is an
interrupted run that resumes; a killed process can never leave a torn file, since every write goes to a
temporary file in the same folder and is renamed over the old one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

CONFIG = "config.yml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
DONE_STATES = ("finished", "diverged")
_UMASK = os.umask(0)
os.umask(_UMASK)


def run_path(runs_root: str | Path, folder: str) -> Path:
    """RUNS_ROOT/FOLDER, refusing any folder that would land outside RUNS_ROOT (config text names it)."""
    from kaecompress.errors import KaecError

    parts = folder.split("/")
    if not folder or os.path.isabs(folder) or any(p in ("", ".", "..") for p in parts) or "\\" in folder:
        raise KaecError(f"{folder!r}: a run folder must be a relative path inside the runs folder")
    return Path(runs_root).joinpath(*parts)


def public_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private files; give them the permissions a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno:  # name the file the user asked for, not the temp file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON: NaN and infinities (not JSON) are written as null."""
    atomic_write_text(path, json.dumps(finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def run_status(run_dir: Path, recipe: dict | None = None) -> str:
    """`finished`, `diverged`, `failed`, `interrupted` (has a checkpoint) or `pending`. Given the run's
    current recipe (`RunConfig.recipe()`), a finished or diverged run trained with another one is `stale`."""
    summary = read_json(Path(run_dir) / SUMMARY)
    if isinstance(summary, dict) and summary.get("status") in (*DONE_STATES, "failed"):
        if recipe is not None and summary["status"] in DONE_STATES and changed_settings(summary, recipe):
            return "stale"
        return summary["status"]
    return "interrupted" if (Path(run_dir) / CHECKPOINT).is_file() else "pending"


def changed_settings(saved: dict, recipe: dict) -> list[str]:
    """The settings in which `recipe` differs from the one saved with a run (in its summary or checkpoint)."""
    from kaecompress.config import recipe_changes, recipe_of

    old = saved.get("recipe") or (recipe_of(saved["config"]) if isinstance(saved.get("config"), dict) else None)
    return recipe_changes(old, recipe) if isinstance(old, dict) else []  # runs from before recipes: unknown


def stale_message(run_dir: Path, changes: list[str]) -> str:
    return (f"{run_dir}: trained with other settings ({', '.join(changes)}); use --reset to train it again, "
            "or put the settings back")


def read_metrics(run_dir: Path) -> list[dict]:
    """The metrics log; a line torn by a kill is skipped."""
    rows = []
    try:
        lines = (Path(run_dir) / METRICS).read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def truncate_metrics(run_dir: Path, inputs: int) -> None:
    """Drop metrics logged after the checkpoint a run resumes from, so none appear twice."""
    kept = [r for r in read_metrics(run_dir) if r.get("inputs", 0) <= inputs]
    atomic_write_text(Path(run_dir) / METRICS, "".join(json.dumps(r) + "\n" for r in kept))
