"""The ONNX graphs shipped beside each model's weights (exporters/graphs.py): weightless files whose
initializers are external data inside NAME.safetensors, run by onnxruntime from memory as the runtime runs
them, and matching the PyTorch model and the dynamo export."""

import hashlib
import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save

from kaecompress import zoo
from kaecompress.errors import KaecError
from kaecompress.exporters import graphs
from kaecompress.exporters.manifest import PARTS
from kaecompress.nn.activations import ACTIVATIONS
from kaecompress.nn.models import CNNKAE, weights_sha256
from kaecompress.runtime.sessions import onnx_session

TRAINED = Path(__file__).resolve().parent.parent / "trained"
SHIPPED = sorted(zoo.cards(TRAINED))
EXACT = ("mnist-q2", "mnist-kae-enc3")  # f16 with a KAE decoder; f32, stride 1, with a KAE encoder


@pytest.fixture(scope="module")
def images(mnist_val, tmp_path_factory):
    """37 test images of each dataset the shipped models were trained on."""
    from kaecompress.experiments.data import load_images

    fashion = load_images("fashion-mnist", False, tmp_path_factory.mktemp("fashion"))
    return {"mnist": mnist_val[:37], "fashion-mnist": fashion[:37]}


def _run(graph: bytes, card: dict, weights: bytes, x: np.ndarray) -> np.ndarray:
    session = onnx_session(graph, external={card["weights_file"]: weights})
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _committed(name: str) -> tuple[dict, bytes, dict[str, bytes]]:
    card, weights = zoo.read_weights(name, TRAINED)
    return card, weights, {part: (TRAINED / card["onnx"][part]["file"]).read_bytes() for part in PARTS}


def test_every_shipped_model_has_graphs():
    assert sorted(p.name for p in TRAINED.glob("*.onnx")) == sorted(f"{n}.{p}.onnx" for n in SHIPPED for p in PARTS)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_graphs_match_torch(name, images):
    from kaecompress.experiments.loading import load_trained

    card, weights, files = _committed(name)
    entry = card["onnx"]
    assert entry["opset"] == graphs.ONNX_OPSET == 20
    for part, data in files.items():
        assert entry[part] == {"file": f"{name}.{part}.onnx", "sha256": hashlib.sha256(data).hexdigest(),
                               "bytes": len(data)}
    assert all(0 <= entry["max_abs_diff"][part] <= graphs.TOLERANCE for part in PARTS)
    # the committed files are what the code builds from the card and weights today
    assert {part: p.SerializeToString() for part, p in graphs.graph_protos(card, weights).items()} == files
    diffs = graphs.verify_graphs(card, weights, files, load_trained(name, TRAINED).model,
                                 images[card["dataset"]])
    assert max(diffs.values()) <= 1e-4


@pytest.mark.parametrize("name", EXACT)
def test_graphs_equal_the_dynamo_export_bit_for_bit(name, images, tmp_path):
    from kaecompress.experiments.loading import load_trained
    from kaecompress.exporters.formats import write_onnx

    card, weights, files = _committed(name)
    write_onnx(load_trained(name, TRAINED).model, tmp_path, {"source": name})
    x = images[card["dataset"]].numpy()
    for batch in (1, 37):
        ours = _run(files["encoder"], card, weights, x[:batch])
        theirs = onnx_session(tmp_path / "encoder.onnx").run(None, {"images": x[:batch]})[0]
        assert np.array_equal(ours, theirs)
        for latents in (ours, np.rint(ours)):  # as exported and as a codec decodes them
            a = _run(files["decoder"], card, weights, latents)
            b = onnx_session(tmp_path / "decoder.onnx").run(None, {"latents": latents})[0]
            assert np.abs(a - b).max() == 0.0


def _tiny(activation: str, dtype: torch.dtype, stride: int) -> tuple[CNNKAE, dict, bytes]:
    """A small CNNKAE with random weights in `dtype`, saved as a safetensors file, and a card for it."""
    gen = torch.Generator().manual_seed(len(activation) + stride)
    if stride == 2:  # padded, two layers, KAE on both sides
        model = CNNKAE((2, 8, 8), 5, [3, 4], 3, 2, 3, activation, activation, activation, stride=2)
    else:  # unpadded, Linear on both sides
        model = CNNKAE((1, 9, 7), 6, [3], 3, 0, 0, activation, activation, activation)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.randn(p.shape, generator=gen) * 0.2).to(dtype))
    weights = save({k: v.to(dtype).contiguous() for k, v in model.state_dict().items()})
    card = {"name": "tiny", "weights_file": "tiny.safetensors", "weights_sha256": weights_sha256(model),
            "config": {"model": model.config}}
    return model.eval(), card, weights


@pytest.mark.parametrize("stride,dtype", [(2, torch.float16), (1, torch.float32)])
@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_every_activation_matches_torch(activation, stride, dtype):
    model, card, weights = _tiny(activation, dtype, stride)
    protos = graphs.graph_protos(card, weights)
    images = torch.rand(37, *model.shape, generator=torch.Generator().manual_seed(1))
    diffs = graphs.verify_graphs(card, weights, {p: m.SerializeToString() for p, m in protos.items()}, model, images)
    assert max(diffs.values()) <= 1e-5, diffs


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_each_activation_is_torchs_function(activation):
    """Each activation's ONNX nodes against its torch module on [-30, 30] (softplus switches to x past 20,
    relu6 and hardtanh clip)."""
    from kaecompress.nn.activations import make_activation
    from onnx import TensorProto, helper

    g = graphs._Part("encoder", {}, 0, "none.safetensors", "test")
    y = g.activation(activation, "x")
    if y == "x":  # "none"
        return
    g.nodes[-1].output[0] = "y"
    values = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2001]) for n in ("x", "y")]
    model = helper.make_model(helper.make_graph(g.nodes, "act", values[:1], values[1:], initializer=g.initializers),
                              opset_imports=[helper.make_opsetid("", graphs.ONNX_OPSET)], ir_version=graphs.IR_VERSION)
    x = np.linspace(-30, 30, 2001, dtype=np.float32)
    got = onnx_session(model.SerializeToString()).run(None, {"x": x})[0]
    with torch.no_grad():
        want = make_activation(activation)(torch.from_numpy(x)).numpy()
    # onnxruntime's Sigmoid is accurate to ~1e-7 absolute, which silu's x * sigmoid(x) scales by |x|
    assert np.all(np.abs(got - want) <= 1e-5 * np.maximum(1, np.abs(want)))


