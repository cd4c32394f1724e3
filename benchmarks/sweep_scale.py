"""Sweep throughput by executor, measured in one run on this machine, and a cost model of the 256-run study.

    python benchmarks/sweep_scale.py [--inputs 20000] [--short-runs 8] [--skip-ray]

Arms (each a whole `kaec train` command, start-up included, on the small grid's 4 `trial:1` runs of the
study's model shape, into a fresh runs folder):
  one process, 2 threads    --workers 1 --threads 2     (the baseline of the ratios)
  one process, 1 thread     --workers 1 --threads 1
  two workers               --workers 2                 (1 thread each)
  Ray, 2 one-CPU workers    --ray ADDRESS               (a local `ray start --head --num-cpus 2`)
Ray's overhead: a grid of short runs (--short-runs runs of 640 inputs) through --ray and through --workers 2;
the difference per run, and where it goes (time to the first run's start, then the gaps between runs).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STUDY_RUNS, STUDY_INPUTS = 256, 300_000


def kaec(*args, env=None) -> tuple[float, list[dict]]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "kaecompress.cli.main", *map(str, args), "--json"],
                       capture_output=True, text=True, env={**os.environ, "KAEC_OFFLINE": "1", **(env or {})})
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"kaec {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    return wall, json.loads(r.stdout)


def grid(path: Path, inputs: int, runs: int | None = None) -> Path:
    raw = yaml.safe_load((ROOT / "experiments" / "small-grid.yml").read_text())
    raw["train"]["max_inputs"] = inputs
    raw["train"]["checkpoint_every_s"] = 30
    if runs is not None:  # short runs: trials 1..N of one model
        raw["matrix"] = {"trial": list(range(1, runs + 1))}
        raw["model"]["decoder_kae_order"] = 3
        raw["model"]["output_activation"] = "sigmoid"
        raw["train"]["log_every"] = 320
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


class RayHead:
    """A local Ray cluster in its own session (stopped by killing that session's processes)."""

    def __init__(self, cpus: int) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        t0 = time.perf_counter()
        p = subprocess.Popen(["ray", "start", "--head", "--port", str(self.port), "--num-cpus", str(cpus),
                              "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
                              "--disable-usage-stats"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        self.sid = p.pid
        out, _ = p.communicate()
        if p.returncode:
            sys.exit(f"ray start failed:\n{out[-2000:]}")
        self.start_s = time.perf_counter() - t0
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat = (d / "stat").read_text()
                    if int(stat[stat.rindex(")") + 2:].split()[3]) == self.sid:
                        os.kill(int(d.name), signal.SIGKILL)
                except (OSError, ValueError):
                    pass


def first_start(runs_dir: Path, t_launch: float) -> tuple[float, list[float]]:
    """Seconds from launching the command to the first run's training start, and the sorted starts."""
    starts = sorted(json.loads(line)["started_at"] for f in runs_dir.rglob("attempts.jsonl")
                    for line in f.read_text().splitlines())
    return starts[0] - t_launch, [s - t_launch for s in starts]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=20_000, help="inputs per run of the throughput grid")
    ap.add_argument("--short-runs", type=int, default=8, help="runs of 640 inputs for Ray's overhead")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sweep-scale-"))
    cfg = grid(tmp / "grid.yml", args.inputs)
    only = ("--only", "trial:1*")
    print(f"load average at start: {os.getloadavg()}, cores: {len(os.sched_getaffinity(0))}")

    arms: dict[str, tuple[float, list[dict]]] = {}
    arms["one process, 2 threads"] = kaec("train", "-c", cfg, *only, "--runs-dir", tmp / "a", "--threads", 2)
    arms["one process, 1 thread"] = kaec("train", "-c", cfg, *only, "--runs-dir", tmp / "b", "--threads", 1)
    arms["two workers, 1 thread each"] = kaec("train", "-c", cfg, *only, "--runs-dir", tmp / "c", "--workers", 2)
    head = None
    try:
        if not args.skip_ray:
            head = RayHead(2)
            print(f"ray start --head: {head.start_s:.1f} s (once per cluster, not counted below)")
            arms["Ray, 2 one-CPU tasks"] = kaec("train", "-c", cfg, *only, "--runs-dir", tmp / "d", "--ray",
                                                head.address)
        base = arms["one process, 2 threads"][0]
        print(f"\n4 runs of {args.inputs:,} inputs (ks 7, channels [32], latent 16; decoder KAE 0/3, "
              "output none/sigmoid):")
        print(f"{'arm':<28} {'wall s':>8} {'runs/hour':>10} {'vs 1 proc 2 thr':>16} {'mean samples/s/run':>19}")
        for name, (wall, summaries) in arms.items():
            tp = sum(s["throughput"] for s in summaries) / len(summaries)
            print(f"{name:<28} {wall:8.1f} {4 * 3600 / wall:10.0f} {base / wall:15.2f}x {tp:19,.0f}")
        ref = [s["final_val_loss"] for s in arms["one process, 1 thread"][1]]
        spread = max(abs(a - b) / b for _, summaries in arms.values()
                     for a, b in zip((s["final_val_loss"] for s in summaries), ref))
        print(f"validation losses across arms: largest relative difference {spread:.1e} (threads change the "
              "reduction order)")

        per_run = {t: sum(s["train_time_s"] for s in arms[name][1]) / 4 / args.inputs
                   for t, name in ((1, "one process, 1 thread"), (2, "one process, 2 threads"))}
        for t, c in per_run.items():
            print(f"per-run training cost at {t} thread(s): {c * 1e6:.1f} us/input "
                  f"= {c * STUDY_INPUTS / 60:.1f} min per study run of {STUDY_INPUTS:,} inputs")

        if not args.skip_ray:
            short = grid(tmp / "short.yml", 640, args.short_runs)
            t_launch = time.time()
            w_wall, _ = kaec("train", "-c", short, "--runs-dir", tmp / "sw", "--workers", 2)
            w_first, w_starts = first_start(tmp / "sw", t_launch)
            t_launch = time.time()
            r_wall, _ = kaec("train", "-c", short, "--runs-dir", tmp / "sr", "--ray", head.address)
            r_first, r_starts = first_start(tmp / "sr", t_launch)
            n = args.short_runs
            print(f"\nRay's overhead, {n} runs of 640 inputs: --workers 2 {w_wall:.1f} s, --ray {r_wall:.1f} s: "
                  f"{(r_wall - w_wall) / n:+.2f} s per run")
            print(f"  to the first run's start: workers {w_first:.1f} s, ray {r_first:.1f} s "
                  "(start-up: imports, connecting, worker processes importing torch and loading MNIST)")
            gap = lambda s: (s[-1] - s[0]) / max(1, len(s) - 2)  # noqa: E731  (2 runs start together)
            print(f"  then, between run starts: workers {gap(w_starts):.2f} s, ray {gap(r_starts):.2f} s "
                  "(scheduling, the task's lock and data check, and each run's own training)")

        c1 = per_run[1] * STUDY_INPUTS  # seconds per study run at 1 thread
        hours = lambda cores: STUDY_RUNS * c1 / cores / 3600  # noqa: E731
        print(f"\nModel of the 256-run study ({STUDY_INPUTS:,} inputs each) from the 1-thread cost "
              f"({c1 / 60:.1f} min/run), one run per core, perfect scaling (extrapolated, not measured):")
        for cores in (1, 2, 16, 64):
            print(f"  {cores:>3} cores: {hours(cores):6.2f} h")
        nodes = next(n for n in range(1, 1000) if hours(16 * n) <= 1)
        print(f"  under an hour: {nodes} nodes of 16 cores ({16 * nodes} one-thread runs at once)")
    finally:
        if head:
            head.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"load average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
