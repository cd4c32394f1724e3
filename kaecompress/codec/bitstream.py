"""The `.kae` version 2 container: entropy-coded integer latents behind a header of 1 byte in the common case.

The layout is specified in docs/kae-format.md. In short, the first byte says what follows:

    0b10iiiiii  compact: one tile of the model's native size, mode L, fit tile, shipped codec model i (0..63)
    0b11r mmm f c  extended: c = 1 codec model id follows (varint), c = 0 the first 8 bytes of the model's
                weights sha256 follow; f = 1 fit resize; mmm = mode (L, LA, RGB, RGBA, 1); r reserved (0);
                then varints width, height, planes, tiles_y, tiles_x
    0x4B ('K')  a version 1 file (kaecompress.codec.containers); any other byte below 0x80 is refused

then the range-coded payload (kaecompress.codec.rangecoder) and a 2-byte check: CRC-16/CCITT (initial value
0xFFFF, big-endian) over the model's full 32-byte weights sha256, the header and the payload.

Reading is two steps, because the payload can only be decoded with the model's tables:
`parse_header(data)` says which model (codec id or weights-hash prefix), then
`read_payload(data, header, tables, weights_sha256)` checks the CRC and decodes the latent integers.
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from kaecompress.codec import containers, rangecoder
from kaecompress.codec.containers import check_layout
from kaecompress.errors import KaecError

VERSION = 2
MODES = ("L", "LA", "RGB", "RGBA", "1")   # as in version 1
FITS = ("tile", "resize")
MAX_PIXELS = 178_956_970                   # Pillow's own limit, as in version 1
MAX_COMPACT_ID = 63
CHECK_BYTES = 2
_COMPACT, _EXTENDED, _TAG = 0x80, 0xC0, 0xC0
_V1_FIRST = 0x4B  # "K" of version 1's magic "KAEC"
_MAX_VARINT = 5   # bytes: values below 2**35


@dataclass(frozen=True)
class Header:
    """What the first bytes of a version 2 file say. A compact header leaves width and height to the model
    (one tile of its native size): they are None until `with_tile` fills them in."""

    codec_id: int | None        # a shipped codec model's id, or None when model_id is given
    model_id: str | None        # first 8 bytes of the model's weights sha256, hex (16 characters)
    width: int | None
    height: int | None
    mode: str
    fit: str
    grid: tuple[int, int, int]  # planes, tiles_y, tiles_x
    size: int                   # header bytes
    version: int = VERSION

    @property
    def compact(self) -> bool:
        return self.width is None

    @property
    def tiles(self) -> int:
        planes, ty, tx = self.grid
        return planes * ty * tx

    def with_tile(self, tile: tuple[int, int]) -> Header:
        """Width and height filled in from the model's tile (height, width) for a compact header."""
        if not self.compact:
            return self
        return replace(self, width=int(tile[1]), height=int(tile[0]))


def version(data: bytes, where: str = ".kae file") -> int:
    """1 or 2 from the first byte; anything else is a KaecError naming `where`."""
    if not data:
        raise KaecError(f"{where}: empty file; expected a .kae file")
    if data[0] & _COMPACT:
        return VERSION
    if data[0] == _V1_FIRST:
        return 1
    raise KaecError(f"{where}: unsupported .kae version (first byte 0x{data[0]:02x})")


# ---- writing ----------------------------------------------------------------------------------------

def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


@lru_cache(maxsize=64)
def _identity(weights_sha256: str) -> tuple[bytes, int]:
    """The model's 32-byte sha256 and the CRC state after it (every file's check starts there)."""
    try:
        raw = bytes.fromhex(weights_sha256)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise KaecError(f"weights sha256: expected 64 hex characters, got {weights_sha256!r}")
    return raw, binascii.crc_hqx(raw, 0xFFFF)


def _check(identity: tuple[bytes, int], body: bytes) -> bytes:
    return binascii.crc_hqx(body, identity[1]).to_bytes(CHECK_BYTES, "big")


def one_tile(grid: tuple[int, int, int], *, width: int, height: int, mode: str, fit: str,
             tile: tuple[int, int] | None) -> bool:
    """Whether an image is one grey tile of the model's size (`tile`: height, width): what `write_tiles`
    writes, and what gets the 1-byte header with a compact codec id."""
    return (tuple(grid) == (1, 1, 1) and mode == "L" and fit == "tile" and tile is not None
            and (height, width) == tuple(tile))


