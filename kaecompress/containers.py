"""Files that hold compressed images: .npy (bare latents), .npz (latents + metadata) and .kae (compact).

Latents of one image have shape (planes, tiles_y, tiles_x, latent_dim): a grayscale model encodes each
colour channel of an image as its own plane, cut into model-sized tiles. In a .npy file, an image that is
exactly one tile of one plane is stored as a single vector (latent_dim,).

.kae layout (little-endian), all of it covered by the CRC-32 at the end:

    magic "KAEC" | version u8 | quant u8 (0 uint8, 1 float16) | fit u8 (0 tile, 1 resize) | mode u8
    model id: first 8 bytes of the model's weights sha256
    width u32 | height u32 | planes u8 | tiles_y u16 | tiles_x u16 | latent_dim u16
    uint8 only: offset f32 | scale f32      (latent = offset + scale * q, one pair per file)
    latents: planes * tiles_y * tiles_x * latent_dim values (u8 or f16) | crc32 u32
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kaecompress.errors import KaecError
from kaecompress.runs import atomic_write_bytes

MAGIC = b"KAEC"
VERSION = 1
MODES = ("L", "LA", "RGB", "RGBA", "1")
FITS = ("tile", "resize")
QUANTS = ("uint8", "float16")
_HEAD = struct.Struct("<4sBBBB8sIIBHHH")
_SCALE = struct.Struct("<ff")
SUFFIXES = (".npy", ".npz", ".kae")
MAX_PIXELS = 178_956_970  # Pillow's own limit for opening an image; a header claiming more is an attack


@dataclass
class Encoded:
    """One compressed image: its latents and what decoding needs to rebuild it."""

    latents: np.ndarray          # float32 (planes, tiles_y, tiles_x, latent_dim)
    width: int
    height: int
    mode: str = "L"
    fit: str = "tile"
    model: str = ""               # the model's name (informative)
    weights_sha256: str = ""      # the model's identity (checked on decode); may be a prefix

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.latents.shape[:3])


def quantize(latents: np.ndarray, quant: str) -> tuple[np.ndarray, float, float]:
    """uint8 with one affine scale per file, or float16. Returns (codes, offset, scale)."""
    if quant == "float16":
        return latents.astype(np.float16), 0.0, 1.0
    lo, hi = float(latents.min()), float(latents.max())
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    codes = np.clip(np.rint((latents - lo) / scale), 0, 255).astype(np.uint8)
    return codes, lo, scale


def dequantize(codes: np.ndarray, offset: float, scale: float) -> np.ndarray:
    if codes.dtype == np.float16:
        return codes.astype(np.float32)
    return (np.float32(offset) + np.float32(scale) * codes.astype(np.float32)).astype(np.float32)


# ---- writing ----------------------------------------------------------------------------------------

def to_kae(enc: Encoded, quant: str = "uint8") -> bytes:
    planes, ty, tx, dim = enc.latents.shape
    codes, offset, scale = quantize(enc.latents, quant)
    head = _HEAD.pack(MAGIC, VERSION, QUANTS.index(quant), FITS.index(enc.fit), MODES.index(enc.mode),
                      bytes.fromhex(enc.weights_sha256[:16]), enc.width, enc.height, planes, ty, tx, dim)
    body = head + (_SCALE.pack(offset, scale) if quant == "uint8" else b"") + codes.tobytes()
    return body + struct.pack("<I", zlib.crc32(body))


def to_npz(enc: Encoded) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, latents=enc.latents.astype(np.float32), width=enc.width, height=enc.height, mode=enc.mode,
             fit=enc.fit, model=enc.model, weights_sha256=enc.weights_sha256, format_version=VERSION)
    return buf.getvalue()


def to_npy(enc: Encoded) -> bytes:
    latents = enc.latents.astype(np.float32)
    if latents.shape[:3] == (1, 1, 1):
        latents = latents.reshape(-1)
    buf = io.BytesIO()
    np.save(buf, latents)
    return buf.getvalue()


def write(enc: Encoded, path: Path, quant: str = "uint8") -> None:
    suffix = path.suffix.lower()
    data = {".kae": lambda: to_kae(enc, quant), ".npz": lambda: to_npz(enc), ".npy": lambda: to_npy(enc)}
    if suffix not in data:
        raise KaecError(f"{path}: unknown output type (expected {', '.join(SUFFIXES)})")
    atomic_write_bytes(path, data[suffix]())


# ---- reading ----------------------------------------------------------------------------------------

def from_kae(data: bytes, where: str) -> tuple[Encoded, str]:
    """The image and its quantisation; every corruption is a KaecError naming the file."""
    if data[:4] != MAGIC:
        raise KaecError(f"{where}: not a .kae file (bad magic {data[:4]!r})")
    if len(data) < _HEAD.size + 4:
        raise KaecError(f"{where}: truncated .kae file")
    body, (crc,) = data[:-4], struct.unpack("<I", data[-4:])
    if zlib.crc32(body) != crc:
        raise KaecError(f"{where}: checksum mismatch: the file is damaged")
    magic, version, quant, fit, mode, model_id, width, height, planes, ty, tx, dim = _HEAD.unpack_from(body)
    if version != VERSION or quant >= len(QUANTS) or fit >= len(FITS) or mode >= len(MODES):
        raise KaecError(f"{where}: unsupported .kae version {version} or header values")
    offset, scale, pos = 0.0, 1.0, _HEAD.size
    if QUANTS[quant] == "uint8":
        if len(body) < pos + _SCALE.size:
            raise KaecError(f"{where}: truncated .kae file")
        offset, scale = _SCALE.unpack_from(body, pos)
        pos += _SCALE.size
    dtype = np.uint8 if QUANTS[quant] == "uint8" else np.float16
    count = planes * ty * tx * dim
    if len(body) - pos != count * np.dtype(dtype).itemsize:
        raise KaecError(f"{where}: latent payload has the wrong length for a {planes}x{ty}x{tx}x{dim} grid")
    codes = np.frombuffer(body, dtype, count, pos).reshape(planes, ty, tx, dim)
    enc = Encoded(dequantize(codes, offset, scale), width, height, MODES[mode], FITS[fit],
                  weights_sha256=model_id.hex())
    return enc, QUANTS[quant]


def read(path: Path, latent_dim: int, patch: tuple[int, int], channels: int = 1,
         check_model: Callable[[Encoded, str], None] | None = None) -> Encoded:
    """Any of .npy / .npz / .kae, checked against the decoding model (latent size, tile size, channels).
    A .npy carries no size: it decodes to its whole tile grid. `check_model` sees the file first, so a file
    from another model is reported as such rather than as mismatched latent sizes."""
    enc = _read(path, latent_dim, patch, channels)
    if check_model:
        check_model(enc, str(path))
    check(enc, str(path), latent_dim, patch, channels)
    return enc


def check(enc: Encoded, where: str, latent_dim: int, patch: tuple[int, int], channels: int) -> None:
    """The header and the latents must describe one image the model can rebuild."""
    _check_latents(enc.latents, where, latent_dim)
    if enc.mode not in MODES or enc.fit not in FITS:
        raise KaecError(f"{where}: unknown mode {enc.mode!r} or fit {enc.fit!r}")
    if enc.width < 1 or enc.height < 1:
        raise KaecError(f"{where}: image size {enc.width}x{enc.height}; expected at least 1x1")
    if enc.width * enc.height > MAX_PIXELS:
        raise KaecError(f"{where}: image size {enc.width}x{enc.height} is over the {MAX_PIXELS:,}-pixel limit")
    planes, ty, tx, _ = enc.latents.shape
    expected_planes = 1 if channels == 3 else {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[enc.mode]
    if planes != expected_planes or (channels == 3 and enc.mode != "RGB"):
        raise KaecError(f"{where}: {planes} latent planes do not fit mode {enc.mode} with a {channels}-channel model")
    grid = (1, 1) if enc.fit == "resize" else (-(-enc.height // patch[0]), -(-enc.width // patch[1]))
    if (ty, tx) != grid:
        raise KaecError(f"{where}: a {enc.width}x{enc.height} image ({enc.fit}) needs {grid[0]}x{grid[1]} tiles "
                        f"of {patch[1]}x{patch[0]}, the file has {ty}x{tx}")


def _read(path: Path, latent_dim: int, patch: tuple[int, int], channels: int) -> Encoded:
    suffix = path.suffix.lower()
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KaecError(f"{path}: cannot read ({e.strerror or e})") from None
    if suffix == ".kae":
        return from_kae(data, str(path))[0]
    if suffix not in (".npy", ".npz"):
        raise KaecError(f"{path}: unknown input type (expected {', '.join(SUFFIXES)})")
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
        if suffix == ".npy":
            return _from_array(loaded, path, latent_dim, patch, channels)
        return Encoded(loaded["latents"], int(loaded["width"]), int(loaded["height"]), str(loaded["mode"]),
                       str(loaded["fit"]), str(loaded["model"]), str(loaded["weights_sha256"]))
    except KeyError as e:
        raise KaecError(f"{path}: .npz without {e} (expected latents, width, height, mode, fit, model, "
                        "weights_sha256)") from None
    except (ValueError, TypeError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise KaecError(f"{path}: not a readable {suffix} file ({e})") from None


def _check_latents(latents: np.ndarray, path, latent_dim: int) -> None:
    if latents.dtype != np.float32:
        raise KaecError(f"{path}: latents must be float32, got {latents.dtype}")
    if latents.ndim != 4 or latents.shape[-1] != latent_dim or min(latents.shape) < 1:
        raise KaecError(f"{path}: latents must have shape (planes, tiles_y, tiles_x, {latent_dim}), "
                        f"got {latents.shape}")
    if latents.shape[0] not in (1, 2, 3, 4):
        raise KaecError(f"{path}: {latents.shape[0]} planes; expected 1 to 4")
    if not np.isfinite(latents).all():
        raise KaecError(f"{path}: latents contain NaN or infinity")


def _from_array(latents: np.ndarray, path: Path, latent_dim: int, patch: tuple[int, int], channels: int) -> Encoded:
    if latents.ndim == 1:
        latents = latents.reshape(1, 1, 1, -1)
    _check_latents(latents, path, latent_dim)
    planes, ty, tx, _ = latents.shape
    mode = "RGB" if channels == 3 else {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[planes]
    return Encoded(latents, tx * patch[1], ty * patch[0], mode)
