// Test driver of web/lib/{bitstream,rangecoder,context,model}.mjs for tests/javascript/test_web_bitstream.py:
// reads one JSON job on stdin ({models: {key: model.json}, ops: [...]}), runs every op, writes the results as
// JSON on stdout. Bytes and arrays travel as base64 (int32 / float32 little-endian).
//
//   node tests/javascript/bitstream_driver.mjs < job.json

import { readFileSync } from 'node:fs';
import { KaeError, peekKae, readKae, toIntegers, writeKae } from '../../web/lib/bitstream.mjs';
import { modelFromJson } from '../../web/lib/model.mjs';
import * as rangecoder from '../../web/lib/rangecoder.mjs';

const b64 = (bytes) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
const bytesOf = (s) => new Uint8Array(Buffer.from(s, 'base64'));
const int32Of = (s) => {
  const b = Buffer.from(s, 'base64');
  return new Int32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};
const float32Of = (s) => {
  const b = Buffer.from(s, 'base64');
  return new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength));
};

const job = JSON.parse(readFileSync(0, 'utf8'));
const models = {};
for (const [key, json] of Object.entries(job.models || {})) models[key] = modelFromJson(json);

function run(op) {
  const model = models[op.model];
  switch (op.op) {
    case 'model':
      modelFromJson(op.json);
      return {};
    case 'peek': {
      const h = peekKae(bytesOf(op.data));
      return { header: h };
    }
    case 'read': {
      const r = readKae(bytesOf(op.data), model, op.maxPixels ? { maxPixels: op.maxPixels } : {});
      const { integers, latents, ...rest } = r;
      return { ...rest, integers: integers ? b64(integers) : null, latents: b64(latents) };
    }
    case 'write': {
      const layout = { ...op.layout };
      if (op.integers) layout.integers = int32Of(op.integers);
      if (op.latents) layout.latents = float32Of(op.latents);
      return { data: b64(writeKae(layout, model, op.quant ? { quant: op.quant } : {})) };
    }
    case 'toIntegers':
      return { integers: b64(toIntegers(float32Of(op.latents), model)) };
    case 'decodePayload':
      return { integers: b64(rangecoder.decode(bytesOf(op.data), model.tables, op.count)) };
    case 'speed': {
      // N one-tile files: integers -> bytes, then bytes -> integers, each timed over the whole batch
      const D = model.latentDim;
      const all = int32Of(op.integers);
      const n = all.length / D;
      const layout = { mode: 'L', fit: 'tile', width: model.tile[1], height: model.tile[0], planes: 1, tilesY: 1, tilesX: 1 };
      const t0 = process.hrtime.bigint();
      const files = [];
      for (let i = 0; i < n; i++) files.push(writeKae({ ...layout, integers: all.subarray(i * D, (i + 1) * D) }, model));
      const t1 = process.hrtime.bigint();
      const back = new Int32Array(n * D);
      for (let i = 0; i < n; i++) back.set(readKae(files[i], model).integers, i * D);
      const t2 = process.hrtime.bigint();
      const sizes = Int32Array.from(files, (f) => f.length);
      const blob = new Uint8Array(sizes.reduce((a, b) => a + b, 0));
      let at = 0;
      for (const f of files) { blob.set(f, at); at += f.length; }
      return {
        write_s: Number(t1 - t0) / 1e9, read_s: Number(t2 - t1) / 1e9,
        sizes: b64(sizes), blob: b64(blob), integers: b64(back),
      };
    }
    default:
      throw new Error(`unknown op ${op.op}`);
  }
}

const results = job.ops.map((op) => {
  try {
    return { ok: true, ...run(op) };
  } catch (e) {
    return { ok: false, kae: e instanceof KaeError, error: String(e && e.message) };
  }
});
process.stdout.write(JSON.stringify({ results }));
