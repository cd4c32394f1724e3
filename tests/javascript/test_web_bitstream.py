"""The JavaScript coder (web/lib/bitstream.mjs, rangecoder.mjs, context.mjs, model.mjs) against the Python
library, bit for bit: golden files read to the integers and latents Python reads and write back to their
bytes; random latents (escapes far outside the tables, every shipped codec model, context models included)
give byte-identical files; damaged files are refused exactly where Python refuses them; model.json is
validated. Node runs tests/javascript/bitstream_driver.mjs, one process per batch of operations."""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
import subprocess
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from kaecompress.codec import bitstream, containers
from kaecompress.codec.containers import Encoded
from kaecompress.codec.images import Codec
from kaecompress.codec.rangecoder import IntegerTables
from kaecompress.errors import KaecError

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("bitstream_driver.mjs")
GOLDEN = REPO / "tests" / "data" / "golden"
TILE = (28, 28)


# ---- helpers -------------------------------------------------------------------------------------------

def b64(data) -> str:
    return base64.b64encode(bytes(data)).decode()


def unb64(text: str, dtype=np.uint8) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype)


def run_node(node: str, models: dict, ops: list[dict], timeout: float = 600) -> list[dict]:
    job = json.dumps({"models": models, "ops": ops})
    proc = subprocess.run([node, str(DRIVER)], input=job, capture_output=True, text=True, timeout=timeout,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)["results"]
    assert len(results) == len(ops)
    return results


def golden_model_json(codec_id: int | None) -> dict:
    """model.json of the golden files' test model (tables.npz, the sha256 of expected.json)."""
    expected = json.loads((GOLDEN / "expected.json").read_text())
    with np.load(GOLDEN / "tables.npz") as z:
        tables = {"precision": int(z["precision"][0]), "offsets": z["offsets"].tolist(), "freqs": z["freqs"].tolist()}
    zero = "0" * 64
    return {
        "schema": "kaecompress-web-model", "version": 1, "name": f"golden-{codec_id}", "family": None,
        "quality": None, "codec_id": codec_id, "weights_sha256": expected["weights_sha256"],
        "input_shape": [1, *expected["tile"]], "latent_dim": len(tables["offsets"]),
        "encoder": {"file": "golden.encoder.onnx", "sha256": zero, "input": "images", "output": "latents"},
        "decoder": {"file": "golden.decoder.onnx", "sha256": zero, "input": "latents", "output": "images"},
        "weights": {"file": "golden.safetensors", "sha256": zero},
        "tables": tables, "context": None, "psnr_db": None, "bytes_per_image": None,
    }


def golden_tables() -> IntegerTables:
    with np.load(GOLDEN / "tables.npz") as z:
        return IntegerTables.from_arrays(dict(z))


def golden_codec(codec_id: int | None) -> Codec:
    """A Codec over the golden test model (no networks: only its reading and writing are used)."""
    expected = json.loads((GOLDEN / "expected.json").read_text())
    tables = golden_tables()
    loaded = SimpleNamespace(name=f"golden-{codec_id}", weights_sha256=expected["weights_sha256"],
                             card={"codec_id": codec_id}, config={}, dataset="mnist", lmbda=None,
                             shape=(1, *expected["tile"]), latent_dim=tables.dims, tables=tables, context=None)
    return Codec(loaded, backend=None)


_SHIPPED: dict = {}


def shipped(name: str) -> tuple[dict, Codec]:
    """A shipped model's model.json (as `kaec export --format web` writes it) and a Codec of the Python
    runtime over the same model (no networks: only its reading and writing are used)."""
    if name not in _SHIPPED:
        from kaecompress.exporters.web import model_json

        from kaecompress.runtime.shipped import load_shipped

        _SHIPPED[name] = (model_json(name)[0], Codec(load_shipped(name), backend=None))
    return _SHIPPED[name]


def codec_models() -> list[str]:
    from kaecompress import zoo

    return sorted(n for n, card in zoo.cards().items() if (card["config"].get("codec") or {}).get("prior"))


