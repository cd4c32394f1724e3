"""The linear context model: exact integer arithmetic, fitting, bounds (kaecompress.codec.context)."""

import numpy as np
import pytest

from kaecompress.codec import context
from kaecompress.codec.context import SHIFT, LinearContext
from kaecompress.errors import KaecError


def _reference_residuals(ctx: LinearContext, y: np.ndarray) -> np.ndarray:
    """The module docstring's formula in Python integers (no float anywhere)."""
    out = [[int(v) for v in row] for row in y]
    order, w, b = ctx.order.tolist(), ctx.weights.tolist(), ctx.bias.tolist()
    for n, row in enumerate(y.tolist()):
        for i, dim in enumerate(order):
            if any(w[i]) or b[i]:
                acc = sum(w[i][j] * row[order[j]] for j in range(i)) + b[i] + 2 ** (SHIFT - 1)
                out[n][dim] = row[dim] - (acc >> SHIFT)  # >> is floor division by 2**SHIFT
    return np.array(out, dtype=np.int64)


def _random_context(d: int, seed: int, scale: int) -> LinearContext:
    rng = np.random.default_rng(seed)
    weights = np.tril(rng.integers(-scale, scale, (d, d)), -1)
    weights[rng.random(d) < 0.3] = 0  # some dimensions coded as they are
    return LinearContext(rng.permutation(d), weights, rng.integers(-2**20, 2**20, d))


D = 2 * context.RESTORE_BLOCK + 6  # a batch's restore goes through whole blocks and a partial one


@pytest.mark.parametrize("magnitude, scale, float32", [(40, 2**12, True), (40, (context.ROW_LIMIT - 1) // D, False),
                                                       (2**30, (context.ROW_LIMIT - 1) // D, False)])
def test_residuals_match_integer_arithmetic_and_restore_exactly(magnitude, scale, float32):
    """Against Python's exact integers, up to the largest latents and row weights the bounds allow, on the
    float32 product (sums below 2**24) and the float64 one."""
    d = D
    ctx = _random_context(d, seed=magnitude % 97, scale=scale)
    assert np.abs(ctx.weights).sum(axis=1).max() < context.ROW_LIMIT
    y = np.random.default_rng(1).integers(-magnitude, magnitude, (50, d))
    assert context._exact_in_float32(y, ctx._bound) == float32
    r = ctx.residuals(y)
    assert np.array_equal(r, _reference_residuals(ctx, y))
    assert np.array_equal(ctx.restore(r), y)  # many vectors: dimension by dimension, in blocks
    for n in range(5):  # one vector (a one-tile file): iterated to its fixed point
        assert np.array_equal(ctx.restore(r[n:n + 1]), y[n:n + 1])


def test_fit_predicts_correlated_latents_and_leaves_independent_ones():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 6, (20000, 4))
    correlated = np.rint(np.c_[base, base @ rng.normal(0, 1, (4, 6)) + rng.normal(0, 0.7, (20000, 6))])
    independent = np.rint(rng.normal(0, 3, (20000, 10)))
    y = np.c_[correlated, independent].astype(np.int64)
    raw = np.array([context.entropy_bits(c) for c in y.T])  # what each costs under its own histogram
    ctx, residuals = context.fit(y, raw)
    predicted = set(ctx.order[ctx.predicted].tolist())
    assert len(predicted & set(range(10))) >= 6  # ten latents that hold four latents' information
    assert not predicted & set(range(10, 20))  # the independent ones stay as they are
    after = np.array([context.entropy_bits(c) for c in residuals.T])
    assert after[:10].sum() < 0.7 * raw[:10].sum()
    assert np.array_equal(after[10:], raw[10:]) and np.array_equal(ctx.restore(residuals), y)


def test_arrays_that_would_break_exactness_are_refused():
    d = 4
    good = dict(order=np.arange(d), weights=np.tril(np.ones((d, d), np.int64), -1), bias=np.zeros(d, np.int64))
    context.from_arrays(good)
    bad = {
        "not a permutation": dict(good, order=np.array([0, 1, 1, 3])),
        "predicted from later": dict(good, weights=np.ones((d, d), np.int64)),
        "row too heavy": dict(good, weights=np.tril(np.full((d, d), context.ROW_LIMIT), -1)),
        "wrong shape": dict(good, bias=np.zeros(d + 1, np.int64)),
        "floats": dict(good, weights=np.zeros((d, d))),
    }
    for name, arrays in bad.items():
        with pytest.raises(KaecError):
            context.from_arrays(arrays)
        print(name, "refused")


def test_a_restored_latent_beyond_32_bits_is_a_damaged_file():
    ctx = LinearContext(np.arange(2), np.array([[0, 0], [8 * 2**SHIFT, 0]]), np.zeros(2, np.int64))
    heavy = _random_context(64, seed=3, scale=(context.ROW_LIMIT - 1) // 64)
    for count in (1, 50):  # both ways of restoring, whatever the residuals (floats never overflow into NaN)
        with pytest.raises(KaecError, match="beyond"):
            ctx.restore(np.repeat([[2**30, 0]], count, axis=0), "x.kae")
        with pytest.raises(KaecError, match="beyond"):
            heavy.restore(np.full((count, 64), 2**51 - 1), "x.kae")
    with pytest.raises(KaecError, match="beyond"):
        ctx.residuals(np.array([[2**31, 0]]))
