"""The `.kae` version 2 container: sizes, round trips, golden files, integrity against damage and other
models, and the standalone reference decoder of export folders."""

import binascii
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from kaecompress import KaecError

from kaecompress.codec import bitstream, containers
from kaecompress.codec.rangecoder import IntegerTables

from conftest import isolated_python
from test_rangecoder import laplace_symbols, laplace_tables

GOLDEN = Path(__file__).parent / "data" / "golden"
SHA = hashlib.sha256(b"kaecompress golden tables").hexdigest()
OTHER = hashlib.sha256(b"another model").hexdigest()
TILE = (28, 28)


def _write(symbols, tables, sha=SHA, **kw):
    args = dict(width=28, height=28, mode="L", fit="tile", codec_id=5, tile=TILE)
    args.update(kw)
    return bitstream.write(symbols, tables=tables, weights_sha256=sha, **args)


def _read(data, tables, sha=SHA, tile=TILE):
    header = bitstream.parse_header(data)
    return header, bitstream.read_payload(data, header, tables, sha, tile)


# ---- layout and round trips ---------------------------------------------------------------------------

def test_one_native_tile_costs_three_bytes_of_header_and_check():
    tables, scales = laplace_tables()
    rng = np.random.default_rng(0)
    for _ in range(200):
        symbols = laplace_symbols(rng, scales, 1).reshape(1, 1, 1, -1)
        data = _write(symbols, tables, codec_id=int(rng.integers(0, 64)))
        payload = len(data) - 3
        assert data[0] >> 6 == 0b10 and len(bitstream.rangecoder.encode(symbols.reshape(1, -1), tables)) == payload
        header, back = _read(data, tables)
        assert header.compact and header.size == 1 and header.grid == (1, 1, 1)
        assert header.with_tile(TILE).width == 28 and header.mode == "L" and header.fit == "tile"
        assert np.array_equal(back, symbols)


@pytest.mark.parametrize("mode, fit, size, grid, codec_id", [
    ("RGB", "tile", (70, 50), (3, 2, 3), None),
    ("RGBA", "tile", (28, 29), (4, 2, 1), 7),
    ("LA", "resize", (300, 200), (2, 1, 1), 200),
    ("1", "tile", (20, 20), (1, 1, 1), 3),
    ("L", "tile", (28, 28), (1, 1, 1), None),       # native, but no codec id: hash prefix
    ("L", "tile", (28, 28), (1, 1, 1), 64),         # codec id beyond the compact range
    ("L", "tile", (1000, 1), (1, 1, 36), 1),
])
def test_extended_headers_round_trip(mode, fit, size, grid, codec_id):
    tables, scales = laplace_tables(dims=16, width=21)
    rng = np.random.default_rng(1)
    symbols = laplace_symbols(rng, scales, int(np.prod(grid))).reshape(*grid, 16)
    data = _write(symbols, tables, width=size[0], height=size[1], mode=mode, fit=fit, codec_id=codec_id)
    assert data[0] >> 6 == 0b11
    header, back = _read(data, tables)
    assert (header.width, header.height, header.mode, header.fit, header.grid) == (*size, mode, fit, grid)
    assert header.codec_id == codec_id
    assert header.model_id == (SHA[:16] if codec_id is None else None)
    assert np.array_equal(back, symbols) and back.dtype == np.int32


def test_many_tiles_are_one_stream():
    tables, scales = laplace_tables()
    rng = np.random.default_rng(2)
    symbols = laplace_symbols(rng, scales, 3 * 10 * 12).reshape(3, 10, 12, 32)
    data = _write(symbols, tables, width=12 * 28, height=10 * 28, mode="RGB")
    one_by_one = sum(len(_write(s.reshape(1, 1, 1, -1), tables)) - 3 for s in symbols.reshape(-1, 32))
    assert len(data) < one_by_one - 70  # 360 tiles: no rounding of each to whole bytes (measured 123 B less)
    assert np.array_equal(_read(data, tables)[1], symbols)


