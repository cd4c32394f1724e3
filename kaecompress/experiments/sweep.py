"""Many runs of an experiment: select, skip finished ones, resume interrupted ones, keep going past failures."""

from __future__ import annotations

import fnmatch
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kaecompress.experiments import runs
from kaecompress.experiments.config import Experiment, RunConfig
from kaecompress.errors import KaecError


def run_dir(runs_root: str | Path, cfg: RunConfig) -> Path:
    return runs.run_path(runs_root, cfg.run_folder)


def runs_root_of(directory: Path, cfg: RunConfig) -> Path:
    """The runs folder that `directory` is cfg's run folder in (else, for a folder placed by hand, its parent)."""
    folder = cfg.run_folder.split("/")
    parts = Path(directory).parts
    if len(parts) > len(folder) and list(parts[-len(folder):]) == folder:
        return Path(*parts[:-len(folder)])
    return Path(directory).parent


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
    busy: list[str] = field(default_factory=list)  # "slug: being trained by ...", left to their holders


@dataclass(frozen=True)
class Job:
    """A run a sweep will train (or find finished after all, or held by another process)."""
    index: int
    cfg: RunConfig
    directory: Path


# What happened to a job: ("trained" | "skipped" | "busy", its summary, or for "busy" the holder's lease)
Outcome = tuple[str, "dict | None"]


class Executor(Protocol):
    """Trains several tasks at once (local worker processes, a Ray cluster). A task is a list of jobs that
    one worker trains together: one run alone, or a pack (`run_pack`). Returns each job's Outcome by index;
    on Ctrl-C it stops them (each keeps a resumable checkpoint) and raises KeyboardInterrupt."""

    def __call__(self, tasks: list[list[Job]], *, total: int, data_root: str | Path | None,
                 device: str | None) -> dict[int, Outcome]: ...


def run_task(task: list[Job], *, wait_s: float = 0.0, data_root: str | Path | None = None,
             device: str | None = None, images: tuple | None = None,
             progress: Callable[[Job], object] | None = None) -> dict[int, Outcome]:
    """An executor's unit of work: one job through `run_one`, several through `run_pack`. `progress(job)`
    gives a job its train.Progress."""
    if len(task) > 1:
        return run_pack(task, wait_s=wait_s, data_root=data_root, device=device, images=images, progress=progress)
    (job,) = task
    return {job.index: run_one(job.cfg, job.directory, wait_s=wait_s, data_root=data_root, device=device,
                               progress=progress(job) if progress else None, images=images)}


def check_runs(selected: list[RunConfig], device: str | None = None) -> None:
    """What can reject a config, checked in a moment, cheapest first: every folder dataset looked for
    (before torch loads), every device resolved, then every distinct model and optimizer built once (on the
    meta device)."""
    def named(cfg: RunConfig, e: KaecError) -> KaecError:
        return KaecError(f"{cfg.source or cfg.experiment_name}: {e}")

    for cfg in selected:
        if cfg.data.dataset.startswith("folder:") and not Path(cfg.data.dataset[7:]).expanduser().is_dir():
            raise named(cfg, KaecError(f"data.dataset: folder {cfg.data.dataset[7:]} does not exist"))
    if not selected:
        return
    import torch

    from kaecompress.experiments.train import build_model, build_optimizer, resolve_device

    for cfg in {device or cfg.train.device: cfg for cfg in selected}.values():
        try:
            resolve_device(device or cfg.train.device, "--device" if device else "train.device")
        except KaecError as e:
            raise named(cfg, e) from None
    seen = set()
    for cfg in selected:
        key = repr((cfg.model, cfg.train.optimizer, cfg.train.lr, cfg.train.weight_decay))
        if key in seen:
            continue
        seen.add(key)
        try:
            with torch.device("meta"):
                model = build_model(cfg)
            build_optimizer(cfg, model.parameters())
        except KaecError as e:
            raise named(cfg, e) from None


def data_key(cfg: RunConfig, data_root: str | Path | None) -> tuple:
    return cfg.data.dataset, str(data_root or cfg.data.root), tuple(cfg.model.shape)


