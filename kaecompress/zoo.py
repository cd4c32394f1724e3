"""Trained models by name or path: shipped models in trained/, run folders and checkpoints.

Every loader reads weights without unpickling arbitrary objects (`torch.load(weights_only=True)` or
safetensors). A model's identity is the sha256 of its weights (names, shapes and values), whatever file
they came from: compressed files record it, and decoding checks it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kaecompress import runs
from kaecompress.errors import KaecError
from kaecompress.models import CNNKAE


@dataclass
class LoadedModel:
    model: CNNKAE
    name: str            # the shipped name, or the path it was loaded from
    config: dict         # the run config it was trained with (data, model, train)
    weights_sha256: str
    card: dict = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return self.config.get("data", {}).get("dataset", "mnist")


def weights_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def build(config: dict, state: dict, where: str | Path) -> CNNKAE:
    """A CNNKAE from a run config and a state dict; a mismatch between the two is a clear error."""
    try:
        model = CNNKAE(**config["model"])
        model.load_state_dict(state)
    except (KeyError, TypeError, RuntimeError) as e:
        raise KaecError(f"{where}: the config does not match the weights ({str(e).splitlines()[0]})") from None
    return model.eval()


def load_run(run_dir: str | Path) -> LoadedModel:
    """The model of a finished run folder, or of a checkpoint file."""
    from kaecompress.train import load_checkpoint

    path = Path(run_dir)
    if path.is_dir():
        status = runs.run_status(path)
        if status != "finished" or not (path / runs.CHECKPOINT).is_file():
            raise KaecError(f"{path}: not a finished run (status: {status}); train it first")
        path = path / runs.CHECKPOINT
    ckpt = load_checkpoint(path)
    if not isinstance(ckpt, dict) or "config" not in ckpt or "model" not in ckpt:
        raise KaecError(f"{path}: not a kaecompress checkpoint (expected 'config' and 'model' entries)")
    model = build(ckpt["config"], ckpt["model"], path)
    return LoadedModel(model, str(Path(run_dir).resolve()), ckpt["config"], weights_sha256(model))


def load_model(spec: str | Path) -> LoadedModel:
    """A run folder or checkpoint path."""
    path = Path(spec)
    if path.exists():
        return load_run(path)
    raise KaecError(f"{spec}: no such run folder or checkpoint")