def test_batches_of_one_tile_files_match_file_by_file():
    """write_tiles / read_tiles give exactly what write / read_payload give for each file, escapes and
    non-compact headers included."""
    tables, scales = laplace_tables()
    rng = np.random.default_rng(12)
    symbols = laplace_symbols(rng, scales, 300)
    symbols[::37, 3] = 5000  # escapes in some files
    for codec_id in (4, None, 90):
        files = bitstream.write_tiles(symbols, tables=tables, weights_sha256=SHA, codec_id=codec_id, tile=TILE)
        assert files == [_write(row.reshape(1, 1, 1, -1), tables, codec_id=codec_id) for row in symbols]
        headers, back = bitstream.read_tiles(files, tables=tables, weights_sha256=SHA, tile=TILE)
        assert np.array_equal(back, symbols) and back.dtype == np.int32
        assert all((h.width, h.height, h.codec_id) == (28, 28, codec_id) for h in headers)
    small = _write(symbols[:1].reshape(1, 1, 1, -1), tables, width=20, height=17, mode="1")
    headers, back = bitstream.read_tiles([small], tables=tables, weights_sha256=SHA, tile=TILE)
    assert (headers[0].width, headers[0].height, headers[0].mode) == (20, 17, "1")
    assert np.array_equal(back, symbols[:1])


def test_a_bad_file_in_a_batch_is_named():
    tables, scales = laplace_tables()
    symbols = laplace_symbols(np.random.default_rng(13), scales, 5)
    files = bitstream.write_tiles(symbols, tables=tables, weights_sha256=SHA, codec_id=4, tile=TILE)
    names = [f"d{i}.kae" for i in range(5)]
    damaged = list(files)
    damaged[3] = damaged[3][:2] + bytes([damaged[3][2] ^ 0x01]) + damaged[3][3:]
    with pytest.raises(KaecError, match=r"^d3.kae: checksum mismatch"):
        bitstream.read_tiles(damaged, tables=tables, weights_sha256=SHA, tile=TILE, names=names)
    with pytest.raises(KaecError, match=r"^d0.kae: checksum mismatch.*another model"):
        bitstream.read_tiles(files, tables=tables, weights_sha256=OTHER, tile=TILE, names=names)
    many = _write(symbols[:4].reshape(1, 2, 2, 32), tables, width=50, height=50)
    with pytest.raises(KaecError, match="big.kae: holds 2x2 tiles"):
        bitstream.read_tiles([files[0], many], tables=tables, weights_sha256=SHA, tile=TILE,
                             names=["a.kae", "big.kae"])


def test_read_resolves_the_model_from_the_header():
    tables, scales = laplace_tables(dims=16, width=21)
    symbols = laplace_symbols(np.random.default_rng(3), scales, 1).reshape(1, 1, 1, 16)
    seen = []

    def resolve(header):
        seen.append(header.codec_id)
        return tables, SHA, TILE

    header, back = bitstream.read(_write(symbols, tables, codec_id=17), resolve=resolve)
    assert seen == [17] and (header.width, header.height) == (28, 28) and np.array_equal(back, symbols)


def test_grid_is_checked_against_the_model_tile():
    tables, scales = laplace_tables(dims=16, width=21)
    symbols = np.zeros((1, 1, 2, 16), dtype=np.int64)
    data = _write(symbols, tables, width=28, height=28, codec_id=None)
    header = bitstream.parse_header(data)
    with pytest.raises(KaecError, match="needs 1x1 tiles of 28x28, the file has 1x2"):
        bitstream.read_payload(data, header, tables, SHA, TILE)


def test_write_refuses_what_it_cannot_describe():
    tables, _ = laplace_tables(dims=4, width=5)
    ok = np.zeros((1, 1, 1, 4), dtype=np.int64)
    with pytest.raises(KaecError, match="64 hex"):
        _write(ok, tables, sha="abc")
    with pytest.raises(KaecError, match="shape"):
        _write(np.zeros((1, 1, 4), dtype=np.int64), tables)
    with pytest.raises(KaecError, match="mode"):
        _write(ok, tables, mode="CMYK")
    with pytest.raises(KaecError, match="pixels|holds"):
        _write(ok, tables, width=20_000, height=20_000)


