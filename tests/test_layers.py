import itertools

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kaecompress.nn.layers import KAELayer, LiteralKAELayer, kae_literal, kae_poly


def by_hand(x, coeffs, bias):
    """y_j = b_j + sum_i sum_k c[j,i,k] x_i**k, one scalar at a time."""
    out_dim, in_dim, n = coeffs.shape
    flat = x.reshape(-1, in_dim)
    y = torch.zeros(flat.shape[0], out_dim, dtype=x.dtype)
    for b, j, i, k in itertools.product(range(flat.shape[0]), range(out_dim), range(in_dim), range(n)):
        y[b, j] += coeffs[j, i, k] * flat[b, i] ** k
    return (y + bias).reshape(*x.shape[:-1], out_dim)


def test_literal_formula_is_the_sum_by_hand():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64) * 2
    c = torch.randn(2, 4, 4, generator=g, dtype=torch.float64)
    b = torch.randn(1, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(kae_literal(x, c, b), by_hand(x, c, b))


@pytest.mark.parametrize("order", range(6))
@pytest.mark.parametrize("lead", [(), (5,), (2, 3)])
def test_forward_and_gradients_match_the_literal_formula(order, lead):
    torch.manual_seed(order)
    layer = KAELayer(7, 3, order=order).double()
    with torch.no_grad():
        layer.coeffs.normal_()  # well away from the tiny init, so every term matters
        layer.bias.normal_()
    # negative values and |x| > 1, where odd powers and large powers differ most
    x = (torch.randn(*lead, 7, dtype=torch.float64) * 2).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()

    y = layer(x)
    y_ref = kae_literal(x_ref, layer.coeffs, layer.bias)
    assert y.shape == (*lead, 3)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)

    weights = torch.randn_like(y)
    grads = torch.autograd.grad((y * weights).sum(), [x, layer.coeffs, layer.bias], materialize_grads=True)
    grads_ref = torch.autograd.grad((y_ref * weights).sum(), [x_ref, layer.coeffs, layer.bias])
    for g, g_ref in zip(grads, grads_ref):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10)


def test_without_bias():
    layer = KAELayer(5, 2, order=2, bias=False).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    assert layer.bias is None
    torch.testing.assert_close(layer(x), kae_literal(x, layer.coeffs))


def test_parameters_are_named_and_shaped_as_the_published_layer():
    torch.manual_seed(0)
    layer = KAELayer(15488, 16, order=3)
    shapes = {k: tuple(v.shape) for k, v in layer.state_dict().items()}
    assert shapes == {"coeffs": (16, 15488, 4), "bias": (1, 16)}
    assert abs(layer.coeffs.std().item() - 0.01) < 5e-4
    assert abs(layer.coeffs.mean().item()) < 5e-4
    assert torch.count_nonzero(layer.bias) == 0
    assert repr(layer) == "KAELayer(input_dim=15488, out_dim=16, order=3, addbias=True)"


def test_published_state_dict_loads_unchanged():
    published = {"coeffs": torch.randn(4, 6, 3), "bias": torch.randn(1, 4)}
    layer = KAELayer(6, 4, order=2)
    layer.load_state_dict(published)
    literal = LiteralKAELayer(6, 4, order=2)
    literal.load_state_dict(published)
    x = torch.randn(10, 6)
    torch.testing.assert_close(layer(x), literal(x), rtol=1e-5, atol=1e-5)


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("shape", [(8, 300, 50), (8, 50, 300)])
def test_no_batch_by_out_by_in_tensor_is_ever_built(shape):
    batch, in_dim, out_dim = shape
    order = 3
    layer = KAELayer(in_dim, out_dim, order=order)
    x = torch.randn(batch, in_dim, requires_grad=True)
    with _LargestTensor() as fast:
        layer(x).square().sum().backward()
    with _LargestTensor() as literal:
        kae_literal(x, layer.coeffs, layer.bias).square().sum()
    bound = max(batch * in_dim * order, out_dim * in_dim * (order + 1), batch * out_dim)
    assert fast.largest <= bound
    assert literal.largest >= batch * out_dim * in_dim  # the check does see such tensors when they exist


def test_negative_order_is_rejected():
    with pytest.raises(ValueError):
        KAELayer(3, 2, order=-1)


def test_kae_poly_matches_for_float32_within_tolerance():
    torch.manual_seed(1)
    c = torch.randn(16, 200, 4) * 0.1
    b = torch.randn(1, 16)
    x = torch.rand(32, 200)
    torch.testing.assert_close(kae_poly(x, c, b), kae_literal(x.double(), c.double(), b.double()).float(),
                               rtol=1e-4, atol=1e-4)
