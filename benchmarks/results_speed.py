"""`kaec results` over 1,000 finished runs must answer in under 2 s (issue 3).

One real run of a tiny model is trained on MNIST, then its folder is copied under the 1,000 slugs of a
10 x 10 x 10 matrix experiment. The study's full command (aggregate over trial with stats, sort) is timed
end to end as a subprocess, next to the CLI's bare start-up (`kaec --version`) measured in the same run.

    python benchmarks/results_speed.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = """experiment_name: results-bench
matrix:
  trial: [{values}]
  a: [{values}]
  b: [{values}]
data: {{dataset: mnist}}
model: {{latent_dim: 8, channels: [4], kernel_size: 7, decoder_kae_order: 2}}
train: {{batch_size: 32, optimizer: Adam, lr: 1.0e-3, max_inputs: 320}}
"""


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "kaecompress.cli.main", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    from kaecompress.experiments import runs
    from kaecompress.experiments.config import load_experiment
    from kaecompress.experiments.sweep import run_dir
    from kaecompress.experiments.train import train_run

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = tmp / "grid.yml"
        cfg.write_text(GRID.format(values=", ".join(str(i) for i in range(1, 11))))
        exp = load_experiment(cfg)
        root = tmp / "runs"
        source = run_dir(root, exp.runs[0])
        train_run(exp.runs[0], source)
        summary = runs.read_json(source / runs.SUMMARY)
        for r in exp.runs[1:]:
            target = run_dir(root, r)
            shutil.copytree(source, target)
            runs.atomic_write_json(target / runs.SUMMARY, {**summary, "matrix_id": r.matrix_id, "recipe": r.recipe(),
                                                          "matrix_slug": r.matrix_slug, "matrix": r.matrix})
        from kaecompress.experiments.results import results_table

        statuses = {row["status"] for row in results_table(exp, root).rows}
        assert statuses == {"finished"}, f"the copied runs must all read as finished, got {statuses}"
        loss = "validation loss (320 steps)"  # the study's name for the loss column, read as ours (inputs)
        command = ["results", "--config", str(cfg), "--runs-dir", str(root), "-ec", "matrix_id", "matrix_slug",
                   "compression-ratio", "-sc", f"{loss}-", "-ac", "trial", "-acs", loss]
        results = [timed(command) for _ in range(args.repeat)]
        startup = [timed(["--version"]) for _ in range(args.repeat)]
    med, base = statistics.median(results), statistics.median(startup)
    print(f"{len(exp.runs)} finished runs")
    print(f"  kaec results (study command)  {med:.2f} s   (runs: {', '.join(f'{t:.2f}' for t in results)})")
    print(f"  kaec --version (start-up)     {base:.2f} s")
    print(f"  results / start-up            {med / base:.1f}x")
    ok = med < 2.0
    print(f"  goal: under 2 s               {'PASS' if ok else 'FAIL'}")
    print(json.dumps({"runs": len(exp.runs), "results_s": med, "startup_s": base}))
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
