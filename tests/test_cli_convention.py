"""One CLI convention, everywhere (docs/cli.md, "Conventions"): checked on the Typer app itself, so a new
option that breaks it fails here. Also: bad options are one line and exit 2 before torch loads, tables keep
their identifying column whole at 80 and 120 columns, and `kaec --help` shows whole sentences."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from conftest import kaec
from kaecompress.cli.main import app

ROOT = Path(__file__).parent.parent
GROUP = typer.main.get_command(app)
COMMANDS = {name: cmd for name, cmd in GROUP.commands.items() if not cmd.hidden}


def _options():
    for name, cmd in COMMANDS.items():
        for p in cmd.params:
            if p.param_type_name == "option" and not p.hidden:
                yield name, p


def _long(p) -> str:
    return next(o for o in p.opts + p.secondary_opts if o.startswith("--"))


def _shorts(p) -> set[str]:
    return {o for o in p.opts + p.secondary_opts if not o.startswith("--")}


def test_a_short_option_means_one_long_option_everywhere():
    meaning: dict[str, set[str]] = {}
    for _, p in _options():
        for s in _shorts(p):
            meaning.setdefault(s, set()).add(_long(p))
    assert {s: longs for s, longs in meaning.items() if len(longs) > 1} == {}
    assert meaning["-q"] == {"--quality"} and meaning["-d"] == {"--dataset"}


def test_a_long_option_with_a_short_one_has_it_in_every_command():
    shorts: dict[str, set[frozenset]] = {}
    for _, p in _options():
        shorts.setdefault(_long(p), set()).add(frozenset(_shorts(p)))
    assert {name: s for name, s in shorts.items() if len(s) > 1} == {}


def test_json_is_a_flag_and_json_files_have_their_own_names():
    for command, p in _options():
        names = p.opts + p.secondary_opts
        if "--json" in names:
            assert p.is_flag, f"kaec {command} --json must be a flag (JSON on stdout)"
        elif any("json" in n for n in names):
            assert set(names) <= {"--json-file", "--json-dir", "--from-json"}, (command, names)
            assert not p.is_flag, (command, names)
    with_file = {c for c, p in _options() if "--json-file" in p.opts}
    assert with_file == {"bench", "rd"}
    assert all(any("--json" in p.opts for p in COMMANDS[c].params) for c in with_file)


def test_format_means_one_thing():
    assert {c for c, p in _options() if "--format" in p.opts} == {"export"}
    assert {c for c, p in _options() if "--container" in p.opts} == {"encode"}
    assert {c for c, p in _options() if "--table-format" in p.opts} == {"results"}


# Options with a fixed set of values, and the library's own list of those values.
def _library_choices() -> dict[tuple[str, str], tuple]:
    from kaecompress.codec.containers import FITS, QUANTS, SUFFIXES
    from kaecompress.codec.domain import DOMAINS
    from kaecompress.codec.images import BACKENDS, DEVICES
    from kaecompress.evaluation.bdrate import METHODS
    from kaecompress.evaluation.rd import CODECS
    from kaecompress.experiments.results import FORMATS as TABLE_FORMATS
    from kaecompress.exporters import FORMATS as ARTEFACTS

    return {("encode", "--fit"): FITS, ("encode", "--quant"): QUANTS,
            ("encode", "--container"): tuple(s.lstrip(".") for s in SUFFIXES),
            ("encode", "--dataset"): tuple(DOMAINS), ("encode", "--backend"): BACKENDS,
            ("encode", "--device"): DEVICES, ("decode", "--backend"): BACKENDS, ("decode", "--device"): DEVICES,
            ("train", "--device"): DEVICES, ("bench", "--provider"): ("cpu", "cuda"),
            ("rd", "--bd-method"): METHODS, ("rd", "--codecs"): tuple(CODECS),
            ("results", "--table-format"): tuple(TABLE_FORMATS), ("export", "--format"): (*ARTEFACTS, "web")}


def test_every_fixed_set_of_values_is_a_choice_that_help_lists():
    found = {}
    for command, p in _options():
        if p.type_descriptor.is_choice:
            found[(command, _long(p))] = tuple(str(getattr(c, "value", c)) for c in p.type_descriptor.choices)
    expected = _library_choices()
    assert set(found) == set(expected)
    for key, choices in expected.items():
        assert sorted(found[key]) == sorted(choices), key
    ctx = typer._click.Context(COMMANDS["encode"], info_name="encode")
    fit = next(p for p in COMMANDS["encode"].params if "--fit" in p.opts)
    assert fit.display_type_rich(ctx) == "<tile|resize>"


def test_help_is_whole_sentences_with_defaults_and_ranges():
    for name, cmd in COMMANDS.items():
        assert cmd.short_help and cmd.short_help.endswith("."), name
        assert cmd.help.startswith(cmd.short_help), name
        ctx = typer._click.Context(cmd, info_name=name)
        for p in cmd.params:
            if p.hidden:
                continue
            assert p.help and p.help.rstrip().endswith((".", ")")), (name, p.name, p.help)
            if p.param_type_name == "option":
                record = p.get_help_record(ctx)[1]
                if p.default not in (None, False, ()) and not p.required:
                    assert "default:" in record, (name, p.name)
                if p.min is not None or p.max is not None:
                    assert "x>=" in record or "<=x" in record or "x<=" in record, (name, p.name)


def test_usage_lines_name_arguments_as_words():
    for name, cmd in COMMANDS.items():
        ctx = typer._click.Context(cmd, info_name=name)
        usage = " ".join(cmd.collect_usage_pieces(ctx))
        assert "{" not in usage and "}" not in usage, usage
        for p in cmd.params:
            if p.param_type_name == "argument":
                assert p.metavar and re.fullmatch(r"[A-Z]+(\.\.\.)?", p.metavar), (name, p.metavar)


def test_quality_help_names_the_shipped_levels():
    from kaecompress.cli import coding
    from kaecompress.zoo import families

    coding.describe_levels()
    assert all(name in coding.QUALITY.help for name in families())
    r = kaec("encode", "--help", env={"COLUMNS": "200"})
    assert "mnist 0-" in r.stdout and "fashion-mnist 0-" in r.stdout


def test_the_command_list_shows_whole_sentences():
    r = kaec("--help", env={"COLUMNS": "80"})
    assert r.returncode == 0
    lines = r.stdout.split("Commands")[1].splitlines()[1:]
    text = " ".join(line.strip("│ ").strip() for line in lines if line.strip("│ ╰─").strip())
    for name, cmd in COMMANDS.items():
        assert f"{name} {cmd.short_help}" in " ".join(text.split()), name


# ---- mistakes: one line naming the option, exit 2, before torch ---------------------------------------------

RUN_MAIN = """
import sys
sys.argv = ["kaec", *sys.argv[1:]]
from kaecompress.cli.main import main
try:
    main()
