"""Generated parts of the documentation: the CLI reference and the tables of measured figures.

    python docs/gen.py           rewrite docs/cli.md and every generated block
    python docs/gen.py --check   exit 1 naming each page that differs from what would be written

A generated block sits between `<!-- gen:NAME -->` and `<!-- /gen:NAME -->` in a page (README.md included);
its content comes only from committed JSON (model cards in trained/, docs/results/*.json) or from the Typer
app, so a table can never drift from the figures behind it (tests/test_docs.py runs --check).
"""

from __future__ import annotations

import glob
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"(<!-- gen:([\w-]+) -->\n)(.*?)(<!-- /gen:\2 -->)", re.S)


def _cards() -> list[dict]:
    return [json.loads(Path(f).read_text()) for f in sorted(glob.glob(str(ROOT / "trained" / "*.json")))]


def _levels(family: str) -> str:
    cards = sorted((c for c in _cards() if c.get("family") == family), key=lambda c: c["quality"])
    default = {"mnist": "mnist-q2"}.get(family)
    rows = ["| level | model | lambda | latents | bytes / image | PSNR (dB) | parameters | training inputs | context model | recipe |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for c in cards:
        name = c["name"] + (" (default)" if c["name"] == default else "")
        m = c["codec_metrics"]
        rows.append(f"| {c['quality']} | {name} | {c['lambda']:g} | {c['latent_dim']} | {m['bytes_per_image']:.2f} | "
                    f"{m['psnr']:.2f} | {c['params']:,} | {c['training']['inputs']:,} | "
                    f"{'yes' if c.get('context') else 'no'} | `{c['recipe']}` |")
    return "\n".join(rows) + "\n"


def levels_mnist() -> str:
    return _levels("mnist")


def levels_fashion() -> str:
    return _levels("fashion-mnist")


def levels_short() -> str:
    # The README's one table: both families side by side, from the same cards.
    fam = {f: {c["quality"]: c for c in _cards() if c.get("family") == f} for f in ("mnist", "fashion-mnist")}
    rows = ["| level | MNIST digits: bytes / PSNR (dB) | Fashion-MNIST: bytes / PSNR (dB) |", "|---:|---:|---:|"]
    for q in sorted(set(fam["mnist"]) | set(fam["fashion-mnist"])):
        cells = []
        for f in ("mnist", "fashion-mnist"):
            c = fam[f].get(q)
            cells.append(f"{c['codec_metrics']['bytes_per_image']:.2f} / {c['codec_metrics']['psnr']:.2f}" if c else "")
        rows.append(f"| {q} | {cells[0]} | {cells[1]} |")
    return "\n".join(rows) + "\n"


def plain_models() -> str:
    rows = ["| model | dataset | bottleneck | latents | validation MSE | PSNR (dB) | parameters | recipe |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for c in _cards():
        if c.get("codec_id") is not None:
            continue
        m = c["config"]["model"]
        side = lambda order: f"KAE order {order}" if order else "Linear"  # noqa: E731
        rows.append(f"| {c['name']} | {c['dataset']} | {side(m['encoder_kae_order'])} encoder, "
                    f"{side(m['decoder_kae_order'])} decoder | {c['latent_dim']} | {c['metrics']['mse']:.6f} | "
                    f"{c['metrics']['psnr_db']:.2f} | {c['params']:,} | `{c['recipe']}` |")
    return "\n".join(rows) + "\n"


def _runtime() -> dict:
    return json.loads((ROOT / "docs" / "results" / "runtime_install.json").read_text())


def runtime_mb() -> str:
    return f"{_runtime()['venv']['mb']:.0f} MB\n"


def runtime_table() -> str:
    r = _runtime()
    rows = ["| figure | runtime install | training install | |", "|---|---:|---:|---|"]
    rows.append(f"| fresh venv | {r['venv']['mb']:.1f} MB ({len(r['venv']['packages'])} packages) | | |")
    for cmd in ("encode", "decode"):
        c = r["commands"][cmd]
        rows.append(f"| `kaec {cmd}`, one digit: wall | {c['runtime']['wall_s']:.2f} s | {c['training_torch']['wall_s']:.2f} s "
                    f"(torch) | {c['speedup']:.1f}x |")
        rows.append(f"| `kaec {cmd}`, one digit: peak RSS | {c['runtime']['rss_mb']:.0f} MB | "
                    f"{c['training_torch']['rss_mb']:.0f} MB | |")
    b = r["batch_10k"]
    rows.append(f"| `kaec encode`, {b['images']:,} digits | {b['runtime']['images_per_s']:.0f} images/s | "
                f"{b['training_onnx']['images_per_s']:.0f} images/s (`--backend onnx`) | same bytes: "
                f"{'yes' if b['same_bytes'] else 'no'} |")
    for name, v in r["refusals"].items():
        rows.append(f"| refusal, {name.replace('_', ' ')}: wall | {v['wall_s']:.2f} s | | |")
    m = r["machine"]
    rows.append("")
    rows.append(f"Machine: {m['cpus']} CPUs, Python {m['python']}; command: `python benchmarks/runtime_install.py`. "
                f"Budgets checked by the script: {sum(b['pass'] for b in r['budgets'])} of {len(r['budgets'])} met.")
    return "\n".join(rows) + "\n"


def _cli_param(ctx, p) -> str:
    if p.param_type_name == "argument":
        return f"| `{p.metavar or p.name.upper()}` | {'required' if p.required else 'optional'}{', several' if p.nargs == -1 else ''} | {_cell(p.help or '')} |"
    opts, text = p.get_help_record(ctx)
    return f"| `{_cell(opts)}` | | {_cell(text)} |"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# Hand-written: the rules every command follows (tests/test_cli_convention.py checks them on the app).
CONVENTIONS = """## Conventions

- `--json` is a flag everywhere: the command prints JSON on stdout instead of its tables. A command that can
  also write JSON to a file takes `--json-file PATH` (`kaec bench`, `kaec rd`); `kaec rd --json-dir DIR`
  writes one file per curve, and `kaec rd --from-json PATH` reads back what `--json-file` wrote.
- A short option means the same long option in every command that has it: `-c --config`, `-d --dataset`,
  `-f --table-format`, `-m --model`, `-n --images`, `-o --output`, `-q --quality`, `-h --help`, and the
  study's `-ec`, `-sc`, `-ac`, `-acs` in `kaec results`.
- One name, one meaning: `--container` is the file type `kaec encode` writes (kae, npz, npy), `--table-format`
  how `kaec results` prints its table, `--format` the artefacts `kaec export` writes (onnx, torchscript,
  pt2, web).
- A fixed set of values is a choice that `--help` lists (`<tile|resize>`); numbers state their range
  (`[x>=1]`) and options their default. Every option is checked before PyTorch or a model loads: a mistake
  is one line on stderr naming the option, and exit status 2.
- Tables keep their identifying column (model, run, file) whole: at a narrow terminal the other columns are
  left out, from the last one back, and a line under the table names them; `--wide` prints every column.
- Arguments in the usage lines are named for what they hold: `IMAGES...`, `FILES...`, `SOURCE...`, `RUN`.
- Old spellings still read, with a note on stderr: `kaec encode --format` (now `--container`), `kaec results
  --format` (now `--table-format`), `kaec bench --json PATH` and `kaec rd --json PATH` (now `--json-file
  PATH`), `kaec rd -q` (now `--quiet`).

Every command has `--help`; `--debug` anywhere shows a traceback instead of a one-line error."""


def cli_page() -> str:
    import typer
    from typer._click import Context

    from kaecompress.cli import coding
    from kaecompress.cli.main import app

    coding.describe_levels()  # as `--help` shows it: the shipped levels of each family
    group = typer.main.get_command(app)
    out = ["# Command-line reference", "",
           "<!-- Generated by docs/gen.py from the Typer app (kaecompress.cli.main); do not edit by hand. -->", "",
           _cell(group.help or ""), "", CONVENTIONS, ""]
    for name, cmd in group.commands.items():
        if cmd.hidden:
            continue
        ctx = Context(cmd, info_name=name)
        out += [f"## kaec {name}", "", _cell(cmd.help or ""), "", "| parameter | | description |", "|---|---|---|"]
        out += [_cli_param(ctx, p) for p in cmd.params if not p.hidden]
        out.append("")
    return "\n".join(out)

RD_DATASETS = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}


def _rd(dataset: str) -> list[dict]:
    return json.loads((ROOT / "docs" / "results" / f"rd-{dataset}.json").read_text())


def _family_comparisons(dataset: str) -> tuple[dict, dict[str, dict]]:
    family = next(c for c in _rd(dataset) if c["description"].startswith("model family"))
    return family, {c["anchor"]: c for c in family["comparisons"]}


def bd_table() -> str:
    rows = ["| test set | family | against | BD-rate | shared PSNR range | images (family / codec) |",
            "|---|---|---|---:|---|---|"]
    for dataset, label in RD_DATASETS.items():
        family, comparisons = _family_comparisons(dataset)
        psnrs = [p for p in family["results"]["psnr"]]
        for anchor, c in comparisons.items():
            rate = f"{c['bd_rate']:+.1f}%" if c["bd_rate"] is not None else "none: no shared PSNR range"
            shared = f"{c['psnr_range'][0]:.2f}-{c['psnr_range'][1]:.2f} dB" if c["psnr_range"] else ""
            rows.append(f"| {label} | {family['name']} ({len(psnrs)} levels, {min(psnrs):.2f}-{max(psnrs):.2f} dB) "
                        f"| {anchor} | {rate} | {shared} | {family['images']:,} / {c['anchor_images']:,} |")
    method = _rd("mnist")[-1].get("bd_method", "")
    rows += ["", f"BD-rate: {method}. Machine: the development machine (2 CPU cores); command: "
             "`kaec rd --dataset DATASET --avif-images 2000 --json-file docs/results/rd-DATASET.json --plot "
             "docs/rd-DATASET.png`."]
    return "\n".join(rows) + "\n"


def bd_summary() -> str:
    parts = []
    for dataset, label in RD_DATASETS.items():
        _, c = _family_comparisons(dataset)
        parts.append(f"the {label} family needs {-c['WebP']['bd_rate']:.1f}% fewer bytes than WebP and "
                     f"{-c['JPEG']['bd_rate']:.1f}% fewer than JPEG")
    return "; ".join(parts) + "\n"


WEB_RUNTIMES = {"python_onnxruntime": "Python, onnxruntime (default: {threads} thread{s})",
                "python_onnxruntime_1_thread": "Python, onnxruntime (1 thread)",
                "node_kae_mjs": "Node, `kae.mjs`", "chromium_page": "Chromium, the page"}


def web_table() -> str:
    r = json.loads((ROOT / "docs" / "results" / "web_runtime.json").read_text())
    rows = [f"| runtime | decode one digit | encode one digit | decode {r['batch']:,} | encode {r['batch']:,} "
            "| batch vs Python | same `.kae` bytes |", "|---|---:|---:|---:|---:|---:|---:|"]
    for key, label in WEB_RUNTIMES.items():
        v = r["runtimes"][key]
        label = label.format(threads=v["threads"], s="" if v["threads"] == 1 else "s")
        ratio = (f"{v['decode_batch_ratio_vs_python']:.2f}x / {v['encode_batch_ratio_vs_python']:.2f}x"
                 if "decode_batch_ratio_vs_python" in v else "")
        agreement = v.get("agreement", {})
        same = f"{agreement['same_kae_bytes']:,} of {agreement['files']:,}" if agreement else ""
        rows.append(f"| {label} | {v['decode_one_ms']:.2f} ms | {v['encode_one_ms']:.2f} ms "
                    f"| {v['decode_batch_images_per_s']:,.0f} images/s | {v['encode_batch_images_per_s']:,.0f} images/s "
                    f"| {ratio} | {same} |")
    page, m = r["page"], r["machine"]
    rows += ["", f"The page starts (navigation to ready: the wasm runtime, the model's files, its sessions) in "
             f"{page['startup_ms_median']:.0f} ms (median of {len(page['startup_ms'])}) and transfers "
             f"{page['bytes'] / 1e6:.1f} MB in {page['requests']} files ({page['gzip_bytes'] / 1e6:.1f} MB "
             f"gzipped), most of it onnxruntime-web's wasm binary. Batch figures are per {r['batch']:,} "
             f"{r['model']} digits; \"vs Python\" is decode / encode throughput against the first row.", "",
             f"Machine: {m['cpus']} CPUs, Python {m['python']}, onnxruntime {m['onnxruntime']}, Node "
             f"{m['node'].lstrip('v')}, Chromium {m['chromium']}, onnxruntime-web {m['onnxruntime_web']}; "
             f"command: `python benchmarks/web_runtime.py`. Goals checked by the script: "
             f"{sum(g['pass'] for g in r['goals'])} of {len(r['goals'])} met."]
    return "\n".join(rows) + "\n"


GENERATORS = {f.__name__.replace("_", "-"): f for f in
              (levels_mnist, levels_fashion, levels_short, plain_models, runtime_mb, runtime_table, web_table, bd_table,
               bd_summary)}


def render(text: str) -> str:
    def one(m: re.Match) -> str:
        name = m.group(2)
        if name not in GENERATORS:
            raise SystemExit(f"unknown generated block {name!r}")
        return m.group(1) + GENERATORS[name]() + m.group(4)
    return BLOCK.sub(one, text)


def expected() -> dict[str, str]:
    pages = {p: render((ROOT / p).read_text()) for p in PAGES if p != "docs/cli.md"}
    pages["docs/cli.md"] = cli_page()
    return pages


def stale() -> list[str]:
    return [p for p, text in expected().items()
            if not (ROOT / p).exists() or (ROOT / p).read_text() != text]


def main() -> None:
    if sys.argv[1:] == ["--check"]:
        bad = stale()
        for p in bad:
            print(f"{p}: differs from its sources; run python docs/gen.py")
        raise SystemExit(1 if bad else 0)
    for p, text in expected().items():
        if not (ROOT / p).exists() or (ROOT / p).read_text() != text:
            (ROOT / p).write_text(text)
            print(f"wrote {p}")


if __name__ == "__main__":
    main()
