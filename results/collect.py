"""Copy the study's finished runs into this folder, where docs/gen.py and `kaec results` read them.

    python results/collect.py RUNS_DIR [DEST]     (DEST: this folder unless given)

For every run of experiments/cnn-kae-01.yml and experiments/cnn-kae-02.yml that is finished (or diverged)
in RUNS_DIR (the --runs-dir it was trained in) with the settings the experiment file gives it now, its
summary.json and config.yml are copied to DEST/EXPERIMENT/SLUG/, replacing an earlier copy. Checkpoints and metrics stay
behind; unfinished, failed or stale runs get nothing written; a symbolic link anywhere below RUNS_DIR is
never followed (that run is skipped and named). Then, in a fresh clone:

    kaec results --config experiments/cnn-kae-01.yml --runs-dir results ...
"""

from __future__ import annotations

import sys
from pathlib import Path

from kaecompress.errors import KaecError
from kaecompress.experiments import runs
from kaecompress.experiments.config import load_experiment
from kaecompress.fileio import atomic_write_bytes, parse_json, read_regular

HERE = Path(__file__).resolve().parent
EXPERIMENTS = [HERE.parent / "experiments" / "cnn-kae-01.yml", HERE.parent / "experiments" / "cnn-kae-02.yml"]
KEPT = (runs.SUMMARY, runs.CONFIG)
MAX_FILE_BYTES = 1 << 20  # a summary or config is a page of text


def finished_files(runs_dir: Path, cfg) -> dict[str, bytes] | None:
    """The run's summary and config bytes when it is finished (or diverged) with cfg's recipe, else None."""
    source = runs_dir / cfg.run_folder
    files = {}
    for name in KEPT:
        runs.check_inside(runs_dir, source / name)  # KaecError on a link in the run's path
        if not (source / name).exists():
            return None
        files[name] = read_regular(source / name, MAX_FILE_BYTES, f"a run's {name}", follow=False)
    summary = parse_json(files[runs.SUMMARY], str(source / runs.SUMMARY), "a run summary")
    if not isinstance(summary, dict) or summary.get("status") not in ("finished", "diverged"):
        return None
    if runs.changed_settings(summary, cfg.recipe()):
        raise KaecError(f"{source}: trained with other settings than {cfg.source} gives it now; not copied")
    return files


def collect(runs_dir: Path, dest: Path = HERE, experiments: list[Path] = EXPERIMENTS) -> dict[str, int]:
    counts = {"copied": 0, "unchanged": 0, "unfinished": 0, "skipped": 0}
    for path in experiments:
        for cfg in load_experiment(path).runs:
            try:
                files = finished_files(runs_dir, cfg)
            except KaecError as e:
                print(f"skipped: {e}", file=sys.stderr)
                counts["skipped"] += 1
                continue
            if files is None:
                counts["unfinished"] += 1
                continue
            target = dest / cfg.run_folder
            runs.check_inside(dest, target)  # nothing is written through a link in this folder either
            target.mkdir(parents=True, exist_ok=True)
            same = all((target / n).is_file() and (target / n).read_bytes() == data for n, data in files.items())
            if not same:
                for name, data in files.items():
                    atomic_write_bytes(runs.check_inside(dest, target / name), data)
            counts["unchanged" if same else "copied"] += 1
    return counts


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print("usage: python results/collect.py RUNS_DIR [DEST]", file=sys.stderr)
        return 2
    if not Path(argv[0]).is_dir():
        print(f"{argv[0]}: not a folder (expected the --runs-dir the study was trained in)", file=sys.stderr)
        return 2
    counts = collect(Path(argv[0]), Path(argv[1]) if len(argv) == 2 else HERE)
    print(", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
