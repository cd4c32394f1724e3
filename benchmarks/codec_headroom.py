"""Where a shipped codec's next bytes or decibels could come from: a richer entropy model, or the transform.

Quality: PSNR on the test images (8-bit pixels, per image, averaged) with the latents rounded, as coded, and
with them left as floats: the second is what the transform gives before any quantisation, a ceiling no
entropy model lifts.

Rate: the shipped models code each latent on its own (a factorized prior). Before building a hyperprior or a
context model, this measures what such models could gain on the latents the models already make, with
densities fitted on the 60,000 training images and bits counted on the 10,000 test images (ideal bits, no
container):

- factorized: one histogram per latent (what the shipped prior approximates);
- switchable K: K histograms per latent, each image coded under the best set, its index costing log2(K) bits
  (hard EM on the training latents: a per-image choice any decoder can follow exactly);
- linear context: each latent predicted from all earlier ones (least squares, in order of variance), the
  rounded residual coded with one histogram per latent (the gain a mean-predicting context model could have).

For a model shipped with a context model, a second row measures the same on the residuals its files code.
The models were trained for the factorized prior; trained with a richer one, latents could adapt further.
Usage: python benchmarks/codec_headroom.py [--model fashion-q7 --model mnist-q5] [--json-file out.json]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

SWITCHES = (4, 16, 32)


def latents(name: str):
    """The model, its rounded latents of the training and test images, and test PSNR with the latents rounded
    and unrounded."""
    import torch

    from kaecompress.experiments.data import load_images
    from kaecompress.experiments.codecstats import psnr_8bit, to_pixels
    from kaecompress.experiments.loading import load_model

    loaded = load_model(name)
    torch.set_num_threads(1)
    out, psnr = [], {}
    for train in (True, False):
        x = load_images(loaded.dataset, train)
        with torch.no_grad():
            y = torch.cat([loaded.model.encoder(x[i:i + 1000]) for i in range(0, len(x), 1000)])
            if not train:
                for key, z in (("rounded", torch.round(y)), ("unrounded", y)):
                    r = torch.cat([loaded.model.decoder(z[i:i + 1000]) for i in range(0, len(z), 1000)])
                    psnr[key] = float(np.mean(psnr_8bit(to_pixels(r.clamp(0, 1)), to_pixels(x))))
        out.append(torch.round(y).to(torch.int64).numpy())
    return loaded, out[0], out[1], psnr


def code_lengths(fit: np.ndarray, test: np.ndarray, groups: np.ndarray, k: int, low: int, span: int):
    """Bits of every test image under each of k per-latent histograms fitted on the training images of each
    group (add-half smoothing): an array (test images, k)."""
    dims = fit.shape[1]
    bits = np.zeros((len(test), k))
    for g in range(k):
        counts = np.full((dims, span), 0.5)
        chosen = fit[groups == g] - low
        for d in range(dims):
            counts[d] += np.bincount(chosen[:, d], minlength=span)
        table = -np.log2(counts / counts.sum(1, keepdims=True))
        bits[:, g] = table[np.arange(dims), test - low].sum(1)
    return bits


def _value_range(*arrays: np.ndarray) -> tuple[int, int]:
    low = int(min(a.min() for a in arrays))
    return low, int(max(a.max() for a in arrays)) - low + 1


def _factorized_bytes(train: np.ndarray, test: np.ndarray) -> float:
    """Mean ideal bytes of the test images under one histogram per latent fitted on the training images."""
    one = np.zeros(len(train), dtype=np.int64)
    return code_lengths(train, test, one, 1, *_value_range(train, test))[:, 0].mean() / 8


def headroom(train: np.ndarray, test: np.ndarray) -> dict:
    result = {"factorized": _factorized_bytes(train, test)}
    low, span = _value_range(train, test)
    energy = np.abs(train).sum(1)
    for k in SWITCHES:
        groups = np.minimum(np.argsort(np.argsort(energy)) * k // len(train), k - 1)  # start: by energy
        for _ in range(8):
            groups = code_lengths(train, train, groups, k, low, span).argmin(1)
        best = code_lengths(train, test, groups, k, low, span).min(1)
        result[f"switchable {k}"] = (best.mean() + np.log2(k)) / 8
    order = np.argsort(-train.var(0))
    # Each latent against all earlier ones and a constant: the design matrices grow one column at a time.
    a = np.c_[np.ones(len(train)), train[:, order]].astype(np.float64)
    b = np.c_[np.ones(len(test)), test[:, order]].astype(np.float64)
    ra, rb = a[:, 1:].copy(), b[:, 1:].copy()
    for d in range(1, ra.shape[1]):
        w, *_ = np.linalg.lstsq(a[:, :d + 1], a[:, d + 1], rcond=None)
        ra[:, d] -= np.round(a[:, :d + 1] @ w)
        rb[:, d] -= np.round(b[:, :d + 1] @ w)
    result["linear context"] = _factorized_bytes(ra.astype(np.int64), rb.astype(np.int64))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", help="Shipped codec model (repeatable).")
    parser.add_argument("--json-file", help="Write the figures here.")
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    rows = []
    for name in args.model or ["fashion-q7", "mnist-q5"]:
        loaded, train, test, psnr = latents(name)
        row = {"model": name, "latents": int(train.shape[1]), "psnr": psnr,
               "card_ideal_bytes": loaded.card.get("codec_metrics", {}).get("ideal_bytes_per_image")}
        rows.append({**row, "bytes": headroom(train, test)})
        context = loaded.model.prior.context() if loaded.model.prior is not None else None
        if context is not None:  # what its files code: the residuals of the shipped context model
            rows.append({**row, "model": f"{name}, residuals", "bytes": headroom(context.residuals(train),
                                                                                 context.residuals(test))})
    table = Table(title="test images: PSNR (dB) with rounded / unrounded latents; ideal bytes (no container) "
                        "under each density")
    table.add_column("model")
    table.add_column("PSNR", justify="right")
    for key in rows[0]["bytes"]:
        table.add_column(key, justify="right")
    for row in rows:
        base = row["bytes"]["factorized"]
        table.add_row(f"{row['model']} ({row['latents']} latents)",
                      f"{row['psnr']['rounded']:.2f} / {row['psnr']['unrounded']:.2f}",
                      *[f"{v:.2f}" + ("" if k == "factorized" else f" ({100 * (v / base - 1):+.1f}%)")
                        for k, v in row["bytes"].items()])
    Console(width=160).print(table)
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
