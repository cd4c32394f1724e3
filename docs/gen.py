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
import math
import re
import statistics
import sys
from collections import Counter
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


def pack_speed() -> str:
    # benchmarks/pack_speed.py on the quick-start shape, and --tiny (the Python cost of a step)
    lines = ["| model | runs | one by one | packed | packed, a step per optimizer | packed / one by one "
             "| largest relative difference in final loss |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, label in (("pack_speed.json", "quick-start shape, batch 64"),
                        ("pack_speed_tiny.json", "a few hundred parameters, batch 4")):
        r = json.loads((ROOT / "docs" / "results" / name).read_text())
        cells = [f"{r[mode]['total_samples_per_s']:,.0f}/s" for mode in ("one_by_one", "packed", "packed_member_steps")]
        lines.append(f"| {label} | {r['runs']} | {' | '.join(cells)} | {r['speedup_total']:.2f}x "
                     f"| {r['max_rel_val_loss_diff']:.1e} |")
    return "\n".join(lines) + "\n"


# ---- the study, row by row (docs/study.md) ----------------------------------------------------------

STUDY_GRIDS = {"grid1": "experiments/cnn-kae-01.yml", "grid2": "experiments/cnn-kae-02.yml"}
RELATIVE_FLAG = 0.10  # grid 2: one trial on each side, so no spread to judge a difference by
MACHINES = {"cpu": "on the development machine (2 CPU cores, two runs at once)"}
DIFFERS = "**differs**"


def _study_rows(grid: str) -> tuple[list[str], list[tuple[dict, list[float], list[dict]]], int]:
    """The experiment's matrix keys (trial left out); in matrix order, each study row with the final
    validation losses of our finished runs of its settings under results/ (what `kaec results --runs-dir
    results` reads) and the summaries of those and of the diverged ones; and how many runs the experiment has."""
    from kaecompress.experiments import runs
    from kaecompress.experiments.config import load_experiment

    experiment = load_experiment(ROOT / STUDY_GRIDS[grid])
    keys = [k for k in experiment.matrix if k != "trial"]
    ours: dict[tuple, list[dict]] = {tuple(cfg.matrix[k] for k in keys): [] for cfg in experiment.runs}
    for cfg in experiment.runs:
        folder = ROOT / "results" / cfg.run_folder
        if runs.run_status(folder, cfg.recipe()) in ("finished", "diverged"):
            ours[tuple(cfg.matrix[k] for k in keys)].append(runs.read_json(folder / runs.SUMMARY))
    study_rows = json.loads((ROOT / "docs" / "results" / "study-cnn-kae.json").read_text())[grid]
    study = {tuple(row[k] for k in keys): row for row in study_rows}
    rows = [(study[k], [s["final_val_loss"] for s in summaries if s["status"] == "finished"], summaries)
            for k, summaries in ours.items()]
    return keys, rows, len(experiment.runs)


STUDY_TRIALS = 4


def grid1_flag(losses: list[float], study: float, study_std: float) -> str:
    """Flag a gap wider than 2 sqrt(std_ours^2 + std_study^2) (sample stds, the spread of single trials); one
    trial of ours has no spread. The gap in standard errors of the difference of the means follows."""
    if len(losses) < 2:
        return "1 trial" if losses else ""
    gap, std = abs(statistics.mean(losses) - study), statistics.stdev(losses)
    errors = gap / math.sqrt(std ** 2 / len(losses) + study_std ** 2 / STUDY_TRIALS)
    return f"{DIFFERS if gap > 2 * math.hypot(std, study_std) else 'within 2 std'}, {errors:.1f} SE"


def grid2_flag(losses: list[float], study: float) -> str:
    if not losses:
        return ""
    return DIFFERS if abs(statistics.mean(losses) - study) > RELATIVE_FLAG * study else "agrees"


def _ours(losses: list[float], diverged: int = 0) -> str:
    if not losses:
        return f"{diverged} diverged" if diverged else "not trained yet"
    spread = f" +- {statistics.stdev(losses):.6f}" if len(losses) > 1 else ""
    return f"{statistics.mean(losses):.6f}{spread} ({len(losses)}{f', {diverged} diverged' if diverged else ''})"


def _throughput(summaries: list[dict]) -> str:
    """Mean samples/s of finished runs, per device when they trained on several."""
    by_device: dict[str, list[float]] = {}
    for s in summaries:
        if s["status"] == "finished":
            by_device.setdefault(s["device"], []).append(s["throughput"])
    if len(by_device) == 1:
        return f"{statistics.mean(next(iter(by_device.values()))):,.0f}/s"
    return "; ".join(f"{statistics.mean(v):,.0f}/s {device}" for device, v in by_device.items())


