"""The out-of-domain check in JavaScript (web/lib/domain.mjs, run by kae.mjs's encode and kae-node.mjs) against
the Python library's (kaecompress/codec/domain.py, as `kaec encode` runs it), under Node from a web export:

- the first 1,000 test images of each family under mnist-q2 and fashion-q3: none refused, in either language,
  and every statistic's value (bits, border, grey, corner, fill) within 1e-6 of Python's;
- examples/*.png and images made here that Python refuses (photograph-like noise and smooth colour fields,
  one resized to 28x28 and one as a single resized tile, gradients, text on white, a colour photograph with
  alpha, flat grey and white) under codec and plain models:
  the same decision, statistic, threshold, tiles and values, and the refusal line of `kaec encode` with
  `{force: true}` in place of `--force`, for one image and for several;
- kae-node.mjs encode: exit 2 and kaec's one line (nothing written); with --force, kaec's bytes and warnings;
- a model.json without calibration is not checked; a malformed "domain" entry is refused naming the field;
- numbers are written as Python's format writes them (ties to even).

Plain models' z2 reads the encoder's float outputs, which the wasm build rounds a little differently from
native onnxruntime (about 1e-7 relative here); codec models' integers are the same, as their files are."""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from .conftest import run_driver

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
EXAMPLES = sorted((REPO / "examples").glob("*.png"))
DRIVER = Path(__file__).with_name("domain_driver.mjs")
COUNT = 1000  # test images per family
RTOL = 1e-6
# Exported by conftest.EXPORTED: codec models (bits; mnist-q2 and mnist-q6 with a context model) and plain
# ones (z2).
MODELS = ["mnist-q2", "fashion-q3", "mnist-q6", "mnist-kae-dec3", "fashion-kae-dec3"]


def driver(node: str, job: dict, timeout: int = 900) -> dict:
    return run_driver(node, DRIVER, job, timeout)


@functools.cache
def codec(model: str):
    from kaecompress.codec.images import Codec
    from kaecompress.runtime.shipped import load_shipped

    return Codec(load_shipped(model), "onnx")


def python_checks(model: str, images: list, fit: str = "tile") -> tuple[list, list[dict]]:
    """`kaec encode`'s checks of the images (Codec.compress_many with check_domain) and each image's value on
    every statistic of the card (the mean of its highest tile scores), from the same tiles and latents."""
    from kaecompress.codec.domain import domain_scores, top_scores

    c = codec(model)
    c.compress_many(images, fit, check_domain=True)
    checks = list(c.domain_checks)
    values = []
    for im in images:
        planes, _ = c._planes(im, fit)
        tiles = c._tiles(planes)[0].astype(np.float32)
        top = top_scores(domain_scores(tiles, c._encode_tiles(tiles), c.domain, c.tables, c.context))
        values.append({k: float(np.sort(v)[::-1].mean()) for k, v in top.items()})
    return checks, values


def refusal(model: str, names: list[str], force: str = "{force: true}") -> str | None:
    """The line `kaec encode` refuses the images of the last python_checks with (cli/coding.py), `--force`
    replaced by `force`; None when it would not refuse."""
    from kaecompress.cli.coding import _refuse_outside

    from kaecompress.errors import KaecError

    try:
        _refuse_outside(codec(model), [Path(n) for n in names], False)
    except KaecError as e:
        assert str(e).endswith("; --force encodes anyway")
        return str(e).removesuffix("--force encodes anyway") + f"{force} encodes anyway"
    return None


def compare(js: dict, py, values: dict, where: str) -> float:
    """One image's JS check against Python's; returns the largest relative difference of its values."""
    assert js is not None, f"{where}: not checked in JS"
    assert (js["statistic"], js["threshold"], js["tiles"], js["outside"]) == \
        (py.statistic, py.threshold, py.tiles, py.outside), (where, js, py)
    assert set(js["values"]) == set(values), where
    worst = 0.0
    for name, want in values.items():
        got = js["values"][name]
        assert np.isclose(got, want, rtol=RTOL, atol=1e-12), f"{where}: {name} {got} in JS, {want} in Python"
        worst = max(worst, abs(got - want) / max(abs(want), 1e-12))
    assert np.isclose(js["value"], py.value, rtol=RTOL, atol=1e-12), where
    assert js["describe"] == py.describe(), where
    return worst


# ---- images -------------------------------------------------------------------------------------------------

