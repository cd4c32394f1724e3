"""The JavaScript runtime's public API (web/kae.mjs), its image layer, PNG files and the Node CLI, run under
Node from a web export and compared with the Python library on the same files: the golden .kae files decode
to the same latents and to pixels within one level of `kaec decode --backend onnx`; 1,000 test images per
family encode to the bytes Python writes (at least 99%; the rest round a latent across a tie); the CLI
round-trips the examples and refuses bad input with exit 2 and one line, writing nothing.

The driver tests/javascript/api_driver.mjs runs each job in one Node process; speed figures are printed, not
asserted (pytest -s shows them)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kaecompress.codec import containers
from kaecompress.codec.images import Codec
from kaecompress.runtime.shipped import load_shipped

from .conftest import run_driver

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "data" / "golden"
GOLDEN_FILES = sorted((GOLDEN / "onnx").glob("*.kae")) + sorted((GOLDEN / "shipped").glob("*.kae"))
EXAMPLES = sorted((REPO / "examples").glob("*.png"))
DRIVER = Path(__file__).with_name("api_driver.mjs")
COUNT = 1000  # test images per family


def driver(node: str, job: dict, timeout: int = 900) -> dict:
    return run_driver(node, DRIVER, job, timeout)


def model_of(path: Path) -> str:
    """The shipped model a golden file names (the CLI's own lookup)."""
    from kaecompress.cli.coding import _model_of

    return _model_of(path, path.read_bytes())


@pytest.fixture(scope="module")
def export(web_export, tmp_path_factory) -> Path:
    """The session's web export, or one adding the models golden files were made with that it lacks
    (mnist-q2-v1: conftest's EXPORTED leaves it out)."""
    exported = json.loads((web_export / "models.json").read_text())["models"]
    missing = sorted({model_of(p) for p in GOLDEN_FILES} - set(exported))
    if not missing:
        return web_export
    from kaecompress.exporters.web import write_web_export

    out = tmp_path_factory.mktemp("web-api") / "export"
    write_web_export([*exported, *missing], out)
    return out


_codecs: dict[str, Codec] = {}


def codec(name: str) -> Codec:
    if name not in _codecs:
        _codecs[name] = Codec(load_shipped(name), "onnx")
    return _codecs[name]


def py_read(path: Path, data: bytes | None = None):
    """A .kae file as `kaec decode` reads it: (Codec, Encoded)."""
    from kaecompress.cli.coding import _model_of

    data = path.read_bytes() if data is None else data
    c = codec(_model_of(path, data))
    if data[0] & 0x80:
        return c, c.from_kae(data, str(path))
    return c, containers.read(path, c.latent_dim, (c.height, c.width), c.channels, c.check_model, data=data)


def as_pixels(im: Image.Image) -> np.ndarray:
    """Interleaved 8-bit values as kae.mjs returns them (mode 1 as 0/255)."""
    arr = np.asarray(im)
    return (arr.astype(np.uint8) * 255 if arr.dtype == bool else arr).reshape(-1)


# ---- golden files -------------------------------------------------------------------------------------------

def test_golden_files_decode_as_python(node, export, tmp_path):
    """Every golden .kae decodes in Node to the latents (and v2 integers) the Python library reads and to
    pixels within one level of `kaec decode --backend onnx`, live and as committed; decodeMany (all files, all
    models at once) gives the same pixels as decode one by one."""
    one, many = tmp_path / "one", tmp_path / "many"
    one.mkdir(), many.mkdir()
    files = [str(p) for p in GOLDEN_FILES]
    res = driver(node, {"cmd": "decode", "export": str(export), "files": files, "out": str(one)})
    res_many = driver(node, {"cmd": "decode", "export": str(export), "files": files, "out": str(many), "many": True})
    assert res_many["rows"] == res["rows"]
    identical = total = 0
    worst = 0
    for i, path in enumerate(GOLDEN_FILES):
        row = res["rows"][i]
        assert "error" not in row, row
        c, enc = py_read(path)
        assert row["model"] == c.loaded.name
        assert (row["width"], row["height"], row["fit"]) == (enc.width, enc.height, enc.fit), path.name
        latents = np.fromfile(one / f"{i}.latents", np.float32)
        assert np.array_equal(latents, enc.latents.reshape(-1)), f"{path.name}: latents differ from Python's"
        if path.read_bytes()[0] & 0x80:
            assert row["version"] == 2
            ints = np.fromfile(one / f"{i}.integers", np.int32)
            assert np.array_equal(ints, enc.latents.reshape(-1).astype(np.int64)), path.name
        else:
            assert row["version"] == 1 and not (one / f"{i}.integers").exists()
        im = c.decompress(enc)
        assert row["mode"] == im.mode, path.name
        want = as_pixels(im)
        got = np.fromfile(one / f"{i}.pixels", np.uint8)
        assert got.shape == want.shape, path.name
        diff = np.abs(got.astype(int) - want.astype(int))
        worst = max(worst, int(diff.max()))
        assert diff.max() <= 1, f"{path.name}: pixels differ from the Python onnx decode by up to {diff.max()}"
        identical += int((diff == 0).sum())
        total += diff.size
        committed = path.with_name(f"{path.stem}-decoded.png")
        if committed.exists():
            ref = as_pixels(Image.open(committed))
            assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1, f"{path.name}: vs {committed.name}"
        assert np.array_equal(np.fromfile(many / f"{i}.pixels", np.uint8), got), f"{path.name}: decodeMany differs"
    print(f"\n{len(GOLDEN_FILES)} golden files: latents identical; {identical:,} of {total:,} pixels identical to "
          f"Python's onnx decode ({100 * identical / total:.3f}%), the rest within {worst} level")
    assert identical >= 0.99 * total


# ---- 1,000 test images per family ---------------------------------------------------------------------------

@pytest.mark.parametrize("model,dataset", [("mnist-q2", "mnist"), ("fashion-q3", "fashion-mnist")])
def test_test_images_encode_to_python_bytes(node, export, mnist_root, tmp_path, model, dataset):
    """1,000 test images encoded in JS (encodeMany) give the bytes of Python's onnx Codec for at least 99%;
    every JS file decodes in Python; JS decodeMany of them gives pixels within one level of Python's. Speeds of
    both are printed."""
    from kaecompress.experiments.data import load_array

    digits = np.ascontiguousarray(load_array(dataset, False, mnist_root)[:COUNT, 0])
    stack = tmp_path / "digits.u8"
    digits.tofile(stack)
    res = driver(node, {"cmd": "stack", "export": str(export), "model": model, "file": str(stack), "count": COUNT,
                        "width": 28, "height": 28, "out": str(tmp_path / "js.kae"), "repeat": 2})
    blob = (tmp_path / "js.kae").read_bytes()
    ends = np.cumsum(res["lengths"])
    js_files = [blob[a:b] for a, b in zip(np.concatenate([[0], ends[:-1]]), ends)]
    assert res["sameAsBatch"], "encode()/decode() one at a time differ from encodeMany/decodeMany"

    c = codec(model)
    images = [Image.fromarray(d) for d in digits]
    best_enc = best_dec = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        py_files = c.to_kae_many(c.compress_many(images))
        best_enc = min(best_enc, time.perf_counter() - t)
        t = time.perf_counter()
        py_images = c.decompress_many(c.from_kae_many(py_files, [f"py-{i}" for i in range(COUNT)]))
        best_dec = min(best_dec, time.perf_counter() - t)
    same = sum(a == b for a, b in zip(js_files, py_files))
    # every JS file decodes in Python; where the bytes differ, only latents next to a tie differ, by one
    back = c.from_kae_many(js_files, [f"js-{i}" for i in range(COUNT)])
    py_back = c.from_kae_many(py_files, [f"py-{i}" for i in range(COUNT)])
    steps = max(int(np.abs(a.latents - b.latents).max()) for a, b in zip(back, py_back))
    js_pixels = np.fromfile(tmp_path / "js.kae.pixels", np.uint8).reshape(COUNT, 28, 28)
    py_pixels = np.stack([np.asarray(im) for im in py_images])
    same_files = [i for i in range(COUNT) if js_files[i] == py_files[i]]
    diff = np.abs(js_pixels[same_files].astype(int) - py_pixels[same_files].astype(int))
    print(f"\n{model}: {same} of {COUNT} JS files byte-identical to Python's onnx Codec "
          f"(the others differ by at most {steps} in a latent); decoded pixels of the identical files: "
          f"{int((diff == 0).sum()):,} of {diff.size:,} identical, max difference {int(diff.max())}\n"
          f"  speed, {COUNT} digits: Node encodeMany {COUNT / res['encodeSeconds']:,.0f} images/s, decodeMany "
          f"{COUNT / res['decodeSeconds']:,.0f} images/s; one at a time encode {1000 * res['encodeOne']:.2f} ms, "
          f"decode {1000 * res['decodeOne']:.2f} ms; Python onnx Codec encode {COUNT / best_enc:,.0f} images/s, "
          f"decode {COUNT / best_dec:,.0f} images/s; Node open() {res['opened']:.2f} s")
    assert same >= 0.99 * COUNT, f"only {same} of {COUNT} files byte-identical"
    assert steps <= 1
    assert diff.max() <= 1


# ---- colour, odd sizes, resize, version 1 -------------------------------------------------------------------

def _images() -> dict[str, Image.Image]:
    rng = np.random.default_rng(29)
    rgb = Image.open(GOLDEN / "onnx" / "rgb-70x50.png").convert("RGB")
    digit = Image.open(REPO / "examples" / "mnist-7.png")
    return {
        "rgb-70x50": rgb,
        "la-33x41": Image.fromarray(np.stack([np.asarray(rgb.convert("L").resize((33, 41))),
                                              rng.integers(0, 256, (41, 33), dtype=np.uint8)], -1), "LA"),
        "rgba-29x57": Image.fromarray(np.concatenate([np.asarray(rgb.resize((29, 57))),
                                                      rng.integers(0, 256, (57, 29, 1), dtype=np.uint8)], -1), "RGBA"),
        "one-20x20": digit.resize((20, 20)).convert("1", dither=Image.Dither.NONE),
        "l-1x1": Image.fromarray(np.array([[77]], np.uint8)),
        "l-100x3": digit.resize((100, 3)),
        "grid": Image.open(REPO / "examples" / "mnist-grid.png"),
    }


# model, quant (version 1 only), fits
ODD_CASES = [("mnist-q3", "uint8"), ("mnist-q6", "uint8"), ("fashion-q9", "uint8"), ("mnist-kae-dec3", "uint8"),
             ("mnist-kae-dec3", "float16")]


@pytest.mark.parametrize("model,quant", ODD_CASES)
def test_colour_odd_size_and_resize_images(node, export, tmp_path, model, quant):
    """Images of every mode, odd sizes and both fits encode in JS to files that decode in Python to Python's
    latents, but for a latent rounded the other way at a tie (version 2: one integer; version 1: one code of
    the file's uint8 scale, or one float16 step); version 2 files are Python's bytes but for such ties (version
    1 files store float32 offsets and scales, which the wasm build's float rounding may change in the last
    bit). Decoding them in JS gives pixels within one level of Python's."""
    images = _images()
    cases = [(name, fit) for name in images for fit in ("tile", "resize")]
    inputs = []
    for i, (name, fit) in enumerate(cases):
        im = images[name]
        f = tmp_path / f"{i}.raw"
        as_pixels(im).tofile(f)
        inputs.append({"file": str(f), "width": im.width, "height": im.height, "mode": im.mode, "fit": fit})
    out = tmp_path / "enc"
    out.mkdir()
    res = driver(node, {"cmd": "encode", "export": str(export), "model": model, "out": str(out), "inputs": inputs,
                        "quant": quant, "force": True})  # colour and odd images: outside the models' domains
    c = codec(model)
    same = 0
    js_files = []
    for i, (name, fit) in enumerate(cases):
        assert "error" not in res["rows"][i], (name, fit, res["rows"][i])
        enc = c.compress(images[name], fit)
        py = c.to_kae(enc) if c.rate_model else containers.to_kae(enc, quant)
        js = (out / f"{i}.kae").read_bytes()
        js_files.append(out / f"{i}.kae")
        if js == py:
            same += 1
            continue
        back = py_read(out / f"{i}.kae", js)[1]
        assert back.latents.shape == enc.latents.shape and (back.width, back.height, back.mode, back.fit) == \
            (enc.width, enc.height, enc.mode, enc.fit), (name, fit)
        want = np.rint(enc.latents) if c.rate_model else containers.from_kae(py, "py")[0].latents
        if c.rate_model:  # a latent rounded the other way at a tie
            step = 1.0
        elif quant == "uint8":  # one code of the file's affine scale
            step = (float(enc.latents.max()) - float(enc.latents.min())) / 255 * 1.001 + 1e-6
        else:  # one float16 step
            step = float(np.abs(enc.latents).max()) * 2.0 ** -10
        diff = np.abs(back.latents - want)
        assert diff.max() <= step, f"{name} {fit}: latents differ by {diff.max()} from Python's"
    dec = tmp_path / "dec"
    dec.mkdir()
    res = driver(node, {"cmd": "decode", "export": str(export), "files": [str(p) for p in js_files], "out": str(dec),
                        "many": True})
    worst = 0
    for i, path in enumerate(js_files):
        c2, enc = py_read(path)
        want = as_pixels(c2.decompress(enc))
        got = np.fromfile(dec / f"{i}.pixels", np.uint8)
        assert res["rows"][i]["mode"] == c2.decompress(enc).mode
        worst = max(worst, int(np.abs(got.astype(int) - want.astype(int)).max()))
    print(f"\n{model} ({quant}): {same} of {len(cases)} colour/odd/resize files byte-identical; decoded within {worst}")
    assert worst <= 1
    if c.rate_model:
        assert same >= len(cases) - 2


# ---- the image layer alone ------------------------------------------------------------------------------------

def test_resize_matches_pillow(node, export, tmp_path):
    """images.resizeBilinear equals Pillow's BILINEAR resize of float ("F") images exactly, for shrinking and
    enlarging either side (both orders of Pillow's two passes), NaN and values outside [0, 1] included."""
    rng = np.random.default_rng(5)
    cases = [[28, 28, 70, 50], [28, 28, 300, 200], [70, 50, 28, 28], [57, 91, 28, 28], [28, 28, 29, 27],
             [1, 1, 28, 28], [28, 28, 1, 1], [1000, 3, 28, 28], [3, 1000, 28, 28]]
    cases += [[int(v) for v in rng.integers(1, 130, 4)] for _ in range(150)]
    data = [(rng.standard_normal((h, w)) * 0.7 + 0.5).astype(np.float32) for w, h, _, _ in cases]
    data[0][3, 4] = np.nan
    np.concatenate([d.ravel() for d in data]).tofile(tmp_path / "in.f32")
    driver(node, {"cmd": "resize", "export": str(export), "cases": cases, "file": str(tmp_path / "in.f32"),
                  "out": str(tmp_path / "out.f32")})
    out = np.fromfile(tmp_path / "out.f32", np.float32)
    at = 0
    for (w, h, ow, oh), d in zip(cases, data):
        js = out[at:at + ow * oh].reshape(oh, ow)
        at += ow * oh
        want = np.asarray(Image.fromarray(d, "F").resize((ow, oh), Image.Resampling.BILINEAR))
        assert np.array_equal(js, want, equal_nan=True), f"{w}x{h} -> {ow}x{oh}: differs from Pillow"
    assert at == out.size


def test_8bit_conversion_matches_python(node, export, tmp_path):
    """images.to8bit is images._to_8bit: round(v * 255) in float32 with halves to even, NaN as 0, infinities
    and out-of-range values clipped."""
    from kaecompress.codec.images import _to_8bit

    rng = np.random.default_rng(8)
    halves = (np.arange(256, dtype=np.float32) + np.float32(0.5)) / np.float32(255)  # v * 255 lands on k + 0.5
    values = np.concatenate([halves, np.nextafter(halves, np.float32(0)), np.nextafter(halves, np.float32(2)),
                             rng.normal(0.5, 0.6, 5000).astype(np.float32),
                             np.array([np.nan, np.inf, -np.inf, -0.0, 3e38, -3e38, 1.0, 0.0], np.float32)])
    assert (np.float32(255) * halves % 1 == 0.5).sum() > 100  # the ties this checks are there
    values.tofile(tmp_path / "v.f32")
    driver(node, {"cmd": "to8bit", "export": str(export), "file": str(tmp_path / "v.f32"), "out": str(tmp_path / "o")})
    want = np.empty(values.size, np.uint8)
    _to_8bit(values.copy(), want)
    assert np.array_equal(np.fromfile(tmp_path / "o", np.uint8), want)


def _png_cases(folder: Path) -> dict[str, Path]:
    import struct
    import zlib

    rng = np.random.default_rng(3)

    def raw_png(name, w, h, depth, ctype, rows, filters=None):
        def chunk(t, d):
            return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
        filters = filters or [int(rng.integers(0, 5)) for _ in rows]  # the data read as if filtered so
        data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"".join(bytes([f]) + r for f, r in zip(filters, rows))))
                + chunk(b"IEND", b""))
        (folder / name).write_bytes(data)

    def save(name, im, **kw):
        im.save(folder / name, **kw)

    def u8(*shape):
        return rng.integers(0, 256, shape, dtype=np.uint8)

    save("l.png", Image.fromarray(u8(13, 17)))
    save("la.png", Image.fromarray(u8(13, 17, 2), "LA"))
    save("rgb.png", Image.fromarray(u8(13, 17, 3)))
    save("rgba.png", Image.fromarray(u8(13, 17, 4)))
    save("one.png", Image.fromarray(u8(13, 17)).convert("1"))
    save("p4.png", Image.fromarray(u8(13, 17, 3)).quantize(16), bits=4)
    save("p8.png", Image.fromarray(u8(13, 17, 3)).quantize(200))
    save("ptrns.png", Image.fromarray(u8(13, 17, 3)).quantize(50), transparency=bytes(range(0, 250, 10)))
    save("i16.png", Image.fromarray(rng.integers(0, 65536, (13, 17)).astype(np.uint16)))
    # filtered rows (random filter types) and the depths Pillow does not write
    raw_png("rgb16.png", 9, 5, 16, 2, [rng.integers(0, 65536, 27).astype(">u2").tobytes() for _ in range(5)])
    raw_png("la16.png", 9, 5, 16, 4, [rng.integers(0, 65536, 18).astype(">u2").tobytes() for _ in range(5)])
    raw_png("rgba16.png", 9, 5, 16, 6, [rng.integers(0, 65536, 36).astype(">u2").tobytes() for _ in range(5)])
    raw_png("g2.png", 9, 5, 2, 0, [u8(3).tobytes() for _ in range(5)])
    raw_png("g4.png", 9, 5, 4, 0, [u8(5).tobytes() for _ in range(5)])
    raw_png("rgb8f.png", 9, 5, 8, 2, [u8(27).tobytes() for _ in range(5)])
    # pixels of 0..3, Paeth-filtered: its predictor often ties between neighbours there
    def paeth_rows(img):
        rows, prev = [], np.zeros(img.shape[1], int)
        for row in img.astype(int):
            a, c = np.concatenate([[0], row[:-1]]), np.concatenate([[0], prev[:-1]])
            p = a + prev - c
            pa, pb, pc = abs(p - a), abs(p - prev), abs(p - c)
            pred = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, prev, c))
            rows.append(((row - pred) % 256).astype(np.uint8).tobytes())
            prev = row
        return rows
    raw_png("paeth.png", 40, 30, 8, 0, paeth_rows(u8(30, 40) % 4), filters=[4] * 30)
    raw_png("avg-sub-up.png", 40, 30, 8, 4, [u8(80).clip(0, 5).tobytes() for _ in range(30)], filters=[1, 2, 3] * 10)
    return {p.name: p for p in sorted(folder.glob("*.png"))}


