"""`kaec rd`: rate–distortion of our models against JPEG, WebP, AVIF and PNG, in bytes of real files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from kaecompress.cli.options import BDMethod, Codec, values, wide_option
from kaecompress.errors import KaecError

PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _check_outputs(json_path: Optional[Path], json_dir: Optional[Path], plot_path: Optional[Path]) -> None:
    """Every output is checked before minutes of measuring."""
    for option, path in (("--json-file", json_path), ("--plot", plot_path)):
        if path is None:
            continue
        if path.is_dir():
            raise KaecError(f"{option} {path}: is a folder; give a file name")
        if not path.parent.is_dir():
            raise KaecError(f"{option} {path}: folder {path.parent} does not exist")
    if plot_path is not None and plot_path.suffix.lower() not in PLOT_SUFFIXES:
        raise KaecError(f"--plot {plot_path}: expected a {', '.join(PLOT_SUFFIXES)} file")
    if json_dir is not None and not json_dir.is_dir() and (json_dir.exists() or not json_dir.parent.is_dir()):
        raise KaecError(f"--json-dir {json_dir}: expected a folder (an existing one, or a new one in an existing "
                        "folder)")


def rd(
    dataset: str = typer.Option("mnist", "--dataset", "-d", metavar="mnist|fashion-mnist|folder:PATH",
                                help="The test images: a shipped dataset, or folder:PATH (every image file under "
                                "PATH, sorted, at its own size)."),
    model: Optional[List[str]] = typer.Option(None, "--model", "-m", help="Trained model name, model family (all "
                                              "its models), run folder or checkpoint; repeatable or a comma list; "
                                              "'none' for codecs only. Default: the shipped models of the dataset."),
    codecs: Optional[List[Codec]] = typer.Option(None, "--codecs", help="Classical codecs, repeatable or a comma "
                                                 "list (default: all four)."),
    images: Optional[int] = typer.Option(None, "--images", "-n", min=1, help="Use the first N test images "
                                         "(default: all)."),
    avif_images: Optional[int] = typer.Option(None, "--avif-images", min=1, help="Run AVIF (speed 0, ~40 ms per "
                                              "digit) on only the first N of those images."),
    as_json: bool = typer.Option(False, "--json", help="Print every curve and the BD comparisons as JSON on "
                                 "stdout (what --json-file writes), instead of the tables."),
    json_path: Optional[Path] = typer.Option(None, "--json-file", help="Write every curve to this file: a list of "
                                             "objects in CompressAI's results layout, with the BD comparisons."),
    json_dir: Optional[Path] = typer.Option(None, "--json-dir", help="Write one CompressAI-style JSON file per "
                                            "codec and model curve into this folder."),
    plot_path: Optional[Path] = typer.Option(None, "--plot", help="Write a figure of PSNR and SSIM against bytes "
                                             "per image (.png, .pdf or .svg)."),
    method: BDMethod = typer.Option("pchip", "--bd-method", help="BD interpolation of log rate over PSNR: pchip "
                                    "(JCT-VC/JVET spreadsheets), cubic (VCEG-M33's cubic fit) or akima."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help="Dataset root (default: $KAEC_DATA or "
                                             "~/.cache/kaecompress/data)."),
    rdo: int = typer.Option(0, "--rdo", min=0, max=16, help="Also measure every codec model with `kaec encode "
                            "--rdo N` (rate–distortion optimised rounding, N passes): a second curve per family."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines on stderr."),
    from_json: Optional[Path] = typer.Option(None, "--from-json", help="Print, plot or split (--json-dir) the "
                                             "results in a file that --json-file wrote, instead of measuring "
                                             "(with --bd-method: its comparisons again)."),
    wide: bool = wide_option(),
) -> None:
    """Measure the rate–distortion of our models against JPEG, WebP, AVIF and PNG on test images.

    For each: bytes of the whole file, PSNR, SSIM and times, then the BD-rate of every model family against
    every codec."""
    from kaecompress.evaluation.bdrate import METHODS
    from kaecompress.evaluation.rd import DEFAULT_CODECS, compare, load_json, plot, run_rd, write_json, write_json_dir

    chosen = values(codecs) or list(DEFAULT_CODECS)
    _check_outputs(json_path, json_dir, plot_path)

    def say(message: str) -> None:
        if not quiet:
            print(f"  {message}", file=sys.stderr, flush=True)

    if from_json is not None:
        result = load_json(from_json)
        if method != result.method:  # the comparisons again, with another interpolation
            if method not in METHODS:
                raise KaecError(f"--bd-method: expected one of {', '.join(METHODS)}, got {method!r}")
            result.method = method
            compare(result)
    else:
        result = run_rd(dataset, model, list(dict.fromkeys(chosen)), images,
                        codec_images={"avif": avif_images} if avif_images else None, data_root=data_root,
                        method=method, progress=say, rdo_sweeps=rdo)
    if json_path is not None:
        write_json(result, json_path)
    if json_dir is not None:
        write_json_dir(result, json_dir)
    if plot_path is not None:
        plot(result, plot_path)
    if as_json:
        import json

        from kaecompress.evaluation.rd import to_json

        print(json.dumps(to_json(result), indent=2))
        return
    _print(result, wide)


def _f(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def _print(result, wide: bool = False) -> None:
    from kaecompress.cli.progress import out, print_table

    rows = []
    for c in result.curves:
        for p in c.points:
            if c.kind == "codec":
                setting = "lossless" if p.setting is None else f"quality {p.setting}"
            elif len(c.points) == 1 and c.name == p.setting:
                setting = ".kae"
            else:
                setting = f"{p.setting}" + ("" if p.quality is None else f" (quality {p.quality})")
            rows.append({"name": c.name, "settings": setting, "images": f"{c.images:,}", "bytes": f"{p.bytes:,.1f}",
                         "payload": f"{p.payload_bytes:,.1f}", "bpp": f"{p.bpp:.3f}",
                         "PSNR dB": "lossless" if p.lossless else f"{p.psnr:.2f}", "SSIM": f"{p.ssim:.4f}",
                         "enc ms": f"{p.encoding_time * 1e3:.3f}", "dec ms": f"{p.decoding_time * 1e3:.3f}",
                         "exact": f"{p.exact_images:,}"})
    subsets = [f"{c.name} on the first {c.images:,}" for c in result.curves if c.images != result.images]
    title = (f"rate–distortion on {result.images:,} {result.dataset} test images"
             + (f" ({'; '.join(subsets)})" if subsets else "") + "; bytes = whole file, payload = without container")
    print_table(rows, ["name", "settings", "bytes", "PSNR dB", "SSIM", "bpp", "payload", "images", "exact", "enc ms",
                       "dec ms"], title=title, keys=("name", "settings"), wide=wide)
    if any(p.exact_images and not p.lossless for c in result.curves for p in c.points):
        out.print("exact: images decoded without any error; each counts as 100 dB in the mean PSNR (as libaom "
                  "and libvpx report it)")
    bd_rows, same_rows = [], []
    for m in result.model_curves():
        for row in m.comparisons:
            if row["bd_rate"] is not None or row["bd_psnr"] is not None or "at_same_psnr" not in row:
                rng = row["psnr_range"]
                bd_rows.append({"name": m.name, "codec": row["anchor"], "BD-rate %": _f(row["bd_rate"], "+.1f"),
                                "BD-PSNR dB": _f(row["bd_psnr"], "+.2f"),
                                "PSNR range": f"{rng[0]:.2f}-{rng[1]:.2f}" if rng else "",
                                "status": row["note"] or ""})
            for s in row.get("at_same_psnr", []):
                near = s["anchor_nearest"]
                if s["anchor_bytes"] is not None:
                    codec_bytes = f"{s['anchor_bytes']:,.1f} ({s['ratio']:.2f}x)"
                elif near and near["psnr"] > s["psnr"]:
                    codec_bytes = f"n/a: its lowest is {near['rate']:,.1f} at {near['psnr']:.2f} dB"
                elif near:
                    codec_bytes = f"n/a: its highest is {near['rate']:,.1f} at {near['psnr']:.2f} dB"
                else:
                    codec_bytes = ""
                same_rows.append({"name": s["model"], "codec": row["anchor"], "PSNR dB": f"{s['psnr']:.2f}",
                                  "bytes": f"{s['bytes']:,.1f}", "codec bytes at that PSNR": codec_bytes})
    from kaecompress.evaluation.bdrate import DESCRIPTION

    if bd_rows:
        print_table(bd_rows, ["name", "codec", "BD-rate %", "BD-PSNR dB", "PSNR range", "status"],
                    keys=("name", "codec"), wide=wide,
                    title=f"BD-rate of each model family against each codec (negative: fewer bytes); "
                          f"{DESCRIPTION[result.method]}")
    if same_rows:
        print_table(same_rows, ["name", "codec", "PSNR dB", "bytes", "codec bytes at that PSNR"],
                    keys=("name", "codec"), wide=wide,
                    title="models with too few points for BD: the codec's bytes at the model's PSNR "
                          "(interpolated on its curve, never extrapolated)")


def register(app: typer.Typer) -> None:
    from kaecompress.cli.progress import register as add

    add(app, rd, "rd")