def odd_images() -> dict[str, tuple[Image.Image, str]]:
    """Images unlike either dataset, each with the fit it is encoded with: Python refuses every one of them
    under mnist-q2 and fashion-q3."""
    rng = np.random.default_rng(31)
    photo = Image.open(GOLDEN / "onnx" / "rgb-70x50.png").convert("RGB")
    x = np.mgrid[0:60, 0:80][1]

    def smooth(h, w, channels):  # a photograph-like field: noise blurred by a coarse grid, then upsampled
        coarse = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, channels), dtype=np.uint8)
        return Image.fromarray(coarse.squeeze()).resize((w, h), Image.Resampling.BICUBIC)

    colour = smooth(160, 210, 3)
    text = Image.new("L", (120, 40), 255)
    ImageDraw.Draw(text).text((4, 8), "kaecompress 1234", fill=0, font=ImageFont.load_default())
    return {
        "noise-64x48": (Image.fromarray(rng.integers(0, 256, (48, 64), dtype=np.uint8)), "tile"),
        "noise-rgb-40x30": (Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)), "tile"),
        "smooth-rgb-90x70": (smooth(70, 90, 3), "tile"),
        "smooth-28x28": (smooth(28, 28, 1), "tile"),
        "gradient-80x60": (Image.fromarray((x * 255 / 79).astype(np.uint8)), "tile"),
        "gradient-diagonal-28x28": (Image.fromarray(((np.add.outer(np.arange(28), np.arange(28))) * 255 // 54)
                                                    .astype(np.uint8)), "tile"),
        "text-on-white": (text, "tile"),
        "colour-resized-28x28": (colour.resize((28, 28), Image.Resampling.BILINEAR), "tile"),
        "colour-resize-fit": (colour, "resize"),
        "photo-rgba": (photo.convert("RGBA"), "tile"),
        "flat-grey-28x28": (Image.new("L", (28, 28), 128), "tile"),
        "flat-white-50x50": (Image.new("L", (50, 50), 255), "tile"),
    }


def as_pixels(im: Image.Image) -> np.ndarray:
    arr = np.asarray(im)
    return (arr.astype(np.uint8) * 255 if arr.dtype == bool else arr).reshape(-1)


def inputs(folder: Path, images: list[tuple[Image.Image, str]]) -> list[dict]:
    out = []
    for i, (im, fit) in enumerate(images):
        f = folder / f"in-{i}.raw"
        as_pixels(im).tofile(f)
        out.append({"file": str(f), "width": im.width, "height": im.height, "mode": im.mode, "fit": fit})
    return out


# ---- tests --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model,dataset", [("mnist-q2", "mnist"), ("fashion-q3", "fashion-mnist")])
def test_test_images_are_inside_as_in_python(node, web_export, mnist_root, tmp_path, model, dataset):
    """The first 1,000 test images: encodeMany refuses none (Python none), and each image's check and its
    value on every statistic are Python's."""
    from kaecompress.experiments.data import load_array

    digits = np.ascontiguousarray(load_array(dataset, False, mnist_root)[:COUNT, 0])
    digits.tofile(tmp_path / "digits.u8")
    res = driver(node, {"export": str(web_export), "model": model,
                        "stack": {"file": str(tmp_path / "digits.u8"), "count": COUNT, "width": 28, "height": 28}})
    py_checks, py_values = python_checks(model, [Image.fromarray(d) for d in digits])
    assert not any(c.outside for c in py_checks)
    assert res["many"]["refused"] is None and res["many"]["same"]
    worst = max(compare(js, py, v, f"{model} test image {i}")
                for i, (js, py, v) in enumerate(zip(res["many"]["checks"], py_checks, py_values)))
    nearest = max(c.value / c.threshold for c in py_checks)
    print(f"\n{model}: {COUNT} test images inside in JS and Python, the same statistic furthest out; values within "
          f"{worst:.1e} relative; the nearest to its limit at {100 * nearest:.1f}% of it")


