"""Local worker processes: up to N runs of a sweep at once on this machine, each in its own process.

Each worker is a fresh Python (multiprocessing's spawn) that sets its own CPU threads (cores / N, at least
1, unless `--threads` or `train.threads` says otherwise) and, with CUDA, its own GPU (`runs_per_gpu` workers
share one), loads the data it needs once, and trains the tasks it is handed one at a time through
`sweep.run_task`, under each run's lock: a task is one run, or a pack of runs trained together. The driver
hands out the tasks, relays progress to a display, hands the unfinished runs of a worker that died to
another (they resume from their checkpoints), and on Ctrl-C tells every worker to stop at its next log
interval, which leaves a checkpoint, before raising KeyboardInterrupt.
A worker whose driver is gone (killed with -9, say) stops the same way on its own and exits, so that no
orphan keeps a run's lock or its memory.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from collections import deque
from collections.abc import Callable

from kaecompress.errors import KaecError
from kaecompress.experiments.sweep import Job, Outcome, failed_outcomes, run_task

RETRIES = 2  # a task whose worker died is handed out again this many times
STOP_WAIT_S = 300.0  # after Ctrl-C: how long workers get to save their checkpoints


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_workers(runs_per_gpu: int = 1) -> int:
    """`--workers auto`: runs_per_gpu per visible GPU, else one per core."""
    gpus = gpu_count()
    return gpus * runs_per_gpu if gpus else cores()


def parse_workers(text: str | int, runs_per_gpu: int = 1) -> int:
    if str(text).strip().lower() == "auto":
        return auto_workers(runs_per_gpu)
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise KaecError(f"--workers: expected a positive number or 'auto', got {text!r}")
    return n


# ---- the worker process -----------------------------------------------------------------------------

class _Relay:
    """A train.Progress that forwards to the driver and raises KeyboardInterrupt once told to stop (or once
    the driver is gone): train_run then saves a checkpoint at that batch boundary."""

    def __init__(self, events, stop, index: int, orphaned: threading.Event) -> None:
        self.events, self.stop, self.index, self.orphaned = events, stop, index, orphaned

    def _check(self) -> None:
        # orphaned first: a driver killed while it held the shared Event's lock would block is_set()
        if self.orphaned.is_set() or self.stop.is_set():
            raise KeyboardInterrupt

    def start(self, total: int, done: int) -> None:
        self.events.put(("start", self.index, total, done))
        self._check()

    def update(self, inputs: int, loss: float, throughput: float) -> None:
        self.events.put(("update", self.index, inputs, loss, throughput))
        self._check()

    def validated(self, inputs: int, val_loss: float) -> None:
        self.events.put(("validated", self.index, inputs, val_loss))


TASK_POLL_S = 1.0  # an idle worker looks this often whether its driver is gone


def _watch_driver(orphaned: threading.Event) -> None:
    """Wait for the driver's end (its side of the pipe that spawned this process closes), then stop like a
    Ctrl-C: train_run's handler saves a checkpoint at the next batch; outside training SIGINT is ignored
    and the worker sees `orphaned` instead."""
    import multiprocessing as mp
    from multiprocessing.connection import wait

    driver = mp.parent_process()
    if driver is None:
        return
    wait([driver.sentinel])
    orphaned.set()
    os.kill(os.getpid(), signal.SIGINT)


def _next_task(tasks, orphaned: threading.Event):
    """The next task, or None once told to finish or once the driver is gone."""
    while not orphaned.is_set():
        try:
            return tasks.get(timeout=TASK_POLL_S)
        except queue.Empty:
            continue
    return None


def _worker(slot: int, tasks, events, stop, threads: int | None, gpu: int | None, data_root, device) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when to stop (a shared Ctrl-C included)
    orphaned = threading.Event()
    threading.Thread(target=_watch_driver, args=(orphaned,), name="kaec-driver-watch", daemon=True).start()
    try:
        _serve(slot, tasks, events, stop, threads, gpu, data_root, device, orphaned)
    finally:
        if orphaned.is_set():  # nobody reads the events any more: exit without flushing them
            events.cancel_join_thread()


def _serve(slot, tasks, events, stop, threads, gpu, data_root, device, orphaned: threading.Event) -> None:
    user_threads = os.environ.get("KAEC_THREADS")
    cache: dict = {}
    from kaecompress.experiments.resources import set_task_threads
    from kaecompress.experiments.train import resolve_device

    while True:
        task = _next_task(tasks, orphaned)
        if task is None or orphaned.is_set() or stop.is_set():
            return
        jobs: list[Job] = task
        cfg = jobs[0].cfg  # a pack's members share their shapes and device
        set_task_threads([job.cfg for job in jobs], user_threads, threads)
        dev = device
        if gpu is not None and resolve_device(device or cfg.train.device).type == "cuda":
            dev = f"cuda:{gpu}"
        try:
            outcomes = run_task(jobs, data_root=data_root, device=dev, images=_data(cfg, data_root, cache),
                                progress=lambda job: _Relay(events, stop, job.index, orphaned))
        except KeyboardInterrupt:
            events.put(("interrupted", jobs[0].index, slot))
            return
        except KaecError as e:
            events.put(("error", jobs[0].index, slot, str(e)))
            return
        except BaseException as e:  # a run's own failure is recorded by run_task; this is anything else
            outcomes = failed_outcomes(jobs, e)
        for job in jobs:
            events.put(("end", job.index, slot, outcomes[job.index]))


def _data(cfg, data_root, cache):
    from kaecompress.experiments.sweep import load_run_data

    return load_run_data(cfg, data_root, cache)


# ---- the driver -------------------------------------------------------------------------------------

class LocalWorkers:
    """A sweep.Executor: `workers` processes on this machine, each training one task (a run or a pack) at
    a time. `on_event(kind, index, *data)` sees
    ("begin", -1, total, already_done), ("take", i, worker), ("start", i, total_inputs, done_inputs),
    ("update", i, inputs, loss, samples_per_s), ("validated", i, inputs, val_loss),
    ("end", i, outcome) and ("retry", i, worker)."""

    def __init__(self, workers: int, *, threads: int | None = None, runs_per_gpu: int = 1,
                 on_event: Callable[..., object] | None = None) -> None:
        self.workers, self.runs_per_gpu = workers, max(1, runs_per_gpu)
        self.threads = threads
        self.on_event = on_event or (lambda *a: None)

    def preflight(self) -> None:
        """The executor's checks before the sweep changes anything (`--reset`): none here, since processes
        on this machine need nothing that could be missing (`--workers` itself is checked by
        parse_workers; devices, data and runs by the sweep)."""

    def __call__(self, tasks: list[list[Job]], *, total: int, data_root=None, device=None) -> dict[int, Outcome]:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        jobs = [job for task in tasks for job in task]
        n = min(self.workers, len(tasks))
        threads = self.threads or max(1, cores() // n)
        gpus = gpu_count() if (device or "auto") != "cpu" else 0
        events, stop = ctx.Queue(), ctx.Event()
        procs: dict[int, object] = {}
        inbox: dict[int, object] = {}
        running: dict[int, list[Job]] = {}  # worker slot -> its task
        pending = deque(tasks)
        tries: dict[int, int] = {}  # by job: how often a worker died while it held that job
        results: dict[int, Outcome] = {}
        cut: set[int] = set()  # a run of each task whose worker stopped on a Ctrl-C
        by_index = {j.index: j for j in jobs}
        self.on_event("begin", -1, total, total - len(jobs))

        def spawn(slot: int) -> None:
            inbox[slot] = ctx.Queue()
            gpu = (slot // self.runs_per_gpu) % gpus if gpus else None
            p = ctx.Process(target=_worker, args=(slot, inbox[slot], events, stop, threads, gpu, data_root, device),
                            name=f"kaec-worker-{slot}", daemon=True)
            p.start()
            procs[slot] = p

        def hand_out(slot: int) -> None:
            if pending and not stop.is_set():
                task = pending.popleft()
                running[slot] = task
                inbox[slot].put(task)
                for job in task:
                    self.on_event("take", job.index, slot)
            else:
                inbox[slot].put(None)

        def handle(ev) -> None:
            kind, index = ev[0], ev[1]
            if kind == "end":
                _, _, slot, outcome = ev
                results[index] = tuple(outcome)
                self.on_event("end", index, tuple(outcome))
                if all(job.index in results for job in running.get(slot, [])):  # its whole task
                    running.pop(slot, None)
                    hand_out(slot)
            elif kind == "interrupted":
                running.pop(ev[2], None)
                cut.add(index)
            elif kind == "error":
                running.pop(ev[2], None)
                raise KaecError(ev[3])
            else:
                self.on_event(*ev)

        def reap() -> None:
            """A worker gone without saying so (killed, out of memory): its task's unfinished runs go to
            another."""
            for slot, p in list(procs.items()):
                if p.is_alive():
                    continue
                task = [job for job in running.pop(slot, []) if job.index not in results]
                del procs[slot]
                if not task:
                    continue
                died = 1 + max(tries.get(job.index, 0) for job in task)
                tries.update((job.index, died) for job in task)
                if died > RETRIES:
                    results.update(failed_outcomes(task, RuntimeError(
                        f"its worker process died {died} times (exit code {p.exitcode})")))
                    for job in task:
                        self.on_event("end", job.index, results[job.index])
                else:
                    pending.appendleft(task)
                    for job in task:
                        self.on_event("retry", job.index, slot)
                if pending and not stop.is_set():
                    spawn(slot)
                    hand_out(slot)

        try:
            for slot in range(n):
                spawn(slot)
                hand_out(slot)
            while len(results) < len(jobs):
                try:
                    handle(events.get(timeout=0.5))
                except queue.Empty:
                    reap()
                    if not procs and len(results) < len(jobs):
                        if cut:  # the workers took a Ctrl-C the driver did not see (it ignores SIGINT)
                            raise KeyboardInterrupt
                        missing = [by_index[i].cfg.matrix_slug for i in by_index if i not in results]
                        raise KaecError(f"every worker exited with runs left: {', '.join(missing)}")
        except BaseException:
            self._stop(stop, procs, events, running, handle_quietly=lambda ev: (
                self.on_event(*ev) if ev[0] not in ("end", "interrupted", "error") else None))
            raise
        finally:
            for slot, p in procs.items():
                if p.is_alive():
                    inbox[slot].put(None)
            for p in procs.values():
                p.join(timeout=10)
        return results

    def _stop(self, stop, procs, events, running, handle_quietly) -> None:
        """Tell every worker to stop and wait for them: each saves a checkpoint at its next batch boundary."""
        import time

        stop.set()
        deadline = time.monotonic() + STOP_WAIT_S
        while any(p.is_alive() for p in procs.values()) and time.monotonic() < deadline:
            try:
                handle_quietly(events.get(timeout=0.2))
            except queue.Empty:
                pass
            except KeyboardInterrupt:  # a second Ctrl-C: stop waiting
                break
        for p in procs.values():
            if p.is_alive():
                p.kill()