def test_versions_are_told_apart_by_the_first_byte():
    enc = containers.Encoded(np.zeros((1, 1, 1, 4), np.float32), 28, 28, weights_sha256=SHA)
    v1 = containers.to_kae(enc)
    assert bitstream.version(v1) == 1
    with pytest.raises(KaecError, match="version 1"):
        bitstream.parse_header(v1)
    assert containers.from_kae(v1, "v1.kae")[0].width == 28  # still readable by version 1's reader
    tables, _ = laplace_tables(dims=4, width=5)
    assert bitstream.version(_write(np.zeros((1, 1, 1, 4), np.int64), tables)) == 2
    for first in (0x00, 0x4A, 0x4C, 0x7F):
        with pytest.raises(KaecError, match="unsupported .kae version"):
            bitstream.parse_header(bytes([first]) + b"\0" * 20)
    with pytest.raises(KaecError, match="empty"):
        bitstream.parse_header(b"")


def test_malformed_extended_headers_are_refused():
    for data, message in [
        (bytes([0xC0 | 0x20, 0, 0]), "flags"),            # reserved bit
        (bytes([0xC0 | (5 << 2) | 1, 0, 0]), "flags"),     # mode 5
        (bytes([0xC1, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]) + b"\0" * 9, "malformed number"),
        (bytes([0xC1, 1, 0x81, 0x00, 1, 1, 1, 1]) + b"\0" * 4, "malformed number"),  # non-canonical
        (bytes([0xC1, 1, 0, 28, 1, 1, 1, 0, 0]), "image size 0x28"),
        (bytes([0xC1, 1, 28, 28, 5, 1, 1, 0, 0]), "tile grid 5x1x1"),
        (bytes([0xC1, 1, 28, 28, 1, 29, 1, 0, 0]), "tile grid"),
        (bytes([0xC1, 1, 0xFF, 0xFF, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0x7F, 1, 1, 1, 0, 0]), "pixels"),
        (bytes([0xC0]) + b"\1" * 5, "truncated"),
        (bytes([0xC1, 1, 28]), "truncated"),
        (bytes([0x85, 0]), "truncated"),
    ]:
        with pytest.raises(KaecError, match=message):
            bitstream.parse_header(data)


# ---- integrity ---------------------------------------------------------------------------------------

def _files(count, seed):
    """Real-looking files of several shapes."""
    tables, scales = laplace_tables()
    rng = np.random.default_rng(seed)
    files = []
    for i in range(count):
        if i % 4:
            symbols = laplace_symbols(rng, scales, 1).reshape(1, 1, 1, 32)
            files.append((_write(symbols, tables, codec_id=i % 32), symbols))
        else:
            symbols = laplace_symbols(rng, scales, 4).reshape(1, 2, 2, 32)
            files.append((_write(symbols, tables, width=50, height=40, codec_id=None), symbols))
    return tables, files


def _refused(data, tables, sha=SHA):
    try:
        _read(data, tables, sha)
    except KaecError:
        return True
    return False


def test_random_damage_to_many_files_is_refused():
    """Random corruption of 400 files, 10 ways each: random bytes over a random span, random bit flips,
    truncation, extra bytes. A CRC-16 misses random damage with probability 2**-16 per file, so none of
    these 4,000 should pass (expected 0.06)."""
    tables, files = _files(400, seed=3)
    rng = np.random.default_rng(4)
    damaged = passed = 0
    for data, _ in files:
        for way in range(10):
            buf = bytearray(data)
            if way < 4:
                start = int(rng.integers(0, len(buf)))
                stop = int(rng.integers(start + 1, len(buf) + 1))
                buf[start:stop] = rng.integers(0, 256, stop - start, dtype=np.uint8).tobytes()
            elif way < 7:
                for _ in range(int(rng.integers(1, 6))):
                    buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
            elif way < 9:
                buf = buf[:int(rng.integers(0, len(buf)))]
            else:
                buf += rng.integers(0, 256, int(rng.integers(1, 4)), dtype=np.uint8).tobytes()
            if bytes(buf) == data:
                continue
            damaged += 1
            passed += not _refused(bytes(buf), tables)
    assert damaged > 3900 and passed == 0


