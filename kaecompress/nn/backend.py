"""A model's networks in PyTorch, as the backend a Codec runs them with."""

from __future__ import annotations

import numpy as np

from kaecompress.errors import KaecError


def resolve_device(device: str) -> str:
    """cpu or cuda; `auto` is cuda where torch sees one."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise KaecError("--device cuda: no CUDA device is usable here (torch.cuda.is_available() is False)")
    return device


class TorchBackend:
    """The model's networks in PyTorch, on `device`; arrays in and out stay numpy on the CPU."""

    def __init__(self, model, device: str = "cpu") -> None:
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)

    def _run(self, net, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return net(torch.from_numpy(x).to(self.device)).cpu().numpy()

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self._run(self.model.encoder, x)

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self._run(self.model.decoder, z)
