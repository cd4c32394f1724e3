"""The shipped models in trained/: their cards, families and files, read without torch.

A shipped model is NAME.json (its card: config, metrics, identity, codec id and family), NAME.safetensors
(its weights, checked against the card's sha256 before any use) and, for the runtime, NAME.encoder.onnx and
NAME.decoder.onnx: graphs whose weights are external data inside the safetensors file, so weights are stored
once. A model's identity is the sha256 of its weights (names, shapes and float32 values): compressed files
record it, and decoding checks it. Building a torch model from these files is `experiments.loading`'s work;
running the graphs is `runtime`'s.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np

from kaecompress.errors import TRAINING_INSTALL, KaecError
from kaecompress.fileio import parse_json, read_regular

DEFAULT_MODEL = "mnist-kae-dec3"


class RunConfigFields:
    """What a model's run config (`self.config`: data, model, train, codec) says that coding reads."""

    config: dict

    @property
    def dataset(self) -> str:
        return self.config.get("data", {}).get("dataset", "mnist")

    @property
    def lmbda(self) -> float | None:
        """A codec model's rate–distortion weight (the `codec:` section's lambda); None for a plain model."""
        return (self.config.get("codec") or {}).get("lmbda")


def trained_dir() -> Path:
    """The folder of shipped models (`$KAEC_TRAINED` overrides it)."""
    import os

    if os.environ.get("KAEC_TRAINED"):
        return Path(os.environ["KAEC_TRAINED"])
    import kaecompress.trained

    return Path(kaecompress.trained.__file__).parent


MAX_CARD_BYTES = 256 << 10         # a card is a page of JSON (ours are under 3 KB)
MAX_WEIGHTS_BYTES = 1 << 30         # ours are under 7 MB; the file is read whole to check its sha256
MAX_HEADER_BYTES = 100_000_000      # safetensors' own limit on its JSON header
MAX_GRAPH_BYTES = 1 << 20           # a weightless ONNX graph (ours are under 3 KB)
PARTS = ("encoder", "decoder")


def read_card(path: Path) -> object:
    """A card file's JSON: a regular file within MAX_CARD_BYTES, nested at most fileio.MAX_DEPTH levels."""
    return parse_json(read_regular(path, MAX_CARD_BYTES, "a model card"), str(path))


def cards(folder: Path | None = None) -> dict[str, dict]:
    """Model cards of the shipped models, by name. JSON files that are not cards (no `name` matching the
    file name) are left out; a card that is no readable JSON within its caps is an error naming it."""
    folder = folder or trained_dir()
    found = {}
    for path in sorted(folder.glob("*.json")):
        card = read_card(path)
        if isinstance(card, dict) and card.get("name") == path.stem:
            found[path.stem] = card
    return found


CARD_KEYS = {"name": str, "dataset": str, "config": dict, "metrics": dict, "params": int,
             "compression_ratio": (int, float), "weights_file": str, "file_sha256": str, "weights_sha256": str}


def check_card(card: dict, path: Path) -> dict:
    """A card with every key the loaders and `kaec models` read, and a weights file that is a plain file
    name beside it (never a path that leaves the folder)."""
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise KaecError(f"{path}: model card without {', '.join(missing)}")
    wrong = [k for k, t in CARD_KEYS.items() if not isinstance(card[k], t) or isinstance(card[k], bool)]
    if wrong:
        raise KaecError(f"{path}: model card key {wrong[0]} has the wrong type ({type(card[wrong[0]]).__name__})")
    name = card["weights_file"]
    if Path(name).name != name or "\\" in name or not name.endswith(".safetensors") or name == ".safetensors":
        raise KaecError(f"{path}: weights_file {name!r} must be a plain NAME.safetensors file name in {path.parent}")
    if not isinstance(card["config"].get("model"), dict):
        raise KaecError(f"{path}: model card config without a model section")
    if not all(isinstance(card["metrics"].get(k), (int, float)) for k in ("mse", "psnr_db")):
        raise KaecError(f"{path}: model card metrics without numeric mse and psnr_db")
    if "onnx" in card:
        graphs = card["onnx"]
        for part in PARTS:
            entry = graphs.get(part) if isinstance(graphs, dict) else None
            file = entry.get("file") if isinstance(entry, dict) else None
            if not (isinstance(file, str) and Path(file).name == file and "\\" not in file
                    and file.endswith(f".{part}.onnx") and isinstance(entry.get("sha256"), str)):
                raise KaecError(f"{path}: onnx.{part} must name a NAME.{part}.onnx file beside it, with its sha256")
    return card


