// PNG files read and written without a library: zlib through the platform's DecompressionStream and
// CompressionStream ("deflate" is the zlib format PNG uses), which Node 20 and browsers both have.
//
// Reading gives the image as Pillow opens it, so encoding a PNG here gives the latents kaec gives:
//   grey 1-bit -> mode 1 (0/255); grey 2/4/8-bit -> L (2- and 4-bit values scaled to 0..255);
//   grey 16-bit -> I;16 (Uint16Array, scaled by 65535 when encoded); grey+alpha 8-bit -> LA;
//   grey+alpha 16-bit -> RGBA (Pillow 13 opens it so); RGB and RGBA 16-bit -> their high bytes;
//   palette -> RGB, or RGBA when it has a tRNS chunk (images.working_mode converts P so).
// Interlaced files and anything outside the PNG specification are refused with a KaeError naming the file.

import { KaeError, MAX_PIXELS, asBytes, checkPixels, crc32 } from './bitstream.mjs';

const SIGNATURE = [137, 80, 78, 71, 13, 10, 26, 10];
// colour type -> [channels, allowed bit depths]
const COLOUR_TYPES = { 0: [1, [1, 2, 4, 8, 16]], 2: [3, [8, 16]], 3: [1, [1, 2, 4, 8]], 4: [2, [8, 16]], 6: [4, [8, 16]] };
const MAX_CHUNK = 0x7fffffff;
// Deflate turns at most 258 bytes into 2 bits: zlib data can hold at most about 1032 times its size, so less
// compressed data than the image needs / 1032 is truncated for sure (refused before anything is allocated).
const MAX_DEFLATE_RATIO = 1033;
const ZLIB_OVERHEAD = 64;

/** True when the bytes start with the PNG signature. */
export function isPng(bytes) {
  return bytes.length >= 8 && SIGNATURE.every((b, i) => bytes[i] === b);
}

/** A PNG file's image {width, height, mode, pixels} (see above); KaeError naming `where` otherwise. */
export async function readPng(bytes, where = 'PNG file', maxPixels = MAX_PIXELS) {
  const data = asBytes(bytes, where);
  if (!isPng(data)) throw new KaeError(`${where}: unreadable image (not a PNG file)`);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let pos = 8;
  let header = null, palette = null, alpha = null, ended = false;
  const idat = [];
  while (pos < data.length && !ended) {
    if (pos + 12 > data.length) throw new KaeError(`${where}: unreadable image (truncated PNG chunk)`);
    const length = view.getUint32(pos);
    const type = String.fromCharCode(...data.subarray(pos + 4, pos + 8));
    if (length > MAX_CHUNK || pos + 12 + length > data.length) {
      throw new KaeError(`${where}: unreadable image (truncated PNG chunk ${JSON.stringify(type)})`);
    }
    const body = data.subarray(pos + 8, pos + 8 + length);
    if (crc32(data, pos + 4, pos + 8 + length) !== view.getUint32(pos + 8 + length)) {
      throw new KaeError(`${where}: unreadable image (broken PNG file: CRC mismatch in chunk ${JSON.stringify(type)})`);
    }
    if (header === null && type !== 'IHDR') throw new KaeError(`${where}: unreadable image (PNG without IHDR first)`);
    if (type === 'IHDR') header = parseHeader(body, where, maxPixels);
    else if (type === 'PLTE') palette = body;
    else if (type === 'tRNS') alpha = body;
    else if (type === 'IDAT') idat.push(body);
    else if (type === 'IEND') ended = true;
    else if (!(data[pos + 4] & 0x20)) {  // a critical chunk we do not know
      throw new KaeError(`${where}: unreadable image (unknown critical PNG chunk ${JSON.stringify(type)})`);
    }
    pos += 12 + length;
  }
  if (!header) throw new KaeError(`${where}: unreadable image (PNG without IHDR)`);
  if (!idat.length) throw new KaeError(`${where}: unreadable image (PNG without image data)`);
  if (header.colourType === 3 && !palette) throw new KaeError(`${where}: unreadable image (palette PNG without PLTE)`);
  const { width, height, depth, colourType } = header;
  const channels = COLOUR_TYPES[colourType][0];
  const bitsPerPixel = channels * depth;
  const rowBytes = Math.ceil((width * bitsPerPixel) / 8);
  const expected = height * (rowBytes + 1);
  const compressed = idat.reduce((sum, part) => sum + part.length, 0);
  if (expected > MAX_DEFLATE_RATIO * compressed + ZLIB_OVERHEAD) {
    throw new KaeError(`${where}: unreadable image (truncated PNG data: ${compressed} compressed bytes cannot hold ` +
      `a ${width}x${height} image)`);
  }
  const raw = await inflate(idat, expected, where);
  const rows = unfilter(raw, width, height, rowBytes, Math.max(1, bitsPerPixel >> 3), where);
  return toImage(rows, header, rowBytes, palette, alpha);
}

