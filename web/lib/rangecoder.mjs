// The entropy coder of .kae version 2 payloads: constriction's queue range coder (64-bit state, 32-bit
// words, most significant word first), symbol for symbol as kaecompress/codec/rangekernel.py re-implements it,
// driven by the model's integer tables, with the escapes of docs/kae-format.md ("Order of the coded symbols").
//
// JavaScript numbers are doubles, exact up to 2^53: every 64-bit quantity here is held as two 32-bit halves
// (hi, lo), and a product scale * c (scale < 2^40, c <= 2^24) is formed from pieces below 2^53.

import { KaeError } from './errors.mjs';

const ESCAPE_CLASSES = 64;    // side (2) x bit count (0..31)
const LOW_BITS = 16;
const TWO32 = 4294967296;
const TWO24 = 16777216;      // constriction's fixed point: probabilities in units of 2^-24
const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

// The product scale * c as 64-bit halves, in these two variables (no allocation in the hot loops).
let mulHi = 0;
let mulLo = 0;
function mul(scale, c) {
  const a = Math.floor(scale / 65536);   // scale = a * 2^16 + b, a < 2^24, b < 2^16
  const b = scale - a * 65536;
  const x = a * c;                       // < 2^48: exact
  const xh = Math.floor(x / 65536);
  let lo = (x - xh * 65536) * 65536 + b * c;  // < 2^32 + 2^40: exact
  const carry = Math.floor(lo / TWO32);
  lo -= carry * TWO32;
  mulHi = xh + carry;
  mulLo = lo;
}

/** The (D, K+1) cumulative table constriction's Categorical(perfect=False) codes row d of `freqs` with:
 * cdf[i] = floor(cum[i] * (2^24 - K) / 2^precision) + i (cum[i] < 2^24, so the product is below 2^48: exact). */
export function modelCdf(freqs, dims, symbols, precision) {
  const cdf = new Uint32Array(dims * (symbols + 1));
  const factor = TWO24 - symbols;
  const div = 2 ** precision;
  for (let d = 0; d < dims; d++) {
    let cum = 0;
    const row = d * symbols;
    const out = d * (symbols + 1);
    for (let i = 0; i <= symbols; i++) {
      cdf[out + i] = Math.floor((cum * factor) / div) + i;
      if (i < symbols) cum += freqs[row + i];
    }
  }
  return cdf;
}

// constriction's Uniform(n) model at precision 24: bins of floor(2^24 / n), the last one takes the rest.
function uniformBin(n) {
  return Math.floor(TWO24 / n);
}

class Encoder {
  constructor(capacity) {
    this.words = new Uint32Array(Math.max(4, capacity));
    this.count = 0;
    this.lowHi = 0; this.lowLo = 0;                // lower end of the interval
    this.rngHi = TWO32 - 1; this.rngLo = TWO32 - 1; // its width: 2^64 - 1 at the start
  }

  /** Code the sub-interval [cum, cum + prob) of 2^24. */
  put(cum, prob) {
    const scale = this.rngHi * 256 + Math.floor(this.rngLo / TWO24);  // range >> 24, < 2^40
    mul(scale, cum);
    let lo = this.lowLo + mulLo;
    let hi = this.lowHi + mulHi;
    if (lo >= TWO32) { lo -= TWO32; hi += 1; }
    if (hi >= TWO32) {  // a carry beyond the state: into the words written
      hi -= TWO32;
      let k = this.count - 1;
      while (k >= 0) {
        this.words[k] = (this.words[k] + 1) >>> 0;
        if (this.words[k] !== 0) break;
        k--;
      }
    }
    this.lowHi = hi; this.lowLo = lo;
    mul(scale, prob);
    this.rngHi = mulHi; this.rngLo = mulLo;
    if (this.rngHi === 0) {  // range < 2^32: the top word of lower is out, both shift left by 32 bits
      if (this.count === this.words.length) {
        const grown = new Uint32Array(this.words.length * 2);
        grown.set(this.words);
        this.words = grown;
      }
      this.words[this.count++] = this.lowHi;
      this.lowHi = this.lowLo; this.lowLo = 0;
      this.rngHi = this.rngLo; this.rngLo = 0;
    }
  }