def test_the_check_misses_random_damage_with_probability_two_to_the_minus_16():
    """The integrity figure itself: 2**20 random replacements of a file's payload and check bytes; the CRC-16
    accepts about 2**-16 of them (16 expected; Poisson 99.99% range 3..37)."""
    tables, scales = laplace_tables()
    symbols = laplace_symbols(np.random.default_rng(5), scales, 8).reshape(1, 2, 4, 32)
    data = _write(symbols, tables, width=100, height=50, codec_id=None)
    header = bitstream.parse_header(data)
    identity = bytes.fromhex(SHA)
    start = binascii.crc_hqx(data[:header.size], binascii.crc_hqx(identity, 0xFFFF))
    n_tail = len(data) - header.size
    rng = np.random.default_rng(6)
    accepted = 0
    for _ in range(16):
        for row in rng.integers(0, 256, size=(2**16, n_tail), dtype=np.uint8):
            raw = row.tobytes()  # equal to the original with probability 2**(-8 * n_tail): ignored
            accepted += binascii.crc_hqx(raw[:-2], start).to_bytes(2, "big") == raw[-2:]
    assert 3 <= accepted <= 37, accepted


def test_files_of_another_model_are_refused():
    tables, files = _files(300, seed=7)
    for data, _ in files:
        header = bitstream.parse_header(data)
        with pytest.raises(KaecError, match="another model"):
            bitstream.read_payload(data, header, tables, OTHER, TILE)


def test_every_truncation_is_refused():
    tables, files = _files(40, seed=8)
    for data, _ in files:
        for n in range(len(data)):
            assert _refused(data[:n], tables), n


# ---- golden files --------------------------------------------------------------------------------------

GOLDEN_CASES = {
    # name: (grid, width, height, mode, fit, codec_id, scale, seed)
    "compact-id5": ((1, 1, 1), 28, 28, "L", "tile", 5, 1.0, 20),
    "rgb-70x50-hash": ((3, 2, 3), 70, 50, "RGB", "tile", None, 1.0, 21),
    "la-resize-id100": ((2, 1, 1), 300, 200, "LA", "resize", 100, 1.0, 22),
    "mode1-20x20-escapes-id3": ((1, 1, 1), 20, 20, "1", "tile", 3, 12.0, 23),
}


def _golden_tables() -> IntegerTables:
    with np.load(GOLDEN / "tables.npz") as z:
        return IntegerTables.from_arrays(dict(z), "tables.npz")


