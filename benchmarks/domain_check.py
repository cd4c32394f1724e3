"""The out-of-domain check of `kaec encode` (issue 28): its statistic calibrated per shipped model, measured,
and what it costs.

1. Calibration: each shipped model scores all 10,000 of its own test images (one tile each: the image's
   value is its tile's score) and a set of images outside its domain (matplotlib's sample images whole,
   cropped and resized; noise; flat and gradient images; text drawn with Pillow), each encoded as
   `kaec encode` does. Codec models score bits per tile under their tables (context residuals included),
   plain models the mean squared z-score of their latents against their own test latents; all score four
   pixel statistics too (see kaecompress/codec/domain.py). Each threshold is the own-test maximum plus 10%
   (fill: halfway from it to 1; promote.calibrate_domain, which `promote` runs for new models); every own
   test image passes by construction, and the table says whether every outside image is refused. Digits for the Fashion-MNIST models and clothing for the MNIST
   models are measured too, as information only: they are 28x28 grey images of the same kind, not refused
   by design.
2. Cost: `Codec.compress_many` with and without the check on a 200-image folder and one 720x477 photo.

    python benchmarks/domain_check.py [--models NAME...] [--write-cards] [--rounds 7]

--write-cards stores each model's entry as "domain" on its card in trained/ (nothing else changes).
Results: docs/results/domain_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from kaecompress.codec.domain import TOP_TILES
from kaecompress.codec.images import Codec
from kaecompress.experiments.promote import DOMAIN_MARGIN, calibrate_domain
from kaecompress.experiments.data import load_array
from kaecompress.runtime.shipped import load_shipped
from kaecompress.zoo import cards, trained_dir

MARGIN = DOMAIN_MARGIN
RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "domain_check.json"
OTHER = {"mnist": "fashion-mnist", "fashion-mnist": "mnist"}


def sample_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "sample_data"


def photo() -> Image.Image:
    """The photograph of issue 10 and 28: grace_hopper.jpg at 720x477."""
    with Image.open(sample_dir() / "grace_hopper.jpg") as im:
        return im.convert("RGB").resize((720, 477), Image.Resampling.BICUBIC)


def _as_image(a: np.ndarray) -> Image.Image:
    a = np.nan_to_num(a.astype(np.float64))
    a = (a - a.min()) / max(a.max() - a.min(), 1e-12)
    return Image.fromarray(np.rint(a * 255).astype(np.uint8), "L")


def outside_images() -> dict[str, Image.Image]:
    """Images no MNIST or Fashion-MNIST model should take: name -> Pillow image."""
    import gzip

    d, out = sample_dir(), {}
    hopper = Image.open(d / "grace_hopper.jpg").convert("RGB")
    out["photo 720x477"] = photo()
    out["photo full"] = hopper
    out["photo grey"] = hopper.convert("L")
    for size in (28, 56, 112, 200):
        out[f"photo resized {size}x{size}"] = hopper.convert("L").resize((size, size), Image.Resampling.BILINEAR)
    rng = np.random.default_rng(0)
    for i in range(6):  # 28x28 crops: one tile of photograph
        x, y = int(rng.integers(0, hopper.width - 28)), int(rng.integers(0, hopper.height - 28))
        out[f"photo crop 28 #{i}"] = hopper.convert("L").crop((x, y, x + 28, y + 28))
    for name in ("logo2.png", "Minduka_Present_Blue_Pack.png"):
        with Image.open(d / name) as im:
            im.load()
            out[name] = im.copy()
            out[f"{name} 28x28"] = im.convert("L").resize((28, 28), Image.Resampling.BILINEAR)
    with np.load(d / "topobathy.npz") as z:
        out["topobathy elevation"] = _as_image(z["topo"] if "topo" in z.files else z[z.files[0]])
    with np.load(d / "jacksboro_fault_dem.npz") as z:
        out["jacksboro dem"] = _as_image(z["elevation"])
    with gzip.open(d / "s1045.ima.gz") as f:
        mri = np.frombuffer(f.read(), np.uint16).astype(np.float64).reshape(256, 256)
    out["mri 256x256"] = _as_image(mri)
    out["mri 28x28"] = out["mri 256x256"].resize((28, 28), Image.Resampling.BILINEAR)
    for size in (28, 112):
        out[f"uniform noise {size}"] = Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), "L")
        out[f"gaussian noise {size}"] = _as_image(rng.normal(size=(size, size)))
    out["noise RGB 64"] = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "RGB")
    for level in (64, 128, 192, 255):  # flat black is both datasets' background, and is left out
        out[f"flat {level}"] = Image.new("L", (28, 28), level)
        out[f"flat {level} 112"] = Image.new("L", (112, 112), level)
    ramp = np.linspace(0, 1, 112)
    out["gradient horizontal"] = _as_image(np.tile(ramp, (112, 1)))
    out["gradient vertical"] = _as_image(np.tile(ramp[:, None], (1, 112)))
    out["gradient diagonal 28"] = _as_image(np.add.outer(ramp[:28], ramp[:28]))
    out["gradient radial"] = _as_image(np.hypot(*np.meshgrid(ramp - 0.5, ramp - 0.5)))
    font = ImageFont.truetype("DejaVuSans.ttf", 14) if _has_font() else ImageFont.load_default()
    for i, (text, fg, bg) in enumerate([("Hello, world", 0, 255), ("kaec encode", 255, 0),
                                        ("The quick brown fox jumps", 0, 255)]):
        im = Image.new("L", (240, 40), bg)
        ImageDraw.Draw(im).text((4, 10), text, fill=fg, font=font)
        out[f"text #{i}"] = im
    page = Image.new("L", (28, 28), 255)
    ImageDraw.Draw(page).text((2, 6), "Ab", fill=0, font=font)
    out["text 28x28 dark on light"] = page
    checker = (np.indices((112, 112)).sum(0) // 8) % 2
    out["checkerboard"] = _as_image(checker)
    return out


def _has_font() -> bool:
    try:
        ImageFont.truetype("DejaVuSans.ttf", 14)
        return True
    except OSError:
        return False


def calibrate(name: str, data_root=None) -> tuple[dict, Codec]:
    """A shipped model's "domain" entry, from all of its own test images, as `kaec promote` computes it."""
    loaded = load_shipped(name)
    calibration = calibrate_domain(loaded, load_array(loaded.dataset, False, data_root).astype(np.float32) / 255)
    codec = Codec(loaded, "onnx")
    codec.domain = calibration
    return calibration, codec


