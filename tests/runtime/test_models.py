"""Every shipped model through the CLI on the runtime's path: a digit and a small RGB image, tile and resize
fits, .kae (version 1 or 2), .npz and .npy; codec models also with --rdo 2 and picked by --quality."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from kaecompress import zoo
from kaecompress.codec import bitstream

from .conftest import BACKEND, EXAMPLES, exported_nothing, in_parallel, kaec, ok, pixels, psnr, rgb_70x50

CARDS = zoo.cards()
# Each variant is its own folder of inputs, named so that one decode call takes all of a model's files.
VARIANTS = {"kae": ("--fit", "tile", "--container", "kae"), "npz": ("--fit", "resize", "--container", "npz"),
            "npy": ("--fit", "tile", "--container", "npy")}


def is_codec(card: dict) -> bool:
    return bool((card["config"].get("codec") or {}).get("prior"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    rgb = rgb_70x50()
    for variant in VARIANTS:
        (root / variant).mkdir()
        shutil.copy(EXAMPLES / "mnist-7.png", root / variant / f"digit-{variant}.png")
        rgb.save(root / variant / f"rgb-{variant}.png")
    return root


def pipeline(name: str, inputs, work, cache) -> list:
    """Three encodes of the model's inputs, then one decode of all its files (the model found from the
    first file, a .kae): their processes."""
    card = CARDS[name]
    enc, dec = work / "enc", work / "dec"
    enc.mkdir(parents=True)
    chosen = ("--dataset", card["family"], "--quality", str(card["quality"])) if card.get("family") else \
        ("--model", name)
    rdo = ("--rdo", "2") if is_codec(card) else ()
    # --force: each folder holds an RGB image, which is outside every shipped model's domain
    calls = [("encode", inputs / "kae", "-o", enc, *VARIANTS["kae"], *chosen, "--force"),
             ("encode", inputs / "npz", "-o", enc, *VARIANTS["npz"], "--model", name, "--force"),
             ("encode", inputs / "npy", "-o", enc, *VARIANTS["npy"], "--model", name, *rdo, "--force"),
             ("decode", enc, "-o", dec)]
    return [kaec(*args, *BACKEND, cwd=work, cache=cache) for args in calls]


@pytest.fixture(scope="module")
def runs(inputs, tmp_path_factory, cache_home):
    """Every model's pipeline, two models at a time."""
    work = tmp_path_factory.mktemp("models")
    return work, dict(zip(CARDS, in_parallel(lambda n: pipeline(n, inputs, work / n, cache_home), CARDS)))


def test_every_shipped_model_is_tested():
    assert len(CARDS) >= 22 and all("onnx" in card for card in CARDS.values())


@pytest.mark.parametrize("name", sorted(CARDS))
def test_model_encodes_and_decodes_through_the_cli(name, runs, cache_home):
    work, results = runs
    for r in results[name]:
        ok(r)
    assert exported_nothing(cache_home)
    card, enc, dec = CARDS[name], work / name / "enc", work / name / "dec"
    assert sorted(p.name for p in enc.iterdir()) == sorted(f"{i}-{v}.{v}" for i in ("digit", "rgb") for v in VARIANTS)
    for image in ("digit", "rgb"):
        data = (enc / f"{image}-kae.kae").read_bytes()
        if is_codec(card):  # version 2, naming the model (which --quality picked, in a family)
            assert bitstream.version(data) == 2 and bitstream.parse_header(data, "x").codec_id == card["codec_id"]
        else:
            assert data[:4] == b"KAEC" and data[4] == 1
    source, quality = pixels(EXAMPLES / "mnist-7.png"), {}
    for variant in VARIANTS:
        with Image.open(dec / f"digit-{variant}.png") as im:
            assert (im.size, im.mode) == ((28, 28), "L")
        with Image.open(dec / f"rgb-{variant}.png") as im:  # a .npy holds no size: its whole tile grid
            assert (im.size, im.mode) == (((84, 56) if variant == "npy" else (70, 50)), "RGB")
        quality[variant] = psnr(pixels(dec / f"digit-{variant}.png"), source)
    # the digit decodes as well as the card says (a Fashion-MNIST model: recognisably), resized or not
    floor = card["metrics"]["psnr_db"] - 3 if card["dataset"] == "mnist" else 10
    assert quality["kae"] > floor and abs(quality["npz"] - quality["kae"]) < 0.5, quality
    if is_codec(card):  # --rdo 2 (the .npy files): a search for better latents, not a worse result
        assert quality["npy"] > quality["kae"] - 0.5, quality
    else:  # float latents against the uint8 ones of .kae version 1
        assert abs(quality["npy"] - quality["kae"]) < 0.5, quality
