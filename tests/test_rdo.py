"""Rate–distortion optimised rounding (`kaecompress.codec.rdo`, `kaec encode --rdo`): on real test digits and the
shipped codec models, the search never raises a digit's cost, its bits are the coder's information content,
its files decode with the plain decoder to exactly the latents it chose, and it buys PSNR, not bytes."""

import numpy as np
import pytest
from PIL import Image

from conftest import kaec

from kaecompress.codec import rangecoder, rdo
from kaecompress.codec.images import Codec
from kaecompress.experiments.codecstats import psnr_8bit, to_pixels
from kaecompress.errors import KaecError
from kaecompress.experiments.loading import load_model

N = 96


def setup(name, images):
    loaded = load_model(name)
    codec = Codec(loaded)
    tiles = images[:N].numpy()
    return loaded, codec, tiles, codec.backend.encode(tiles)


def cost(codec, loaded, q, tiles):
    out = np.clip(codec.backend.decode(q.astype(np.float32)), 0, 1).reshape(len(q), -1)
    sse = ((out - tiles.reshape(len(q), -1)) ** 2).sum(1, dtype=np.float64)
    return rdo.latent_bits(q, codec.tables, codec.context) + loaded.config["codec"]["lmbda"] * 255.0**2 * sse


@pytest.mark.parametrize("name", ["mnist-q1", "mnist-q6"])  # without and with a context model
def test_the_search_never_raises_a_digit_s_cost_and_gains_psnr(name, mnist_val):
    loaded, codec, tiles, y = setup(name, mnist_val)
    lmbda = loaded.config["codec"]["lmbda"]
    plain = np.rint(y).astype(np.int64)
    steps = []
    q = rdo.refine(y, tiles, codec.backend.decode, codec.tables, codec.context, lmbda, sweeps=2,
                   progress=lambda done, total: steps.append((done, total)))
    assert steps[-1] == (2 * codec.latent_dim, 2 * codec.latent_dim) and len(steps) == 2 * codec.latent_dim
    assert np.abs(q - y).max() < 1.5  # each latent is one of the two integers around the encoder's value
    before, after = cost(codec, loaded, plain, tiles), cost(codec, loaded, q, tiles)
    assert (after <= before + 1e-6).all() and after.mean() < 0.97 * before.mean()
    ref = to_pixels(tiles)

    def psnr(latents):
        return psnr_8bit(to_pixels(np.clip(codec.backend.decode(latents.astype(np.float32)), 0, 1)), ref).mean()

    assert psnr(q) > psnr(plain) + 0.3
    assert rdo.refine(y, tiles, codec.backend.decode, codec.tables, codec.context, lmbda, sweeps=0).tolist() \
        == plain.tolist()


@pytest.mark.parametrize("name", ["mnist-q1", "mnist-q7"])
def test_its_bits_are_the_coder_s_information_content_escapes_included(name, mnist_val):
    loaded, codec, tiles, y = setup(name, mnist_val)
    q = np.rint(y).astype(np.int64)
    q[:4, 0] = codec.tables.offsets[0] - np.array([1, 40, 70_000, 2**20])       # below the table
    q[4:8, 1] = codec.tables.offsets[1] + codec.tables.symbols - 1 + np.array([0, 3, 900, 2**21])  # above
    symbols = codec.context.residuals(q) if codec.context is not None else q
    expected = [rangecoder.ideal_bits(s[None], codec.tables) for s in symbols]
    assert np.allclose(rdo.latent_bits(q, codec.tables, codec.context), expected, rtol=0, atol=1e-6)


