// model.json (schema "kaecompress-web-model", version 1) -> the model object the coder uses: typed arrays,
// the 32 sha256 bytes and the CRC state after them. Every field is checked as the Python library checks the
// same arrays (codec/rangecoder.py _check_tables, codec/context.py check, codec/domain.py calibration), so a bad
// file is refused here, with the field named, rather than giving wrong integers or decisions later.

import { KaeError, crc16 } from './bitstream.mjs';
import { modelCdf } from './rangecoder.mjs';
import { prepareContext } from './context.mjs';
import { STATISTICS } from './domain.mjs';

const SCHEMA = 'kaecompress-web-model';
const SCHEMA_VERSION = 1;
const MAX_DIMS = 4096;
const MAX_SYMBOLS_PER_ROW = 4096;
const MAX_OFFSET = 2 ** 20;
const ROW_LIMIT = 2 ** 21;     // context.py: keeps the float64 sums exact
const LATENT_LIMIT = 2 ** 31;

function fail(field, expected, got) {
  let shown;
  try {
    shown = JSON.stringify(got);
  } catch {
    shown = String(got);
  }
  if (shown === undefined) shown = 'nothing';
  if (shown.length > 60) shown = `${shown.slice(0, 57)}...`;
  throw new KaeError(`model.json: ${field}: expected ${expected}, got ${shown}`);
}

const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const PLAIN_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;  // as kaecompress/exporters/web.py's PLAIN_NAME

/** True for a name that can only mean a file or folder beside the one naming it: letters, digits, '.', '_'
 * and '-', not starting with '.' (so never '..', a path, or anything a URL reads as more). */
export const isPlainName = (name) => typeof name === 'string' && PLAIN_NAME.test(name);
const isInt = (v) => Number.isSafeInteger(v);
const HEX64 = /^[0-9a-fA-F]{64}$/;

function intField(json, key, { min = -Infinity, max = Infinity, nullable = false } = {}) {
  const v = json[key];
  if (v === null && nullable) return null;
  if (!isInt(v) || v < min || v > max) {
    const range = [min > -Infinity ? `>= ${min}` : '', max < Infinity ? `<= ${max}` : ''].filter(Boolean).join(' and ');
    fail(key, `an integer${range ? ` ${range}` : ''}${nullable ? ' or null' : ''}`, v);
  }
  return v;
}

function hex64(v, field) {
  if (typeof v !== 'string' || !HEX64.test(v)) fail(field, '64 hex characters', v);
  return v.toLowerCase();
}

function fileEntry(json, key, io) {
  const e = json[key];
  if (!isObject(e)) fail(key, 'an object {file, sha256}', e);
  if (!isPlainName(e.file)) {
    fail(`${key}.file`, 'a file name beside model.json', e.file);
  }
  const out = { file: e.file, sha256: hex64(e.sha256, `${key}.sha256`) };
  if (io) {
    for (const k of ['input', 'output']) {
      if (typeof e[k] !== 'string' || !e[k]) fail(`${key}.${k}`, 'a tensor name', e[k]);
      out[k] = e[k];
    }
  }
  return out;
}

function intArray(v, field, length) {
  if (!Array.isArray(v) || (length !== undefined && v.length !== length)) {
    fail(field, length !== undefined ? `a list of ${length} integers` : 'a list of integers', v);
  }
  for (let i = 0; i < v.length; i++) {
    if (!isInt(v[i])) fail(`${field}[${i}]`, 'an integer', v[i]);
  }
  return v;
}