def read_weights(name: str, folder: Path | None = None) -> tuple[dict, bytes]:
    """A shipped model's checked card and its weights file's bytes, which match the card's sha256."""
    folder = folder or trained_dir()
    found = cards(folder)
    card = found.get(name)
    if card is None:
        raise KaecError(f"{name}: no such trained model (available: {', '.join(found) or 'none'})")
    check_card(card, folder / f"{name}.json")
    path = folder / card["weights_file"]
    data = read_regular(path, MAX_WEIGHTS_BYTES, "weights")
    if hashlib.sha256(data).hexdigest() != card["file_sha256"]:
        raise KaecError(f"{path}: sha256 differs from its card {name}.json; the file is damaged")
    return card, data


def read_graph(card: dict, part: str, folder: Path | None = None) -> bytes:
    """The bytes of a shipped model's ONNX `part` (encoder or decoder), which match the card's sha256."""
    folder = folder or trained_dir()
    entry = (card.get("onnx") or {}).get(part)
    if entry is None:
        raise KaecError(f"{card['name']}: its card lists no ONNX graphs (a model promoted before they were "
                        f"shipped); PyTorch runs it: {TRAINING_INSTALL}")
    path = folder / entry["file"]
    data = read_regular(path, MAX_GRAPH_BYTES, f"ONNX {part}")
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise KaecError(f"{path}: sha256 differs from its card {card['name']}.json; the file is damaged")
    return data


_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I32": np.int32, "I64": np.int64,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def safetensors_entries(data: bytes, path: Path) -> tuple[dict, int]:
    """Without torch: a safetensors file's header ({tensor: {dtype, shape, data_offsets}}, no metadata) and
    where its data starts, every entry checked to fit the file (safetensors_header)."""
    import json
    import struct

    safetensors_header(data, path)
    size = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + size])
    header.pop("__metadata__", None)
    return header, 8 + size


