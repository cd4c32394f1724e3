"""The choices the commands share, as types `--help` lists, and the help text that reads the shipped models.

The CLI's convention (written out in docs/cli.md, checked by tests/test_cli_convention.py): `--json` is a flag
that prints JSON on stdout, `--json-file PATH` writes it to a file; a short option means one long option in
every command; a fixed set of values is a choice; numbers state their range and options their default.
The values are spelled out here rather than imported from the library (which would load numpy before every
command); the tests check them against the library's own lists.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

Backend = Literal["auto", "torch", "onnx"]           # kaecompress.codec.images.BACKENDS
Device = Literal["cpu", "cuda", "auto"]              # kaecompress.codec.images.DEVICES
Fit = Literal["tile", "resize"]                      # kaecompress.codec.containers.FITS
Quant = Literal["uint8", "float16"]                  # kaecompress.codec.containers.QUANTS
Container = Literal["kae", "npz", "npy"]             # kaecompress.codec.containers.SUFFIXES
Family = Literal["mnist", "fashion-mnist"]           # kaecompress.codec.domain.DOMAINS, the codec families
Provider = Literal["cpu", "cuda"]                    # kaecompress.evaluation.bench
BDMethod = Literal["pchip", "cubic", "akima"]        # kaecompress.evaluation.bdrate.METHODS
TableFormat = Literal["markdown", "csv", "json"]     # kaecompress.experiments.results.FORMATS


class Artefact(str, Enum):
    """`kaec export --format`: what to write (repeatable)."""

    onnx = "onnx"                # kaecompress.exporters.FORMATS, from the PyTorch model
    torchscript = "torchscript"
    pt2 = "pt2"
    web = "web"                  # kaecompress.exporters.web: shipped models for a web page or Node, no torch


class Codec(str, Enum):
    """`kaec rd --codecs`: the classical codecs compared (kaecompress.evaluation.rd.CODECS)."""

    jpeg = "jpeg"
    webp = "webp"
    avif = "avif"
    png = "png"


def values(chosen) -> list[str]:
    """Enum members (a repeatable choice) as their plain strings."""
    return [c.value if isinstance(c, Enum) else c for c in chosen or ()]


QUALITY_HELP = "Quality level of the codec family chosen by --dataset: 0 gives the smallest files. {levels}"


def quality_levels() -> str:
    """The shipped families' levels, read from the model cards: shown in --help only (it loads numpy)."""
    from kaecompress.zoo import cards, families

    found = cards()
    parts = []
    for name, members in families().items():
        levels = sorted(found[m]["quality"] for m in members)
        parts.append(f"{name} {levels[0]}-{levels[-1]}" if levels == list(range(levels[0], levels[-1] + 1))
                     else f"{name} {', '.join(map(str, levels))}")
    return f"Levels shipped: {'; '.join(parts)}." if parts else "No codec family is shipped."


def wide_option():
    import typer

    return typer.Option(False, "--wide", help="Print tables with every column, however wide the terminal "
                        "(by default, columns after the identifying one are left out to fit).")