def python_read(codec: Codec, data: bytes, max_pixels: int = containers.MAX_PIXELS) -> dict:
    """What the Python library reads of one .kae file with `codec`'s model, as `kaec decode` reads it:
    {"ok": False} when it refuses, else the latents (float32) and, for version 2, the latent integers."""
    where = "file.kae"
    try:
        if data and data[0] & 0x80:
            bitstream.precheck(Path(where), data, max_pixels)
            enc = codec.from_kae(data, where, max_pixels)
            header, _ = codec.layout.kae_header(data, where, max_pixels)
            integers = bitstream.read_payload(data, header, codec.tables, codec.loaded.weights_sha256,
                                              (codec.height, codec.width), where).reshape(-1, codec.latent_dim)
            if codec.context is not None:
                integers = codec.context.restore(integers, where)
            integers = integers.astype(np.int32).ravel()
        else:
            containers.precheck(Path(where), data, max_pixels)
            enc = containers.read(Path(where), codec.latent_dim, (codec.height, codec.width), codec.channels,
                                  codec.layout.check_model, max_pixels, data)
            integers = None
    except KaecError as e:
        return {"ok": False, "error": str(e)}
    return {"ok": True, "latents": enc.latents.astype(np.float32).ravel(), "integers": integers,
            "layout": (enc.mode, enc.fit, enc.width, enc.height, *enc.grid)}


def same_read(py: dict, js: dict) -> bool:
    """Whether JavaScript read what Python read (both refuse, or the same layout, integers and latents)."""
    if py["ok"] != js["ok"]:
        return False
    if not py["ok"]:
        return js["kae"] and "\n" not in js["error"] and bool(js["error"])
    layout = (js["mode"], js["fit"], js["width"], js["height"], js["planes"], js["tilesY"], js["tilesX"])
    if layout != py["layout"]:
        return False
    latents = unb64(js["latents"], np.float32)
    if latents.tobytes() != py["latents"].tobytes():
        return False
    if py["integers"] is None:
        return js["integers"] is None
    return js["integers"] is not None and np.array_equal(unb64(js["integers"], np.int32), py["integers"])


def read_op(key: str, data: bytes, **kw) -> dict:
    return {"op": "read", "model": key, "data": b64(data), **kw}


def golden_files() -> dict[str, tuple[bytes, str, dict]]:
    """name -> (bytes, model key, model.json) for every golden .kae file."""
    out = {}
    expected = json.loads((GOLDEN / "expected.json").read_text())
    for name, info in expected["files"].items():
        key = f"golden-{info['codec_id']}"
        out[name] = ((GOLDEN / f"{name}.kae").read_bytes(), key, golden_model_json(info["codec_id"]))
    for folder in ("onnx", "shipped"):
        for path in sorted((GOLDEN / folder).glob("*.kae")):
            model = re.fullmatch(r"(.+?)-(\d+|row|rgb.*)", path.stem).group(1)
            out[f"{folder}/{path.stem}"] = (path.read_bytes(), model, shipped(model)[0])
    return out


def codec_of(key: str) -> Codec:
    if key.startswith("golden-"):
        value = key.split("-", 1)[1]
        return golden_codec(None if value == "None" else int(value))
    return shipped(key)[1]


def reencode(codec: Codec, py: dict, data: bytes) -> bytes:
    """The file Python writes for what it read (version 2: the integers; version 1: the latents, uint8 or
    float16 as the file was)."""
    mode, fit, width, height, *grid = py["layout"]
    if data[0] & 0x80:
        enc = Encoded(py["integers"].reshape(*grid, -1).astype(np.float32), width, height, mode, fit)
        return codec.to_kae(enc)
    quant = containers.QUANTS[data[5]]
    enc = Encoded(py["latents"].reshape(*grid, -1), width, height, mode, fit,
                  weights_sha256=codec.loaded.weights_sha256)
    return containers.to_kae(enc, quant)


# ---- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def node_bin(node) -> str:
    if not (REPO / "web" / "lib" / "bitstream.mjs").is_file():
        pytest.skip("web/lib/bitstream.mjs is missing")
    return node


@pytest.fixture(scope="module")
def golden():
    return golden_files()


def models_of(files) -> dict:
    return {key: model for _, key, model in files}


# ---- golden files --------------------------------------------------------------------------------------

