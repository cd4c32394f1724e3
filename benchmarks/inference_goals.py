"""Issue 6's goals, checked with the same measurement as `kaec bench`, baselines in the same run:
  - onnxruntime encoder throughput at batch 256 >= 1.0x PyTorch eager, for each model given;
  - single-image encode latency (p50) <= 1 ms for the Linear-bottleneck encoder (mnist-kae-dec3).

    python benchmarks/inference_goals.py [--models mnist-kae-dec3 mnist-kae-enc3] [--seconds 1]
"""

from __future__ import annotations

import argparse

from kaecompress.evaluation.bench import run_bench
from kaecompress.experiments.loading import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["mnist-kae-dec3", "mnist-kae-enc3"])
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    ok = True
    for name in args.models:
        loaded = load_model(name)
        result = run_bench(loaded, batch_sizes=(1, 256), min_seconds=args.seconds, images=256)
        rows = {(r["part"], r["runtime"], r["batch"]): r for r in result["inference"]}
        ratio = rows[("encoder", "onnxruntime-cpu", 256)]["vs_pytorch_eager"]
        passed = ratio >= 1.0
        ok &= passed
        print(f"{name}: onnxruntime encoder, batch 256: {ratio:.2f}x PyTorch eager   goal >= 1.0x   "
              f"{'PASS' if passed else 'FAIL'}")
        if loaded.model.config["encoder_kae_order"] == 0:
            p50 = rows[("encoder", "onnxruntime-cpu", 1)]["p50_ms"]
            passed = p50 <= 1.0
            ok &= passed
            print(f"{name}: single-image encode p50 {p50:.3f} ms   goal <= 1 ms   {'PASS' if passed else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
