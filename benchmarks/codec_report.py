"""What compression costs and saves on the MNIST test set through a trained model (issue 5's report).

For every test image: the model's float reconstruction, the .kae round trip (uint8 with a per-file scale,
and float16), and Pillow's PNG and JPEG of the same image. Prints mean PSNR and mean bytes per image.

    python benchmarks/codec_report.py [--model mnist-kae-dec3] [--images 10000]
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from PIL import Image

from kaecompress.evaluation.bench import pillow_round_trip
from kaecompress.codec.images import Codec
from kaecompress.codec.containers import from_kae, to_kae, to_npy
from kaecompress.experiments.data import load_images
from kaecompress.evaluation.metrics import psnr
from kaecompress.zoo import DEFAULT_MODEL
from kaecompress.experiments.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--images", type=int, default=10000)
    args = ap.parse_args()
    loaded = load_model(args.model)
    images = load_images(loaded.dataset, False)[: args.images]
    pixels = np.rint(images[:, 0].numpy() * 255).astype(np.uint8)
    codec = Codec(loaded)
    encoded = codec.compress_many([Image.fromarray(p, "L") for p in pixels])

    def score(decoded) -> float:
        return statistics.fmean(psnr(float((((np.asarray(d, np.float64) - p) / 255.0) ** 2).mean()))
                                for d, p in zip(decoded, pixels))

    import torch

    with torch.inference_mode():
        recon = loaded.model(images).clamp(0, 1)
    float_psnr = statistics.fmean(psnr(e) for e in ((recon - images) ** 2).flatten(1).mean(1).tolist())
    rows = [("model output (float, before 8-bit pixels)", None, float_psnr)]
    rows.append((".npy (float32 latents)", statistics.fmean(len(to_npy(e)) for e in encoded),
                 score(codec.decompress_many(encoded))))
    for quant in ("float16", "uint8"):
        blobs = [to_kae(e, quant) for e in encoded]
        decoded = codec.decompress_many([from_kae(b, "report")[0] for b in blobs])
        rows.append((f".kae {quant}", statistics.fmean(len(b) for b in blobs), score(decoded)))
    for label, fmt, params in (("PNG (Pillow, optimize)", "PNG", {"optimize": True}),
                               ("JPEG (Pillow, quality 75)", "JPEG", {"quality": 75}),
                               ("JPEG (Pillow, quality 10)", "JPEG", {"quality": 10}),
                               ("WebP (Pillow, quality 10)", "WEBP", {"quality": 10})):
        rows.append((label, *pillow_round_trip(pixels, fmt, **params)))
    print(f"{loaded.name} on {len(images)} {loaded.dataset} test images (784 raw bytes each)\n")
    print("| encoding | bytes / image | mean PSNR (dB) |")
    print("|---|---:|---:|")
    for label, size, value in rows:
        print(f"| {label} | {'' if size is None else f'{size:,.1f}'} | "
              f"{'lossless' if value == float('inf') else f'{value:.2f}'} |")
    print(f"\nquantisation cost: uint8 {rows[1][2] - rows[3][2]:.3f} dB, float16 {rows[1][2] - rows[2][2]:.3f} dB "
          "(against float latents)")


if __name__ == "__main__":
    main()
