"""A linear context model for integer latents: each latent predicted from the ones coded before it.

A factorized prior codes every latent dimension on its own, yet the latents of a trained model are
correlated, most at high rates. Here the dimensions are put in a fixed coding order, and dimension i is
predicted from the integers of dimensions 0..i-1 (in that order) with integer weights: only the residual,
value minus prediction, is entropy-coded, under a table fitted to the residuals. Everything is integer
arithmetic, so every machine rebuilds the same latents from the same residuals:

    prediction_i = floor((sum_j<i weights[i, j] * y[order[j]] + bias[i] + 2**(shift-1)) / 2**shift)
    residual[order[i]] = y[order[i]] - prediction_i

A row of zero weights and zero bias leaves its dimension as it is; `fit` keeps a prediction only where it
makes the training latents cheaper to code. The sums are computed in float64, which is exact here: the
latents are bounded by 2**31 (`LATENT_LIMIT`) and each row's absolute weights sum to less than 2**21
(`ROW_LIMIT`), so every partial sum stays below 2**53. Encoding uses float32 where the latents at hand keep
every sum below 2**24 (the common case), with the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np

from kaecompress.errors import KaecError

SHIFT = 12                 # weights are fixed point with 12 fractional bits
LATENT_LIMIT = 2**31       # |latent| bound (the range coder's); a restored value beyond it means a bad file
RESIDUAL_LIMIT = 2**52     # residuals (of latents within LATENT_LIMIT) stay below this: float64 holds them
ROW_LIMIT = 2**21          # bound on sum_j |weights[i, j]|: keeps the float64 sums exact (see above)
MAX_WEIGHT = 2**(SHIFT + 4)  # |w| < 16 in real terms
FIXED_POINT_VECTORS = 4    # restore() iterates to a fixed point for this many vectors or fewer
RESTORE_BLOCK = 32         # restore() of a batch: dimensions per block (fashion-q9: 1.2x faster idle, 2.3x loaded)
MIN_GAIN_BITS = 0.01       # a prediction must save this much per latent on the training set to be kept
ARRAYS = ("order", "weights", "bias")


@dataclass(frozen=True, eq=False)
class LinearContext:
    """Integer prediction of each latent from the earlier ones in `order` (see the module docstring)."""

    order: np.ndarray    # int (D,): the coding order, a permutation of the latent dimensions
    weights: np.ndarray  # int (D, D): strictly lower triangular, in coding order, fixed point 2**-SHIFT
    bias: np.ndarray     # int (D,): fixed point 2**-SHIFT

    def __post_init__(self) -> None:
        check(self.order, self.weights, self.bias)
        for name in ARRAYS:  # checked as given (floats refused), then held as int64
            object.__setattr__(self, name, np.asarray(getattr(self, name)).astype(np.int64))

    @property
    def dims(self) -> int:
        return len(self.order)

    @cached_property
    def predicted(self) -> np.ndarray:
        """The coding positions whose dimension is predicted (a non-zero row or bias), ascending."""
        return np.flatnonzero(self.weights.any(axis=1) | (self.bias != 0))

    def residuals(self, latents: np.ndarray) -> np.ndarray:
        """The symbols to code for integer latents (N, D): int64 (N, D), dimensions in their own order."""
        y = _as_latents(latents, self.dims)
        weights, bias = self._in_dimension_order(_exact_in_float32(y, self._bound))
        with _one_blas_thread():
            acc = y.astype(weights.dtype) @ weights
        acc += bias
        acc *= 2.0 ** -SHIFT
        return y - np.floor(acc).astype(np.int64)

    def restore(self, residuals: np.ndarray, where: str = "latents") -> np.ndarray:
        """The latents (N, D) int64 whose residuals are given. A value beyond the latent bound (only a crafted
        file gets one) is an error.

        Many vectors: one step per predicted dimension, each over all N at once (blocks of dimensions share one
        product for the earlier ones). A few (a file of one tile): y <- residuals + prediction(y) for all
        dimensions at once, until nothing changes. Weights strictly lower triangular (in coding order) make the
        first k dimensions exact after k rounds, so it ends, and a fixed point within the bounds is the one
        solution; on the shipped models it takes 9-25 rounds, not D steps."""
        r = _as_latents(residuals, self.dims, where, RESIDUAL_LIMIT)
        with _one_blas_thread():
            out = self._restore(r)
        if not (np.abs(out) < LATENT_LIMIT).all():  # NaN fails too
            raise KaecError(f"{where}: a latent value restored from the file is beyond +-2**31 (damaged file)")
        return out.astype(np.int64)

    def _restore(self, r: np.ndarray) -> np.ndarray:
        if len(r) <= FIXED_POINT_VECTORS:
            weights, bias = self._in_dimension_order(False)
            base = r.astype(np.float64)
            y, following = base.copy(), np.empty_like(base)
            for _ in range(len(self.predicted) + 1):
                np.matmul(y, weights, out=following)
                following += bias
                following *= 2.0 ** -SHIFT
                np.floor(following, out=following)
                following += base
                # Dimensions not yet exact may hold anything; kept finite, their zero weights in the exact
                # ones' sums contribute exactly 0 (an infinity would give NaN).
                np.clip(following, -RESIDUAL_LIMIT, RESIDUAL_LIMIT, out=following)
                if (following == y).all():
                    break
                y, following = following, y
            return y
        else:
            weights, bias = self._in_coding_order
            y = np.ascontiguousarray(r[:, self.order].T, dtype=np.float64)  # (D, N): rows are dimensions
            predicted = self.predicted
            for start in range(0, self.dims, RESTORE_BLOCK):
                # The sums over the dimensions before this block in one product, then one dimension at a time
                # within it (exact integers, so the order of the additions does not matter).
                stop = min(start + RESTORE_BLOCK, self.dims)
                rows = predicted[(predicted >= start) & (predicted < stop)]
                if not len(rows):
                    continue
                sums = weights[start:stop, :start] @ y[:start]
                sums += bias[start:stop, None]
                for i in rows:
                    y[i] += np.floor((sums[i - start] + weights[i, start:i] @ y[start:i]) * 2.0 ** -SHIFT)
            out = np.empty(r.shape)
            out[:, self.order] = y.T
            return out

    @cached_property
    def _in_coding_order(self) -> tuple[np.ndarray, np.ndarray]:
        return self.weights.astype(np.float64), self.bias.astype(np.float64) + 2.0 ** (SHIFT - 1)

    @cached_property
    def _bound(self) -> tuple[float, float]:
        """max over dimensions of sum |weights| and max |bias| + the rounding half: what |y| multiplies."""
        return (float(np.abs(self.weights).sum(axis=1).max()),
                float(np.abs(self.bias).max(initial=0)) + 2.0 ** (SHIFT - 1))

    def _in_dimension_order(self, float32: bool) -> tuple[np.ndarray, np.ndarray]:
        """The weights as a (D, D) matrix M with prediction sums = y @ M for y in the dimensions' own order,
        and the biases (+ the rounding half) in that order; float32 where `_exact_in_float32` allows."""
        return self._dimension_order_arrays[1 if float32 else 0]

    @cached_property
    def _dimension_order_arrays(self):
        d = self.dims
        weights = np.zeros((d, d))
        weights[np.ix_(self.order, self.order)] = self.weights.T  # weights[order[j], order[i]] = W[i, j]
        bias = np.empty(d)
        bias[self.order] = self.bias + 2.0 ** (SHIFT - 1)
        return (weights, bias), (weights.astype(np.float32), bias.astype(np.float32))

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"order": self.order.astype(np.int32), "weights": self.weights.astype(np.int32),
                "bias": self.bias.astype(np.int32)}


@lru_cache(maxsize=1)
def _blas_pools():
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _one_blas_thread():
    """These products are small: split over threads they gain nothing on an idle machine and lose 10x when
    another process or onnxruntime's threads hold the cores (0.3 ms against 4.5 ms measured for 256 vectors
    of 128 latents on this 2-core machine)."""
    return _blas_pools().limit(limits=1, user_api="blas")


def _exact_in_float32(y: np.ndarray, bound: tuple[float, float]) -> bool:
    """Whether every prediction sum for these latents is an integer below 2**24, which float32 holds exactly
    (a product twice as fast as float64's, with the same result)."""
    top = float(np.abs(y).max(initial=0))
    return top * bound[0] + bound[1] < 2**24


def _as_latents(values: np.ndarray, dims: int, where: str = "latents", limit: int = LATENT_LIMIT) -> np.ndarray:
    v = np.asarray(values)
    if v.ndim != 2 or v.shape[1] != dims or v.dtype.kind not in "iu":
        raise KaecError(f"{where}: expected integers of shape (N, {dims}), got {v.dtype} {v.shape}")
    if v.size and np.abs(v.astype(np.float64)).max() >= limit:
        raise KaecError(f"{where}: a value is beyond +-2**{limit.bit_length() - 1}")
    return v.astype(np.int64)


def check(order: np.ndarray, weights: np.ndarray, bias: np.ndarray, where: str = "context model") -> None:
    """Refuse arrays that do not form a context model whose arithmetic stays exact."""
    order, weights, bias = (np.asarray(a) for a in (order, weights, bias))
    if any(a.dtype.kind not in "iu" for a in (order, weights, bias)):
        raise KaecError(f"{where}: order, weights and bias must be integers")
    d = order.shape[0] if order.ndim == 1 else -1
    if d < 1 or weights.shape != (d, d) or bias.shape != (d,):
        raise KaecError(f"{where}: expected order (D,), weights (D, D) and bias (D,), got {order.shape}, "
                        f"{weights.shape} and {bias.shape}")
    if not np.array_equal(np.sort(order), np.arange(d)):
        raise KaecError(f"{where}: order must be a permutation of 0..{d - 1}")
    w = weights.astype(np.int64)
    if np.triu(w).any():
        raise KaecError(f"{where}: weights must be strictly lower triangular (a latent predicted from later ones)")
    if np.abs(w).sum(axis=1).max() >= ROW_LIMIT or np.abs(bias.astype(np.int64)).max() >= LATENT_LIMIT:
        raise KaecError(f"{where}: weights or bias beyond the bounds that keep the arithmetic exact")


def from_arrays(arrays: dict[str, np.ndarray]) -> LinearContext:
    return LinearContext(*(arrays[k] for k in ARRAYS))


def fit(latents: np.ndarray, raw_cost: np.ndarray, ridge: float = 1e-6) -> tuple[LinearContext, np.ndarray]:
    """A context model for integer latents (N, D) of training images, and the residuals it gives them.

    Dimensions are ordered by decreasing variance; each is regressed (least squares with an intercept) on
    all earlier ones and the weights rounded to fixed point. A dimension keeps its prediction only when the
    entropy of its residuals is lower by MIN_GAIN_BITS than `raw_cost[d]`, the bits per latent it costs
    without one (under the model's own table)."""
    y = _as_latents(latents, len(raw_cost))
    n, d = y.shape
    order = np.argsort(-y.var(axis=0), kind="stable")
    x = np.c_[y[:, order].astype(np.float64), np.ones(n)]
    gram = x.T @ x / n
    target = gram[:, :d]  # column i: correlations of every feature with dimension order[i]
    weights = np.zeros((d, d), dtype=np.int64)
    bias = np.zeros(d, dtype=np.int64)
    scale = 2.0 ** SHIFT
    for i in range(1, d):
        cols = np.r_[np.arange(i), d]  # earlier dimensions and the constant
        a = gram[np.ix_(cols, cols)]
        w = np.linalg.solve(a + ridge * (np.trace(a) / len(cols) + 1) * np.eye(len(cols)), target[cols, i])
        wi = np.clip(np.rint(w[:-1] * scale), -MAX_WEIGHT + 1, MAX_WEIGHT - 1).astype(np.int64)
        if np.abs(wi).sum() >= ROW_LIMIT:
            continue
        weights[i, :i] = wi
        bias[i] = int(np.clip(np.rint(w[-1] * scale), -LATENT_LIMIT + 1, LATENT_LIMIT - 1))
    context = LinearContext(order, weights, bias)
    residuals = context.residuals(y)
    drop = [i for i in context.predicted
            if entropy_bits(residuals[:, order[i]]) > raw_cost[order[i]] - MIN_GAIN_BITS]
    weights[drop] = 0
    bias[drop] = 0
    context = LinearContext(order, weights, bias)
    return context, context.residuals(y)


def entropy_bits(values: np.ndarray) -> float:
    """Empirical entropy (bits per value) of integers: what a table fitted to them costs them."""
    counts = np.unique(values, return_counts=True)[1].astype(np.float64)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def histogram_pmf(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column smoothed probabilities of integer values (N, D) for an integer table: (D, K) masses of
    offsets[d] .. offsets[d]+K-1, each column's observed range widened by one on each side, half a count
    added to every integer in it; K is the widest range."""
    low, high = values.min(axis=0) - 1, values.max(axis=0) + 1
    k = int((high - low).max()) + 1
    pmf = np.zeros((values.shape[1], k))
    for c in range(values.shape[1]):
        span = int(high[c] - low[c]) + 1
        pmf[c, :span] = np.bincount(values[:, c] - low[c], minlength=span) + 0.5
    pmf /= pmf.sum(axis=1, keepdims=True)
    return pmf, low.astype(np.int64)
