"""A learned factorized prior: one density per latent dimension, for rate-trained codec models.

Training sees the latents with uniform noise U(-1/2, 1/2) and pays -log2 of the density's mass over the
unit interval around each value (the rate); coding sees the latents rounded to integers and uses integer
frequency tables built once from the same density (`integer_tables`), stored with the weights, so that
every machine decodes a file to the same integers.

After training, `fit_context` may add a linear context model (kaecompress.codec.context) fitted to the training
latents: the dimensions it predicts are then coded as residuals, under tables fitted to those residuals.

Each dimension's cumulative is sigmoid(f(x)) with f a small monotone network (positive weights, a
tanh-shaped nonlinearity whose factor keeps it monotone), the univariate density of Ballé et al. 2018.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kaecompress.errors import KaecError

LIKELIHOOD_FLOOR = 1e-9  # keeps -log2 finite for values the density has not seen yet
TABLE_REACH = 256        # integers in [-reach, reach] are examined when building tables
TAIL_MASS = 1e-7         # values rarer than this at either end are coded through the escape
TABLE_ARRAYS = ("offsets", "freqs", "precision")  # rangecoder.IntegerTables.to_arrays(), stored as buffers
CONTEXT_PREFIX = "context_"  # context.ARRAYS, stored as buffers only in models that have one


class FactorizedPrior(nn.Module):
    """An independent learned density per latent dimension; `bits(y)` is the rate of noisy latents."""

    def __init__(self, dim: int, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0) -> None:
        super().__init__()
        self.dim = int(dim)
        sizes = (1, *filters, 1)
        scale = init_scale ** (1 / (len(sizes) - 1))
        self.matrices = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.factors = nn.ParameterList()
        for i in range(len(sizes) - 1):
            init = math.log(math.expm1(1 / scale / sizes[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((self.dim, sizes[i + 1], sizes[i]), init)))
            self.biases.append(nn.Parameter(torch.empty(self.dim, sizes[i + 1], 1).uniform_(-0.5, 0.5)))
            if i < len(sizes) - 2:
                self.factors.append(nn.Parameter(torch.zeros(self.dim, sizes[i + 1], 1)))
        # The integer tables (filled by `freeze`); empty until then, resized on loading.
        for name in TABLE_ARRAYS:
            self.register_buffer(f"table_{name}", torch.zeros(0, dtype=torch.int32))

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """Mass of the unit interval around each value of y (n, dim), under its dimension's density."""
        return interval_mass(list(self.matrices), list(self.biases), list(self.factors), y)

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        """Information content in bits of each latent vector of y (n, dim): shape (n,)."""
        return -torch.log2(self.likelihood(y)).sum(dim=1)

    @torch.no_grad()
    def integer_pmf(self) -> tuple[np.ndarray, np.ndarray]:
        """Each dimension's probabilities of the integers it takes, (dim, K), and the first integer, (dim,).

        The range of a dimension runs from the first to the last integer whose mass is above TAIL_MASS; one
        width K (the widest) serves all, so the table is one array.
        """
        grid = torch.arange(-TABLE_REACH, TABLE_REACH + 1, dtype=torch.float32)
        mass = self.likelihood(grid.unsqueeze(1).expand(-1, self.dim).contiguous()).t().double()  # (dim, n)
        mass = mass.where(mass > LIKELIHOOD_FLOOR, torch.zeros((), dtype=mass.dtype))
        keep = mass > TAIL_MASS
        idx = torch.arange(grid.numel())
        first = torch.where(keep, idx, grid.numel()).min(dim=1).values
        last = torch.where(keep, idx, -1).max(dim=1).values
        first = torch.where(last < 0, torch.full_like(first, TABLE_REACH), first)  # a dead dimension: just 0
        last = torch.where(last < 0, torch.full_like(last, TABLE_REACH), last)
        width = int((last - first).max()) + 1
        start = torch.minimum(first, torch.full_like(first, grid.numel() - width))
        cols = start.unsqueeze(1) + torch.arange(width)
        pmf = mass.gather(1, cols)
        return pmf.numpy(), (start - TABLE_REACH).to(torch.int64).numpy()

    def freeze(self) -> None:
        """Build and store the integer tables that coding uses (call once training is over)."""
        from kaecompress.codec.rangecoder import IntegerTables

        self._set_tables(IntegerTables.from_pmf(*self.integer_pmf()))

    def _set_tables(self, tables) -> None:
        for name, array in tables.to_arrays().items():
            setattr(self, f"table_{name}", torch.from_numpy(np.ascontiguousarray(array, dtype=np.int32)))

    @property
    def frozen(self) -> bool:
        return self.table_freqs.numel() > 0

    def context(self):
        """The fitted `context.LinearContext`, or None (each latent coded as it is)."""
        from kaecompress.codec import context

        if not hasattr(self, f"{CONTEXT_PREFIX}order"):
            return None
        fitted = context.from_arrays({k: getattr(self, CONTEXT_PREFIX + k).cpu().numpy() for k in context.ARRAYS})
        if fitted.dims != self.dim:
            raise KaecError(f"context model for {fitted.dims} latents in a model of {self.dim}")
        return fitted

    def fit_context(self, latents: np.ndarray) -> int:
        """Fit a linear context model to the integer latents (N, D) of training images; keep it, with tables
        for the residuals of the dimensions it predicts, when it predicts any. Returns how many it predicts.
        The other dimensions keep their learned densities."""
        from kaecompress.codec import context
        from kaecompress.codec.rangecoder import IntegerTables, column_bits

        tables = self.tables()
        fitted, residuals = context.fit(latents, column_bits(latents, tables))
        rows = fitted.order[fitted.predicted]
        if len(rows) == 0:
            return 0
        learned = tables.freqs[:, :-1] / float(2**tables.precision)  # the escape's share is what rows lack
        fitted_pmf, fitted_low = context.histogram_pmf(residuals[:, rows])
        pmf = np.zeros((self.dim, max(learned.shape[1], fitted_pmf.shape[1])))
        pmf[:, :learned.shape[1]] = learned
        offsets = tables.offsets.astype(np.int64).copy()
        pmf[rows] = 0.0
        pmf[rows, :fitted_pmf.shape[1]] = fitted_pmf
        offsets[rows] = fitted_low
        self._set_tables(IntegerTables.from_pmf(pmf, offsets))
        for name, array in fitted.to_arrays().items():
            self.register_buffer(CONTEXT_PREFIX + name, torch.from_numpy(array))
        return len(rows)

    def tables(self):
        """The stored integer tables as a `rangecoder.IntegerTables`."""
        from kaecompress.codec.rangecoder import IntegerTables

        if not self.frozen:
            raise RuntimeError("the prior has no integer tables yet: call freeze() after training")
        return IntegerTables.from_arrays({name: getattr(self, f"table_{name}").cpu().numpy()
                                          for name in TABLE_ARRAYS})

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in TABLE_ARRAYS:  # their shape is the saved table's, not known before
            saved = state_dict.get(f"{prefix}table_{name}")
            if saved is not None:
                setattr(self, f"table_{name}", torch.empty_like(saved))
        for key, saved in state_dict.items():  # a context model's buffers exist only where one was fitted
            if key.startswith(prefix + CONTEXT_PREFIX) and "." not in key[len(prefix):]:
                self.register_buffer(key[len(prefix):], torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def interval_mass(matrices: list, biases: list, factors: list, y: torch.Tensor) -> torch.Tensor:
    """FactorizedPrior.likelihood from its parameters, over any leading dimensions: y (..., n, dim) and
    parameters (..., dim, rows, cols) give (..., n, dim). Packed training passes every member's stacked
    parameters at once."""
    def logits_cdf(v):  # (..., dim, 1, n): the logit of each dimension's cumulative at v
        for i, (m, b) in enumerate(zip(matrices, biases)):
            v = torch.matmul(F.softplus(m), v) + b
            if i < len(factors):
                v = v + torch.tanh(factors[i]) * torch.tanh(v)
        return v

    v = y.transpose(-1, -2).unsqueeze(-2)
    lower = logits_cdf(v - 0.5)
    upper = logits_cdf(v + 0.5)
    # Take the difference on the side of the sigmoid where it is not a difference of two numbers near 1.
    sign = -torch.sign(lower + upper).detach()
    mass = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
    return mass.squeeze(-2).transpose(-1, -2).clamp_min(LIKELIHOOD_FLOOR)


def round_ste(y: torch.Tensor) -> torch.Tensor:
    """Round to integers in the forward pass, identity in the backward pass (straight-through)."""
    return y + (torch.round(y) - y).detach()
