"""The results table of an experiment: one row per run, aggregated over a key, sorted, rendered.

Columns: matrix_id, matrix_slug, the matrix keys, then the metrics
`validation loss (N inputs)` (the study's `validation loss (N steps)` is accepted for it wherever a column
is named), `model params`, `train time (minutes)`, `throughput`, `compression-ratio`,
and `status` whenever some run is not finished. Reading the table imports neither torch nor numpy.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from kaecompress.experiments import runs
from kaecompress.experiments.config import Experiment, slug_value
from kaecompress.errors import KaecError

PARAMS, TIME, THROUGHPUT, RATIO, COUNT, STATUS = (
    "model params", "train time (minutes)", "throughput", "compression-ratio", "count", "status")
BYTES, PSNR = "bytes/image", "PSNR"  # codec runs: whole .kae files and 8-bit PSNR on the validation set
ID_COLUMNS = ("matrix_id", "matrix_slug")
STAT_SUFFIXES = ("(std)", "(min)", "(max)")


def loss_column(budgets: set[int]) -> str:
    """Named after the training budget in inputs; runs with different budgets share `(final)`."""
    return f"validation loss ({next(iter(budgets)):,} inputs)" if len(budgets) == 1 else "validation loss (final)"


def _study_alias(name: str) -> str:
    """The study's own name of the loss column, `validation loss (N steps)` (its N counts inputs), as ours."""
    if name.startswith("validation loss (") and name.endswith(" steps)"):
        return name.removesuffix(" steps)") + " inputs)"
    return name


@dataclass
class Table:
    columns: list[str]
    rows: list[dict]
    numeric: set[str] = field(default_factory=set)
    keys: list[str] = field(default_factory=list)  # the matrix keys, in matrix order

    def column(self, name: str, flag: str) -> str:
        """`name` itself (or the study's name of the loss column), or a clear error listing the columns."""
        if name not in self.columns and _study_alias(name) in self.columns:
            return _study_alias(name)
        if name not in self.columns:
            raise KaecError(f"{flag} {name!r}: no such column (columns: {', '.join(self.columns)})")
        return name


def collect(experiment: Experiment, runs_root: str | Path) -> Table:
    """One row per run of the experiment, finished or not."""
    from kaecompress.experiments.sweep import run_dir

    loss = loss_column({r.train.max_inputs for r in experiment.runs})
    keys = list(experiment.matrix)
    rows = []
    for cfg in experiment.runs:
        directory = run_dir(runs_root, cfg)
        summary = _read_summary(directory / runs.SUMMARY)
        status = runs.run_status(directory, cfg.recipe())  # `stale`: its numbers belong to other settings
        row = {"matrix_id": cfg.matrix_id, "matrix_slug": cfg.matrix_slug, **cfg.matrix, STATUS: status}
        if status == "finished":
            _check_fields(directory / runs.SUMMARY, summary)
            row.update({loss: summary.get("final_val_loss"), PARAMS: summary.get("params"),
                        TIME: summary["train_time_s"] / 60, THROUGHPUT: summary.get("throughput"),
                        RATIO: summary.get("compression_ratio"), BYTES: summary.get("bytes_per_image"),
                        PSNR: summary.get("psnr")})
        elif status == "interrupted":
            done = max((m.get("inputs", 0) for m in runs.read_metrics(directory)), default=0)
            row[STATUS] = f"interrupted at {done / cfg.train.max_inputs:.0%}"
        rows.append(row)
    codec = [BYTES, PSNR] if any(r.codec is not None for r in experiment.runs) else []
    columns = [*ID_COLUMNS, *keys, loss, *codec, PARAMS, TIME, THROUGHPUT, RATIO]
    if any(r[STATUS] != "finished" for r in rows):
        columns.append(STATUS)
    return Table(columns, rows, {loss, *codec, PARAMS, TIME, THROUGHPUT, RATIO}, keys)


_SUMMARY_FIELDS = ("final_val_loss", "params", "train_time_s", "throughput", "compression_ratio")


def _read_summary(path: Path) -> dict:
    """A run's summary, {} when there is none; a damaged one is one clear error naming it."""
    if not path.exists():
        return {}
    summary = runs.read_json(path)
    if not isinstance(summary, dict):
        raise KaecError(f"{path}: not a readable run summary (expected a JSON object); delete it and run "
                        "kaec train again to redo that run")
    return summary


def _check_fields(path: Path, summary: dict) -> None:
    missing = [k for k in _SUMMARY_FIELDS if k not in summary]
    wrong = [k for k in _SUMMARY_FIELDS if k in summary and summary[k] is not None
             and (isinstance(summary[k], bool) or not isinstance(summary[k], (int, float)))]
    if missing or wrong or summary.get("train_time_s") is None:
        what = (f"missing {', '.join(missing)}" if missing
                else f"not a number: {', '.join(wrong or ['train_time_s'])}")
        raise KaecError(f"{path}: damaged run summary ({what}); delete it and run kaec train again to redo that run")


