"""The codec families on two devices: do files, latents and pixels agree, and how fast is each?

For every model of the codec families, the test images are encoded with the networks on each device
(torch; batch 256), and every file is decoded on each device. Reported per model:
- bytes and PSNR of the files made on each device, and how many files are byte-identical across devices
  (an encoder on another device may round a rare latent the other way: both files are valid);
- the latents each file decodes to on each device (the entropy coding is integer work on the CPU: they must
  be identical) and the largest pixel difference between decoding one file on the two devices (at most one
  level: the float decoders differ in their last bits);
- images/s of the network alone and of the whole encode and decode (entropy coding and container included).
Exits 1 when a latent differs or a pixel differs by more than one level.

    python benchmarks/codec_devices.py [--devices cpu,cuda] [--images 10000] [--family mnist] [--json-file out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np
from PIL import Image

from kaecompress.codec.images import Codec
from kaecompress.experiments.data import load_images
from kaecompress.experiments.codecstats import to_pixels
from kaecompress.evaluation.metrics import psnr_8bit
from kaecompress.zoo import families
from kaecompress.experiments.loading import load_model


def timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def network_rate(codec: Codec, pixels: np.ndarray) -> tuple[float, float]:
    """Images/s of the encoder and of the decoder network alone, batch 256 (after one warm-up batch)."""
    x = (pixels[:, None].astype(np.float32) / 255.0)
    codec._run(codec.backend.encode, x[:256])
    z, t_enc = timed(codec._run, codec.backend.encode, x)
    codec._run(codec.backend.decode, z[:256])
    _, t_dec = timed(codec._run, codec.backend.decode, z)
    return len(x) / t_enc, len(x) / t_dec


def measure(name: str, pixels: np.ndarray, devices: list[str], backend: str = "torch") -> dict:
    images = [Image.fromarray(p, "L") for p in pixels]
    names = [f"{i}.kae" for i in range(len(pixels))]
    row: dict = {"model": name, "backend": backend, "images": len(pixels), "devices": {}}
    codecs = {d: Codec(load_model(name), backend, device=d) for d in devices}  # one model copy per device
    files = {}
    for d, codec in codecs.items():
        codec.to_kae_many(codec.compress_many(images[:256]))  # warm-up (CUDA context, kernels)
        encoded, t_enc = timed(codec.compress_many, images)
        blobs, t_code = timed(codec.to_kae_many, encoded)
        files[d] = blobs
        enc_rate, dec_rate = network_rate(codec, pixels)
        row["devices"][d] = {"bytes": statistics.fmean(map(len, blobs)),
                             "encode_images_per_s": len(images) / (t_enc + t_code),
                             "network_encode_images_per_s": enc_rate, "network_decode_images_per_s": dec_rate}
    first = devices[0]
    decoded = {}
    for d, codec in codecs.items():  # every device decodes the files the first device made
        read, t_read = timed(codec.from_kae_many, files[first], names)
        out, t_dec = timed(codec.decompress_many, read)
        decoded[d] = (np.stack([e.latents for e in read]), np.stack([np.asarray(im) for im in out]))
        row["devices"][d]["decode_images_per_s"] = len(images) / (t_read + t_dec)
        row["devices"][d]["psnr_db"] = float(psnr_8bit(pixels, decoded[d][1], cap=None).mean())
    for d in devices[1:]:
        row[f"identical_files_{first}_{d}"] = sum(a == b for a, b in zip(files[first], files[d]))
        row[f"latents_equal_{first}_{d}"] = bool(np.array_equal(decoded[first][0], decoded[d][0]))
        diff = np.abs(decoded[first][1].astype(np.int16) - decoded[d][1].astype(np.int16))
        row[f"max_pixel_diff_{first}_{d}"] = int(diff.max())
        row[f"pixels_differing_{first}_{d}"] = float((diff > 0).mean())
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", default="cpu,cuda", help="comma-separated; the first one's files are decoded by all")
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--backend", default="torch", help="torch, or onnx (onnxruntime's CPU and CUDA providers)")
    ap.add_argument("--family", action="append", help="mnist or fashion-mnist (default: both)")
    ap.add_argument("--json-file", help="write the rows here")
    args = ap.parse_args()
    devices = args.devices.split(",")
    rows = []
    for fam in args.family or list(families()):
        pixels = to_pixels(load_images(fam, False)[: args.images, 0])
        for name in families()[fam]:
            row = measure(name, pixels, devices, args.backend)
            rows.append(row)
            per = "  ".join(f"{d}: {v['bytes']:.2f} B {v['psnr_db']:.2f} dB, net enc/dec "
                            f"{v['network_encode_images_per_s']:,.0f}/{v['network_decode_images_per_s']:,.0f}/s, "
                            f"codec enc/dec {v['encode_images_per_s']:,.0f}/{v['decode_images_per_s']:,.0f}/s"
                            for d, v in row["devices"].items())
            agree = "  ".join(f"{k} {v}" for k, v in row.items()
                              if k.startswith(("identical", "latents", "max", "pixels_")))
            print(f"{name}: {per}  {agree}", flush=True)
    if args.json_file:
        with open(args.json_file, "w") as f:
            json.dump(rows, f, indent=1)
    bad = [r["model"] for r in rows for k, v in r.items()
           if (k.startswith("latents_equal") and not v) or (k.startswith("max_pixel_diff") and v > 1)]
    if bad:
        print(f"FAIL: latents differ or pixels differ by more than one level: {', '.join(sorted(set(bad)))}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