def _setting(value) -> str:
    return "none" if value is None else str(value)  # grid 1's empty outact cell: no output activation


def _study_table(grid: str, study_loss, flag) -> tuple[str, list[str]]:
    """A grid's table, ours beside the study's row by row, with a sentence on what is in; and each row's flag."""
    keys, rows, n_runs = _study_rows(grid)
    shown = [k for k in keys if len({repr(study[k]) for study, _, _ in rows}) > 1]
    lines = [f"| {' | '.join(shown)} | study | ours (trials) | ours - study | flag | samples/s: study | ours |",
             "|" + "---|" * len(shown) + "---:|---:|---:|---|---:|---:|"]
    flags = []
    for study, losses, summaries in rows:
        flags.append(flag(losses, study))
        gap = ""
        if losses:
            d = statistics.mean(losses) - study["loss"]
            gap = f"{d:+.6f} ({d / study['loss']:+.1%})"
        cells = [*(_setting(study[k]) for k in shown), study_loss(study), _ours(losses, len(summaries) - len(losses)),
                 gap, flags[-1], f"{study['throughput']:,}/s", _throughput(summaries)]
        lines.append(f"| {' | '.join(cells)} |")
    machines = Counter((s["device"], s["threads"]) for _, _, summaries in rows for s in summaries)
    where = "; ".join(f"{n} on {device} with {threads} thread{'s' * (threads > 1)} per run"
                      + (f", {MACHINES[device]}" if device in MACHINES else "")
                      for (device, threads), n in machines.items())
    constant = ", ".join(f"{k} {_setting(rows[0][0][k])}" for k in keys if k not in shown)
    done = sum(1 for _, _, summaries in rows if summaries)
    diverged = sum(len(summaries) - len(losses) for _, losses, summaries in rows)
    lines += ["", f"{done} of the {len(rows)} settings and {sum(len(summaries) for _, _, summaries in rows)} of "
              f"the {n_runs} runs are in" + (f" ({diverged} of them diverged)" if diverged else "")
              + (f": {where}" if where else "") + f". Every row has {constant}."]
    return "\n".join(lines), flags


def study_grid1() -> str:
    table, flags = _study_table("grid1", lambda s: f"{s['loss']:.6f} +- {s['loss_std']:.6f}",
                                lambda losses, s: grid1_flag(losses, s["loss"], s["loss_std"]))
    judged = len(flags) - flags.count("") - flags.count("1 trial")
    flagged = sum(f.startswith(DIFFERS) for f in flags)
    return (f"{table} " + (f"Flagged: {flagged} of the {judged} settings with two or more trials "
                           "of ours" if judged else "No setting has two trials of ours yet to judge")
            + f"; {flags.count('1 trial')} with one trial so far.\n")


def study_grid2() -> str:
    # The study printed this grid's losses to 6 significant digits: shown as it printed them.
    table, flags = _study_table("grid2", lambda s: f"{s['loss']}", lambda losses, s: grid2_flag(losses, s["loss"]))
    trained = len(flags) - flags.count("")
    return (f"{table} Flagged: ours more than {RELATIVE_FLAG:.0%} away from the study's one trial; "
            + (f"{flags.count(DIFFERS)} of the {trained} settings trained.\n" if trained else "none trained yet.\n"))