def test_golden_files_read_to_pythons_integers_and_write_back_to_their_bytes(node_bin, golden):
    names = list(golden)
    assert len(names) >= 39 and any(n.startswith("shipped/") for n in names) and any(n.startswith("onnx/") for n in names)
    ops = [read_op(golden[n][1], golden[n][0]) for n in names]
    results = run_node(node_bin, models_of(golden.values()), ops)
    expected = json.loads((GOLDEN / "expected.json").read_text())["files"]
    write_ops, versions = [], set()
    for name, js in zip(names, results):
        data, key, _ = golden[name]
        py = python_read(codec_of(key), data)
        assert py["ok"], (name, py)
        assert same_read(py, js), (name, js)
        if name in expected:  # the committed symbols too
            assert unb64(js["integers"], np.int32).tolist() == expected[name]["symbols"], name
        versions.add(js["version"])
        layout = {k: js[k] for k in ("mode", "fit", "width", "height", "planes", "tilesY", "tilesX")}
        op = {"op": "write", "model": key, "layout": layout}
        if js["version"] == 2:
            op["integers"] = js["integers"]
        else:
            op["latents"], op["quant"] = js["latents"], containers.QUANTS[data[5]]
        write_ops.append(op)
    assert versions == {1, 2}
    written = run_node(node_bin, models_of(golden.values()), write_ops)
    for name, js in zip(names, written):
        data, key, _ = golden[name]
        assert js["ok"], (name, js)
        out = bytes(unb64(js["data"]))
        if data[0] & 0x80:  # version 2: the committed bytes
            assert out == data, name
        else:  # version 1 requantises (uint8): the bytes Python's writer gives the latents read
            assert out == reencode(codec_of(key), python_read(codec_of(key), data), data), name


def test_peek_names_the_model_without_it(node_bin, golden):
    names = list(golden)
    results = run_node(node_bin, {}, [{"op": "peek", "data": b64(golden[n][0])} for n in names])
    for name, js in zip(names, results):
        data = golden[name][0]
        assert js["ok"], (name, js)
        h = js["header"]
        if data[0] & 0x80:
            py = bitstream.parse_header(data)
            assert (h["codecId"], h["hashPrefix"], h["compact"]) == (py.codec_id, py.model_id, py.compact), name
            assert (h["mode"], h["fit"], h["width"], h["height"]) == (py.mode, py.fit, py.width, py.height), name
            assert (h["planes"], h["tilesY"], h["tilesX"]) == py.grid and h["version"] == 2
        else:
            enc, quant = containers.from_kae(data, name)
            assert h["version"] == 1 and h["codecId"] is None and h["hashPrefix"] == enc.weights_sha256
            assert (h["quant"], h["width"], h["height"], h["mode"]) == (quant, enc.width, enc.height, enc.mode)


def test_a_file_of_another_model_is_refused(node_bin, golden):
    """Every golden file read with every other shipped model's model.json: refused where Python refuses."""
    names = [n for n in golden if not n.startswith("golden") and "/" in n][:12]
    keys = sorted({golden[n][1] for n in golden if "/" in n})
    ops, cases = [], []
    for name in names:
        for key in keys:
            if key != golden[name][1]:
                ops.append(read_op(key, golden[name][0]))
                cases.append((name, key))
    results = run_node(node_bin, {k: shipped(k)[0] for k in keys}, ops)
    for (name, key), js in zip(cases, results):
        py = python_read(shipped(key)[1], golden[name][0])
        assert same_read(py, js), (name, key, py.get("error"), js)
    assert sum(not js["ok"] for js in results) >= len(results) * 0.9


# ---- random latents ------------------------------------------------------------------------------------

LAYOUTS = [  # mode, fit, width, height, planes, tiles_y, tiles_x (28x28 tiles)
    ("L", "tile", 28, 28, 1, 1, 1), ("RGB", "tile", 70, 50, 3, 2, 3), ("LA", "resize", 300, 200, 2, 1, 1),
    ("1", "tile", 20, 20, 1, 1, 1), ("RGBA", "tile", 28, 29, 4, 2, 1), ("L", "tile", 100, 1, 1, 1, 4),
]


