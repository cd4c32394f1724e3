// Images to model tiles and back: the JavaScript twin of kaecompress/codec/images.py.
//
// An image here is {width, height, mode, pixels}: pixels row-major with the bands interleaved, Uint8Array for
// the modes L, LA, RGB, RGBA and 1 (one band of 0/255), Uint16Array for I;16 (a 16-bit grey PNG, as Pillow
// opens it). Every step is done as the Python library does it, in the same float32 arithmetic, so the
// networks see the same numbers and the same integers come out:
// - a 1-channel model takes each band as its own plane (L: 1, LA: 2, RGB: 3, RGBA: 4); a 3-channel model
//   takes the image as RGB, one plane;
// - fit "tile" cuts each plane into model-sized tiles, the right and bottom edges padded by repeating the
//   last column and row; fit "resize" resizes each band to one tile with Pillow's BILINEAR filter on float
//   ("F") images, and decoding resizes back;
// - decoded values become 8 bits as round(v * 255) in float32, half to even, NaN as 0, clipped; mode 1 is
//   thresholded at 128 (Pillow's convert("1") without dither).

import { BANDS, FITS, KaeError, checkPixels, rint } from './bitstream.mjs';

/** The mode decoding restores (images.working_mode, after png.mjs has turned palettes into RGB or RGBA). */
function workingMode(mode, channels = 1) {
  if (channels === 3) return 'RGB';
  if (mode === 'I;16') return 'L';
  if (!Object.hasOwn(BANDS, mode)) throw new KaeError(`image mode ${JSON.stringify(mode)}: expected L, LA, RGB, RGBA or 1`);
  return mode;
}

/** Check an image object's fields and the length of its pixels. */
export function checkImage(image, where = 'image') {
  const { width, height, mode, pixels } = image;
  if (!Object.hasOwn(BANDS, mode) && mode !== 'I;16') {
    throw new KaeError(`${where}: mode ${JSON.stringify(mode)}; expected L, LA, RGB, RGBA or 1`);
  }
  checkPixels(width, height, where);
  const bands = mode === 'I;16' ? 1 : BANDS[mode];
  const want = mode === 'I;16' ? Uint16Array : Uint8Array;
  if (!(pixels instanceof want) && !(want === Uint8Array && pixels instanceof Uint8ClampedArray)) {
    throw new KaeError(`${where}: pixels must be a ${want.name} for mode ${mode}`);
  }
  if (pixels.length !== width * height * bands) {
    throw new KaeError(`${where}: ${pixels.length} pixel values; a ${width}x${height} ${mode} image has ` +
      `${width * height * bands}`);
  }
}

/** The image's bands in `mode` as float32 planes in [0, 1] (images._as_array): one Float32Array of
 * height x width per band. Pillow's conversions used: L/LA/RGBA/1 -> RGB copy grey and drop alpha. */
function floatBands(image, mode) {
  const { width, height, pixels } = image;
  const n = width * height;
  if (image.mode === 'I;16') {
    // a 16-bit image is scaled by its own range: value / 65535 (float64, then float32), clipped
    const band = new Float32Array(n);
    for (let i = 0; i < n; i++) band[i] = Math.min(Math.max(pixels[i] / 65535, 0), 1);
    return mode === 'RGB' ? [band, band.slice(), band.slice()] : [band];
  }
  const src = BANDS[image.mode];
  const picks = bandSources(image.mode, mode);
  const lut = new Float32Array(256);
  for (let v = 0; v < 256; v++) lut[v] = v / 255;  // float32 division, correctly rounded through float64
  return picks.map((b) => {
    const band = new Float32Array(n);
    if (image.mode === '1') {
      for (let i = 0; i < n; i++) band[i] = pixels[i * src + b] ? 1 : 0;
    } else {
      for (let i = 0; i < n; i++) band[i] = lut[pixels[i * src + b]];
    }
    return band;
  });
}

