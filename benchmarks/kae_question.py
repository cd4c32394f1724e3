"""The KAE question in bits: BD-rate of the KAE-decoder codec family against the Linear-decoder family
trained with the same recipe (experiments/explorations/mnist-codec-kae-question.yml: dec:3 against dec:0).

Each run folder's model writes the .kae files `kaec encode --model RUN` would write; an unshipped model's
header names it by its 8-byte hash and the image size (16 bytes with the check), so the sizes compared are
those of the same files from a shipped model: the coded latents plus the 1-byte header and 2-byte check.
Usage: python benchmarks/kae_question.py [--images N] [--runs-dir runs] [--json-file out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kaecompress.evaluation import bdrate
from kaecompress.experiments.config import load_experiment
from kaecompress.evaluation.rd import load_dataset, model_files, score
from kaecompress.experiments.sweep import run_dir
from kaecompress.experiments.loading import load_run

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_OVERHEAD = 3  # a shipped codec model's one-tile file: 1 header byte + 2 check bytes


def curve(runs, runs_root: Path, pixels) -> list[dict]:
    points = []
    for cfg in runs:
        folder = run_dir(runs_root, cfg)
        if not (folder / "summary.json").is_file():
            print(f"skipped {folder}: not trained")
            continue
        loaded = load_run(folder)
        model_files(loaded, pixels[:1])  # keep torch's first-call costs out of the clock
        clock: dict = {}
        files, decoded = model_files(loaded, pixels, clock)
        p = score(pixels, files, decoded, "KAE", clock, cfg.matrix_slug)
        shipped = p.payload_bytes + SHIPPED_OVERHEAD
        points.append({"run": cfg.matrix_slug, "lambda": cfg.codec.lmbda, "bytes": shipped,
                       "run_file_bytes": p.bytes, "psnr": p.psnr, "ssim": p.ssim})
        print(f"{cfg.matrix_slug:22s} {shipped:7.2f} bytes {p.psnr:6.2f} dB")
    return points


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10_000)
    ap.add_argument("--runs-dir", type=Path, default=ROOT / "runs")
    ap.add_argument("--json-file", type=Path)
    args = ap.parse_args()
    pixels = load_dataset("mnist", args.images, None)
    runs = load_experiment(ROOT / "experiments/explorations/mnist-codec-kae-question.yml").runs
    kae, linear = (curve([c for c in runs if c.matrix["dec"] == dec], args.runs_dir, pixels) for dec in (3, 0))
    result = bdrate.bd([p["bytes"] for p in linear], [p["psnr"] for p in linear],
                       [p["bytes"] for p in kae], [p["psnr"] for p in kae])
    figures = [f"BD-rate {result['bd_rate']:+.1f}%" if result["bd_rate"] is not None else "no BD-rate",
               f"BD-PSNR {result['bd_psnr']:+.2f} dB" if result["bd_psnr"] is not None else "no BD-PSNR"]
    span = result["psnr_range"]
    print(f"KAE decoder against Linear decoder ({len(kae)} and {len(linear)} points, {result['method']}): "
          + " ".join(figures) + (f" over {span[0]:.2f}-{span[1]:.2f} dB" if span else "")
          + (f" ({result['note']})" if result["note"] else ""))
    if args.json_file:
        args.json_file.write_text(json.dumps({"images": len(pixels), "kae": kae, "linear": linear, "bd": result},
                                        indent=2))


if __name__ == "__main__":
    main()