finally:
    print("torch loaded" if "torch" in sys.modules else "no torch", file=sys.stderr)
"""

EXAMPLE = str(ROOT / "examples" / "mnist-7.png")


@pytest.mark.parametrize("args, option", [
    (["encode", EXAMPLE, "-o", "{tmp}/z.kae", "--fit", "crop"], "--fit"),
    (["encode", EXAMPLE, "-o", "{tmp}/z.kae", "--quant", "int4"], "--quant"),
    (["encode", EXAMPLE, "-o", "{tmp}/out", "--container", "zip"], "--container"),
    (["encode", EXAMPLE, "-o", "{tmp}/z.kae", "-q", "99"], "--quality"),
    (["encode", EXAMPLE, "-o", "{tmp}/z.kae", "-d", "cifar"], "--dataset"),
    (["encode", EXAMPLE, "-o", "{tmp}/z.kae", "--device", "tpu"], "--device"),
    (["encode", EXAMPLE, "-o", "{tmp}/z.kae", "--rdo", "99"], "--rdo"),
    (["decode", "{tmp}/z.kae", "-o", "{tmp}/z.png", "--backend", "tf"], "--backend"),
    (["train", "-c", "experiments/quickstart.yml", "--device", "tpu"], "--device"),
    (["results", "-c", "experiments/small-grid.yml", "-f", "xml"], "--table-format"),
    (["plot", "-c", "experiments/small-grid.yml", "-o", "{tmp}/p.png", "-n", "0"], "--images"),
    (["bench", "--provider", "tpu"], "--provider"),
    (["bench", "--batch-sizes", "1,x"], "--batch-sizes"),
    (["rd", "--bd-method", "linear"], "--bd-method"),
    (["rd", "--codecs", "jpeg,gif"], "--codecs"),
    (["rd", "--json-file", "{tmp}/no/rd.json"], "--json-file"),
    (["export", "mnist-q2", "-o", "{tmp}/x", "--format", "tflite"], "--format"),
    (["export", "mnist-q2", "-o", "{tmp}/x", "--format", "web", "--format", "onnx"], "--format web"),
    (["export", "--verify-only", "{tmp}", "--format", "web"], "--format web"),
    (["export", "{tmp}", "-o", "{tmp}/x", "--format", "web"], "--format web"),
    (["models", "--wide", "--bogus"], "--bogus"),
])
def test_bad_options_are_one_line_and_exit_2_before_torch(tmp_path, args, option):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = subprocess.run([sys.executable, "-c", RUN_MAIN, *args], cwd=ROOT, capture_output=True, text=True,
                       timeout=120, env={**os.environ, "COLUMNS": "80"})
    *lines, torch = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and option in lines[0], r.stderr
    assert torch == "no torch"
    assert not (tmp_path / "z.kae").exists() and not (tmp_path / "x").exists()


def test_old_spellings_still_read_with_a_note(tmp_path):
    from kaecompress.cli.main import _old_spellings

    assert _old_spellings(["bench", "--json", "b.json"]) == ["bench", "--json-file", "b.json"]
    assert _old_spellings(["rd", "--json"]) == ["rd", "--json"]  # the flag of today
    assert _old_spellings(["rd", "-q", "--json", "--images", "3"]) == ["rd", "--quiet", "--json", "--images", "3"]
    assert _old_spellings(["encode", "a.png", "-o", "z", "--format", "npz"])[-2:] == ["--container", "npz"]
    r = kaec("encode", EXAMPLE, "-o", tmp_path / "z", "--format", "npz", "--backend", "onnx")
    assert r.returncode == 0, r.stderr
    assert "--format is now --container" in r.stderr and (tmp_path / "z" / "mnist-7.npz").is_file()


def test_the_study_name_of_the_loss_column_is_ours_with_inputs():
    from kaecompress.experiments.results import Table, loss_column

    assert loss_column({300_000}) == "validation loss (300,000 inputs)"
    table = Table(["matrix_id", "validation loss (300,000 inputs)"], [])
    assert table.column("validation loss (300,000 steps)", "--sort") == "validation loss (300,000 inputs)"


# ---- tables: the identifying column whole at 80 and 120 columns --------------------------------------------

@pytest.mark.parametrize("columns", ["80", "120"])
def test_models_table_keeps_names_whole(columns):
    from kaecompress.zoo import cards

    r = kaec("models", env={"COLUMNS": columns})
    assert r.returncode == 0, r.stderr
    assert max(len(line) for line in r.stdout.splitlines()) <= int(columns)
    names = re.findall(r"^│ (\S+)", r.stdout, re.M)
    assert set(names) == set(cards()) and "…" not in "".join(names)
    if columns == "80":
        assert "--wide shows them" in r.stdout
    wide = kaec("models", "--wide", env={"COLUMNS": columns})
    assert "recipe" in wide.stdout and "experiments/zoo/" in wide.stdout


@pytest.mark.parametrize("columns", ["80", "120"])
def test_train_tables_keep_slugs_whole(tmp_path, columns):
    from kaecompress.experiments.config import load_experiment

    cfg = ROOT / "experiments" / "small-grid.yml"
    r = kaec("train", "-c", cfg, "--runs-dir", tmp_path, "--dry-run", env={"COLUMNS": columns})
    assert r.returncode == 0, r.stderr
    for run in load_experiment(cfg).runs:
        assert f" {run.matrix_slug} " in r.stdout
    assert "…" not in r.stdout


def test_file_tables_keep_paths_whole(tmp_path):
    deep = tmp_path / ("a-rather-long-folder-name-" * 3)
    deep.mkdir()
    src = deep / "digit.png"
    src.write_bytes((ROOT / "examples" / "mnist-7.png").read_bytes())
    r = kaec("encode", src, "-o", deep / "digit.kae", "--backend", "onnx", env={"COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert str(src) in r.stdout.replace("\n", "") or str(src) in r.stdout
    assert "…" not in r.stdout


def _rd_file(path: Path) -> Path:
    def curve(name, kind, rates, psnrs):
        n = len(rates)
        results = {"psnr": psnrs, "ssim": [0.9] * n, "bpp": [r * 8 / 784 for r in rates], "bytes": rates,
                   "payload_bytes": rates, "encoding_time": [1e-4] * n, "decoding_time": [1e-4] * n,
                   "exact_images": [0] * n, "quality": list(range(n))}
        if kind == "model":
            results["model"] = [f"{name}-q{i}" for i in range(n)]
        return {"name": name, "description": name, "kind": kind, "dataset": "mnist", "images": 10,
                "lossless": False, "settings": {}, "results": results}

    objs = [curve("JPEG", "codec", [300.0, 400.0, 500.0, 700.0], [20.0, 23.0, 26.0, 29.0]),
            curve("fashion-mnist-family", "model", [10.0, 15.0, 22.0, 30.0], [18.0, 21.0, 24.0, 27.0])]
    path.write_text(json.dumps(objs))
    return path


@pytest.mark.parametrize("columns", ["80", "120"])
def test_rd_tables_keep_names_whole_and_json_is_a_flag(tmp_path, columns):
    pytest.importorskip("bjontegaard")
    path = _rd_file(tmp_path / "rd.json")
    r = kaec("rd", "--from-json", path, env={"COLUMNS": columns})
    assert r.returncode == 0, r.stderr
    assert "fashion-mnist-family-q3" in r.stdout and "fashion-mnist-family " in r.stdout
    assert max(len(line) for line in r.stdout.splitlines() if "│" in line) <= int(columns)
    r = kaec("rd", "--from-json", path, "--json", "--json-file", tmp_path / "again.json")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed == json.loads((tmp_path / "again.json").read_text())
    assert [c["name"] for c in printed] == ["JPEG", "fashion-mnist-family"]


def test_export_format_web_takes_shipped_names_and_loads_no_torch(tmp_path):
    from kaecompress.errors import KaecError

    web = pytest.importorskip("kaecompress.exporters.web")
    try:
        web.ort_folder()
    except KaecError as e:
        pytest.skip(f"onnxruntime-web is not installed: {e}")
    out = tmp_path / "site"
    r = subprocess.run([sys.executable, "-c", RUN_MAIN, "export", "mnist-q2,fashion-q3", "--format", "web", "-o", out,
                        "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "no torch"
    assert json.loads(r.stdout)["models"] == ["mnist-q2", "fashion-q3"]
    assert (out / "models" / "fashion-q3" / "model.json").is_file()
