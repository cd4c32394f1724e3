"""Golden files on the runtime's path. The committed .kae files of the shipped codec models
(tests/data/golden/shipped, written with PyTorch) decode to their committed latents, to within one level of
their torch-decoded pixels and exactly to the onnx-decoded ones of tests/data/golden/onnx; encoding their
source images gives the committed bytes. tests/data/golden/onnx adds files of the plain models (.kae version
1), of --rdo and of --fit resize, made with the training install's `kaec ... --backend onnx`:

    cd tests && python -m runtime.test_golden --write-golden
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from kaecompress.codec import bitstream

from .conftest import BACKEND, GOLDEN, TRAINING, exported_nothing, in_parallel, kaec, ok, pixels, rgb_70x50

SHIPPED = GOLDEN / "shipped"
ONNX = GOLDEN / "onnx"
RGB = ONNX / "rgb-70x50.png"
# name: (model, options), encoding RGB
EXTRA = {"mnist-kae-dec3-rgb": ("mnist-kae-dec3", ()), "mnist-kae-enc3-rgb": ("mnist-kae-enc3", ()),
         "fashion-kae-dec3-rgb": ("fashion-kae-dec3", ()), "mnist-q6-rgb-rdo2": ("mnist-q6", ("--rdo", "2")),
         "fashion-q9-rgb-resize": ("fashion-q9", ("--fit", "resize"))}


def shipped_cases() -> dict[str, str]:
    """The torch-made golden files: name -> model (`mnist-q2-v1-row` -> `mnist-q2-v1`)."""
    names = sorted(p.stem for p in SHIPPED.glob("*.kae"))
    return {n: re.fullmatch(r"(.+)-(\d+|row)", n).group(1) for n in names}


CASES = {**shipped_cases(), **{name: model for name, (model, _) in EXTRA.items()}}


def golden_file(name: str) -> Path:
    """The committed file that the golden pixels and latents are of."""
    return SHIPPED / f"{name}.kae" if name not in EXTRA else ONNX / f"{name}.kae"


def encode_all(work: Path, cache: Path) -> dict[str, Path]:
    """Every case's source encoded as its golden was: name -> the .kae written."""
    calls, out = [], {}
    for model in sorted(set(shipped_cases().values())):
        names = [n for n, m in shipped_cases().items() if m == model]
        folder = work / f"enc-{model}"
        calls.append(("encode", *[SHIPPED / f"{n}.png" for n in names], "-o", folder, "--container", "kae",
                      "--model", model))
        out.update({n: folder / f"{n}.kae" for n in names})
    for name, (model, options) in EXTRA.items():
        out[name] = work / f"{name}.kae"
        calls.append(("encode", RGB, "-o", out[name], "--model", model, "--force", *options))  # not a digit
    run_all(calls, work, cache)
    return out


def decode_all(work: Path, cache: Path) -> dict[str, Path]:
    """Every golden file decoded, one call per model (which the files name): name -> the PNG written."""
    calls, out = [], {}
    for model in sorted(set(CASES.values())):
        names = [n for n, m in CASES.items() if m == model]
        folder = work / f"dec-{model}"
        folder.mkdir()
        calls.append(("decode", *[golden_file(n) for n in names], "-o", folder))
        out.update({n: folder / f"{n}.png" for n in names})
    run_all(calls, work, cache)
    return out


def run_all(calls: list[tuple], work: Path, cache: Path) -> None:
    for r in in_parallel(lambda args: kaec(*args, *BACKEND, cwd=work, cache=cache), calls):
        ok(r)


@pytest.fixture(scope="module")
def written(tmp_path_factory, cache_home):
    work = tmp_path_factory.mktemp("golden")
    return encode_all(work, cache_home), decode_all(work, cache_home)


