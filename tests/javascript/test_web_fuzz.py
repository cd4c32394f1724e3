"""The readers of web/lib on hostile input, in Node: thousands of random and mutated .kae files (with and
without a valid checksum, so the headers and the range decoder see crafted bytes), range-coder payloads, PNG
files (chunk CRCs made right, so the header, filter and zlib code see them) and model.json documents. Each
input is read or refused with a one-line KaeError, never another exception, and none takes long; a zlib bomb
and a PNG claiming a large image over a few bytes are refused without inflating or allocating them."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("fuzz_driver.mjs")
GOLDEN = REPO / "tests" / "data" / "golden"
MODELS = ["mnist-q2", "mnist-q6", "fashion-q9", "mnist-kae-dec3", "mnist-kae-enc3"]
ROUNDS = 2500
SLOWEST_MS = 500  # one input; the slowest seen is a few ms


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_seeds(folder: Path) -> list[bytes]:
    """Small PNGs of every colour type, palette and bit depth the reader takes."""
    rng = np.random.default_rng(7)
    u8 = rng.integers(0, 256, (9, 11, 4), dtype=np.uint8)
    images = [Image.fromarray(u8[..., 0]), Image.fromarray(u8[..., :2], "LA"), Image.fromarray(u8[..., :3]),
              Image.fromarray(u8, "RGBA"), Image.fromarray(u8[..., 0]).convert("1"),
              Image.fromarray(u8[..., :3]).quantize(16), Image.fromarray(u8[..., 0].astype(np.uint16) * 257)]
    out = []
    for i, im in enumerate(images):
        im.save(folder / f"{i}.png")
        out.append((folder / f"{i}.png").read_bytes())
    return out + [p.read_bytes() for p in sorted((REPO / "examples").glob("*.png"))[:2]]


def test_readers_refuse_crafted_input_with_one_line_kae_errors(node, tmp_path):
    from kaecompress.exporters.web import model_json

    kae = [p.read_bytes() for p in [*GOLDEN.glob("*.kae"), *(GOLDEN / "onnx").glob("*.kae"),
                                    *(GOLDEN / "shipped").glob("*.kae")]]
    job = {"seed": 29, "rounds": ROUNDS, "kae": [b64(d) for d in kae], "png": [b64(d) for d in png_seeds(tmp_path)],
           "models": [model_json(name)[0] for name in MODELS]}
    r = subprocess.run([node, str(DRIVER)], input=json.dumps(job), capture_output=True, text=True, timeout=600,
                       check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    print()
    for name, res in results.items():
        print(f"{name}: {res['inputs']:,} inputs, {res['accepted']:,} read, {res['refused']:,} refused with a "
              f"KaeError; slowest {res['slowestMs']:.1f} ms")
    for name, res in results.items():
        assert res["bad"] == [], (name, res["bad"])
        assert res["slowestMs"] < SLOWEST_MS, (name, res["slowestMs"], res["slowest"])
    assert results["readKae"]["inputs"] >= 4 * ROUNDS and results["readKae"]["accepted"] > 0
    assert results["readPng"]["inputs"] >= 2 * ROUNDS and results["readPng"]["accepted"] > 0
    assert results["modelFromJson"]["refused"] > 0 and results["rangecoder.decode"]["refused"] > 0


def png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


@pytest.mark.parametrize("case", ["bomb", "claims-36-megapixels", "claims-over-the-limit"])
def test_png_bombs_are_cheap(node, tmp_path, case):
    """A 28x28 PNG whose data inflates to 200 MB is read (its first 812 bytes) without inflating the rest; a
    header claiming 36 or 400 megapixels over 100 bytes of data is refused before anything is allocated."""
    if case == "bomb":
        data = png(28, 28, zlib.compress(bytes(200_000_000), 9))
    else:
        side = 6000 if case == "claims-36-megapixels" else 20000
        data = png(side, side, zlib.compress(bytes(100)))
    (tmp_path / "in.png").write_bytes(data)
    script = ("import { readPng } from '" + (REPO / "web" / "lib" / "png.mjs").as_uri() + "';\n"
              "import { readFileSync } from 'node:fs';\n"
              "const t = performance.now();\n"
              "try { const im = await readPng(readFileSync(process.argv[1]), 'in.png');"
              " console.log(JSON.stringify({ok: im.width * im.height, ms: performance.now() - t,"
              " rss: process.memoryUsage().rss})); }\n"
              "catch (e) { console.log(JSON.stringify({error: `${e.name}: ${e.message}`, ms: performance.now() - t,"
              " rss: process.memoryUsage().rss})); }\n")
    start = time.perf_counter()
    r = subprocess.run([node, "--input-type=module", "-e", script, str(tmp_path / "in.png")], capture_output=True,
                       text=True, timeout=120, check=False)
    wall = time.perf_counter() - start
    out = json.loads(r.stdout.strip().splitlines()[-1])
    print(f"\n{case}: {out} in {wall:.2f} s")
    if case == "bomb":
        assert out.get("ok") == 28 * 28, out
    elif case == "claims-36-megapixels":
        assert out["error"].startswith("KaeError: in.png: unreadable image (truncated PNG data"), out
    else:
        assert out["error"].startswith("KaeError: in.png: image size 20000x20000"), out
    assert out["ms"] < 1000 and out["rss"] < 300 << 20, out
