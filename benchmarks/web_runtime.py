"""The JavaScript runtime against the Python one, on the same files in the same run, for mnist-q2:

- Python: kaecompress's Codec on onnxruntime (`--backend onnx`, as `kaec` runs it), with its default threads
  and with one thread;
- Node: web/kae.mjs from a `kaec export --format web` folder (onnxruntime-web's wasm build, one thread);
- Chromium: the same kae.mjs in the export's page, headless, driven through selenium, served from 127.0.0.1.

On --batch MNIST test digits (the first of the split) and their .kae files (Python's): decode and encode one
digit at a time (latency after load: median of --runs calls) and all at once (decodeMany / encodeMany;
images/s, best of --batch-runs); the page's start-up (navigation to ready: wasm, model files, sessions; no
HTTP cache) and the bytes it transfers (the server's log, and gzip -9 of the same files); whether the JS
runtimes wrote the bytes Python writes and decoded within one level of its pixels.

Goals (PASS/FAIL): a digit decoded in the page in < 5 ms once it has loaded; batch throughput (decode and
encode, Node and Chromium) >= 0.5x Python's (default threads).

    python benchmarks/web_runtime.py [--batch 1000] [--runs 100] [--json-file docs/results/web_runtime.json]
"""

from __future__ import annotations

import argparse
import base64
import gzip
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "mnist-q2"
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
GOAL_DECODE_MS = 5.0
GOAL_BATCH_RATIO = 0.5

# The measurement, the same in Node and in the page: `kae` is kae.mjs's open() result, `digits` N x 784
# bytes, `files` their .kae files. Returns times in ms and what was written, for the checks.
BENCH_JS = """
async function bench(kae, digits, files, runs, batchRuns) {
  const n = files.length;
  const image = (i) => digits.subarray(i * 784, (i + 1) * 784);
  const now = () => performance.now();
  const toB64 = (u8) => { let s = ''; for (let i = 0; i < u8.length; i += 0x8000)
    s += String.fromCharCode(...u8.subarray(i, i + 0x8000)); return btoa(s); };
  for (let i = 0; i < 5; i++) {  // warm-up: the first runs of each network allocate and compile
    await kae.decode(files[i % n]);
    await kae.encode(image(i % n), 28, 28, 'L');
  }
  const decodeMs = [], encodeMs = [], batchDecodeMs = [], batchEncodeMs = [];
  for (let i = 0; i < runs; i++) {
    const t = now(); await kae.decode(files[i % n]); decodeMs.push(now() - t);
  }
  for (let i = 0; i < runs; i++) {
    const t = now(); await kae.encode(image(i % n), 28, 28, 'L'); encodeMs.push(now() - t);
  }
  const inputs = Array.from({length: n}, (_, i) => ({pixels: image(i), width: 28, height: 28, mode: 'L'}));
  let decoded, encoded;
  for (let r = 0; r < batchRuns; r++) {
    let t = now(); decoded = await kae.decodeMany(files); batchDecodeMs.push(now() - t);
    t = now(); encoded = await kae.encodeMany(inputs); batchEncodeMs.push(now() - t);
  }
  const pixels = new Uint8Array(n * 784);
  decoded.forEach((d, i) => pixels.set(d.pixels, i * 784));
  return {decodeMs, encodeMs, batchDecodeMs, batchEncodeMs, encoded: encoded.map(toB64), pixels: toB64(pixels)};
}
"""

NODE_MAIN = BENCH_JS + """
import { readFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
const [dir, digitsPath, filesPath, runs, batchRuns] = process.argv.slice(2);
const t0 = performance.now();
const { open } = await import(pathToFileURL(`${dir}/kae.mjs`).href);
const kae = await open(dir);
const openMs = performance.now() - t0;
const blob = readFileSync(filesPath);
const files = [];
for (let at = 0; at < blob.length;) {  // length-prefixed (uint16 little-endian) .kae files
  const size = blob.readUInt16LE(at);
  files.push(new Uint8Array(blob.subarray(at + 2, at + 2 + size)));
  at += 2 + size;
}
const digits = new Uint8Array(readFileSync(digitsPath));
const result = await bench(kae, digits, files, Number(runs), Number(batchRuns));
console.log(JSON.stringify({openMs, ...result}));
"""

