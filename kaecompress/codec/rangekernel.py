"""The range coder of `rangecoder`, compiled with numba for batches of one-tile files.

constriction codes a latent vector in one call, but builds each symbol's model from floats again and is
called once per file; for a batch of files that Python and model work costs more than the network (a
384-latent file: about 11 us of constriction per image against 22 us of network). These kernels run the same
arithmetic over integer tables for the whole batch in one call:

- constriction's model of a table row: `Categorical(perfect=False)` turns the row's probabilities
  `freqs / 2**p` into a 24-bit cumulative table, cdf[i] = floor(cum[i] * (2**24 - K) / 2**p) + i, where
  cum[i] is the sum of the first i frequencies (exact in float64, so computed here in integers);
- its range coder: a 64-bit state (lower, range) starting at (0, 2**64 - 1); a symbol sets
  scale = range >> 24, lower += scale * cdf[s] (a carry goes into the words already written),
  range = scale * (cdf[s + 1] - cdf[s]), and while range < 2**32 the top word of lower is written and both
  shift left by 32 bits; the decoder mirrors it on point - lower, reading zero words past the end, and a
  quantile >= 2**24 is damaged data, as constriction reports it.

The payload is the shortest byte string inside the final interval, the rule of
`rangecoder._shortest_bytes`; with the file's CRC (`binascii.crc_hqx`) the kernel writes whole files. Same
bytes and the same symbols as constriction's path: tests compare both on random tables and on the golden files.
Files with escapes and single files take constriction's path (`rangecoder`).
"""

from __future__ import annotations

from functools import lru_cache

import numba
import numpy as np

MODEL_PRECISION = 24   # constriction's Categorical fixed point


def model_cdf(freqs: np.ndarray, precision: int) -> np.ndarray:
    """The (D, K+1) uint64 cumulative table constriction codes row d of `freqs` (sums 2**precision) with."""
    freqs = np.asarray(freqs, dtype=np.int64)
    d, k = freqs.shape
    cum = np.zeros((d, k + 1), dtype=np.int64)
    np.cumsum(freqs, axis=1, out=cum[:, 1:])
    cdf = (cum * (2**MODEL_PRECISION - k)) >> precision  # below 2**56: exact in int64
    cdf += np.arange(k + 1)
    return cdf.astype(np.uint64)


@lru_cache(maxsize=1)
def crc_table() -> np.ndarray:
    """The 256 entries of CRC-CCITT (polynomial 0x1021, most significant bit first): `binascii.crc_hqx`."""
    table = np.zeros(256, dtype=np.uint16)
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table[byte] = crc & 0xFFFF
    return table


def encode(index: np.ndarray, cdf: np.ndarray, head: bytes = b"", crc_start: int | None = None) -> list[bytes]:
    """The payloads of N one-tile rows of table indices (N, D) int32, no ESCAPE among them, each framed as
    `head + payload`, followed by its CRC (`binascii.crc_hqx(payload, crc_start)`, 2 bytes big-endian) when
    `crc_start` is given: a one-tile file in one pass (see `bitstream.write_tiles`)."""
    index = np.ascontiguousarray(index, dtype=np.int32)
    n, d = index.shape
    if d != cdf.shape[0] or (n and (index.min() < 0 or index.max() >= cdf.shape[1] - 2)):
        raise ValueError("rangekernel.encode: indices outside the table's symbols (ESCAPE excluded)")
    prefix = np.frombuffer(head, dtype=np.uint8)
    out = np.empty(n * (len(prefix) + 4 * d + 8 + 2), dtype=np.uint8)  # a symbol writes at most one word
    ends = np.empty(n, dtype=np.int64)
    _encode(index, cdf, prefix, -1 if crc_start is None else int(crc_start), crc_table(), out, ends)
    blob = out[:ends[-1]].tobytes() if n else b""
    starts = [0, *ends[:-1].tolist()]
    return [blob[a:b] for a, b in zip(starts, ends.tolist())]