def measure_outside(codec: Codec, images: dict) -> dict[str, float]:
    names = list(images)
    codec.compress_many([images[n] for n in names], check_domain=True)
    return {n: c for n, c in zip(names, codec.domain_checks)}


def cost(rounds: int, data_root=None) -> dict:
    """compress_many with and without the check (images already open), interleaved, median of `rounds`."""
    out = {}
    digits = load_array("mnist", False, data_root)[:200, 0]
    folder = [Image.fromarray(d, "L") for d in digits]
    for name in ("mnist-kae-dec3", "mnist-q2", "fashion-q9"):
        codec = Codec(load_shipped(name), "onnx")
        calibration = codec.domain
        for label, images in (("200 digits", folder), ("photo 720x477", [photo()])):
            times = {False: [], True: []}
            for _ in range(rounds):
                for check in (False, True):
                    start = time.perf_counter()
                    codec.compress_many(images, check_domain=check)
                    times[check].append(time.perf_counter() - start)
            without, with_ = statistics.median(times[False]), statistics.median(times[True])
            out[f"{name}: {label}"] = {"without_ms": round(without * 1e3, 2), "with_ms": round(with_ * 1e3, 2),
                                       "added_pct": round(100 * (with_ / without - 1), 1),
                                       "calibrated": calibration is not None}
            print(f"  {name}, {label}: {without * 1e3:.1f} ms without, {with_ * 1e3:.1f} ms with the check "
                  f"({out[f'{name}: {label}']['added_pct']:+.1f}%)")
    return out


def write_card(folder: Path, name: str, calibration: dict) -> None:
    """Add (or replace) the card's "domain" entry; every other key is kept as it is."""
    path = folder / f"{name}.json"
    card = json.loads(path.read_text())
    card["domain"] = calibration
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=None, help="shipped model names (default: all)")
    ap.add_argument("--write-cards", action="store_true", help="store each calibration on its card")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--no-cost", action="store_true")
    ap.add_argument("--data-root", default=None)
    args = ap.parse_args()
    folder = trained_dir()
    names = args.models or sorted(cards(folder))
    outside = outside_images()
    other = {}
    for family in OTHER:
        arr = load_array(family, False, args.data_root)[:500, 0]
        other[family] = {f"{family} test #{i}": Image.fromarray(a, "L") for i, a in enumerate(arr)}
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; {len(outside)} outside images")
    results = {"margin": MARGIN, "top_tiles": TOP_TILES, "outside_images": sorted(outside), "models": {}}
    for name in names:
        calibration, codec = calibrate(name, args.data_root)
        checks = measure_outside(codec, outside)
        passed = sorted(n for n, c in checks.items() if not c.outside)
        closest = min(checks, key=lambda n: checks[n].value / checks[n].threshold)
        cross = measure_outside(codec, other[OTHER[codec.loaded.dataset]])
        cross_refused = sum(c.outside for c in cross.values())
        row = {"statistics": calibration["statistics"], "outside_all_refused": not passed,
               "outside_passed": passed, "outside_closest": closest,
               "outside_closest_ratio": round(checks[closest].value / checks[closest].threshold, 3),
               "photo_720x477": checks["photo 720x477"].describe(),
               "other_family_refused": f"{cross_refused}/{len(cross)}",
               "outside": {n: f"{c.statistic} {c.value:.4g} / {c.threshold:.4g}" for n, c in checks.items()}}
        results["models"][name] = row
        limits = ", ".join(f"{k} {v['test_max']:.4g}->{v['threshold']:.4g}" for k, v in calibration["statistics"].items())
        print(f"{name:15s} {limits}; closest outside {closest} ({row['outside_closest_ratio']}x); refused "
              f"{len(checks) - len(passed)}/{len(checks)}{' passed: ' + ', '.join(passed) if passed else ''}; "
              f"other family refused {row['other_family_refused']}", flush=True)
        if args.write_cards:
            write_card(folder, name, calibration)
    if not args.no_cost:
        print(f"cost: compress_many with / without the check, median of {args.rounds} interleaved rounds")
        results["cost"] = cost(args.rounds, args.data_root)
    if args.models is None:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
