import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kaecompress import KaecError
from kaecompress.codec.images import Codec
from kaecompress.codec.containers import from_kae, to_kae
from kaecompress.experiments.loading import load_model

from conftest import kaec


def digit(mnist_val, i=0) -> Image.Image:
    return Image.fromarray((mnist_val[i, 0].numpy() * 255).round().astype(np.uint8), "L")


def test_round_trip_of_a_digit_through_each_container(env, mnist_val, tmp_path):
    digit(mnist_val).save(tmp_path / "d.png")
    for suffix in (".kae", ".npz", ".npy"):
        r = kaec("encode", tmp_path / "d.png", "-o", tmp_path / f"z{suffix}", "-m", "tiny-a", env=env)
        assert r.returncode == 0, r.stderr
        r = kaec("decode", tmp_path / f"z{suffix}", "-o", tmp_path / f"out{suffix}.png", "-m", "tiny-a", env=env)
        assert r.returncode == 0, r.stderr
        with Image.open(tmp_path / f"out{suffix}.png") as out:
            assert out.size == (28, 28) and out.mode == "L"
    assert np.load(tmp_path / "z.npy").shape == (8,)  # one tile: one latent vector
    assert np.load(tmp_path / "z.npy").dtype == np.float32
    assert (tmp_path / "z.kae").stat().st_size < 64


def test_the_decoded_image_is_the_models_reconstruction(env, mnist_val):
    loaded = load_model("tiny-a")
    codec = Codec(loaded)
    im = digit(mnist_val, 3)
    enc = codec.compress(im)
    with torch.no_grad():
        z = loaded.model.encoder(mnist_val[3:4])
        expected = loaded.model(mnist_val[3:4])[0, 0].numpy()
    np.testing.assert_allclose(enc.latents.reshape(1, -1), z.numpy(), atol=1e-6)
    out = np.asarray(codec.decompress(enc), dtype=np.float64) / 255
    assert np.abs(out - expected).max() <= 0.5 / 255 + 1e-6  # only the rounding to 8 bits


def test_large_colour_images_are_tiled_and_come_back_at_their_size_and_mode(env, mnist_val):
    codec = Codec(load_model("tiny-a"))
    rgb = Image.new("RGB", (70, 45), (10, 200, 30))
    rgb.paste(digit(mnist_val).convert("RGB"), (5, 5))
    enc = codec.compress(rgb)
    assert enc.latents.shape == (3, 2, 3, 8)
    out = codec.decompress(enc)
    assert out.size == (70, 45) and out.mode == "RGB"
    resized = codec.compress(rgb, fit="resize")
    assert resized.latents.shape == (3, 1, 1, 8)
    assert codec.decompress(resized).size == (70, 45)
    for mode, expected in (("LA", "LA"), ("RGBA", "RGBA"), ("1", "1"), ("P", "RGB"), ("I;16", "L")):
        im = digit(mnist_val).convert("RGBA" if mode == "RGBA" else "L").convert(mode) if mode != "I;16" else \
            Image.fromarray((mnist_val[0, 0].numpy() * 65535).astype(np.uint16))
        back = codec.decompress(codec.compress(im))
        assert (back.mode, back.size) == (expected, (28, 28)), mode


