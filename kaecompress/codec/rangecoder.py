"""Entropy coding of integer latents: a range coder (constriction) driven by integer probability tables.

The tables are the whole probability model. Every latent dimension d has a row of K integer frequencies:
K-1 value symbols, symbol s standing for the integer `offsets[d] + s`, and one ESCAPE symbol (the last
column). Each frequency is >= 1 and each row sums to exactly 2**precision, so encoder and decoder see the same
model on every machine: the floats handed to constriction are `freqs / 2**precision`, exact in float64.

A stream holds T latent vectors (the tiles of one image) in this order:
  1. the T*D table symbols, row by row, each under its dimension's row of the table;
  2. for each ESCAPE, in the same order: a class `side * 32 + n` (uniform over 64), where side 0 means below
     the table (e = offsets[d] - 1 - value) and side 1 above it (e = value - offsets[d] - (K-1)), and
     n = bit_length(e + 1) - 1;
  3. the low min(n, 16) bits of e + 1 - 2**n for each escape with n >= 1 (uniform), then the bits above
     those for each escape with n > 16 (uniform).
constriction writes 32-bit words, most significant word first. The stored payload is those words as
big-endian bytes, cut to the shortest byte string that still decodes to the same symbols once zero bytes are
appended (the last kept byte may be raised by one); `encode` checks this by decoding before it returns.
"""

from __future__ import annotations

import binascii
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from kaecompress.errors import KaecError

PRECISION = 16
MAX_DIMS = 4096
MAX_SYMBOLS_PER_ROW = 4096   # K, escape included
MAX_OFFSET = 2**20           # |offsets| bound: every escaped distance then fits 31 bits
ESCAPE_CLASSES = 64          # side (2) x bit count (0..31)
_LOW_BITS = 16
_CHUNK = 1 << 16             # probabilities handed to constriction per call, in floats (bounds memory)