def load_run_data(cfg: RunConfig, data_root: str | Path | None, cache: dict | None = None) -> tuple:
    """The run's (train, validation) images, each split loaded once per `cache`; a KaecError names the config."""
    from kaecompress.experiments.data import load_images

    cache = {} if cache is None else cache
    key = data_key(cfg, data_root)
    if key not in cache:
        try:
            cache[key] = tuple(load_images(cfg.data.dataset, train, data_root or cfg.data.root, cfg.model.shape)
                               for train in (True, False))
        except KaecError as e:
            raise KaecError(f"{cfg.source or cfg.experiment_name}: {e}") from None
    return cache[key]


def claim(cfg: RunConfig, directory: Path, wait_s: float = 0.0):
    """The run's lock, taken and the run checked again under it: (lock, None) for a run to train, else
    (None, its Outcome): "busy" when another process holds it (after waiting up to `wait_s` for it to
    finish or for its lease to expire), "skipped" when it finished meanwhile. A run trained with other
    settings is a KaecError."""
    from kaecompress.experiments.runlock import RunBusy, RunLock

    runs.check_run_dir(runs_root_of(directory, cfg), directory)  # again here: a task may run on another node
    lock = RunLock(directory)
    try:
        lock.acquire(wait_s=wait_s)
    except RunBusy as e:
        return None, ("busy", e.holder)
    try:
        status, changes = run_state(directory, cfg)
        if changes:
            raise KaecError(runs.stale_message(directory, changes))
    except BaseException:
        lock.release()
        raise
    if status in runs.DONE_STATES:
        lock.release()
        return None, ("skipped", runs.read_json(directory / runs.SUMMARY))
    return lock, None


def log_attempt(directory: Path, **extra) -> None:
    """A line in RUN/attempts.jsonl for the training attempt about to start, where it runs and from which
    input it resumes."""
    import os
    import socket
    import time

    from kaecompress.experiments.runlock import attempt_log, node_id
    from kaecompress.experiments.train import load_checkpoint

    ckpt = directory / runs.CHECKPOINT
    attempt_log(directory, {"node": node_id(), "host": socket.gethostname(), "pid": os.getpid(),
                            "started_at": time.time(), **extra,
                            "resumed_from": load_checkpoint(ckpt).get("inputs", 0) if ckpt.is_file() else 0})


def run_one(cfg: RunConfig, directory: Path, *, wait_s: float = 0.0, data_root: str | Path | None = None,
            device: str | None = None, progress=None, images: tuple | None = None,
            on_locked: Callable[[], object] | None = None) -> Outcome:
    """Train one run under its lock (`claim`; kaecompress.experiments.runlock), its data loaded here, on
    this node. A run that raises anything but KaecError or Ctrl-C is recorded as failed. Each training
    attempt appends a line to RUN/attempts.jsonl."""
    from kaecompress.experiments.train import train_run

    lock, outcome = claim(cfg, directory, wait_s)
    if lock is None:
        return outcome
    try:
        train_images, val_images = images if images is not None else load_run_data(cfg, data_root)
        if on_locked:
            on_locked()
        log_attempt(directory)
        try:
            summary = train_run(cfg, directory, data_root=data_root, device=device, progress=progress,
                                train_images=train_images, val_images=val_images)
        except (KeyboardInterrupt, KaecError):
            raise
        except Exception as e:  # a crash in one run must not end the sweep
            summary = runs.mark_failed(directory, cfg, e)
        return "trained", summary
    finally:
        lock.release()


def failed_outcomes(jobs: list[Job], e: BaseException) -> dict[int, Outcome]:
    """Each job recorded as failed with `e`: its worker died, or something outside its training broke."""
    return {job.index: ("trained", runs.mark_failed(job.directory, job.cfg, e)) for job in jobs}