def test_a_directory_of_mixed_formats_in_one_batch(env, mnist_val, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for i, fmt in enumerate(["PNG", "JPEG", "BMP", "TIFF", "WEBP"]):
        digit(mnist_val, i).save(src / f"img{i}.{fmt.lower()}", format=fmt)
    r = kaec("encode", src, "-o", tmp_path / "z", "-m", "tiny-a", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [row["output"].rsplit("/", 1)[1] for row in json.loads(r.stdout)] == [f"img{i}.kae" for i in range(5)]
    r = kaec("decode", tmp_path / "z", "-o", tmp_path / "out", "--json", env=env)  # model found from the files
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"img{i}.png" for i in range(5)]


def test_torch_and_onnx_backends_agree(env, mnist_val, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    loaded = load_model("tiny-a")
    torch_codec, onnx_codec = Codec(loaded, "torch"), Codec(loaded, "onnx")
    images = [digit(mnist_val, i) for i in range(40)] + [Image.new("L", (60, 33), 128)]
    a, b = torch_codec.compress_many(images), onnx_codec.compress_many(images)
    for x, y in zip(a, b):
        assert np.abs(x.latents - y.latents).max() <= 1e-4
    z = np.concatenate([e.latents.reshape(-1, 8) for e in a])
    assert np.abs(torch_codec.backend.decode(z) - onnx_codec.backend.decode(z)).max() <= 1e-4
    assert not (tmp_path / "cache").exists()  # a shipped model runs its own graphs: nothing is exported


def test_kae_quantisation(env, mnist_val):
    codec = Codec(load_model("tiny-a"))
    enc = codec.compress(digit(mnist_val))
    u8, kind = from_kae(to_kae(enc, "uint8"), "x")
    f16, _ = from_kae(to_kae(enc, "float16"), "x")
    span = enc.latents.max() - enc.latents.min()
    assert kind == "uint8" and np.abs(u8.latents - enc.latents).max() <= span / 255 / 2 + 1e-6
    assert np.abs(f16.latents - enc.latents).max() <= np.abs(enc.latents).max() * 2 ** -10
    assert len(to_kae(enc, "float16")) - len(to_kae(enc, "uint8")) == 8 - 8  # 8 more code bytes, no scale pair


def test_bad_inputs_are_exit_2_and_leave_no_output(env, mnist_val, tmp_path):
    digit(mnist_val).save(tmp_path / "d.png")
    data = (tmp_path / "d.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    cases = [
        (["encode", tmp_path / "cut.png", "-o", tmp_path / "o1.kae"], "cut.png: unreadable image"),
        (["encode", tmp_path / "d.png", "-o", tmp_path / "missing" / "z.kae"], "missing does not exist"),
    ]
    np.save(tmp_path / "shape.npy", np.zeros((3, 5), np.float32))
    np.save(tmp_path / "dtype.npy", np.zeros(8, np.float64))
    cases += [
        (["decode", tmp_path / "shape.npy", "-o", tmp_path / "o2.png", "-m", "tiny-a"], "latents must have shape"),
        (["decode", tmp_path / "dtype.npy", "-o", tmp_path / "o3.png", "-m", "tiny-a"], "must be float32, got float64"),
    ]
    assert kaec("encode", tmp_path / "d.png", "-o", tmp_path / "z.kae", "-m", "tiny-a", env=env).returncode == 0
    good = (tmp_path / "z.kae").read_bytes()
    (tmp_path / "magic.kae").write_bytes(b"XXXX" + good[4:])
    flipped = bytearray(good)
    flipped[30] ^= 1
    (tmp_path / "crc.kae").write_bytes(bytes(flipped))
    cases += [
        (["decode", tmp_path / "magic.kae", "-o", tmp_path / "o4.png"], "not a .kae file (bad magic"),
        (["decode", tmp_path / "crc.kae", "-o", tmp_path / "o5.png"], "checksum mismatch"),
        (["decode", tmp_path / "z.kae", "-o", tmp_path / "o6.png", "-m", "tiny-b"],
         "encoded with another model"),
    ]
    for args, message in cases:
        r = kaec(*args, env=env)
        assert r.returncode == 2, (args, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("o") or p.name.startswith(".")]
    assert "tiny-a" in kaec("decode", tmp_path / "z.kae", "-o", tmp_path / "o7.png", "-m", "tiny-b", env=env).stderr


def test_models_lists_the_cards(env):
    r = kaec("models", "--json", env=env)
    cards = json.loads(r.stdout)
    assert set(cards) == {"tiny-a", "tiny-b"}
    card = cards["tiny-a"]
    assert card["dataset"] == "mnist" and card["params"] > 0 and card["compression_ratio"] == 98.0
    assert {"mse", "psnr_db", "psnr_of_mse_db"} <= set(card["metrics"])
    with pytest.raises(KaecError, match="no such trained model"):
        load_model("tiny-c")


def test_damaged_weights_are_refused(env, zoo, tmp_path):
    import shutil

    copy = tmp_path / "trained"
    shutil.copytree(zoo, copy)
    data = bytearray((copy / "tiny-a.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (copy / "tiny-a.safetensors").write_bytes(bytes(data))
    r = kaec("models", env={"KAEC_TRAINED": str(copy)})
    assert r.returncode == 0
    r = kaec("encode", "x.png", "-o", tmp_path / "z.kae", "-m", "tiny-a", env={"KAEC_TRAINED": str(copy)})
    assert r.returncode == 2


def test_headers_that_do_not_describe_an_image_are_refused(env, mnist_val, tmp_path):
    import io

    from kaecompress.codec.containers import Encoded, read, to_npz

    codec = Codec(load_model("tiny-a"))
    enc = codec.compress(digit(mnist_val))
    (tmp_path / "zip.npz").write_bytes(b"PK\x03\x04garbage")
    bad = {
        "width0.npz": Encoded(enc.latents, 0, 28, "L"),
        "grid.npz": Encoded(enc.latents, 500, 28, "L"),
        "mode.npz": Encoded(enc.latents, 28, 28, "RGB"),
    }
    for name, e in bad.items():
        (tmp_path / name).write_bytes(to_npz(e))
    buf = io.BytesIO()
    np.savez(buf, latents=enc.latents, width="abc", height=28, mode="L", fit="tile", model="", weights_sha256="")
    (tmp_path / "text.npz").write_bytes(buf.getvalue())
    for name, message in (("zip.npz", "not a readable .npz"), ("width0.npz", "image size 0x28"),
                          ("grid.npz", "needs 1x18 tiles"), ("mode.npz", "do not fit mode RGB"),
                          ("text.npz", "not a readable .npz")):
        with pytest.raises(KaecError, match=message):
            read(tmp_path / name, 8, (28, 28))
    r = kaec("decode", tmp_path / "zip.npz", "-o", tmp_path / "o.png", "-m", "tiny-a", env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "o.png").exists()


def test_a_header_claiming_a_huge_image_is_refused_before_decoding(env, mnist_val, tmp_path):
    codec = Codec(load_model("tiny-a"))
    enc = codec.compress(digit(mnist_val), fit="resize")
    enc.width = enc.height = 60000  # 59 bytes that would decode to a 3.6-gigapixel image
    (tmp_path / "big.kae").write_bytes(to_kae(enc))
    assert from_kae((tmp_path / "big.kae").read_bytes(), "big")[0].width == 60000  # the CRC is valid
    r = kaec("decode", tmp_path / "big.kae", "-o", tmp_path / "big.png", "-m", "tiny-a", env=env)
    assert r.returncode == 2 and "image size 60000x60000 (3,600,000,000 pixels) is over the 40,000,000-pixel limit" in r.stderr
    assert not (tmp_path / "big.png").exists()


def test_a_file_from_a_model_that_is_not_shipped_says_to_pass_it(env, mnist_val, tmp_path):
    digit(mnist_val).save(tmp_path / "d.png")
    assert kaec("encode", tmp_path / "d.png", "-o", tmp_path / "z.kae", "-m", "tiny-a", env=env).returncode == 0
    other = tmp_path / "trained"  # a trained/ folder without tiny-a
    other.mkdir()
    for suffix in (".json", ".safetensors"):  # only the default model
        (other / f"mnist-kae-dec3{suffix}").write_bytes((Path("trained") / f"mnist-kae-dec3{suffix}").read_bytes())
    r = kaec("decode", tmp_path / "z.kae", "-o", tmp_path / "o.png", env={**env, "KAEC_TRAINED": str(other)})
    assert r.returncode == 2 and "encoded with another model" in r.stderr
    assert "pass --model with the run folder or checkpoint that encoded it" in r.stderr


def test_a_damaged_export_cache_is_rebuilt(env, zoo, mnist_val, mnist_root, tmp_path):
    """A run folder has no shipped graphs: --backend onnx exports it once into the user's cache."""
    digit(mnist_val).save(tmp_path / "d.png")
    env = {**env, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = ("encode", tmp_path / "d.png", "-o", tmp_path / "z.npy", "-m", zoo.parent / "tiny-a", "--backend", "onnx",
            "--data-root", mnist_root)
    assert kaec(*args, env=env).returncode == 0
    (manifest,) = (tmp_path / "cache").rglob("manifest.json")
    first = np.load(tmp_path / "z.npy")
    manifest.write_text(manifest.read_text()[:50])  # truncated
    r = kaec(*args, env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(manifest.read_text())["files"] and np.array_equal(np.load(tmp_path / "z.npy"), first)


@pytest.mark.parametrize("mode, size", [("RGBA", (300, 250)), ("L", (1000, 30)), ("RGB", (95, 61)), ("1", (200, 90))])
def test_large_images_in_strips_match_the_whole_image_path(monkeypatch, mode, size):
    """Issue 26 case 10: images over STRIP_TILES tiles are encoded and decoded a strip at a time. With tiny
    strips (rows and columns split) the latents, the domain check and the pixels equal the one-pass path's."""
    import kaecompress.codec.images as codec_module

    codec = Codec(load_model("mnist-q2"))
    rng = np.random.default_rng(len(mode))
    channels = {"1": 1, "L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = (rng.random((size[1], size[0], channels)) * 255).astype(np.uint8)
    im = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).convert(mode)
    for fit in ("tile", "resize"):
        (whole,), (whole_check,) = codec._compress_together([im], fit, True)
        whole_image = codec.decompress(whole)
        monkeypatch.setattr(codec_module, "STRIP_TILES", 7)
        strips, strips_check = codec._compress_in_strips(im, fit, True)
        assert np.array_equal(strips.latents, whole.latents) and strips_check == whole_check
        assert codec.compress_many([im], fit)[0].grid == whole.grid  # routed to the strips by its size
        image = codec.decompress(strips)
        monkeypatch.setattr(codec_module, "STRIP_TILES", 4096)
        assert image.mode == whole_image.mode == mode and np.array_equal(np.asarray(image), np.asarray(whole_image))


def test_a_large_batch_prints_a_screenful_and_names_all_in_json(mnist_val, tmp_path):
    """Thousands of outputs: the table shows the first TABLE_ROWS and what the rest add up to; --json all."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(23):
        digit(mnist_val, i).save(src / f"d{i:02d}.png")
    r = kaec("encode", src, "-o", tmp_path / "z", "--backend", "onnx")
    assert r.returncode == 0, r.stderr
    total = sum(p.stat().st_size for p in (tmp_path / "z").iterdir())
    assert "23 files encoded" in r.stdout and "d19.kae" in r.stdout and "d20.kae" not in r.stdout
    assert f"and 3 more, {total:,} bytes in all; --json lists every file" in r.stdout
    r = kaec("decode", tmp_path / "z", "-o", tmp_path / "out", "--json")
    assert r.returncode == 0 and len(json.loads(r.stdout)) == 23