  /** The shortest byte string whose value, zero-extended, lies in the final interval [lower, lower + range)
   * (rangecoder._shortest_bytes): every bit above the larger of (the highest bit where the interval's ends
   * differ, less one) and the low end's trailing zeros, rounded up where bits below are dropped. */
  shortest() {
    const n = this.count;
    const size = 4 * n + 8;
    const num = new Uint8Array(size);   // the low end, big-endian
    const last = new Uint8Array(size);  // the high end: lower + range - 1
    for (let k = 0; k < n; k++) {
      const w = this.words[k];
      num[4 * k] = w >>> 24; num[4 * k + 1] = (w >>> 16) & 255; num[4 * k + 2] = (w >>> 8) & 255; num[4 * k + 3] = w & 255;
    }
    // high = lower + (range - 1) in 64 bits, its carry going into the words
    let rLo = this.rngLo - 1, rHi = this.rngHi;
    if (rLo < 0) { rLo += TWO32; rHi -= 1; }
    let hLo = this.lowLo + rLo, hHi = this.lowHi + rHi;
    if (hLo >= TWO32) { hLo -= TWO32; hHi += 1; }
    let carry = 0;
    if (hHi >= TWO32) { hHi -= TWO32; carry = 1; }
    const put64 = (buf, hi, lo) => {
      const at = 4 * n;
      buf[at] = hi >>> 24; buf[at + 1] = (hi >>> 16) & 255; buf[at + 2] = (hi >>> 8) & 255; buf[at + 3] = hi & 255;
      buf[at + 4] = lo >>> 24; buf[at + 5] = (lo >>> 16) & 255; buf[at + 6] = (lo >>> 8) & 255; buf[at + 7] = lo & 255;
    };
    put64(num, this.lowHi, this.lowLo);
    put64(last, hHi, hLo);
    for (let k = 4 * n - 1; k >= 0; k--) {
      const v = num[k] + carry;
      last[k] = v & 255;
      carry = v > 255 ? 1 : 0;
    }
    let nz = size - 1;
    while (nz >= 0 && num[nz] === 0) nz--;
    if (nz < 0) return new Uint8Array(0);  // a zero low end: the empty payload
    let first = 0;
    while (first < size && num[first] === last[first]) first++;
    let differ = 0;
    if (first < size) differ = 8 * (size - 1 - first) + bitLength(num[first] ^ last[first]);
    const low = num[nz];
    const trailing = 8 * (size - 1 - nz) + bitLength(low & -low);
    const free = Math.max(differ, trailing) - 1;
    const keep = (8 * size - free + 7) >> 3;
    const out = new Uint8Array(keep);
    let up = nz >= keep ? 1 : 0;  // bits below the kept bytes: round up
    for (let k = keep - 1; k >= 0; k--) {
      const v = num[k] + up;
      out[k] = v & 255;
      up = v > 255 ? 1 : 0;
    }
    return out;
  }
}

function bitLength(x) {
  return x ? 32 - Math.clz32(x) : 0;
}

const INVALID = 'entropy-coded payload is damaged (invalid data)';

class Decoder {
  constructor(data) {
    this.data = data;
    this.at = 0;
    this.lowHi = 0; this.lowLo = 0;
    this.rngHi = TWO32 - 1; this.rngLo = TWO32 - 1;
    this.ptHi = this.word();  // the first two words; zero bytes past the end
    this.ptLo = this.word();
    this.scale = 0;
  }

  word() {
    const d = this.data;
    const a = this.at;
    this.at += 4;
    const n = d.length;
    return ((a < n ? d[a] : 0) * 16777216) + ((a + 1 < n ? d[a + 1] : 0) << 16) +
      ((a + 2 < n ? d[a + 2] : 0) << 8) + (a + 3 < n ? d[a + 3] : 0);
  }

