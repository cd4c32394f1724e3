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


DEFAULT_MODEL = "mnist-kae-dec3"


def trained_dir() -> Path:
    """The folder of shipped models (`$KAEC_TRAINED` overrides it)."""
    import os

    if os.environ.get("KAEC_TRAINED"):
        return Path(os.environ["KAEC_TRAINED"])
    import kaecompress.trained

    return Path(kaecompress.trained.__file__).parent


def cards(folder: Path | None = None) -> dict[str, dict]:
    """Model cards of the shipped models, by name."""
    folder = folder or trained_dir()
    found = {}
    for path in sorted(folder.glob("*.json")):
        card = runs.read_json(path)
        if isinstance(card, dict) and card.get("name") == path.stem:
            found[path.stem] = card
    return found


def load_trained(name: str, folder: Path | None = None) -> LoadedModel:
    """A shipped model: its safetensors weights, checked against the sha256 on its card."""
    from safetensors.torch import load

    folder = folder or trained_dir()
    card = cards(folder).get(name)
    if card is None:
        raise KaecError(f"{name}: no such trained model (available: {', '.join(cards(folder)) or 'none'})")
    path = folder / card["weights_file"]
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KaecError(f"{path}: cannot read weights ({e.strerror or e})") from None
    if hashlib.sha256(data).hexdigest() != card["file_sha256"]:
        raise KaecError(f"{path}: sha256 differs from its card {name}.json; the file is damaged")
    model = build(card["config"], load(data), path)
    return LoadedModel(model, name, card["config"], weights_sha256(model), card)


def load_model(spec: str | Path | None = None) -> LoadedModel:
    """A shipped model by name (default: mnist-kae-dec3), a finished run folder or a checkpoint file."""
    spec = str(spec or DEFAULT_MODEL)
    if spec in cards():
        return load_trained(spec)
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file():
        return load_trained(path.stem, path.parent)
    if path.exists():
        return load_run(path)
    raise KaecError(f"{spec}: no such trained model, run folder or checkpoint "
                    f"(trained models: {', '.join(cards()) or 'none'})")


def find_by_hash(prefix: str) -> str | None:
    """The shipped model whose weights sha256 starts with `prefix`."""
    for name, card in cards().items():
        if prefix and card.get("weights_sha256", "").startswith(prefix):
            return name
    return None


def promote(run_dir: str | Path, name: str, *, dest: Path | None = None, recipe: str | None = None,
            data_root: str | Path | None = None, force: bool = False) -> Path:
    """Ship a finished run as a trained model: NAME.safetensors and a NAME.json card with its metrics on
    the full validation split. Returns the card's path."""
    import re
    from datetime import datetime, timezone

    from safetensors.torch import save

    from kaecompress.data import load_images
    from kaecompress.metrics import reconstruction_metrics

    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", name):
        raise KaecError(f"--name {name!r}: use lower-case letters, digits, '-' and '.'")
    dest = Path(dest or trained_dir())
    if not dest.is_dir():
        raise KaecError(f"--dest {dest}: no such folder")
    card_path = dest / f"{name}.json"
    if card_path.exists() and not force:
        raise KaecError(f"{card_path}: already exists (use --force to replace it)")
    loaded = load_run(run_dir)
    summary = runs.read_json(Path(run_dir) / runs.SUMMARY) or {}
    images = load_images(loaded.dataset, False, data_root, loaded.model.shape)
    quality = reconstruction_metrics(loaded.model, images)
    weights = save({k: v.contiguous() for k, v in loaded.model.state_dict().items()})
    runs.atomic_write_bytes(dest / f"{name}.safetensors", weights)
    card = {
        "name": name,
        "dataset": loaded.dataset,
        "recipe": recipe,
        "config": loaded.config,
        "metrics": {"split": "test", "images": len(images), **quality},
        "training": {k: summary.get(k) for k in ("inputs", "train_time_s", "throughput", "device", "torch",
                                                 "final_val_loss", "finished_at")},
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "compression_ratio": loaded.model.compression_ratio,
        "latent_dim": loaded.model.latent_dim,
        "input_shape": list(loaded.model.shape),
        "weights_file": f"{name}.safetensors",
        "file_sha256": hashlib.sha256(weights).hexdigest(),
        "weights_sha256": loaded.weights_sha256,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    runs.atomic_write_json(card_path, card)
    return card_path
