"""`kaec rd`: real Pillow and .kae files of real MNIST digits, metrics against hand-computed values, BD-rate
against known and published answers, the JSON layout, determinism and the command's errors."""

import io
import json
import math
import shutil
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from kaecompress import KaecError
from kaecompress.evaluation.bdrate import bd, pareto, rate_at_psnr
from kaecompress.evaluation.metrics import PSNR_CAP_DB, psnr_8bit, ssim
from kaecompress.evaluation.rd import (CODECS, Curve, RDResult, codec_files, compare, group_models, load_dataset,
                            model_files, payload_bytes, resolve_models, run_rd, score)
from kaecompress.experiments.loading import load_model

from conftest import kaec


@pytest.fixture(scope="module")
def digits(mnist_root):
    return load_dataset("mnist", 20, mnist_root)


# ---- metrics ----------------------------------------------------------------------------------------

def test_psnr_of_8bit_images_against_hand_computed_values(digits):
    ref = np.stack(digits[:3])
    off_by_one = ref.astype(int) + np.where(ref < 255, 1, -1)  # every pixel one level away: MSE 1
    one_pixel = ref.copy()
    one_pixel[:, 5, 7] = 255 - one_pixel[:, 5, 7]               # one pixel of 784 wrong by |255 - 2v|
    assert np.allclose(psnr_8bit(ref, off_by_one.astype(np.uint8)), 20 * math.log10(255))  # 48.13 dB
    expected = [10 * math.log10(255 ** 2 * 784 / (255 - 2 * int(v)) ** 2) for v in ref[:, 5, 7]]
    assert np.allclose(psnr_8bit(ref, one_pixel), expected)
    assert list(psnr_8bit(ref, ref)) == [PSNR_CAP_DB] * 3
    assert np.isinf(psnr_8bit(ref, ref, cap=None)).all()


def test_ssim_of_constant_images_has_its_closed_form():
    # Constant images: no variance anywhere, so SSIM is the luminance term alone, the same in every window.
    c1 = (0.01 * 255) ** 2
    for a, b in ((0, 0), (100, 110), (0, 255), (30, 200)):
        x, y = np.full((1, 28, 28), a, np.uint8), np.full((1, 28, 28), b, np.uint8)
        assert ssim(x, y)[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), abs=1e-12)