def random_integers(rng, tables: IntegerTables, count: int, escapes: float) -> np.ndarray:
    """Laplace-ish integers around each row's most likely value; a share `escapes` far outside the tables
    (up to the 32-bit limits, some of them exactly at them)."""
    mode = tables.offsets + tables.freqs[:, :-1].argmax(axis=1)
    scale = rng.uniform(0.5, 4.0, tables.dims)
    values = mode + np.round(rng.laplace(0, scale, size=(count, tables.dims))).astype(np.int64)
    far = rng.random(values.shape) < escapes
    magnitude = np.exp2(rng.uniform(0, 31, size=values.shape))
    wild = np.round(rng.choice([-1, 1], size=values.shape) * magnitude).astype(np.int64)
    values = np.where(far, wild, values)
    edges = rng.random(values.shape) < escapes / 20
    values = np.where(edges, rng.choice([-(2**31), 2**31 - 1, -(2**31) + 1, 2**31 - 2], size=values.shape), values)
    return np.clip(values, -(2**31), 2**31 - 1)


def table_samples(rng, tables: IntegerTables, count: int) -> np.ndarray:
    """Integers drawn from the tables' own distribution (what a model's latents look like to its coder); an
    ESCAPE drawn becomes a value a few steps beyond the table's edge."""
    k = tables.symbols
    cum = np.cumsum(tables.freqs.astype(np.int64), axis=1)
    u = rng.integers(0, 2**tables.precision, size=(count, tables.dims))
    index = np.stack([np.searchsorted(cum[d], u[:, d], side="right") for d in range(tables.dims)], axis=1)
    values = index + tables.offsets.astype(np.int64)
    escaped = index == k - 1
    beyond = rng.integers(1, 50, size=index.shape)
    below = rng.random(index.shape) < 0.5
    values = np.where(escaped & below, tables.offsets - beyond, values)
    return np.where(escaped & ~below, tables.offsets + k - 2 + beyond, values)


def python_write(codec: Codec, integers: np.ndarray, layout) -> bytes | str:
    mode, fit, width, height, planes, ty, tx = layout
    symbols = integers.reshape(planes, ty, tx, -1).astype(np.int64)
    try:
        if codec.context is not None:
            symbols = codec.context.residuals(symbols.reshape(-1, codec.latent_dim)).reshape(symbols.shape)
        tile = (codec.height, codec.width)
        return bitstream.write(symbols, width=width, height=height, mode=mode, fit=fit, tables=codec.tables,
                               weights_sha256=codec.loaded.weights_sha256, codec_id=codec.loaded.card.get("codec_id"),
                               tile=tile)
    except KaecError as e:
        return str(e)


def test_random_latents_give_pythons_bytes_on_every_codec_model(node_bin):
    """Integers (as float32 latents would give them, so exact below 2^24; escapes up to the 32-bit limits
    where no context model is in the way) for every shipped codec model and several layouts."""
    names = codec_models()
    assert len(names) >= 15 and any(shipped(n)[1].context is not None for n in names)
    rng = np.random.default_rng(29)
    ops, cases = [], []
    for name in names:
        codec = shipped(name)[1]
        for i in range(150):
            layout = LAYOUTS[i % len(LAYOUTS)] if i % 2 else LAYOUTS[0]
            count = layout[4] * layout[5] * layout[6]
            escapes = [0.0, 0.01, 0.05, 0.3][i % 4]
            integers = random_integers(rng, codec.tables, count, escapes)
            if codec.context is not None and i % 5:  # mostly latents whose residuals fit 32 bits
                integers = np.clip(integers, -(2**24), 2**24)
            integers = integers.astype(np.int32).ravel()
            lay = dict(zip(("mode", "fit", "width", "height", "planes", "tilesY", "tilesX"), layout))
            ops.append({"op": "write", "model": name, "layout": lay, "integers": b64(integers.tobytes())})
            cases.append((name, layout, integers))
    results = run_node(node_bin, {n: shipped(n)[0] for n in names}, ops)
    read_ops, written = [], 0
    for (name, layout, integers), js in zip(cases, results):
        codec = shipped(name)[1]
        py = python_write(codec, integers, layout)
        if isinstance(py, str):
            assert not js["ok"] and js["kae"], (name, py, js)
            continue
        assert js["ok"], (name, js)
        assert bytes(unb64(js["data"])) == py, (name, layout)
        written += 1
        read_ops.append(read_op(name, py))
    print(f"\n{len(cases)} files of {len(names)} models: {written} written byte-identical, "
          f"{len(cases) - written} refused by both (values beyond 32 bits)")
    assert 0.9 * len(cases) <= written < len(cases)
    back = run_node(node_bin, {n: shipped(n)[0] for n in names}, read_ops)
    good = [c for c, js in zip(cases, results) if js["ok"]]
    for (name, layout, integers), js in zip(good, back):
        assert js["ok"] and np.array_equal(unb64(js["integers"], np.int32), integers), (name, js)