def decode(payloads, cdf: np.ndarray) -> tuple[np.ndarray, int]:
    """Table indices (N, D) int32 of N one-tile payloads, and the position of the first one the decoder
    finds damaged (-1 if none; the rows from it on are not filled)."""
    lengths = np.fromiter((len(p) for p in payloads), dtype=np.int64, count=len(payloads))
    starts = np.zeros(len(payloads) + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    data = np.frombuffer(b"".join(payloads), dtype=np.uint8)
    index = np.empty((len(payloads), cdf.shape[0]), dtype=np.int32)
    bad = _decode(data, starts, cdf, index)
    return index, int(bad)


_jit = numba.njit(cache=True, nogil=True)
u64 = np.uint64
TOP = u64(1) << u64(32)  # range below it: a word is written


@_jit
def _encode(index, cdf, head, crc_start, crc, out, ends):
    n, d = index.shape
    words = np.empty(d + 2, dtype=np.uint32)
    num = np.empty(4 * d + 8, dtype=np.uint8)   # the interval's low end, big-endian bytes
    last = np.empty(4 * d + 8, dtype=np.uint8)  # and its high end
    pos = 0
    for i in range(n):
        lower, rng, count = u64(0), u64(0xFFFFFFFFFFFFFFFF), 0
        for j in range(d):
            s = index[i, j]
            c = cdf[j, s]
            scale = rng >> u64(24)
            rng = scale * (cdf[j, s + 1] - c)
            new = lower + scale * c
            if new < lower:  # carry into the words written
                k = count - 1
                while k >= 0:
                    words[k] += np.uint32(1)
                    if words[k] != 0:
                        break
                    k -= 1
            lower = new
            if rng < TOP:
                rng <<= u64(32)
                words[count] = np.uint32(lower >> u64(32))
                count += 1
                lower <<= u64(32)
        size = 4 * count + 8
        for k in range(count):
            w = words[k]
            for b in range(4):
                num[4 * k + b] = np.uint8((w >> np.uint32(24 - 8 * b)) & np.uint32(255))
        high = lower + (rng - u64(1))
        carry = high < lower
        for b in range(8):
            num[4 * count + b] = np.uint8((lower >> u64(56 - 8 * b)) & u64(255))
            last[4 * count + b] = np.uint8((high >> u64(56 - 8 * b)) & u64(255))
        for k in range(4 * count - 1, -1, -1):  # the high end's words: the low end's plus the carry
            v = np.int64(num[k]) + carry
            last[k] = np.uint8(v & 255)
            carry = v > 255
        for k in range(len(head)):
            out[pos + k] = head[k]
        o = pos + len(head)
        o += _shortest(num, last, size, out[o:])
        if crc_start >= 0:
            value = crc_start
            for k in range(pos + len(head), o):
                value = ((value << 8) & 0xFFFF) ^ np.int64(crc[((value >> 8) ^ np.int64(out[k])) & 255])
            out[o] = np.uint8(value >> 8)
            out[o + 1] = np.uint8(value & 255)
            o += 2
        pos = o
        ends[i] = pos


@_jit
def _shortest(num, last, size, out):
    """`rangecoder._shortest_bytes` on the big-endian bytes of the interval's ends [num, last] (`size` bytes
    each): written to `out`, their count returned. Keeps every bit above the larger of (the highest bit
    where the ends differ, less one) and the low end's trailing zeros, rounding up where bits below are
    dropped; a zero low end is the empty payload."""
    nz = size - 1
    while nz >= 0 and num[nz] == 0:
        nz -= 1
    if nz < 0:
        return 0
    first = 0
    while first < size and num[first] == last[first]:
        first += 1
    differ = 0
    if first < size:
        differ = 8 * (size - 1 - first) + _bit_length(np.int64(num[first] ^ last[first]))
    low = np.int64(num[nz])
    trailing = 8 * (size - 1 - nz) + _bit_length(low & -low)
    free = max(differ, trailing) - 1
    keep = (8 * size - free + 7) >> 3
    up = nz >= keep  # bits below the kept bytes: round up
    for k in range(keep - 1, -1, -1):
        v = np.int64(num[k]) + up
        out[k] = np.uint8(v & 255)
        up = v > 255
    return keep


@_jit
def _bit_length(x):
    bits = 0
    while x:
        bits += 1
        x >>= 1
    return bits

@_jit
def _decode(data, starts, cdf, index):
    n = len(starts) - 1
    d, k1 = cdf.shape
    for i in range(n):
        a, b = starts[i], starts[i + 1]
        at = a
        point = u64(0)
        for _ in range(8):  # the first two words; zeros past the end
            point <<= u64(8)
            if at < b:
                point |= u64(data[at])
            at += 1
        lower, rng = u64(0), u64(0xFFFFFFFFFFFFFFFF)
        for j in range(d):
            scale = rng >> u64(24)
            q = (point - lower) // scale
            if q >= u64(1) << u64(24):
                return i
            lo, hi = 0, k1 - 1  # the symbol s with cdf[s] <= q < cdf[s + 1]
            while hi - lo > 1:
                mid = (lo + hi) >> 1
                if cdf[j, mid] <= q:
                    lo = mid
                else:
                    hi = mid
            index[i, j] = lo
            c = cdf[j, lo]
            lower += scale * c
            rng = scale * (cdf[j, lo + 1] - c)
            if rng < TOP:
                rng <<= u64(32)
                lower <<= u64(32)
                for _ in range(4):
                    point <<= u64(8)
                    if at < b:
                        point |= u64(data[at])
                    at += 1
    return -1