def run_sweep(selected: list[RunConfig], runs_root: str | Path, *, reset: bool = False,
              data_root: str | Path | None = None, device: str | None = None,
              on_run: Callable[[int, RunConfig, str], object] | None = None,
              executor: Executor | None = None, pack: str | int = "off") -> SweepReport:
    """Train the selected runs, in order or through `executor`. `on_run(index, cfg, status)` is called
    before each run in order (status "busy" for a run another process holds) and may return a
    train.Progress for it. A run that raises is recorded as failed and the sweep goes on;
    KeyboardInterrupt stops the sweep (the interrupted run keeps its checkpoint). Everything that can
    reject the sweep (links in the runs folder, configs, devices, the executor (`preflight()`, when it
    has one), data, runs trained with other settings, runs that `reset` would delete under another
    process) is checked before any run folder is touched. `pack` (auto, off or the most runs per pack)
    trains runs that share their shapes together (kaecompress.experiments.packing); an executor gets each
    pack as one task."""
    dirs = [run_dir(runs_root, cfg) for cfg in selected]
    for d in dirs:  # before anything in a run folder is read: a link there is never followed
        runs.check_run_dir(runs_root, d)
    # The quick checks first, before torch loads: with reset, the locks are taken (and held until the
    # folders are deleted, so that no process starts one of them in between); the executor's own checks.
    held = _lock_for_reset(dirs) if reset else []
    try:
        preflight = getattr(executor, "preflight", None)
        if preflight is not None and (reset or any(runs.run_status(d) not in runs.DONE_STATES for d in dirs)):
            preflight()  # Ray installed and answering, ...
        states = plan(selected, runs_root, device, reset=reset)
        for directory, (_, changes) in zip(dirs, states):
            if changes:
                raise KaecError(runs.stale_message(directory, changes))
        statuses = [status for status, _ in states]
        images: dict[tuple, tuple] = {}  # each split loaded once, before any folder is touched
        for cfg, status in zip(selected, statuses):
            if status not in runs.DONE_STATES:  # finished runs need neither their device nor their data here
                load_run_data(cfg, data_root, images)
        for lock in held:
            lock.stop_heartbeat()  # a renewal must not write into the folder while it is deleted
            shutil.rmtree(lock.run_dir)
    finally:
        for lock in held:
            lock.release()

    report = SweepReport()
    pending = [Job(i, cfg, d) for i, (cfg, d, s) in enumerate(zip(selected, dirs, statuses))
               if s not in runs.DONE_STATES]
    packs = {}  # the first member's index -> its pack
    if pack != "off":
        from kaecompress.experiments.packing import plan_packs

        packs = {p[0].index: p for p in plan_packs(pending, pack, device, data_root)}
    packed = {job.index for p in packs.values() for job in p}
    outcomes: dict[int, Outcome] = {}
    if executor is not None and pending:
        tasks = [packs.get(job.index, [job]) for job in pending if job.index in packs or job.index not in packed]
        outcomes = executor(tasks, total=len(selected), data_root=data_root, device=device)
    for i, (cfg, directory, status) in enumerate(zip(selected, dirs, statuses)):
        if status in runs.DONE_STATES:
            if on_run and executor is None:
                on_run(i, cfg, status)
            outcome = ("skipped", runs.read_json(directory / runs.SUMMARY))
        elif executor is not None:
            outcome = outcomes[i]
        elif i in packed:
            if i in packs:  # the pack trains at its first member; the others find their outcomes here
                outcomes.update(run_pack(packs[i], data_root=data_root, device=device,
                                         images=load_run_data(cfg, data_root, images),
                                         progress=lambda job: on_run(job.index, job.cfg, "pending") if on_run
                                         else None))
            outcome = outcomes[i]
            if outcome[0] == "busy" and on_run:
                on_run(i, cfg, "busy")
        else:
            late = _LateProgress(lambda i=i, cfg=cfg, status=status: on_run(i, cfg, status) if on_run else None)
            outcome = run_one(cfg, directory, data_root=data_root, device=device, progress=late,
                              images=load_run_data(cfg, data_root, images), on_locked=late.open)
            if outcome[0] == "busy" and on_run:
                on_run(i, cfg, "busy")
        add_outcome(report, cfg, outcome)
    return report


def _lock_for_reset(dirs: list[Path]) -> list:
    """The held locks of the existing run folders among `dirs`; KaecError (none left held) when another
    process trains one of them."""
    from kaecompress.experiments.runlock import RunLock, describe

    held = []
    try:
        for d in dirs:
            if not d.is_dir():
                continue
            lock = RunLock(d)  # renewed while the checks and the data take their time
            busy = lock.try_acquire()
            if busy is not None:
                busy.pop("busy", None)
                raise KaecError(f"{d}: being trained by {describe(busy or None)}; --reset deletes nothing while "
                                "a run is trained")
            held.append(lock)
    except BaseException:
        for lock in held:
            lock.release()
        raise
    return held


