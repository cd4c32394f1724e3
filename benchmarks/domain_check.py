"""The out-of-domain check of `kaec encode`: why its margin, and what it costs (issue 10).

1. Margin: per-image PSNR of each MNIST model on the 10,000 MNIST test digits (the lowest is how far an
   in-domain image can fall below the card's mean), against the sampled PSNR of a real photograph
   (matplotlib's grace_hopper.jpg at 720x477).
2. Cost: encoding (tiles, network, serialising the .kae) with and without the check, interleaved rounds in
   this run, median of each; the ratio is the check's share of encode time (goal <= 10%).

    python benchmarks/domain_check.py [--rounds 15] [--threads N] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from PIL import Image

from kaecompress.codec.images import DOMAIN_MARGIN_DB, Codec
from kaecompress.experiments.data import load_images
from kaecompress.zoo import DEFAULT_MODEL
from kaecompress.experiments.loading import load_model


def photo() -> Image.Image:
    from matplotlib import cbook

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as im:
        return im.convert("RGB").resize((720, 477), Image.Resampling.BICUBIC)


def margins(images, data_root) -> None:
    import torch

    print(f"margin: warn below card PSNR - {DOMAIN_MARGIN_DB} dB")
    for name in ("mnist-kae-dec3", "mnist-kae-enc3"):
        loaded = load_model(name)
        with torch.no_grad():
            y = torch.cat([loaded.model(images[i:i + 1000]).clamp(0, 1) for i in range(0, len(images), 1000)])
        per_image = 10 * np.log10(1 / ((y - images) ** 2).flatten(1).mean(1).double().numpy())
        codec = Codec(loaded)
        codec.compress_many([photo()], check_domain=True)
        ref = loaded.card["metrics"]["psnr_db"]
        check = codec.domain_checks[0]
        print(f"  {name}: card {ref:.2f} dB; {len(images):,} test digits: lowest {per_image.min():.2f} dB "
              f"({ref - per_image.min():.2f} below), 0.1% {np.percentile(per_image, 0.1):.2f} dB; "
              f"photo 720x477: {check.psnr_db:.2f} dB on {check.tiles} tiles ({ref - check.psnr_db:.2f} below, "
              f"warns: {check.outside})")


def cost(images, rounds: int) -> None:
    """Encode as `kaec encode` does once the model is loaded: read the files, tile, encode, serialise, write
    all outputs; with and without the check."""
    import tempfile
    from pathlib import Path

    from kaecompress.codec.images import open_image
    from kaecompress.codec.containers import serialize
    from kaecompress.outputs import write_all

    codec = Codec(load_model(DEFAULT_MODEL))
    folder = Path(tempfile.mkdtemp(prefix="domain-check-"))
    photo().save(folder / "photo.jpg", quality=90)
    digits = []
    for i, d in enumerate(images[:1000]):
        digits.append(folder / f"digit{i}.png")
        Image.fromarray(np.rint(d[0].numpy() * 255).astype(np.uint8), "L").save(digits[-1])
    cases = {"photo 720x477 RGB (1,404 tiles)": [folder / "photo.jpg"], "1,000 digits in one call": digits,
             "one digit (1 tile)": digits[:1]}
    print(f"cost: encode with / without the check, median of {rounds} interleaved rounds "
          "(read, tile, encode, serialise, write; no start-up or model load)")
    for label, files in cases.items():
        times = {False: [], True: []}
        for _ in range(rounds):
            for check in (False, True):
                start = time.perf_counter()
                encoded = codec.compress_many([open_image(f) for f in files], check_domain=check)
                targets = [folder / "out" / (f.stem + ".kae") for f in files]
                targets[0].parent.mkdir(exist_ok=True)
                write_all([(t, serialize(e, t)) for t, e in zip(targets, encoded)])
                times[check].append(time.perf_counter() - start)
        without, with_ = statistics.median(times[False]), statistics.median(times[True])
        sampled = sum(c.tiles for c in codec.domain_checks if c is not None)
        print(f"  {label}: {without * 1e3:.1f} ms without, {with_ * 1e3:.1f} ms with ({sampled} tiles decoded); "
              f"the check adds {100 * (with_ / without - 1):.1f}%")
    import shutil

    shutil.rmtree(folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: as `kaec encode` "
                    "chooses them from the load)")
    args = ap.parse_args()
    import os

    import torch

    from kaecompress.runtime.sessions import default_threads

    torch.set_num_threads(args.threads or default_threads())
    print(f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    images = load_images("mnist", False, args.data_root)
    margins(images, args.data_root)
    cost(images, args.rounds)


if __name__ == "__main__":
    main()