def write(symbols: np.ndarray, *, width: int, height: int, mode: str, fit: str,
          tables: rangecoder.IntegerTables, weights_sha256: str, codec_id: int | None,
          tile: tuple[int, int] | None = None) -> bytes:
    """A whole `.kae` v2 file for the latent integers (planes, tiles_y, tiles_x, D) of one image.
    `tile` is the model's (height, width): with a codec id, a single native-size L tile gets the 1-byte
    header. Without a codec id the header names the model by its weights-hash prefix."""
    identity = _identity(weights_sha256)
    sym = np.asarray(symbols)
    if sym.ndim != 4 or sym.shape[-1] != tables.dims or min(sym.shape) < 1:
        raise KaecError(f"latents: expected shape (planes, tiles_y, tiles_x, {tables.dims}), got {sym.shape}")
    if mode not in MODES or fit not in FITS:
        raise KaecError(f"unknown mode {mode!r} or fit {fit!r} (expected one of {MODES}, {FITS})")
    if codec_id is not None and not 0 <= codec_id < 2**32:
        raise KaecError(f"codec id {codec_id}: expected 0 to 2**32-1")
    planes, ty, tx, d = sym.shape
    if not 1 <= planes <= 4 or width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise KaecError(f"image {width}x{height} with {planes} planes: outside what a .kae file holds")
    if (codec_id is not None and codec_id <= MAX_COMPACT_ID
            and one_tile((planes, ty, tx), width=width, height=height, mode=mode, fit=fit, tile=tile)):
        head = bytes([_COMPACT | codec_id])
    else:
        flags = (codec_id is not None) | (FITS.index(fit) << 1) | (MODES.index(mode) << 2)
        model = _varint(codec_id) if codec_id is not None else identity[0][:8]
        head = bytes([_EXTENDED | flags]) + model + b"".join(map(_varint, (width, height, planes, ty, tx)))
    body = head + rangecoder.encode(sym.reshape(-1, d), tables)
    return body + _check(identity, body)


def write_tiles(symbols: np.ndarray, *, tables: rangecoder.IntegerTables, weights_sha256: str,
                codec_id: int | None, tile: tuple[int, int]) -> list[bytes]:
    """The files of N images that are each one grey tile of the model's size (a batch of digits), from their
    latent integers (N, D): the same bytes as `write` gives each, at about half its cost per file."""
    identity = _identity(weights_sha256)
    sym = np.asarray(symbols)
    if sym.ndim != 2 or sym.shape[1] != tables.dims:
        raise KaecError(f"latents: expected shape (N, {tables.dims}), got {sym.shape}")
    height, width = int(tile[0]), int(tile[1])
    if codec_id is None or not 0 <= codec_id <= MAX_COMPACT_ID:
        return [write(row.reshape(1, 1, 1, -1), width=width, height=height, mode="L", fit="tile", tables=tables,
                      weights_sha256=weights_sha256, codec_id=codec_id, tile=tile) for row in sym]
    head = bytes([_COMPACT | codec_id])
    return rangecoder.encode_each(sym, tables, head=head, crc_start=binascii.crc_hqx(head, identity[1]))


# ---- reading ----------------------------------------------------------------------------------------

def parse_header(data: bytes, where: str = ".kae file") -> Header:
    """The header of a version 2 file: enough to find the model. KaecError for anything malformed."""
    data = bytes(data)
    if data and data[0] & _TAG == _COMPACT:
        if len(data) < 1 + CHECK_BYTES:
            raise KaecError(f"{where}: truncated .kae file")
        return _compact_header(data[0] & 0x3F)
    if version(data, where) != VERSION:
        raise KaecError(f"{where}: a version 1 file; read it with kaecompress.codec.containers.from_kae")
    first = data[0]
    flags = first & 0x3F
    if flags & 0x20 or (flags >> 2) & 0x07 >= len(MODES):
        raise KaecError(f"{where}: unsupported .kae header flags 0x{flags:02x}")
    pos = 1
    codec_id = model_id = None
    if flags & 1:
        codec_id, pos = _read_varint(data, pos, where)
    else:
        if len(data) < pos + 8:
            raise KaecError(f"{where}: truncated .kae file")
        model_id, pos = data[pos:pos + 8].hex(), pos + 8
    values = []
    for _ in range(5):
        value, pos = _read_varint(data, pos, where)
        values.append(value)
    width, height, planes, ty, tx = values
    if len(data) < pos + CHECK_BYTES:
        raise KaecError(f"{where}: truncated .kae file")
    if width < 1 or height < 1 or width * height > MAX_PIXELS:
        raise KaecError(f"{where}: image size {width}x{height}; expected 1 to {MAX_PIXELS:,} pixels")
    if not 1 <= planes <= 4 or not 1 <= ty <= height or not 1 <= tx <= width:
        raise KaecError(f"{where}: tile grid {planes}x{ty}x{tx} does not fit a {width}x{height} image")
    mode, fit = MODES[(flags >> 2) & 0x07], FITS[(flags >> 1) & 1]
    check_layout(where, mode=mode, fit=fit, width=width, height=height, grid=(planes, ty, tx))
    return Header(codec_id, model_id, width, height, mode, fit, (planes, ty, tx), pos)


