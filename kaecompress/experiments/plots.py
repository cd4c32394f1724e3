"""Figures: loss curves of an experiment's runs and reconstruction grids of trained models (matplotlib)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kaecompress import fileio

from kaecompress.experiments import runs
from kaecompress.experiments.config import RunConfig
from kaecompress.errors import KaecError


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    """Render to a temporary file next to `out`, then rename: a failed save leaves no half-written image."""
    import tempfile

    out = Path(out)
    if not out.parent.is_dir():
        raise KaecError(f"{out}: folder {out.parent} does not exist")
    fmt = out.suffix.lstrip(".").lower() or "png"
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with open(fd, "wb") as f:
            fig.savefig(f, format=fmt, dpi=120, bbox_inches="tight")
        fileio.public_mode(Path(tmp))
        Path(tmp).replace(out)
    except ValueError as e:  # unknown image format
        raise KaecError(f"{out}: cannot write this image format ({e})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return out


LINESTYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def curve_styles(selected: Sequence[RunConfig], color_by: str | None = None) -> list[dict]:
    """Colour, line style, marker and legend label of each run's curves. Runs sharing a colour (the same
    `color_by` value) differ in line style and marker, and each line is labelled with the matrix values
    that tell it apart, so four runs of one colour remain four distinguishable lines."""
    varying = [k for k in (selected[0].matrix if selected else {})
               if len({repr(r.matrix.get(k)) for r in selected}) > 1 and k != color_by]
    groups: dict[str, int] = {}
    members: dict[str, int] = {}
    styles = []
    for cfg in selected:
        key = str(cfg.matrix.get(color_by)) if color_by else cfg.matrix_slug
        colour = groups.setdefault(key, len(groups))
        j = members[key] = members.get(key, -1) + 1
        rest = " ".join(f"{k}={cfg.matrix[k]}" for k in varying)
        label = f"{color_by}={key}" + (f": {rest}" if rest else "") if color_by else cfg.matrix_slug
        styles.append({"colour": colour, "linestyle": LINESTYLES[j % len(LINESTYLES)],
                       "marker": MARKERS[j % len(MARKERS)], "label": label})
    return styles


def plot_curves(selected: Sequence[RunConfig], runs_root: str | Path, out: str | Path, *,
                color_by: str | None = None, log: bool = False, validation: bool = True) -> Path:
    """Train loss (lines) and validation loss (markers) against inputs seen, one line per run; runs sharing
    the value of matrix key `color_by` share a colour and differ in line style, marker and label."""
    from kaecompress.experiments.sweep import run_dir

    if color_by is not None and selected and color_by not in selected[0].matrix:
        raise KaecError(f"--color-by {color_by!r}: not a matrix key (keys: {', '.join(selected[0].matrix)})")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    cmap = plt.get_cmap("tab10")
    plotted = 0
    for cfg, style in zip(selected, curve_styles(selected, color_by)):
        metrics = runs.read_metrics(run_dir(runs_root, cfg))
        train = [(m["inputs"], m["train_loss"]) for m in metrics if m.get("train_loss") is not None]
        if not train:
            continue
        color = cmap(style["colour"] % 10)
        ax.plot(*zip(*train), color=color, lw=1, alpha=0.8, linestyle=style["linestyle"], label=style["label"])
        val = [(m["inputs"], m["val_loss"]) for m in metrics if m.get("val_loss") is not None]
        if validation and val:
            ax.plot(*zip(*val), marker=style["marker"], linestyle="none", color=color, ms=4, alpha=0.9)
        plotted += 1
    if not plotted:
        raise KaecError("no run of the selection has logged any loss yet: train it first")
    ax.set_xlabel("inputs seen")
    ax.set_ylabel("MSE loss (lines: train, markers: validation)")
    if log:
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=1 if plotted <= 12 else 2)
    name = selected[0].experiment_name
    ax.set_title(f"{name}: {plotted} run{'s' if plotted != 1 else ''}")
    path = _save(fig, Path(out))
    plt.close(fig)
    return path


def plot_reconstructions(models: Sequence[tuple[str, object]], images, out: str | Path) -> Path:
    """Originals in the top row, then one row of reconstructions per (label, model)."""
    import torch

    plt = _pyplot()
    n = len(images)
    rows = 1 + len(models)
    fig, axes = plt.subplots(rows, n, figsize=(n * 1.1, rows * 1.25), squeeze=False)
    recon = []
    with torch.no_grad():
        for _, model in models:
            model.eval()
            recon.append(model(images).clamp(0, 1))
    for r, (label, batch) in enumerate([("original", images), *zip([m[0] for m in models], recon)]):
        for c in range(n):
            img = batch[c].permute(1, 2, 0).squeeze(-1).cpu().numpy()
            ax = axes[r][c]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=7)
    fig.subplots_adjust(wspace=0.05, hspace=0.05)
    path = _save(fig, Path(out))
    plt.close(fig)
    return path