def aggregate(table: Table, key: str, stats: list[str] = ()) -> Table:
    """Merge runs that differ only in `key`: metrics become means over the finished runs, a count column
    says how many runs each row merges, and each column in `stats` gets (std), (min) and (max) after it."""
    key = table.column(key, "--aggregate")
    stats = [table.column(s, "--aggregate-stats") for s in stats]
    for s in stats:
        if s not in table.numeric:
            raise KaecError(f"--aggregate-stats {s!r}: not a numeric column")
    group_by = [c for c in table.columns if c not in table.numeric and c not in (key, *ID_COLUMNS, STATUS)]
    groups: dict[tuple, list[dict]] = {}
    for row in table.rows:
        groups.setdefault(tuple(repr(row.get(c)) for c in group_by), []).append(row)
    rows = []
    for members in groups.values():
        done = [m for m in members if m[STATUS] == "finished"]
        first = members[0]
        row = {c: first.get(c) for c in group_by}
        row["matrix_id"] = first["matrix_id"]
        row["matrix_slug"] = "_".join(f"{k}:{'*' if k == key else slug_value(first[k])}" for k in table.keys)
        for c in table.numeric:
            values = [m[c] for m in done if m.get(c) is not None]
            row[c] = sum(values) / len(values) if values else None
            if c in stats:
                mean = row[c]
                row[f"{c} (std)"] = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
                                     if len(values) > 1 else None)
                row[f"{c} (min)"] = min(values, default=None)
                row[f"{c} (max)"] = max(values, default=None)
        row[COUNT] = len(members)
        counts: dict[str, int] = {"finished": 0}
        for m in members:
            counts[m[STATUS]] = counts.get(m[STATUS], 0) + 1
        row[STATUS] = ("finished" if counts["finished"] == len(members)
                       else ", ".join(f"{n} {s}" for s, n in counts.items() if n))
        rows.append(row)
    columns = []
    for c in table.columns:
        if c == key:
            continue
        if c == STATUS:
            break
        columns.append(c)
        if c in stats:
            columns += [f"{c} {s}" for s in STAT_SUFFIXES]
    columns.append(COUNT)
    if any(r[STATUS] != "finished" for r in rows):
        columns.append(STATUS)
    numeric = table.numeric | {f"{c} {s}" for c in stats for s in STAT_SUFFIXES} | {COUNT}
    return Table(columns, rows, numeric, table.keys)


def sort(table: Table, keys: list[str]) -> Table:
    """Sort by several columns, the first primary; a trailing '-' sorts that key descending.
    Empty cells (unfinished runs) go last either way."""
    rows = list(table.rows)
    for spec in reversed(keys):
        descending = spec.endswith("-") and spec not in table.columns
        name = table.column(spec[:-1] if descending else spec, "--sort")
        present = [r for r in rows if r.get(name) is not None]
        missing = [r for r in rows if r.get(name) is None]
        present.sort(key=lambda r: _sort_key(r[name]), reverse=descending)
        rows = present + missing
    return Table(table.columns, rows, table.numeric, table.keys)


def _sort_key(value):
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, str(value))


def exclude(table: Table, names: list[str]) -> Table:
    drop = {table.column(n, "--exclude") for n in names}
    return Table([c for c in table.columns if c not in drop], table.rows, table.numeric, table.keys)


def hide_constant(table: Table) -> Table:
    """Drop columns whose value is the same in every row (the study's tables hide them)."""
    if len(table.rows) < 2:
        return table
    keep = [c for c in table.columns if len({repr(r.get(c)) for r in table.rows}) > 1]
    return Table(keep, table.rows, table.numeric, table.keys)


# ---- rendering --------------------------------------------------------------------------------------

def format_cell(column: str, value) -> str:
    if value is None:
        return ""
    if column.startswith(PARAMS):
        return f"{value:,.0f}"
    if column.startswith(THROUGHPUT):
        return f"{value:,.0f}/s"
    if column.startswith(TIME):
        return f"{value:.2f}"
    if column.startswith("validation loss"):
        return f"{value:.6f}"
    if column.startswith(RATIO):
        return f"{value:g}"
    if column.startswith(BYTES) or column.startswith(PSNR):
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _display(row: dict, column: str) -> str:
    text = format_cell(column, row.get(column))
    if not text and column.startswith("validation loss (") and row.get(STATUS, "finished") != "finished":
        return row[STATUS]  # an unfinished run says so where its loss would be
    return text


def to_markdown(table: Table) -> str:
    cells = [[_display(r, c) for c in table.columns] for r in table.rows]
    right = [c in table.numeric or all(_is_number(r.get(c)) for r in table.rows) for c in table.columns]

    # As in the study's tables, a statistic right after its column is headed just "(std)", "(min)", "(max)".
    headers = [next((s for s in STAT_SUFFIXES if c.endswith(f" {s}")), c) for c in table.columns]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]

    def line(values):
        return "| " + " | ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else (":" + "-" * (w + 1)) for w, r in zip(widths, right)) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in cells)]) + "\n"


def _is_number(value) -> bool:
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def to_csv(table: Table) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.columns)
    for r in table.rows:
        writer.writerow(["" if r.get(c) is None else r.get(c) for c in table.columns])
    return buf.getvalue()


def to_json(table: Table) -> str:
    return json.dumps([{c: r.get(c) for c in table.columns} for r in table.rows], indent=2) + "\n"


FORMATS = {"markdown": to_markdown, "csv": to_csv, "json": to_json}


def results_table(experiment: Experiment, runs_root: str | Path, *, exclude_columns: list[str] = (),
                  sort_columns: list[str] = (), aggregate_column: str | None = None,
                  aggregate_stats: list[str] = (), hide_constant_columns: bool = False) -> Table:
    """collect -> aggregate -> sort -> exclude -> hide constant columns, as `kaec results` does."""
    table = collect(experiment, runs_root)
    if aggregate_stats and not aggregate_column:
        raise KaecError("--aggregate-stats needs --aggregate COL (the column to merge runs over)")
    if aggregate_column:
        table = aggregate(table, aggregate_column, list(aggregate_stats))
    if sort_columns:
        table = sort(table, list(sort_columns))
    if exclude_columns:
        table = exclude(table, list(exclude_columns))
    if hide_constant_columns:
        table = hide_constant(table)
    return table