def study_questions() -> str:
    # The study's two questions on its first grid, each with the other side Linear, at bs 64 and AdamW.
    _, rows, _ = _study_rows("grid1")
    at = {tuple(study[k] for k in ("bs", "opt", "ks", "outact", "enckae", "deckae")): (study, losses)
          for study, losses, _ in rows}
    lines = ["| ks | outact | question | study: KAE / Linear | change | ours: KAE / Linear | change |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for ks, outact in dict.fromkeys((study["ks"], study["outact"]) for study, _, _ in rows):
        for side, orders in (("KAE decoder", ((0, 3), (0, 0))), ("KAE encoder", ((3, 0), (0, 0)))):
            (kae, kae_losses), (linear, linear_losses) = (at[(64, "AdamW", ks, outact, *o)] for o in orders)
            theirs = f"{kae['loss']:.6f} / {linear['loss']:.6f} | {kae['loss'] / linear['loss'] - 1:+.1%}"
            ours = (f"{_ours(kae_losses)} / {_ours(linear_losses)} | " + (
                f"{statistics.mean(kae_losses) / statistics.mean(linear_losses) - 1:+.1%}"
                if kae_losses and linear_losses else "not trained yet"))
            lines.append(f"| {ks} | {_setting(outact)} | {side} | {theirs} | {ours} |")
    lines += ["", ("change: the KAE model's validation loss against the Linear one's (negative: the KAE side "
                   "reconstructs better); ours are means over the trials done (in brackets).")]
    return "\n".join(lines) + "\n"


LABELS = {"ks": "ks", "enckae": "encoder KAE", "deckae": "decoder KAE", "act": "activation", "latact": "latent",
          "outact": "output"}


def _describe(keys, values) -> str:
    return ", ".join(f"{LABELS[k]} {_setting(v)}" for k, v in zip(keys, values))


def _verdict(at: dict, keys: tuple, contrasts: list, scope: str) -> str:
    """Each contrast counted over the pairs of settings in `at` (settings -> (the study's loss, our losses))
    that differ only in it and that we have trained on both sides, the study's count beside ours; then our
    best setting and the study's."""
    lines = []
    for better, other, key, value, base in contrasts:
        i = keys.index(key)
        pairs = [(at[k], at[k[:i] + (base,) + k[i + 1:]]) for k in at if k[i] == value]
        ours = [(a, b) for a, b in pairs if a[1] and b[1]]
        if not ours:
            lines.append(f"- {better[0].upper()}{better[1:]} against {other}: no pair of ours yet (the study: lower "
                         f"in {sum(a[0] < b[0] for a, b in pairs)} of {len(pairs)}).")
            continue
        wins = sum(statistics.mean(a[1]) < statistics.mean(b[1]) for a, b in ours)
        theirs = sum(a[0] < b[0] for a, b in ours)
        lines.append(f"- {better[0].upper()}{better[1:]} against {other}: a lower validation loss in {wins} of the "
                     f"{len(ours)} pairs we trained (the study, on the same pairs: {theirs} of {len(ours)}; on all "
                     f"{len(pairs)}: {sum(a[0] < b[0] for a, b in pairs)}).")
    trained = [(statistics.mean(losses), k, study) for k, (study, losses) in at.items() if losses]
    if trained:
        mean, k, study = min(trained)
        best = min(at.items(), key=lambda item: item[1][0])
        lines.append(f"- Our best setting so far: {_describe(keys, k)}, at {mean:.6f} (the study's figure for it: "
                     f"{study:.6f}); the study's best{scope}: {_describe(keys, best[0])}, at {best[1][0]:.6f}.")
    return "\n".join(lines) + "\n"


def study_verdict() -> str:
    # The study's conclusions on its first grid, over the settings at bs 64 and AdamW.
    _, rows, _ = _study_rows("grid1")
    keys = ("ks", "enckae", "deckae", "outact")
    at = {tuple(study[k] for k in keys): (study["loss"], losses) for study, losses, _ in rows
          if study["bs"] == 64 and study["opt"] == "AdamW"}
    return _verdict(at, keys, [("a KAE decoder", "a Linear one", "deckae", 3, 0),
                               ("a KAE encoder", "a Linear one", "enckae", 3, 0),
                               ("kernel size 7", "kernel size 3", "ks", 7, 3),
                               ("the output sigmoid", "no output activation", "outact", "sigmoid", None)],
                    " at bs 64 and AdamW")


def study_verdict2() -> str:
    # The same count on the second grid: one trial a setting on either side.
    keys, rows, _ = _study_rows("grid2")
    keys = tuple(k for k in keys if k not in ("ch", "ks"))
    at = {tuple(study[k] for k in keys): (study["loss"], losses) for study, losses, _ in rows}
    return _verdict(at, keys, [("a KAE decoder", "a Linear one", "deckae", 3, 0),
                               ("a KAE encoder", "a Linear one", "enckae", 3, 0),
                               ("ReLU inside the network", "no activation there", "act", "relu", "none"),
                               ("a sigmoid inside the network", "no activation there", "act", "sigmoid", "none"),
                               ("a sigmoid on the latent", "none", "latact", "sigmoid", "none"),
                               ("the output sigmoid", "no output activation", "outact", "sigmoid", "none")], "")


GENERATORS = {f.__name__.replace("_", "-"): f for f in
              (levels_mnist, levels_fashion, levels_short, plain_models, runtime_mb, runtime_table, web_table, bd_table,
               bd_summary, pack_speed, study_grid1, study_grid2, study_questions, study_verdict, study_verdict2)}


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
