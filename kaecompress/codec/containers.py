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
import math
import struct
import tokenize
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kaecompress.errors import KaecError
from kaecompress.fileio import MiB, atomic_write_bytes, read_regular

MAGIC = b"KAEC"
VERSION = 1
MODES = ("L", "LA", "RGB", "RGBA", "1")
FITS = ("tile", "resize")
QUANTS = ("uint8", "float16")
_HEAD = struct.Struct("<4sBBBB8sIIBHHH")
_SCALE = struct.Struct("<ff")
SUFFIXES = (".npy", ".npz", ".kae")
# The most pixels (width x height) one image may have, encoded or decoded (`--max-pixels`). 40 Mpx holds an
# 8K frame (33 Mpx) and most camera photos. A header asking for more is refused before anything is allocated.
# Large images are encoded and decoded in strips (kaecompress.codec.images): at the limit an RGBA image peaks at
# PEAK_MB, torch and the model included (measured, `kaec_bounded`: decode 1,040 MB for --fit resize, 995-1,286
# MB for tile fit, the latter with noisy latents; encode 1,266-1,303 MB). The tiles are bounded too: padded
# to whole tiles an image may cover at most PADDED_FACTOR times the limit (only very thin images come near).
MAX_PIXELS = 40_000_000
PEAK_MB = 1300
PADDED_FACTOR = 2
PLANES = {"L": 1, "1": 1, "LA": 2, "RGB": 3, "RGBA": 4}  # latent planes of each mode under a 1-channel model
_F32_MAX = float(np.finfo(np.float32).max)
# What zipfile and numpy's .npy reader raise on damaged bytes (an unknown compression method, an encrypted
# member, a header that is not a Python literal, a number too large).
_UNREADABLE = (ValueError, TypeError, OSError, EOFError, OverflowError, KeyError, NotImplementedError, RuntimeError,
               SyntaxError, tokenize.TokenError, struct.error, zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error)
_SMALL_MEMBER = 4096  # the .npz scalars (size, mode, fit, names) are a few hundred bytes


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
    """Latents from codes; an overflow gives infinities (no numpy warning), which `check` refuses."""
    if codes.dtype == np.float16:
        return codes.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
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
    np.savez_compressed(buf, latents=enc.latents.astype(np.float32), width=enc.width, height=enc.height,
                        mode=enc.mode, fit=enc.fit, model=enc.model, weights_sha256=enc.weights_sha256,
                        format_version=VERSION)
    return buf.getvalue()


def to_npy(enc: Encoded) -> bytes:
    latents = enc.latents.astype(np.float32)
    if latents.shape[:3] == (1, 1, 1):
        latents = latents.reshape(-1)
    buf = io.BytesIO()
    np.save(buf, latents)
    return buf.getvalue()


def serialize(enc: Encoded, path: Path, quant: str = "uint8") -> bytes:
    """The bytes of the file `path` names by its suffix."""
    suffix = path.suffix.lower()
    data = {".kae": lambda: to_kae(enc, quant), ".npz": lambda: to_npz(enc), ".npy": lambda: to_npy(enc)}
    if suffix not in data:
        raise KaecError(f"{path}: unknown output type (expected {', '.join(SUFFIXES)})")
    return data[suffix]()


def write(enc: Encoded, path: Path, quant: str = "uint8") -> None:
    atomic_write_bytes(path, serialize(enc, path, quant))


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
    if dim < 1:
        raise KaecError(f"{where}: latent size {dim}; expected at least 1")
    check_layout(where, mode=MODES[mode], fit=FITS[fit], width=width, height=height, grid=(planes, ty, tx))
    offset, scale, pos = 0.0, 1.0, _HEAD.size
    if QUANTS[quant] == "uint8":
        if len(body) < pos + _SCALE.size:
            raise KaecError(f"{where}: truncated .kae file")
        offset, scale = _SCALE.unpack_from(body, pos)
        pos += _SCALE.size
        if not (math.isfinite(offset) and math.isfinite(scale) and abs(offset) + 255 * abs(scale) <= _F32_MAX):
            raise KaecError(f"{where}: latent offset {offset:g} and scale {scale:g} do not give finite float32 "
                            "latents")
    dtype = np.uint8 if QUANTS[quant] == "uint8" else np.float16
    count = planes * ty * tx * dim
    if len(body) - pos != count * np.dtype(dtype).itemsize:
        raise KaecError(f"{where}: latent payload has the wrong length for a {planes}x{ty}x{tx}x{dim} grid")
    codes = np.frombuffer(body, dtype, count, pos).reshape(planes, ty, tx, dim)
    enc = Encoded(dequantize(codes, offset, scale), width, height, MODES[mode], FITS[fit],
                  weights_sha256=model_id.hex())
    return enc, QUANTS[quant]


