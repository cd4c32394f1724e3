"""Rate–distortion optimised rounding of a codec model's latents: a search on the encoder side only.

Rounding each latent to its nearest integer ignores what the integer costs and what the decoder makes of
it. This search starts from the rounded latents and, one dimension at a time, tries the other rounding
(the integer on the far side of the encoder's float value); it keeps a change where the image's cost

    J = bits + lambda * 255^2 * SSE     (the training loss of `train.py`, summed over the image's pixels)

falls, with bits the information content under the model's integer tables (context model and escapes
included) and SSE that of the decoder's output, clipped to [0, 1], against the tile. `sweeps` passes over
all dimensions; each costs one decoder run per tile and dimension. The tables, the decoder and the
bitstream are untouched: every decoder reads the files, and each tile's J never rises.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from kaecompress.errors import KaecError
from kaecompress.codec.rangecoder import symbol_bits

MAX_SWEEPS = 16


def latent_bits(latents: np.ndarray, tables, context=None) -> np.ndarray:
    """(N,) information content (bits) of each integer latent vector (N, D) under the model's tables, its
    context model and escapes included: what the range coder spends, to about a third of a byte a file."""
    return symbol_bits(context.residuals(latents) if context is not None else latents, tables).sum(axis=1)


def refine(latents: np.ndarray, tiles: np.ndarray, decode: Callable[[np.ndarray], np.ndarray], tables,
           context, lmbda: float, sweeps: int = 2,
           progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Integer latents (N, D) int64 for the encoder's float `latents` (N, D) of `tiles` (N, C, H, W) in [0, 1]:
    the rounded ones, improved by `sweeps` passes of the search. `decode` maps float32 latents (n, D) to
    tiles; `progress(done, total)` is told after each dimension."""
    if not 0 <= sweeps <= MAX_SWEEPS:
        raise KaecError(f"--rdo: expected 0 to {MAX_SWEEPS} sweeps, got {sweeps}")
    if not np.isfinite(lmbda) or lmbda <= 0:
        raise KaecError(f"rate–distortion optimised rounding needs the model's positive lambda, got {lmbda}")
    y = np.asarray(latents, dtype=np.float64)
    q = np.rint(y).astype(np.int64)
    if sweeps == 0 or len(q) == 0:
        return q
    target = np.asarray(tiles, dtype=np.float32).reshape(len(q), -1)
    weight = float(lmbda) * 255.0**2

    def cost(candidate: np.ndarray) -> np.ndarray:
        out = np.clip(decode(candidate.astype(np.float32)).reshape(len(candidate), -1), 0.0, 1.0)
        return latent_bits(candidate, tables, context) + weight * ((out - target) ** 2).sum(axis=1, dtype=np.float64)

    best = cost(q)
    total, done = sweeps * q.shape[1], 0
    for _ in range(sweeps):
        for d in range(q.shape[1]):
            trial = q.copy()
            trial[:, d] += np.where(y[:, d] > q[:, d], 1, -1)
            j = cost(trial)
            better = j < best
            q[better, d] = trial[better, d]
            best[better] = j[better]
            done += 1
            if progress is not None:
                progress(done, total)
    return q