PAGE_MAIN = """
const [digits64, files64, runs, batchRuns] = arguments;
const done = arguments[arguments.length - 1];
const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
""" + BENCH_JS + """
bench(kaePage.kae, fromB64(digits64), files64.map(fromB64), runs, batchRuns)
  .then(done, (e) => done({fatal: String(e && e.stack || e)}));
"""


def python_runtime(codec, digits: np.ndarray, files: list[bytes], runs: int, batch_runs: int) -> dict:
    """The same measurement as BENCH_JS, in the Python library."""
    from PIL import Image

    images = [Image.fromarray(d, "L") for d in digits]
    names = [f"{i}.kae" for i in range(len(files))]
    n = len(files)
    for i in range(5):
        codec.decompress(codec.from_kae(files[i % n], names[i % n]))
        codec.to_kae(codec.compress(images[i % n]))
    decode_ms, encode_ms, batch_decode, batch_encode = [], [], [], []
    for i in range(runs):
        t = time.perf_counter()
        codec.decompress(codec.from_kae(files[i % n], names[i % n]))
        decode_ms.append(1e3 * (time.perf_counter() - t))
    for i in range(runs):
        t = time.perf_counter()
        codec.to_kae(codec.compress(images[i % n]))
        encode_ms.append(1e3 * (time.perf_counter() - t))
    for _ in range(batch_runs):
        t = time.perf_counter()
        decoded = codec.decompress_many(codec.from_kae_many(files, names))
        batch_decode.append(1e3 * (time.perf_counter() - t))
        t = time.perf_counter()
        encoded = codec.to_kae_many(codec.compress_many(images))
        batch_encode.append(1e3 * (time.perf_counter() - t))
    return {"same_kae_bytes": sum(a == b for a, b in zip(encoded, files)), "decodeMs": decode_ms, "encodeMs": encode_ms, "batchDecodeMs": batch_decode,
            "batchEncodeMs": batch_encode, "pixels": np.stack([np.asarray(im) for im in decoded])}


def summary(raw: dict, n: int) -> dict:
    return {"decode_one_ms": statistics.median(raw["decodeMs"]), "encode_one_ms": statistics.median(raw["encodeMs"]),
            "decode_one_p90_ms": float(np.percentile(raw["decodeMs"], 90)),
            "encode_one_p90_ms": float(np.percentile(raw["encodeMs"], 90)),
            "decode_batch_images_per_s": n / (min(raw["batchDecodeMs"]) / 1e3),
            "encode_batch_images_per_s": n / (min(raw["batchEncodeMs"]) / 1e3),
            "batch_decode_ms": [round(v, 1) for v in raw["batchDecodeMs"]],
            "batch_encode_ms": [round(v, 1) for v in raw["batchEncodeMs"]]}


def agreement(raw: dict, files: list[bytes], pixels: np.ndarray) -> dict:
    """How the JS runtime's files and pixels compare with Python's."""
    encoded = [base64.b64decode(s) for s in raw["encoded"]]
    decoded = np.frombuffer(base64.b64decode(raw["pixels"]), np.uint8).reshape(pixels.shape)
    diff = np.abs(decoded.astype(np.int16) - pixels.astype(np.int16))
    return {"same_kae_bytes": sum(a == b for a, b in zip(encoded, files)), "files": len(files),
            "max_pixel_diff": int(diff.max()), "pixels_differing": int((diff > 0).sum())}


def chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(600)
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    return driver


