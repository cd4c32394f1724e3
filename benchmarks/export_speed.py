"""Encoder inference: onnxruntime CPU on the exported ONNX file against PyTorch eager, same run (issue 4).

Models: ks 7, channels [32], latent 16, with a Linear and with a KAE (order 3) encoder bottleneck; batch 256
of real MNIST test images; both runtimes on the same number of threads (torch's). Rounds interleave the two
runtimes; medians are reported. Goal: onnxruntime >= 1.0x PyTorch eager, for both encoders.

    python benchmarks/export_speed.py [--rounds 7] [--iters 20] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kaecompress.experiments.data import load_images
from kaecompress.exporters import export
from kaecompress.runtime.sessions import onnx_session
from kaecompress.nn.models import CNNKAE


def rate(fn, x, iters: int) -> float:
    fn(x)
    start = time.perf_counter()
    for _ in range(iters):
        fn(x)
    return iters * len(x) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    images = load_images("mnist", False)
    x = images[: args.batch_size].contiguous()
    threads = torch.get_num_threads()
    ok = True
    print(f"torch {torch.__version__}, {threads} threads, batch {args.batch_size}, {args.rounds} rounds")
    for label, order in (("Linear encoder", 0), ("KAE encoder (order 3)", 3)):
        torch.manual_seed(0)
        model = CNNKAE(kernel_size=7, channels=[32], encoder_kae_order=order, output_activation="sigmoid").eval()
        with tempfile.TemporaryDirectory() as tmp:
            export(model, Path(tmp) / "out", ("onnx",), images=images[:64])
            session = onnx_session(Path(tmp) / "out" / "encoder.onnx", threads=threads)

            def onnx_run(batch):
                return session.run(None, {"images": batch.numpy()})[0]

            def torch_run(batch):
                with torch.inference_mode():
                    return model.encoder(batch)

            measured = {"pytorch eager": [], "onnxruntime": []}
            for _ in range(args.rounds):
                measured["pytorch eager"].append(rate(torch_run, x, args.iters))
                measured["onnxruntime"].append(rate(onnx_run, x, args.iters))
        med = {k: statistics.median(v) for k, v in measured.items()}
        ratio = med["onnxruntime"] / med["pytorch eager"]
        ok &= ratio >= 1.0
        print(f"  {label}")
        for k, v in med.items():
            print(f"    {k:14s} {v:10,.0f} images/s")
        print(f"    onnxruntime / eager {ratio:.2f}x   goal >= 1.0x   {'PASS' if ratio >= 1.0 else 'FAIL'}")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