// Which source band each band of `mode` copies (the conversions between these modes copy bands only).
function bandSources(from, to) {
  if (from === to || (from === '1' && to === 'L')) return [...Array(BANDS[to]).keys()];
  if (to === 'RGB') return { L: [0, 0, 0], LA: [0, 0, 0], '1': [0, 0, 0], RGBA: [0, 1, 2] }[from];
  throw new KaeError(`cannot convert a ${from} image to ${to}`);
}

// ---- Pillow's BILINEAR resampling of float images ------------------------------------------------------
// Separable: a horizontal pass, then a vertical one, each only where that size changes. Each output sample
// is a weighted sum of the input samples under a triangle filter centred on it; when shrinking, the filter
// widens by the scale factor so every input sample contributes. Weights are float64 and normalised to sum
// to 1, sums are taken in float64 in input order, and each pass stores float32.

function triangle(x) {
  x = Math.abs(x);
  return x < 1 ? 1 - x : 0;
}

function resampleCoefficients(inSize, outSize) {
  const scale = inSize / outSize;
  const filterScale = Math.max(scale, 1);
  const support = filterScale;  // the triangle's support is 1
  const kSize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const weights = new Float64Array(outSize * kSize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const inverse = 1 / filterScale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let total = 0;
    const k = xx * kSize;
    for (let x = 0; x < xmax; x++) {
      const w = triangle((x + xmin - center + 0.5) * inverse);
      weights[k + x] = w;
      total += w;
    }
    if (total !== 0) for (let x = 0; x < xmax; x++) weights[k + x] /= total;
    bounds[2 * xx] = xmin;
    bounds[2 * xx + 1] = xmax;
  }
  return { bounds, weights, kSize };
}

function horizontalPass(src, width, height, outWidth) {
  const { bounds, weights, kSize } = resampleCoefficients(width, outWidth);
  const out = new Float32Array(outWidth * height);
  for (let y = 0; y < height; y++) {
    const row = y * width;
    for (let xx = 0; xx < outWidth; xx++) {
      const xmin = bounds[2 * xx], n = bounds[2 * xx + 1], k = xx * kSize;
      let sum = 0;
      for (let x = 0; x < n; x++) sum += src[row + xmin + x] * weights[k + x];
      out[y * outWidth + xx] = sum;
    }
  }
  return out;
}

function verticalPass(src, width, height, outHeight) {
  const { bounds, weights, kSize } = resampleCoefficients(height, outHeight);
  const out = new Float32Array(width * outHeight);
  for (let yy = 0; yy < outHeight; yy++) {
    const ymin = bounds[2 * yy], n = bounds[2 * yy + 1], k = yy * kSize;
    for (let x = 0; x < width; x++) {
      let sum = 0;
      for (let y = 0; y < n; y++) sum += src[(ymin + y) * width + x] * weights[k + y];
      out[yy * width + x] = sum;
    }
  }
  return out;
}

/** One float32 plane (height x width) resized to outWidth x outHeight as Pillow's
 * Image.fromarray(band, "F").resize((outWidth, outHeight), BILINEAR) does it. The order of the passes
 * changes the float32 rounding in between, so it follows Pillow's (13): the vertical pass first when the
 * height shrinks by more than twice as many pixels as the width does, else the horizontal one (found by
 * comparing both orders with Pillow on 15,000 size pairs: this rule picked the matching one in all). */
export function resizeBilinear(band, width, height, outWidth, outHeight) {
  const h = outWidth !== width, v = outHeight !== height;
  if (!h && !v) return Float32Array.from(band);
  if (!v) return horizontalPass(band, width, height, outWidth);
  if (!h) return verticalPass(band, width, height, outHeight);
  if (outHeight < height && height - outHeight > 2 * (width - outWidth)) {
    return horizontalPass(verticalPass(band, width, height, outHeight), width, outHeight, outWidth);
  }
  return verticalPass(horizontalPass(band, width, height, outWidth), outWidth, height, outHeight);
}

// ---- images -> tiles ------------------------------------------------------------------------------------

