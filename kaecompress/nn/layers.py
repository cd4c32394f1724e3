"""The Kolmogorov-Arnold polynomial layer (KAE): y_j = b_j + sum_i sum_{k=0..order} c[j,i,k] * x_i**k.

`KAELayer` keeps the published layer's parameter names and shapes (`coeffs` (out, in, order+1), `bias`
(1, out)) so its state dicts load unchanged, but computes the sum as one matrix product over the powers
x**1..x**order laid side by side. Memory is O(batch * in * order); nothing of size batch * out * in is
ever built. `kae_literal` is the formula written out term by term, the way the published layer evaluates
it; tests and benchmarks use it as the reference.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.autograd.function import once_differentiable


def _weight(coeffs: torch.Tensor) -> torch.Tensor:
    """coeffs[:, :, 1:] laid out to match the powers [x, x**2, ...]: (out, order * in)."""
    out_dim, in_dim, n_terms = coeffs.shape
    return coeffs[:, :, 1:].permute(0, 2, 1).reshape(out_dim, (n_terms - 1) * in_dim)


def _constant(coeffs: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # x**0 == 1 for every input, so the constant coefficients reduce to one vector added like a bias.
    const = coeffs[:, :, 0].sum(dim=1)
    return const if bias is None else const + bias.reshape(-1)


def kae_poly(x: torch.Tensor, coeffs: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Evaluate the KAE polynomial for `x` of shape (..., in) with `coeffs` (out, in, order+1).

    Plain differentiable ops, so that exporters trace it as a graph of standard operators."""
    out_dim, in_dim, n_terms = coeffs.shape
    lead = x.shape[:-1]
    flat = x.reshape(-1, in_dim)
    const = _constant(coeffs, bias)
    if n_terms == 1:
        y = const.expand(flat.shape[0], out_dim)
    else:
        powers = [flat]
        for _ in range(n_terms - 2):
            powers.append(powers[-1] * flat)
        y = torch.addmm(const, torch.cat(powers, dim=1), _weight(coeffs).t())
    return y.reshape(*lead, out_dim)


class _KAEPolyTrain(torch.autograd.Function):
    """kae_poly (order >= 1, 2-D input) with a hand-written backward. The gradients need only the powers
    and the weight: two matrix products and `order - 1` fused multiply-adds, instead of autograd's longer
    chain of elementwise ops and temporaries."""

    @staticmethod
    def forward(ctx, flat, coeffs, bias):
        in_dim, order = coeffs.shape[1], coeffs.shape[2] - 1
        powers = flat.new_empty(flat.shape[0], order * in_dim)
        powers[:, :in_dim] = flat
        for k in range(1, order):
            torch.mul(powers[:, (k - 1) * in_dim:k * in_dim], flat, out=powers[:, k * in_dim:(k + 1) * in_dim])
        weight = _weight(coeffs)
        ctx.save_for_backward(powers, weight)
        ctx.in_dim, ctx.order, ctx.has_bias = in_dim, order, bias is not None
        return torch.addmm(_constant(coeffs, bias), powers, weight.t())

    @staticmethod
    @once_differentiable  # the hand-written gradient is not itself differentiable
    def backward(ctx, grad):
        powers, weight = ctx.saved_tensors
        in_dim, order, out_dim = ctx.in_dim, ctx.order, weight.shape[0]
        grad_x = grad_coeffs = grad_bias = None
        if ctx.needs_input_grad[0]:
            # d/dx sum_k c_k x**k = sum_k k * x**(k-1) * c_k, and x**(k-1) is already in `powers`
            grad_powers = grad @ weight
            grad_x = grad_powers[:, :in_dim]
            for k in range(2, order + 1):
                grad_x = torch.addcmul(grad_x, powers[:, (k - 2) * in_dim:(k - 1) * in_dim],
                                       grad_powers[:, (k - 1) * in_dim:k * in_dim], value=float(k))
        grad_const = grad.sum(dim=0)
        if ctx.needs_input_grad[1]:
            grad_coeffs = weight.new_empty(out_dim, in_dim, order + 1)
            grad_coeffs[:, :, 0] = grad_const[:, None]
            grad_coeffs[:, :, 1:] = (grad.t() @ powers).view(out_dim, order, in_dim).transpose(1, 2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_const.reshape(1, out_dim)
        return grad_x, grad_coeffs, grad_bias


def kae_literal(x: torch.Tensor, coeffs: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The reference formula, expanded to a (batch, out, in, order+1) tensor: slow and memory-hungry."""
    out_dim, in_dim, n_terms = coeffs.shape
    lead = x.shape[:-1]
    expanded = x.reshape(-1, 1, in_dim).expand(-1, out_dim, in_dim)
    terms = torch.stack([expanded**k for k in range(n_terms)], dim=-1) * coeffs
    y = terms.sum(dim=(-2, -1))
    if bias is not None:
        y = y + bias
    return y.reshape(*lead, out_dim)


class KAELayer(nn.Module):
    """Dense layer whose every input-output edge is a learnable polynomial of degree `order`."""

    def __init__(self, input_dim: int, out_dim: int, order: int = 3, bias: bool = True) -> None:
        super().__init__()
        if order < 0:
            raise ValueError(f"KAELayer order must be >= 0, got {order}")
        self.input_dim = int(input_dim)
        self.out_dim = int(out_dim)
        self.order = int(order)
        self.addbias = bool(bias)
        self.coeffs = nn.Parameter(torch.randn(self.out_dim, self.input_dim, self.order + 1) * 0.01)
        if self.addbias:
            self.bias = nn.Parameter(torch.zeros(1, self.out_dim))
        else:
            self.register_parameter("bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The hand-written backward pays off only when gradients flow; tracing for export sees plain ops.
        if self.order > 0 and torch.is_grad_enabled() and not torch.compiler.is_compiling():
            flat = _KAEPolyTrain.apply(x.reshape(-1, self.input_dim), self.coeffs, self.bias)
            return flat.reshape(*x.shape[:-1], self.out_dim)
        return kae_poly(x, self.coeffs, self.bias)

    def extra_repr(self) -> str:
        return f"input_dim={self.input_dim}, out_dim={self.out_dim}, order={self.order}, addbias={self.addbias}"


class LiteralKAELayer(KAELayer):
    """Same parameters, evaluated with `kae_literal`: the baseline the speed benchmark compares against."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kae_literal(x, self.coeffs, self.bias)