def read(path: Path, latent_dim: int, patch: tuple[int, int], channels: int = 1,
         check_model: Callable[[Encoded, str], None] | None = None, max_pixels: int = MAX_PIXELS,
         data: bytes | None = None) -> Encoded:
    """Any of .npy / .npz / .kae (its bytes `data` if already read), checked against the decoding model
    (latent size, tile size, channels). A .npy carries no size: it decodes to its whole tile grid.
    `check_model` sees the file first, so a file from another model is reported as such rather than as
    mismatched latent sizes. Sizes claimed by headers are checked against `max_pixels` before any array is
    allocated."""
    enc = _read(path, latent_dim, patch, channels, max_pixels, data)
    if check_model:
        check_model(enc, str(path))
    check(enc, str(path), latent_dim, patch, channels, max_pixels)
    return enc


def check_pixels(width: int, height: int, where: str, max_pixels: int = MAX_PIXELS) -> None:
    if width * height > max_pixels:
        raise KaecError(f"{where}: image size {width}x{height} ({width * height:,} pixels) is over the "
                        f"{max_pixels:,}-pixel limit (--max-pixels)")


def check_tiles(grid: tuple[int, int, int], patch: tuple[int, int], where: str, max_pixels: int = MAX_PIXELS) -> None:
    """The tiles of one plane may cover at most PADDED_FACTOR x `max_pixels`: the work and memory of a
    thin image (40,000,000 x 1 is 1.4 million tiles of 28x28) grow with its tiles, not its pixels."""
    _, ty, tx = grid
    padded = ty * patch[0] * tx * patch[1]
    if padded > PADDED_FACTOR * max_pixels:
        raise KaecError(f"{where}: {ty}x{tx} tiles of {patch[1]}x{patch[0]} cover {padded:,} pixels, over "
                        f"{PADDED_FACTOR} x the {max_pixels:,}-pixel limit (--max-pixels)")


