// .kae files, version 2 (docs/kae-format.md: a 1-byte header in the common case, range-coded integer latents,
// a CRC-16 over the model's sha256 and the file) and version 1 (magic "KAEC", uint8 or float16 latents,
// CRC-32; kaecompress/codec/containers.py). Reading checks what the Python library checks, in its order, and
// refuses with a one-line KaeError naming the file and what was expected: never other latents.

import { KaeError } from './errors.mjs';
import * as rangecoder from './rangecoder.mjs';
import { residuals, restore } from './context.mjs';

export { KaeError };

const MODES = ['L', 'LA', 'RGB', 'RGBA', '1'];
export const FITS = ['tile', 'resize'];
export const QUANTS = ['uint8', 'float16'];
// The bands of each mode: the latent planes of its image with a 1-channel model.
export const BANDS = { L: 1, 1: 1, LA: 2, RGB: 3, RGBA: 4 };
const FORMAT_MAX_PIXELS = 178_956_970;  // Pillow's own limit: what a header may claim at all
export const MAX_PIXELS = 40_000_000;   // the default limit of decoding (kaec's --max-pixels)
const PADDED_FACTOR = 2;                // a plane's tiles may cover this many times the pixel limit
const MAX_COMPACT_ID = 63;
const CHECK_BYTES = 2;
const MAX_VARINT = 5;
const V1_HEAD = 31;          // "<4sBBBB8sIIBHHH"
const F32_MAX = 3.4028234663852886e38;
const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;
const MAGIC = [0x4b, 0x41, 0x45, 0x43];  // "KAEC"

const fmt = (n) => n.toLocaleString('en-US');

// ---- varints, checks ----------------------------------------------------------------------------------

/** Unsigned LEB128, the shortest spelling. */
function writeVarint(value) {
  if (!Number.isSafeInteger(value) || value < 0 || value >= 2 ** 35) throw new KaeError(`varint: ${value} is not 0 to 2**35-1`);
  const out = [];
  for (;;) {
    const byte = value % 128;
    value = Math.floor(value / 128);
    out.push(byte | (value ? 0x80 : 0));
    if (!value) return out;
  }
}

/** [value, next position]: at most 5 bytes, the shortest spelling only (bitstream._read_varint). */
function readVarint(data, pos, where = '.kae file') {
  let value = 0;
  for (let i = 0; i < MAX_VARINT; i++) {
    if (pos + i >= data.length) throw new KaeError(`${where}: truncated .kae file`);
    const byte = data[pos + i];
    value += (byte & 0x7f) * 2 ** (7 * i);
    if (!(byte & 0x80)) {
      if (byte === 0 && i) break;  // one spelling per number
      return [value, pos + i + 1];
    }
  }
  throw new KaeError(`${where}: malformed number in the .kae header at byte ${pos}`);
}

const CRC16_TABLE = (() => {
  const t = new Uint16Array(256);
  for (let b = 0; b < 256; b++) {
    let c = b << 8;
    for (let k = 0; k < 8; k++) c = c & 0x8000 ? ((c << 1) ^ 0x1021) & 0xffff : (c << 1) & 0xffff;
    t[b] = c;
  }
  return t;
})();

/** CRC-16/CCITT, polynomial 0x1021, most significant bit first, from `start` (Python's binascii.crc_hqx). */
export function crc16(bytes, start = 0xffff, from = 0, to = bytes.length) {
  let c = start;
  for (let i = from; i < to; i++) c = ((c << 8) & 0xffff) ^ CRC16_TABLE[((c >> 8) ^ bytes[i]) & 255];
  return c;
}

const CRC32_TABLE = (() => {
  const t = new Int32Array(256);
  for (let b = 0; b < 256; b++) {
    let c = b;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[b] = c;
  }
  return t;
})();

