// The linear context model of kaecompress/codec/context.py: with the dimensions in coding order order[0..D-1],
// latent order[i] is coded as its residual from the prediction
//     floor((sum_{j<i} weights[i][j] * latent[order[j]] + bias[i] + 2^11) / 2^12).
// The sums are formed in doubles, which is exact: latents stay below 2^31 and every row's absolute weights
// sum below 2^21 (model.mjs refuses other models), so every partial sum stays below 2^52.

import { KaeError } from './errors.mjs';

const SHIFT_DIV = 4096;   // 2^12: weights are fixed point with 12 fractional bits
const HALF = 2048;
const LATENT_LIMIT = 2 ** 31;

/** The context object model.mjs builds: order, weights (D*D, coding order), bias, and the coding positions
 * that are predicted (a non-zero row or bias), each with the end of its non-zero weights. */
export function prepareContext(order, weights, bias) {
  const dims = order.length;
  const predicted = [];
  for (let i = 0; i < dims; i++) {
    let end = 0;
    for (let j = 0; j < i; j++) if (weights[i * dims + j] !== 0) end = j + 1;
    if (end || bias[i] !== 0) predicted.push({ i, end, bias: bias[i] + HALF });
  }
  return { dims, order, weights, bias, predicted };
}

// The prediction of coding position p.i from the latents in coding order `yc` (a dense dot product: the
// shipped models' rows are nearly full).
function prediction(p, yc, weights, dims) {
  const row = p.i * dims;
  const end = p.end;
  let s0 = 0, s1 = 0, s2 = 0, s3 = 0;  // integer partial sums: exact in any order
  let j = 0;
  for (; j + 3 < end; j += 4) {
    s0 += weights[row + j] * yc[j];
    s1 += weights[row + j + 1] * yc[j + 1];
    s2 += weights[row + j + 2] * yc[j + 2];
    s3 += weights[row + j + 3] * yc[j + 3];
  }
  for (; j < end; j++) s0 += weights[row + j] * yc[j];
  return Math.floor((s0 + s1 + s2 + s3 + p.bias) / SHIFT_DIV);
}

/** The symbols to code for integer latents (count * D values, vector after vector): a Float64Array of
 * residuals (which the range coder refuses beyond 32 bits, as Python's does). */
export function residuals(latents, context, count) {
  const { dims, order, weights, predicted } = context;
  const n = count * dims;
  for (let k = 0; k < n; k++) {
    const v = latents[k];
    if (!Number.isInteger(v) || Math.abs(v) >= LATENT_LIMIT) {
      throw new KaeError(Number.isInteger(v) ? 'latents: a value is beyond +-2**31' : `latents: expected integers, got ${v}`);
    }
  }
  const out = new Float64Array(n);
  const yc = new Float64Array(dims);
  for (let t = 0; t < count; t++) {
    const base = t * dims;
    for (let j = 0; j < dims; j++) yc[j] = latents[base + order[j]];
    for (let k = 0; k < dims; k++) out[base + k] = latents[base + k];
    for (const p of predicted) out[base + order[p.i]] -= prediction(p, yc, weights, dims);
  }
  return out;
}

/** The latents (Int32Array) whose residuals (count * D integers) were decoded: in coding order, each
 * predicted one adds its prediction from those restored before it. A value at or beyond 2^31 in magnitude
 * (only a damaged or crafted file gives one) is refused, as Python's restore refuses it. */
export function restore(values, context, count, where = 'latents') {
  const { dims, order, weights, predicted } = context;
  const out = new Int32Array(count * dims);
  const yc = new Float64Array(dims);
  for (let t = 0; t < count; t++) {
    const base = t * dims;
    for (let j = 0; j < dims; j++) yc[j] = values[base + order[j]];
    for (const p of predicted) {
      // earlier positions are final here, so the sum is exact (every |latent| < 2^31 so far)
      const v = yc[p.i] + prediction(p, yc, weights, dims);
      if (!(Math.abs(v) < LATENT_LIMIT)) throw beyond(where);
      yc[p.i] = v;
    }
    for (let j = 0; j < dims; j++) {
      if (!(Math.abs(yc[j]) < LATENT_LIMIT)) throw beyond(where);
      out[base + order[j]] = yc[j];
    }
  }
  return out;
}

function beyond(where) {
  return new KaeError(`${where}: a latent value restored from the file is beyond +-2**31 (damaged file)`);
}
