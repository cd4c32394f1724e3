"""Entropy coding + `.kae` v2 container against the network alone, same run (issue 12's speed goal).

Batch 256 of real MNIST test digits, onnxruntime CPU, one `.kae` file per digit. Timings interleaved over
rounds (medians), each with onnxruntime's idle threads spinning (its default) and not spinning, since a
spinning pool competes with the Python coding that follows on a 2-core machine:
  encode, network alone:  encoder.onnx on the batch
  encode, whole:          encoder.onnx, rounding, then bitstream.write_tiles (one file per digit)
  decode, network alone:  decoder.onnx on the batch's latents
  decode, whole:          bitstream.read_tiles on the batch's files, then decoder.onnx
and the coding alone, with the batch API (the compiled coder of kaecompress.codec.rangekernel from
rangecoder.COMPILED_FROM files on), the batch API held to constriction, and file by file (bitstream.write /
read_payload), also in CPU time of its thread (stable while other work shares the machine).
Goal: whole <= 1.5x network alone, both ways (about >= 20,000 digits/s encode, >= 10,000/s decode on an
idle 2-core machine). A codec model (one with probability tables) is measured with its own tables (and its
context model, where it has one: residuals computed before coding, latents restored after); any other
model with stand-in tables: the histogram of its rounded latents on the test digits (marked in the output).

    python benchmarks/codec_speed.py [--model NAME_OR_RUN] [--rounds 7] [--iters 10] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from kaecompress.codec import bitstream, rangecoder
from kaecompress.experiments.export_cache import export_cache
from kaecompress.experiments.data import load_images
from kaecompress.runtime.sessions import onnx_session
from kaecompress.experiments.loading import load_model


def stand_in_tables(symbols: np.ndarray) -> rangecoder.IntegerTables:
    """Per-dimension histogram of the rounded latents, 0.1% of mass left to the escape."""
    lo, hi = symbols.min(axis=0), symbols.max(axis=0)
    width = int((hi - lo).max()) + 1
    counts = np.stack([np.bincount(symbols[:, d] - lo[d], minlength=width) for d in range(symbols.shape[1])])
    pmf = (counts + 0.01) / (counts + 0.01).sum(axis=1, keepdims=True) * 0.999
    return rangecoder.IntegerTables.from_pmf(pmf, lo)


def timed(fn, iters: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="trained model name, run folder or checkpoint")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()

    loaded = load_model(args.model)
    model = loaded.model.eval()
    folder = export_cache(loaded)
    images = load_images(loaded.dataset, False, None, model.shape)
    x = images[:args.batch_size].numpy()
    _, h, w = model.shape
    prior = getattr(model, "prior", None)
    codec_id, context = None, None
    spins = {"spinning": True, "no spinning": False}
    sessions = {k: (onnx_session(folder / "encoder.onnx", spinning=v), onnx_session(folder / "decoder.onnx",
                                                                                   spinning=v))
                for k, v in spins.items()}
    encoder = sessions["spinning"][0]
    if prior is not None:
        if not prior.frozen:  # a checkpoint of a codec run still training: its tables as promote builds them
            prior.freeze()
        tables, which = prior.tables(), "the model's own tables"
        codec_id, context = 1, prior.context()
        if context is not None:
            which += f" and context model ({len(context.predicted)} latents predicted)"
    else:
        every = np.rint(encoder.run(None, {"images": images[:2000].numpy()})[0]).astype(np.int64)
        tables, which = stand_in_tables(every), "stand-in tables (histogram of its rounded latents)"
    sha = loaded.weights_sha256
    latents = np.rint(encoder.run(None, {"images": x})[0]).astype(np.float32)

    def coded(symbols):  # what is coded: the latents, or their residuals under the context model
        return symbols if context is None else context.residuals(symbols)

    def restored(symbols):
        return symbols if context is None else context.restore(symbols)

    def write_each(symbols):  # file by file, as bitstream.write is called for one image
        symbols = coded(symbols)
        return [bitstream.write(s.reshape(1, 1, 1, -1), width=w, height=h, mode="L", fit="tile", tables=tables,
                                weights_sha256=sha, codec_id=codec_id, tile=(h, w)) for s in symbols]

    def read_each(files):
        rows = []
        for data in files:
            header = bitstream.parse_header(data)
            rows.append(restored(bitstream.read_payload(data, header, tables, sha, (h, w)).reshape(1, -1))[0])
        return np.stack(rows).astype(np.float32)

    def write_batch(symbols):  # the batch API for one-tile images
        return bitstream.write_tiles(coded(symbols), tables=tables, weights_sha256=sha, codec_id=codec_id, tile=(h, w))

    def read_batch(files):
        symbols = bitstream.read_tiles(files, tables=tables, weights_sha256=sha, tile=(h, w))[1]
        return restored(symbols).astype(np.float32)

    def constriction_only(fn):  # the batch API as it codes without numba
        def run(arg):
            saved, rangecoder.COMPILED_FROM = rangecoder.COMPILED_FROM, 10**9
            try:
                return fn(arg)
            finally:
                rangecoder.COMPILED_FROM = saved
        return run

    integers = latents.astype(np.int64)
    files = write_batch(integers)
    assert files == write_each(integers)  # both APIs write the same bytes
    assert files == constriction_only(write_batch)(integers)  # the compiled coder writes constriction's bytes
    assert np.array_equal(read_batch(files), latents) and np.array_equal(read_each(files), latents)
    coding = {"encode, file by file": lambda: write_each(integers), "encode, batch API": lambda: write_batch(integers),
              "encode, batch API, constriction": lambda: constriction_only(write_batch)(integers),
              "decode, file by file": lambda: read_each(files), "decode, batch API": lambda: read_batch(files),
              "decode, batch API, constriction": lambda: constriction_only(read_batch)(files)}
    jobs = {f"coding + container alone, {k}": v for k, v in coding.items()}
    for spin, (enc, dec) in sessions.items():
        jobs[f"encode, network alone ({spin})"] = lambda enc=enc: enc.run(None, {"images": x})[0]
        jobs[f"encode, whole ({spin})"] = lambda enc=enc: write_batch(
            np.rint(enc.run(None, {"images": x})[0]).astype(np.int64))
        jobs[f"decode, network alone ({spin})"] = lambda dec=dec: dec.run(None, {"latents": latents})[0]
        jobs[f"decode, whole ({spin})"] = lambda dec=dec: dec.run(None, {"latents": read_batch(files)})[0]
    measured = {name: [] for name in jobs}
    for _ in range(args.rounds):
        for name, fn in jobs.items():
            measured[name].append(timed(fn, args.iters))
    med = {name: statistics.median(v) for name, v in measured.items()}
    n = len(x)
    print(f"{loaded.name}: latent {model.latent_dim}, tables D={tables.dims} K={tables.symbols} ({which}); "
          f"batch {n}, onnxruntime CPU, {args.rounds} rounds x {args.iters}")
    print(f"files: {np.mean([len(f) for f in files]):.2f} bytes on average (header + check 3 bytes)")
    for name, t in med.items():
        print(f"  {name:58s} {n / t:10,.0f} digits/s  {t / n * 1e6:7.1f} us/digit")
    for name, fn in coding.items():
        cpu = []
        for _ in range(args.rounds):  # CPU time of this thread: what the coding costs on an idle core
            start = time.thread_time()
            for _ in range(args.iters):
                fn()
            cpu.append((time.thread_time() - start) / args.iters)
        print(f"entropy coding + container, {name}: {statistics.median(cpu) / n * 1e6:.1f} us of CPU per digit")
    ok = True
    for way in ("encode", "decode"):
        for spin in spins:
            ratio = med[f"{way}, whole ({spin})"] / med[f"{way}, network alone ({spin})"]
            print(f"{way} ({spin}): whole / network alone = {ratio:.2f}x")
        best_whole = min(med[f"{way}, whole ({spin})"] for spin in spins)
        best_net = min(med[f"{way}, network alone ({spin})"] for spin in spins)
        ok &= best_whole <= 1.5 * best_net
        print(f"{way}: best whole / best network alone = {best_whole / best_net:.2f}x (goal <= 1.5x), "
              f"{n / best_whole:,.0f} digits/s")
    print("goal met" if ok else "goal NOT met")


if __name__ == "__main__":
    main()