def test_escapes_at_the_32_bit_limits_round_trip(node_bin):
    """Values at and near +-2^31 on the golden test model (no context model): coded, and refused beyond."""
    tables = golden_tables()
    rng = np.random.default_rng(3)
    model = golden_model_json(7)
    codec = golden_codec(7)
    ops, cases = [], []
    for i in range(200):
        integers = random_integers(rng, tables, 1, 0.5).astype(np.int32).ravel()
        layout = LAYOUTS[0]
        ops.append({"op": "write", "model": "g", "layout": dict(zip(("mode", "fit", "width", "height", "planes",
                                                                       "tilesY", "tilesX"), layout)),
                    "integers": b64(integers.tobytes())})
        cases.append(integers)
    results = run_node(node_bin, {"g": model}, ops)
    for integers, js in zip(cases, results):
        py = python_write(codec, integers, LAYOUTS[0])
        assert js["ok"] and bytes(unb64(js["data"])) == py


def test_to_integers_rounds_as_numpy(node_bin):
    model = shipped("mnist-q2")[0]
    rng = np.random.default_rng(5)
    z = np.concatenate([rng.normal(0, 20, 5000), np.arange(-40, 40) + 0.5, [2.5, -2.5, 0.49999997, -0.5, 1e7 + 0.5]])
    z = z.astype(np.float32)
    js = run_node(node_bin, {"m": model}, [{"op": "toIntegers", "model": "m", "latents": b64(z.tobytes())}])[0]
    assert js["ok"] and np.array_equal(unb64(js["integers"], np.int32), np.rint(z).astype(np.int32))
    bad = run_node(node_bin, {"m": model}, [{"op": "toIntegers", "model": "m",
                                              "latents": b64(np.array([v], np.float32).tobytes())}
                                             for v in (np.nan, np.inf, 3e9, -3e9)])
    assert all(not r["ok"] and r["kae"] for r in bad)


def test_restored_latents_beyond_32_bits_are_refused(node_bin):
    """Files whose residuals (coded by Python's writer) restore to latents at or beyond 2^31 through a context
    model: refused by both; the others read to the same latents."""
    rng = np.random.default_rng(23)
    names = [n for n in codec_models() if shipped(n)[1].context is not None][:3]
    ops, cases = [], []
    for name in names:
        codec = shipped(name)[1]
        for i in range(40):
            symbols = random_integers(rng, codec.tables, 2, 0.02)
            symbols[rng.random(symbols.shape) < 0.05] = rng.choice([2**31 - 1, -(2**31), 2**30, -(2**30)])
            data = bitstream.write(symbols.reshape(1, 1, 2, -1), width=56, height=28, mode="L", fit="tile",
                                   tables=codec.tables, weights_sha256=codec.loaded.weights_sha256,
                                   codec_id=codec.loaded.card["codec_id"], tile=TILE)
            ops.append(read_op(name, data))
            cases.append((name, data))
    results = run_node(node_bin, {n: shipped(n)[0] for n in names}, ops)
    refused = 0
    for (name, data), js in zip(cases, results):
        py = python_read(shipped(name)[1], data)
        assert same_read(py, js), (name, py.get("error"), js)
        refused += not py["ok"]
    assert 0 < refused < len(cases)


# ---- damaged files -------------------------------------------------------------------------------------

def with_crc16(body: bytes, sha: str) -> bytes:
    start = binascii.crc_hqx(bytes.fromhex(sha), 0xFFFF)
    return body + binascii.crc_hqx(body, start).to_bytes(2, "big")


