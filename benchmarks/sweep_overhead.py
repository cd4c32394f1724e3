"""The sweep machinery (run folders, metrics log, progress callback, checkpoints, summary) must leave
training throughput unchanged (issue 3).

Same model, data, batches and optimizer, measured in the same process, rounds interleaved:
  bare   a minimal loop: forward, MSE, backward, step, nothing else
  sweep  kaec's run_sweep -> train_run on a one-run experiment; its reported throughput (train time
         excludes validation and checkpoint writes, as for every run)
Goal: sweep / bare >= 0.95.

    python benchmarks/sweep_overhead.py [--rounds 3] [--inputs 12800]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kaecompress.experiments.config import load_experiment
from kaecompress.experiments.data import load_images
from kaecompress.experiments.sweep import run_sweep
from kaecompress.experiments.train import build_model, build_optimizer

CONFIG = """experiment_name: overhead
data: {{dataset: mnist}}
model: {{latent_dim: 16, channels: [32], kernel_size: 7, decoder_kae_order: 3, output_activation: sigmoid}}
train: {{batch_size: 64, optimizer: AdamW, lr: 3.0e-4, max_inputs: {inputs}, checkpoint_every_s: 2}}
"""


def bare(cfg, images: torch.Tensor) -> float:
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, model.parameters())
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003))
    bs, n = cfg.train.batch_size, cfg.train.max_inputs
    start = time.perf_counter()
    for i in range(0, n, bs):
        x = images[order[i:i + bs]]
        loss = F.mse_loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inputs", type=int, default=12800)
    args = ap.parse_args()
    images = load_images("mnist", True)
    measured = {"bare": [], "sweep": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.yml"
        path.write_text(CONFIG.format(inputs=args.inputs))
        (cfg,) = load_experiment(path).runs
        for r in range(args.rounds):
            measured["bare"].append(bare(cfg, images))
            report = run_sweep([cfg], Path(tmp) / f"runs{r}")
            measured["sweep"].append(report.summaries[0]["throughput"])
    med = {k: statistics.median(v) for k, v in measured.items()}
    ratio = med["sweep"] / med["bare"]
    for k, v in measured.items():
        print(f"  {k:6s} {med[k]:8,.0f} samples/s   (rounds: {', '.join(f'{x:,.0f}' for x in v)})")
    print(f"  sweep / bare  {ratio:.3f}   goal >= 0.95   {'PASS' if ratio >= 0.95 else 'FAIL'}")
    raise SystemExit(0 if ratio >= 0.95 else 1)


if __name__ == "__main__":
    main()