  /** floor((point - lower) / scale) of the current state, a 24-bit quantile; beyond it the data is damaged
   * (constriction's InvalidData). The double quotient is within one of the exact one; the remainder,
   * formed exactly, corrects it. */
  quantile() {
    const scale = this.rngHi * 256 + Math.floor(this.rngLo / TWO24);
    this.scale = scale;
    let dLo = this.ptLo - this.lowLo;
    let dHi = this.ptHi - this.lowHi;
    if (dLo < 0) { dLo += TWO32; dHi -= 1; }
    if (dHi < 0) dHi += TWO32;  // point - lower, mod 2^64 as constriction computes it
    let q = Math.floor((dHi * TWO32 + dLo) / scale);
    if (q > TWO24) throw new KaeError(INVALID);
    mul(scale, q);
    let r = (dHi - mulHi) * TWO32 + (dLo - mulLo);  // |r| < 2 scale: exact
    while (r < 0) { q--; r += scale; }
    while (r >= scale) { q++; r -= scale; }
    if (q >= TWO24) throw new KaeError(INVALID);
    return q;
  }

  /** Take the sub-interval [cum, cum + prob) the quantile fell in. */
  take(cum, prob) {
    const scale = this.scale;
    mul(scale, cum);
    let lo = this.lowLo + mulLo;
    let hi = this.lowHi + mulHi;
    if (lo >= TWO32) { lo -= TWO32; hi += 1; }
    if (hi >= TWO32) hi -= TWO32;  // wrapping, as constriction's decoder adds
    this.lowHi = hi; this.lowLo = lo;
    mul(scale, prob);
    this.rngHi = mulHi; this.rngLo = mulLo;
    if (this.rngHi === 0) {
      this.lowHi = this.lowLo; this.lowLo = 0;
      this.rngHi = this.rngLo; this.rngLo = 0;
      this.ptHi = this.ptLo; this.ptLo = this.word();
    }
  }

  categorical(cdf, base, symbols) {
    const q = this.quantile();
    let lo = 0, hi = symbols;  // the s < K with cdf[s] <= q < cdf[s + 1] (cdf[K] = 2^24 > q)
    while (hi - lo > 1) {
      const mid = (lo + hi) >> 1;
      if (cdf[base + mid] <= q) lo = mid; else hi = mid;
    }
    const c = cdf[base + lo];
    this.take(c, cdf[base + lo + 1] - c);
    return lo;
  }

  uniform(n) {
    const q = this.quantile();
    const bin = uniformBin(n);
    const lastSymbol = n - 1;
    let s = Math.floor(q / bin);
    if (s > lastSymbol) s = lastSymbol;
    const c = s * bin;
    this.take(c, s < lastSymbol ? bin : TWO24 - c);
    return s;
  }
}

function putUniform(enc, s, n) {
  const bin = uniformBin(n);
  const c = s * bin;
  enc.put(c, s < n - 1 ? bin : TWO24 - c);
}

function bits(e1) {  // bit length - 1 of an integer from 1 to 2^33
  let nb = Math.floor(Math.log2(e1));
  if (2 ** nb > e1) nb--;  // log2 rounded up near a power of two
  if (2 ** (nb + 1) <= e1) nb++;
  return nb;
}

