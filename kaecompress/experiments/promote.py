"""Shipping a finished run: its weights, a model card with its metrics on the full test split, and the ONNX
graphs the torch-free runtime runs, verified against the torch model."""

from __future__ import annotations

import hashlib
from pathlib import Path

from kaecompress import fileio
from kaecompress.errors import KaecError
from kaecompress.experiments import runs
from kaecompress.experiments.loading import LoadedModel, load_run
from kaecompress.zoo import cards, trained_dir


def promote(run_dir: str | Path, name: str, *, dest: Path | None = None, recipe: str | None = None,
            data_root: str | Path | None = None, force: bool = False, family: str | None = None,
            quality: int | None = None, float16: bool = False, context: bool = False) -> Path:
    """Ship a finished run as a trained model: NAME.safetensors, a NAME.json card with its metrics on the
    full validation split, and NAME.encoder.onnx / NAME.decoder.onnx, the graphs the torch-free runtime runs
    (their weights are the safetensors file's), verified against the model. Returns the card's path.

    `float16` stores the float weights at half the size. They load back as float32 and the model computes
    in float32, so the card's metrics and identity are those of the rounded weights, as shipped.
    `context` (codec models) fits a linear context model to the latents of the training split
    (kaecompress.codec.context) and ships it with the tables, where it predicts any latent."""
    import re
    from datetime import datetime, timezone

    from safetensors.torch import save

    from kaecompress.experiments.data import load_images
    from kaecompress.experiments.codecstats import reconstruction_metrics

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
    card["domain"] = calibrate_domain(loaded, images.numpy())  # what `kaec encode` refuses
    from kaecompress.exporters.graphs import write_graphs

    card["onnx"] = write_graphs(dest, card, weights, loaded.model, images)  # what the runtime runs, verified
    runs.atomic_write_json(card_path, card)
    return card_path


DOMAIN_MARGIN = 0.10       # a threshold sits 10% above the highest score of the model's own test images
DOMAIN_FILL_MARGIN = 0.5   # fill is a share (at most 1): halfway from the highest to 1
DOMAIN_PIXEL_FLOOR = 0.02  # the lowest threshold of a pixel statistic: MNIST's corners are exactly black
DOMAIN_PIXELS = ("border", "grey", "corner", "fill")


def calibrate_domain(loaded, tiles) -> dict:
    """A card's "domain" entry (kaecompress/codec/domain.py): thresholds from the scores of the model's own
    test images `tiles` (N, C, H, W) in [0, 1], one tile each, so that none of them is outside."""
    import numpy as np

    from kaecompress.codec.domain import TOP_TILES, domain_scores
    from kaecompress.codec.images import Codec

    codec = Codec(loaded, "auto")  # torch for a run being promoted, the graphs for a shipped model
    tiles = np.ascontiguousarray(tiles, dtype=np.float32)
    latents = codec._encode_tiles(tiles)
    if codec.tables is not None:
        entry = {"statistics": dict.fromkeys(("bits",) + DOMAIN_PIXELS)}
    else:
        wide = latents.astype(np.float64)
        entry = {"statistics": dict.fromkeys(("z2",) + DOMAIN_PIXELS),
                 "mean": [round(float(v), 6) for v in wide.mean(0)],
                 "std": [round(max(float(v), 1e-6), 6) for v in wide.std(0)]}
    for stat, scores in domain_scores(tiles, latents, entry, codec.tables, codec.context).items():
        top = float(scores.max())
        threshold = top + DOMAIN_FILL_MARGIN * (1 - top) if stat == "fill" else top * (1 + DOMAIN_MARGIN)
        if stat in DOMAIN_PIXELS:
            threshold = max(threshold, DOMAIN_PIXEL_FLOOR)
        entry["statistics"][stat] = {"threshold": round(threshold, 4), "test_max": round(top, 4),
                                     "test_p999": round(float(np.percentile(scores, 99.9)), 4)}
    entry.update({"margin": DOMAIN_MARGIN, "top_tiles": TOP_TILES, "test_images": len(tiles),
                  "source": "benchmarks/domain_check.py"})
    return entry


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


def ship_graphs(folder: Path, name: str, data_root=None, model=None) -> dict:
    """Write and verify the ONNX graphs of the shipped model `name` in `folder` (checked against its torch
    model, or `model`, on its test images) and record them on its card; nothing else on the card changes.
    Returns the card's "onnx" entry. For models promoted before graphs were shipped."""
    from safetensors.torch import load

    from kaecompress.experiments.data import load_images
    from kaecompress.experiments.loading import build
    from kaecompress.exporters.graphs import write_graphs
    from kaecompress.zoo import read_weights

    folder = Path(folder)
    card, weights = read_weights(name, folder)
    model = model if model is not None else build(card["config"], load(weights), folder / card["weights_file"])
    images = load_images(card["dataset"], False, data_root, tuple(card["config"]["model"]["shape"]))
    card["onnx"] = write_graphs(folder, card, weights, model, images)
    runs.atomic_write_json(folder / f"{name}.json", card)
    return card["onnx"]


def main(argv: list[str] | None = None) -> int:
    """`python -m kaecompress.experiments.promote --graphs NAME... | --all [--folder DIR]`."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m kaecompress.experiments.promote",
                                     description="Write and verify the ONNX graphs of shipped models and record "
                                                 "them on their cards.")
    parser.add_argument("names", nargs="*", help="shipped model names")
    parser.add_argument("--all", action="store_true", help="every model in the folder")
    parser.add_argument("--folder", type=Path, default=None, help="the trained models' folder (default: trained/)")
    args = parser.parse_args(argv)
    folder = args.folder or trained_dir()
    names = list(cards(folder)) if args.all else args.names
    if not names:
        parser.error("name models or use --all")
    try:
        for name in names:
            entry = ship_graphs(folder, name)
            diffs = ", ".join(f"{part} {d:.2g}" for part, d in entry["max_abs_diff"].items())
            print(f"{name}: {entry['encoder']['bytes']:,} + {entry['decoder']['bytes']:,} bytes, max abs diff {diffs}")
    except KaecError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