function parseHeader(body, where, maxPixels) {
  if (body.length !== 13) throw new KaeError(`${where}: unreadable image (PNG header of ${body.length} bytes)`);
  const v = new DataView(body.buffer, body.byteOffset, 13);
  const width = v.getUint32(0), height = v.getUint32(4);
  const [depth, colourType, compression, filter, interlace] = body.subarray(8, 13);
  const kind = COLOUR_TYPES[colourType];
  if (!kind || !kind[1].includes(depth) || compression !== 0 || filter !== 0 || interlace > 1) {
    throw new KaeError(`${where}: unreadable image (PNG colour type ${colourType} with bit depth ${depth}, ` +
      `compression ${compression}, filter ${filter}, interlace ${interlace}: not a valid PNG header)`);
  }
  if (interlace) {
    throw new KaeError(`${where}: interlaced PNG (Adam7) is not supported here; save it without interlacing`);
  }
  checkPixels(width, height, where, maxPixels);  // before anything is allocated
  return { width, height, depth, colourType };
}

// zlib-inflate the IDAT data: the image's bytes, no more (the rest is never inflated: a zlib bomb costs
// nothing), and refused when they are fewer.
async function inflate(parts, expected, where) {
  const stream = new Blob(parts).stream().pipeThrough(new DecompressionStream('deflate'));
  const reader = stream.getReader();
  const out = new Uint8Array(expected);
  let got = 0;
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      if (got + value.length > expected) {
        reader.cancel().catch(() => {});
        // extra bytes after the image are ignored by Pillow too; keep what the image needs
        out.set(value.subarray(0, expected - got), got);
        got = expected;
        break;
      }
      out.set(value, got);
      got += value.length;
    }
  } catch (e) {
    if (got < expected) {
      throw new KaeError(`${where}: unreadable image (damaged PNG data: ${String(e?.message ?? e).split('\n')[0]})`);
    }
  }
  if (got < expected) {
    throw new KaeError(`${where}: unreadable image (truncated PNG data: ${got} of ${expected} bytes)`);
  }
  return out;
}

function unfilter(raw, width, height, rowBytes, bpp, where) {
  const rows = new Uint8Array(height * rowBytes);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (rowBytes + 1)];
    const src = y * (rowBytes + 1) + 1;
    const dst = y * rowBytes;
    const up = dst - rowBytes;
    for (let i = 0; i < rowBytes; i++) {
      const a = i >= bpp ? rows[dst + i - bpp] : 0;
      const b = y > 0 ? rows[up + i] : 0;
      const c = y > 0 && i >= bpp ? rows[up + i - bpp] : 0;
      let x = raw[src + i];
      switch (filter) {
        case 0: break;
        case 1: x += a; break;
        case 2: x += b; break;
        case 3: x += (a + b) >> 1; break;
        case 4: {
          const p = a + b - c, pa = Math.abs(p - a), pb = Math.abs(p - b), pc = Math.abs(p - c);
          x += pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
          break;
        }
        default: throw new KaeError(`${where}: unreadable image (PNG row ${y} has filter type ${filter})`);
      }
      rows[dst + i] = x;
    }
  }
  return rows;
}