def with_crc32(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def mutants(rng, data: bytes, sha: str) -> list[bytes]:
    """Damaged versions of one file: every truncation, appended bytes, bit flips, random header and payload
    bytes; and the same edits with the check recomputed (so the header checks and the range decoder are
    reached with damaged input)."""
    out = [data[:n] for n in range(len(data))]
    out += [data + bytes(rng.integers(0, 256, k, dtype=np.uint8)) for k in (1, 2, 5)] + [data + b"\0"]
    v2 = bool(data[0] & 0x80)
    body = data[:-2] if v2 else data[:-4]
    resign = (lambda b: with_crc16(b, sha)) if v2 else with_crc32
    for _ in range(12):
        b = bytearray(data)
        b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        out.append(bytes(b))
    for _ in range(25):
        b = bytearray(body)
        kind = int(rng.integers(5))
        if kind == 0:      # one byte of the header region replaced
            b[int(rng.integers(min(len(b), 32)))] = int(rng.integers(256))
        elif kind == 1:    # a bit flipped anywhere
            b[int(rng.integers(len(b)))] ^= 1 << int(rng.integers(8))
        elif kind == 2:    # the payload replaced by random bytes, any length
            keep = int(rng.integers(1, max(2, len(b))))
            b = b[:keep] + bytearray(rng.integers(0, 256, int(rng.integers(0, 24)), dtype=np.uint8))
        elif kind == 3:    # cut short
            b = b[:int(rng.integers(1, len(b) + 1))]
        else:              # bytes inserted
            at = int(rng.integers(1, len(b) + 1))
            b = b[:at] + bytearray(rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8)) + b[at:]
        out.append(resign(bytes(b)))
    return out


def test_damaged_files_are_refused_exactly_where_python_refuses(node_bin, golden):
    rng = np.random.default_rng(11)
    ops, cases = [], []
    for name, (data, key, model) in golden.items():
        for m in mutants(rng, data, model["weights_sha256"]):
            ops.append(read_op(key, m))
            cases.append((name, key, m))
    results = run_node(node_bin, models_of(golden.values()), ops)
    accepted = refused = 0
    for (name, key, m), js in zip(cases, results):
        py = python_read(codec_of(key), m)
        assert same_read(py, js), (name, m.hex(), py.get("error"), js)
        accepted += py["ok"]
        refused += not py["ok"]
    print(f"\n{len(cases)} mutants of {len(golden)} golden files: {refused} refused by both, {accepted} read "
          "to the same integers by both")
    assert len(cases) >= 1000 and accepted >= 100 and refused >= 800


def test_random_payloads_decode_as_pythons_range_decoder(node_bin):
    """The range decoder on arbitrary bytes (what only a damaged file with a lucky check reaches): the same
    integers as constriction's, or both refuse."""
    from kaecompress.codec import rangecoder

    rng = np.random.default_rng(17)
    model = golden_model_json(None)
    tables = golden_tables()
    ops, cases = [], []
    for i in range(800):
        data = bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8))
        if i % 3 == 0:  # bytes that decode mostly to escapes
            data = bytes([0xFF] * int(rng.integers(1, 12))) + data
        count = int(rng.integers(1, 5))
        ops.append({"op": "decodePayload", "model": "g", "data": b64(data), "count": count})
        cases.append((data, count))
    results = run_node(node_bin, {"g": model}, ops)
    refused = 0
    for (data, count), js in zip(cases, results):
        try:
            py = rangecoder.decode(data, tables, count).ravel()
        except KaecError:
            py = None
        if py is None:
            refused += 1
            assert not js["ok"] and js["kae"], (data.hex(), js)
        else:
            assert js["ok"] and np.array_equal(unb64(js["integers"], np.int32), py), (data.hex(), count)
    print(f"\n{len(cases)} random payloads: {refused} refused by both, {len(cases) - refused} decoded alike")
    assert 0 < refused < len(cases)


