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


def check_runs(selected: list[RunConfig], device: str | None = None) -> None:
    """What can reject a config, checked in a moment: every distinct model and optimizer is built once (on
    the meta device), every device resolved, every folder dataset looked for."""
    import torch

    from kaecompress.train import build_model, build_optimizer, resolve_device

    seen = set()
    for cfg in selected:
        key = repr((cfg.model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay, cfg.train.device,
                    cfg.data.dataset))
        if key in seen:
            continue
        seen.add(key)
        try:
            with torch.device("meta"):
                model = build_model(cfg)
            build_optimizer(cfg, model.parameters())
            resolve_device(device or cfg.train.device, "--device" if device else "train.device")
            if cfg.data.dataset.startswith("folder:") and not Path(cfg.data.dataset[7:]).expanduser().is_dir():
                raise KaecError(f"data.dataset: folder {cfg.data.dataset[7:]} does not exist")
        except KaecError as e:
            raise KaecError(f"{cfg.source or cfg.experiment_name}: {e}") from None


def run_sweep(selected: list[RunConfig], runs_root: str | Path, *, reset: bool = False,
              data_root: str | Path | None = None, device: str | None = None,
              on_run: Callable[[int, RunConfig, str], object] | None = None) -> SweepReport:
    """Train the selected runs in order. `on_run(index, cfg, status)` is called before each run and may
    return a train.Progress for it. A run that raises is recorded as failed and the sweep goes on;
    KeyboardInterrupt stops the sweep (the interrupted run keeps its checkpoint). Everything that can
    reject the sweep (configs, devices, data, runs trained with other settings) is checked before any run
    folder is touched, `reset` included."""
    from kaecompress.data import load_images
    from kaecompress.train import train_run

    dirs = [run_dir(runs_root, cfg) for cfg in selected]
    states = plan(selected, runs_root, device, reset=reset)
    for directory, (_, changes) in zip(dirs, states):
        if changes:
            raise KaecError(runs.stale_message(directory, changes))
    statuses = [status for status, _ in states]

    def data_key(cfg: RunConfig) -> tuple:
        return cfg.data.dataset, str(data_root or cfg.data.root), tuple(cfg.model.shape)

    images: dict[tuple, object] = {}  # each split loaded once, before any folder is touched
    for cfg, status in zip(selected, statuses):
        if status in runs.DONE_STATES:  # finished runs need neither their device nor their data here
            continue
        for train in (True, False):
            key = (*data_key(cfg), train)
            if key not in images:
                try:
                    images[key] = load_images(cfg.data.dataset, train, data_root or cfg.data.root, cfg.model.shape)
                except KaecError as e:
                    raise KaecError(f"{cfg.source or cfg.experiment_name}: {e}") from None
    if reset:
        for d in dirs:
            if d.exists():
                shutil.rmtree(d)

    report = SweepReport()
    for i, (cfg, directory, status) in enumerate(zip(selected, dirs, statuses)):
        if status in runs.DONE_STATES:
            if on_run:
                on_run(i, cfg, status)
            report.skipped.append(cfg.matrix_slug)
            report.summaries.append(runs.read_json(directory / runs.SUMMARY))
            continue
        key = data_key(cfg)
        progress = on_run(i, cfg, status) if on_run else None
        try:
            summary = train_run(cfg, directory, data_root=data_root, device=device, progress=progress,
                                train_images=images[(*key, True)], val_images=images[(*key, False)])
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


def run_state(directory: Path, cfg: RunConfig) -> tuple[str, list[str]]:
    """The run's status and the settings it was trained with that `cfg` has changed since: a finished run
    by its summary, one with a checkpoint to resume (interrupted, failed) by the checkpoint. Any change
    makes it `stale`."""
    from kaecompress.train import load_checkpoint

    recipe = cfg.recipe()
    status = runs.run_status(directory, recipe)
    if status == "stale":
        saved = runs.read_json(directory / runs.SUMMARY)
    elif status in ("interrupted", "failed") and (directory / runs.CHECKPOINT).is_file():
        saved = load_checkpoint(directory / runs.CHECKPOINT)
    else:
        saved = None
    changes = runs.changed_settings(saved, recipe) if isinstance(saved, dict) else []
    return ("stale" if changes else status), changes


def plan(selected: list[RunConfig], runs_root: str | Path, device: str | None = None, *,
         reset: bool = False) -> list[tuple[str, list[str]]]:
    """Each run's `run_state` as a sweep finds it (all `pending` when reset), after `check_runs` on the runs
    that would train: what `kaec train --dry-run` shows and what `run_sweep` starts from."""
    states = [("pending", []) if reset else run_state(run_dir(runs_root, cfg), cfg) for cfg in selected]
    check_runs([cfg for cfg, (status, _) in zip(selected, states)
                if status not in (*runs.DONE_STATES, "stale")], device)
    return states