def load_page(driver, url: str) -> float:
    """Navigate and wait for data-state="ready": the page's own start-up time (ms since navigation)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "index.html")
    state = WebDriverWait(driver, 120, poll_frequency=0.02).until(
        lambda d: d.execute_script("const s = document.body && document.body.dataset.state;"
                                   "return s && s !== 'loading' ? s : null;"))
    if state != "ready":
        sys.exit(f"the page did not start: {driver.find_element('id', 'error').text}")
    return driver.execute_script("return kaePage.readyMs")


def browser_run(export: Path, digits: np.ndarray, files: list[bytes], args) -> dict:
    from kaecompress.exporters.web import serve

    log: list = []
    with serve(export, log) as url:
        driver = chromium()
        try:
            return page_run(driver, url, log, export, digits, files, args)
        finally:
            driver.quit()


def page_run(driver, url: str, log: list, export: Path, digits: np.ndarray, files: list[bytes], args) -> dict:
    """Page loads timed (the first one's requests kept), then BENCH_JS in the page."""
    startups, transfers = [], None
    for _ in range(args.startup_runs):
        log.clear()
        startups.append(load_page(driver, url))
        transfers = transfers or list(log)
    fetched = {}
    for path, code, size in transfers:
        rel = path.split("?")[0].lstrip("/")
        data = (export / rel).read_bytes() if code == 200 else b""
        fetched[rel] = {"status": code, "bytes": size, "gzip_bytes": len(gzip.compress(data, 9)) if data else 0}
    raw = driver.execute_async_script(PAGE_MAIN, base64.b64encode(digits.tobytes()).decode(),
                                      [base64.b64encode(f).decode() for f in files], args.runs, args.batch_runs)
    if "fatal" in raw:
        sys.exit(f"the page's benchmark failed: {raw['fatal']}")
    version = driver.capabilities.get("browserVersion")
    return {"raw": raw, "startup_ms": startups, "fetched": fetched, "version": version}


def node_run(export: Path, digits: np.ndarray, files: list[bytes], tmp: Path, args) -> dict:
    script = tmp / "bench.mjs"
    script.write_text(NODE_MAIN)
    (tmp / "digits.bin").write_bytes(digits.tobytes())
    (tmp / "files.bin").write_bytes(b"".join(len(f).to_bytes(2, "little") + f for f in files))
    start = time.monotonic()
    p = subprocess.run(["node", script, export, tmp / "digits.bin", tmp / "files.bin", str(args.runs),
                        str(args.batch_runs)], capture_output=True, text=True, check=False)
    if p.returncode != 0:
        sys.exit(f"node failed ({p.returncode}):\n{p.stderr[-3000:]}")
    raw = json.loads(p.stdout.strip().splitlines()[-1])
    raw["wall_s"] = time.monotonic() - start
    return raw


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=1000, help="Digits in the batches (the first of the test split).")
    ap.add_argument("--runs", type=int, default=100, help="Single-digit calls timed (median reported).")
    ap.add_argument("--batch-runs", type=int, default=5, help="Batches timed (best reported).")
    ap.add_argument("--startup-runs", type=int, default=5, help="Page loads timed (median reported).")
    ap.add_argument("--json-file", type=Path, default=ROOT / "docs" / "results" / "web_runtime.json")
    args = ap.parse_args()
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            sys.exit(f"{path} is missing: apt-get install chromium chromium-driver")
    if shutil.which("node") is None:
        sys.exit("node is not installed (Node 20)")
    from kaecompress.exporters.web import write_web_export
    from PIL import Image

    from kaecompress.api import open_model
    from kaecompress.codec.images import Codec
    from kaecompress.experiments.data import load_array
    from kaecompress.runtime.sessions import default_threads

    load_start = os.getloadavg()
    digits = np.ascontiguousarray(load_array("mnist", False)[:args.batch, 0])
    t = time.perf_counter()
    loaded = open_model(MODEL, "onnx")
    python_default = Codec(loaded, "onnx")
    python_open_ms = 1e3 * (time.perf_counter() - t)
    python_one = Codec(loaded, loaded.backend("onnx", "cpu", threads=1))
    files = python_default.to_kae_many(python_default.compress_many([Image.fromarray(d, "L") for d in digits]))
    threads = default_threads()
    with tempfile.TemporaryDirectory(prefix="web-runtime-") as tmp:
        tmp = Path(tmp)
        export = tmp / "export"
        write_web_export([MODEL], export)
        print(f"Python, onnxruntime ({threads} thread{'s' if threads > 1 else ''}, its default here) ...", flush=True)
        py = python_runtime(python_default, digits, files, args.runs, args.batch_runs)
        print("Python, onnxruntime (1 thread) ...", flush=True)
        py1 = python_runtime(python_one, digits, files, args.runs, args.batch_runs)
        print("Node, kae.mjs ...", flush=True)
        node = node_run(export, digits, files, tmp, args)
        print("Chromium, the page ...", flush=True)
        browser = browser_run(export, digits, files, args)
    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True, check=True).stdout.strip()
    import onnxruntime

    n = len(files)
    result = {
        "model": MODEL, "batch": n, "runs": args.runs, "batch_runs": args.batch_runs,
        "machine": {"load_average_start": [round(v, 2) for v in load_start], "cpus": os.cpu_count(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "onnxruntime": onnxruntime.__version__, "node": node_version,
                    "chromium": browser["version"], "onnxruntime_web": json.loads(
                        (ROOT / "web" / "package-lock.json").read_text())["packages"][
                        "node_modules/onnxruntime-web"]["version"]},
        "runtimes": {
            "python_onnxruntime": {**summary(py, n), "threads": threads, "open_ms": python_open_ms},
            "python_onnxruntime_1_thread": {**summary(py1, n), "threads": 1,
                                            "same_kae_bytes": py1["same_kae_bytes"]},
            "node_kae_mjs": {**summary(node, n), "threads": 1, "open_ms": node["openMs"],
                             "agreement": agreement(node, files, py["pixels"])},
            "chromium_page": {**summary(browser["raw"], n), "threads": 1,
                              "agreement": agreement(browser["raw"], files, py["pixels"])},
        },
        "page": {"startup_ms_median": statistics.median(browser["startup_ms"]),
                 "startup_ms": [round(v, 1) for v in browser["startup_ms"]],
                 "files": browser["fetched"], "requests": len(browser["fetched"]),
                 "bytes": sum(f["bytes"] for f in browser["fetched"].values()),
                 "gzip_bytes": sum(f["gzip_bytes"] for f in browser["fetched"].values())},
        "goals": [],
    }
    result["machine"]["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    base = result["runtimes"]["python_onnxruntime"]
    for name in ("node_kae_mjs", "chromium_page"):
        r = result["runtimes"][name]
        for op in ("decode", "encode"):
            r[f"{op}_batch_ratio_vs_python"] = r[f"{op}_batch_images_per_s"] / base[f"{op}_batch_images_per_s"]
    goals = [("Chromium: one digit decoded after load (median ms)",
              result["runtimes"]["chromium_page"]["decode_one_ms"], "<", GOAL_DECODE_MS)]
    for name in ("node_kae_mjs", "chromium_page"):
        for op in ("decode", "encode"):
            goals.append((f"{name}: {op} batch throughput / Python's",
                          result["runtimes"][name][f"{op}_batch_ratio_vs_python"], ">=", GOAL_BATCH_RATIO))
    for name, value, op, limit in goals:
        ok = value < limit if op == "<" else value >= limit
        result["goals"].append({"name": name, "value": round(value, 3), "op": op, "limit": limit, "pass": ok})
    report(result)
    args.json_file.parent.mkdir(parents=True, exist_ok=True)
    args.json_file.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json_file}")


def report(r: dict) -> None:
    m = r["machine"]
    print(f"\n{m['platform']}, {m['cpus']} cores, load average at start {m['load_average_start'][0]} "
          f"(end {m['load_average_end'][0]}); onnxruntime {m['onnxruntime']}, node {m['node']}, "
          f"chromium {m['chromium']}, onnxruntime-web {m['onnxruntime_web']}")
    rows = [("runtime", "decode 1 ms", "encode 1 ms", f"decode {r['batch']:,}/s", f"encode {r['batch']:,}/s",
             "vs Python", "same .kae", "max px diff")]
    for name, x in r["runtimes"].items():
        agree = x.get("agreement")
        ratio = (f"{x['decode_batch_ratio_vs_python']:.2f}x / {x['encode_batch_ratio_vs_python']:.2f}x"
                 if "decode_batch_ratio_vs_python" in x else "")
        rows.append((f"{name} ({x['threads']} thread{'s' if x['threads'] > 1 else ''})", f"{x['decode_one_ms']:.2f}", f"{x['encode_one_ms']:.2f}",
                     f"{x['decode_batch_images_per_s']:,.0f}", f"{x['encode_batch_images_per_s']:,.0f}", ratio,
                     f"{agree['same_kae_bytes']}/{agree['files']}" if agree else "",
                     str(agree["max_pixel_diff"]) if agree else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    p = r["page"]
    print(f"\npage start-up (navigation to ready, no cache): median {p['startup_ms_median']:.0f} ms of "
          f"{p['startup_ms']}")
    print(f"page transfers {p['requests']} files, {p['bytes']:,} bytes ({p['gzip_bytes']:,} gzipped):")
    for rel, f in sorted(p["files"].items(), key=lambda kv: -kv[1]["bytes"]):
        print(f"  {rel:40s} {f['bytes']:>12,} {f['gzip_bytes']:>12,}  {f['status']}")
    print()
    for goal in r["goals"]:
        print(f"{'PASS' if goal['pass'] else 'FAIL'}  {goal['name']}: {goal['value']} {goal['op']} {goal['limit']}")


if __name__ == "__main__":
    main()
