"""ONNX graphs of a shipped model whose weights stay in its .safetensors file.

Each part (encoder, decoder) is a small weightless `.onnx` file. Every initializer is ONNX external data that
points at a tensor's bytes inside the model's weights file (location = the card's `weights_file`, offset,
length), so the weights are stored once. A float16 tensor is followed by a Cast to float, which onnxruntime
folds once at load time; a float32 one is used as it is. A runtime hands onnxruntime the weights file's bytes
that it has already checked (`SessionOptions.add_external_initializers_from_files_in_memory`), and those are
what the graph runs on. It must always do so: a graph loaded from bytes without them is refused, unless the
working directory holds a file of that name, which onnxruntime 1.32 then reads unchecked. The graphs follow
the dynamo export of CNNKAE op for op (Conv, activations, Reshape, Gemm or the named op kaecompress.KAEPoly,
ConvTranspose) and give the same outputs bit for bit.

Building the graphs needs `onnx` but not torch; `verify_graphs` compares them with the PyTorch model it is
given. Promoting a model writes them (experiments.promote), and for models promoted before:

    python -m kaecompress.experiments.promote --all     # write and verify the graphs of every shipped model
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from kaecompress import zoo
from kaecompress.errors import KaecError
from kaecompress.exporters.manifest import PARTS
from kaecompress.fileio import atomic_write_bytes
from kaecompress.nn.activations import check_activation

DOMAIN = "kaecompress"
OP = "KAEPoly"
VERSION = 1
ONNX_OPSET = 20
IR_VERSION = 10
TOLERANCE = 1e-4
BATCH_SIZES = (1, 37)

# CNNKAE's keyword arguments and their defaults (a test compares them with its signature). `prior` only adds
# the entropy model, which is in neither graph.
MODEL_DEFAULTS = {"shape": [1, 28, 28], "latent_dim": 16, "channels": [32], "kernel_size": 7,
                  "encoder_kae_order": 0, "decoder_kae_order": 0, "activation": "relu", "latent_activation": None,
                  "output_activation": None, "stride": 1, "prior": None}

# The torch.nn modules nn/activations.py makes (each with its default arguments), as ONNX ops. Selu's ONNX
# defaults are torch's constants rounded to float32; Gelu's default is the exact (erf) form, as nn.GELU().
_SIMPLE = {"relu": ("Relu", {}), "sigmoid": ("Sigmoid", {}), "tanh": ("Tanh", {}), "gelu": ("Gelu", {}),
           "elu": ("Elu", {"alpha": 1.0}), "selu": ("Selu", {}), "leaky_relu": ("LeakyRelu", {"alpha": 0.01}),
           "softplus": ("Softplus", {}), "mish": ("Mish", {})}
_CLIPS = {"hardtanh": (-1.0, 1.0), "relu6": (0.0, 6.0)}
ONNX_ACTIVATIONS = {"none", "silu", *_SIMPLE, *_CLIPS}
_DTYPES = {"F16": TensorProto.FLOAT16, "F32": TensorProto.FLOAT}


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


def model_layout(model: dict, where: str) -> dict:
    """A card's `config.model` with CNNKAE's defaults filled in, checked as CNNKAE checks it, plus the size of
    the feature map around the dense layer. Options the graphs do not cover are refused by name."""
    if not isinstance(model, dict):
        raise KaecError(f"{where}: expected the model section as an object")
    unknown = sorted(set(model) - set(MODEL_DEFAULTS))
    if unknown:
        raise KaecError(f"{where}: option {unknown[0]!r} is not supported by the ONNX graphs "
                        f"(they cover {', '.join(MODEL_DEFAULTS)})")
    cfg = {**MODEL_DEFAULTS, **model}

    def whole(v):
        return isinstance(v, int) and not isinstance(v, bool)

    shape, channels = cfg["shape"], cfg["channels"]
    if not (isinstance(shape, list) and len(shape) == 3 and all(whole(s) and s >= 1 for s in shape)):
        raise KaecError(f"{where}: shape: expected (channels, height, width), got {shape!r}")
    if not (isinstance(channels, list) and channels and all(whole(c) and c >= 1 for c in channels)):
        raise KaecError(f"{where}: channels: expected a non-empty list of positive integers, got {channels!r}")
    numbers = ("latent_dim", "kernel_size", "stride", "encoder_kae_order", "decoder_kae_order")
    for key in numbers:
        if not whole(cfg[key]) or cfg[key] < (0 if key.endswith("_order") else 1):
            raise KaecError(f"{where}: {key}: expected an integer >= {0 if key.endswith('_order') else 1}, "
                            f"got {cfg[key]!r}")
    if cfg["prior"] not in (None, "none", "factorized"):
        raise KaecError(f"{where}: prior: expected factorized or none, got {cfg['prior']!r}")
    for key in ("activation", "latent_activation", "output_activation"):
        cfg[key] = check_activation(cfg[key], f"{where}: {key}")
        if cfg[key] not in ONNX_ACTIVATIONS:  # a name added to nn/activations.py but not here
            raise KaecError(f"{where}: {key} {cfg[key]!r} has no ONNX translation")
    k, stride, n = cfg["kernel_size"], cfg["stride"], len(channels)
    if stride == 1:  # unpadded convolutions, each shrinking by k - 1
        height, width = shape[1] - (k - 1) * n, shape[2] - (k - 1) * n
        fits = height >= 1 and width >= 1
    else:  # 'same' padding: each layer divides the size by the stride exactly
        height, width = shape[1] // stride ** n, shape[2] // stride ** n
        fits = shape[1] % stride ** n == 0 and shape[2] % stride ** n == 0 and k % 2 == 1
    if not fits:
        raise KaecError(f"{where}: {n} convolutions of kernel {k}, stride {stride} do not fit a "
                        f"{shape[1]}x{shape[2]} input")
    return {**cfg, "feature_shape": [channels[-1], height, width], "pad": 0 if stride == 1 else k // 2}


class _Part:
    """The nodes and initializers of one part, as CNNKAE's nn.Sequential lays it out (index by index)."""

    def __init__(self, part: str, header: dict, base: int, location: str, where: str) -> None:
        self.part, self.header, self.base, self.location, self.where = part, header, base, location, where
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.orders: set[int] = set()

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def weight(self, key: str, shape: list[int]) -> str:
        """The tensor `PART.KEY` of the weights file as external data, as float."""
        name = f"{self.part}.{key}"
        entry = self.header.get(name)
        if entry is None or entry["shape"] != shape:
            found = "missing" if entry is None else f"of shape {entry['shape']}"
            raise KaecError(f"{self.where}: the config does not match the weights ({name} {found}, the config "
                            f"needs shape {shape})")
        if entry["dtype"] not in _DTYPES:
            raise KaecError(f"{self.where}: {name} is {entry['dtype']}; the ONNX graphs take F16 or F32 weights")
        tensor = TensorProto(name=name, data_type=_DTYPES[entry["dtype"]], dims=shape,
                             data_location=TensorProto.EXTERNAL)
        start, end = entry["data_offsets"]
        for k, v in (("location", self.location), ("offset", self.base + start), ("length", end - start)):
            tensor.external_data.add(key=k, value=str(v))
        self.initializers.append(tensor)
        if entry["dtype"] == "F32":
            return name
        self.nodes.append(helper.make_node("Cast", [name], [f"{name}.float"], to=TensorProto.FLOAT))
        return f"{name}.float"

    def ints(self, name: str, values: list[int]) -> str:
        self.initializers.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    def activation(self, name: str, x: str) -> str:
        if name in _SIMPLE:
            op, attrs = _SIMPLE[name]
            return self.node(op, [x], **attrs)
        if name in _CLIPS:  # Hardtanh and ReLU6 are clamps
            bounds = [f"{name}.min", f"{name}.max"]
            if bounds[0] not in {t.name for t in self.initializers}:
                self.initializers += [helper.make_tensor(b, TensorProto.FLOAT, [], [v])
                                      for b, v in zip(bounds, _CLIPS[name])]
            return self.node("Clip", [x, *bounds])
        if name == "silu":  # no SiLU op in ONNX 20
            return self.node("Mul", [x, self.node("Sigmoid", [x])])
        return x  # "none"

    def dense(self, index: int, x: str, n_in: int, n_out: int, order: int) -> str:
        if order > 0:  # KAELayer: coeffs (out, in, order + 1), bias (1, out)
            self.orders.add(order)
            return self.node(OP, [x, self.weight(f"{index}.coeffs", [n_out, n_in, order + 1]),
                                  self.weight(f"{index}.bias", [1, n_out])], domain=DOMAIN, order=order)
        return self.node("Gemm", [x, self.weight(f"{index}.weight", [n_out, n_in]),
                                  self.weight(f"{index}.bias", [n_out])], transB=1)

    def unused(self) -> list[str]:
        used = {t.name for t in self.initializers}
        return sorted(k for k in self.header if k.startswith(f"{self.part}.") and k not in used)


