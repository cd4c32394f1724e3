"""The KAE layer as a named ONNX op: `kaecompress.KAEPoly(X, C, B) <order>`, defined by an ONNX function.

torch.onnx's dynamo exporter inlines every ONNX function it emits, so the name would be lost. Instead the
layer is exported as a torch custom op translated to a bare `kaecompress.KAEPoly` node, and the function
that defines it is added to the saved model afterwards. Its body is standard ops only:

    P = Concat(X, X*X, X*X*X, ..., axis=1)                  (N, order * in)   the stacked powers
    W = Reshape(Transpose(C[:, :, 1:]), [out, order * in])  folded once by the runtime (C is an initializer)
    Y = Gemm(P, W^T, ReduceSum(C[:, :, 0]) + B)

so any ONNX runtime runs it, graph viewers show KAE layers by name, and nothing of size N x out x in exists.
"""

from __future__ import annotations

import contextlib

import onnx
import torch
from onnx import helper
from onnxscript import FLOAT
from onnxscript.values import Opset

# The op's definition lives in graphs, which builds graphs without torch; formats and the exporters' manifest
# import these names from here.
from kaecompress.exporters.graphs import DOMAIN, ONNX_OPSET, OP, VERSION, function_proto
from kaecompress.nn.layers import KAELayer, kae_poly


@torch.library.custom_op("kaecompress::kae_poly", mutates_args=())
def kae_poly_op(x: torch.Tensor, coeffs: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return kae_poly(x, coeffs, bias)


@kae_poly_op.register_fake
def _(x, coeffs, bias):
    return x.new_empty(x.shape[0], coeffs.shape[0])


class KAEOpLayer(torch.nn.Module):
    """Stands in for a KAELayer while exporting to ONNX, so that the layer reaches the graph as one op."""

    def __init__(self, layer: KAELayer) -> None:
        super().__init__()
        self.coeffs = layer.coeffs
        self.bias = layer.bias if layer.bias is not None else torch.nn.Parameter(torch.zeros(1, layer.out_dim))
        self.input_dim = layer.input_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.kaecompress.kae_poly(x.reshape(-1, self.input_dim), self.coeffs, self.bias)


def with_kae_ops(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of `module` sharing its weights, with every KAELayer (order >= 1) replaced by KAEOpLayer."""
    import copy

    clone = copy.copy(module)
    clone._modules = dict(module._modules)
    for name, child in module.named_children():
        if isinstance(child, KAELayer) and child.order >= 1:
            clone._modules[name] = KAEOpLayer(child)
        elif len(child._modules):
            clone._modules[name] = with_kae_ops(child)
    return clone


def _schema() -> onnx.defs.OpSchema:
    OpSchema = onnx.defs.OpSchema
    return OpSchema(
        OP, DOMAIN, VERSION, doc="Kolmogorov-Arnold polynomial layer: Y = B + sum_i sum_k C[:, i, k] * X_i**k",
        inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter("C", "T"),
                OpSchema.FormalParameter("B", "T")],
        outputs=[OpSchema.FormalParameter("Y", "T")],
        type_constraints=[("T", ["tensor(float)"], "float tensors")],
        attributes=[OpSchema.Attribute("order", OpSchema.AttrType.INT, "polynomial order (>= 1)")],
    )


@contextlib.contextmanager
def registered_schema():
    """The op's schema, registered for the duration of an export (onnxscript looks ops up by schema)."""
    registered = onnx.defs.has(OP, VERSION, DOMAIN)
    if not registered:
        onnx.defs.register_schema(_schema())
    try:
        yield
    finally:
        if not registered:
            onnx.defs.deregister_schema(OP, VERSION, DOMAIN)


def translation():
    """The custom_translation_table entry: kae_poly -> one kaecompress.KAEPoly node."""
    kae = Opset(DOMAIN, VERSION)

    def kae_poly_onnx(x: FLOAT, coeffs: FLOAT, bias: FLOAT) -> FLOAT:
        return kae.KAEPoly(x, coeffs, bias, order=coeffs.shape[2] - 1)

    return {torch.ops.kaecompress.kae_poly.default: kae_poly_onnx}


def add_function(model: onnx.ModelProto) -> onnx.ModelProto:
    """Attach the KAEPoly definition to a model that uses the op, and import its domain."""
    orders = {helper.get_attribute_value(a) for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP
              for a in n.attribute if a.name == "order"}
    if not orders:
        return model
    if len(orders) > 1:  # one function per name: CNNKAE parts hold a single KAE layer each
        raise ValueError(f"KAEPoly layers of different orders {sorted(orders)} in one graph")
    if not any(f.domain == DOMAIN and f.name == OP for f in model.functions):
        model.functions.append(function_proto(orders.pop()))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    return model