def test_its_files_decode_with_the_plain_decoder_to_the_chosen_latents(mnist_val):
    loaded, codec, tiles, y = setup("mnist-q6", mnist_val)
    q = rdo.refine(y, tiles, codec.backend.decode, codec.tables, codec.context, loaded.config["codec"]["lmbda"], 1)
    searched = Codec(loaded, rdo_sweeps=1)
    pil = [Image.fromarray(p) for p in to_pixels(tiles)[:, 0]]
    files = searched.to_kae_many(searched.compress_many(pil))
    back = Codec(loaded).from_kae_many(files, ["digit"] * len(files))
    # the PNG round trip of the digits is exact, so the search sees the same tiles
    assert np.array_equal(np.stack([e.latents.reshape(-1) for e in back]), q)
    plain = Codec(loaded).to_kae_many(Codec(loaded).compress_many(pil))
    assert abs(np.mean([len(f) for f in files]) - np.mean([len(f) for f in plain])) < 0.05 * np.mean(
        [len(f) for f in plain])


def test_refine_refuses_a_bad_sweep_count_or_lambda(mnist_val):
    loaded, codec, tiles, y = setup("mnist-q1", mnist_val)
    for sweeps, lmbda, what in ((17, 1e-3, "0 to 16 sweeps"), (2, 0.0, "positive lambda")):
        with pytest.raises(KaecError, match=what):
            rdo.refine(y, tiles, codec.backend.decode, codec.tables, None, lmbda, sweeps)


def test_kaec_encode_rdo_end_to_end(tmp_path, mnist_val):
    digits = to_pixels(mnist_val[:12].numpy())[:, 0]
    for i, d in enumerate(digits):
        Image.fromarray(d).save(tmp_path / f"d{i}.png")
    pngs = [tmp_path / f"d{i}.png" for i in range(len(digits))]
    for sweeps in (0, 2):
        r = kaec("encode", *pngs, "-o", tmp_path / f"kae{sweeps}", "--quality", "4", "--rdo", sweeps)
        assert r.returncode == 0, r.stderr
        r = kaec("decode", tmp_path / f"kae{sweeps}", "-o", tmp_path / f"png{sweeps}")
        assert r.returncode == 0, r.stderr

    def measure(sweeps):
        size = np.mean([len((tmp_path / f"kae{sweeps}" / f"{p.stem}.kae").read_bytes()) for p in pngs])
        out = np.stack([np.asarray(Image.open(tmp_path / f"png{sweeps}" / p.name)) for p in pngs])
        return size, psnr_8bit(out[:, None], digits[:, None]).mean()

    (b0, p0), (b2, p2) = measure(0), measure(2)
    assert p2 > p0 + 0.5 and b2 < 1.1 * b0, (b0, p0, b2, p2)
    for args, message in (
        (("--model", "mnist-kae-dec3", "--rdo", "2"), "error: --rdo: mnist-kae-dec3 has no probability model"),
        (("--quality", "4", "--rdo", "17"), "error: Invalid value for '--rdo'"),
    ):
        r = kaec("encode", pngs[0], "-o", tmp_path / "x.kae", *args)
        assert r.returncode == 2 and r.stderr.startswith(message), r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x.kae").exists()


def test_kaec_rd_rdo_measures_each_codec_model_twice(mnist_root, tmp_path):
    from kaecompress.evaluation.rd import from_json, run_rd, to_json

    result = run_rd("mnist", ["mnist-q1,mnist-q3"], ["webp"], 16, qualities={"webp": [0, 50]},
                    data_root=mnist_root, rdo_sweeps=1)
    plain, searched = result.model_curves()
    assert (plain.name, searched.name) == ("mnist", "mnist --rdo 1") and searched.settings == {"rdo_sweeps": 1}
    assert "`kaec encode --rdo 1`" in searched.description
    assert [p.setting for p in searched.points] == [p.setting for p in plain.points] == ["mnist-q1", "mnist-q3"]
    for a, b in zip(plain.points, searched.points):
        assert b.psnr > a.psnr and b.bytes < 1.1 * a.bytes
    assert [c["anchor"] for c in searched.comparisons] == ["WebP"]
    again = from_json(to_json(result))
    assert [(c.name, c.settings) for c in again.model_curves()] == [("mnist", {}), ("mnist --rdo 1", {"rdo_sweeps": 1})]
