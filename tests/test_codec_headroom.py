"""benchmarks/codec_headroom.py's densities on latents whose structure is known: each richer density saves
bits exactly where the latents have what it models, and nothing where they do not."""

import importlib.util
from pathlib import Path

import numpy as np

_SPEC = importlib.util.spec_from_file_location(
    "codec_headroom", Path(__file__).resolve().parents[1] / "benchmarks" / "codec_headroom.py")
headroom_module = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(headroom_module)


def _laplace(rng, scale, shape):
    return np.rint(rng.laplace(0, scale, shape)).astype(np.int64)


def test_switchable_densities_pay_off_when_images_differ_in_scale():
    rng = np.random.default_rng(0)

    def make(n):  # half the images have small latents, half large ones: knowing which saves more than 2 bits
        return np.concatenate([_laplace(rng, 0.4, (n, 16)), _laplace(rng, 6.0, (n, 16))])

    result = headroom_module.headroom(make(3000), make(1000))
    assert result["switchable 4"] < 0.92 * result["factorized"]  # about 12% here
    # The same latents without the two groups: choosing a density per image cannot pay for its index bits.
    iid = headroom_module.headroom(_laplace(rng, 3.0, (6000, 16)), _laplace(rng, 3.0, (2000, 16)))
    assert iid["switchable 4"] > iid["factorized"]


def test_linear_context_pays_off_only_for_correlated_latents():
    rng = np.random.default_rng(1)

    def correlated(n):
        base = _laplace(rng, 5.0, (n, 8))
        return np.concatenate([base, base + _laplace(rng, 0.3, (n, 8))], axis=1)  # the second half repeats the first

    result = headroom_module.headroom(correlated(4000), correlated(1000))
    assert result["linear context"] < 0.7 * result["factorized"]
    iid = headroom_module.headroom(_laplace(rng, 3.0, (4000, 16)), _laplace(rng, 3.0, (1000, 16)))
    assert abs(iid["linear context"] / iid["factorized"] - 1) < 0.02