def check_layout(where: str, *, mode: str, fit: str, width: int, height: int, grid: tuple[int, int, int],
                 patch: tuple[int, int] | None = None, channels: int | None = None) -> None:
    """Mode, planes, tile grid, size and fit must describe one image, checked for every header form before
    anything is decoded. Without `channels` (the model not known yet) a 1- or 3-channel model may have made
    it; without `patch` (its tile height, width) only the grid's bounds are checked."""
    planes, ty, tx = grid
    if mode not in MODES or fit not in FITS:
        raise KaecError(f"{where}: unknown mode {mode!r} or fit {fit!r}")
    if width < 1 or height < 1:
        raise KaecError(f"{where}: image size {width}x{height}; expected at least 1x1")
    if channels == 3:
        fits = planes == 1 and mode == "RGB"
    elif channels is not None:
        fits = planes == PLANES[mode]
    else:
        fits = planes == PLANES[mode] or (planes == 1 and mode == "RGB")
    if not fits:
        model = f" with a {channels}-channel model" if channels is not None else ""
        raise KaecError(f"{where}: {planes} latent planes do not fit mode {mode}{model}")
    if patch is None:
        if (ty, tx) != (1, 1) if fit == "resize" else not (1 <= ty <= height and 1 <= tx <= width):
            raise KaecError(f"{where}: tile grid {ty}x{tx} does not fit a {width}x{height} image ({fit})")
        return
    need = (1, 1) if fit == "resize" else (-(-height // patch[0]), -(-width // patch[1]))
    if (ty, tx) != need:
        raise KaecError(f"{where}: a {width}x{height} image ({fit}) needs {need[0]}x{need[1]} tiles "
                        f"of {patch[1]}x{patch[0]}, the file has {ty}x{tx}")


def check(enc: Encoded, where: str, latent_dim: int, patch: tuple[int, int], channels: int,
          max_pixels: int = MAX_PIXELS) -> None:
    """The header and the latents must describe one image the model can rebuild."""
    _check_latents(enc.latents, where, latent_dim)
    if not isinstance(enc.mode, str) or not isinstance(enc.fit, str):
        raise KaecError(f"{where}: unknown mode {enc.mode!r} or fit {enc.fit!r}")
    check_layout(where, mode=enc.mode, fit=enc.fit, width=enc.width, height=enc.height, grid=enc.grid, patch=patch,
                 channels=channels)
    check_pixels(enc.width, enc.height, where, max_pixels)
    check_tiles(enc.grid, patch, where, max_pixels)


def max_file_bytes(max_pixels: int = MAX_PIXELS) -> int:
    """The largest input file read: 4 planes of one float32 a pixel, far more than any tiling's latents."""
    return 16 * max_pixels + MiB


def read_input(path: Path, max_pixels: int = MAX_PIXELS) -> bytes:
    """The bytes of a .kae, .npz or .npy file: a regular file, at most `max_file_bytes`."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise KaecError(f"{path}: unknown input type (expected {', '.join(SUFFIXES)})")
    return read_regular(path, max_file_bytes(max_pixels), f"a {suffix} file")


def _read(path: Path, latent_dim: int, patch: tuple[int, int], channels: int, max_pixels: int,
          data: bytes | None = None) -> Encoded:
    suffix = path.suffix.lower()
    if data is None:
        data = read_input(path, max_pixels)
    if suffix == ".kae":
        return from_kae(data, str(path))[0]
    if suffix not in (".npy", ".npz"):
        raise KaecError(f"{path}: unknown input type (expected {', '.join(SUFFIXES)})")
    # a .npy holds no size: its grid is the image, so at most this many tiles of `latent_dim` values
    max_values = 4 * latent_dim * max(1, max_pixels // (patch[0] * patch[1]))
    try:
        if suffix == ".npy":
            buf = io.BytesIO(data)
            return _from_array(_read_npy(buf, len(data), max_values, str(path)), path, latent_dim, patch, channels)
        return _read_npz(data, path, latent_dim, patch, max_pixels)
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, e: Exception) -> KaecError:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return KaecError(f"{path}: not a readable {path.suffix.lower()} file ({first})")


def _npy_header(f, size: int, max_values: int, where: str) -> tuple:
    """(shape, fortran order, dtype, bytes) of the .npy array `f` starts with, refused when it claims more
    than `max_values` values or more bytes than the `size` of the file or member."""
    from numpy.lib import format as npformat

    version = npformat.read_magic(f)
    reader = npformat.read_array_header_1_0 if version == (1, 0) else npformat.read_array_header_2_0
    shape, fortran, dtype = reader(f)
    values = math.prod(shape)
    if dtype.hasobject:
        raise KaecError(f"{where}: holds Python objects; expected plain numbers")
    nbytes = values * dtype.itemsize
    if values > max_values or nbytes > size:
        raise KaecError(f"{where}: header claims an array of shape {shape} ({nbytes:,} bytes), more than the "
                        f"file holds or the {max_values:,}-value limit allows")
    return shape, fortran, dtype, nbytes


def _read_npy(f, size: int, max_values: int, where: str) -> np.ndarray:
    """One .npy array from `f`, whose header is checked before the array is allocated: at most
    `max_values` values, and no more bytes than the `size` the file or zip member has."""
    shape, fortran, dtype, nbytes = _npy_header(f, size, max_values, where)
    raw = f.read(nbytes)
    if len(raw) != nbytes:
        raise KaecError(f"{where}: truncated array data ({len(raw):,} of {nbytes:,} bytes)")
    return np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C").copy()


_NPZ_KEYS = ("latents", "width", "height", "mode", "fit", "model", "weights_sha256")


def _check_npz_keys(zf: zipfile.ZipFile, path: Path) -> None:
    names = set(zf.namelist())
    missing = [k for k in _NPZ_KEYS if f"{k}.npy" not in names]
    if missing:
        raise KaecError(f"{path}: .npz without {', '.join(missing)} (expected {', '.join(_NPZ_KEYS)})")


def _read_npz(data: bytes, path: Path, latent_dim: int, patch: tuple[int, int], max_pixels: int) -> Encoded:
    """The members are read one by one, each bounded by the size its zip entry declares (zipfile inflates
    no further) and by its .npy header, so a zip bomb or a lying header is refused before inflating."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = {info.filename: info for info in zf.infolist()}
        _check_npz_keys(zf, path)

        def member(key: str, max_values: int) -> np.ndarray:
            info = infos[f"{key}.npy"]
            if info.file_size > 1024 + 8 * max_values:
                raise KaecError(f"{path}: member {key} inflates to {info.file_size:,} bytes; expected at most "
                                f"{1024 + 8 * max_values:,}")
            with zf.open(info) as f:
                return _read_npy(f, info.file_size, max_values, f"{path}: member {key}")

        small = {k: member(k, _SMALL_MEMBER // 8) for k in _NPZ_KEYS[1:]}
        width, height = int(small["width"]), int(small["height"])
        check_pixels(width, height, str(path), max_pixels)
        grid = (1, 1, 1) if str(small["fit"]) == "resize" else (1, -(-height // patch[0]), -(-width // patch[1]))
        check_tiles(grid, patch, str(path), max_pixels)
        tiles = grid[1] * grid[2]
        latents = member("latents", 4 * max(tiles, 1) * latent_dim)
    return Encoded(latents, width, height, str(small["mode"]), str(small["fit"]), str(small["model"]),
                   str(small["weights_sha256"]))


def precheck(path: Path, data: bytes, max_pixels: int = MAX_PIXELS) -> None:
    """What can be checked of an input file's bytes before its model is known, so before torch is loaded:
    a version 1 .kae (the whole file, its CRC included), an .npz's members, a .npy's header, and the size
    each claims against `max_pixels` (an .npz's latents too: at most 4 planes of one float32 a pixel, far
    more than any tiling holds; `read` applies the model's exact bound). A version 2 .kae is left to
    kaecompress.codec.bitstream.precheck, which checks every kind."""
    where, suffix = str(path), path.suffix.lower()
    if suffix == ".kae":
        if data and data[0] & 0x80:  # version 2
            return
        enc = from_kae(data, where)[0]
        check_pixels(enc.width, enc.height, where, max_pixels)
        return
    try:
        if suffix == ".npy":
            _npy_header(io.BytesIO(data), len(data), 4 * max_pixels, where)
            return
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            _check_npz_keys(zf, path)
            size = []
            for key in ("width", "height"):
                info = zf.getinfo(f"{key}.npy")
                if info.file_size > _SMALL_MEMBER:
                    raise KaecError(f"{path}: member {key} inflates to {info.file_size:,} bytes; expected at most "
                                    f"{_SMALL_MEMBER:,}")
                with zf.open(info) as f:
                    size.append(int(_read_npy(f, info.file_size, 1, f"{path}: member {key}")))
            width, height = size
            check_pixels(width, height, where, max_pixels)
            limit = 4 * max(width * height, 2 ** 16)
            latents = zf.getinfo("latents.npy")
            if latents.file_size > 1024 + 4 * limit:
                raise KaecError(f"{path}: member latents inflates to {latents.file_size:,} bytes; a "
                                f"{width}x{height} image needs at most {1024 + 4 * limit:,}")
            with zf.open(latents) as f:
                _npy_header(f, latents.file_size, limit, f"{path}: member latents")
    except _UNREADABLE as e:
        raise _unreadable(path, e) from None


def npz_weights_id(data: bytes, where: str = ".npz file") -> str | None:
    """The model id an .npz file's bytes record, read without inflating anything else; None if unreadable."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            info = zf.getinfo("weights_sha256.npy")
            if info.file_size > _SMALL_MEMBER:
                return None
            with zf.open(info) as f:
                return str(_read_npy(f, info.file_size, _SMALL_MEMBER // 4, where))
    except (KaecError, *_UNREADABLE):
        return None  # reading it properly later gives the precise error


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