function readTables(t, dims) {
  if (!isObject(t)) fail('tables', 'null or an object {precision, offsets, freqs}', t);
  const precision = t.precision;
  if (!isInt(precision) || precision < 8 || precision > 24) fail('tables.precision', 'an integer from 8 to 24', precision);
  const rows = t.freqs;
  if (!Array.isArray(rows) || rows.length < 1 || rows.length > MAX_DIMS) {
    fail('tables.freqs', `a list of 1 to ${MAX_DIMS} rows`, rows);
  }
  if (rows.length !== dims) fail('tables.freqs', `${dims} rows (latent_dim)`, `${rows.length} rows`);
  const K = Array.isArray(rows[0]) ? rows[0].length : -1;
  if (K < 2 || K > MAX_SYMBOLS_PER_ROW) fail('tables.freqs[0]', `a row of 2 to ${MAX_SYMBOLS_PER_ROW} integers`, rows[0]);
  const offsets = intArray(t.offsets, 'tables.offsets', dims);
  const freqs = new Uint32Array(dims * K);
  const total = 2 ** precision;
  for (let d = 0; d < dims; d++) {
    if (Math.abs(offsets[d]) > MAX_OFFSET) fail(`tables.offsets[${d}]`, `an offset within +-${MAX_OFFSET}`, offsets[d]);
    const row = rows[d];
    if (!Array.isArray(row) || row.length !== K) fail(`tables.freqs[${d}]`, `a row of ${K} integers`, row);
    let sum = 0;
    for (let s = 0; s < K; s++) {
      const f = row[s];
      if (!isInt(f) || f < 1) fail(`tables.freqs[${d}][${s}]`, 'an integer frequency >= 1', f);
      sum += f;
      if (sum > total) break;
      freqs[d * K + s] = f;
    }
    if (sum !== total) fail(`tables.freqs[${d}]`, `a row summing to 2**${precision}`, `a sum of ${sum}`);
  }
  return {
    precision, dims, symbols: K, offsets: Int32Array.from(offsets), freqs,
    cdf: modelCdf(freqs, dims, K, precision),
  };
}

function readContext(c, dims) {
  if (!isObject(c)) fail('context', 'null or an object {order, weights, bias}', c);
  const order = intArray(c.order, 'context.order', dims);
  const seen = new Uint8Array(dims);
  for (const o of order) {
    if (o < 0 || o >= dims || seen[o]) fail('context.order', `a permutation of 0..${dims - 1}`, order);
    seen[o] = 1;
  }
  const bias = intArray(c.bias, 'context.bias', dims);
  if (!Array.isArray(c.weights) || c.weights.length !== dims) fail('context.weights', `${dims} rows of ${dims} integers`, c.weights);
  const weights = new Float64Array(dims * dims);
  for (let i = 0; i < dims; i++) {
    const row = intArray(c.weights[i], `context.weights[${i}]`, dims);
    let sum = 0;
    for (let j = 0; j < dims; j++) {
      if (j >= i && row[j] !== 0) {
        fail(`context.weights[${i}][${j}]`, '0 (weights strictly lower triangular: a latent predicted from earlier ones)', row[j]);
      }
      sum += Math.abs(row[j]);
      weights[i * dims + j] = row[j];
    }
    if (sum >= ROW_LIMIT) fail(`context.weights[${i}]`, `absolute weights summing below 2**21`, `a sum of ${sum}`);
    if (Math.abs(bias[i]) >= LATENT_LIMIT) fail(`context.bias[${i}]`, 'a bias within +-2**31', bias[i]);
  }
  return prepareContext(Int32Array.from(order), weights, Float64Array.from(bias));
}

// The card's "domain" entry (kaecompress/codec/domain.py calibration): a bad one is refused, not skipped, since
// it is what refuses images. -> {statistics: [[name, threshold], ...] in the card's order, mean, std (z2)}.
function readDomain(d, dims, tables) {
  const expected = `null or an object {statistics: {${Object.keys(STATISTICS).join('|')}: {threshold}}, ...}`;
  if (!isObject(d) || !isObject(d.statistics) || !Object.keys(d.statistics).length) fail('domain', expected, d);
  const statistics = [];
  for (const [name, entry] of Object.entries(d.statistics)) {
    if (!Object.hasOwn(STATISTICS, name)) fail('domain.statistics', `statistics among ${Object.keys(STATISTICS).join(', ')}`, name);
    const threshold = isObject(entry) ? entry.threshold : undefined;
    if (typeof threshold !== 'number' || !Number.isFinite(threshold)) fail(`domain.statistics.${name}.threshold`, 'a finite number', threshold);
    statistics.push([name, threshold]);
  }
  const names = statistics.map(([name]) => name);
  if (names.includes('bits') && tables === null) fail('domain.statistics', 'no bits for a model without tables', names);
  let mean = null;
  let std = null;
  if (names.includes('z2')) {
    for (const key of ['mean', 'std']) {
      const v = d[key];
      if (!Array.isArray(v) || v.length !== dims || !v.every((x) => typeof x === 'number' && Number.isFinite(x) && (key === 'mean' || x > 0))) {
        fail(`domain.${key}`, `a list of ${dims} finite numbers${key === 'std' ? ' above 0' : ''} (latent_dim)`, v);
      }
    }
    mean = Float64Array.from(d.mean);
    std = Float64Array.from(d.std);
  }
  return { statistics, mean, std };
}