@lru_cache(maxsize=None)
def _compact_header(codec_id: int) -> Header:
    return Header(codec_id, None, None, None, "L", "tile", (1, 1, 1), 1)


@lru_cache(maxsize=256)
def _sized_compact(codec_id: int, height: int, width: int) -> Header:
    return _compact_header(codec_id).with_tile((height, width))


def _read_varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    value = 0
    for i in range(_MAX_VARINT):
        if pos + i >= len(data):
            raise KaecError(f"{where}: truncated .kae file")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if byte == 0 and i:  # one spelling per number
                break
            return value, pos + i + 1
    raise KaecError(f"{where}: malformed number in the .kae header at byte {pos}")


def check_sum(data: bytes, header: Header, weights_sha256: str, where: str = ".kae file") -> None:
    """The file names this model (if by hash) and its CRC, started from this model's identity, holds."""
    if header.model_id is not None and header.model_id != weights_sha256[:16].lower():
        raise KaecError(f"{where}: encoded with another model (id {header.model_id}) than the one given "
                        f"(id {weights_sha256[:16]})")
    body = data[:-CHECK_BYTES]
    if len(body) < header.size or _check(_identity(weights_sha256), body) != data[-CHECK_BYTES:]:
        raise KaecError(f"{where}: checksum mismatch: the file is damaged, truncated or was made with "
                        "another model")


def read_payload(data: bytes, header: Header, tables: rangecoder.IntegerTables, weights_sha256: str,
                 tile: tuple[int, int] | None = None, where: str = ".kae file") -> np.ndarray:
    """The latent integers (planes, tiles_y, tiles_x, D) int32, once the file is shown to be whole and made
    with this model. With the model's `tile` (height, width), the grid is checked against the image size."""
    data = bytes(data)
    check_sum(data, header, weights_sha256, where)
    if tile is not None:
        full = header.with_tile(tile)
        check_layout(where, mode=full.mode, fit=full.fit, width=full.width, height=full.height, grid=full.grid,
                     patch=tile)
    symbols = rangecoder.decode(data[header.size:-CHECK_BYTES], tables, header.tiles)
    return symbols.reshape(*header.grid, tables.dims)


def read_tiles(files, *, tables: rangecoder.IntegerTables, weights_sha256: str, tile: tuple[int, int],
               names=None) -> tuple[list[Header], np.ndarray]:
    """Headers (sizes filled in) and latent integers (N, D) of N files that each hold one tile, checked as
    `read_payload` checks them, at a fraction of its cost per file. Errors name the file (`names[i]`)."""
    headers, payloads = [], []
    names = list(names) if names is not None else [f"file {i}" for i in range(len(files))]
    for where, data in zip(names, files):
        data = bytes(data)
        header = parse_header(data, where)
        if header.grid != (1, 1, 1) or (not header.compact and header.fit == "tile"
                                        and (header.height > tile[0] or header.width > tile[1])):
            raise KaecError(f"{where}: holds {header.grid[1]}x{header.grid[2]} tiles of {header.grid[0]} planes "
                            f"for a {header.width}x{header.height} image; expected one tile")
        check_sum(data, header, weights_sha256, where)
        headers.append(_sized_compact(header.codec_id, int(tile[0]), int(tile[1])) if header.compact else header)
        payloads.append(data[header.size:-CHECK_BYTES])
    return headers, rangecoder.decode_each(payloads, tables, names)


def read(data: bytes, *, resolve: Callable[[Header], tuple]) -> tuple[Header, np.ndarray]:
    """Both steps: `resolve(header)` returns the model's (tables, weights_sha256, tile (height, width))."""
    header = parse_header(data)
    tables, weights_sha256, tile = resolve(header)
    symbols = read_payload(data, header, tables, weights_sha256, tile)
    return header.with_tile(tile), symbols


def precheck(path: Path, data: bytes, max_pixels: int = containers.MAX_PIXELS) -> None:
    """`containers.precheck` for every input file, a version 2 .kae's header included: what can be checked
    before the file's model is known, so before torch is loaded."""
    if path.suffix.lower() == ".kae" and data and data[0] & 0x80:
        header = parse_header(data, str(path))
        if not header.compact:
            containers.check_pixels(header.width, header.height, str(path), max_pixels)
        return
    containers.precheck(path, data, max_pixels)
