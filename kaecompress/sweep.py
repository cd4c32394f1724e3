"""Many runs of an experiment: select, skip finished ones, resume interrupted ones, keep going past failures."""

from __future__ import annotations

import fnmatch
import shutil
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from kaecompress import runs
from kaecompress.config import Experiment, RunConfig
from kaecompress.errors import KaecError


def run_dir(runs_root: str | Path, cfg: RunConfig) -> Path:
    return Path(runs_root) / cfg.experiment_name / cfg.matrix_slug


def select(experiment: Experiment, patterns: Iterable[str] | None) -> list[RunConfig]:
    """Runs whose slug matches any pattern: a glob (`*ks:7*`) or, without wildcards, a substring."""
    patterns = list(patterns or [])
    if not patterns:
        return list(experiment.runs)

    def hit(slug: str, pat: str) -> bool:
        return fnmatch.fnmatchcase(slug, pat) if any(c in pat for c in "*?[") else pat in slug

    chosen = [r for r in experiment.runs if any(hit(r.matrix_slug, p) for p in patterns)]
    if not chosen:
        raise KaecError(f"--only {' '.join(patterns)}: matches none of the {len(experiment.runs)} runs of "
                        f"{experiment.path}")
    return chosen


@dataclass
class SweepReport:
    summaries: list[dict] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)


def check_runs(selected: list[RunConfig]) -> None:
    """Build every distinct model and optimizer once, so config mistakes stop the sweep before it starts."""
    import torch

    from kaecompress.train import build_model, build_optimizer

    seen = set()
    for cfg in selected:
        key = repr((cfg.model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay))
        if key not in seen:
            seen.add(key)
            try:
                with torch.device("meta"):
                    model = build_model(cfg)
                build_optimizer(cfg, model.parameters())
            except KaecError as e:
                raise KaecError(f"{cfg.source or cfg.experiment_name}: {e}") from None


def run_sweep(selected: list[RunConfig], runs_root: str | Path, *, reset: bool = False,
              data_root: str | Path | None = None, device: str | None = None,
              on_run: Callable[[int, RunConfig, str], object] | None = None) -> SweepReport:
    """Train the selected runs in order. `on_run(index, cfg, status)` is called before each run and may
    return a train.Progress for it. A run that raises is recorded as failed and the sweep goes on;
    KeyboardInterrupt stops the sweep (the interrupted run keeps its checkpoint)."""
    from kaecompress.data import load_images
    from kaecompress.train import train_run

    check_runs(selected)
    report = SweepReport()
    images: dict[tuple, object] = {}

    def cached(cfg: RunConfig, train: bool):
        root = data_root or cfg.data.root
        key = (cfg.data.dataset, str(root), tuple(cfg.model.shape), train)
        if key not in images:
            images[key] = load_images(cfg.data.dataset, train, root, cfg.model.shape)
        return images[key]

    for i, cfg in enumerate(selected):
        directory = run_dir(runs_root, cfg)
        if reset and directory.exists():
            shutil.rmtree(directory)
        status = runs.run_status(directory)
        if status in runs.DONE_STATES:
            if on_run:
                on_run(i, cfg, status)
            report.skipped.append(cfg.matrix_slug)
            report.summaries.append(runs.read_json(directory / runs.SUMMARY))
            continue
        train_images, val_images = cached(cfg, True), cached(cfg, False)
        progress = on_run(i, cfg, status) if on_run else None
        try:
            summary = train_run(cfg, directory, data_root=data_root, device=device, progress=progress,
                                train_images=train_images, val_images=val_images)
        except (KeyboardInterrupt, KaecError):
            raise
        except Exception as e:  # a crash in one run must not end the sweep
            directory.mkdir(parents=True, exist_ok=True)
            summary = {"status": "failed", "experiment_name": cfg.experiment_name, "matrix_id": cfg.matrix_id,
                       "matrix_slug": cfg.matrix_slug, "matrix": cfg.matrix,
                       "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                       "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            runs.atomic_write_json(directory / runs.SUMMARY, summary)
        report.summaries.append(summary)
        if summary["status"] == "failed":
            report.failed.append(cfg.matrix_slug)
        elif summary["status"] == "diverged":
            report.diverged.append(cfg.matrix_slug)
    return report