function toImage(rows, { width, height, depth, colourType }, rowBytes, palette, alpha) {
  const n = width * height;
  // sample k of row y at `depth` bits
  const sample = (y, k) => {
    if (depth === 8) return rows[y * rowBytes + k];
    if (depth === 16) return (rows[y * rowBytes + 2 * k] << 8) | rows[y * rowBytes + 2 * k + 1];
    const bit = k * depth;
    return (rows[y * rowBytes + (bit >> 3)] >> (8 - depth - (bit & 7))) & ((1 << depth) - 1);
  };
  if (colourType === 3) {  // palette -> RGB, or RGBA with tRNS
    const bands = alpha ? 4 : 3;
    const entries = Math.floor(palette.length / 3);
    const pixels = new Uint8Array(n * bands);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const i = sample(y, x), o = (y * width + x) * bands;
        if (i < entries) pixels.set(palette.subarray(3 * i, 3 * i + 3), o);
        if (alpha) pixels[o + 3] = i < alpha.length ? alpha[i] : 255;
      }
    }
    return { width, height, mode: alpha ? 'RGBA' : 'RGB', pixels };
  }
  const channels = COLOUR_TYPES[colourType][0];
  if (colourType === 0 && depth === 16) {
    const pixels = new Uint16Array(n);
    for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) pixels[y * width + x] = sample(y, x);
    return { width, height, mode: 'I;16', pixels };
  }
  if (colourType === 0 && depth < 8) {
    const scale = depth === 1 ? 255 : depth === 2 ? 85 : 17;
    const pixels = new Uint8Array(n);
    for (let y = 0; y < height; y++) for (let x = 0; x < width; x++) pixels[y * width + x] = sample(y, x) * scale;
    return { width, height, mode: depth === 1 ? '1' : 'L', pixels };
  }
  const high = (v) => (depth === 16 ? v >> 8 : v);
  if (colourType === 4 && depth === 16) {  // Pillow opens 16-bit grey+alpha as RGBA
    const pixels = new Uint8Array(n * 4);
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const g = high(sample(y, 2 * x)), o = (y * width + x) * 4;
        pixels[o] = pixels[o + 1] = pixels[o + 2] = g;
        pixels[o + 3] = high(sample(y, 2 * x + 1));
      }
    }
    return { width, height, mode: 'RGBA', pixels };
  }
  const pixels = new Uint8Array(n * channels);
  if (depth === 8) pixels.set(rows);  // rows are already interleaved samples, no padding at 8 bits
  else for (let y = 0; y < height; y++) for (let k = 0; k < width * channels; k++) pixels[y * width * channels + k] = high(sample(y, k));
  return { width, height, mode: { 0: 'L', 2: 'RGB', 4: 'LA', 6: 'RGBA' }[colourType], pixels };
}

// ---- writing ----------------------------------------------------------------------------------------------

function chunk(type, body) {
  const out = new Uint8Array(12 + body.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, body.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(body, 8);
  view.setUint32(8 + body.length, crc32(out, 4, 8 + body.length));
  return out;
}

async function deflate(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new CompressionStream('deflate'));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

/** The PNG file of an image {width, height, mode: L|LA|RGB|RGBA|1, pixels} (8-bit, mode 1 as a 1-bit grey
 * PNG of 0/255 as Pillow writes it; any non-zero value of mode 1 is white). */
export async function writePng({ width, height, mode, pixels }) {
  const types = { L: [0, 1], LA: [4, 2], RGB: [2, 3], RGBA: [6, 4], 1: [0, 1] };
  if (!Object.hasOwn(types, mode)) throw new KaeError(`PNG: cannot write mode ${JSON.stringify(mode)}`);
  const [colourType, bands] = types[mode];
  checkPixels(width, height, 'PNG');
  if (pixels.length !== width * height * bands) {
    throw new KaeError(`PNG: ${pixels.length} values for a ${width}x${height} ${mode} image`);
  }
  const depth = mode === '1' ? 1 : 8;
  const rowBytes = mode === '1' ? Math.ceil(width / 8) : width * bands;
  const raw = new Uint8Array(height * (rowBytes + 1));  // filter type 0 on every row
  for (let y = 0; y < height; y++) {
    const o = y * (rowBytes + 1) + 1;
    if (mode === '1') {
      for (let x = 0; x < width; x++) if (pixels[y * width + x]) raw[o + (x >> 3)] |= 0x80 >> (x & 7);
    } else {
      raw.set(pixels.subarray(y * rowBytes, (y + 1) * rowBytes), o);
    }
  }
  const head = new Uint8Array(13);
  const v = new DataView(head.buffer);
  v.setUint32(0, width);
  v.setUint32(4, height);
  head[8] = depth;
  head[9] = colourType;
  const parts = [Uint8Array.from(SIGNATURE), chunk('IHDR', head), chunk('IDAT', await deflate(raw)), chunk('IEND', new Uint8Array(0))];
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