def _encoder(g: _Part, cfg: dict) -> None:
    k, s, pad = cfg["kernel_size"], cfg["stride"], cfg["pad"]
    conv = dict(kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, dilations=[1, 1], group=1)
    x, i = "images", 0
    for c_in, c_out in zip([cfg["shape"][0], *cfg["channels"][:-1]], cfg["channels"]):
        x = g.node("Conv", [x, g.weight(f"{i}.weight", [c_out, c_in, k, k]), g.weight(f"{i}.bias", [c_out])],
                   **conv)
        i += 1
        if cfg["activation"] != "none":
            x, i = g.activation(cfg["activation"], x), i + 1
    flat = cfg["feature_shape"][0] * cfg["feature_shape"][1] * cfg["feature_shape"][2]
    x = g.node("Reshape", [x, g.ints("flat_shape", [-1, flat])], allowzero=1)  # nn.Flatten
    x = g.dense(i + 1, x, flat, cfg["latent_dim"], cfg["encoder_kae_order"])
    g.activation(cfg["latent_activation"], x)


def _decoder(g: _Part, cfg: dict) -> None:
    k, s, pad = cfg["kernel_size"], cfg["stride"], cfg["pad"]
    conv = dict(kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4, dilations=[1, 1], group=1,
                output_padding=[s - 1, s - 1])
    flat = cfg["feature_shape"][0] * cfg["feature_shape"][1] * cfg["feature_shape"][2]
    x = g.dense(0, "latents", cfg["latent_dim"], flat, cfg["decoder_kae_order"])
    x = g.node("Reshape", [x, g.ints("feature_shape", [-1, *cfg["feature_shape"]])], allowzero=1)
    outs = [*reversed(cfg["channels"][:-1]), cfg["shape"][0]]
    i = 2
    for j, (c_in, c_out) in enumerate(zip(reversed(cfg["channels"]), outs)):
        x = g.node("ConvTranspose", [x, g.weight(f"{i}.weight", [c_in, c_out, k, k]),
                                     g.weight(f"{i}.bias", [c_out])], **conv)
        act = cfg["activation"] if j < len(outs) - 1 else cfg["output_activation"]
        i += 1 if act == "none" else 2
        x = g.activation(act, x)


