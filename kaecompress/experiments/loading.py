"""Torch models from files: a shipped model's weights, a finished run folder or a checkpoint, built into a
CNNKAE and checked against their config. Weights are read without unpickling arbitrary objects
(`torch.load(weights_only=True)` or safetensors)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from kaecompress import zoo
from kaecompress.errors import KaecError
from kaecompress.experiments import runs

if TYPE_CHECKING:  # torch is imported where a model is built: a bad card or file is refused without it
    from kaecompress.nn.models import CNNKAE


@dataclass
class LoadedModel(zoo.RunConfigFields):
    """A torch model with what a Codec reads of it (see codec.images.Codec)."""

    model: CNNKAE
    name: str            # the shipped name, or the path it was loaded from
    config: dict         # the run config it was trained with (data, model, train)
    weights_sha256: str
    card: dict = field(default_factory=dict)
    folder: Path | None = None  # a shipped model's folder, whose ONNX graphs its onnx backend runs
    weights: bytes | None = field(default=None, repr=False)  # and its weights file's bytes

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.model.shape)

    @property
    def latent_dim(self) -> int:
        return self.model.latent_dim

    @cached_property
    def tables(self):
        """A codec model's integer tables (rangecoder.IntegerTables); None for a plain model."""
        prior = getattr(self.model, "prior", None)
        return prior.tables() if prior is not None else None

    @cached_property
    def context(self):
        """A codec model's fitted context model, if any."""
        prior = getattr(self.model, "prior", None)
        return prior.context() if prior is not None else None

    def backend(self, kind: str = "auto", device: str = "cpu", data_root=None, threads: int | None = None):
        """The networks in PyTorch (`torch`, and `auto` here, where torch is installed) or in onnxruntime
        (`onnx`): a shipped model's own graphs, else a verified export cached under the user's cache dir."""
        if kind in ("auto", "torch"):
            from kaecompress.nn.backend import TorchBackend

            return TorchBackend(self.model, device)
        if self.folder is not None and self.weights is not None and "onnx" in self.card:
            from kaecompress.runtime.shipped import ShippedModel

            shipped = ShippedModel(self.name, self.card, self.weights, self.folder)
            return shipped.backend("onnx", device, threads=threads)
        from kaecompress.experiments.export_cache import export_cache
        from kaecompress.runtime.backend import OnnxBackend

        return OnnxBackend(export_cache(self, data_root), device, threads)


def build(config: dict, state: dict, where: str | Path) -> CNNKAE:
    """A CNNKAE from a run config and a state dict; a mismatch between the two is a clear error. The model
    is first built without memory (meta device): a config asking for more parameters than the weights
    hold is refused before anything is allocated."""
    import torch

    from kaecompress.nn.models import CNNKAE

    try:
        codec = config.get("codec") or {}
        with torch.device("meta"):
            shape_only = CNNKAE(**config["model"], prior=codec.get("prior"))
        # A codec model's probability tables and context model are sized by fitting, not by the config
        # (rangecoder and context bound them).
        def fitted(key: str) -> bool:
            return ".table_" in key or ".context_" in key

        wanted = sum(t.numel() for k, t in shape_only.state_dict().items() if not fitted(k))
        have = sum(t.numel() for k, t in state.items() if isinstance(t, torch.Tensor) and not fitted(k))
        if wanted != have:
            raise KaecError(f"{where}: the config does not match the weights (it describes {wanted:,} parameter "
                            f"values, the weights hold {have:,})")
        model = CNNKAE(**config["model"], prior=codec.get("prior"))
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        raise KaecError(f"{where}: the config does not match the weights ({str(e).splitlines()[0]})") from None
    if getattr(model, "prior", None) is not None:
        try:
            model.prior.context()  # its bounds checked now, where the file can be named
        except KaecError as e:
            raise KaecError(f"{where}: {e}") from None
    return model.eval()


def load_run(run_dir: str | Path) -> LoadedModel:
    """The model of a finished run folder, or of a checkpoint file."""
    from kaecompress.experiments.train import load_checkpoint

    path = Path(run_dir)
    if path.is_dir():
        status = runs.run_status(path)
        if status != "finished" or not (path / runs.CHECKPOINT).is_file():
            raise KaecError(f"{path}: not a finished run (status: {status}); train it first")
        path = path / runs.CHECKPOINT
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise KaecError(f"{path}: not a kaecompress checkpoint (expected 'config' and 'model' entries)")
    from kaecompress.nn.models import weights_sha256

    model = build(ckpt["config"], ckpt["model"], path)
    return LoadedModel(model, str(Path(run_dir).resolve()), ckpt["config"], weights_sha256(model))



def _check_sizes(data: bytes, path: Path, model: dict) -> None:
    """Without torch: the safetensors header must fit the file, and the model the card's config describes
    must not need more parameter values than the file holds (a codec model's file holds its prior too)."""
    from kaecompress.experiments.config import model_config
    from kaecompress.experiments.resources import parameter_count

    have = sum(math.prod(shape) for shape in zoo.safetensors_header(data, path).values())
    wanted = parameter_count(model_config(model, f"{path}: its card's config.model"))
    if wanted > have:
        raise KaecError(f"{path}: the config does not match the weights (it describes {wanted:,} parameter "
                        f"values, the weights hold {have:,})")



def load_trained(name: str, folder: Path | None = None) -> LoadedModel:
    """A shipped model: its safetensors weights, checked against the sha256 on its card."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    folder = folder or zoo.trained_dir()
    card, data = zoo.read_weights(name, folder)
    path = folder / card["weights_file"]
    _check_sizes(data, path, card["config"]["model"])
    try:
        state = load(data)
    except SafetensorError as e:
        raise KaecError(f"{path}: not a readable safetensors file ({e})") from None
    from kaecompress.nn.models import weights_sha256

    model = build(card["config"], state, path)
    return LoadedModel(model, name, card["config"], weights_sha256(model), card, folder, data)


def load_model(spec: str | Path | None = None) -> LoadedModel:
    """A shipped model by name (default: the MNIST codec family's default), a finished run folder or a
    checkpoint file."""
    spec = str(spec or zoo.default_model())
    if spec in zoo.cards():
        return load_trained(spec)
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file():
        return load_trained(path.stem, path.parent)
    if path.exists():
        return load_run(path)
    raise KaecError(f"{spec}: no such trained model, run folder or checkpoint "
                    f"(trained models: {', '.join(zoo.cards()) or 'none'})")
