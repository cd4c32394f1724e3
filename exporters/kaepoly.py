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

from kaecompress.nn.layers import KAELayer, kae_poly

DOMAIN = "kaecompress"
OP = "KAEPoly"
VERSION = 1
ONNX_OPSET = 20


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


def function_proto(order: int) -> onnx.FunctionProto:
    """The definition of kaecompress.KAEPoly in standard ONNX ops, for layers of the given order.

    The powers are a chain of Mul nodes rather than one Pow (onnxruntime evaluates Pow with a vector of
    exponents element by element through std::pow, 10x slower than the whole rest of the encoder), so the
    body is written for one order; the node keeps `order` as an attribute for readers and viewers."""

    def ints(name, values):
        return helper.make_node("Constant", [], [name],
                                value=helper.make_tensor(name, onnx.TensorProto.INT64, [len(values)], values))

    powers = ["X"] + [f"x{k}" for k in range(2, order + 1)]
    nodes = [helper.make_node("Mul", [powers[k - 2], "X"], [powers[k - 1]]) for k in range(2, order + 1)]
    nodes += [
        helper.make_node("Concat", powers, ["powers"], axis=1),                 # (N, order * in)
        ints("k0", [0]), ints("k1", [1]), ints("k_end", [order + 1]), ints("axis_k", [2]),
        ints("axes_in_k", [1, 2]), ints("rows_flat", [0, -1]), ints("flat", [-1]),
        helper.make_node("Slice", ["C", "k1", "k_end", "axis_k"], ["c_powers"]),    # (out, in, order)
        helper.make_node("Transpose", ["c_powers"], ["c_blocks"], perm=[0, 2, 1]),  # (out, order, in)
        helper.make_node("Reshape", ["c_blocks", "rows_flat"], ["weight"]),         # (out, order * in)
        helper.make_node("Slice", ["C", "k0", "k1", "axis_k"], ["c_const"]),
        helper.make_node("ReduceSum", ["c_const", "axes_in_k"], ["const"], keepdims=0),
        helper.make_node("Reshape", ["B", "flat"], ["b_flat"]),
        helper.make_node("Add", ["const", "b_flat"], ["bias"]),
        helper.make_node("Gemm", ["powers", "weight", "bias"], ["Y"], transB=1),
    ]
    return helper.make_function(DOMAIN, OP, ["X", "C", "B"], ["Y"], nodes,
                                [helper.make_opsetid("", ONNX_OPSET)], attributes=["order"],
                                doc_string=f"Kolmogorov-Arnold polynomial layer of order {order}: "
                                           "stacked powers, one Gemm, bias")


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
