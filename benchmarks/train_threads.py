"""Training throughput with 1 and with 2 torch threads, on the machine as found and next to one more busy process.

The quick-start model (ks 7, channels [32], latent 16, decoder KAE order 3, batch 64, fused AdamW) on real
MNIST batches. Each setting runs in its own process (torch's thread pool is fixed once used), rounds
interleave the thread counts so that load from elsewhere hits both alike, and the median is reported.
"as found" runs on the machine with whatever else it is doing (the load average is printed before and
after: an idle machine shows about 0); "+1 busy" adds one process spinning on the CPU for the whole round,
as another job would.
The ratio 1-thread / 2-thread is what `kaecompress.experiments.resources.default_threads` is chosen from.

    python benchmarks/train_threads.py [--rounds 3] [--inputs 6400] [--json-file out.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys

ROUND = r"""
import sys, time
import torch, torch.nn.functional as F
torch.set_num_threads(int(sys.argv[1]))
from kaecompress.experiments.data import load_images
from kaecompress.nn.models import CNNKAE
from kaecompress.experiments.train import make_optimizer
inputs = int(sys.argv[2])
images = load_images("mnist", True, None)[:inputs]
torch.manual_seed(0)
model = CNNKAE(shape=(1, 28, 28), latent_dim=16, channels=[32], kernel_size=7, decoder_kae_order=3,
               activation="relu", output_activation="sigmoid")
opt = make_optimizer("AdamW", model.parameters(), 3e-4)
def step(x):
    loss = F.mse_loss(model(x), x)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
step(images[:64])  # warm-up
start = time.perf_counter()
for i in range(0, inputs, 64):
    step(images[i:i + 64])
print(inputs / (time.perf_counter() - start))
"""


def spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


def measure(threads: int, inputs: int) -> float:
    p = subprocess.run([sys.executable, "-c", ROUND, str(threads), str(inputs)], capture_output=True, text=True,
                       env={**os.environ, "KAEC_OFFLINE": "1"}, check=True)
    return float(p.stdout.split()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--inputs", type=int, default=6400)
    ap.add_argument("--json-file", default=None)
    args = ap.parse_args()
    result = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    for condition in ("as found", "+1 busy"):
        stop = mp.Event()
        spinner = mp.Process(target=spin, args=(stop,)) if condition == "+1 busy" else None
        if spinner:
            spinner.start()
        try:
            speeds: dict[int, list[float]] = {1: [], 2: []}
            for _ in range(args.rounds):
                for threads in (1, 2):
                    speeds[threads].append(measure(threads, args.inputs))
        finally:
            if spinner:
                stop.set()
                spinner.join()
        med = {t: statistics.median(v) for t, v in speeds.items()}
        result[condition] = {"1 thread": med[1], "2 threads": med[2], "ratio 1/2": med[1] / med[2],
                             "rounds": speeds}
        print(f"{condition:8s}  1 thread {med[1]:7,.0f} samples/s   2 threads {med[2]:7,.0f} samples/s   "
              f"1 thread is {med[1] / med[2]:.2f}x 2 threads", flush=True)
    result["load_after"] = os.getloadavg()
    print(f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f} "
          f"({result['cpus']} CPUs)")
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