/** zlib's CRC-32 (version 1 files). */
export function crc32(bytes, from = 0, to = bytes.length) {
  let c = -1;
  for (let i = from; i < to; i++) c = CRC32_TABLE[(c ^ bytes[i]) & 255] ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

/** Lower-case hex of bytes. */
export function hex(bytes) {
  let s = '';
  for (const b of bytes) s += b.toString(16).padStart(2, '0');
  return s;
}

/** numpy's rint: round half to even (Math.round rounds halves up). */
export function rint(x) {
  const r = Math.round(x);
  return (r - x === 0.5 && r % 2 !== 0) ? r - 1 : r;
}

/** containers.check_layout: mode, planes, grid, size and fit describe one image. Without `patch` (the model's
 * tile height, width) only the grid's bounds are checked; without `channels`, a 1- or 3-channel model may have
 * made it. */
function checkLayout(where, { mode, fit, width, height, planes, tilesY, tilesX }, patch = null, channels = null) {
  if (!MODES.includes(mode) || !FITS.includes(fit)) throw new KaeError(`${where}: unknown mode '${mode}' or fit '${fit}'`);
  if (width < 1 || height < 1) throw new KaeError(`${where}: image size ${width}x${height}; expected at least 1x1`);
  let fits;
  if (channels === 3) fits = planes === 1 && mode === 'RGB';
  else if (channels !== null) fits = planes === BANDS[mode];
  else fits = planes === BANDS[mode] || (planes === 1 && mode === 'RGB');
  if (!fits) {
    throw new KaeError(`${where}: ${planes} latent planes do not fit mode ${mode}${channels !== null ? ` with a ${channels}-channel model` : ''}`);
  }
  if (patch === null) {
    const bad = fit === 'resize' ? tilesY !== 1 || tilesX !== 1 : !(tilesY >= 1 && tilesY <= height && tilesX >= 1 && tilesX <= width);
    if (bad) throw new KaeError(`${where}: tile grid ${tilesY}x${tilesX} does not fit a ${width}x${height} image (${fit})`);
    return;
  }
  const need = fit === 'resize' ? [1, 1] : [Math.ceil(height / patch[0]), Math.ceil(width / patch[1])];
  if (tilesY !== need[0] || tilesX !== need[1]) {
    throw new KaeError(`${where}: a ${width}x${height} image (${fit}) needs ${need[0]}x${need[1]} tiles of ${patch[1]}x${patch[0]}, the file has ${tilesY}x${tilesX}`);
  }
}

/** containers.check_pixels: KaeError unless width x height is a size we may allocate. */
export function checkPixels(width, height, where, maxPixels = MAX_PIXELS) {
  if (!(Number.isSafeInteger(width) && Number.isSafeInteger(height)) || width < 1 || height < 1) {
    throw new KaeError(`${where}: image size ${width}x${height}; expected at least 1x1`);
  }
  if (width * height > maxPixels) {
    throw new KaeError(`${where}: image size ${width}x${height} (${fmt(width * height)} pixels) is over the ${fmt(maxPixels)}-pixel limit (maxPixels)`);
  }
}

/** containers.check_tiles: a thin image's work and memory grow with its tiles (patch: [height, width]),
 * not its pixels. */
export function checkTiles(tilesY, tilesX, patch, where, maxPixels = MAX_PIXELS) {
  const padded = tilesY * patch[0] * tilesX * patch[1];
  if (padded > PADDED_FACTOR * maxPixels) {
    throw new KaeError(`${where}: ${tilesY}x${tilesX} tiles of ${patch[1]}x${patch[0]} cover ${fmt(padded)} pixels, over ${PADDED_FACTOR} x the ${fmt(maxPixels)}-pixel limit (maxPixels)`);
  }
}

/** The bytes of a Uint8Array, ArrayBuffer or other view, without a copy. */
export function asBytes(bytes, where = '.kae file') {
  if (bytes instanceof Uint8Array) return bytes;
  if (bytes instanceof ArrayBuffer) return new Uint8Array(bytes);
  if (ArrayBuffer.isView(bytes)) return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  throw new KaeError(`${where}: expected the file's bytes (Uint8Array or ArrayBuffer)`);
}

/** The version of a .kae file (2: first bit set; 1: "KAEC"), refusing anything else. */
function versionOf(data, where) {
  if (!data.length) throw new KaeError(`${where}: empty file; expected a .kae file`);
  if (data[0] & 0x80) return 2;
  if (data[0] !== MAGIC[0]) {
    throw new KaeError(`${where}: unsupported .kae version (first byte 0x${data[0].toString(16).padStart(2, '0')})`);
  }
  return 1;
}

// ---- version 2 header ----------------------------------------------------------------------------------

/** The header of a version 2 file (bitstream.parse_header): enough to find the model. A compact header
 * leaves width and height null: one tile of the model's size. */
function parseV2(data, where) {
  const first = data[0];
  if ((first & 0xc0) === 0x80) {
    if (data.length < 1 + CHECK_BYTES) throw new KaeError(`${where}: truncated .kae file`);
    return {
      version: 2, compact: true, codecId: first & 0x3f, hashPrefix: null, width: null, height: null,
      mode: 'L', fit: 'tile', planes: 1, tilesY: 1, tilesX: 1, headerSize: 1,
    };
  }
  const flags = first & 0x3f;
  if (flags & 0x20 || ((flags >> 2) & 7) >= MODES.length) {
    throw new KaeError(`${where}: unsupported .kae header flags 0x${flags.toString(16).padStart(2, '0')}`);
  }
  let pos = 1;
  let codecId = null;
  let hashPrefix = null;
  if (flags & 1) {
    [codecId, pos] = readVarint(data, pos, where);
  } else {
    if (data.length < pos + 8) throw new KaeError(`${where}: truncated .kae file`);
    hashPrefix = hex(data.subarray(pos, pos + 8));
    pos += 8;
  }
  const values = [];
  for (let k = 0; k < 5; k++) {
    let v;
    [v, pos] = readVarint(data, pos, where);
    values.push(v);
  }
  const [width, height, planes, tilesY, tilesX] = values;
  if (data.length < pos + CHECK_BYTES) throw new KaeError(`${where}: truncated .kae file`);
  if (width < 1 || height < 1 || width * height > FORMAT_MAX_PIXELS) {
    throw new KaeError(`${where}: image size ${width}x${height}; expected 1 to ${fmt(FORMAT_MAX_PIXELS)} pixels`);
  }
  if (!(planes >= 1 && planes <= 4) || !(tilesY >= 1 && tilesY <= height) || !(tilesX >= 1 && tilesX <= width)) {
    throw new KaeError(`${where}: tile grid ${planes}x${tilesY}x${tilesX} does not fit a ${width}x${height} image`);
  }
  const header = {
    version: 2, compact: false, codecId, hashPrefix, width, height, mode: MODES[(flags >> 2) & 7],
    fit: FITS[(flags >> 1) & 1], planes, tilesY, tilesX, headerSize: pos,
  };
  checkLayout(where, header);
  return header;
}

// ---- version 1 -----------------------------------------------------------------------------------------

function float16(h) {
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m ? NaN : sign * Infinity;
  return sign * (1024 + m) * 2 ** (e - 25);
}

const f32 = new Float32Array(1);
const f32bits = new Uint32Array(f32.buffer);

/** float32 -> float16 bits, rounding to nearest even as numpy's astype(float16) does. */
function toFloat16(x) {
  f32[0] = x;
  const b = f32bits[0];
  const sign = (b >>> 16) & 0x8000;
  const e = (b >>> 23) & 0xff;
  const m = b & 0x7fffff;
  if (e === 0xff) return sign | 0x7c00 | (m ? 0x200 : 0);
  const E = e - 127;
  if (E > 15) return sign | 0x7c00;
  if (E >= -14) {  // normal: keep 10 of the 23 mantissa bits; a carry may reach the exponent (or infinity)
    let h = ((E + 15) << 10) | (m >>> 13);
    const rem = m & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1))) h++;
    return sign | h;
  }
  if (E < -25 || e === 0) return sign;  // below half the smallest subnormal: zero
  const M = m | 0x800000;  // subnormal: M * 2^(E - 23) in units of 2^-24
  const shift = -E - 1;
  let h = M >>> shift;
  const rem = M & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (h & 1))) h++;
  return sign | h;
}

