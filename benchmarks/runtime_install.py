"""The runtime install (`pip install "kaecompress[cpu]"`: numpy and onnxruntime, no torch) against the
training install (this environment), in one run:

- a fresh runtime venv (`--without-pip`) built from the working tree's files, and its size on disk;
- `kaec encode examples/mnist-7.png -o z.kae` and `kaec decode z.kae -o z.png`, start to exit: wall time and
  peak RSS, medians of --runs, runtime venv against this install (its default backend, torch);
- the 10,000 MNIST test digits as PNGs in one `kaec encode` call: runtime venv against this install's
  `--backend onnx` (and whether the two write the same bytes);
- how fast the runtime refuses a truncated .kae and a bad option.

Budgets (PASS/FAIL): venv <= 300 MB; encode and decode <= 0.6 s and <= 150 MB each, and >= 8x faster than
the training install's; 10k throughput >= the training install's --backend onnx, with the same bytes;
refusals <= 1 s.

    python benchmarks/runtime_install.py [--runs 7] [--batch-runs 3] [--json-file docs/results/runtime_install.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIGIT = ROOT / "examples" / "mnist-7.png"
MB = 1e6

# Runs one command and prints [exit code, wall seconds, peak RSS in MB] of that process alone. A small
# process of its own starts it: a child forked from this one could count this one's memory as its peak.
LAUNCHER = """
import json, os, subprocess, sys, time
start = time.monotonic()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=open(os.environ["LAUNCH_STDERR"], "w"))
_, status, usage = os.wait4(child.pid, 0)
print(json.dumps([os.waitstatus_to_exitcode(status), time.monotonic() - start, usage.ru_maxrss / 1024]))
"""


def run(cmd: list, cwd: Path, expect: int = 0) -> dict:
    """One command, start to exit: {"wall_s", "rss_mb"}; it must exit with `expect`."""
    err = cwd / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "KAEC_TRAINED"}
    env["LAUNCH_STDERR"] = str(err)
    p = subprocess.run([sys.executable, "-c", LAUNCHER, *map(str, cmd)], cwd=cwd, env=env, capture_output=True,
                       text=True, check=True)
    code, wall, rss = json.loads(p.stdout)
    if code != expect:
        sys.exit(f"{' '.join(map(str, cmd))}: exit {code}, expected {expect}\n{err.read_text()[-2000:]}")
    return {"wall_s": wall, "rss_mb": rss}


def medians(samples: list[dict]) -> dict:
    return {"wall_s": statistics.median(s["wall_s"] for s in samples),
            "rss_mb": statistics.median(s["rss_mb"] for s in samples),
            "runs_wall_s": [round(s["wall_s"], 4) for s in samples]}


def working_tree(dest: Path) -> Path:
    """The files of the working tree that git tracks or would track (no build/, runs/, caches), copied, so
    that pip's in-tree build neither writes into the checkout nor packs a stale build/ folder."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # tracked files deleted in the working tree are left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def build_venv(tmp: Path) -> tuple[Path, float]:
    start = time.monotonic()
    source = working_tree(tmp / "source")
    venv = tmp / "runtime-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q",
                    "--disable-pip-version-check", f"{source}[cpu]"], check=True)
    shutil.rmtree(source)
    return venv, time.monotonic() - start


def du_bytes(path: Path) -> int:
    return int(subprocess.run(["du", "-sb", path], capture_output=True, text=True, check=True).stdout.split()[0])


def installed(python: Path) -> list[str]:
    """The distributions in `python`'s environment (run from its own folder: `-c` puts the working
    directory on sys.path, and the checkout's kaecompress.egg-info would count as one more)."""
    code = ("import importlib.metadata as m; "
            "print('\\n'.join(sorted(f'{d.name}=={d.version}' for d in m.distributions())))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True, check=True,
                          cwd=python.parents[1]).stdout.split()


