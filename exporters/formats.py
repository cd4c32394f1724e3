"""One writer and one loader per artefact format. Each writer puts `encoder.EXT` and `decoder.EXT` in a
folder; each loader returns a callable that maps a float32 CPU tensor to a float32 CPU tensor."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import torch

from kaecompress.errors import KaecError
from kaecompress.exporters.manifest import EXTENSIONS, PARTS
from kaecompress.nn.models import CNNKAE
from kaecompress.fileio import atomic_write_bytes
from kaecompress.runtime.sessions import onnx_session



@contextlib.contextmanager
def quiet():
    """torch.jit and the ONNX exporter warn and log about themselves; keep our output clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "onnxscript")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def example(model: CNNKAE, part: str, batch: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    if part == "encoder":
        return torch.rand(batch, *model.shape, generator=gen)
    return torch.randn(batch, model.latent_dim, generator=gen)


def _batch_dim():
    return ({0: torch.export.Dim("batch")},)


def write_onnx(model: CNNKAE, folder: Path, metadata: dict) -> list[Path]:
    import onnx

    from kaecompress.exporters.kaepoly import ONNX_OPSET, add_function, registered_schema, translation, with_kae_ops

    paths = []
    for part, (inp, out) in PARTS.items():
        module = with_kae_ops(getattr(model, part)).eval()
        with quiet(), registered_schema(), torch.no_grad():
            program = torch.onnx.export(module, (example(model, part),), dynamo=True, dynamic_shapes=_batch_dim(),
                                        custom_translation_table=translation(), external_data=False,
                                        opset_version=ONNX_OPSET, input_names=[inp], output_names=[out],
                                        verbose=False)
        proto = add_function(program.model_proto)
        proto.producer_name = "kaecompress"
        proto.doc_string = f"CNN-KAE {part}: {inp} -> {out}"
        for key, value in {**metadata, "part": part}.items():
            proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
        onnx.checker.check_model(proto, full_check=True)
        path = folder / f"{part}.onnx"
        atomic_write_bytes(path, proto.SerializeToString())
        paths.append(path)
    return paths


def _write_torch(model: CNNKAE, folder: Path, metadata: dict, suffix: str, serialize) -> list[Path]:
    """Each part, serialized by `serialize(module, example, buffer, extra_files)`, with the metadata inside."""
    paths = []
    for part in PARTS:
        buf = io.BytesIO()
        with quiet(), torch.no_grad():
            serialize(getattr(model, part).eval(), example(model, part), buf,
                      {"kaecompress.json": json.dumps({**metadata, "part": part})})
        path = folder / f"{part}.{suffix}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def write_torchscript(model: CNNKAE, folder: Path, metadata: dict) -> list[Path]:
    def serialize(module, x, buf, extra):
        torch.jit.save(torch.jit.trace(module, x, check_trace=False), buf, _extra_files=extra)

    return _write_torch(model, folder, metadata, "pt", serialize)


def write_pt2(model: CNNKAE, folder: Path, metadata: dict) -> list[Path]:
    def serialize(module, x, buf, extra):
        program = torch.export.export(module, (x,), dynamic_shapes=_batch_dim())
        torch.export.save(program, buf, extra_files=extra)

    return _write_torch(model, folder, metadata, "pt2", serialize)


WRITERS = {"onnx": write_onnx, "torchscript": write_torchscript, "pt2": write_pt2}


def load_runner(path: Path, device: str | torch.device = "cpu", data: bytes | None = None):
    """A callable running one artefact in its own runtime: onnxruntime, torch.jit or torch.export. `data`, when
    given, is the artefact's bytes (already checked), loaded instead of reading `path`, which then only names
    the format. `device` is where TorchScript weights are loaded (the others run on the CPU)."""
    fmt = {v: k for k, v in EXTENSIONS.items()}[path.suffix.lstrip(".")]
    if fmt == "onnx":
        session = onnx_session(path if data is None else data)
        name = session.get_inputs()[0].name
        return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])
    source = str(path) if data is None else io.BytesIO(data)
    with quiet():
        module = (torch.jit.load(source, map_location=device) if fmt == "torchscript" else _load_pt2(path, source))

    def run(x):
        with torch.no_grad():
            return module(x)

    return run


def _load_pt2(path: Path, source):
    """torch.export.load without the pickles it would otherwise load: every torch.load in it is made
    weights-only, and an archive holding custom or opaque objects (read with plain pickle) is refused.
    Ours hold neither: only tensors and the graph as JSON."""
    import zipfile

    from torch.export.pt2_archive.constants import CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX

    with zipfile.ZipFile(source) as archive:
        pickled = [n for n in archive.namelist() if CUSTOM_OBJ_FILENAME_PREFIX in n or OPAQUE_OBJ_FILENAME_PREFIX in n]
    if pickled:
        raise KaecError(f"{path}: holds pickled objects ({pickled[0]}); refused, a model of ours holds none")
    if not isinstance(source, str):
        source.seek(0)
    previous = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        return torch.export.load(source).module()
    finally:
        if previous is None:
            del os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"]
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = previous