function parseV1(data, where) {
  if (data.length < 4 || MAGIC.some((b, i) => data[i] !== b)) {
    throw new KaeError(`${where}: not a .kae file (bad magic ${JSON.stringify(String.fromCharCode(...data.subarray(0, 4)))})`);
  }
  if (data.length < V1_HEAD + 4) throw new KaeError(`${where}: truncated .kae file`);
  const end = data.length - 4;
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  if (crc32(data, 0, end) !== view.getUint32(end, true)) throw new KaeError(`${where}: checksum mismatch: the file is damaged`);
  const [version, quant, fit, mode] = [data[4], data[5], data[6], data[7]];
  const hashPrefix = hex(data.subarray(8, 16));
  const width = view.getUint32(16, true);
  const height = view.getUint32(20, true);
  const planes = data[24];
  const tilesY = view.getUint16(25, true);
  const tilesX = view.getUint16(27, true);
  const dim = view.getUint16(29, true);
  if (version !== 1 || quant >= QUANTS.length || fit >= FITS.length || mode >= MODES.length) {
    throw new KaeError(`${where}: unsupported .kae version ${version} or header values`);
  }
  if (dim < 1) throw new KaeError(`${where}: latent size ${dim}; expected at least 1`);
  const header = {
    version: 1, compact: false, codecId: null, hashPrefix, quant: QUANTS[quant], width, height,
    mode: MODES[mode], fit: FITS[fit], planes, tilesY, tilesX, latentDim: dim, headerSize: V1_HEAD,
  };
  checkLayout(where, header);
  let offset = 0;
  let scale = 1;
  let pos = V1_HEAD;
  if (header.quant === 'uint8') {
    if (end < pos + 8) throw new KaeError(`${where}: truncated .kae file`);
    offset = view.getFloat32(pos, true);
    scale = view.getFloat32(pos + 4, true);
    pos += 8;
    if (!(Number.isFinite(offset) && Number.isFinite(scale) && Math.abs(offset) + 255 * Math.abs(scale) <= F32_MAX)) {
      throw new KaeError(`${where}: latent offset ${offset} and scale ${scale} do not give finite float32 latents`);
    }
  }
  const count = planes * tilesY * tilesX * dim;
  const size = header.quant === 'uint8' ? 1 : 2;
  if (end - pos !== count * size) {
    throw new KaeError(`${where}: latent payload has the wrong length for a ${planes}x${tilesY}x${tilesX}x${dim} grid`);
  }
  Object.assign(header, { offset, scale, payload: pos, headerSize: pos });
  return header;
}