def _ssim_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al.'s formula written out: each 7x7 window inside the image, weighted by a normalised
    Gaussian (sigma 1.5), means, population variances and covariance, then the mean of the map."""
    t = np.arange(7) - 3
    w = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    values = []
    for i in range(x.shape[0] - 6):
        for j in range(x.shape[1] - 6):
            a, b = x[i:i + 7, j:j + 7].astype(float), y[i:i + 7, j:j + 7].astype(float)
            ma, mb = (w * a).sum(), (w * b).sum()
            va, vb, cov = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(values))


def test_ssim_matches_the_formula_written_out_on_real_jpeg_digits(digits):
    files, decoded = codec_files(CODECS["jpeg"], 10, digits[:4])
    ours = ssim(np.stack(digits[:4]), np.stack(decoded))
    for k in range(4):
        assert ours[k] == pytest.approx(_ssim_by_hand(digits[k], decoded[k]), abs=1e-10)
    assert ssim(np.stack(digits[:4]), np.stack(digits[:4])) == pytest.approx(1.0)
    rgb = np.stack([np.stack([d, d, d], axis=-1) for d in digits[:2]])
    rgb_dec = np.stack([np.stack([d, d, d], axis=-1) for d in decoded[:2]])
    assert np.allclose(ssim(rgb, rgb_dec), ours[:2])  # channels averaged


# ---- BD-rate ----------------------------------------------------------------------------------------

RATES = [120.0, 180.0, 260.0, 400.0, 610.0]
PSNRS = [21.0, 24.5, 27.8, 31.9, 35.2]


@pytest.mark.parametrize("method", ["pchip", "cubic", "akima"])
def test_a_shifted_copy_gives_exactly_its_shift(method):
    cheaper = bd(RATES, PSNRS, [r * 0.8 for r in RATES], PSNRS, method)
    assert cheaper["bd_rate"] == pytest.approx(-20.0, abs=1e-9)
    sharper = bd(RATES, PSNRS, RATES, [p + 0.5 for p in PSNRS], method)
    assert sharper["bd_psnr"] == pytest.approx(0.5, abs=1e-9)
    assert bd(RATES, PSNRS, RATES, PSNRS, method)["bd_rate"] == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_reproduces_the_published_jctvc_e137_figures():
    # JCTVC-E137's spreadsheet values (piecewise cubic), as Netflix's VMAF tests quote them: -0.4652 %, -1.8780 %.
    anchor = [(108048.8736, 43.6471), (61279.976, 40.3953), (33905.6656, 37.247), (18883.6928, 34.2911)]
    test = [(108061.2784, 43.6768), (61299.9936, 40.4232), (33928.7472, 37.2761), (18910.912, 34.3147)]
    got = bd(*zip(*anchor), *zip(*test))
    assert got["bd_rate"] == pytest.approx(-0.465215420752807, abs=1e-9)
    anchor = [(40433.8848, 37.5761), (7622.7456, 35.3756), (2394.488, 33.8977), (1017.6184, 32.0603)]
    test = [(40370.12, 37.5982), (7587.0024, 35.4025), (2390.0944, 33.9194), (1017.0984, 32.0822)]
    got = bd(*zip(*anchor), *zip(*test))
    assert got["bd_rate"] == pytest.approx(-1.8779823450567612, abs=1e-9)
    assert got["method"] == "pchip" and got["note"] is None and got["psnr_overlap"] > 0.9


def test_short_disjoint_and_inefficient_curves():
    three = bd(RATES, PSNRS, RATES[:3], PSNRS[:3])
    assert three["bd_rate"] is None and "fewer than 4" in three["note"]
    apart = bd(RATES, PSNRS, RATES, [p + 30 for p in PSNRS])
    assert apart["bd_rate"] is None and "no common PSNR range" in apart["note"]
    tiny = bd(RATES, PSNRS, [r / 50 for r in RATES], [p - 8 for p in PSNRS])  # overlapping PSNRs, not rates
    assert tiny["bd_rate"] < -90 and tiny["bd_psnr"] is None and "no common rate range" in tiny["note"]
    # JPEG quality 1 and 2 give the same files; a point costing more for less quality is dropped
    r, p = pareto([199.5, 199.5, 210.0, 230.0, 225.0], [19.1, 19.1, 20.5, 20.4, 22.0])
    assert r.tolist() == [199.5, 210.0, 225.0] and p.tolist() == [19.1, 20.5, 22.0]


def test_the_codec_rate_at_a_psnr_is_interpolated_never_extrapolated():
    rates = [100.0, 200.0, 400.0, 800.0]  # log rate linear in PSNR: every monotone interpolation is exact
    psnrs = [20.0, 23.0, 26.0, 29.0]
    assert rate_at_psnr(rates, psnrs, 24.5)["rate"] == pytest.approx(100 * 2 ** 1.5)
    low = rate_at_psnr(rates, psnrs, 18.9)
    assert low["rate"] is None and low["nearest"] == {"rate": 100.0, "psnr": 20.0}
    assert rate_at_psnr(rates, psnrs, 31.0)["nearest"] == {"rate": 800.0, "psnr": 29.0}


# ---- files ------------------------------------------------------------------------------------------

def test_payload_is_the_coded_image_inside_each_real_file(digits, env):
    d = digits[0]
    png = codec_files(CODECS["png"], None, [d])[0][0]
    idat = payload_bytes("PNG", png)
    assert idat < len(png)
    start = png.index(b"IDAT") + 4
    assert len(zlib.decompress(png[start:start + idat])) == 28 * 29  # filter byte + 28 pixels per row
    jpeg = codec_files(CODECS["jpeg"], 50, [d])[0][0]
    sos = jpeg.index(b"\xff\xda")
    scan_start = sos + 2 + int.from_bytes(jpeg[sos + 2:sos + 4], "big")
    assert jpeg.endswith(b"\xff\xd9") and payload_bytes("JPEG", jpeg) == len(jpeg) - scan_start - 2
    webp = codec_files(CODECS["webp"], 50, [d])[0][0]
    assert webp[12:16] == b"VP8 " and payload_bytes("WEBP", webp) == len(webp) - 20  # RIFF + chunk headers
    avif = codec_files(CODECS["avif"], 50, [d])[0][0]
    mdat = avif.index(b"mdat") + 4
    assert payload_bytes("AVIF", avif) == len(avif) - mdat
    # the AV1 bitstream: a temporal delimiter OBU (type 2, empty), then the sequence header OBU (type 1)
    assert avif[mdat:mdat + 2] == b"\x12\x00" and (avif[mdat + 2] >> 3) & 0xF == 1
    kae = model_files(load_model("tiny-a"), [d])[0][0]
    assert payload_bytes("KAE", kae) == 8 and len(kae) == 43 + 8  # 8 uint8 latents behind a 43-byte frame


def test_pillow_round_trips_of_real_digits(digits):
    for name, quality in (("jpeg", 95), ("webp", 90), ("avif", 60), ("png", None)):
        codec = CODECS[name]
        files, decoded = codec_files(codec, quality, digits[:5])
        for data, dec, ref in zip(files, decoded, digits[:5]):
            with Image.open(io.BytesIO(data)) as im:
                assert im.format == codec.pillow_format and im.size == (28, 28)
            assert dec.shape == ref.shape and dec.dtype == np.uint8
        scores = psnr_8bit(np.stack(digits[:5]), np.stack(decoded), cap=None)
        assert np.isinf(scores).all() if name == "png" else (scores > 35).all() and np.isfinite(scores).all()
    small = codec_files(CODECS["jpeg"], 1, digits[:5])[0]
    big = codec_files(CODECS["jpeg"], 95, digits[:5])[0]
    assert sum(map(len, small)) < sum(map(len, big))


def test_model_files_are_what_kaec_encode_writes_and_decode_reads(env, digits, tmp_path):
    # One batch in both: PyTorch's float results may differ in the last bit between batch compositions.
    files, decoded = model_files(load_model("tiny-a"), digits[:3])
    (tmp_path / "in").mkdir()
    for i in range(3):
        Image.fromarray(digits[i], "L").save(tmp_path / "in" / f"d{i}.png")
    r = kaec("encode", tmp_path / "in", "-o", tmp_path / "kae", "-m", "tiny-a", env=env)
    assert r.returncode == 0, r.stderr
    assert [(tmp_path / "kae" / f"d{i}.kae").read_bytes() for i in range(3)] == files
    r = kaec("decode", tmp_path / "kae", "-o", tmp_path / "out", env=env)
    assert r.returncode == 0, r.stderr
    for i in range(3):
        with Image.open(tmp_path / "out" / f"d{i}.png") as im:
            assert np.array_equal(np.asarray(im), decoded[i])


# ---- models and families ----------------------------------------------------------------------------

@pytest.fixture
def family(zoo, tmp_path, monkeypatch):
    """tiny-b and tiny-a shipped again as qualities 1 and 2 of a family `tiny`, beside a model without one."""
    dest = tmp_path / "trained"
    dest.mkdir()
    for name, new, quality in (("tiny-a", "tiny-q2", 2), ("tiny-b", "tiny-q1", 1), ("tiny-a", "tiny-a", None)):
        card = json.loads((zoo / f"{name}.json").read_text())
        shutil.copy(zoo / card["weights_file"], dest / card["weights_file"])
        card["name"] = new
        if quality:
            card.update(family="tiny", quality=quality)
        (dest / f"{new}.json").write_text(json.dumps(card))
    monkeypatch.setenv("KAEC_TRAINED", str(dest))
    return {"KAEC_TRAINED": str(dest)}


def test_models_resolve_by_name_family_and_comma_lists(family):
    names = [m.name for m in resolve_models(["tiny"], "mnist")]
    assert names == ["tiny-q1", "tiny-q2"]  # the family, by quality
    models = resolve_models(["tiny-a,tiny-q2", "tiny-a"], "mnist")
    assert [m.name for m in models] == ["tiny-a", "tiny-q2"]
    groups = group_models(resolve_models(["tiny-a", "tiny"], "mnist"))
    assert [(label, [m.name for m in ms]) for label, ms in groups] == [("tiny-a", ["tiny-a"]),
                                                                      ("tiny", ["tiny-q1", "tiny-q2"])]
    assert resolve_models(["none"], "mnist") == []
    with pytest.raises(KaecError, match="no such trained model, model family.*families: tiny"):
        resolve_models(["tiny-z"], "mnist")


def test_a_short_family_gets_the_codec_bytes_at_its_psnr(family, mnist_root):
    result = run_rd("mnist", ["tiny"], ["jpeg"], 20, qualities={"jpeg": [1, 10, 30, 60, 90]}, data_root=mnist_root)
    curve = result.model_curves()[0]
    assert curve.name == "tiny" and [p.setting for p in curve.points] == ["tiny-q1", "tiny-q2"]
    assert [p.quality for p in curve.points] == [1, 2]
    (row,) = curve.comparisons
    assert row["anchor"] == "JPEG" and row["bd_rate"] is None and "fewer than 4" in row["note"]
    jpeg = result.codec_curves()[0]
    for s, p in zip(row["at_same_psnr"], curve.points):
        expected = rate_at_psnr([q.bytes for q in jpeg.points], [q.psnr for q in jpeg.points], p.psnr)
        assert s["anchor_bytes"] == expected["rate"] and s["anchor_nearest"] == expected["nearest"]
        assert s["bytes"] == p.bytes == 43 + 8


def test_bd_of_a_real_curve_against_another(digits):
    # WebP standing in for a model family: its BD-rate against JPEG comes from the same measured points.
    def measure(name, qualities):
        curve = Curve(CODECS[name].name, "codec", name, len(digits))
        for q in qualities:
            clock = {}
            files, decoded = codec_files(CODECS[name], q, digits, clock)
            curve.points.append(score(digits, files, decoded, CODECS[name].pillow_format, clock, q))
        return curve

    jpeg, webp = measure("jpeg", [10, 20, 30, 50, 75, 90]), measure("webp", [0, 10, 25, 50, 75, 90, 100])
    webp.kind = "model"
    result = RDResult("mnist", len(digits), [jpeg, webp])
    compare(result)
    (row,) = webp.comparisons
    direct = bd([p.bytes for p in jpeg.points], [p.psnr for p in jpeg.points],
                [p.bytes for p in webp.points], [p.psnr for p in webp.points])
    assert row["bd_rate"] == direct["bd_rate"] and row["bd_rate"] < -30  # WebP needs far fewer bytes
    assert row["bd_psnr"] > 3 and "at_same_psnr" not in row


# ---- the whole measurement --------------------------------------------------------------------------

def test_the_same_files_and_scores_twice(env, mnist_root):
    def once():
        r = run_rd("mnist", ["tiny-a"], ["jpeg", "webp", "avif"], 12, qualities={"jpeg": [5, 50], "webp": [0, 50],
                   "avif": [0, 50]}, data_root=mnist_root)
        return [(c.name, [(p.bytes, p.payload_bytes, p.psnr, p.ssim) for p in c.points]) for c in r.curves]

    assert once() == once()
    digits = load_dataset("mnist", 5, mnist_root)
    assert codec_files(CODECS["avif"], 30, digits)[0] == codec_files(CODECS["avif"], 30, digits)[0]


def test_a_folder_of_mixed_images(env, digits, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(digits[0], "L").save(folder / "a.png")
    Image.fromarray(np.tile(digits[1], (2, 2))[:40, :33], "L").save(folder / "b.png")
    Image.fromarray(np.stack([digits[2], digits[3], digits[4]], axis=-1), "RGB").save(folder / "c.png")
    pixels = load_dataset(f"folder:{folder}")
    assert [p.shape for p in pixels] == [(28, 28), (40, 33), (28, 28, 3)]
    r = run_rd(f"folder:{folder}", ["tiny-a"], ["png", "jpeg"], qualities={"jpeg": [50]})
    png, jpeg, model = r.curves
    assert png.lossless and png.points[0].exact_images == 3
    assert model.points[0].bytes == pytest.approx((51 + 43 + 2 * 2 * 8 + 43 + 3 * 8) / 3)  # tiles x planes
    assert 0 < jpeg.points[0].ssim < 1 and math.isfinite(jpeg.points[0].psnr)


def test_kaec_rd_writes_table_json_and_figure_in_seconds(env, mnist_root, tmp_path):
    start = time.monotonic()
    r = kaec("rd", "--images", "20", "--avif-images", "5", "--codecs", "jpeg,webp", "--codecs", "avif,png",
             "--model", "tiny-a,tiny-b", "--json-file", tmp_path / "rd.json", "--json-dir", tmp_path / "each",
             "--plot", tmp_path / "rd.png", "--data-root", mnist_root, env=env)
    elapsed = time.monotonic() - start
    assert r.returncode == 0, r.stderr
    assert elapsed < 60, elapsed
    assert "AVIF on the first 5" in r.stdout and "tiny-b" in r.stdout and "lossless" in r.stdout
    data = json.loads((tmp_path / "rd.json").read_text())
    assert isinstance(data, list)
    assert [d["name"] for d in data] == ["JPEG", "WebP", "AVIF", "PNG", "tiny-a", "tiny-b"]
    for d in data:
        assert {"name", "description", "results"} <= d.keys()
        res = d["results"]
        assert {"psnr", "bpp", "encoding_time", "decoding_time"} <= res.keys()  # CompressAI's
        assert {"bytes", "payload_bytes", "ssim", "quality"} <= res.keys()  # ours
        assert len({len(v) for v in res.values()}) == 1
        assert d["images"] == (5 if d["name"] == "AVIF" else 20)
        assert "7x7 Gaussian window, sigma 1.5" in d["metrics"]["ssim"]
        for b, bpp in zip(res["bytes"], res["bpp"]):
            assert bpp == pytest.approx(b * 8 / 784)
    assert data[0]["results"]["quality"] == list(CODECS["jpeg"].qualities)
    assert data[3]["lossless"] and data[3]["results"]["psnr"] == [None]
    assert data[4]["results"]["bytes"] == [51.0] and data[4]["results"]["payload_bytes"] == [8.0]
    anchors = [c["anchor"] for c in data[4]["comparisons"]]
    assert anchors == ["JPEG", "WebP", "AVIF"]  # PNG is lossless: no curve to compare with
    assert "piecewise cubic Hermite" in data[4]["bd_method"]
    each = sorted(p.name for p in (tmp_path / "each").iterdir())
    assert each == sorted(f"{d['name']}.json" for d in data)
    assert json.loads((tmp_path / "each" / "WebP.json").read_text()) == data[1]
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # an earlier file printed and plotted again without measuring: the same table
    r2 = kaec("rd", "--from-json", tmp_path / "rd.json", "--plot", tmp_path / "again.svg", env=env)
    assert r2.returncode == 0, r2.stderr
    assert r2.stdout == r.stdout and (tmp_path / "again.svg").read_text().startswith("<?xml")
    r2 = kaec("rd", "--from-json", tmp_path / "each" / "WebP.json", env=env)
    assert r2.returncode == 2 and "not a `kaec rd --json-file` file" in r2.stderr


@pytest.mark.parametrize("args, message", [
    (["--codecs", "jpeg,gif"], "Invalid value for '--codecs': 'gif' is not one of"),
    (["--model", "nosuch"], "--model nosuch: no such trained model"),
    (["--dataset", "cifar"], "--dataset: unknown dataset 'cifar'"),
    (["--plot", "{tmp}/rd.txt"], "expected a .png, .pdf, .svg file"),
    (["--json-file", "{tmp}/missing/rd.json"], "does not exist"),
    (["--bd-method", "linear"], "Invalid value for '--bd-method': 'linear' is not one of 'pchip', 'cubic', 'akima'"),
    (["--images", "0"], "--images"),
])
def test_mistakes_are_one_line_and_exit_2_with_nothing_written(env, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = kaec("rd", "--images", "3", "--json-dir", tmp_path / "out", *args, env=env)
    assert r.returncode == 2, r.stderr
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "rd.txt").exists()


# ---- issue 26: --from-json reads a bounded regular file, nested as a real one is -----------------------

@pytest.mark.parametrize("kind, message", [
    ("deep", "nested more than 100 levels deep"),
    ("fifo", "not a regular file (expected a `kaec rd --json-file` file)"),
    ("dev-zero", "not a regular file (expected a `kaec rd --json-file` file)"),
    ("huge", "bytes; a `kaec rd --json-file` file is at most 16,777,216 bytes"),
    ("wrong-type", "curve 1: results.bytes: expected finite numbers >= 0, got 'many'"),
    ("not-json", "not valid JSON"),
])
def test_from_json_refuses_deep_special_huge_and_ill_typed_files_in_one_line(tmp_path, kind, message):
    import os

    from conftest import kaec_bounded

    path = tmp_path / "rd.json"
    if kind == "deep":
        path.write_text("[" * 100_000)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "huge":
        with open(path, "wb") as f:
            f.truncate(5 << 30)
    elif kind == "wrong-type":
        path.write_text(json.dumps([{"name": "JPEG", "kind": "codec", "description": "", "dataset": "mnist",
                                     "images": 1, "results": {
                                         "psnr": [30.0], "ssim": [0.9], "bpp": [1.0], "bytes": ["many"],
                                         "payload_bytes": [9.0], "encoding_time": [0.1], "decoding_time": [0.1],
                                         "exact_images": [0], "quality": [50]}}]))
    else:
        path.write_text('[{"name": "JPEG",')
    r, wall, _ = kaec_bounded("rd", "--from-json", path, "--json-dir", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: {path}: ") and message in r.stderr and len(r.stderr.splitlines()) == 1, \
        r.stderr
    assert wall < 5, wall
    assert not (tmp_path / "out").exists()
