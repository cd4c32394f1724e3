// Test driver of tests/javascript/test_web_fuzz.py: feeds the readers of web/lib random and mutated input and
// reports anything that is not a refusal as the runtime promises it (a KaeError with a one-line message).
//
//   node tests/javascript/fuzz_driver.mjs < job.json
//   job: {seed, rounds, kae: [base64 .kae files], png: [base64 PNG files], models: [model.json objects]}
//   -> one JSON line: per reader {inputs, accepted, refused, slowestMs, slowest (hex head), bad: [first few
//      inputs that threw anything else, or a message of several lines]}

import { readFileSync } from 'node:fs';
import { KaeError, crc16, crc32, peekKae, readKae } from '../../web/lib/bitstream.mjs';
import { modelFromJson } from '../../web/lib/model.mjs';
import { readPng } from '../../web/lib/png.mjs';
import * as rangecoder from '../../web/lib/rangecoder.mjs';

const job = JSON.parse(readFileSync(0, 'utf8'));
const fromB64 = (s) => new Uint8Array(Buffer.from(s, 'base64'));
const hexHead = (bytes) => Buffer.from(bytes.subarray(0, 48)).toString('hex');

// xorshift32: the same inputs on every run of a seed
let state = job.seed >>> 0 || 1;
function random() {
  state ^= state << 13; state >>>= 0;
  state ^= state >>> 17;
  state ^= state << 5; state >>>= 0;
  return state / 4294967296;
}
const below = (n) => Math.floor(random() * n);
const pick = (list) => list[below(list.length)];
const randomBytes = (n) => Uint8Array.from({ length: n }, () => below(256));
const INTERESTING = [0, 1, 0x7f, 0x80, 0xff, 0xfe, 0x40, 0x3f, 0xc0];

/** One random edit of `data`: bit flips, bytes set to random or edge values, cuts, insertions, a run
 * repeated, random tails. */
function mutate(data) {
  let out = Uint8Array.from(data);
  const edits = 1 + below(4);
  for (let e = 0; e < edits; e++) {
    const at = below(out.length + 1);
    switch (below(7)) {
      case 0: if (out.length) out[at % out.length] ^= 1 << below(8); break;
      case 1: if (out.length) out[at % out.length] = pick(INTERESTING); break;
      case 2: if (out.length) out[at % out.length] = below(256); break;
      case 3: out = out.subarray(0, at); break;
      case 4: out = Uint8Array.from([...out.subarray(0, at), ...randomBytes(1 + below(8)), ...out.subarray(at)]); break;
      case 5: {  // a run repeated in place
        const len = 1 + below(16);
        const run = out.subarray(at, at + len);
        out = Uint8Array.from([...out.subarray(0, at), ...run, ...run, ...out.subarray(at + len)]);
        break;
      }
      default: out = Uint8Array.from([...out, ...randomBytes(below(64))]);
    }
  }
  return out;
}

const results = {};

// Run `read` on `input`: a return or a one-line KaeError is fine; anything else, or a slow input, is noted.
async function attempt(name, input, read) {
  const r = results[name] ??= { inputs: 0, accepted: 0, refused: 0, slowestMs: 0, slowest: '', bad: [] };
  r.inputs++;
  const t = performance.now();
  try {
    await read(input);
    r.accepted++;
  } catch (e) {
    if (e instanceof KaeError && e.message && !e.message.includes('\n')) {
      r.refused++;
    } else if (r.bad.length < 5) {
      r.bad.push({ input: input instanceof Uint8Array ? hexHead(input) : JSON.stringify(input).slice(0, 200),
        error: `${e?.name}: ${e?.message}`, stack: String(e?.stack ?? '').split('\n').slice(0, 4).join(' | ') });
    }
  }
  const ms = performance.now() - t;
  if (ms > r.slowestMs) {
    r.slowestMs = ms;
    r.slowest = input instanceof Uint8Array ? hexHead(input) : JSON.stringify(input).slice(0, 200);
  }
}

const models = job.models.map((json) => modelFromJson(json));
const coded = models.filter((m) => m.tables);
const kaeSeeds = job.kae.map(fromB64);
const pngSeeds = job.png.map(fromB64);

// The check a mutant needs to get past the checksum (so headers and the range decoder see crafted bytes).
function resigned(data, model) {
  if (data.length < 3) return data;
  const out = Uint8Array.from(data);
  if (out[0] & 0x80) {
    const end = out.length - 2;
    const check = crc16(out, model.crcStart, 0, end);
    out[end] = check >> 8;
    out[end + 1] = check & 255;
  } else if (out.length >= 8) {
    const end = out.length - 4;
    new DataView(out.buffer).setUint32(end, crc32(out, 0, end), true);
  }
  return out;
}

// PNG chunks with their CRC recomputed, so the header, filter and zlib code see the crafted bytes.
function pngResigned(data) {
  const out = Uint8Array.from(data);
  const view = new DataView(out.buffer);
  for (let pos = 8; pos + 12 <= out.length;) {
    const length = view.getUint32(pos);
    if (pos + 12 + length > out.length) break;
    view.setUint32(pos + 8 + length, crc32(out, pos + 4, pos + 8 + length));
    pos += 12 + length;
  }
  return out;
}

for (let round = 0; round < job.rounds; round++) {
  // .kae: random bytes, mutants as they are, and mutants with a valid check for a model that reads them
  const seed = pick(kaeSeeds);
  const model = pick(models);
  const inputs = [randomBytes(below(48)), mutate(seed), resigned(mutate(seed), model),
    resigned(Uint8Array.from([pick([0x80 | below(64), 0xc0 | below(64)]), ...randomBytes(below(40))]), model)];
  for (const data of inputs) {
    await attempt('peekKae', data, (d) => peekKae(d));
    await attempt('readKae', data, (d) => readKae(d, model));
  }
  // the range decoder alone, on any bytes, for up to a few vectors
  const tables = pick(coded).tables;
  await attempt('rangecoder.decode', randomBytes(below(64)), (d) => rangecoder.decode(d, tables, 1 + below(4)));
  // PNG: mutants, with and without their chunk CRCs made right
  const png = pick(pngSeeds);
  await attempt('readPng', mutate(png), (d) => readPng(d));
  await attempt('readPng', pngResigned(mutate(png)), (d) => readPng(d));
  // model.json: one field replaced by a value of another kind, or a nested value changed
  if (round % 4 === 0) {
    const doc = JSON.parse(JSON.stringify(pick(job.models)));
    const values = [null, -1, 0, 2 ** 53, 1.5, '', '../x', 'x', [], [1, 2], {}, true, 'ab'.repeat(40)];
    const keys = Object.keys(doc);
    const key = pick(keys);
    if (doc[key] && typeof doc[key] === 'object' && !Array.isArray(doc[key]) && random() < 0.5) {
      const inner = Object.keys(doc[key]);
      doc[key][pick(inner)] = pick(values);
    } else if (Array.isArray(doc[key]) && doc[key].length && random() < 0.5) {
      doc[key][below(doc[key].length)] = pick(values);
    } else {
      doc[key] = pick(values);
    }
    await attempt('modelFromJson', doc, (d) => modelFromJson(d));
  }
}

console.log(JSON.stringify(results));
