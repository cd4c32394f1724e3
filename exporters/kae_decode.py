#!/usr/bin/env python3
"""Reference decoder for `.kae` version 2 files made with the model exported in this folder.

Needs numpy, onnxruntime and constriction only (Pillow too for files encoded with --fit resize); it does not
import kaecompress. It reads the probability tables (prior.npz, with the context model where
the model has one) and the model's identity (manifest.json) from the export folder, checks the file,
entropy-decodes the latent integers (residuals of a prediction, where there is a context model), runs
decoder.onnx on them and writes a PNG. The byte layout is kaecompress's docs/kae-format.md, summarised in
manifest.json ("bitstream").

    python kae_decode.py IMAGE.kae -o IMAGE.png [--export FOLDER]

Mistakes and damaged files are one line on stderr and exit code 2; nothing is written then.
"""

from __future__ import annotations

import argparse
import binascii
import json
import os
import stat
import struct
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

MODES = ("L", "LA", "RGB", "RGBA", "1")
FITS = ("tile", "resize")
MAX_PIXELS = 178_956_970
MAX_MANIFEST_BYTES, MAX_FILE_BYTES = 1 << 20, 1 << 30
ESCAPE_CLASSES, LOW_BITS, CHUNK = 64, 16, 1 << 16


class Refused(Exception):
    """A one-line reason the file cannot be decoded."""


# ---- the container -------------------------------------------------------------------------------------

def varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(5):
        if pos + i >= len(data):
            raise Refused("truncated .kae file")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:
                break
            return value, pos + i + 1
    raise Refused(f"malformed number in the header at byte {pos}")