function dequantize(data, header) {
  const count = header.planes * header.tilesY * header.tilesX * header.latentDim;
  const out = new Float32Array(count);
  const pos = header.payload;
  if (header.quant === 'uint8') {
    // numpy: float32(offset) + float32(scale) * float32(code), each step rounded to float32
    const off = header.offset;
    const scale = header.scale;
    for (let i = 0; i < count; i++) out[i] = off + Math.fround(scale * data[pos + i]);
  } else {
    for (let i = 0; i < count; i++) out[i] = float16(data[pos + 2 * i] | (data[pos + 2 * i + 1] << 8));
  }
  return out;
}

// ---- reading -------------------------------------------------------------------------------------------

/** What a file says before its model is known: {version, codecId|null, hashPrefix|null, mode, fit, width,
 * height (null for a compact v2 header: one tile of the model's size), planes, tilesY, tilesX, ...}, every
 * model-free check made (a version 1 file's CRC-32 included). KaeError otherwise. */
export function peekKae(bytes, { where = '.kae file' } = {}) {
  const data = asBytes(bytes, where);
  if (versionOf(data, where) === 2) return parseV2(data, where);
  const { payload, offset, scale, ...header } = parseV1(data, where);
  return header;
}

function readV2(data, model, where, maxPixels) {
  const header = parseV2(data, where);
  const tile = model.tile;
  // Layout.kae_header: this model's file, one image it can rebuild, within the limits
  if (!model.tables || (header.codecId !== null && header.codecId !== model.codecId)) {
    const made = header.codecId !== null ? ` (codec id ${header.codecId})` : '';
    const why = model.tables ? '' : ' (a model without probability tables reads version 1 files only)';
    throw new KaeError(`${where}: encoded with another model${made}, not with ${model.name}${why}`);
  }
  const full = { ...header, width: header.width ?? tile[1], height: header.height ?? tile[0] };
  checkLayout(where, full, tile, model.channels);
  checkPixels(full.width, full.height, where, maxPixels);
  checkTiles(full.tilesY, full.tilesX, tile, where, maxPixels);
  // bitstream.check_sum: the model it names, then the CRC from the model's identity
  if (header.hashPrefix !== null && header.hashPrefix !== model.weightsSha256.slice(0, 16)) {
    throw new KaeError(`${where}: encoded with another model (id ${header.hashPrefix}) than the one given (id ${model.weightsSha256.slice(0, 16)})`);
  }
  const end = data.length - CHECK_BYTES;
  if (end < header.headerSize || crc16(data, model.crcStart, 0, end) !== ((data[end] << 8) | data[end + 1])) {
    throw new KaeError(`${where}: checksum mismatch: the file is damaged, truncated or was made with another model`);
  }
  const count = full.planes * full.tilesY * full.tilesX;
  let integers;
  try {
    integers = rangecoder.decode(data.subarray(header.headerSize, end), model.tables, count);
  } catch (e) {
    if (e instanceof KaeError) throw new KaeError(`${where}: ${e.message}`);
    throw e;
  }
  if (model.context) integers = restore(integers, model.context, count, where);
  const latents = Float32Array.from(integers);  // the decoder network's input: the integers as float32
  return { ...full, integers, latents };
}