def test_every_golden_file_is_committed():
    assert len(shipped_cases()) >= 15
    for name in CASES:
        assert (ONNX / f"{name}.kae").is_file() and (ONNX / f"{name}-decoded.png").is_file(), name
    with np.load(ONNX / "latents.npz") as z:
        assert sorted(z.files) == sorted(CASES)


def test_encoding_the_sources_gives_the_committed_bytes(written, cache_home):
    encoded, _ = written
    differ = [n for n, path in encoded.items() if path.read_bytes() != (ONNX / f"{n}.kae").read_bytes()]
    assert differ == [] and exported_nothing(cache_home)


def test_golden_files_decode_to_their_committed_pixels(written):
    _, decoded = written
    differ = [n for n, path in decoded.items() if not np.array_equal(pixels(path), pixels(ONNX / f"{n}-decoded.png"))]
    assert differ == []
    for name in shipped_cases():  # and within one level of PyTorch's
        assert np.abs(pixels(decoded[name]) - pixels(SHIPPED / f"{name}-decoded.png")).max() <= 1, name


def test_golden_files_decode_to_their_committed_latents():
    """In-process, as the CLI reads them: the shipped model from its files (no torch), then the container."""
    from kaecompress.api import open_model
    from kaecompress.codec.containers import from_kae
    from kaecompress.codec.images import Codec

    codecs = {}
    with np.load(ONNX / "latents.npz") as z:
        for name, model in CASES.items():
            data = golden_file(name).read_bytes()
            if bitstream.version(data) == 2:
                codec = codecs.get(model) or codecs.setdefault(model, Codec(open_model(model, "onnx"), "onnx"))
                latents = codec.from_kae(data, name).latents
            else:
                latents = from_kae(data, name)[0].latents
            assert latents.dtype == z[name].dtype and np.array_equal(latents, z[name]), name


def write_golden() -> None:
    """Write tests/data/golden/onnx (deliberately only: a new model or format). The training install's
    CLI on the onnx backend writes the files; PyTorch reads the latents and checks the pixels."""
    import tempfile

    from kaecompress.codec.containers import from_kae
    from kaecompress.codec.images import Codec
    from kaecompress.experiments.loading import load_model

    assert TRAINING, "the goldens are made with the training install"
    ONNX.mkdir(exist_ok=True)
    rgb_70x50().save(RGB)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, path in encode_all(work, work).items():
            if name not in EXTRA:  # the torch-made files: the onnx encoder must give their very bytes
                assert path.read_bytes() == (SHIPPED / f"{name}.kae").read_bytes(), f"{name}: onnx encodes otherwise"
            shutil.copy(path, ONNX / f"{name}.kae")
        for name, path in decode_all(work, work).items():
            shutil.copy(path, ONNX / f"{name}-decoded.png")
            if name in EXTRA:  # within one level of PyTorch's decode, as the shipped goldens are
                torch_png = work / f"{name}-torch.png"
                ok(kaec("decode", golden_file(name), "-o", torch_png, "--backend", "torch", cwd=work))
                assert np.abs(pixels(path) - pixels(torch_png)).max() <= 1, name
    latents = {}
    for name, model in CASES.items():
        data = golden_file(name).read_bytes()
        if bitstream.version(data) == 2:
            latents[name] = Codec(load_model(model), "torch").from_kae(data, name).latents
        else:
            latents[name] = from_kae(data, name)[0].latents
    np.savez(ONNX / "latents.npz", **latents)
    import platform

    import onnxruntime

    (ONNX / "README.md").write_text(
        "Made by `cd tests && python -m runtime.test_golden --write-golden` in the training install "
        f"({platform.machine()}, onnxruntime {onnxruntime.__version__}): the training install's `kaec encode` "
        "and `kaec decode --backend onnx` with the shipped models, latents read with PyTorch; see "
        "tests/runtime/test_golden.py.\n")


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-golden"]:
        write_golden()
    else:
        sys.exit("usage: cd tests && python -m runtime.test_golden --write-golden  (rewrites tests/data/golden/onnx/)")