def tensors(data: bytes, path: Path, prefix: str = "") -> dict[str, np.ndarray]:
    """Without torch: the tensors of a safetensors file whose names start with `prefix`, as read-only numpy
    arrays over `data` (little-endian), each checked to fit the file (see safetensors_header)."""
    header, base = safetensors_entries(data, path)
    out = {}
    for name, entry in header.items():
        if not name.startswith(prefix):
            continue
        if entry["dtype"] not in _NUMPY:
            raise KaecError(f"{path}: tensor {name[:40]!r} has dtype {entry['dtype']}, which is not read here")
        start, end = (base + o for o in entry["data_offsets"])
        dtype = np.dtype(_NUMPY[entry["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(data, dtype, (end - start) // dtype.itemsize, start).reshape(entry["shape"])
    return out


def weights_sha256_of(state: dict[str, np.ndarray]) -> str:
    """The identity of weights (see the module docstring) from numpy arrays: the same value as
    nn.models.weights_sha256 of the torch model holding them."""
    h = hashlib.sha256()
    for name, array in sorted(state.items()):
        values = np.ascontiguousarray(array, dtype=np.float32)
        h.update(f"{name}:{tuple(values.shape)};".encode())
        h.update(values.tobytes())
    return h.hexdigest()


_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_header(data: bytes, path: Path) -> dict[str, list[int]]:
    """Without torch: the shape of each tensor a safetensors file's header lists, each checked to fit the
    file (its dtype's size times its values is its byte range, inside the data). The 8-byte length field
    can claim anything: it is bounded by the file and by MAX_HEADER_BYTES before the header is read."""
    import struct

    size = struct.unpack("<Q", data[:8])[0] if len(data) >= 8 else None
    if size is None or size > len(data) - 8 or size > MAX_HEADER_BYTES:
        raise KaecError(f"{path}: not a readable safetensors file (its header length passes the end of the file "
                        f"or {MAX_HEADER_BYTES:,} bytes)")
    header = parse_json(data[8:8 + size], str(path), "safetensors header JSON")
    if not isinstance(header, dict):
        raise KaecError(f"{path}: not a readable safetensors file (its header is not a JSON object)")
    end, shapes = len(data) - 8 - size, {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPE_BYTES
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in shape + offsets)
        if not ok or not offsets[0] <= offsets[1] <= end or \
                _values(shape, end) * _DTYPE_BYTES[entry["dtype"]] != offsets[1] - offsets[0]:
            raise KaecError(f"{path}: not a readable safetensors file (tensor {name[:40]!r}: expected a dtype, a "
                            f"shape and data_offsets that fit the file)")
        shapes[name] = shape
    return shapes


def _values(shape: list[int], limit: int) -> int:
    """Values in a tensor of `shape`, or limit + 1 once past `limit` (no product of huge claimed sizes)."""
    count = 0 if 0 in shape else 1
    for dim in shape:
        count *= dim
        if count > limit:
            return limit + 1
    return count


def family(name: str) -> list[str]:
    """The shipped models of a quality family (cards with `family: name`), lowest quality first."""
    members = [(card.get("quality", 0), n) for n, card in cards().items() if card.get("family") == name]
    return [n for _, n in sorted(members)]


def families() -> dict[str, list[str]]:
    """Every quality family of the shipped models: family name -> model names, lowest quality first."""
    names = sorted({card["family"] for card in cards().values() if isinstance(card.get("family"), str)})
    return {n: family(n) for n in names}


def codec_model(dataset: str = "mnist", quality: int | None = None) -> str:
    """The shipped codec model of `dataset`'s family at `quality`; without one, the family's default: the
    smallest files at or above the PSNR of the dataset's plain (version-1) model. No family: DEFAULT_MODEL."""
    members = family(dataset)
    found = cards()
    if quality is not None:
        by_quality = {found[n].get("quality"): n for n in members}
        if quality not in by_quality:
            have = ", ".join(str(q) for q in sorted(by_quality)) or "none shipped"
            raise KaecError(f"--quality {quality}: no such level for {dataset} (levels: {have})")
        return by_quality[quality]
    if not members:
        return DEFAULT_MODEL
    plain = [c["metrics"]["psnr_db"] for c in found.values()
             if c.get("dataset") == dataset and "codec_id" not in c and isinstance(c.get("metrics"), dict)]
    floor = max(plain, default=-math.inf)
    good = [n for n in members if found[n]["codec_metrics"]["psnr"] >= floor] or members[-1:]
    return min(good, key=lambda n: found[n]["codec_metrics"]["bytes_per_image"])


def default_model() -> str:
    """What `kaec encode` uses without --model or --quality (and `kaec decode` for bare .npy latents)."""
    return codec_model("mnist")


def by_codec_id(codec_id: int) -> str | None:
    """The shipped codec model whose one-byte file id is `codec_id`."""
    for name, card in cards().items():
        if card.get("codec_id") == codec_id:
            return name
    return None


def find_by_hash(prefix: str) -> str | None:
    """The shipped model whose weights sha256 starts with `prefix`."""
    for name, card in cards().items():
        if prefix and card.get("weights_sha256", "").startswith(prefix):
            return name
    return None


