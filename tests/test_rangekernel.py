"""The compiled range coder (rangekernel) against constriction's path: the same bytes, symbols and damage."""

import binascii

import numpy as np
import pytest

from kaecompress import KaecError

from kaecompress.codec import rangecoder
from kaecompress.codec.rangecoder import IntegerTables, decode_each, encode_each

rangekernel = pytest.importorskip("kaecompress.codec.rangekernel", reason="numba is not installed")


def random_tables(rng, dims, k):
    pmf = rng.dirichlet(np.full(k - 1, rng.uniform(0.05, 5.0)), size=dims) * rng.uniform(0.9, 1.0, (dims, 1))
    return IntegerTables.from_pmf(pmf, rng.integers(-5, 5, size=dims)), pmf


def sample(rng, pmf, count):
    """Table indices drawn from each row's pmf (count, D)."""
    cum = np.cumsum(pmf / pmf.sum(axis=1, keepdims=True), axis=1)
    u = rng.random((count, len(pmf), 1))
    return np.minimum((u > cum[None]).sum(axis=2), pmf.shape[1] - 1)


@pytest.fixture
def constriction_only(monkeypatch):
    monkeypatch.setattr(rangecoder, "COMPILED_FROM", 10**9)


def test_the_shortest_bytes_match_the_closed_form_on_random_intervals():
    """The kernels' byte-wise rule against rangecoder._shortest_bytes (itself tested against trying every
    length), on random intervals and on low ends of a few set bytes at every depth."""
    from kaecompress.codec.rangecoder import _shortest_bytes

    rng = np.random.default_rng(6)
    cases = []
    for _ in range(4000):
        size = 8 + 4 * int(rng.integers(0, 4))
        lo = int.from_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes(), "big")
        lo >>= int(rng.integers(0, 8 * size))  # small values too
        lo <<= int(rng.integers(0, 8 * size - lo.bit_length() + 1)) if lo else 0  # and trailing zeros
        width = 1 + (int(rng.integers(0, 2**63)) >> int(rng.integers(0, 64)))
        cases.append((size, lo, min(width, 256**size - lo)))
    for t in range(14):  # a few set bytes at each depth against widths of every size
        for m in range(1, 64, 3):
            lo = int(rng.integers(1, 2**24)) << 8 * t
            cases.append((16, lo, min(2**m + int(rng.integers(0, 2**m)), 256**16 - lo)))
    out = np.empty(64, dtype=np.uint8)
    for size, lo, width in cases:
        num = np.frombuffer(lo.to_bytes(size, "big"), dtype=np.uint8)
        last = np.frombuffer((lo + width - 1).to_bytes(size, "big"), dtype=np.uint8)
        n = rangekernel._shortest(num, last, size, out)
        assert out[:n].tobytes() == _shortest_bytes(lo, width, 8 * size), (size, lo, width)


def test_the_model_is_constrictions_own():
    """model_cdf against what constriction's coder does with each symbol of a row: from a fresh encoder, one
    symbol leaves lower = scale * cdf[s] and range = scale * freq[s], scale = (2**64 - 1) >> 24."""
    import constriction

    rng = np.random.default_rng(0)
    stream = constriction.stream
    family = stream.model.Categorical(perfect=False)
    scale = (2**64 - 1) >> 24
    for dims, k, precision in ((3, 2, 16), (4, 29, 16), (2, 300, 16), (3, 7, 12)):
        pmf = rng.dirichlet(np.full(k - 1, 0.3), size=dims) * 0.99
        tables = IntegerTables.from_pmf(pmf, np.zeros(dims, dtype=np.int64), precision)
        cdf = rangekernel.model_cdf(tables.freqs, tables.precision)
        assert cdf.dtype == np.uint64 and (cdf[:, -1] == 2**24).all()
        for d in range(dims):
            for s in range(k):
                enc = stream.queue.RangeEncoder()
                enc.encode(np.array([s], dtype=np.int32), family, tables._probs[d:d + 1])
                _, (lower, width) = enc.pos()
                assert (lower, width) == (scale * int(cdf[d, s]), scale * int(cdf[d, s + 1] - cdf[d, s])), (d, s)