def write_digits(folder: Path) -> int:
    """The MNIST test split as PNG files (read in this, the training install)."""
    import numpy as np
    from PIL import Image

    from kaecompress.experiments.data import load_images

    images = (load_images("mnist", False, None, (1, 28, 28)).numpy()[:, 0] * 255).round().astype(np.uint8)
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image, "L").save(folder / f"{i:05d}.png")
    return len(images)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7, help="Runs of each small command (after one warm-up).")
    ap.add_argument("--batch-runs", type=int, default=3, help="Runs of each 10k encode.")
    ap.add_argument("--json-file", type=Path, default=ROOT / "docs" / "results" / "runtime_install.json")
    args = ap.parse_args()
    load_start = os.getloadavg()
    training_kaec = Path(sys.executable).parent / "kaec"
    if not training_kaec.is_file():
        sys.exit(f"{training_kaec}: no kaec script beside this Python; run this in the training install")
    with tempfile.TemporaryDirectory(prefix="runtime-install-") as tmp:
        tmp = Path(tmp)
        print("building the runtime venv ...", flush=True)
        venv, build_s = build_venv(tmp)
        venv_bytes = du_bytes(venv)
        runtime_kaec = venv / "bin" / "kaec"
        packages = installed(venv / "bin" / "python")
        kaec = {"runtime": [runtime_kaec], "training": [training_kaec]}
        work = {name: tmp / name for name in kaec}
        for folder in work.values():
            folder.mkdir()

        # encode and decode of one digit; the two installs take turns, so that a change of load hits both
        commands = {"encode": ["encode", DIGIT, "-o", "z.kae"], "decode": ["decode", "z.kae", "-o", "z.png"]}
        small = {(cmd, env): [] for cmd in commands for env in kaec}
        for i in range(args.runs + 1):
            for env, exe in kaec.items():
                for cmd, argv in commands.items():
                    sample = run([*exe, *argv], work[env])
                    if i:  # the first is a warm-up: files into the page cache
                        small[cmd, env].append(sample)
        same_file = (work["runtime"] / "z.kae").read_bytes() == (work["training"] / "z.kae").read_bytes()

        print("writing the 10,000 MNIST test digits ...", flush=True)
        digits = tmp / "digits"
        count = write_digits(digits)
        batch = {"runtime": [], "training_onnx": []}
        for _ in range(args.batch_runs):
            for env, extra in (("runtime", []), ("training_onnx", ["--backend", "onnx"])):
                out = tmp / f"out-{env}"
                shutil.rmtree(out, ignore_errors=True)
                exe = kaec["runtime" if env == "runtime" else "training"]
                batch[env].append(run([*exe, "encode", digits, "-o", out, *extra], tmp))
        outputs = sorted(p.name for p in (tmp / "out-runtime").iterdir())
        batch_same = len(outputs) == count and all(
            (tmp / "out-runtime" / n).read_bytes() == (tmp / "out-training_onnx" / n).read_bytes() for n in outputs)

        good = (work["runtime"] / "z.kae").read_bytes()
        (work["runtime"] / "truncated.kae").write_bytes(good[:-1])
        refusals = {"truncated_kae": ["decode", "truncated.kae", "-o", "t.png"],
                    "bad_option": ["encode", DIGIT, "-o", "t.kae", "--fit", "sideways"]}
        refused = {name: medians([run([runtime_kaec, *argv], work["runtime"], expect=2) for _ in range(args.runs)])
                   for name, argv in refusals.items()}

    result = {"machine": {"load_average_start": [round(v, 2) for v in load_start], "cpus": os.cpu_count(),
                          "platform": platform.platform(), "python": platform.python_version()},
              "venv": {"bytes": venv_bytes, "mb": round(venv_bytes / MB, 1), "mib": round(venv_bytes / 2**20, 1),
                       "build_s": round(build_s, 1), "packages": packages},
              "commands": {}, "batch_10k": {}, "refusals": {}, "budgets": []}
    for cmd in ("encode", "decode"):
        r, t = medians(small[cmd, "runtime"]), medians(small[cmd, "training"])
        result["commands"][cmd] = {"runtime": r, "training_torch": t, "speedup": t["wall_s"] / r["wall_s"]}
    result["commands"]["same_kae_bytes"] = same_file  # runtime against torch, one digit
    for env, samples in batch.items():
        m = medians(samples)
        result["batch_10k"][env] = {**m, "images_per_s": count / m["wall_s"]}
    result["batch_10k"].update(images=count, same_bytes=batch_same)
    result["refusals"] = refused
    result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]

    budgets = [("venv size (MB)", result["venv"]["mb"], "<=", 300)]
    for cmd in ("encode", "decode"):
        c = result["commands"][cmd]
        budgets += [(f"{cmd} wall (s)", c["runtime"]["wall_s"], "<=", 0.6),
                    (f"{cmd} peak RSS (MB)", c["runtime"]["rss_mb"], "<=", 150),
                    (f"{cmd} speedup over training (x)", c["speedup"], ">=", 8)]
    b = result["batch_10k"]
    budgets += [("10k encode (images/s, >= training onnx)", b["runtime"]["images_per_s"], ">=",
                 b["training_onnx"]["images_per_s"])]
    budgets += [("10k .kae files identical to training --backend onnx", b["same_bytes"], "==", True)]
    budgets += [(f"refuse {name} (s)", r["wall_s"], "<=", 1.0) for name, r in refused.items()]
    for name, value, op, limit in budgets:
        ok = {"<=": value <= limit, ">=": value >= limit, "==": value == limit}[op]
        value, limit = (x if isinstance(x, bool) else round(x, 3) for x in (value, limit))
        result["budgets"].append({"name": name, "value": value, "op": op, "limit": limit, "pass": ok})
    report(result)
    args.json_file.parent.mkdir(parents=True, exist_ok=True)
    args.json_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_file}")


