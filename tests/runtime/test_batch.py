"""A batch of files in one call: past rangecoder.COMPILED_FROM one-tile files, where the training install
codes with numba (rangekernel) and the runtime install, which has no numba, with constriction. Both give
the golden bytes and pixels."""

import importlib.util
import shutil

import numpy as np

from kaecompress.codec.rangecoder import COMPILED_FROM

from .conftest import BACKEND, GOLDEN, TRAINING, exported_nothing, kaec, ok, pixels

ONNX = GOLDEN / "onnx"


def test_a_batch_codes_to_the_golden_bytes_with_or_without_numba(tmp_path, cache_home):
    if not TRAINING:
        assert importlib.util.find_spec("numba") is None  # the runtime install brings none
    names = ["mnist-q6-0", "mnist-q6-1"] * 36 + ["mnist-q6-row"] * 4  # a context model; 72 files of one tile
    assert sum(n != "mnist-q6-row" for n in names) >= COMPILED_FROM
    (tmp_path / "in").mkdir()
    for i, name in enumerate(names):
        shutil.copy(GOLDEN / "shipped" / f"{name}.png", tmp_path / "in" / f"{i:03d}-{name}.png")
    ok(kaec("encode", "in", "-o", "enc", "--model", "mnist-q6", *BACKEND, cwd=tmp_path, cache=cache_home))
    ok(kaec("decode", "enc", "-o", "dec", *BACKEND, cwd=tmp_path, cache=cache_home))
    for i, name in enumerate(names):
        assert (tmp_path / "enc" / f"{i:03d}-{name}.kae").read_bytes() == (ONNX / f"{name}.kae").read_bytes(), i
        assert np.array_equal(pixels(tmp_path / "dec" / f"{i:03d}-{name}.png"), pixels(ONNX / f"{name}-decoded.png"))
    assert exported_nothing(cache_home)
