"""Run directories: layout, atomic writes and status.

    RUNS_ROOT/EXPERIMENT/RUN_SLUG/       (or RUNS_ROOT/NAME when experiment_name holds ${matrix_slug})
        config.yml       the resolved configuration of this run
        metrics.jsonl    one JSON object a line: train loss about every `log_every` inputs, validation per epoch
        checkpoint.pt    model + optimizer + progress, written atomically (resume point)
        summary.json     written last, atomically: only a run with one is finished (or diverged)
        tb/              TensorBoard scalars, when tensorboard is installed
        attempts.jsonl   one line per training attempt (kaecompress.experiments.runlock), and its .lock and .lease.json

A run is `finished` or `diverged` only once summary.json says so. A checkpoint without a summary is an
interrupted run that resumes; a killed process can never leave a torn file, since every write goes to a
temporary file in the same folder and is renamed over the old one.

Nothing is written, appended or deleted through a symbolic link below RUNS_ROOT (`check_run_dir`): a link
there would let a sweep delete or train into a folder outside it. RUNS_ROOT itself may be a link.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from kaecompress.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text, finite  # noqa: F401 (runs.X)

CONFIG = "config.yml"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
ATTEMPTS = "attempts.jsonl"
LOCK = ".lock"
LEASE = ".lease.json"
TENSORBOARD = "tb"
DONE_STATES = ("finished", "diverged")
MAX_JSON_BYTES = 16 << 20  # a summary or lease is a few kB
MAX_METRICS_BYTES = 256 << 20  # a line per log interval: a few MB for the longest runs
# what a sweep writes, appends to or deletes in a run folder (besides its own temporary files)
RUN_ENTRIES = (CONFIG, METRICS, CHECKPOINT, SUMMARY, ATTEMPTS, LOCK, LEASE, TENSORBOARD)


def run_path(runs_root: str | Path, folder: str) -> Path:
    """RUNS_ROOT/FOLDER, refusing any folder that would land outside RUNS_ROOT (config text names it)."""
    from kaecompress.errors import KaecError

    parts = folder.split("/")
    if not folder or os.path.isabs(folder) or any(p in ("", ".", "..") for p in parts) or "\\" in folder:
        raise KaecError(f"{folder!r}: a run folder must be a relative path inside the runs folder")
    return Path(runs_root).joinpath(*parts)


def check_inside(runs_root: str | Path, path: str | Path) -> Path:
    """`path`, a path below `runs_root`, resolved, once checked that no part of it below the root is a
    symbolic link (the root itself may be one: the user's choice) and that it lies inside the resolved root.
    KaecError naming the first link: never followed."""
    from kaecompress.errors import KaecError

    root, path = Path(runs_root), Path(path)
    real_root = root.resolve()
    try:
        below = path.relative_to(root).parts
    except ValueError:
        raise KaecError(f"{path}: not inside the runs folder {root}") from None
    shown, real = root, real_root
    for part in below:
        shown, real = shown / part, real / part
        if part in (".", "..") or os.path.islink(real):
            raise KaecError(f"{shown}: is a symbolic link; kaec writes and deletes nothing through a link inside "
                            f"the runs folder {root} (make it a real folder or file)")
        if not os.path.lexists(real):
            break  # nothing deeper exists yet: it will be created as a real folder
    if not real.resolve().is_relative_to(real_root):
        raise KaecError(f"{path}: not inside the runs folder {root}")
    return real_root.joinpath(*below)


def check_run_dir(runs_root: str | Path, directory: str | Path) -> Path:
    """`check_inside` for a run folder and every entry a sweep writes, appends to or deletes in it."""
    real = check_inside(runs_root, directory)
    for name in RUN_ENTRIES:
        check_inside(runs_root, Path(directory) / name)
    return real


def atomic_torch_save(obj: Any, path: Path) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> Any | None:
    """A run's JSON file (summary, lease), or None when it is absent or no readable JSON: a FIFO or a huge
    file planted there is not read (kaecompress.fileio)."""
    from kaecompress.errors import KaecError
    from kaecompress.fileio import read_json as read_bounded

    try:
        return read_bounded(path, MAX_JSON_BYTES, "a run's JSON file")
    except KaecError:
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
    from kaecompress.experiments.config import recipe_changes, recipe_of

    old = saved.get("recipe") or (recipe_of(saved["config"]) if isinstance(saved.get("config"), dict) else None)
    return recipe_changes(old, recipe) if isinstance(old, dict) else []  # runs from before recipes: unknown


def stale_message(run_dir: Path, changes: list[str]) -> str:
    return (f"{run_dir}: trained with other settings ({', '.join(changes)}); use --reset to train it again, "
            "or put the settings back")


def mark_failed(run_dir: Path, cfg, error: BaseException | str) -> dict:
    """Record the run (a config.RunConfig) as failed: its summary, with the traceback of the exception being
    handled. The checkpoint, not the summary, is what resumes; a disk that takes nothing more leaves the
    summary unwritten, and the returned one still says why."""
    import traceback
    from datetime import datetime, timezone

    summary = {"status": "failed", "experiment_name": cfg.experiment_name, "matrix_id": cfg.matrix_id,
               "matrix_slug": cfg.matrix_slug, "matrix": cfg.matrix,
               "error": error if isinstance(error, str) else f"{type(error).__name__}: {error}",
               "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if not isinstance(error, str):
        summary["traceback"] = traceback.format_exc()
    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_json(Path(run_dir) / SUMMARY, summary)
    except OSError:
        pass
    return summary


def read_metrics(run_dir: Path) -> list[dict]:
    """The metrics log; a line torn by a kill is skipped."""
    from kaecompress.errors import KaecError
    from kaecompress.fileio import read_text

    rows = []
    try:
        lines = read_text(Path(run_dir) / METRICS, MAX_METRICS_BYTES, "a run's metrics log").splitlines()
    except KaecError:  # absent, or something planted there that is no log (a FIFO, a huge file)
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