/** The model object of a parsed model.json (or its text). KaeError naming the field for anything malformed. */
export function modelFromJson(json) {
  if (typeof json === 'string') {
    try {
      json = JSON.parse(json);
    } catch (e) {
      throw new KaeError(`model.json: not JSON (${String(e.message).split('\n')[0]})`);
    }
  }
  if (!isObject(json)) fail('(top level)', 'an object', json);
  if (json.schema !== SCHEMA) fail('schema', `"${SCHEMA}"`, json.schema);
  if (json.version !== SCHEMA_VERSION) fail('version', `${SCHEMA_VERSION}`, json.version);
  if (typeof json.name !== 'string' || !json.name) fail('name', 'a model name', json.name);
  if (json.family !== null && json.family !== undefined && typeof json.family !== 'string') fail('family', 'a string or null', json.family);
  const quality = json.quality === undefined ? null : intField(json, 'quality', { nullable: true });
  const codecId = json.codec_id === undefined ? null : intField(json, 'codec_id', { min: 0, max: 2 ** 32 - 1, nullable: true });
  const weightsSha256 = hex64(json.weights_sha256, 'weights_sha256');
  const shape = intArray(json.input_shape, 'input_shape', 3);
  if (shape.some((v) => v < 1)) fail('input_shape', '[channels, height, width], positive integers', shape);
  const latentDim = intField(json, 'latent_dim', { min: 1, max: MAX_DIMS });
  const encoder = fileEntry(json, 'encoder', true);
  const decoder = fileEntry(json, 'decoder', true);
  const weights = fileEntry(json, 'weights', false);
  const tables = json.tables === null || json.tables === undefined ? null : readTables(json.tables, latentDim);
  let context = null;
  if (json.context !== null && json.context !== undefined) {
    if (tables === null) fail('context', 'null for a model without tables', '(a context model)');
    context = readContext(json.context, latentDim);
  }
  for (const key of ['psnr_db', 'bytes_per_image']) {
    const v = json[key];
    if (v !== null && v !== undefined && !(typeof v === 'number' && Number.isFinite(v))) fail(key, 'a number or null', v);
  }
  if (json.dataset !== null && json.dataset !== undefined && (typeof json.dataset !== 'string' || !json.dataset)) {
    fail('dataset', 'a dataset name or null', json.dataset);
  }
  const domain = json.domain === null || json.domain === undefined ? null : readDomain(json.domain, latentDim, tables);
  const sha256Bytes = new Uint8Array(32);
  for (let i = 0; i < 32; i++) sha256Bytes[i] = parseInt(weightsSha256.slice(2 * i, 2 * i + 2), 16);
  return {
    name: json.name, family: json.family ?? null, quality, codecId, weightsSha256, sha256Bytes,
    crcStart: crc16(sha256Bytes, 0xffff),  // every v2 file's check starts from the model's identity
    inputShape: shape.slice(), channels: shape[0], tile: [shape[1], shape[2]], latentDim,
    encoder, decoder, weights, tables, context,
    psnrDb: json.psnr_db ?? null, bytesPerImage: json.bytes_per_image ?? null,
    dataset: json.dataset ?? 'mnist', domain,
  };
}