def report(r: dict) -> None:
    m = r["machine"]
    print(f"\n{m['platform']}, {m['cpus']} cores, load average at start {m['load_average_start'][0]}"
          f" (end {m['load_average_end'][0]})")
    print(f"runtime venv: {r['venv']['mb']} MB ({r['venv']['mib']} MiB), built in {r['venv']['build_s']} s")
    rows = [("", "runtime venv", "training install", "ratio")]
    for cmd in ("encode", "decode"):
        c = r["commands"][cmd]
        rows.append((f"{cmd} wall s", f"{c['runtime']['wall_s']:.3f}", f"{c['training_torch']['wall_s']:.3f} (torch)",
                     f"{c['speedup']:.1f}x"))
        rows.append((f"{cmd} peak RSS MB", f"{c['runtime']['rss_mb']:.0f}", f"{c['training_torch']['rss_mb']:.0f}",
                     f"{c['training_torch']['rss_mb'] / c['runtime']['rss_mb']:.1f}x"))
    b = r["batch_10k"]
    rows.append((f"{b['images']:,} digits images/s", f"{b['runtime']['images_per_s']:,.0f}",
                 f"{b['training_onnx']['images_per_s']:,.0f} (onnx)",
                 f"{b['runtime']['images_per_s'] / b['training_onnx']['images_per_s']:.2f}x"))
    rows.append((f"{b['images']:,} digits wall s", f"{b['runtime']['wall_s']:.2f}",
                 f"{b['training_onnx']['wall_s']:.2f}", "same bytes" if b["same_bytes"] else "BYTES DIFFER"))
    for name, x in r["refusals"].items():
        rows.append((f"refuse {name} s", f"{x['wall_s']:.3f}", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    print()
    for bgt in r["budgets"]:
        print(f"{'PASS' if bgt['pass'] else 'FAIL'}  {bgt['name']}: {bgt['value']} {bgt['op']} {bgt['limit']}")


if __name__ == "__main__":
    main()