function readV1(data, model, where, maxPixels) {
  const header = parseV1(data, where);
  // Layout.check_model: the file names this model
  if (!model.weightsSha256.startsWith(header.hashPrefix)) {
    throw new KaeError(`${where}: encoded with another model (id ${header.hashPrefix}) than ${model.name} (id ${model.weightsSha256.slice(0, 16)})`);
  }
  const latents = dequantize(data, header);
  // containers.check: latents the model takes, one image it can rebuild, within the limits
  if (header.latentDim !== model.latentDim) {
    throw new KaeError(`${where}: latents must have shape (planes, tiles_y, tiles_x, ${model.latentDim}), got (${header.planes}, ${header.tilesY}, ${header.tilesX}, ${header.latentDim})`);
  }
  for (let i = 0; i < latents.length; i++) {
    if (!Number.isFinite(latents[i])) throw new KaeError(`${where}: latents contain NaN or infinity`);
  }
  checkLayout(where, header, model.tile, model.channels);
  checkPixels(header.width, header.height, where, maxPixels);
  checkTiles(header.tilesY, header.tilesX, model.tile, where, maxPixels);
  const { payload, offset, scale, ...rest } = header;
  return { ...rest, integers: null, latents };
}

/** A .kae file (version 1 or 2) read with `model` (modelFromJson): {version, mode, fit, width, height, planes,
 * tilesY, tilesX, integers (Int32Array, v2; null for v1), latents (Float32Array, planes*tilesY*tilesX*D, what
 * the decoder network takes)}, or a KaeError saying why not. */
export function readKae(bytes, model, { maxPixels = MAX_PIXELS, where = '.kae file' } = {}) {
  const data = asBytes(bytes, where);
  return versionOf(data, where) === 2 ? readV2(data, model, where, maxPixels) : readV1(data, model, where, maxPixels);
}

// ---- writing -------------------------------------------------------------------------------------------

/** The integers Python's Codec codes for encoder output (without --rdo): np.rint, halves to even. */
export function toIntegers(latents, model) {
  const out = new Int32Array(latents.length);
  for (let i = 0; i < latents.length; i++) {
    const r = rint(latents[i]);
    if (!(r >= INT32_MIN && r <= INT32_MAX) || (model.context && r === INT32_MIN)) {
      throw new KaeError(model.context ? 'latents: a value is beyond +-2**31' : 'latents: a value is outside the 32-bit integer range');
    }
    out[i] = r;
  }
  return out;
}

function checkWriteLayout(layout, model) {
  const { mode, fit, width, height, planes, tilesY, tilesX } = layout;
  for (const [k, v] of Object.entries({ width, height, planes, tilesY, tilesX })) {
    if (!Number.isSafeInteger(v) || v < 1) throw new KaeError(`layout: ${k} must be a positive integer, got ${v}`);
  }
  if (!MODES.includes(mode) || !FITS.includes(fit)) {
    throw new KaeError(`unknown mode '${mode}' or fit '${fit}' (expected one of ${MODES.join(', ')}; ${FITS.join(', ')})`);
  }
  if (planes > 4 || width * height > FORMAT_MAX_PIXELS) {
    throw new KaeError(`image ${width}x${height} with ${planes} planes: outside what a .kae file holds`);
  }
  checkLayout('layout', layout, model.tile, model.channels);  // what reading it would check
}

/** The .kae file of one image: version 2 for a model with tables (layout.integers: planes*tilesY*tilesX*D
 * latent integers; a context model's residuals are what is coded), else version 1 (layout.latents, float32,
 * quantised to `quant`). The same bytes as the Python library writes. */
