"""One display for a sweep trained by several workers or a Ray cluster: a bar per active run under an
overall bar (runs done of the total, ETA); plain lines when stderr is not a terminal."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from kaecompress.cli.progress import console, plural


class WorkersProgress:
    """Feeds on the executors' events (kaecompress.experiments.workers.LocalWorkers, kaecompress.experiments.raysweep.RayCluster)."""

    def __init__(self, selected: list, quiet: bool = False) -> None:
        self.selected = selected
        self.quiet = quiet
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[val]}"), TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet or not sys.stderr.isatty(),
        )
        self.overall = self.bars.add_task("runs", total=len(selected), loss="", val="", speed="")
        self.active: dict[int, object] = {}
        self.done = 0
        self.where: dict[int, object] = {}

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bars.__exit__(*exc)

    def stop(self) -> None:
        self.bars.stop()

    def _name(self, index: int) -> str:
        cfg = self.selected[index]
        return cfg.run_folder

    def _line(self, text: str) -> None:
        if self.bars.disable and not self.quiet:
            print(f"[{self.done}/{len(self.selected)} done] {text}", file=sys.stderr, flush=True)

    def on_event(self, kind: str, index: int, *data) -> None:
        if kind == "begin":
            total, already = data
            self.done = already
            self.bars.update(self.overall, completed=already)
            if already:
                self._line(f"{plural(already, 'run')} already done")
        elif kind == "take":
            self.where[index] = data[0]
            self._line(f"worker {data[0]}: {self._name(index)}")
        elif kind == "start":
            total, done = data
            if index not in self.active:
                self.active[index] = self.bars.add_task(f"{self.selected[index].matrix_id} {self._name(index)}",
                                                        total=total, loss="", val="", speed="")
            self.bars.update(self.active[index], completed=done, total=total)
        elif kind == "update" and index in self.active:
            inputs, loss, speed = data
            self.bars.update(self.active[index], completed=inputs, loss=f"loss {loss:.5f}", speed=f"{speed:,.0f}/s")
        elif kind == "validated" and index in self.active:
            self.bars.update(self.active[index], val=f"val {data[1]:.5f}")
        elif kind == "retry":
            self._line(f"retry {self._name(index)}: its worker {data[0]} died; it resumes from its checkpoint")
            self._drop(index)
        elif kind == "end":
            outcome, payload = data[0]
            self._drop(index)
            if outcome != "busy":
                self.done += 1
                self.bars.update(self.overall, completed=self.done)
            status = (payload or {}).get("status", "") if outcome != "busy" else "left to another process"
            loss = (payload or {}).get("final_val_loss") if outcome != "busy" else None
            self._line(f"{self._name(index)}: {status}" + (f", val {loss:.6f}" if loss is not None else ""))

    def _drop(self, index: int) -> None:
        task = self.active.pop(index, None)
        if task is not None:
            self.bars.remove_task(task)