def test_pixel_limits_and_header_edits(node_bin, golden):
    """maxPixels, and extended headers rewritten with every mode, fit, size and grid (checks recomputed)."""
    data, key, model = golden["rgb-70x50-hash"]
    codec = codec_of(key)
    header = bitstream.parse_header(data)
    payload = data[header.size:-2]
    sha = model["weights_sha256"]
    ops, cases = [], []
    for mode in range(8):
        for fit in (0, 1):
            for size in ((70, 50), (56, 56), (57, 29), (1, 1), (20000, 20000), (13000, 13000)):
                for grid in ((3, 2, 3), (1, 1, 1), (3, 1, 1), (1, 2, 3), (4, 2, 3), (3, 715, 715)):
                    head = bytes([0xC0 | (mode << 2) | (fit << 1)]) + bytes.fromhex(sha[:16])
                    head += b"".join(bitstream._varint(v) for v in (*size, *grid))
                    m = with_crc16(head + payload, sha)
                    for limit in (None, 1000):
                        ops.append(read_op(key, m, **({"maxPixels": limit} if limit else {})))
                        cases.append((m, limit))
    # numbers spelled longer than needed, or longer than 5 bytes, and huge ones
    first = bytes([0xC8]) + bytes.fromhex(sha[:16])
    for spelled in (b"\xc6\x00\x32", b"\x46\xb2\x00", b"\xc6\x80\x00\x32", b"\xff\xff\xff\xff\x0f\x32",
                    b"\xff\xff\xff\xff\x7f\x32", b"\xc6\x80\x80\x80\x80\x00\x32", b"\x80\x00\x32"):
        m = with_crc16(first + spelled + b"\x03\x02\x03" + payload, sha)
        ops.append(read_op(key, m))
        cases.append((m, None))
    results = run_node(node_bin, {key: model}, ops)
    ok = 0
    for (m, limit), js in zip(cases, results):
        py = python_read(codec, m, limit or containers.MAX_PIXELS)
        assert same_read(py, js), (m[:20].hex(), limit, py.get("error"), js)
        ok += py["ok"]
    assert ok >= 2


# ---- model.json ----------------------------------------------------------------------------------------

def test_model_json_is_validated(node_bin):
    good, _ = shipped("mnist-q6")
    assert good["context"] is not None

    def changed(path: str, value):
        doc = json.loads(json.dumps(good))
        *parents, last = path.split(".")
        target = doc
        for p in parents:
            target = target[int(p)] if p.isdigit() else target[p]
        if value is KeyError:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
        return doc

    row = list(good["tables"]["freqs"][0])
    row[0] -= 1
    upper = [list(r) for r in good["context"]["weights"]]
    upper[0][5] = 7
    bad = {
        "schema": changed("schema", "other"), "version": changed("version", 2), "name": changed("name", ""),
        "weights_sha256": changed("weights_sha256", "ab"), "latent_dim": changed("latent_dim", 63),
        "input_shape": changed("input_shape", [1, 28]), "encoder": changed("encoder.file", "../x.onnx"),
        "weights": changed("weights.file", "%2e%2e"),
        "tables.precision": changed("tables.precision", 30), "tables.freqs": changed("tables.freqs.0", row),
        "tables.offsets": changed("tables.offsets.3", 2**21), "tables.freqs.0": changed("tables.freqs.0", [1]),
        "context.order": changed("context.order.0", 1), "context.weights": changed("context.weights", upper),
        "context.bias": changed("context.bias.3", 2**31), "codec_id": changed("codec_id", -1),
        "tables": changed("tables", KeyError) | {"tables": None},
    }
    zero = [list(r) for r in good["tables"]["freqs"]]
    zero[2][3] = 0
    zero[2][4] += 1
    bad["tables.freqs.2.3"] = changed("tables.freqs", zero)
    heavy = [list(r) for r in good["context"]["weights"]]
    heavy[9][0] = 2**21
    bad["context.weights.9"] = changed("context.weights", heavy)
    ops = [{"op": "model", "json": doc} for doc in [good, *bad.values()]]
    results = run_node(node_bin, {}, ops)
    assert results[0]["ok"], results[0]
    for (field, _), js in zip(bad.items(), results[1:]):
        assert not js["ok"] and js["kae"] and js["error"].startswith("model.json: "), (field, js)
        assert field.split(".")[0] in js["error"], (field, js["error"])


# ---- speed ---------------------------------------------------------------------------------------------

