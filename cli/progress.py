"""Rich rendering for the CLI: progress bars for sweeps and runs, and tables."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Progress and messages go to stderr, tables to stdout; off a terminal, tables get room instead of 80 columns.
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 200)


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


class _RunProgress:
    """The per-run bar: inputs seen of the budget, train loss, samples/s and ETA. Off a terminal (piped,
    logged) there is no bar: a plain line at each tenth of the budget and at each validation instead."""

    def __init__(self, bars: Progress, task, name: str = "", lines: bool = False) -> None:
        self.bars, self.task, self.name, self.lines = bars, task, name, lines
        self.total, self.next_tenth = 1, 1

    def _line(self, text: str) -> None:
        print(f"  {self.name}: {text}", file=sys.stderr, flush=True)

    def start(self, total: int, done: int) -> None:
        self.bars.reset(self.task, total=total, completed=done, start=True, visible=True)
        self.total = max(total, 1)
        self.next_tenth = done * 10 // self.total + 1
        if self.lines and done:
            self._line(f"resuming at {done:,} of {total:,} inputs ({done / self.total:.0%})")

    def update(self, inputs: int, loss: float, throughput: float) -> None:
        self.bars.update(self.task, completed=inputs, loss=f"loss {loss:.5f}", speed=f"{throughput:,.0f}/s")
        if self.lines and inputs * 10 >= self.next_tenth * self.total:
            self.next_tenth = inputs * 10 // self.total + 1
            self._line(f"{inputs / self.total:4.0%}  {inputs:,} inputs  loss {loss:.5f}  {throughput:,.0f}/s")

    def validated(self, inputs: int, val_loss: float) -> None:
        self.bars.update(self.task, val=f"val {val_loss:.5f}")
        if self.lines:
            self._line(f"validation loss {val_loss:.6f} at {inputs:,} inputs"
                       + ("  (done)" if inputs >= self.total else ""))


class SweepProgress:
    """An overall bar (run i/N, ETA) above the current run's bar."""

    def __init__(self, n_runs: int, quiet: bool = False) -> None:
        self.bars = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"), TextColumn("{task.fields[val]}"), TextColumn("{task.fields[speed]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=quiet or not sys.stderr.isatty(),
        )
        self.overall = self.bars.add_task("runs", total=n_runs, loss="", val="", speed="")
        self.run = self.bars.add_task("run", total=1, loss="", val="", speed="", visible=False, start=False)
        self.quiet, self.n_runs = quiet, n_runs

    def __enter__(self):
        self.bars.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bars.__exit__(*exc)

    def stop(self) -> None:
        self.bars.stop()

    def on_run(self, index: int, cfg, status: str):
        self.bars.update(self.overall, completed=index)
        self.bars.update(self.run, description=f"{cfg.matrix_id} {cfg.matrix_slug}", loss="", val="", speed="")
        lines = self.bars.disable and not self.quiet  # no live bars (not a terminal): plain lines
        if lines:
            verb = "skip" if status in ("finished", "diverged") else ("resume" if status in ("interrupted", "failed")
                                                                       else "train")
            print(f"[{index + 1}/{self.n_runs}] {verb} {cfg.run_folder}", file=sys.stderr, flush=True)
        return _RunProgress(self.bars, self.run, f"[{index + 1}/{self.n_runs}]", lines)


class SearchProgress:
    """A bar over `kaec encode --rdo`'s search (dimensions tried of all passes), on a terminal only."""

    def __init__(self, codec, quiet: bool = False) -> None:
        self.codec = codec
        self.bars = Progress(TextColumn("rate–distortion search"), BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), TimeRemainingColumn(), console=console,
                             disable=quiet or not codec.rdo_sweeps or not sys.stderr.isatty())
        self.task = None

    def _update(self, done: int, total: int) -> None:
        if self.task is None:
            self.task = self.bars.add_task("search", total=total)
        self.bars.update(self.task, completed=done)

    def __enter__(self):
        self.bars.__enter__()
        self.codec.rdo_progress = self._update
        return self

    def __exit__(self, *exc):
        self.codec.rdo_progress = None
        return self.bars.__exit__(*exc)


TEXT_COLUMNS = {"matrix_slug", "status", "dir", "file", "input", "output", "codec", "settings", "name", "dataset",
                "recipe", "part", "runtime", "mode"}


def runs_table(rows: list[dict], columns: list[str], title: str | None = None) -> Table:
    """A rich table of `rows`: text columns left-aligned, figures right-aligned."""
    table = Table(title=title, title_justify="left")
    for c in columns:
        table.add_column(c, justify="left" if c in TEXT_COLUMNS else "right")
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    return table
