"""The models shipped in trained/: cards, safe loading, and what the README promises a new user."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kaecompress.metrics import reconstruction_metrics
from kaecompress.zoo import DEFAULT_MODEL, cards, load_model

from conftest import kaec

SHIPPED = {"mnist-kae-dec3": ("mnist", 0, 3), "mnist-kae-enc3": ("mnist", 3, 0),
           "fashion-kae-dec3": ("fashion-mnist", 0, 3)}


def test_the_shipped_models_and_their_cards():
    found = cards()
    assert set(SHIPPED) <= set(found) and DEFAULT_MODEL in found
    for name, (dataset, enc, dec) in SHIPPED.items():
        card = found[name]
        model = card["config"]["model"]
        assert card["dataset"] == dataset and (model["encoder_kae_order"], model["decoder_kae_order"]) == (enc, dec)
        assert card["training"]["inputs"] >= 300_000 and card["compression_ratio"] == 49.0
        assert card["params"] == 1_257_713 and card["metrics"]["images"] == 10_000
        with open(card["recipe"]) as f:  # the recipe in experiments/ trains this very model
            recipe = yaml.safe_load(f)
        assert {k: v for k, v in recipe["model"].items() if k != "shape"} == \
            {k: v for k, v in model.items() if k != "shape"}
        assert recipe["data"]["dataset"] == dataset


def test_the_default_models_card_metrics_are_reproduced(mnist_val):
    loaded = load_model(DEFAULT_MODEL)
    card = loaded.card
    assert loaded.weights_sha256 == card["weights_sha256"]
    metrics = reconstruction_metrics(loaded.model, mnist_val)
    assert metrics["mse"] == pytest.approx(card["metrics"]["mse"], rel=1e-5)
    assert metrics["psnr_db"] == pytest.approx(card["metrics"]["psnr_db"], rel=1e-5)
    assert card["metrics"]["mse"] <= 0.0162  # the study's best configuration, reached


def test_readme_compression_of_the_example_digit(tmp_path):
    r = kaec("encode", "examples/mnist-7.png", "-o", tmp_path / "z.kae")
    assert r.returncode == 0, r.stderr
    r = kaec("decode", tmp_path / "z.kae", "-o", tmp_path / "out.png", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)[0]["size"] == [28, 28]
    original = np.asarray(Image.open("examples/mnist-7.png"), np.float64) / 255
    decoded = np.asarray(Image.open(tmp_path / "out.png"), np.float64) / 255
    assert 10 * np.log10(1 / ((original - decoded) ** 2).mean()) > 15
    assert (tmp_path / "z.kae").stat().st_size < 784 / 10  # over 10x smaller than the raw pixels


def test_weights_are_safetensors_not_pickles():
    from safetensors.torch import load_file

    from kaecompress.zoo import trained_dir

    for card in cards().values():
        tensors = load_file(str(trained_dir() / card["weights_file"]))
        assert all(isinstance(t, torch.Tensor) for t in tensors.values())


def test_the_shipped_codec_families_span_their_qualities_within_the_size_budget():
    from kaecompress.zoo import codec_model, families, trained_dir

    found = cards()
    fams = families()
    assert {"mnist", "fashion-mnist"} <= set(fams)
    for dataset, members in fams.items():
        assert len(members) >= 5
        coded = [found[n]["codec_metrics"] for n in members]
        assert [found[n]["quality"] for n in members] == list(range(len(members)))  # q0 = smallest files
        sizes, psnrs = [c["bytes_per_image"] for c in coded], [c["psnr"] for c in coded]
        assert sizes == sorted(sizes) and psnrs == sorted(psnrs)  # a higher level: more bytes, more quality
        assert all(c["codec_images"] == 10_000 and c["split"] == "test" for c in coded)
        assert len({found[n]["codec_id"] for n in members}) == len(members)
        for n in members:  # the recipe named on the card trains this very model
            with open(found[n]["recipe"]) as f:
                recipe = yaml.safe_load(f)
            assert recipe["data"]["dataset"] == dataset
            assert found[n]["lambda"] in recipe["matrix"]["lambda"]
            assert recipe["experiment_name"] == found[n]["config"]["experiment_name"], n
            assert recipe["train"]["max_inputs"] == found[n]["training"]["inputs"], n
            model = found[n]["config"]["model"]
            assert all(model[k] == v for k, v in recipe["model"].items() if k != "decoder_kae_order"), n
            assert model["decoder_kae_order"] in recipe["matrix"]["dec"]
    mnist = [found[n]["codec_metrics"] for n in fams["mnist"]]
    default = found[codec_model("mnist")]["codec_metrics"]
    assert default["psnr"] >= found[DEFAULT_MODEL]["metrics"]["psnr_db"] and default["bytes_per_image"] <= 10
    assert max(c["psnr"] for c in mnist) >= 28
    total = sum(p.stat().st_size for p in trained_dir().iterdir() if p.is_file())
    assert total < 60e6  # every model ships in git
