"""Issue 28: the calibrated out-of-domain check of `kaec encode` (refusal, --force, every image of a folder
checked, the note on files larger than their inputs, cards without a calibration)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from kaecompress.codec.images import Codec
from kaecompress.errors import KaecError
from kaecompress.experiments.data import load_array
from kaecompress.runtime.shipped import load_shipped
from kaecompress.zoo import trained_dir

from conftest import kaec


def photo() -> Image.Image:
    import matplotlib

    with Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg") as im:
        return im.convert("RGB").resize((720, 477), Image.Resampling.BICUBIC)


def save_tests(folder, family: str, count: int, start: int = 0) -> list:
    folder.mkdir(exist_ok=True)
    paths = []
    for i, a in enumerate(load_array(family, False)[start:start + count, 0]):
        paths.append(folder / f"{family}-{start + i:05d}.png")
        Image.fromarray(a, "L").save(paths[-1])
    return paths


@pytest.mark.parametrize("args", [[], ["--dataset", "fashion-mnist", "--quality", "9"], ["-m", "mnist-kae-dec3"]])
def test_a_photograph_is_refused_in_one_line_and_nothing_is_written(tmp_path, args):
    photo().save(tmp_path / "photo.jpg", quality=90)
    r = kaec("encode", tmp_path / "photo.jpg", "-o", tmp_path / "z.kae", "--backend", "onnx", *args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / 'photo.jpg'}: outside "), r.stderr
    assert "28x28" in lines[0] and "(limit " in lines[0] and "--force" in lines[0]
    assert not (tmp_path / "z.kae").exists()


def test_generated_images_are_refused_and_a_folder_names_them(tmp_path):
    src = tmp_path / "src"
    save_tests(src, "mnist", 20)
    Image.new("L", (112, 112), 128).save(src / "zz-flat.png")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (56, 56), dtype=np.uint8), "L").save(src / "zz-noise.png")
    r = kaec("encode", src, "-o", tmp_path / "out", "--backend", "onnx")
    assert r.returncode == 2 and not (tmp_path / "out").exists(), r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: 2 of 22 images ("), r.stderr
    assert "zz-flat.png" in lines[0] and "zz-noise.png" in lines[0] and "--force" in lines[0]


def test_force_writes_warns_and_notes_a_file_larger_than_its_input(tmp_path):
    photo().save(tmp_path / "photo.jpg", quality=75)
    r = kaec("encode", tmp_path / "photo.jpg", "-o", tmp_path / "z.kae", "--backend", "onnx", "-q", "7", "--force",
             "--json")
    assert r.returncode == 0, r.stderr
    written, source = (tmp_path / "z.kae").stat().st_size, (tmp_path / "photo.jpg").stat().st_size
    assert written > source  # the case: the .kae outweighs the JPEG
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"warning: {tmp_path / 'photo.jpg'}: outside mnist-q7"), r.stderr
    assert lines[1] == f"note: {tmp_path / 'z.kae'} ({written:,} bytes) is larger than {tmp_path / 'photo.jpg'} " \
                       f"({source:,} bytes)"
    row = json.loads(r.stdout)[0]
    assert row["domain_check"]["outside"] and row["domain_check"]["value"] > row["domain_check"]["threshold"]


@pytest.mark.parametrize("family, args", [("mnist", []), ("fashion-mnist", ["--dataset", "fashion-mnist", "-q", "9"])])
def test_hundreds_of_real_test_images_pass_through_the_cli(tmp_path, family, args):
    save_tests(tmp_path / "src", family, 300, start=9000)
    r = kaec("encode", tmp_path / "src", "-o", tmp_path / "out", "--backend", "onnx", "--json", *args)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 300 and not any(row["domain_check"]["outside"] for row in rows)
    assert "warning" not in r.stderr and "error" not in r.stderr


@pytest.mark.parametrize("name", ["mnist-kae-enc3", "fashion-kae-dec3", "mnist-q5", "fashion-q3"])
def test_every_image_of_a_call_is_checked_and_own_test_images_pass(name):
    codec = Codec(load_shipped(name), "onnx")
    family = codec.loaded.dataset
    images = [Image.fromarray(a, "L") for a in load_array(family, False)[::25, 0]] + [photo()]
    codec.compress_many(images, check_domain=True)
    checks = codec.domain_checks
    assert all(c is not None and c.calibrated for c in checks)
    assert not [c for c in checks[:-1] if c.outside] and checks[-1].outside and checks[-1].tiles == 8


def test_a_card_without_a_calibration_warns_only(tmp_path):
    """The old sampled-PSNR check, as a warning: the photo is written."""
    for f in trained_dir().glob("mnist-kae-dec3.*"):
        shutil.copy(f, tmp_path / f.name)
    card = json.loads((tmp_path / "mnist-kae-dec3.json").read_text())
    del card["domain"]
    (tmp_path / "mnist-kae-dec3.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    photo().save(tmp_path / "photo.jpg", quality=90)
    r = kaec("encode", tmp_path / "photo.jpg", "-o", tmp_path / "z.kae", "-m", "mnist-kae-dec3", "--backend", "onnx",
             env={"KAEC_TRAINED": str(tmp_path)})
    assert r.returncode == 0 and (tmp_path / "z.kae").exists(), r.stderr
    assert r.stderr.startswith(f"warning: {tmp_path / 'photo.jpg'}: outside mnist-kae-dec3's domain") and " dB " in r.stderr


def test_a_malformed_calibration_is_refused():
    loaded = load_shipped("mnist-q2")
    loaded.card = {**loaded.card, "domain": {"statistics": {"bits": {"threshold": "high"}}}}
    with pytest.raises(KaecError, match="malformed"):
        Codec(loaded, "onnx")