/** The planes the model takes (Codec._planes): {planes: [Float32Array of channels x h x w], mode, h, w}. */
export function toPlanes(image, channels, tileH, tileW, fit) {
  if (!FITS.includes(fit)) throw new KaeError(`fit: expected tile or resize, got ${JSON.stringify(fit)}`);
  if (channels !== 1 && channels !== 3) throw new KaeError('images need a 1- or 3-channel model');
  const mode = workingMode(image.mode, channels);
  let bands = floatBands(image, mode);
  let h = image.height, w = image.width;
  if (fit === 'resize') {
    bands = bands.map((b) => resizeBilinear(b, w, h, tileW, tileH));
    h = tileH;
    w = tileW;
  }
  if (channels === 1) return { planes: bands, mode, h, w };
  const plane = new Float32Array(3 * h * w);
  bands.forEach((b, i) => plane.set(b, i * h * w));
  return { planes: [plane], mode, h, w };
}

/** The model-sized tiles of the planes (Codec._tiles): edges padded by repeating the last row and column.
 * Returns {tiles: Float32Array (tiles x channels x tileH x tileW), grid: [planes, tilesY, tilesX]}. */
export function toTiles(planes, channels, h, w, tileH, tileW) {
  const ty = Math.ceil(h / tileH), tx = Math.ceil(w / tileW);
  const tileSize = channels * tileH * tileW;
  const tiles = new Float32Array(planes.length * ty * tx * tileSize);
  let t = 0;
  for (const plane of planes) {
    for (let r = 0; r < ty; r++) {
      for (let q = 0; q < tx; q++, t++) {
        for (let c = 0; c < channels; c++) {
          const base = t * tileSize + c * tileH * tileW;
          for (let y = 0; y < tileH; y++) {
            const sy = Math.min(r * tileH + y, h - 1);
            const row = c * h * w + sy * w;
            for (let x = 0; x < tileW; x++) tiles[base + y * tileW + x] = plane[row + Math.min(q * tileW + x, w - 1)];
          }
        }
      }
    }
  }
  return { tiles, grid: [planes.length, ty, tx] };
}

// ---- tiles -> images ------------------------------------------------------------------------------------

/** images._to_8bit of one value: round(v * 255) in float32, half to even, NaN as 0, clipped to 0..255. */
export function to8bit(v) {
  const s = rint(Math.fround(v * 255));
  return s > 0 ? (s < 255 ? s : 255) : 0;  // NaN fails both tests: 0
}

/** The image rebuilt from its decoded tiles (Codec._image): `tiles` is the decoder's output for the file's
 * tiles in order (planes x tilesY x tilesX, each channels x tileH x tileW). Returns {width, height, mode,
 * pixels} with mode L, LA, RGB or RGBA by its bands, or 1 (0/255) when the file says so. */
export function fromTiles(tiles, grid, channels, tileH, tileW, width, height, mode, fit) {
  const [p, ty, tx] = grid;
  const bands = p * channels;
  const pixels = new Uint8Array(width * height * bands);
  const tileSize = channels * tileH * tileW;
  for (let plane = 0; plane < p; plane++) {
    for (let c = 0; c < channels; c++) {
      const band = plane * channels + c;
      if (fit === 'resize') {
        const start = plane * tileSize + c * tileH * tileW;
        const out = resizeBilinear(tiles.subarray(start, start + tileH * tileW), tileW, tileH, width, height);
        for (let i = 0; i < width * height; i++) pixels[i * bands + band] = to8bit(out[i]);
        continue;
      }
      for (let y = 0; y < height; y++) {
        const r = Math.floor(y / tileH), yy = y % tileH;
        for (let x = 0; x < width; x++) {
          const q = Math.floor(x / tileW);
          const t = (plane * ty + r) * tx + q;
          pixels[(y * width + x) * bands + band] =
            to8bit(tiles[t * tileSize + c * tileH * tileW + yy * tileW + (x % tileW)]);
        }
      }
    }
  }
  if (mode === '1') {
    for (let i = 0; i < pixels.length; i++) pixels[i] = pixels[i] >= 128 ? 255 : 0;
    return { width, height, mode: '1', pixels };
  }
  return { width, height, mode: ['L', 'LA', 'RGB', 'RGBA'][bands - 1], pixels };
}
