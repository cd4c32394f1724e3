"""A shipped model as the runtime holds it: its card, its weights' bytes (checked against the card), and
what coding needs besides the networks (the integer tables and the context model), read with numpy."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from kaecompress import zoo
from kaecompress.codec import context as context_model
from kaecompress.codec.rangecoder import IntegerTables
from kaecompress.errors import TRAINING_INSTALL, KaecError


@dataclass
class ShippedModel(zoo.RunConfigFields):
    """What a Codec reads of a model (see codec.images.Codec), with the ONNX graphs as its only backend."""

    name: str
    card: dict
    weights: bytes = field(repr=False)
    folder: Path
    tables: IntegerTables | None = None
    context: context_model.LinearContext | None = None

    @property
    def config(self) -> dict:
        return self.card["config"]

    @property
    def weights_sha256(self) -> str:
        return self.card["weights_sha256"]  # the card's, whose weights file matched its sha256

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.config["model"].get("shape", (1, 28, 28)))

    @property
    def latent_dim(self) -> int:
        return int(self.config["model"]["latent_dim"])

    def backend(self, kind: str = "auto", device: str = "cpu", data_root=None, threads: int | None = None):
        """The networks in onnxruntime: the shipped graphs, their weights given from memory."""
        if kind == "torch":
            raise KaecError(f"--backend torch needs PyTorch: {TRAINING_INSTALL} (or use --backend onnx)")
        from kaecompress.runtime.backend import OnnxBackend

        graphs = [zoo.read_graph(self.card, part, self.folder) for part in zoo.PARTS]
        try:
            return OnnxBackend(graphs, device, threads, external={self.card["weights_file"]: self.weights})
        except KaecError:
            raise
        except Exception as e:  # onnxruntime's own refusal of a graph or of its external data
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise KaecError(f"{self.folder / self.name}.*.onnx: the graphs do not load ({first})") from None


def load_shipped(name: str, folder: Path | None = None) -> ShippedModel:
    """A shipped model, its files checked against its card, without torch."""
    folder = folder or zoo.trained_dir()
    card, data = zoo.read_weights(name, folder)
    path = folder / card["weights_file"]
    if "onnx" not in card:
        raise KaecError(f"{name}: its card lists no ONNX graphs; the runtime cannot run it ({TRAINING_INSTALL} "
                        "runs it with PyTorch)")
    prior = zoo.tensors(data, path, "prior.")
    tables = context = None
    if (card["config"].get("codec") or {}).get("prior"):
        tables = IntegerTables.from_arrays({k: prior.get(f"prior.table_{k}") for k in ("offsets", "freqs", "precision")
                                            if f"prior.table_{k}" in prior}, f"{path}: probability tables")
        arrays = {k: prior[f"prior.context_{k}"] for k in context_model.ARRAYS if f"prior.context_{k}" in prior}
        if arrays:
            try:
                context = context_model.from_arrays(arrays)
            except KaecError as e:
                raise KaecError(f"{path}: {e}") from None
            latent_dim = int(card["config"]["model"]["latent_dim"])
            if context.dims != latent_dim:
                raise KaecError(f"{path}: context model for {context.dims} latents in a model of {latent_dim}")
    return ShippedModel(name, card, data, folder, tables, context)