def graph_protos(card: dict, weights: bytes) -> dict[str, onnx.ModelProto]:
    """{"encoder": ModelProto, "decoder": ModelProto} of the model a card describes, reading nothing but the
    header of its weights file (`weights`, its bytes). Each graph's initializers are external data in that
    file, by its name on the card. Raises KaecError for a config the graphs do not cover or that does not
    match the weights."""
    name, location = card.get("name"), card.get("weights_file")
    where = f"{name}: config.model"
    if not isinstance(name, str) or not name:
        raise KaecError(f"model card without a name (got {name!r})")
    if not (isinstance(location, str) and Path(location).name == location and location.endswith(".safetensors")
            and "\\" not in location):
        raise KaecError(f"{name}: weights_file {location!r} must be a plain NAME.safetensors file name")
    cfg = model_layout((card.get("config") or {}).get("model"), where)
    header, base = zoo.safetensors_entries(weights, Path(location))
    c, h, w = cfg["shape"]
    shapes = {"images": ["batch", c, h, w], "latents": ["batch", cfg["latent_dim"]]}
    metadata = {"source": name, "weights_sha256": card.get("weights_sha256", ""), "weights_file": location,
                "model_config": card["config"]["model"], "input_shape": shapes["images"], "input_range": [0.0, 1.0],
                "latent_dim": cfg["latent_dim"]}
    protos = {}
    for part, (inp, out) in PARTS.items():
        g = _Part(part, header, base, location, where)
        (_encoder if part == "encoder" else _decoder)(g, cfg)
        if g.unused():
            raise KaecError(f"{where}: the config does not match the weights ({g.unused()[0]} is not part of "
                            "the model it describes)")
        g.nodes[-1].output[0] = out  # the last node's result is the part's output
        graph = helper.make_graph(g.nodes, f"{name}.{part}",
                                  [helper.make_tensor_value_info(inp, TensorProto.FLOAT, shapes[inp])],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, shapes[out])],
                                  initializer=g.initializers)
        opsets = [helper.make_opsetid("", ONNX_OPSET)] + [helper.make_opsetid(DOMAIN, VERSION)] * bool(g.orders)
        proto = helper.make_model(graph, opset_imports=opsets, ir_version=IR_VERSION, producer_name="kaecompress",
                                  functions=[function_proto(o) for o in sorted(g.orders)],
                                  doc_string=f"CNN-KAE {part}: {inp} -> {out}")
        for key, value in {**metadata, "part": part}.items():
            proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
        _check(proto, weights)
        protos[part] = proto
    return protos