@dataclass(frozen=True, eq=False)
class IntegerTables:
    """The integer probability model of D latent dimensions (see the module docstring)."""

    offsets: np.ndarray          # int32 (D,)
    freqs: np.ndarray            # uint32 (D, K); last column: ESCAPE
    precision: int = PRECISION

    def __post_init__(self) -> None:
        _check_tables(self.offsets, self.freqs, self.precision, "probability tables")

    @property
    def dims(self) -> int:
        return self.freqs.shape[0]

    @property
    def symbols(self) -> int:
        """K: the number of columns, ESCAPE included."""
        return self.freqs.shape[1]

    @classmethod
    def from_pmf(cls, pmf: np.ndarray, offsets: np.ndarray, precision: int = PRECISION) -> IntegerTables:
        """Quantise per-dimension probabilities of the integers offsets[d] .. offsets[d]+K-2 (rows of `pmf`,
        shape (D, K-1)). What a row lacks of 1 is the mass outside the range and goes to ESCAPE (rows summing
        to more than 1 are normalised). Every symbol gets 1 count, the rest 2**precision - K counts are shared
        in proportion, remainders to the largest fractional parts (ties: lower index); deterministic."""
        pmf = np.asarray(pmf, dtype=np.float64)
        if pmf.ndim != 2 or pmf.shape[1] < 1 or not np.isfinite(pmf).all() or (pmf < 0).any():
            raise KaecError(f"pmf: expected a finite non-negative (D, K-1) array, got shape {pmf.shape}")
        total = pmf.sum(axis=1, keepdims=True)
        if (total <= 0).any():
            raise KaecError("pmf: a row has no probability mass")
        tail = np.maximum(1.0 - total, 0.0)
        full = np.concatenate([pmf, tail], axis=1) / np.maximum(total + tail, 1e-300)
        d, k = full.shape
        if not 2 <= k <= 2**precision:
            raise KaecError(f"pmf: {k} symbols (escape included) do not fit precision {precision}")
        share = full * float(2**precision - k)
        base = np.floor(share)
        freqs = 1 + base.astype(np.int64)
        left = 2**precision - freqs.sum(axis=1)
        order = np.argsort(-(share - base), axis=1, kind="stable")
        rank = np.empty_like(order)
        np.put_along_axis(rank, order, np.arange(k)[None, :].repeat(d, 0), axis=1)
        freqs += rank < left[:, None]
        return cls(np.asarray(offsets, dtype=np.int64).astype(np.int32), freqs.astype(np.uint32), precision)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """int32 arrays (a dtype every tensor format stores) for a safetensors file."""
        return {"offsets": self.offsets.astype(np.int32), "freqs": self.freqs.astype(np.int32),
                "precision": np.array([self.precision], dtype=np.int32)}

    @classmethod
    def from_arrays(cls, arrays, where: str = "probability tables") -> IntegerTables:
        """The tables back from `to_arrays` output; anything malformed is a KaecError naming it."""
        try:
            offsets, freqs, precision = (np.asarray(arrays[k]) for k in ("offsets", "freqs", "precision"))
        except KeyError as e:
            raise KaecError(f"{where}: missing {e} (expected offsets, freqs, precision)") from None
        for name, a in (("offsets", offsets), ("freqs", freqs), ("precision", precision)):
            if a.dtype.kind not in "iu":
                raise KaecError(f"{where}: {name} must be integers, got {a.dtype}")
        if precision.size != 1:
            raise KaecError(f"{where}: precision must be one integer, got shape {precision.shape}")
        precision = int(precision.reshape(()))
        _check_tables(offsets, freqs, precision, where)
        return cls(offsets.astype(np.int32), freqs.astype(np.uint32), precision)

    @cached_property
    def _probs(self) -> np.ndarray:
        return np.ascontiguousarray(self.freqs, dtype=np.float64) / float(2**self.precision)

    @cached_property
    def _bits(self) -> np.ndarray:
        return self.precision - np.log2(self.freqs.astype(np.float64))

    @cached_property
    def _bits_flat(self) -> np.ndarray:
        return self._bits.ravel()

    @cached_property
    def _model_cdf(self) -> np.ndarray:
        """The 24-bit cumulative table constriction codes with (see rangekernel.model_cdf)."""
        from kaecompress.codec.rangekernel import model_cdf

        return model_cdf(self.freqs, self.precision)

    @cached_property
    def _row_starts(self) -> np.ndarray:
        return np.arange(self.dims, dtype=np.int64) * self.symbols

    @cached_property
    def _offsets64(self) -> np.ndarray:
        return self.offsets.astype(np.int64)

    @cached_property
    def _chunk_rows(self) -> int:
        return max(1, _CHUNK // (self.dims * self.symbols))

    def _rows(self, count: int) -> np.ndarray:
        """Probabilities for `count` consecutive latent vectors."""
        return self._probs if count == 1 else np.tile(self._probs, (count, 1))


def _check_tables(offsets, freqs, precision, where: str) -> None:
    if not isinstance(precision, int) or not 8 <= precision <= 24:
        raise KaecError(f"{where}: precision {precision!r}; expected an integer from 8 to 24")
    if not isinstance(offsets, np.ndarray) or not isinstance(freqs, np.ndarray):
        raise KaecError(f"{where}: offsets and freqs must be numpy arrays")
    if freqs.ndim != 2 or not 1 <= freqs.shape[0] <= MAX_DIMS or not 2 <= freqs.shape[1] <= MAX_SYMBOLS_PER_ROW:
        raise KaecError(f"{where}: freqs must have shape (D, K) with 1 <= D <= {MAX_DIMS} and "
                        f"2 <= K <= {MAX_SYMBOLS_PER_ROW}, got {freqs.shape}")
    if offsets.shape != (freqs.shape[0],):
        raise KaecError(f"{where}: offsets must have shape ({freqs.shape[0]},), got {offsets.shape}")
    if offsets.dtype.kind not in "iu" or freqs.dtype.kind not in "iu":
        raise KaecError(f"{where}: offsets and freqs must be integers, got {offsets.dtype} and {freqs.dtype}")
    if np.abs(offsets.astype(np.int64)).max() > MAX_OFFSET:
        raise KaecError(f"{where}: an offset is beyond +-{MAX_OFFSET}")
    wide = freqs.astype(np.int64)
    if wide.min() < 1:
        raise KaecError(f"{where}: every frequency must be at least 1")
    sums = wide.sum(axis=1)
    if (sums != 2**precision).any():
        bad = int(np.argmax(sums != 2**precision))
        raise KaecError(f"{where}: row {bad} sums to {int(sums[bad])}, expected 2**{precision}")


# ---- coding ------------------------------------------------------------------------------------------

def _constriction():
    import constriction

    return constriction.stream


class _Models:
    """constriction's model objects, made once per process."""

    def __init__(self) -> None:
        stream = _constriction()
        self.categorical = stream.model.Categorical(perfect=False)
        self.escape_class = stream.model.Uniform(ESCAPE_CLASSES)
        self.uniform = stream.model.Uniform()
        self.encoder = stream.queue.RangeEncoder
        self.decoder = stream.queue.RangeDecoder


_models: _Models | None = None


def _get_models() -> _Models:
    global _models
    if _models is None:
        _models = _Models()
    return _models


_INT32 = (-(2**31), 2**31 - 1)


def _as_symbols(symbols, tables: IntegerTables) -> np.ndarray:
    sym = np.asarray(symbols)
    if sym.ndim != 2 or sym.shape[1] != tables.dims:
        raise KaecError(f"latents: expected shape (T, {tables.dims}), got {sym.shape}")
    if sym.dtype.kind not in "iu":
        raise KaecError(f"latents: expected integers, got {sym.dtype}")
    if sym.dtype == np.uint64:  # uint64 - int64 would be float64
        if sym.size and sym.max() > _INT32[1]:
            raise KaecError("latents: a value is outside the 32-bit integer range")
        sym = sym.astype(np.int64)
    return sym


def _split(sym: np.ndarray, tables: IntegerTables):
    """Table indices (ESCAPE where out of range) and, for the escapes, their class, distance + 1 and the
    bit count of that distance; the common case (nothing escaped) takes two reductions."""
    k = tables.symbols
    rel = sym - tables._offsets64  # int64, a new contiguous array
    if rel.size == 0 or rel.view(np.uint64).max() < k - 1:  # negative values wrap to huge ones
        return rel.astype(np.int32).ravel(), _NONE, _NONE, _NONE
    if sym.min() < _INT32[0] or sym.max() > _INT32[1]:
        raise KaecError("latents: a value is outside the 32-bit integer range")
    inside = (rel >= 0) & (rel < k - 1)
    index = np.where(inside, rel, k - 1).astype(np.int32).ravel()
    out = rel.ravel()[~inside.ravel()]
    above = out >= k - 1
    e1 = np.where(above, out - (k - 1), -out - 1) + 1  # distance beyond the table edge, plus 1 (>= 1)
    nbits = np.floor(np.log2(e1.astype(np.float64))).astype(np.int64)
    nbits += np.left_shift(1, nbits + 1) <= e1  # exact bit_length - 1 where log2 rounded
    nbits -= np.left_shift(1, nbits) > e1
    classes = (above.astype(np.int64) * 32 + nbits).astype(np.int32)
    return index, classes, e1, nbits


_NONE = np.zeros(0, dtype=np.int64)


def _encode_words(index, classes, e1, nbits, tables: IntegerTables) -> np.ndarray:
    models = _models or _get_models()
    enc = models.encoder()
    d = tables.dims
    rows = tables._chunk_rows
    t = len(index) // d
    if t == 1 and not len(classes):  # one tile, nothing escaped: the common case
        enc.encode(index, models.categorical, tables._probs)
        return enc
    for start in range(0, t, rows):
        count = min(rows, t - start)
        enc.encode(index[start * d:(start + count) * d], models.categorical, tables._rows(count))
    if len(classes):
        enc.encode(classes, models.escape_class)
        mantissa = e1 - np.left_shift(1, nbits)
        low = nbits >= 1
        if low.any():
            width = np.minimum(nbits[low], _LOW_BITS)
            enc.encode((mantissa[low] & ((1 << width) - 1)).astype(np.int32), models.uniform,
                       np.left_shift(1, width).astype(np.int32))
        high = nbits > _LOW_BITS
        if high.any():
            enc.encode((mantissa[high] >> _LOW_BITS).astype(np.int32), models.uniform,
                       np.left_shift(1, nbits[high] - _LOW_BITS).astype(np.int32))
    return enc


def encode(symbols: np.ndarray, tables: IntegerTables) -> bytes:
    """One byte string for T latent vectors (T, D) of integers; values outside the tables are escaped.
    The string is the shortest that decodes to the same symbols (checked by decoding it)."""
    sym = _as_symbols(symbols, tables)
    t = sym.shape[0]
    if t == 0:
        return b""
    index, classes, e1, nbits = _split(sym, tables)
    enc = _encode_words(index, classes, e1, nbits, tables)
    if len(classes):
        expected = sym.astype(np.int32).tobytes()

        def decodes(data: bytes) -> bool:
            try:
                return _decode(data, tables, t).tobytes() == expected
            except KaecError:
                return False
    else:  # only the table symbols to compare
        expected = index.tobytes()

        def decodes(data: bytes) -> bool:
            try:
                return _decode_index(_words(data), tables, t)[1].tobytes() == expected
            except KaecError:
                return False

    best = _shortest_in_interval(enc)
    if best is not None and decodes(best):
        return best
    return _shortest_by_search(enc.get_compressed().astype(">u4").tobytes(), decodes)


def encode_each(symbols: np.ndarray, tables: IntegerTables, head: bytes = b"",
                crc_start: int | None = None) -> list[bytes]:
    """`[encode(row[None], tables) for row in symbols]`, the same bytes, for N one-tile files (N, D) at once:
    the checks and index arithmetic run over the whole batch, a file with escapes takes `encode`, and the
    payloads are not decoded again as `encode` does (`_shortest_in_interval` is exact). From COMPILED_FROM
    files on, the files without escapes go through the compiled coder (`rangekernel`). Each payload comes as
    `head + payload`, then, with `crc_start`, its 2-byte `binascii.crc_hqx(payload, crc_start)`."""
    sym = _as_symbols(symbols, tables)
    if not len(sym):
        return []
    rel = sym - tables._offsets64
    plain = rel.view(np.uint64).max(axis=1) < tables.symbols - 1
    index = rel.astype(np.int32)
    kernel = _compiled(len(sym))
    if kernel is not None:
        out = [None] * len(sym)
        rows = np.flatnonzero(plain)
        for i, data in zip(rows.tolist(), kernel.encode(index[rows], tables._model_cdf, head, crc_start)):
            out[i] = data
        for i in np.flatnonzero(~plain).tolist():
            out[i] = _framed(encode(sym[i:i + 1], tables), head, crc_start)
        return out
    models = _models or _get_models()
    family, probs, encoder = models.categorical, tables._probs, models.encoder
    out = []
    for i, (row, ok) in enumerate(zip(index, plain.tolist())):
        best = None
        if ok:
            enc = encoder()
            enc.encode(row, family, probs)
            best = _shortest_in_interval(enc)  # exact, so not decoded again here (tests decode every file)
        out.append(_framed(best if best is not None else encode(sym[i:i + 1], tables), head, crc_start))
    return out


def _framed(payload: bytes, head: bytes, crc_start: int | None) -> bytes:
    if crc_start is None:
        return head + payload
    return head + payload + binascii.crc_hqx(payload, crc_start).to_bytes(2, "big")


COMPILED_FROM = 64  # files a batch needs before numba's start-up (about half a second, once) pays off


def _compiled(files: int):
    """The compiled coder (module rangekernel) for a batch of this many files, or None (constriction)."""
    if files < COMPILED_FROM:
        return None
    try:
        from kaecompress.codec import rangekernel
    except (ImportError, RuntimeError):  # numba missing, or no folder to cache its code in: constriction
        return None
    return rangekernel


def decode_each(payloads, tables: IntegerTables, names=None) -> np.ndarray:
    """`np.concatenate([decode(p, tables, 1) for p in payloads])`, for N one-tile payloads at once (N, D)
    int32. A damaged payload is a KaecError naming it (`names[i]`, else its position)."""
    d, k = tables.dims, tables.symbols
    kernel = _compiled(len(payloads))
    if kernel is not None:
        index, bad = kernel.decode(payloads, tables._model_cdf)
        if bad >= 0:  # constriction's InvalidData
            where = names[bad] if names is not None else f"file {bad} of the batch"
            raise KaecError(f"{where}: entropy-coded payload is damaged (invalid data)")
    else:
        models = _models or _get_models()
        family, probs = models.categorical, tables._probs
        index = np.empty((len(payloads), d), dtype=np.int32)
        for i, payload in enumerate(payloads):
            try:
                index[i] = models.decoder(_words(payload)).decode(family, probs)
            except BaseException as e:
                if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
                    raise
                where = names[i] if names is not None else f"file {i} of the batch"
                raise KaecError(f"{where}: entropy-coded payload is damaged ({type(e).__name__})") from None
    values = index + tables.offsets
    for i in np.nonzero((index == k - 1).any(axis=1))[0]:  # escapes: rare, decoded in full
        try:
            values[i] = _decode(bytes(payloads[i]), tables, 1)[0]
        except KaecError as e:
            raise KaecError(f"{names[i] if names is not None else f'file {i} of the batch'}: {e}") from None
    return values


def _shortest_in_interval(enc) -> bytes | None:
    """The shortest byte string whose value, zero-extended, lies in the coder's final interval: the words
    written so far followed by the state [lower, lower + range) of the 64-bit state; None where that interval
    cannot be read exactly.

    Exact because of how constriction's range coder works (stream/queue.rs): a word is written only once no
    carry can reach it; words a carry could still reach are held back and counted by `pos()`, and sealing
    (`get_compressed`) writes them as they stand before that carry, unless `lower + 2**32 - 1` wraps past
    2**64 (then after it: the one case answered None). The decoder mirrors the encoder's integer arithmetic
    and reads missing words as zeros, so any value in the interval decodes to the same symbols."""
    position, (lower, width) = enc.pos()
    if lower > _LAST_LOWER:
        return None
    if position:  # the words already out go above the 64-bit state, in order (reversed, read little-endian)
        words = enc.get_compressed()[position - 1::-1].astype("<u4", copy=False)
        lower |= int.from_bytes(words.tobytes(), "little") << 64
    return _shortest_bytes(lower, width, 32 * position + 64)


def _shortest_bytes(lo: int, width: int, total: int) -> bytes:
    """The fewest bytes whose value, read as the top of a `total`-bit number, lies in [lo, lo + width).
    Rounding lo up to a multiple of 2**s stays below lo + width for every s up to the larger of: the highest
    bit where lo and lo + width - 1 differ, less one, and lo's trailing zeros; the bytes keep the bits above."""
    if not lo:
        return b""
    free = max((lo ^ (lo + width - 1)).bit_length(), (lo & -lo).bit_length()) - 1
    n = (total - free + 7) >> 3
    return (-(-lo >> (total - 8 * n))).to_bytes(n, "big")


_LAST_LOWER = 2**64 - 2**32  # beyond it, lower + 2**32 - 1 (sealing's point) wraps past 2**64


def _shortest_by_search(full: bytes, decodes) -> bytes:
    """Fallback: the shortest prefix of the sealed stream, as is or raised by one in its last byte, that
    decodes right (the lengths that work form an interval ending at len(full)), lowered while it still
    decodes: the same bytes as `_shortest_in_interval`."""
    def candidate(n: int) -> bytes | None:
        head = full[:n]
        if n:
            up = int.from_bytes(head, "big") + 1
            if up < 1 << (8 * n) and decodes(up.to_bytes(n, "big")):
                return up.to_bytes(n, "big")
        return head if decodes(head) else None

    best, n = full, len(full)
    if not decodes(full):  # the sealed stream always decodes; anything else is a bug in the coder
        raise RuntimeError("range coder: the encoded stream does not decode to its symbols")
    while n > 0:
        shorter = candidate(n - 1)
        if shorter is None:
            break
        best, n = shorter, n - 1
    value = int.from_bytes(best, "big")  # the smallest value of that length, as the interval rule picks
    while value > 0 and decodes((value - 1).to_bytes(n, "big")):
        value -= 1
    return value.to_bytes(n, "big")


def decode(data: bytes, tables: IntegerTables, count: int) -> np.ndarray:
    """The `count` latent vectors (count, D) int32 that `encode` turned into `data`. Damaged data gives
    other symbols or a KaecError (the container's checksum tells which); memory stays O(count * D)."""
    if not isinstance(count, (int, np.integer)) or count < 0:
        raise KaecError(f"latents: invalid tile count {count!r}")
    return _decode(bytes(data), tables, int(count))


def _words(data: bytes) -> np.ndarray:
    """The payload as constriction's words: big-endian, zero bytes appended to a whole word."""
    return np.frombuffer(data + bytes(-len(data) % 4), dtype=">u4").astype(np.uint32)


def _fail(e: BaseException):
    if isinstance(e, (KeyboardInterrupt, SystemExit, MemoryError)):
        raise e
    raise KaecError(f"entropy-coded payload is damaged ({type(e).__name__})") from None


def _decode_index(words: np.ndarray, tables: IntegerTables, count: int):
    """The decoder positioned after the table symbols, and those symbols (count * D,) int32."""
    models = _models or _get_models()
    rows = tables._chunk_rows
    try:
        dec = models.decoder(words)
        if count <= rows:
            return dec, dec.decode(models.categorical, tables._rows(count))
        parts = [dec.decode(models.categorical, tables._rows(min(rows, count - s))) for s in range(0, count, rows)]
        return dec, np.concatenate(parts)
    except BaseException as e:  # constriction rejects some damaged streams (incl. its Rust panics)
        _fail(e)


def _decode(data: bytes, tables: IntegerTables, count: int) -> np.ndarray:
    models = _get_models()
    d, k = tables.dims, tables.symbols
    if count == 0:
        return np.zeros((0, d), dtype=np.int32)
    dec, index = _decode_index(_words(data), tables, count)
    index = index.reshape(count, d)
    if index.max() < k - 1:
        return index + tables.offsets
    escaped = index == k - 1
    values = index.astype(np.int64) + tables._offsets64
    n_esc = int(np.count_nonzero(escaped))
    try:
        classes = dec.decode(models.escape_class, n_esc).astype(np.int64)
        above, nbits = classes >= 32, classes % 32
        mantissa = np.zeros(n_esc, dtype=np.int64)
        low = nbits >= 1
        if low.any():
            width = np.minimum(nbits[low], _LOW_BITS)
            mantissa[low] = dec.decode(models.uniform, np.left_shift(1, width).astype(np.int32))
        high = nbits > _LOW_BITS
        if high.any():
            top = dec.decode(models.uniform, np.left_shift(1, nbits[high] - _LOW_BITS).astype(np.int32))
            mantissa[high] |= top.astype(np.int64) << _LOW_BITS
    except BaseException as e:
        _fail(e)
    e = np.left_shift(1, nbits) + mantissa - 1
    off = tables._offsets64[np.nonzero(escaped)[1]]
    values[escaped] = np.where(above, off + (k - 1) + e, off - 1 - e)
    if values.min() < _INT32[0] or values.max() > _INT32[1]:
        raise KaecError("entropy-coded payload is damaged (an escaped value is outside 32 bits)")
    return values.astype(np.int32)


def _ideal(index, classes, nbits, tables: IntegerTables) -> float:
    t = len(index) // tables.dims
    base = tables._row_starts if t == 1 else np.tile(tables._row_starts, t)
    bits = float(tables._bits_flat[base + index].sum())
    return bits + len(classes) * math.log2(ESCAPE_CLASSES) + float(nbits.sum()) if len(classes) else bits


def symbol_bits(symbols: np.ndarray, tables: IntegerTables) -> np.ndarray:
    """Information content (bits) of each value in `symbols` (T, D) under its dimension's row, escapes
    included: float64 (T, D)."""
    sym = _as_symbols(symbols, tables)
    index, classes, _, nbits = _split(sym, tables)
    bits = tables._bits_flat[np.tile(tables._row_starts, len(sym)) + index]
    if len(classes):
        bits[index == tables.symbols - 1] += math.log2(ESCAPE_CLASSES) + nbits
    return bits.reshape(len(sym), tables.dims)


def column_bits(symbols: np.ndarray, tables: IntegerTables) -> np.ndarray:
    """Mean information content (bits) of each dimension's values in `symbols` (T, D), escapes included."""
    return symbol_bits(symbols, tables).mean(axis=0)


def ideal_bits(symbols: np.ndarray, tables: IntegerTables) -> float:
    """Information content of `symbols` (T, D) under the tables, escapes included: the size a perfect
    entropy coder would reach, in bits."""
    sym = _as_symbols(symbols, tables)
    index, classes, _, nbits = _split(sym, tables)
    return _ideal(index, classes, nbits, tables)