@pytest.mark.parametrize("model", MODELS)
def test_examples_and_odd_images_are_decided_as_in_python(node, web_export, tmp_path, model):
    """examples/*.png (inside) and the odd images (Python refuses each under mnist-q2 and fashion-q3): the same
    decision, statistic, threshold, tiles and values; each image's refusal is `kaec encode`'s line, and so is
    that of all of them at once; with force, the files are Python's for every image."""
    odd = odd_images()
    named = [(p.name, (Image.open(p), "tile")) for p in EXAMPLES] + list(odd.items())
    names = [f"image-{i}" for i in range(len(named))]
    res = driver(node, {"export": str(web_export), "model": model, "inputs": inputs(tmp_path, [x for _, x in named]),
                        "each": True, "out": str(tmp_path)})
    assert res["many"]["same"]
    worst = 0.0
    outside, every = [], []
    for i, (label, (im, fit)) in enumerate(named):
        py_checks, py_values = python_checks(model, [im], fit)
        py, values = py_checks[0], py_values[0]
        every.append(py)
        worst = max(worst, compare(res["many"]["checks"][i], py, values, f"{model} {label}"))
        worst = max(worst, compare(res["each"][i]["check"], py, values, f"{model} {label} alone"))
        assert res["each"][i]["refused"] == refusal(model, [names[i]]), (label, res["each"][i]["refused"])
        if py.outside:
            outside.append(label)
        c = codec(model)
        enc = c.compress(im, fit)
        if c.rate_model:  # forced: the bytes Python writes (a plain model's version 1 file rounds in float32)
            assert (tmp_path / f"{i}.kae").read_bytes() == c.to_kae(enc), f"{model} {label}: forced file differs"
    codec(model).domain_checks = every  # all the images in one `kaec encode` (each with its own fit)
    assert res["many"]["refused"] == refusal(model, names)
    assert res["many"]["refused"].startswith(f"{len(outside)} of {len(named)} images (image-")
    assert not {p.name for p in EXAMPLES} & set(outside), f"{model}: an example refused"
    if model in ("mnist-q2", "fashion-q3"):
        assert set(outside) == set(odd), f"{model}: Python lets {sorted(set(odd) - set(outside))} through"
    print(f"\n{model}: {len(named)} images, {len(outside)} outside in both ({', '.join(outside)}); the same lines; "
          f"values within {worst:.1e} relative")


