"""What a codec model's export adds: its integer probability tables (prior.npz), the reference decoder
(kae_decode.py, copied from this package) and the bitstream description for manifest.json."""

from __future__ import annotations

import hashlib
import io
import shutil
from pathlib import Path

import numpy as np

from kaecompress.exporters.manifest import CODEC_FILES, DECODER, TABLES
from kaecompress.codec.rangecoder import ESCAPE_CLASSES, IntegerTables



def write_codec_files(folder: Path, tables: IntegerTables, codec_id: int | None,
                      formats: tuple[str, ...], context=None) -> tuple[dict, dict]:
    """Write the tables (and the reference decoder when decoder.onnx is exported) into `folder`; return
    their manifest "files" entries and the manifest's "bitstream" section. The entries' "format" is that of
    the artefacts they go with (onnx when exported), so readers that collect formats see only real ones."""
    with_decoder = "onnx" in formats
    bundle = "onnx" if with_decoder else formats[0]
    buf = io.BytesIO()
    arrays = tables.to_arrays()
    if context is not None:  # a kaecompress.codec.context.LinearContext
        arrays.update({f"context_{k}": v for k, v in context.to_arrays().items()})
    np.savez(buf, **arrays)
    (folder / TABLES).write_bytes(buf.getvalue())
    names = [TABLES]
    if with_decoder:
        shutil.copyfile(Path(__file__).with_name(DECODER), folder / DECODER)
        names.append(DECODER)
    files = {}
    for name in names:
        data = (folder / name).read_bytes()
        files[name] = {"format": bundle, "part": CODEC_FILES[name],
                       "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    bitstream = {
        "format": ".kae version 2 (kaecompress docs/kae-format.md)",
        "codec_id": codec_id,
        "tables": TABLES,
        "tables_arrays": {"offsets": f"int32 ({tables.dims},)", "freqs": f"int32 ({tables.dims}, {tables.symbols})",
                          "precision": "int32 (1,)"},
        "symbol": "column s < K-1 of row d is the integer offsets[d] + s; column K-1 is ESCAPE; each row sums to "
                  "2**precision",
        "coder": "constriction.stream.queue.RangeDecoder over the payload as big-endian 32-bit words (zero bytes "
                 "appended to a whole word), Categorical(perfect=False) with probabilities freqs / 2**precision",
        "escape": f"after all table symbols: a class side*32+n (Uniform({ESCAPE_CLASSES})) per ESCAPE, then the "
                  f"low min(n,16) bits of e+1-2**n for n >= 1, then the bits above for n > 16 (Uniform); below: "
                  "value = offsets[d]-1-e, above: value = offsets[d]+K-1+e",
        "check": "CRC-16/CCITT (binascii.crc_hqx, initial 0xFFFF) over the 32-byte weights sha256, the header "
                 "and the payload; 2 bytes big-endian at the end",
        "context": None if context is None else {
            "arrays": {"context_order": f"int32 ({tables.dims},)", "context_weights": f"int32 ({tables.dims}, "
                       f"{tables.dims})", "context_bias": f"int32 ({tables.dims},)"},
            "restore": "the decoded symbols are residuals: for i = 0..D-1 in coding order, latent[order[i]] = "
                       "symbol[order[i]] + floor((sum_j<i weights[i, j] * latent[order[j]] + bias[i] + 2**11) "
                       "/ 2**12)",
        },
        "decoder_input": "the latent integers as float32, shape (tiles, latent_dim), into decoder.onnx",
        "reference_decoder": DECODER if with_decoder else None,
    }
    return files, bitstream