def _check(proto: onnx.ModelProto, weights: bytes) -> None:
    """onnx's checker, on a copy holding the tensors' bytes: given external data it would look for the weights
    file in the working directory."""
    full = onnx.ModelProto()
    full.CopyFrom(proto)
    for tensor in full.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            info = {e.key: int(e.value) for e in tensor.external_data if e.key != "location"}
            tensor.raw_data = weights[info["offset"]:info["offset"] + info["length"]]
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    onnx.checker.check_model(full, full_check=True)


def verify_graphs(card: dict, weights: bytes, graphs: dict[str, bytes], model, images) -> dict[str, float]:
    """Run both graphs as the runtime will on `images` at batch sizes 1 and 37 and compare them with `model`
    (a torch CNNKAE with the card's weights; the decoder gets the model's own latents). Returns the largest
    absolute difference of each part; raises KaecError past TOLERANCE."""
    import numpy as np
    import torch

    from kaecompress.nn.models import weights_sha256
    from kaecompress.runtime.sessions import onnx_session

    if weights_sha256(model) != card["weights_sha256"]:
        raise KaecError(f"{card['name']}: the model to verify with is not the card's (weights id differs)")
    if len(images) < max(BATCH_SIZES):
        raise KaecError(f"verification needs at least {max(BATCH_SIZES)} images, got {len(images)}")
    sessions = {part: onnx_session(graphs[part], external={card["weights_file"]: weights}) for part in PARTS}
    model = model.eval()
    diffs = {part: 0.0 for part in PARTS}
    for batch in BATCH_SIZES:
        x = images[:batch].float().contiguous()
        with torch.no_grad():
            z = model.encoder(x)
            expected = {"encoder": (x, z), "decoder": (z, model.decoder(z))}
        for part, (inp, want) in expected.items():
            got = sessions[part].run(None, {PARTS[part][0]: inp.numpy()})[0]
            if got.shape != tuple(want.shape):
                raise KaecError(f"{card['name']} {part}: output of shape {got.shape}, expected {tuple(want.shape)}")
            diffs[part] = max(diffs[part], float(np.abs(got - want.numpy()).max()))
    bad = [f"{part} max abs diff {d:.3g}" for part, d in diffs.items() if not d <= TOLERANCE]
    if bad:
        raise KaecError(f"{card['name']}: the ONNX graphs differ from PyTorch ({'; '.join(bad)} > {TOLERANCE:g})")
    return diffs


def write_graphs(folder: Path, card: dict, weights: bytes, model, images) -> dict:
    """Build the graphs of the model of `card` (its weights' bytes `weights`), verify them against the torch
    `model` on `images` (37 or more), then write NAME.encoder.onnx and NAME.decoder.onnx into `folder`,
    beside the card. Nothing is written unless both pass. Returns the card's "onnx" entry."""
    name = card["name"]
    graphs = {part: proto.SerializeToString() for part, proto in graph_protos(card, weights).items()}
    diffs = verify_graphs(card, weights, graphs, model, images[:max(BATCH_SIZES)])
    entry: dict = {}
    for part, data in graphs.items():  # written only once verified
        atomic_write_bytes(Path(folder) / f"{name}.{part}.onnx", data)
        entry[part] = {"file": f"{name}.{part}.onnx", "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    return {**entry, "opset": ONNX_OPSET, "max_abs_diff": diffs}
