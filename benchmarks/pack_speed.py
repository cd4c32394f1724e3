"""Packed training against the same runs one by one, measured in the same process (issue 30).

The runs: the quick-start model shape (ks 7, channels [32], latent 16, encoder KAE order 3, batch 64) on
real MNIST, `--runs` trials alternating Adam and AdamW. Each way trains every run for `--inputs` inputs
into fresh folders through the real trainers (train.train_run, packing.train_pack), validation on
`--val` images included; samples/s counts training inputs over each run's own train_time_s (validation
excluded, as in summaries) and, for the total, all runs' inputs over the wall time of the whole set.
Three ways: one by one, packed (the Adam runs' optimizers stepping as one, and the AdamW runs' as
another: packing.StackedOptimizers), and packed with every run's optimizer stepping on its own.

`--tiny` trains a model of a few hundred parameters at batch 4 instead: what is left is the Python cost
of a step, the part that a GPU, which computes these models' steps in microseconds, waits on.

    python benchmarks/pack_speed.py [--device cpu|cuda] [--runs 4] [--inputs 2560] [--tiny] [--json-file out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

import torch

from kaecompress.experiments.config import build_run
from kaecompress.experiments.data import load_images
from kaecompress.experiments.packing import train_pack
from kaecompress.experiments.train import train_run

EXPERIMENT = {
    "experiment_name": "pack-speed",
    "data": {"dataset": "mnist"},
    "model": {"latent_dim": 16, "channels": [32], "kernel_size": 7, "encoder_kae_order": 3,
              "output_activation": "sigmoid"},
    "train": {"batch_size": 64, "optimizer": "Adam", "lr": 1e-3, "max_inputs": 2560,
              "validation_batch_size": 1000, "log_every": 1280},
}


TINY = {"model": {"latent_dim": 2, "channels": [2], "kernel_size": 3, "encoder_kae_order": 3,
                  "output_activation": "sigmoid"},
        "train": {**EXPERIMENT["train"], "batch_size": 4, "validation_batch_size": 100}}
MODES = {"one_by_one": "one by one", "packed": "packed", "packed_member_steps": "packed, a step per optimizer"}


def configs(runs: int, inputs: int, device: str, tiny: bool = False) -> list:
    out = []
    experiment = {**EXPERIMENT, **TINY} if tiny else EXPERIMENT
    for trial in range(1, runs + 1):
        cfg = build_run(experiment, "pack_speed.py", trial=trial)
        out.append(dataclasses.replace(cfg, matrix_slug=f"trial:{trial}", train=dataclasses.replace(
            cfg.train, max_inputs=inputs, device=device, optimizer="Adam" if trial % 2 else "AdamW")))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--inputs", type=int, default=2560, help="training inputs per run")
    ap.add_argument("--val", type=int, default=1000, help="validation images")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the trainer's)")
    ap.add_argument("--tiny", action="store_true", help="a model of a few hundred parameters at batch 4: the "
                    "Python cost per step")
    ap.add_argument("--json-file", help="also write the figures to this file")
    args = ap.parse_args()

    train = load_images("mnist", True)
    val = load_images("mnist", False)[:args.val]
    cfgs = configs(args.runs, args.inputs, args.device, args.tiny)
    result = {"device": args.device, "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda")
              else "cpu", "torch": torch.__version__, "runs": args.runs, "inputs_per_run": args.inputs,
              "batch_size": cfgs[0].train.batch_size, "model": (TINY if args.tiny else EXPERIMENT)["model"],
              "validation_images": args.val}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # a short warm-up of both paths (allocator, kernels, CUDA context), into folders thrown away
        warm = configs(2, 128, args.device, args.tiny)
        train_run(warm[0], tmp / "warm-alone", train_images=train, val_images=val[:100], threads=args.threads)
        train_pack(warm, [tmp / "warm-p0", tmp / "warm-p1"], train_images=train, val_images=val[:100],
                   threads=args.threads)
        for mode, label in MODES.items():
            start = time.perf_counter()
            if mode != "one_by_one":
                summaries = train_pack(cfgs, [tmp / mode / str(i) for i in range(len(cfgs))], train_images=train,
                                       val_images=val, threads=args.threads,
                                       stack_optimizers=mode == "packed")
            else:
                summaries = [train_run(c, tmp / mode / str(i), train_images=train, val_images=val,
                                       threads=args.threads) for i, c in enumerate(cfgs)]
            wall = time.perf_counter() - start
            result[mode] = {
                "wall_s": round(wall, 3),
                "total_samples_per_s": round(args.runs * args.inputs / wall, 1),
                "per_run_samples_per_s": [round(s["throughput"], 1) for s in summaries],
                "final_val_loss": [s["final_val_loss"] for s in summaries],
                "threads": summaries[0]["threads"],
            }
            print(f"{label:>28}: {result[mode]['total_samples_per_s']:>9.1f} samples/s in total, per run "
                  f"{result[mode]['per_run_samples_per_s']} ({wall:.1f} s)")
    one, packed = result["one_by_one"], result["packed"]
    result["speedup_total"] = round(packed["total_samples_per_s"] / one["total_samples_per_s"], 3)
    result["speedup_stacked_steps"] = round(packed["total_samples_per_s"]
                                            / result["packed_member_steps"]["total_samples_per_s"], 3)
    result["max_rel_val_loss_diff"] = max(abs(a - b) / abs(a) for a, b in zip(one["final_val_loss"],
                                                                               packed["final_val_loss"]))
    print(f"packed / one by one: {result['speedup_total']}x in total; packed / packed with a step per optimizer: "
          f"{result['speedup_stacked_steps']}x; final validation losses differ by at most "
          f"{result['max_rel_val_loss_diff']:.2e} (relative)")
    if args.json_file:
        Path(args.json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_file).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