def parse(data: bytes, tile: tuple[int, int]) -> dict:
    if not data:
        raise Refused("empty file")
    first = data[0]
    if first == 0x4B:
        raise Refused("a version 1 .kae file: decode it with kaec decode")
    if not first & 0x80:
        raise Refused(f"unsupported .kae version (first byte 0x{first:02x})")
    if first & 0xC0 == 0x80:
        return {"codec_id": first & 0x3F, "model_id": None, "width": tile[1], "height": tile[0], "mode": "L",
                "fit": "tile", "grid": (1, 1, 1), "size": 1}
    flags = first & 0x3F
    if flags & 0x20 or (flags >> 2) & 7 >= len(MODES):
        raise Refused(f"unsupported header flags 0x{flags:02x}")
    pos, codec_id, model_id = 1, None, None
    if flags & 1:
        codec_id, pos = varint(data, pos)
    else:
        if len(data) < pos + 8:
            raise Refused("truncated .kae file")
        model_id, pos = data[pos:pos + 8].hex(), pos + 8
    values = []
    for _ in range(5):
        value, pos = varint(data, pos)
        values.append(value)
    width, height, planes, ty, tx = values
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise Refused(f"image size {width}x{height}; expected 1 to {MAX_PIXELS:,} pixels")
    fit = FITS[(flags >> 1) & 1]
    need = (1, 1) if fit == "resize" else (-(-height // tile[0]), -(-width // tile[1]))
    if not 1 <= planes <= 4 or (ty, tx) != need:
        raise Refused(f"tile grid {planes}x{ty}x{tx} does not fit a {width}x{height} image ({fit})")
    return {"codec_id": codec_id, "model_id": model_id, "width": width, "height": height,
            "mode": MODES[(flags >> 2) & 7], "fit": fit, "grid": (planes, ty, tx), "size": pos}


def check(data: bytes, header: dict, weights_sha256: str, codec_id) -> None:
    if header["model_id"] is not None and header["model_id"] != weights_sha256[:16]:
        raise Refused(f"made with another model (id {header['model_id']}) than this export's "
                      f"({weights_sha256[:16]})")
    if header["codec_id"] is not None and codec_id is not None and header["codec_id"] != codec_id:
        raise Refused(f"made with codec model {header['codec_id']}, this export is codec model {codec_id}")
    body = data[:-2]
    crc = binascii.crc_hqx(body, binascii.crc_hqx(bytes.fromhex(weights_sha256), 0xFFFF))
    if len(data) < header["size"] + 2 or crc.to_bytes(2, "big") != data[-2:]:
        raise Refused("checksum mismatch: the file is damaged, truncated or was made with another model")


# ---- entropy decoding ------------------------------------------------------------------------------------

def load_tables(path: Path):
    """Offsets, probabilities and the context model (order, weights, bias; None if the model has none)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            offsets, freqs, precision = (np.asarray(z[k]) for k in ("offsets", "freqs", "precision"))
            context = (tuple(np.asarray(z[f"context_{k}"]).astype(np.int64) for k in ("order", "weights", "bias"))
                       if "context_order" in z.files else None)
    except (OSError, KeyError, ValueError) as e:
        raise Refused(f"{path}: not readable probability tables ({e})") from None
    precision = int(precision.reshape(-1)[0])
    if (freqs.ndim != 2 or offsets.shape != freqs.shape[:1] or freqs.min() < 1
            or (freqs.astype(np.int64).sum(axis=1) != 2**precision).any()):
        raise Refused(f"{path}: malformed probability tables")
    if context is not None:
        order, weights, bias = context
        d = freqs.shape[0]
        if (not np.array_equal(np.sort(order), np.arange(d)) or weights.shape != (d, d) or bias.shape != (d,)
                or np.triu(weights).any() or np.abs(weights).sum(axis=1).max() >= 2**21
                or np.abs(bias).max() >= 2**31):
            raise Refused(f"{path}: malformed context model")
    return offsets.astype(np.int64), freqs.astype(np.float64) / float(2**precision), context


def restore(residuals: np.ndarray, context) -> np.ndarray:
    """Latents from the decoded residuals: in coding order, each predicted latent adds
    floor((sum of weights * earlier latents + bias + 2**11) / 2**12). The float64 sums are exact: latents
    stay below 2**31 and each row's |weights| below 2**21."""
    order, weights, bias = context
    y = np.ascontiguousarray(residuals[:, order].T, dtype=np.float64)
    w = weights.astype(np.float64)
    for i in np.flatnonzero(weights.any(axis=1) | (bias != 0)):
        y[i] += np.floor((w[i, :i] @ y[:i] + float(bias[i]) + 2048.0) / 4096.0)
        if np.abs(y[i]).max(initial=0) >= 2**31:
            raise Refused("the payload is damaged")
    out = np.empty_like(residuals)
    out[:, order] = y.T.astype(np.int64)
    return out


def entropy_decode(payload: bytes, offsets: np.ndarray, probs: np.ndarray, count: int) -> np.ndarray:
    """The (count, D) latent integers: table symbols, then escape classes, low and high bits."""
    import constriction

    stream = constriction.stream
    d, k = probs.shape
    words = np.frombuffer(payload + bytes(-len(payload) % 4), dtype=">u4").astype(np.uint32)
    decoder = stream.queue.RangeDecoder(words)
    family = stream.model.Categorical(perfect=False)
    rows = max(1, CHUNK // (d * k))
    parts = [decoder.decode(family, np.tile(probs, (min(rows, count - s), 1))) for s in range(0, count, rows)]
    index = np.concatenate(parts).astype(np.int64).reshape(count, d)
    values = index + offsets
    escaped = index == k - 1
    n = int(escaped.sum())
    if n:
        classes = decoder.decode(stream.model.Uniform(ESCAPE_CLASSES), n).astype(np.int64)
        above, nbits = classes >= 32, classes % 32
        mantissa = np.zeros(n, dtype=np.int64)
        low, high = nbits >= 1, nbits > LOW_BITS
        uniform = stream.model.Uniform()
        if low.any():
            mantissa[low] = decoder.decode(uniform, (1 << np.minimum(nbits[low], LOW_BITS)).astype(np.int32))
        if high.any():
            top = decoder.decode(uniform, (1 << (nbits[high] - LOW_BITS)).astype(np.int32))
            mantissa[high] |= top.astype(np.int64) << LOW_BITS
        e = (1 << nbits) + mantissa - 1
        off = offsets[np.nonzero(escaped)[1]]
        values[escaped] = np.where(above, off + (k - 1) + e, off - 1 - e)
    if values.min() < -(2**31) or values.max() >= 2**31:
        raise Refused("the payload is damaged")
    return values


# ---- pixels ---------------------------------------------------------------------------------------------

def run_decoder(folder: Path, latents: np.ndarray) -> np.ndarray:
    # Off before the import: onnxruntime's telemetry would otherwise write under ~/.cache/Microsoft.
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(folder / "decoder.onnx"), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = latents.astype(np.float32)
    return np.concatenate([session.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])


def assemble(tiles: np.ndarray, header: dict) -> np.ndarray:
    """(bands, height, width) uint8, as kaecompress.codec.images puts tiles together."""
    p, ty, tx = header["grid"]
    c, h, w = tiles.shape[1:]
    planes = tiles.reshape(p, ty, tx, c, h, w).transpose(0, 3, 1, 4, 2, 5).reshape(p * c, ty * h, tx * w)
    if header["fit"] == "tile":
        planes = planes[:, :header["height"], :header["width"]]
    else:
        try:
            from PIL import Image
        except ImportError:
            raise Refused("a --fit resize file needs Pillow to resize back") from None
        planes = np.stack([np.asarray(Image.fromarray(b.astype(np.float32), "F").resize(
            (header["width"], header["height"]), Image.Resampling.BILINEAR)) for b in planes])
    return np.clip(np.rint(planes * 255.0), 0, 255).astype(np.uint8)


def png(pixels: np.ndarray, mode: str) -> bytes:
    """A PNG of (bands, height, width) uint8; mode 1 is thresholded at 128, as Pillow does."""
    bands, height, width = pixels.shape
    if mode == "1":
        rows, depth, colour = np.packbits(pixels[0] >= 128, axis=1), 1, 0
    else:
        rows, depth, colour = pixels.transpose(1, 2, 0).reshape(height, -1), 8, {"L": 0, "LA": 4, "RGB": 2,
                                                                                   "RGBA": 6}[mode]
    raw = np.hstack([np.zeros((height, 1), np.uint8), rows]).tobytes()  # filter type 0 on every row

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    head = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", head) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")


def read_regular(path: Path, max_bytes: int) -> bytes:
    """A regular file of at most `max_bytes`: a FIFO or a device is refused without blocking on it (messages
    leave the path to the caller). This script runs without kaecompress, hence its own copy of what
    kaecompress.fileio.read_regular does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise Refused(f"cannot read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Refused("not a regular file")
        if st.st_size > max_bytes:
            raise Refused(f"{st.st_size:,} bytes, over the {max_bytes:,} this reads")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise Refused(f"over the {max_bytes:,} bytes this reads")
        return data
    except OSError as e:
        raise Refused(f"cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)


def decode_file(path: Path, folder: Path) -> tuple[bytes, dict]:
    try:
        manifest = json.loads(read_regular(folder / "manifest.json", MAX_MANIFEST_BYTES))
    except Refused as e:
        raise Refused(f"{folder / 'manifest.json'}: {e}") from None
    except RecursionError:
        raise Refused(f"{folder / 'manifest.json'}: nested too deep") from None
    except ValueError as e:
        raise Refused(f"{folder}: not an export folder of a codec model ({e})") from None
    try:
        spec = manifest["bitstream"]
        weights_sha256 = manifest["weights_sha256"]
        _, _, h, w = manifest["input"]["shape"]
        tables = spec["tables"] if isinstance(spec, dict) else None
        if not isinstance(tables, str) or Path(tables).name != tables or tables in ("", ".", ".."):
            raise ValueError("'bitstream' must name its tables, a file in the export folder")
        if len(bytes.fromhex(weights_sha256)) != 32 or not all(type(v) is int and v > 0 for v in (h, w)):
            raise ValueError("weights_sha256 must be 64 hex digits and the input shape positive integers")
    except (ValueError, KeyError, TypeError) as e:
        raise Refused(f"{folder}: not an export folder of a codec model ({e})") from None
    data = read_regular(path, MAX_FILE_BYTES)
    header = parse(data, (h, w))
    check(data, header, weights_sha256, spec.get("codec_id"))
    offsets, probs, context = load_tables(folder / spec["tables"])
    if probs.shape[0] != manifest.get("latent_dim"):
        raise Refused(f"{folder}: tables for {probs.shape[0]} latents, the decoder takes {manifest.get('latent_dim')}")
    count = int(np.prod(header["grid"]))
    try:
        latents = entropy_decode(data[header["size"]:-2], offsets, probs, count)
    except Refused:
        raise
    except Exception as e:  # constriction refuses some damaged streams
        raise Refused(f"the payload is damaged ({type(e).__name__})") from None
    if context is not None:
        latents = restore(latents, context)
    pixels = assemble(run_decoder(folder, latents), header)
    return png(pixels, header["mode"]), header


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Decode a .kae version 2 file with this export folder's model.")
    parser.add_argument("input", type=Path, help=".kae file")
    parser.add_argument("-o", "--output", type=Path, required=True, help="PNG file to write")
    parser.add_argument("--export", type=Path, default=Path(__file__).resolve().parent,
                        help="export folder (default: the folder of this script)")
    args = parser.parse_args(argv)
    try:
        image, _ = decode_file(args.input, args.export)
        fd, tmp = tempfile.mkstemp(prefix=f".{args.output.name}.", suffix=".tmp", dir=args.output.parent or ".")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(image)
            os.replace(tmp, args.output)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except Refused as e:
        print(f"kae_decode: {args.input}: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"kae_decode: {args.output}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
