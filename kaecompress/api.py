"""Opening a model for compressing, with the backend this install has: the library's top floor, which
the CLI calls. The runtime install (no torch) runs shipped models through their ONNX graphs; the training
install runs any model, shipped or trained, in PyTorch or onnxruntime."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from kaecompress import zoo
from kaecompress.errors import TRAINING_INSTALL, KaecError


def torch_installed() -> bool:
    return importlib.util.find_spec("torch") is not None


def require_training(what: str) -> None:
    """A one-line refusal of `what` where PyTorch is not installed (the runtime install)."""
    if not torch_installed():
        raise KaecError(f"{what} needs the training install (PyTorch), and this is the runtime install: "
                        f"{TRAINING_INSTALL}")


def resolve_backend(backend: str) -> str:
    """`auto`: torch where it is installed (the training install), else onnx."""
    if backend == "auto":
        return "torch" if torch_installed() else "onnx"
    if backend == "torch":
        require_training("--backend torch")
    return backend


def _shipped(spec: str) -> tuple[str, Path | None] | None:
    """(name, folder) when `spec` names a shipped model or a card's safetensors file beside its card."""
    if spec in zoo.cards():
        return spec, None
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file() and path.with_suffix(".json").is_file():
        return path.stem, path.parent
    return None


def open_model(spec: str | Path | None, backend: str):
    """The model `spec` (a shipped name, a .safetensors beside its card, a run folder or a checkpoint;
    default: the MNIST codec family's default) as a Codec takes it, for `backend` (torch or onnx, resolved).
    A shipped model for onnx is read without torch; anything else is built in PyTorch."""
    spec = str(spec or zoo.default_model())
    shipped = _shipped(spec)
    if backend == "onnx" and shipped is not None and "onnx" in (zoo.cards(shipped[1]).get(shipped[0]) or {}):
        from kaecompress.runtime.shipped import load_shipped

        return load_shipped(*shipped)
    if shipped is None and not Path(spec).exists():
        raise KaecError(f"{spec}: no such trained model, run folder or checkpoint "
                        f"(trained models: {', '.join(zoo.cards()) or 'none'})")
    require_training(f"--model {spec}" if shipped is None else f"{spec} (its card lists no ONNX graphs)")
    from kaecompress.experiments.loading import load_model

    return load_model(spec)