def make_golden() -> None:
    """Write the golden files (deliberately only: `python tests/test_bitstream.py --write-golden`)."""
    GOLDEN.mkdir(parents=True, exist_ok=True)
    tables, scales = laplace_tables(dims=16, width=21, seed=12)
    np.savez(GOLDEN / "tables.npz", **tables.to_arrays())
    expected = {"weights_sha256": SHA, "tile": list(TILE), "files": {}}
    for name, (grid, width, height, mode, fit, codec_id, scale, seed) in GOLDEN_CASES.items():
        rng = np.random.default_rng(seed)
        symbols = laplace_symbols(rng, scales * scale, int(np.prod(grid))).reshape(*grid, 16)
        data = _write(symbols, tables, width=width, height=height, mode=mode, fit=fit, codec_id=codec_id)
        (GOLDEN / f"{name}.kae").write_bytes(data)
        expected["files"][name] = {"width": width, "height": height, "mode": mode, "fit": fit, "codec_id": codec_id,
                                   "grid": list(grid), "symbols": symbols.reshape(-1).tolist()}
    (GOLDEN / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    make_golden_pixels()


def make_golden_pixels() -> None:
    """A small fixed network exported as a codec model with the golden tables (export/), and the pixels the
    library decodes from each golden file with it (NAME.png), with the platform they were decoded on."""
    import platform
    import shutil

    import onnxruntime
    import torch

    from kaecompress.experiments.data import load_images
    from kaecompress.exporters import export
    from kaecompress.nn.models import CNNKAE

    torch.manual_seed(0)
    model = CNNKAE(latent_dim=16, channels=[2], kernel_size=7, decoder_kae_order=2, output_activation="sigmoid")
    folder = GOLDEN / "export"
    shutil.rmtree(folder, ignore_errors=True)
    export(model, folder, ("onnx",), images=load_images("mnist", False)[:64], source="tests/test_bitstream.py",
           weights_sha256=SHA, prior=_golden_tables())  # no codec id: the files use several
    (folder / "kae_decode.py").unlink()  # the tests run the current one
    manifest = json.loads((folder / "manifest.json").read_text())
    del manifest["files"]["kae_decode.py"]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    for name in GOLDEN_CASES:
        _library_decode(GOLDEN / f"{name}.kae").save(GOLDEN / f"{name}.png")
    platform_info = {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__}
    (GOLDEN / "pixels.json").write_text(json.dumps(platform_info, indent=1) + "\n")


def _library_decode(path: Path):
    """kaecompress's own decode of a golden file with the golden export: bitstream, onnxruntime, assembly."""
    from kaecompress.codec.images import Codec
    from kaecompress.runtime.backend import OnnxBackend
    from kaecompress.codec.containers import Encoded

    data = path.read_bytes()
    header, symbols = _read(data, _golden_tables())
    header = header.with_tile(TILE)
    assembler = object.__new__(Codec)  # only the decoder and the tile size are needed to put tiles together
    assembler.backend, assembler.batch_size = OnnxBackend(GOLDEN / "export"), 256
    assembler.channels, (assembler.height, assembler.width), assembler.latent_dim = 1, TILE, 16
    return assembler.decompress(Encoded(symbols.astype(np.float32), header.width, header.height, header.mode,
                                        header.fit))


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("L") if image.mode == "1" else image)


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_files_decode_to_their_committed_pixels(name, tmp_path):
    """Bit for bit on the platform and onnxruntime that wrote them (float decoders may differ in the last
    bits elsewhere: within 1 level), by the library and by the export's reference decoder alike."""
    import platform

    import onnxruntime
    from PIL import Image

    with Image.open(GOLDEN / f"{name}.png") as im:
        committed, mode, size = _pixels(im), im.mode, im.size
    recorded = json.loads((GOLDEN / "pixels.json").read_text())
    same_platform = recorded == {"machine": platform.machine(), "onnxruntime": onnxruntime.__version__}
    ours = _library_decode(GOLDEN / f"{name}.kae")
    r = isolated_python(Path(__file__).parents[1] / "exporters" / "kae_decode.py", GOLDEN / f"{name}.kae", "-o",
                         tmp_path / "out.png", "--export", GOLDEN / "export", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "out.png") as im:
        reference = _pixels(im)
        assert (im.mode, im.size) == (mode, size)
    assert (ours.mode, ours.size) == (mode, size)
    for pixels in (_pixels(ours), reference):
        if same_platform:
            assert np.array_equal(pixels, committed)
        else:
            assert np.abs(pixels.astype(int) - committed).max() <= 1


@pytest.mark.parametrize("name", sorted(GOLDEN_CASES))
def test_golden_files_decode_to_their_committed_symbols(name):
    expected = json.loads((GOLDEN / "expected.json").read_text())
    info = expected["files"][name]
    tables = _golden_tables()
    data = (GOLDEN / f"{name}.kae").read_bytes()
    header, symbols = _read(data, tables, expected["weights_sha256"], tuple(expected["tile"]))
    full = header.with_tile(tuple(expected["tile"]))
    assert (full.width, full.height, full.mode, full.fit, full.codec_id, list(full.grid)) == \
        (info["width"], info["height"], info["mode"], info["fit"], info["codec_id"], info["grid"])
    assert symbols.reshape(-1).tolist() == info["symbols"]
    # and today's writer still produces the committed bytes
    again = _write(symbols, tables, width=info["width"], height=info["height"], mode=info["mode"],
                   fit=info["fit"], codec_id=info["codec_id"])
    assert again == data


