"""A sweep's runs as Ray Core tasks (`kaec train --ray [ADDRESS]`; the optional extra `kaecompress[ray]`).

Every pending run, or pack of runs trained together (`--pack`), becomes one task asking for the run's
`train.resources` (CPUs, a share of a GPU; a pack: `pack_resources`); Ray places, retries and
cancels them. A task trains through `sweep.run_task`, like a local worker: under the
run's lock, after checking on its own node that the run was not trained with other settings and that its
data is there, resuming from the run's checkpoint. The runs folder must therefore be one path that every
node sees (a shared filesystem).

Faults: a task whose worker process or node dies is retried by Ray (`max_retries`) on another worker; the
dead holder's lock is free at once when its process is gone from a node that still runs, and otherwise its
lease expires (kaecompress.experiments.runlock), so a retried task waits for the lock, bounded by the lease's expiry,
and resumes from the last checkpoint. A run that fails for its own reasons is recorded as failed by the
task, which returns normally: Ray does not retry it. Ctrl-C cancels the tasks (Ray raises
KeyboardInterrupt in each, and train_run saves a checkpoint), then KeyboardInterrupt.

Ray Core tasks, not Ray Tune: a run is one function call with a fixed recipe, resumable from its own
folder, and results come from the run folders (`kaec results`), so Tune's trials, searchers and result
store would duplicate what the sweep already has.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from kaecompress.experiments import runs
from kaecompress.errors import KaecError
from kaecompress.fileio import read_text
from kaecompress.experiments.sweep import Job, Outcome, failed_outcomes

MAX_RETRIES = 3  # Ray's default for tasks whose worker or node died


NOT_INSTALLED = "--ray: Ray is not installed; install the extra: pip install 'kaecompress[ray]'"


def require_ray() -> None:
    """Refuse a Python without Ray, without importing it (a second's work the checks before a sweep skip)."""
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise KaecError(NOT_INSTALLED)


def import_ray():
    try:
        import ray
    except ImportError:
        raise KaecError(NOT_INSTALLED) from None
    return ray


def train_task(jobs: list[Job], data_root: str | None, device: str | None, wait_s: float) -> dict[int, Outcome]:
    """The body of one Ray task (a plain function, so that it is testable without Ray): one run, or a pack;
    returns each job's Outcome by index."""
    from kaecompress.experiments.sweep import run_task
    from kaecompress.experiments.resources import set_task_threads

    # --threads on the driver, else the task's CPUs are its threads
    set_task_threads([job.cfg for job in jobs], os.environ.get("KAEC_USER_THREADS"),
                     max(1, int(pack_resources(jobs)[0])))
    return run_task(jobs, wait_s=wait_s, data_root=data_root, device=device)


def pack_resources(task: list[Job]) -> tuple[float, float]:
    """What a task asks of the cluster: its members' largest CPU count (one process trains them, with that
    many threads) and the sum of their GPU shares, at most one GPU (a pack of four runs at gpu 0.25 takes a
    whole GPU, as the four would alone)."""
    return (max(job.cfg.train.resources.cpu for job in task),
            min(1.0, sum(job.cfg.train.resources.gpu for job in task)))


DISCOVERY_WAIT_S = 3.0  # a cluster found on this machine that does not answer in this long has stopped


def _silence(address: str, timeout_s: float) -> str | None:
    """Why nothing answers at HOST:PORT (None when something does, or for a form Ray resolves itself)."""
    import socket

    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return None  # "auto", ray://..., or a form Ray resolves itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        return str(e.strerror or e)
    return None


def reachable(address: str, timeout_s: float = 5.0, given: str | None = None) -> None:
    """A HOST:PORT that nothing answers on is refused in seconds (Ray itself would wait minutes). `given`
    says where the address came from (default: `--ray ADDRESS`)."""
    why = _silence(address, timeout_s)
    if why is not None:
        port = address.rpartition(":")[2]
        raise KaecError(f"{given or f'--ray {address}'}: no Ray cluster answers there ({why}); start one with "
                        f"`ray start --head --port {port}`, or give the address `ray start` printed") from None


def address_file() -> Path:
    """Where `ray start` records the cluster it started, for a later `ray.init()` without an address to
    join: Ray's temp dir (RAY_TMPDIR, else TMPDIR on Linux, else /tmp; another system's temp dir elsewhere)
    / ray / ray_current_cluster. Ray's own rule, written out because importing Ray to ask it takes a second;
    tests hold it to Ray's."""
    import sys
    import tempfile

    if "RAY_TMPDIR" in os.environ:
        temp = os.environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and "TMPDIR" in os.environ:
        temp = os.environ["TMPDIR"]
    elif sys.platform.startswith(("linux", "darwin")):
        temp = "/tmp"
    else:
        temp = tempfile.gettempdir()
    return Path(temp) / "ray" / "ray_current_cluster"


def _token_available() -> bool:
    """Whether Ray finds an authentication token (its own order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH,
    ~/.ray/auth_token)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").exists())


class RayCluster:
    """A sweep.Executor on a Ray cluster. Events as kaecompress.experiments.workers.LocalWorkers, the progress read from
    the run folders every `poll_s` seconds (the driver needs no channel to the tasks)."""

    def __init__(self, address: str | None = None, *, on_event: Callable[..., object] | None = None,
                 max_retries: int = MAX_RETRIES, poll_s: float = 1.0) -> None:
        self.address = address
        self.on_event = on_event or (lambda *a: None)
        self.max_retries, self.poll_s = max_retries, poll_s

    def preflight(self) -> None:
        """Refuse in seconds what ray.init would refuse late or wait on for minutes, starting nothing: Ray
        missing, an address where nothing answers, given (`--ray HOST:PORT`, RAY_ADDRESS) or found on this
        machine (a cluster `ray start` recorded that has stopped since)."""
        self._target()

    def _target(self) -> str | None:
        """The checked address of the cluster to join, or None where ray.init starts one on this machine."""
        require_ray()
        if self.address not in (None, "auto"):  # Ray lets RAY_ADDRESS stand in only for these two
            if self.address != "local":
                reachable(self.address)
            return None if self.address == "local" else self.address
        env = os.environ.get("RAY_ADDRESS") or ""
        if env not in ("", "auto"):
            if env != "local":
                reachable(env, given=f"--ray: RAY_ADDRESS={env}")
            return None if env == "local" else env
        path = address_file()
        if not path.exists():
            return None  # Ray starts a cluster on this machine
        found = read_text(path, 4096, "Ray's record of its current cluster").strip()
        why = _silence(found, DISCOVERY_WAIT_S) if found else None
        if why is not None:
            raise KaecError(f"--ray: the Ray cluster recorded in {path} ({found}) does not answer ({why}); "
                            f"remove that file (or run `ray stop --force`) to start afresh, use `--ray local` "
                            f"for a new cluster on this machine, or give --ray HOST:PORT")
        return found or None

    def __call__(self, tasks: list[list[Job]], *, total: int, data_root=None, device=None) -> dict[int, Outcome]:
        import contextlib
        import sys

        # stdout carries results (`--json`); Ray's own notices (a retried task, ...) go to stderr
        with contextlib.redirect_stdout(sys.stderr):
            return self._run(tasks, total, data_root, device)

    def _run(self, tasks: list[list[Job]], total: int, data_root, device) -> dict[int, Outcome]:
        from kaecompress.experiments.runlock import expiry_s

        joining = self._target()
        ray = import_ray()
        if joining is None and not os.environ.get("RAY_AUTH_MODE") and not _token_available():
            # A new cluster here turns on token authentication and would save its token as
            # ~/.ray/auth_token, after which a user's `ray start` clusters expect one: keep it in our env.
            import secrets

            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        try:
            ray.init(address=self.address, logging_level="ERROR", log_to_driver=False,
                     runtime_env={"env_vars": {"KAEC_USER_THREADS": os.environ.get("KAEC_THREADS", "")}}
                     if os.environ.get("KAEC_THREADS") else None)
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as e:
            auth = ("; a cluster with token authentication needs RAY_AUTH_MODE=token and its token "
                    "(RAY_AUTH_TOKEN or ~/.ray/auth_token)"
                    if "auth" in str(e).lower() and os.environ.get("RAY_AUTH_MODE") != "token" else "")
            raise KaecError(f"--ray {self.address or joining or ''}: cannot connect to a Ray cluster "
                            f"({str(e).splitlines()[0]}){auth}") from None
        remote = ray.remote(train_task)
        wait_s = expiry_s() * 1.25  # a retried task may find its run still leased by the dead worker
        root = None if data_root is None else str(Path(data_root).resolve())
        refs = {}
        try:
            for task in tasks:
                cpus, gpus = pack_resources(task)
                name = "kaec " + " + ".join(job.cfg.matrix_slug for job in task)
                jobs = [Job(job.index, job.cfg, job.directory.resolve()) for job in task]
                refs[remote.options(num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries,
                                    retry_exceptions=False, name=name).remote(jobs, root, device, wait_s)] = task
            self.on_event("begin", -1, total, total - sum(len(task) for task in tasks))
            return self._collect(ray, refs)
        except KeyboardInterrupt:
            self._cancel(ray, refs)
            raise
        finally:
            ray.shutdown()

    def _collect(self, ray, refs: dict) -> dict[int, Outcome]:
        results: dict[int, Outcome] = {}
        left = list(refs)
        seen: dict[int, int] = {}
        while left:
            done, left = ray.wait(left, num_returns=len(left), timeout=self.poll_s)
            for ref in done:
                task = refs[ref]
                try:
                    outcomes = {index: tuple(o) for index, o in ray.get(ref).items()}
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, KaecError) or isinstance(e, KaecError):
                        raise KaecError(str(cause or e).splitlines()[0]) from None
                    outcomes = failed_outcomes(task, cause or e)
                except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError,
                        ray.exceptions.RayError) as e:  # its worker died more often than Ray retries
                    outcomes = failed_outcomes(task, e)
                for job in task:
                    results[job.index] = outcomes[job.index]
                    self.on_event("end", job.index, outcomes[job.index])
            for ref in left:  # progress, read from the run folders that tasks are writing
                for job in refs[ref]:
                    self._progress(job, seen)
        return results

    def _progress(self, job: Job, seen: dict[int, int]) -> None:
        from kaecompress.experiments.runlock import read_lease

        if read_lease(job.directory) is None:
            return
        rows = runs.read_metrics(job.directory)
        inputs = max((r.get("inputs", 0) for r in rows), default=0)
        if job.index not in seen:
            self.on_event("start", job.index, job.cfg.train.max_inputs, inputs)
        elif inputs != seen[job.index]:
            last = next((r for r in reversed(rows) if r.get("train_loss") is not None), None)
            if last:
                self.on_event("update", job.index, inputs, last["train_loss"], 0.0)
        seen[job.index] = inputs

    def _cancel(self, ray, refs: dict) -> None:
        """Ctrl-C: cancel every task (each running one saves a checkpoint) and wait for them to end."""
        for ref in refs:
            ray.cancel(ref, force=False)
        deadline = time.monotonic() + 120
        left = list(refs)
        while left and time.monotonic() < deadline:
            try:
                _, left = ray.wait(left, num_returns=len(left), timeout=1.0)
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                return