def test_a_graph_reads_only_the_weights_it_is_given(tmp_path, monkeypatch):
    """Loaded from bytes without the weights in memory, a graph is refused; given them, it runs on them
    and not on the file of that name in the working directory."""
    card, weights, files = _committed("mnist-q2")
    monkeypatch.chdir(tmp_path)
    for data in files.values():
        with pytest.raises(Exception, match="[Ee]xternal data|model_path must not be empty"):
            onnx_session(data)
    with pytest.raises(Exception):  # weights under another name are not the ones the graph names
        onnx_session(files["encoder"], external={"other.safetensors": weights})
    monkeypatch.chdir(TRAINED)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    header, base = zoo.safetensors_entries(weights, Path(card["weights_file"]))
    start, end = (base + o for o in header["encoder.5.bias"]["data_offsets"])
    zeroed = weights[:start] + bytes(end - start) + weights[end:]
    assert not np.array_equal(_run(files["encoder"], card, weights, x), _run(files["encoder"], card, zeroed, x))


@pytest.mark.parametrize("change,message", [
    ({"norm": "batch"}, "option 'norm' is not supported"),
    ({"activation": "swish"}, "unknown activation 'swish'"),
    ({"latent_dim": 32}, "does not match the weights"),
    ({"channels": [16]}, "does not match the weights"),
    ({"kernel_size": 4}, "do not fit"),
    ({"stride": True}, "stride: expected an integer"),
])
def test_an_unsupported_or_mismatched_config_is_refused(change, message):
    card, weights, _ = _committed("mnist-q2")
    card["config"]["model"].update(change)
    with pytest.raises(KaecError, match=message):
        graphs.graph_protos(card, weights)


def test_weights_of_another_dtype_are_refused():
    model = CNNKAE((1, 8, 8), 4, [2], 3, stride=2)
    weights = save({k: v.double() for k, v in model.state_dict().items()})
    card = {"name": "tiny", "weights_file": "tiny.safetensors", "config": {"model": model.config}}
    with pytest.raises(KaecError, match="F64; the ONNX graphs take F16 or F32"):
        graphs.graph_protos(card, weights)


def test_the_defaults_are_cnnkaes():
    params = inspect.signature(CNNKAE.__init__).parameters
    defaults = {k: list(p.default) if isinstance(p.default, tuple) else p.default
                for k, p in params.items() if k != "self"}
    assert defaults == graphs.MODEL_DEFAULTS
    assert set(ACTIVATIONS) == graphs.ONNX_ACTIVATIONS


def test_kaepoly_uses_the_moved_definition():
    from kaecompress.exporters import kaepoly

    assert kaepoly.function_proto is graphs.function_proto
    assert (kaepoly.DOMAIN, kaepoly.OP, kaepoly.VERSION, kaepoly.ONNX_OPSET) == ("kaecompress", "KAEPoly", 1, 20)


def test_building_graphs_imports_no_torch():
    code = ("import sys; from pathlib import Path; from kaecompress import zoo; "
            "from kaecompress.exporters.graphs import graph_protos; "
            f"card, w = zoo.read_weights('mnist-kae-enc3', Path({str(TRAINED)!r})); graph_protos(card, w); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_the_command_writes_graphs_and_card(tmp_path, mnist_root, monkeypatch):
    from kaecompress.experiments import promote
    from kaecompress.experiments.loading import load_trained

    """On a copy of a shipped model without graphs, the command writes what is committed; with another
    model to verify with, or past the tolerance, it writes nothing."""
    monkeypatch.setenv("KAEC_DATA", str(mnist_root))
    original = (TRAINED / "mnist-q2.json").read_text()
    card = json.loads(original)
    del card["onnx"]
    (tmp_path / "mnist-q2.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    shutil.copy(TRAINED / "mnist-q2.safetensors", tmp_path)

    other = load_trained("mnist-q3", TRAINED).model
    with pytest.raises(KaecError, match="not the card's"):
        promote.ship_graphs(tmp_path, "mnist-q2", model=other)
    monkeypatch.setattr(graphs, "TOLERANCE", 0.0)
    with pytest.raises(KaecError, match="differ from PyTorch"):
        promote.ship_graphs(tmp_path, "mnist-q2")
    assert not list(tmp_path.glob("*.onnx"))
    monkeypatch.undo()
    monkeypatch.setenv("KAEC_DATA", str(mnist_root))

    assert promote.main(["mnist-q2", "--folder", str(tmp_path)]) == 0
    for part in PARTS:
        assert (tmp_path / f"mnist-q2.{part}.onnx").read_bytes() == (TRAINED / f"mnist-q2.{part}.onnx").read_bytes()
    text = (tmp_path / "mnist-q2.json").read_text()
    written, committed = json.loads(text), json.loads(original)
    assert text == json.dumps(written, indent=2, sort_keys=True) + "\n"
    # everything but the measured differences (the last bits may differ from machine to machine)
    for c in (written, committed):
        assert c["onnx"].pop("max_abs_diff").keys() == set(PARTS)
    assert written == committed
