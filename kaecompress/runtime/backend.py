"""A model's encoder and decoder as onnxruntime sessions: the backend a Codec runs its networks with."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kaecompress.errors import KaecError
from kaecompress.runtime.sessions import cuda_sessions, cuda_usable, default_threads, onnx_session

DEVICES = ("cpu", "cuda", "auto")


def resolve_device(device: str) -> str:
    """cpu or cuda; `auto` is cuda where onnxruntime has it and a GPU is visible."""
    if device not in DEVICES:
        raise KaecError(f"--device: expected {', '.join(DEVICES)}, got {device!r}")
    if device == "auto":
        return "cuda" if cuda_usable() else "cpu"
    return device


class OnnxBackend:
    """Encoder and decoder sessions. From a folder of exported `encoder.onnx` / `decoder.onnx`, or from a
    shipped model's weightless graphs with its weights' bytes as their external data."""

    def __init__(self, graphs, device: str = "cpu", threads: int | None = None,
                 external: dict[str, bytes] | None = None) -> None:
        self.device = resolve_device(device)
        threads = threads or default_threads()
        if isinstance(graphs, (str, Path)):
            graphs = [Path(graphs) / f"{part}.onnx" for part in ("encoder", "decoder")]
        if self.device == "cuda":  # checked: onnxruntime would fall back to the CPU with only a log line
            self.encoder, self.decoder = cuda_sessions(graphs, threads, "--device cuda", external)
            return
        # Idle threads that spin would take the core the entropy coding between network calls needs.
        self.encoder, self.decoder = (onnx_session(g, "cpu", threads, spinning=False, external=external)
                                      for g in graphs)

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.encoder.run(None, {"images": x})[0]

    def decode(self, z: np.ndarray) -> np.ndarray:
        return self.decoder.run(None, {"latents": z})[0]
