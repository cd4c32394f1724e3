// The out-of-domain check of kaecompress/codec/domain.py: whether an image is of the kind the model was made
// for (28x28 grey digits, clothing), decided while encoding it, with no decoding. A model whose card has a
// "domain" entry (model.json's `domain`, checked by model.mjs) is calibrated: every tile is scored on each of
// the entry's statistics, and an image is outside when, on any of them, the mean of its TOP_TILES highest tile
// scores exceeds the card's threshold:
// - bits: what a codec model's tables charge the tile's latent integers (a context model's residuals, escapes
//   included); z2 (plain models): the latents' mean squared z-score against the card's latent mean and std;
// - border (the mean of the tile's outer 2-pixel frame), grey (its share of pixels strictly between 0.1 and
//   0.9), corner (the mean of its darkest 4x4 corner), fill (its share of pixels of 0.02 or more).
// The same arithmetic as numpy's: pixel comparisons in float32 (numpy compares a float32 array with a Python
// float in float32), sums in doubles; the order of summation differs, so values agree to ~1e-15, not bit for
// bit. A card without the entry is not checked here (Python falls back to a sampled-PSNR warning).

import { KaeError } from './errors.mjs';
import { residuals } from './context.mjs';

export const TOP_TILES = 8;   // an image's value on a statistic: the mean of its highest tile scores
export const DOMAINS = { mnist: '28x28 handwritten digits (MNIST)', 'fashion-mnist': '28x28 clothing images (Fashion-MNIST)' };
export const STATISTICS = {
  bits: 'bits per tile', z2: 'latent z-score^2 per tile', border: 'mean edge brightness',
  grey: 'share of grey pixels', corner: "darkest corner's brightness", fill: 'share of non-black pixels',
};

const ESCAPE_BITS = Math.log2(64);  // an escape's class: side (2) x bit count (0..31), uniform
const GREY_LOW = Math.fround(0.1);
const GREY_HIGH = Math.fround(0.9);
const FILLED = Math.fround(0.02);

/** How one image compares with the model's own test images, on the statistic furthest from them (as
 * domain.py's DomainCheck); `values` holds the image's value on every statistic of the card. */
export class DomainCheck {
  constructor(statistic, value, threshold, tiles, values) {
    this.statistic = statistic;
    this.value = value;
    this.threshold = threshold;
    this.tiles = tiles;
    this.values = values;
  }

  get calibrated() {
    return true;
  }

  get outside() {
    return this.value > this.threshold;
  }

  /** e.g. "share of grey pixels 0.617 over its top 1 tile (limit 0.173)", as Python writes it. */
  describe() {
    const digits = this.statistic === 'bits' || this.statistic === 'z2' ? 1 : 3;
    const s = this.tiles > 1 ? 's' : '';
    return `${STATISTICS[this.statistic]} ${formatFixed(this.value, digits)} over its top ${this.tiles} tile${s} ` +
      `(limit ${formatFixed(this.threshold, digits)})`;
  }

  toJSON() {
    return { statistic: this.statistic, value: this.value, threshold: this.threshold, tiles: this.tiles,
      outside: this.outside, values: this.values };
  }
}

/** Python's f"{x:,.{digits}f}": the exact binary value rounded half to even, thousands separated by commas
 * (Number.prototype.toFixed rounds exact ties up: 0.0625 -> "0.063" where Python writes "0.062"). */
export function formatFixed(x, digits) {
  if (Number.isNaN(x)) return 'nan';
  if (!Number.isFinite(x)) return x > 0 ? 'inf' : '-inf';
  const sign = x < 0 || Object.is(x, -0) ? '-' : '';
  const a = Math.abs(x);
  let text;
  if (a >= 1e21) {  // an integer: toFixed would switch to exponent notation
    text = BigInt(a).toString() + (digits ? `.${'0'.repeat(digits)}` : '');
  } else {
    text = a.toFixed(digits);
    const exact = a.toFixed(100);  // every digit of a double this large (ties need at most digits + 1)
    const dot = exact.indexOf('.');
    const rest = exact.slice(dot + 1 + digits);
    if (rest[0] === '5' && /^0*$/.test(rest.slice(1))) {  // an exact tie: to the even neighbour
      const kept = digits ? exact.slice(0, dot + 1 + digits) : exact.slice(0, dot);
      if (Number(kept[kept.length - 1]) % 2 === 0) text = kept;
    }
  }
  const [whole, frac] = text.split('.');
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return sign + grouped + (frac !== undefined ? `.${frac}` : '');
}

/** The phrase naming the model's domain in refusals (domain.py's domain_of). */
export function domainOf(model) {
  const dataset = model.dataset ?? 'mnist';
  return DOMAINS[dataset] ?? `images like those of ${dataset.startsWith('folder:') ? dataset.slice(7) : dataset}`;
}

// A codec model's bits per symbol value, per dimension and table index: precision - log2(freq).
const bitTables = new WeakMap();
function symbolBits(tables) {
  let bits = bitTables.get(tables);
  if (!bits) {
    bits = new Float64Array(tables.freqs.length);
    for (let i = 0; i < bits.length; i++) bits[i] = tables.precision - Math.log2(tables.freqs[i]);
    bitTables.set(tables, bits);
  }
  return bits;
}

// bit_length(e) - 1 of a positive integer e below 2^53, exact where log2 rounds.
function floorLog2(e) {
  let n = Math.floor(Math.log2(e));
  while (2 ** (n + 1) <= e) n++;
  while (2 ** n > e) n--;
  return n;
}

/** Each tile's score on each statistic of the model's calibration: {name: Float64Array(count)}.
 * `tiles`: count x channels x h x w float32 (what the encoder took); `latents`: count x D, the encoder's
 * output (plain models) or `integers`, their rounded integers (codec models). */
