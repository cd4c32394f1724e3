"""Rich rendering for the CLI: progress bars for sweeps and runs, and tables."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

# Progress and messages go to stderr, tables to stdout; off a terminal, tables get room instead of 80 columns
# (unless COLUMNS says how wide).
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS", "").isdigit() else 200)


def paragraphs(command) -> list[str]:
    """A command's docstring as paragraphs of one line each (Typer's rich help keeps the source's line breaks)."""
    return [" ".join(p.split()) for p in (command.__doc__ or "").split("\n\n") if p.strip()]


def register(app, command, name: str | None = None) -> None:
    """Add `command` to the app: its line in `kaec --help` is its docstring's first paragraph (whole sentences)."""
    text = paragraphs(command)
    app.command(name, short_help=text[0], help="\n\n".join(text))(command)


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


def runs_table(rows: list[dict], columns: list[str], title: str | None = None, keys: tuple[str, ...] = ()) -> Table:
    """A rich table of `rows`: text columns left-aligned, figures right-aligned; the `keys` columns (what
    identifies a row: a model, a run, a file) are never cut or folded."""
    table = Table(title=title, title_justify="left")
    for c in columns:
        whole = {"no_wrap": True, "min_width": max([len(c)] + [len(str(r.get(c, ""))) for r in rows])} \
            if c in keys else {}
        table.add_column(c, justify="left" if c in TEXT_COLUMNS else "right", **whole)
    for r in rows:
        table.add_row(*(str(r.get(c, "")) for c in columns))
    return table


def _width(table: Table) -> int:
    return Measurement.get(out, out.options.update_width(100_000), table).maximum


def print_table(rows: list[dict], columns: list[str], title: str | None = None, keys: tuple[str, ...] = (),
                wide: bool = False, caption: str | None = None) -> None:
    """Print a table on stdout. Its `keys` columns are always whole: where the table is wider than the
    terminal, the other columns are left out from the last one back (a caption names them and --wide), or,
    with `wide`, the table is printed at its full width."""
    columns = list(columns)
    table = runs_table(rows, columns, title, keys)
    left_out = []
    if wide:
        _print_at(table if caption is None else _captioned(table, caption), max(out.width, _width(table)))
        return
    while _width(table) > out.width and any(c not in keys for c in columns):
        drop = next(c for c in reversed(columns) if c not in keys)
        columns.remove(drop)
        left_out.insert(0, drop)
        table = runs_table(rows, columns, title, keys)
    notes = [caption] if caption else []
    if left_out:
        notes.append(f"{plural(len(left_out), 'column')} left out to fit {out.width} columns "
                     f"({', '.join(left_out)}); --wide shows them")
    # keys alone wider than the terminal: printed whole all the same (the terminal wraps the lines)
    _print_at(_captioned(table, "; ".join(notes)) if notes else table, max(out.width, _width(table)))


def _print_at(table: Table, width: int) -> None:
    """`out.print` at `width` columns (rich clamps a print's width to the console's)."""
    if width <= out.width:
        out.print(table)
    else:
        Console(width=width, file=out.file, force_terminal=out.is_terminal).print(table)


def _captioned(table: Table, caption: str) -> Table:
    table.caption, table.caption_justify = caption, "left"
    return table