def test_png_reader_gives_pillows_pixels(node, export, tmp_path):
    """png.mjs reads every kind of PNG to the pixels Pillow gives in the mode the library encodes it in
    (palettes as RGB/RGBA, 16-bit grey as I;16, 16-bit grey+alpha as RGBA, 1-bit grey as mode 1); interlaced,
    truncated and non-PNG files are refused naming the file."""
    from kaecompress.codec.images import working_mode

    files = _png_cases(tmp_path)
    bad = {"interlaced.png": None, "truncated.png": None, "text.png": None}
    (tmp_path / "truncated.png").write_bytes(files["rgb.png"].read_bytes()[:60])
    (tmp_path / "text.png").write_bytes(b"not an image\n")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "interlaced.png")
    data = bytearray((tmp_path / "interlaced.png").read_bytes())
    data[28] = 1  # the interlace byte of IHDR
    import zlib
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    (tmp_path / "interlaced.png").write_bytes(bytes(data))
    names = [*files, *bad]
    out = tmp_path / "out"
    out.mkdir()
    res = driver(node, {"cmd": "png", "export": str(export), "files": [str(tmp_path / n) for n in names],
                        "out": str(out)})
    for i, name in enumerate(names):
        row = res["rows"][i]
        if name in bad:
            assert row.get("name") == "KaeError" and str(tmp_path / name) in row["error"], (name, row)
            continue
        im = Image.open(tmp_path / name)
        ref = im.convert(working_mode(im)) if im.mode == "P" else im
        expected_mode = ref.mode
        assert row["mode"] == expected_mode, (name, row)
        want = np.asarray(ref)
        if want.dtype == bool:
            want = want.astype(np.uint8) * 255
        got = np.fromfile(out / f"{i}.raw", np.uint16 if row["mode"] == "I;16" else np.uint8)
        assert np.array_equal(got, want.reshape(-1)), name