export function tileScores(model, tiles, count, { latents = null, integers = null } = {}) {
  const domain = model.domain;
  const [h, w] = model.tile;
  const c = model.channels;
  const D = model.latentDim;
  const per = c * h * w;
  const out = {};
  for (const [name] of domain.statistics) {
    const score = new Float64Array(count);
    out[name] = score;
    if (name === 'bits') {
      const { tables } = model;
      const symbols = model.context ? residuals(integers, model.context, count) : integers;
      const bits = symbolBits(tables);
      const K = tables.symbols;
      const { offsets } = tables;
      for (let t = 0; t < count; t++) {
        let sum = 0;
        for (let d = 0; d < D; d++) {
          const rel = symbols[t * D + d] - offsets[d];
          if (rel >= 0 && rel < K - 1) {
            sum += bits[d * K + rel];
          } else {  // escaped: the escape symbol, its class and the distance's low bits
            const e1 = rel >= K - 1 ? rel - (K - 1) + 1 : -rel;
            sum += bits[d * K + K - 1] + ESCAPE_BITS + floorLog2(e1);
          }
        }
        score[t] = sum;
      }
    } else if (name === 'z2') {
      const { mean, std } = domain;
      for (let t = 0; t < count; t++) {
        let sum = 0;
        for (let d = 0; d < D; d++) {
          const z = (latents[t * D + d] - mean[d]) / std[d];
          sum += z * z;
        }
        score[t] = sum / D;
      }
    } else {
      for (let t = 0; t < count; t++) score[t] = pixelScore(name, tiles, t * per, c, h, w);
    }
  }
  return out;
}

function pixelScore(name, tiles, base, c, h, w) {
  const n = c * h * w;
  if (name === 'grey' || name === 'fill') {
    let hits = 0;
    for (let i = base; i < base + n; i++) {
      const v = tiles[i];
      if (name === 'grey' ? v > GREY_LOW && v < GREY_HIGH : v >= FILLED) hits++;
    }
    return hits / n;
  }
  if (name === 'border') {  // the outer 2-pixel frame: all but [2:-2, 2:-2]
    let sum = 0;
    let count = 0;
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h; y++) {
        const row = base + (ch * h + y) * w;
        const inner = y >= 2 && y < h - 2;
        for (let x = 0; x < w; x++) {
          if (inner && x >= 2 && x < w - 2) continue;
          sum += tiles[row + x];
          count++;
        }
      }
    }
    return sum / count;
  }
  // corner: the darkest of the four 4x4 corners (rows [:4] or [-4:], columns likewise)
  let darkest = Infinity;
  for (const [y0, y1] of [[0, Math.min(4, h)], [Math.max(0, h - 4), h]]) {
    for (const [x0, x1] of [[0, Math.min(4, w)], [Math.max(0, w - 4), w]]) {
      let sum = 0;
      for (let ch = 0; ch < c; ch++) {
        for (let y = y0; y < y1; y++) {
          const row = base + (ch * h + y) * w;
          for (let x = x0; x < x1; x++) sum += tiles[row + x];
        }
      }
      const mean = sum / (c * (y1 - y0) * (x1 - x0));
      if (mean < darkest || Number.isNaN(mean)) darkest = mean;
    }
  }
  return darkest;
}

/** The check of one image from its tiles' scores (`start`, `count`: its tiles among them): on each statistic
 * the mean of its TOP_TILES highest scores (one tile: its score), and the statistic furthest over (or nearest
 * to) its limit, the first of equals. */
export function imageCheck(model, scores, start, count) {
  let best = null;
  let bestRatio = -Infinity;
  const values = {};
  const tiles = Math.min(count, TOP_TILES);
  for (const [name, threshold] of model.domain.statistics) {
    const mine = scores[name].subarray(start, start + count);
    let value;
    if (count === 1) {
      value = mine[0];
    } else {
      const top = Float64Array.from(mine).sort().reverse().subarray(0, tiles);
      let sum = 0;
      for (const v of top) sum += v;
      value = sum / top.length;
    }
    values[name] = value;
    const ratio = value / Math.max(threshold, 1e-9);
    if (best === null || ratio > bestRatio) {
      best = [name, value, threshold];
      bestRatio = ratio;
    }
  }
  return new DomainCheck(best[0], best[1], best[2], tiles, values);
}

/** "FILE: outside MODEL's domain, DOMAIN: why", the start of Python's refusal and warning lines. */
export function outsideLine(name, check, model) {
  return `${name}: outside ${model.name}'s domain, ${domainOf(model)}: ${check.describe()}`;
}

/** The one-line refusal of `kaec encode` for images outside the domain, or null when none is: `names` and
 * `checks` (DomainCheck or null: not checked) per image; `how` ends the line, saying what forces it
 * ("--force encodes anyway", "{force: true} encodes anyway"). */
export function refusal(names, checks, model, how) {
  const outside = [];
  checks.forEach((check, i) => {
    if (check && check.calibrated && check.outside) outside.push(i);
  });
  if (!outside.length) return null;
  const first = names[outside[0]];
  let what = first;
  if (outside.length > 1) {
    const shown = outside.slice(0, 3).map((i) => names[i]).join(', ');
    const more = outside.length > 3 ? ` and ${outside.length - 3} more` : '';
    what = `${outside.length} of ${names.length} images (${shown}${more}); ${first}`;
  }
  return `${outsideLine(what, checks[outside[0]], model)}; ${how}`;
}

/** A KaeError of that refusal, carrying the checks (error.domainChecks). */
export function refusalError(names, checks, model, how) {
  const message = refusal(names, checks, model, how);
  if (message === null) return null;
  const error = new KaeError(message);
  error.domainChecks = checks;
  return error;
}
