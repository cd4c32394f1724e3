"""Trained models by name or path: shipped models in trained/, run folders and checkpoints.

Every loader reads weights without unpickling arbitrary objects (`torch.load(weights_only=True)` or
safetensors). A model's identity is the sha256 of its weights (names, shapes and values), whatever file
they came from: compressed files record it, and decoding checks it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from kaecompress import fileio

from kaecompress.experiments import runs
from kaecompress.errors import KaecError
from kaecompress.fileio import parse_json, read_regular

if TYPE_CHECKING:  # torch is imported where a model is built: a bad card or file is refused without it
    from kaecompress.nn.models import CNNKAE


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

    @property
    def lmbda(self) -> float | None:
        """A codec model's rate–distortion weight (the `codec:` section's lambda); None for a plain model."""
        return (self.config.get("codec") or {}).get("lmbda")


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


DEFAULT_MODEL = "mnist-kae-dec3"


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
    return card


def _check_sizes(data: bytes, path: Path, model: dict) -> None:
    """Without torch: the safetensors header must fit the file, and the model the card's config describes
    must not need more parameter values than the file holds (a codec model's file holds its prior too)."""
    from kaecompress.experiments.config import model_config
    from kaecompress.experiments.resources import parameter_count

    have = sum(math.prod(shape) for shape in safetensors_header(data, path).values())
    wanted = parameter_count(model_config(model, f"{path}: its card's config.model"))
    if wanted > have:
        raise KaecError(f"{path}: the config does not match the weights (it describes {wanted:,} parameter "
                        f"values, the weights hold {have:,})")


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


def load_trained(name: str, folder: Path | None = None) -> LoadedModel:
    """A shipped model: its safetensors weights, checked against the sha256 on its card."""
    from safetensors import SafetensorError

    folder = folder or trained_dir()
    card = cards(folder).get(name)
    if card is None:
        raise KaecError(f"{name}: no such trained model (available: {', '.join(cards(folder)) or 'none'})")
    check_card(card, folder / f"{name}.json")
    path = folder / card["weights_file"]
    data = read_regular(path, MAX_WEIGHTS_BYTES, "weights")
    if hashlib.sha256(data).hexdigest() != card["file_sha256"]:
        raise KaecError(f"{path}: sha256 differs from its card {name}.json; the file is damaged")
    _check_sizes(data, path, card["config"]["model"])
    from safetensors.torch import load

    try:
        state = load(data)
    except SafetensorError as e:
        raise KaecError(f"{path}: not a readable safetensors file ({e})") from None
    from kaecompress.nn.models import weights_sha256

    model = build(card["config"], state, path)
    return LoadedModel(model, name, card["config"], weights_sha256(model), card)


def load_model(spec: str | Path | None = None) -> LoadedModel:
    """A shipped model by name (default: mnist-kae-dec3), a finished run folder or a checkpoint file."""
    spec = str(spec or default_model())
    if spec in cards():
        return load_trained(spec)
    path = Path(spec)
    if path.suffix == ".safetensors" and path.is_file():
        return load_trained(path.stem, path.parent)
    if path.exists():
        return load_run(path)
    raise KaecError(f"{spec}: no such trained model, run folder or checkpoint "
                    f"(trained models: {', '.join(cards()) or 'none'})")


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


def promote(run_dir: str | Path, name: str, *, dest: Path | None = None, recipe: str | None = None,
            data_root: str | Path | None = None, force: bool = False, family: str | None = None,
            quality: int | None = None, float16: bool = False, context: bool = False) -> Path:
    """Ship a finished run as a trained model: NAME.safetensors and a NAME.json card with its metrics on
    the full validation split. Returns the card's path.

    `float16` stores the float weights at half the size. They load back as float32 and the model computes
    in float32, so the card's metrics and identity are those of the rounded weights, as shipped.
    `context` (codec models) fits a linear context model to the latents of the training split
    (kaecompress.codec.context) and ships it with the tables, where it predicts any latent."""
    import re
    from datetime import datetime, timezone

    from safetensors.torch import save

    from kaecompress.experiments.data import load_images
    from kaecompress.evaluation.metrics import reconstruction_metrics

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
    if context and (loaded.model.prior is None or not loaded.model.prior.frozen):
        raise KaecError(f"{run_dir}: --context is for codec models (runs trained with a codec: section)")
    state = {k: v.contiguous() for k, v in loaded.model.state_dict().items()}
    if float16:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        wide = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
        if wide:
            raise KaecError(f"{run_dir}: --float16: {wide[0]} holds values beyond float16's range (65504)")
        loaded.model.load_state_dict(state)  # copies into the float32 parameters: what a loader gets
    fitted = _fit_context(loaded, data_root) if context else None
    if fitted:  # the context's buffers and the new tables join the state
        state = {k: v.half() if float16 and v.is_floating_point() else v.contiguous()
                 for k, v in loaded.model.state_dict().items()}
    from kaecompress.nn.models import weights_sha256

    loaded.weights_sha256 = weights_sha256(loaded.model)
    weights = save(state)
    images = load_images(loaded.dataset, False, data_root, loaded.model.shape)
    recon = reconstruction_metrics(loaded.model, images)
    fileio.atomic_write_bytes(dest / f"{name}.safetensors", weights)
    card = {
        "name": name,
        "dataset": loaded.dataset,
        "recipe": recipe,
        "config": loaded.config,
        "metrics": {"split": "test", "images": len(images), **recon},
        "training": {k: summary.get(k) for k in ("inputs", "train_time_s", "throughput", "device", "torch",
                                                 "final_val_loss", "finished_at")},
        "params": sum(p.numel() for p in loaded.model.parameters()),
        "compression_ratio": loaded.model.compression_ratio,
        "latent_dim": loaded.model.latent_dim,
        "input_shape": list(loaded.model.shape),
        "weights_file": f"{name}.safetensors",
        "weights_dtype": "float16" if float16 else "float32",
        "file_sha256": hashlib.sha256(weights).hexdigest(),
        "weights_sha256": loaded.weights_sha256,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if context:
        card["context"] = {"predicted_latents": fitted, "fitted_on": "train split"}
    if loaded.model.prior is not None:
        card.update(_codec_card(loaded, summary, images, dest, name, family, quality))
    elif family is not None or quality is not None:
        raise KaecError(f"{run_dir}: --family/--quality are for codec models (runs trained with a codec: section)")
    runs.atomic_write_json(card_path, card)
    return card_path


def _fit_context(loaded: LoadedModel, data_root) -> int:
    """Fit the codec model's context model to its rounded latents of the training split (see promote)."""
    import torch

    from kaecompress.experiments.data import load_images

    images = load_images(loaded.dataset, True, data_root, loaded.model.shape)
    with torch.no_grad():
        latents = torch.cat([torch.round(loaded.model.encoder(images[i:i + 1000]))
                             for i in range(0, len(images), 1000)])
    return loaded.model.prior.fit_context(latents.to(torch.int64).numpy())


def _codec_card(loaded: LoadedModel, summary: dict, images, dest: Path, name: str, family: str | None,
                quality: int | None) -> dict:
    """A codec model's card entries: its file id, family, lambda and whole-file bytes / PSNR on `images`."""
    from kaecompress.experiments.codecstats import measure

    if not loaded.model.prior.frozen:
        raise KaecError(f"{loaded.name}: the run has no probability tables (it did not finish as a codec run)")
    from kaecompress.codec.bitstream import MAX_COMPACT_ID

    taken = {card.get("codec_id") for n, card in cards(dest).items() if n != name}
    codec_id = next(i for i in range(1, MAX_COMPACT_ID + 2) if i not in taken)
    if codec_id > MAX_COMPACT_ID:
        raise KaecError(f"{dest}: all {MAX_COMPACT_ID} one-byte codec model ids are taken")
    return {
        "codec_id": codec_id,
        "family": family,
        "quality": quality,
        "lambda": loaded.lmbda,
        "codec_metrics": {"split": "test", **measure(loaded.model, images)},
    }