def test_golden_escapes_file_holds_escapes():
    expected = json.loads((GOLDEN / "expected.json").read_text())
    tables = _golden_tables()
    values = np.array(expected["files"]["mode1-20x20-escapes-id3"]["symbols"]).reshape(-1, 16)
    k = tables.symbols
    assert ((values < tables.offsets) | (values > tables.offsets + k - 2)).any()



# ---- the standalone reference decoder of export folders -------------------------------------------------

from test_rangecoder import digit_model, digit_run  # noqa: E402,F401  (module fixtures: one short training)


@pytest.fixture(scope="module")
def codec_export(digit_run, digit_model, mnist_val, tmp_path_factory):
    """The tiny model exported with Laplace tables over its 8 latents, as a codec model (codec id 9)."""
    from kaecompress.exporters import export

    tables, _ = laplace_tables(dims=8, width=15, seed=30)
    out = tmp_path_factory.mktemp("codec-export") / "exported"
    export(digit_model, out, ("onnx",), images=mnist_val[:64], source=str(digit_run), prior=tables, codec_id=9)
    return out, tables


def test_export_adds_tables_reference_decoder_and_bitstream_description(codec_export, digit_model, mnist_val):
    from kaecompress.exporters import check_files, verify_dir

    out, tables = codec_export
    manifest = check_files(out)  # every listed file present with its sha256
    assert set(verify_dir(out, digit_model, mnist_val[:64])) == {"encoder.onnx", "decoder.onnx"}
    assert {"prior.npz", "kae_decode.py", "decoder.onnx", "encoder.onnx"} <= set(manifest["files"])
    assert manifest["bitstream"]["codec_id"] == 9 and manifest["bitstream"]["tables"] == "prior.npz"
    # readers that collect the exported formats (the export cache) see only real ones
    assert {info["format"] for info in manifest["files"].values()} == {"onnx"}
    with np.load(out / "prior.npz", allow_pickle=False) as z:
        back = IntegerTables.from_arrays(dict(z))
    assert np.array_equal(back.freqs, tables.freqs) and np.array_equal(back.offsets, tables.offsets)
    source = Path(__file__).parents[1] / "exporters" / "kae_decode.py"
    assert (out / "kae_decode.py").read_bytes() == source.read_bytes()


def test_a_codec_model_exports_its_own_tables(mnist_val, tmp_path):
    """A model with a frozen prior needs no `prior=`: its own integer tables go into the export."""
    import torch

    from kaecompress.exporters import export
    from kaecompress.nn.models import CNNKAE

    torch.manual_seed(0)
    model = CNNKAE(latent_dim=8, channels=[4], kernel_size=7, decoder_kae_order=2, output_activation="sigmoid",
                   prior="factorized")
    model.prior.freeze()
    export(model, tmp_path / "out", ("onnx",), images=mnist_val[:64])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["bitstream"]["reference_decoder"] == "kae_decode.py"
    with np.load(tmp_path / "out" / "prior.npz", allow_pickle=False) as z:
        assert np.array_equal(z["freqs"], model.prior.tables().freqs)


def _library_pixels(run, symbols, header, backend, monkeypatch, tmp_path):
    """What kaecompress decodes from the latent integers: its Codec on the given backend, as a uint8 array."""
    from kaecompress.codec.images import Codec
    from kaecompress.codec.containers import Encoded
    from kaecompress.experiments.loading import load_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    codec = Codec(load_model(run), backend=backend)
    enc = Encoded(symbols.astype(np.float32), header.width, header.height, header.mode, header.fit)
    im = codec.decompress(enc)
    return np.asarray(im.convert("L") if im.mode == "1" else im)


