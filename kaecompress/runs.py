"""Run directories: layout, atomic writes and status.

    RUNS_ROOT/EXPERIMENT/RUN_SLUG/
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


def public_mode(path: Path, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private files; give them the permissions a plain open() would."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        public_mode(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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


def run_status(run_dir: Path) -> str:
    """`finished`, `diverged`, `failed`, `interrupted` (has a checkpoint) or `pending`."""
    summary = read_json(Path(run_dir) / SUMMARY)
    if summary and summary.get("status") in (*DONE_STATES, "failed"):
        return summary["status"]
    return "interrupted" if (Path(run_dir) / CHECKPOINT).is_file() else "pending"


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