class _LateProgress:
    """Asks for the run's progress bar only once its lock is ours: a run left to another process gets none."""

    def __init__(self, make: Callable[[], object]) -> None:
        self.make, self.progress = make, None

    def open(self) -> None:
        self.progress = self.make()

    def start(self, total, done):
        if self.progress:
            self.progress.start(total, done)

    def update(self, inputs, loss, throughput):
        if self.progress:
            self.progress.update(inputs, loss, throughput)

    def validated(self, inputs, val_loss):
        if self.progress:
            self.progress.validated(inputs, val_loss)


def add_outcome(report: SweepReport, cfg: RunConfig, outcome: Outcome) -> None:
    from kaecompress.experiments.runlock import describe

    kind, payload = outcome
    if kind == "busy":
        report.busy.append(f"{cfg.matrix_slug}: being trained by {describe(payload)}")
        return
    if kind == "skipped":
        report.skipped.append(cfg.matrix_slug)
    summary = payload or {}
    report.summaries.append(summary)
    if summary.get("status") == "failed":
        report.failed.append(cfg.matrix_slug)
    elif summary.get("status") == "diverged":
        report.diverged.append(cfg.matrix_slug)


def run_state(directory: Path, cfg: RunConfig) -> tuple[str, list[str]]:
    """The run's status and the settings it was trained with that `cfg` has changed since: a finished run
    by its summary, one with a checkpoint to resume (interrupted, failed) by the checkpoint. Any change
    makes it `stale`."""
    from kaecompress.experiments.train import load_checkpoint

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
    that would train: what `kaec train --dry-run` shows and what `run_sweep` starts from. A symbolic link
    below the runs folder on the way to a run or its files is refused first (runs.check_run_dir)."""
    for cfg in selected:  # before anything in a run folder is read: a link there is never followed
        runs.check_run_dir(runs_root, run_dir(runs_root, cfg))
    states = [("pending", []) if reset else run_state(run_dir(runs_root, cfg), cfg) for cfg in selected]
    check_runs([cfg for cfg, (status, _) in zip(selected, states)
                if status not in (*runs.DONE_STATES, "stale")], device)
    return states


def run_pack(jobs: list[Job], *, wait_s: float = 0.0, data_root=None, device: str | None = None,
             images: tuple | None = None, progress: Callable[[Job], object] | None = None) -> dict[int, Outcome]:
    """run_one for a pack: each member claimed under its own lock (one another process holds is left to it),
    an attempt logged per member, their data loaded here (unless given), then trained together. A crash
    other than KaecError or Ctrl-C marks the pack's unfinished members failed. `progress(job)` gives a
    member its train.Progress. Returns each job's Outcome."""
    from kaecompress.experiments.packing import train_pack

    outcomes: dict[int, Outcome] = {}
    held, train = [], []
    try:
        for job in jobs:
            lock, outcome = claim(job.cfg, job.directory, wait_s)
            if lock is None:
                outcomes[job.index] = outcome
            else:
                held.append(lock)
                train.append(job)
        if not train:
            return outcomes
        if images is None:
            images = load_run_data(train[0].cfg, data_root)
        try:  # from here on every member is ours (its lock held): a crash marks only them failed
            progresses = [None] * len(train)
            for k in [*range(1, len(train)), 0]:  # the first member's bar last: it is the one shown
                log_attempt(train[k].directory, packed_with=len(train))
                if progress:
                    progresses[k] = progress(train[k])
            summaries = train_pack([j.cfg for j in train], [j.directory for j in train], train_images=images[0],
                                   val_images=images[1], device=device, progresses=progresses)
        except (KeyboardInterrupt, KaecError):
            raise
        except Exception as e:  # a crash in one pack must not end the sweep
            summaries = []
            for job in train:
                summary = runs.read_json(job.directory / runs.SUMMARY) if (job.directory / runs.SUMMARY).is_file() \
                    else None
                if not summary or summary.get("status") not in runs.DONE_STATES:
                    summary = runs.mark_failed(job.directory, job.cfg, e)
                summaries.append(summary)
        for job, summary in zip(train, summaries):
            outcomes[job.index] = ("trained", summary)
        return outcomes
    finally:
        for lock in held:
            lock.release()