def test_reference_decoder_gives_the_library_pixels_without_kaecompress(codec_export, digit_run, digit_model,
                                                                        mnist_val, tmp_path, monkeypatch):
    import torch
    from PIL import Image

    out, tables = codec_export
    sha = json.loads((out / "manifest.json").read_text())["weights_sha256"]
    with torch.no_grad():
        z = torch.round(digit_model.eval().encoder(mnist_val[:24])).long().numpy()
    cases = {  # name: (symbols, width, height, mode, fit, codec id)
        "digit": (z[:1].reshape(1, 1, 1, 8), 28, 28, "L", "tile", 9),
        "rgb": (z[:18].reshape(3, 2, 3, 8), 70, 50, "RGB", "tile", None),
        "mode1": (z[18:19].reshape(1, 1, 1, 8), 20, 20, "1", "tile", 9),
        "la-resize": (z[19:21].reshape(2, 1, 1, 8), 40, 30, "LA", "resize", 9),
        "escapes": (np.array([[[[-300, 400, 0, 2**20, -7, 7, 0, 1]]]]), 28, 28, "L", "tile", 9),
    }
    for name, (symbols, width, height, mode, fit, codec_id) in cases.items():
        data = bitstream.write(symbols, width=width, height=height, mode=mode, fit=fit, tables=tables,
                               weights_sha256=sha, codec_id=codec_id, tile=TILE)
        (tmp_path / f"{name}.kae").write_bytes(data)
        r = isolated_python(out / "kae_decode.py", tmp_path / f"{name}.kae", "-o", tmp_path / f"{name}.png",
                             cwd=tmp_path)
        assert r.returncode == 0, (name, r.stderr)
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.mode == mode and im.size == (width, height)
            theirs = np.asarray(im.convert("L") if mode == "1" else im)
        header, back = _read(data, tables, sha)
        assert np.array_equal(back, symbols)
        header = header.with_tile(TILE)
        same_backend = _library_pixels(digit_run, back, header, "onnx", monkeypatch, tmp_path)
        assert np.array_equal(theirs, same_backend), name  # bit for bit on the same backend and machine
        torch_pixels = _library_pixels(digit_run, back, header, "torch", monkeypatch, tmp_path)
        assert np.abs(theirs.astype(int) - torch_pixels).max() <= 1, name  # within 1 level across backends


def test_reference_decoder_refuses_damaged_and_foreign_files(codec_export, tmp_path):
    out, tables = codec_export
    sha = json.loads((out / "manifest.json").read_text())["weights_sha256"]
    symbols = np.array([[[[0, 1, -1, 2, 0, 0, 3, -2]]]])
    good = bitstream.write(symbols, width=28, height=28, mode="L", fit="tile", tables=tables,
                           weights_sha256=sha, codec_id=9, tile=TILE)
    bad = {
        "flipped": good[:2] + bytes([good[2] ^ 0x10]) + good[3:],
        "truncated": good[:-1],
        "other-id": bytes([0x80 | 10]) + good[1:],
        "other-model": bitstream.write(symbols, width=28, height=28, mode="L", fit="tile", tables=tables,
                                       weights_sha256=OTHER, codec_id=9, tile=TILE),
        "version1": containers.to_kae(containers.Encoded(np.zeros((1, 1, 1, 8), np.float32), 28, 28,
                                                         weights_sha256=sha)),
    }
    for name, data in bad.items():
        (tmp_path / f"{name}.kae").write_bytes(data)
        r = isolated_python(out / "kae_decode.py", tmp_path / f"{name}.kae", "-o", tmp_path / f"{name}.png",
                             cwd=tmp_path)
        assert r.returncode == 2, (name, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert not (tmp_path / f"{name}.png").exists()

if __name__ == "__main__":
    if sys.argv[1:] == ["--write-golden"]:
        make_golden()
    else:
        sys.exit("usage: python tests/test_bitstream.py --write-golden  (rewrites tests/data/golden/)")