def test_same_files_and_symbols_as_constriction_on_random_tables(constriction_only):
    rng = np.random.default_rng(1)
    for trial in range(60):
        tables, pmf = random_tables(rng, int(rng.integers(1, 120)), int(rng.integers(2, 40)))
        index = sample(rng, pmf, 40) if trial % 3 else rng.integers(0, pmf.shape[1], size=(40, len(pmf)))
        symbols = index + tables.offsets
        head, start = bytes([0x80 | trial % 64]), int(rng.integers(0, 2**16))
        expected = encode_each(symbols, tables, head=head, crc_start=start)  # constriction
        assert rangekernel.encode(index, tables._model_cdf, head, start) == expected, trial
        payloads = encode_each(symbols, tables)
        assert [head + p + binascii.crc_hqx(p, start).to_bytes(2, "big") for p in payloads] == expected
        assert rangekernel.encode(index, tables._model_cdf) == payloads
        decoded, bad = rangekernel.decode(payloads, tables._model_cdf)
        assert bad == -1 and np.array_equal(decoded, index), trial


def test_long_rows_carry_into_written_words(constriction_only):
    """Hundreds of symbols a file, some of them improbable: carries reach words written long before."""
    rng = np.random.default_rng(2)
    tables, pmf = random_tables(rng, 600, 12)
    index = np.where(rng.random((64, 600)) < 0.05, rng.integers(0, 11, (64, 600)), sample(rng, pmf, 64))
    payloads = encode_each(index + tables.offsets, tables)
    assert rangekernel.encode(index, tables._model_cdf) == payloads
    assert np.array_equal(rangekernel.decode(payloads, tables._model_cdf)[0], index)


def test_batches_take_the_compiled_path_with_escapes_in_place(monkeypatch):
    """A batch of COMPILED_FROM files or more is coded by the kernels; files with escapes keep their places
    and decode through constriction; the bytes are the ones constriction's path gives."""
    rng = np.random.default_rng(3)
    tables, pmf = random_tables(rng, 20, 9)
    symbols = sample(rng, pmf, 100) + tables.offsets
    symbols[[5, 77]] += np.array([40, -300])[:, None] * (np.arange(20) == 4)  # two files escape
    calls = []
    real = rangekernel.encode
    monkeypatch.setattr(rangekernel, "encode", lambda index, *a: calls.append(len(index)) or real(index, *a))
    compiled = encode_each(symbols, tables, head=b"\x81", crc_start=7)
    assert calls == [98]
    monkeypatch.setattr(rangecoder, "COMPILED_FROM", 10**9)
    assert compiled == encode_each(symbols, tables, head=b"\x81", crc_start=7)
    monkeypatch.undo()
    payloads = [f[1:-2] for f in compiled]
    assert np.array_equal(decode_each(payloads, tables), symbols)


def test_damage_is_found_where_constriction_finds_it(monkeypatch):
    """Random damage to real payloads: the kernels decode the same symbols where constriction does and report
    the same first damaged file where it refuses one, named."""
    rng = np.random.default_rng(4)
    tables, pmf = random_tables(rng, 48, 16)
    payloads = encode_each(sample(rng, pmf, 400) + tables.offsets, tables)
    refused = 0
    for i in range(400):
        data = bytearray(payloads[i] or b"\0")
        if i % 4:
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        else:
            data = bytearray(rng.integers(0, 256, len(data) + int(rng.integers(0, 3)), dtype=np.uint8).tobytes())
        batch = [payloads[0]] * 70 + [bytes(data)]  # the damaged one last, in a compiled-size batch
        names = [f"f{j}.kae" for j in range(71)]
        outcome = []
        for limit in (0, 10**9):  # compiled, then constriction
            monkeypatch.setattr(rangecoder, "COMPILED_FROM", limit)
            try:
                outcome.append(decode_each(batch, tables, names)[-1].tolist())
            except KaecError as e:
                assert str(e).startswith("f70.kae: entropy-coded payload is damaged"), str(e)
                outcome.append("refused")
        refused += outcome[1] == "refused"
        assert outcome[0] == outcome[1], i
    assert refused > 0


def test_without_numba_constriction_codes_the_batch(monkeypatch):
    rng = np.random.default_rng(5)
    tables, pmf = random_tables(rng, 10, 6)
    symbols = sample(rng, pmf, 80) + tables.offsets
    compiled = encode_each(symbols, tables)
    monkeypatch.setattr(rangecoder, "_compiled", lambda files: None)  # as without numba
    assert encode_each(symbols, tables) == compiled
    assert np.array_equal(decode_each(compiled, tables), symbols)