export function writeKae(layout, model, { quant = 'uint8' } = {}) {
  checkWriteLayout(layout, model);
  const { mode, fit, width, height, planes, tilesY, tilesX } = layout;
  const count = planes * tilesY * tilesX;
  const D = model.latentDim;
  if (model.tables) {
    const values = layout.integers;
    if (!values || values.length !== count * D) {
      throw new KaeError(`latents: expected ${count * D} integers (planes, tiles_y, tiles_x, ${D}), got ${values ? values.length : 'none'}`);
    }
    const symbols = model.context ? residuals(values, model.context, count) : values;
    const head = [];
    const codecId = model.codecId;
    const oneTile = count === 1 && mode === 'L' && fit === 'tile' && height === model.tile[0] && width === model.tile[1];
    if (codecId !== null && codecId <= MAX_COMPACT_ID && oneTile) {
      head.push(0x80 | codecId);
    } else {
      const flags = (codecId !== null ? 1 : 0) | (FITS.indexOf(fit) << 1) | (MODES.indexOf(mode) << 2);
      head.push(0xc0 | flags);
      if (codecId !== null) head.push(...writeVarint(codecId));
      else head.push(...model.sha256Bytes.subarray(0, 8));
      for (const v of [width, height, planes, tilesY, tilesX]) head.push(...writeVarint(v));
    }
    const payload = rangecoder.encode(symbols, model.tables, count);
    const out = new Uint8Array(head.length + payload.length + CHECK_BYTES);
    out.set(head, 0);
    out.set(payload, head.length);
    const end = head.length + payload.length;
    const check = crc16(out, model.crcStart, 0, end);
    out[end] = check >> 8;
    out[end + 1] = check & 255;
    return out;
  }
  return writeV1(layout, model, quant, count * D);
}

function writeV1(layout, model, quant, n) {
  const z = layout.latents;
  if (!z || z.length !== n) throw new KaeError(`latents: expected ${n} float32 values, got ${z ? z.length : 'none'}`);
  if (!QUANTS.includes(quant)) throw new KaeError(`quant: expected uint8 or float16, got '${quant}'`);
  const { mode, fit, width, height, planes, tilesY, tilesX } = layout;
  if (width > 0xffffffff || height > 0xffffffff || tilesY > 0xffff || tilesX > 0xffff || model.latentDim > 0xffff) {
    throw new KaeError(`image ${width}x${height} with ${tilesY}x${tilesX} tiles: outside what a version 1 .kae file holds`);
  }
  const x = Float32Array.from(z);
  for (let i = 0; i < n; i++) if (!Number.isFinite(x[i])) throw new KaeError('latents contain NaN or infinity');
  const body = quant === 'uint8' ? 8 + n : 2 * n;
  const out = new Uint8Array(V1_HEAD + body + 4);
  const view = new DataView(out.buffer);
  out.set(MAGIC, 0);
  out[4] = 1;
  out[5] = QUANTS.indexOf(quant);
  out[6] = FITS.indexOf(fit);
  out[7] = MODES.indexOf(mode);
  out.set(model.sha256Bytes.subarray(0, 8), 8);
  view.setUint32(16, width, true);
  view.setUint32(20, height, true);
  out[24] = planes;
  view.setUint16(25, tilesY, true);
  view.setUint16(27, tilesX, true);
  view.setUint16(29, model.latentDim, true);
  let pos = V1_HEAD;
  if (quant === 'uint8') {
    // containers.quantize: one affine scale per file; numpy computes (x - lo) / scale in float32
    let lo = Infinity;
    let hi = -Infinity;
    for (let i = 0; i < n; i++) {
      if (x[i] < lo) lo = x[i];
      if (x[i] > hi) hi = x[i];
    }
    const scale = hi > lo ? (hi - lo) / 255 : 1;
    const scale32 = Math.fround(scale);
    view.setFloat32(pos, lo, true);
    view.setFloat32(pos + 4, scale, true);
    pos += 8;
    for (let i = 0; i < n; i++) {
      const r = rint(Math.fround(Math.fround(x[i] - lo) / scale32));
      out[pos + i] = r < 0 ? 0 : r > 255 ? 255 : r;
    }
    pos += n;
  } else {
    for (let i = 0; i < n; i++) {
      const h = toFloat16(x[i]);
      if ((h & 0x7c00) === 0x7c00) throw new KaeError('latents: a value is beyond float16 range (use uint8)');
      view.setUint16(pos + 2 * i, h, true);
    }
    pos += 2 * n;
  }
  view.setUint32(pos, crc32(out, 0, pos), true);
  return out;
}