def test_node_cli_refuses_and_forces_as_kaec(node, web_export, tmp_path):
    """kae-node encode: an image outside the domain, alone or among digits, is refused with exit 2 and kaec's
    line, nothing written; with --force both write the same bytes and the same warnings."""
    odd = odd_images()
    files = []
    for name in ("noise-64x48", "text-on-white", "colour-resized-28x28", "flat-grey-28x28"):
        files.append(tmp_path / f"{name}.png")
        odd[name][0].save(files[-1])
    out = tmp_path / "out"
    out.mkdir()

    def run(cmd: list) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, check=False)

    def node_cli(*args):
        return run([node, str(web_export / "kae-node.mjs"), "encode", *map(str, args)])

    def kaec(*args):
        return run([sys.executable, "-m", "kaecompress.cli.main", "encode", *map(str, args), "--backend", "onnx",
                    "--model", "mnist-q2"])

    for inputs_, target in (([files[0]], out / "a.kae"), ([*EXAMPLES, *files], out / "several")):
        js, py = node_cli(*inputs_, "-o", target), kaec(*inputs_, "-o", target)
        assert js.returncode == 2 and py.returncode == 2, (js.stderr, py.stderr)
        lines = js.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kae-node: error: "), js.stderr
        assert lines[0].removeprefix("kae-node: error: ") == py.stderr.strip().removeprefix("error: "), \
            (lines[0], py.stderr)
        assert "--force encodes anyway" in lines[0] and str(files[0]) in lines[0]
        assert list(out.iterdir()) == []
    js = node_cli(*EXAMPLES, *files, "-o", out / "js", "--force")
    py = kaec(*EXAMPLES, *files, "-o", out / "py", "--force")
    assert js.returncode == 0 and py.returncode == 0, (js.stderr, py.stderr)
    for p in [*EXAMPLES, *files]:
        assert (out / "js" / f"{p.stem}.kae").read_bytes() == (out / "py" / f"{p.stem}.kae").read_bytes(), p.name
    warnings = [line for line in py.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == len(files)
    assert js.stderr.strip().splitlines() == warnings
    print(f"\nkae-node: refused as kaec ({lines[0][:100]}...); --force: {len(files) + len(EXAMPLES)} files, "
          f"kaec's bytes and {len(warnings)} warnings")


def test_uncalibrated_and_malformed_domain_entries(node, web_export, tmp_path):
    """A model.json without a "domain" entry: images are encoded unchecked (checks null, the CLI says so);
    a malformed entry is refused when the export opens, naming the field."""
    site = tmp_path / "site"
    shutil.copytree(web_export, site)
    path = site / "models" / "mnist-q2" / "model.json"
    doc = json.loads(path.read_text())
    noise = odd_images()["noise-64x48"][0]
    noise.save(tmp_path / "noise.png")
    res = driver(node, {"export": str(site), "model": "mnist-q2", "inputs": inputs(tmp_path, [(noise, "tile")])})
    assert res["many"]["refused"] is not None and res["model"]["checksDomain"]
    path.write_text(json.dumps({**doc, "domain": None}))
    res = driver(node, {"export": str(site), "model": "mnist-q2", "inputs": inputs(tmp_path, [(noise, "tile")])})
    assert res["many"] == {"refused": None, "checks": [None], "same": True} and not res["model"]["checksDomain"]
    r = subprocess.run([node, str(site / "kae-node.mjs"), "encode", str(tmp_path / "noise.png"), "-o",
                        str(tmp_path / "n.kae")], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0 and "not checked" in r.stderr and (tmp_path / "n.kae").exists(), r.stderr
    stats = doc["domain"]["statistics"]
    plain = json.loads((site / "models" / "mnist-kae-dec3" / "model.json").read_text())
    bad = {
        "domain": [[], "x", {}, {"statistics": {}}, {"statistics": []}],
        "domain.statistics": [{"statistics": {**stats, "psnr_db": {"threshold": 1}}},
                              {"statistics": {"nope": {"threshold": 1}}}],
        "domain.statistics.border.threshold": [{"statistics": {"border": {"threshold": "1"}}},
                                               {"statistics": {"border": {}}}, {"statistics": {"border": 3}}],
    }
    cases = [({**doc, "domain": entry}, field) for field, entries in bad.items() for entry in entries]
    cases += [({**plain, "domain": {**plain["domain"], "statistics": {"bits": {"threshold": 1}}}}, "domain.statistics"),
              ({**plain, "domain": {**plain["domain"], "mean": plain["domain"]["mean"][:-1]}}, "domain.mean"),
              ({**plain, "domain": {**plain["domain"], "std": [0.0] * len(plain["domain"]["std"])}}, "domain.std"),
              ({**plain, "domain": {k: v for k, v in plain["domain"].items() if k != "mean"}}, "domain.mean"),
              ({**doc, "dataset": 7}, "dataset")]
    script = (f"import {{ modelFromJson }} from '{(site / 'lib' / 'model.mjs').as_uri()}';\n"
              "import fs from 'node:fs';\n"
              "const out = JSON.parse(fs.readFileSync(0, 'utf8')).map((d) => { try { modelFromJson(d); return null; }"
              " catch (e) { return `${e.name}: ${e.message}`; } });\n"
              "console.log(JSON.stringify(out));")
    r = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps([d for d, _ in cases]),
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    for (_, field), message in zip(cases, json.loads(r.stdout)):
        assert message and message.startswith(f"KaeError: model.json: {field}: expected "), (field, message)
        assert "\n" not in message


def test_numbers_are_written_as_python_writes_them(node, web_export):
    """domain.mjs's formatFixed is f"{x:,.{digits}f}": exact ties to even (0.0625 -> 0.062), others nearest,
    thousands separated."""
    rng = np.random.default_rng(4)
    values = [0.0625, 0.125, 0.375, 2.25, 2.675, 0.0005, 1234.5678, 1e6 + 0.05, 0.0, -0.0, -1.25, 62.1298,
              187.0145, 1e21, 3e22, 0.3605, 0.0357, 1 / 3]
    values += [k / 784 for k in range(0, 785, 7)] + [(k + 0.5) / 1000 for k in range(400)]
    values += list(rng.uniform(0, 3000, 300)) + list(rng.exponential(0.05, 200))
    script = (f"import {{ formatFixed }} from '{(web_export / 'lib' / 'domain.mjs').as_uri()}';\n"
              "import fs from 'node:fs';\n"
              "const values = JSON.parse(fs.readFileSync(0, 'utf8'));\n"
              "console.log(JSON.stringify([1, 3].map((d) => values.map((v) => formatFixed(v, d)))));")
    r = subprocess.run([node, "--input-type=module", "-e", script], input=json.dumps([float(v) for v in values]),
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    for digits, texts in zip((1, 3), got):
        for v, text in zip(values, texts):
            assert text == f"{float(v):,.{digits}f}", (v, digits, text)
