"""The models shipped in trained/: cards, safe loading, and what the README promises a new user."""

import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from kaecompress.experiments.codecstats import reconstruction_metrics
from kaecompress.zoo import DEFAULT_MODEL, cards
from kaecompress.experiments.loading import load_model

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


# ---- issue 26: cards and safetensors headers are read bounded ------------------------------------------

def _folder_with(tmp_path, name: str, make):
    """A trained/ folder with a real card beside a card NAME.json that `make(path)` creates."""
    import shutil

    from kaecompress.zoo import trained_dir

    folder = tmp_path / "trained"
    folder.mkdir()
    shutil.copy(trained_dir() / f"{DEFAULT_MODEL}.json", folder)
    make(folder / f"{name}.json")
    return folder


@pytest.mark.parametrize("kind, message", [
    ("deep", "nested more than 100 levels deep"),
    ("fifo", "not a regular file (expected a model card)"),
    ("dev-zero", "not a regular file (expected a model card)"),
    ("huge", "bytes; a model card is at most 262,144 bytes"),
])
def test_a_card_that_is_deep_special_or_huge_is_one_line_naming_it(tmp_path, kind, message):
    import os

    from conftest import kaec_bounded

    make = {"deep": lambda p: p.write_text("[" * 100_000), "fifo": os.mkfifo,
            "dev-zero": lambda p: p.symlink_to("/dev/zero"),
            "huge": lambda p: open(p, "wb").truncate(5 << 30)}[kind]
    folder = _folder_with(tmp_path, "bad", make)
    for args in (["models"], ["models", "--json"], ["encode", "examples/mnist-7.png", "-o", tmp_path / "z.kae",
                                                     "-m", DEFAULT_MODEL]):
        r, wall, _ = kaec_bounded(*args, env={"KAEC_TRAINED": str(folder)})
        assert r.returncode == 2, r.stderr
        assert r.stderr.strip() == f"error: {folder / 'bad.json'}: {message}" or \
            (message in r.stderr and str(folder / "bad.json") in r.stderr and len(r.stderr.splitlines()) == 1), \
            r.stderr
        assert wall < 5, wall
    assert not (tmp_path / "z.kae").exists()


def test_safetensors_headers_are_bounded_and_checked_against_the_file():
    import struct

    from kaecompress import KaecError
    from kaecompress.zoo import MAX_HEADER_BYTES, safetensors_header, trained_dir

    real = (trained_dir() / f"{DEFAULT_MODEL}.safetensors").read_bytes()
    shapes = safetensors_header(real, "w")
    assert shapes and all(isinstance(s, list) for s in shapes.values())
    size = struct.unpack("<Q", real[:8])[0]
    header = json.loads(real[8:8 + size])
    body = real[8 + size:]

    def refused(data: bytes, message: str):
        with pytest.raises(KaecError, match=message) as e:
            safetensors_header(data, "w.safetensors")
        assert "\n" not in str(e.value)

    refused(struct.pack("<Q", MAX_HEADER_BYTES + 1) + b" " * 16, "header length passes")
    refused(struct.pack("<Q", 2 ** 64 - 1) + real[8:], "header length passes")
    refused(real[:7], "header length passes")
    deep = b"[" * 100_000
    refused(struct.pack("<Q", len(deep)) + deep + body, "nested more than 100 levels deep")
    name, entry = next((k, v) for k, v in header.items() if k != "__metadata__")
    for change in ({"data_offsets": [0, len(body) + 4]}, {"shape": [10 ** 4000 // 10 ** 3990]},
                   {"shape": entry["shape"] + [2]}, {"dtype": "F99"}, {"shape": "big"}, {"data_offsets": [True, 4]}):
        bad = json.dumps({**header, name: {**entry, **change}}).encode()
        refused(struct.pack("<Q", len(bad)) + bad + body, f"tensor '{name}'")


def test_weights_that_are_a_fifo_are_refused_without_waiting(tmp_path):
    import os

    from conftest import kaec_bounded
    from kaecompress.zoo import trained_dir

    folder = tmp_path / "trained"
    folder.mkdir()
    card = json.loads((trained_dir() / f"{DEFAULT_MODEL}.json").read_text())
    card.update(name="evil", weights_file="evil.safetensors")
    (folder / "evil.json").write_text(json.dumps(card))
    os.mkfifo(folder / "evil.safetensors")  # reading it would wait for a writer for ever
    r, wall, _ = kaec_bounded("encode", "examples/mnist-7.png", "-o", tmp_path / "z.kae", "-m", "evil",
                              env={"KAEC_TRAINED": str(folder)})
    assert r.returncode == 2 and r.stderr.strip() == \
        f"error: {folder / 'evil.safetensors'}: not a regular file (expected weights)", r.stderr
    assert wall < 5 and not (tmp_path / "z.kae").exists()
