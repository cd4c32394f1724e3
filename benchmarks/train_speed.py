"""Training throughput of the KAE bottleneck against its baselines, measured in the same run.

Model: ks 7, channels [32], latent 16, encoder KAE order 3, batch 64, real MNIST images, AdamW.
  fast     KAELayer (stacked powers, one matrix product)
  literal  the published formulation, which expands a (batch, out, in, order+1) tensor
  linear   the same model with a Linear bottleneck
Rounds interleave the models so that load from other processes hits all of them alike; the median of
the rounds is reported. The optimizer is the trainer's (fused AdamW). Goals (issue 2): fast >= 10x literal, fast >= 0.6x linear.

    python benchmarks/train_speed.py [--rounds 5] [--steps 20] [--json-file out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from kaecompress.experiments.data import load_images
from kaecompress.nn.layers import LiteralKAELayer
from kaecompress.nn.models import CNNKAE
from kaecompress.experiments.train import make_optimizer


def make(kind: str) -> CNNKAE:
    torch.manual_seed(0)
    model = CNNKAE(shape=(1, 28, 28), latent_dim=16, channels=[32], kernel_size=7,
                   encoder_kae_order=0 if kind == "linear" else 3, activation="relu", output_activation="sigmoid")
    if kind == "literal":
        fast = model.encoder[3]
        literal = LiteralKAELayer(fast.input_dim, fast.out_dim, fast.order)
        literal.load_state_dict(fast.state_dict())
        model.encoder[3] = literal
    return model


def throughput(model, optimizer, batches) -> float:
    start = time.perf_counter()
    for x in batches:
        loss = F.mse_loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="steps per round (the literal model runs a quarter)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--json-file", help="also write the figures to this file")
    args = ap.parse_args()

    images = load_images("mnist", True)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=gen)
    batches = [images[order[i * args.batch_size:(i + 1) * args.batch_size]] for i in range(args.steps)]
    kinds = ("fast", "literal", "linear")
    models = {k: make(k) for k in kinds}
    optims = {k: make_optimizer("AdamW", m.parameters(), lr=3e-4) for k, m in models.items()}
    for k in kinds:  # warm-up
        throughput(models[k], optims[k], batches[:2])
    samples = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for k in kinds:
            work = batches[: max(2, args.steps // 4)] if k == "literal" else batches
            samples[k].append(throughput(models[k], optims[k], work))
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {"fast/literal": med["fast"] / med["literal"], "fast/linear": med["fast"] / med["linear"]}
    goals = {"fast/literal": 10.0, "fast/linear": 0.6}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds")
    for k in kinds:
        print(f"  {k:8s} {med[k]:9,.0f} samples/s   (rounds: {', '.join(f'{v:,.0f}' for v in samples[k])})")
    ok = True
    for name, value in ratios.items():
        passed = value >= goals[name]
        ok &= passed
        print(f"  {name:13s} {value:6.2f}x   goal >= {goals[name]}x   {'PASS' if passed else 'FAIL'}")
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump({"samples_per_s": med, "rounds": samples, "ratios": ratios, "goals": goals}, f, indent=2)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