/** The words of T vectors of D integers (`values`, length T * D) under `tables`, before the payload cut. */
function encodeWords(values, tables, count) {
  const { dims: D, symbols: K, offsets, cdf } = tables;
  const n = count * D;
  const enc = new Encoder(n + 8);
  let escapes = null;
  for (let i = 0; i < n; i++) {
    const d = i % D;
    const rel = values[i] - offsets[d];
    let s = rel;
    if (!(rel >= 0 && rel < K - 1)) {
      s = K - 1;
      (escapes || (escapes = [])).push(i);
    }
    const base = d * (K + 1);
    const c = cdf[base + s];
    enc.put(c, cdf[base + s + 1] - c);
  }
  if (escapes) {
    const nbits = new Array(escapes.length);
    const mant = new Array(escapes.length);
    for (let j = 0; j < escapes.length; j++) {
      const i = escapes[j];
      const v = values[i];
      if (!(v >= INT32_MIN && v <= INT32_MAX)) {
        throw new KaeError('latents: a value is outside the 32-bit integer range');
      }
      const rel = v - offsets[i % D];
      const above = rel >= K - 1;
      const e1 = above ? rel - (K - 1) + 1 : -rel;  // distance beyond the table edge, plus 1 (>= 1)
      const nb = bits(e1);
      nbits[j] = nb;
      mant[j] = e1 - 2 ** nb;
      putUniform(enc, (above ? 32 : 0) + nb, ESCAPE_CLASSES);
    }
    for (let j = 0; j < escapes.length; j++) {
      if (nbits[j] >= 1) {
        const w = Math.min(nbits[j], LOW_BITS);
        putUniform(enc, mant[j] % 2 ** w, 2 ** w);
      }
    }
    for (let j = 0; j < escapes.length; j++) {
      if (nbits[j] > LOW_BITS) putUniform(enc, Math.floor(mant[j] / 65536), 2 ** (nbits[j] - LOW_BITS));
    }
  }
  return enc;
}

function checkValues(values, tables, count) {
  if (!Number.isInteger(count) || count < 0 || values.length !== count * tables.dims) {
    throw new KaeError(`latents: expected ${count} vectors of ${tables.dims} integers, got ${values.length} values`);
  }
  for (let i = 0; i < values.length; i++) {
    const v = values[i];
    if (!Number.isInteger(v)) throw new KaeError(`latents: expected integers, got ${v}`);
  }
}

/** One payload for `count` latent vectors (`values`: count * D integers, vector after vector); values
 * outside the tables are escaped. The shortest byte string that decodes to them, checked by decoding. */
export function encode(values, tables, count) {
  checkValues(values, tables, count);
  if (count === 0) return new Uint8Array(0);
  const enc = encodeWords(values, tables, count);
  const out = enc.shortest();
  const back = decode(out, tables, count);
  for (let i = 0; i < back.length; i++) {
    if (back[i] !== values[i]) throw new Error('range coder: the payload does not decode to its symbols (a bug)');
  }
  return out;
}

/** The `count` latent vectors (count * D, Int32Array) a payload holds. Damaged data gives other integers
 * or a KaeError (the container's checksum tells which), as constriction does. */
export function decode(data, tables, count) {
  const { dims: D, symbols: K, offsets, cdf } = tables;
  const n = count * D;
  const out = new Int32Array(n);
  if (count === 0) return out;
  const dec = new Decoder(data);
  let escapes = null;
  for (let i = 0; i < n; i++) {
    const d = i % D;
    const s = dec.categorical(cdf, d * (K + 1), K);
    if (s === K - 1) (escapes || (escapes = [])).push(i);
    else out[i] = offsets[d] + s;
  }
  if (!escapes) return out;
  const m = escapes.length;
  const classes = new Array(m);
  for (let j = 0; j < m; j++) classes[j] = dec.uniform(ESCAPE_CLASSES);
  const mant = new Array(m).fill(0);
  for (let j = 0; j < m; j++) {
    const nb = classes[j] % 32;
    if (nb >= 1) mant[j] = dec.uniform(2 ** Math.min(nb, LOW_BITS));
  }
  for (let j = 0; j < m; j++) {
    const nb = classes[j] % 32;
    if (nb > LOW_BITS) mant[j] += dec.uniform(2 ** (nb - LOW_BITS)) * 65536;
  }
  for (let j = 0; j < m; j++) {
    const i = escapes[j];
    const nb = classes[j] % 32;
    const e = 2 ** nb + mant[j] - 1;
    const off = offsets[i % D];
    const v = classes[j] >= 32 ? off + (K - 1) + e : off - 1 - e;
    if (v < INT32_MIN || v > INT32_MAX) {
      throw new KaeError('entropy-coded payload is damaged (an escaped value is outside 32 bits)');
    }
    out[i] = v;
  }
  return out;
}