def test_ten_thousand_digit_files_both_ways(node_bin):
    """10,000 mnist-q2 digit files: integers -> bytes -> integers in one Node process, the same bytes as
    Python's batch writer (numba); both timed, the figures printed (no timed assertion)."""
    model, codec = shipped("mnist-q2")
    rng = np.random.default_rng(2)
    n, d = 10_000, codec.latent_dim
    integers = table_samples(rng, codec.tables, n).astype(np.int32)
    t0 = time.perf_counter()
    py_files = bitstream.write_tiles(integers, tables=codec.tables, weights_sha256=codec.loaded.weights_sha256,
                                     codec_id=codec.loaded.card["codec_id"], tile=TILE)
    t1 = time.perf_counter()
    _, back = bitstream.read_tiles(py_files, tables=codec.tables, weights_sha256=codec.loaded.weights_sha256, tile=TILE)
    t2 = time.perf_counter()
    assert np.array_equal(back, integers)
    js = run_node(node_bin, {"m": model}, [{"op": "speed", "model": "m", "integers": b64(integers.tobytes())}])[0]
    assert js["ok"], js
    sizes = unb64(js["sizes"], np.int32)
    blob = bytes(unb64(js["blob"]))
    ends = np.cumsum(sizes)
    js_files = [blob[a:b] for a, b in zip([0, *ends[:-1]], ends)]
    assert js_files == py_files
    assert np.array_equal(unb64(js["integers"], np.int32).reshape(n, d), integers)
    print(f"\n10,000 mnist-q2 digit files ({sum(sizes) / n:.2f} bytes each): JavaScript writes "
          f"{n / js['write_s']:,.0f} files/s, reads {n / js['read_s']:,.0f} files/s; Python (numba batch, "
          f"warm or not) writes {n / (t1 - t0):,.0f} files/s, reads {n / (t2 - t1):,.0f} files/s")


# ---- version 1 -----------------------------------------------------------------------------------------

def test_version_1_files_as_pythons(node_bin):
    """Models without tables write version 1: uint8 (one affine scale per file) and float16, the bytes
    Python's writer gives, and read back to the float32 latents Python reads."""
    names = ["mnist-kae-dec3", "fashion-kae-dec3", "mnist-kae-enc3"]
    rng = np.random.default_rng(41)
    ops, cases = [], []
    for name in names:
        codec = shipped(name)[1]
        for i in range(60):
            layout = LAYOUTS[i % len(LAYOUTS)]
            if codec.channels == 3:
                layout = ("RGB", *layout[1:4], 1, *layout[5:])
            count = layout[4] * layout[5] * layout[6]
            scale = [1.0, 1e-3, 100.0, 3e4, 1e30][i % 5]
            z = (rng.normal(0, scale, (count * codec.latent_dim)) * (rng.random() + 0.1)).astype(np.float32)
            if i % 7 == 0:
                z[:] = z[0]  # one value: scale 1
            if i % 11 == 0:
                z[rng.integers(len(z), size=3)] = np.float32(rng.choice([6e-8, 1e-5, 65519.0, 65520.0, -2.0**-25]))
            if i % 4 == 1:  # float16 ties (to even), subnormals, the edge of its range
                ties = np.float32([1 + 2**-11, 1 + 3 * 2**-11, -(2 + 2**-10), 2**-25, 3 * 2**-25, 2**-24 * 1.5,
                                   65504 + 15, 2**-14 * (1 + 2**-11), 0.1, -0.0])
                z[:len(ties)] = ties[:len(z)]
            quant = "float16" if i % 2 else "uint8"
            lay = dict(zip(("mode", "fit", "width", "height", "planes", "tilesY", "tilesX"), layout))
            ops.append({"op": "write", "model": name, "layout": lay, "latents": b64(z.tobytes()), "quant": quant})
            cases.append((name, layout, z, quant))
    results = run_node(node_bin, {n: shipped(n)[0] for n in names}, ops)
    read_ops, files = [], []
    for (name, layout, z, quant), js in zip(cases, results):
        codec = shipped(name)[1]
        mode, fit, width, height, *grid = layout
        enc = Encoded(z.reshape(*grid, -1), width, height, mode, fit, weights_sha256=codec.loaded.weights_sha256)
        with np.errstate(over="ignore"):
            py = containers.to_kae(enc, quant)
        with np.errstate(over="ignore"):
            overflows = quant == "float16" and not np.isfinite(z.astype(np.float16)).all()
        if overflows:
            assert not js["ok"] and js["kae"], js  # Python writes infinities its reader refuses; JS refuses to write
            continue
        assert js["ok"], (name, js)
        assert bytes(unb64(js["data"])) == py, (name, layout, quant, scale)
        read_ops.append(read_op(name, py))
        files.append((name, py))
    assert len(files) >= 0.8 * len(cases)
    back = run_node(node_bin, {n: shipped(n)[0] for n in names}, read_ops)
    for (name, data), js in zip(files, back):
        assert same_read(python_read(shipped(name)[1], data), js), name