def test_plain_js_sha256(node, export, tmp_path):
    """lib/sha256.mjs's plain-JS SHA-256 (used where crypto.subtle is missing: a page served over plain http
    from another host) gives hashlib's digests, on padding edge lengths and on the export's own files."""
    import hashlib

    rng = np.random.default_rng(2)
    files = []
    for n in (0, 1, 55, 56, 63, 64, 65, 119, 120, 1000, 65537):
        files.append(tmp_path / f"{n}.bin")
        files[-1].write_bytes(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
    files += sorted((export / "models" / "mnist-q2").iterdir())
    res = driver(node, {"cmd": "sha256", "export": str(export), "files": [str(f) for f in files]})
    assert res["digests"] == [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]


# ---- the Node CLI ---------------------------------------------------------------------------------------------

def cli(node: str, export: Path, *args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(export / "kae-node.mjs"), *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=300, check=False)


def kaec(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kaecompress.cli.main", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, check=False)


def test_cli_round_trip_matches_kaec(node, export, tmp_path):
    """`kae-node encode` of examples/*.png writes kaec's bytes (--backend onnx, the export's default model);
    `kae-node decode` of them writes PNGs within one level of kaec's; a single file to a named output too."""
    r = cli(node, export, "encode", *EXAMPLES, "-o", tmp_path / "js", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = kaec("encode", *EXAMPLES, "-o", tmp_path / "py", "--backend", "onnx", "--model", "mnist-q2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for p in EXAMPLES:
        assert (tmp_path / "js" / f"{p.stem}.kae").read_bytes() == (tmp_path / "py" / f"{p.stem}.kae").read_bytes()
    r = cli(node, export, "decode", tmp_path / "js", "-o", tmp_path / "jsdec", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = kaec("decode", tmp_path / "js", "-o", tmp_path / "pydec", "--backend", "onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for p in EXAMPLES:
        js, py = (Image.open(tmp_path / d / f"{p.stem}.png") for d in ("jsdec", "pydec"))
        assert js.mode == py.mode and js.size == py.size
        assert np.abs(np.asarray(js, int) - np.asarray(py, int)).max() <= 1
    # one file to a named output, a v1 model and a colour image, mode 1 written as Pillow writes it
    rgb = GOLDEN / "onnx" / "rgb-70x50.png"
    r = cli(node, export, "encode", rgb, "-o", tmp_path / "c.kae", "--model", "mnist-kae-dec3", "--force",
            cwd=tmp_path)  # a colour photograph: outside the model's domain
    assert r.returncode == 0, r.stderr
    r = cli(node, export, "decode", tmp_path / "c.kae", "-o", tmp_path / "c.png", cwd=tmp_path)
    assert r.returncode == 0 and Image.open(tmp_path / "c.png").size == (70, 50), r.stderr
    Image.open(EXAMPLES[0]).convert("1", dither=Image.Dither.NONE).save(tmp_path / "one.png")
    r = cli(node, export, "encode", tmp_path / "one.png", "-o", tmp_path / "one.kae", "--model", "mnist-q6",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = cli(node, export, "decode", tmp_path / "one.kae", "-o", tmp_path / "one-js.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    r = kaec("decode", tmp_path / "one.kae", "-o", tmp_path / "one-py.png", "--backend", "onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    js, py = Image.open(tmp_path / "one-js.png"), Image.open(tmp_path / "one-py.png")
    assert js.mode == py.mode == "1"
    assert (np.asarray(js) != np.asarray(py)).mean() < 0.01


def test_cli_refusals(node, export, tmp_path):
    """Exit 2 and one line `kae-node: error: FILE: why` for a truncated .kae, a missing file, a non-PNG
    input, a file of a model the export lacks, a bad option; nothing written, also when only one of several
    inputs is bad."""
    good = GOLDEN / "onnx" / "mnist-q3-0.kae"
    (tmp_path / "truncated.kae").write_bytes(good.read_bytes()[:-3])
    (tmp_path / "text.png").write_bytes(b"not an image\n")
    other = bytearray((GOLDEN / "onnx" / "mnist-q2-0.kae").read_bytes())
    other[0] = 0x80 | 4  # mnist-q4's codec id: shipped, but not in the export
    (tmp_path / "other.kae").write_bytes(bytes(other))
    out = tmp_path / "out"
    out.mkdir()
    cases = [
        (("decode", tmp_path / "truncated.kae", "-o", out / "a.png"), "truncated.kae", "checksum"),
        (("decode", tmp_path / "missing.kae", "-o", out / "a.png"), "missing.kae", "no such file"),
        (("encode", tmp_path / "text.png", "-o", out / "a.kae"), "text.png", "unreadable image"),
        (("decode", tmp_path / "other.kae", "-o", out / "a.png"), "other.kae", "codec id 4"),
        (("decode", good, tmp_path / "truncated.kae", "-o", out / "several"), "truncated.kae", "checksum"),
        (("encode", EXAMPLES[0], tmp_path / "text.png", "-o", out / "several"), "text.png", "unreadable image"),
        (("decode", good, "-o", out / "a.jpg"), "a.jpg", "PNG"),
        (("encode", EXAMPLES[0], "-o", out / "a.kae", "--fit", "crop"), "--fit", "tile or resize"),
        (("encode", EXAMPLES[0], "-o", out / "a.kae", "--model", "nope"), "nope", "not a model of this export"),
        (("decode", good, "-o", out / "a.png", "--frobnicate"), "--frobnicate", "no such option"),
    ]
    for args, name, why in cases:
        r = cli(node, export, *args, cwd=tmp_path)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, (args, r.stderr)
        assert len(lines) == 1 and lines[0].startswith("kae-node: error: "), (args, r.stderr)
        assert name in lines[0] and why in lines[0], (args, lines[0])
        assert list(out.iterdir()) == [], (args, list(out.iterdir()))
    # the same inputs through kaec fail too (exit 2), where kaec has the case
    r = kaec("decode", tmp_path / "truncated.kae", "-o", out / "a.png", "--backend", "onnx", cwd=tmp_path)
    assert r.returncode == 2 and "truncated.kae" in r.stderr
    r = cli(node, export, "--help", cwd=tmp_path)
    assert r.returncode == 0 and "decode" in r.stdout and "encode" in r.stdout


def test_api_refuses_what_python_refuses(node, export, tmp_path):
    """decode() refuses damaged files with a KaeError where the Python library refuses them (every
    truncation and a few hundred byte flips of golden files), never returning an image for them."""
    rng = np.random.default_rng(1)
    sources = [GOLDEN / "onnx" / n for n in ("mnist-q2-row.kae", "mnist-q6-rgb-rdo2.kae", "mnist-kae-dec3-rgb.kae",
                                             "fashion-q9-rgb-resize.kae")]
    mutants = []
    for src in sources:
        data = src.read_bytes()
        mutants.append((src, data))  # the file itself: accepted by both, with the same latents
        mutants += [(src, data[:n]) for n in range(0, len(data), max(1, len(data) // 25))]
        for _ in range(60):
            m = bytearray(data)
            m[int(rng.integers(len(m)))] ^= 1 << int(rng.integers(8))
            mutants.append((src, bytes(m)))
    paths = []
    for i, (src, data) in enumerate(mutants):
        p = tmp_path / f"m{i}.kae"
        p.write_bytes(data)
        paths.append(p)
    out = tmp_path / "out"
    out.mkdir()
    res = driver(node, {"cmd": "decode", "export": str(export), "files": [str(p) for p in paths], "out": str(out)})
    agree = accepted = 0
    for i, ((src, data), p) in enumerate(zip(mutants, paths)):
        row = res["rows"][i]
        try:
            c = codec(model_of(src))
            if data and data[0] & 0x80:
                enc = c.from_kae(data, str(p))
            else:
                enc = containers.read(p, c.latent_dim, (c.height, c.width), c.channels, c.check_model, data=data)
            python_ok = True
        except Exception:  # noqa: BLE001 - any refusal counts (KaecError, or a header naming no shipped model)
            python_ok = False
        if python_ok:
            accepted += 1
            assert "error" not in row, (p.name, row)
            assert np.array_equal(np.fromfile(out / f"{i}.latents", np.float32), enc.latents.reshape(-1))
        else:
            assert row.get("name") == "KaeError" and str(p) in row["error"], (p.name, row)
            assert re.fullmatch(r"[^\n]+", row["error"])
        agree += 1
    print(f"\n{agree} files ({accepted} accepted): JS refuses exactly those Python refuses, and reads the others "
          "to Python's latents")
    assert accepted >= len(sources)
