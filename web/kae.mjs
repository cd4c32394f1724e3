// kae.mjs: .kae files decoded and encoded in a browser or in Node, with the models of a web export
// (`kaec export MODEL --format web -o DIR`). The same integers and bytes as the Python library: the coding is
// exact integer arithmetic (lib/), the networks are the model's own ONNX graphs run by onnxruntime-web.
//
//   import { open, KaeError, psnr } from './kae.mjs';
//   const kae = await open(new URL('.', import.meta.url));   // Node: open('/path/to/export')
//   const { width, height, mode, pixels } = await kae.decode(bytes);
//   const file = await kae.encode(pixels, width, height, 'L');   // refuses an image outside the model's
//                                                                 // domain ({force: true} encodes it anyway)
//   kae.domainChecks                                              // the last encode's checks, one per image
//
// Nothing here imports node: modules at load time, so the browser never sees them; Node's file reading is
// imported only when running under Node.

import {
  FITS, KaeError, MAX_PIXELS, QUANTS, asBytes, checkTiles, peekKae, readKae, toIntegers, writeKae,
} from './lib/bitstream.mjs';
import { modelFromJson, isPlainName } from './lib/model.mjs';
import * as images from './lib/images.mjs';
import { domainOf, imageCheck, refusalError, tileScores } from './lib/domain.mjs';
import { sha256Hex } from './lib/sha256.mjs';

export { KaeError };
export { DomainCheck } from './lib/domain.mjs';

const IN_NODE = typeof process !== 'undefined' && !!process.versions?.node && typeof window === 'undefined';
// Tiles per network run, as the Python Codec's default --batch-size.
const BATCH_TILES = 256;

let ortModule = null;

// onnxruntime-web's wasm build from the ort/ folder beside this file: one thread (no cross-origin isolation
// needed), its .wasm found there too, never on a CDN.
async function loadOrt() {
  if (!ortModule) {
    ortModule = (async () => {
      const ort = await import('./ort/ort.wasm.min.mjs');
      ort.env.wasm.numThreads = 1;
      ort.env.wasm.wasmPaths = new URL('./ort/', import.meta.url).href;
      ort.env.logLevel = 'error';
      return ort;
    })();
  }
  return ortModule;
}

// ---- files of the export ----------------------------------------------------------------------------------

function folderUrl(base) {
  if (base instanceof URL) return base.href.endsWith('/') ? base : new URL(`${base.href}/`);
  if (IN_NODE && typeof base === 'string' && !/^[a-z][a-z0-9+.-]+:/i.test(base)) return null;  // a path
  const url = new URL(String(base), typeof location !== 'undefined' ? location.href : undefined);
  return url.href.endsWith('/') ? url : new URL(`${url.href}/`);
}

async function fetchBytes(base, rel) {
  const url = folderUrl(base);
  if (IN_NODE && (url === null || url.protocol === 'file:')) {
    const [{ readFile }, path, { fileURLToPath }] = await Promise.all(
      [import('node:fs/promises'), import('node:path'), import('node:url')]);
    const file = url === null ? path.join(base, rel) : fileURLToPath(new URL(rel, url));
    try {
      return new Uint8Array(await readFile(file));
    } catch (e) {
      throw new KaeError(`${file}: cannot read the web export's file (${e.code || e.message})`);
    }
  }
  const target = new URL(rel, url);
  let response;
  try {
    response = await fetch(target);
  } catch (e) {
    throw new KaeError(`${target}: cannot fetch the web export's file (${e.message})`);
  }
  if (!response.ok) throw new KaeError(`${target}: cannot fetch the web export's file (HTTP ${response.status})`);
  return new Uint8Array(await response.arrayBuffer());
}

async function fetchJson(base, rel) {
  const bytes = await fetchBytes(base, rel);
  try {
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch (e) {
    throw new KaeError(`${rel}: not JSON (${String(e.message).split('\n')[0]})`);
  }
}

async function checkedFile(base, dir, entry) {
  const rel = `${dir}/${entry.file}`;
  const bytes = await fetchBytes(base, rel);
  const got = await sha256Hex(bytes);
  if (got !== entry.sha256) {
    throw new KaeError(`${rel}: sha256 ${got.slice(0, 16)}... does not match model.json's ${entry.sha256.slice(0, 16)}...: ` +
      'the export is damaged or mixed; export it again');
  }
  return bytes;
}

// ---- PSNR -------------------------------------------------------------------------------------------------

/** PSNR in dB of two 8-bit images of the same length (Infinity when equal). */
export function psnr(a, b) {
  if (a.length !== b.length || !a.length) throw new KaeError(`psnr: ${a.length} and ${b.length} values; expected equal non-zero lengths`);
  let sum = 0;
  for (let i = 0; i < a.length; i++) {
    const d = a[i] - b[i];
    sum += d * d;
  }
  return sum === 0 ? Infinity : 10 * Math.log10((255 * 255 * a.length) / sum);
}

// ---- the coder ----------------------------------------------------------------------------------------------

function describe(model) {
  return {
    name: model.name, family: model.family, quality: model.quality, codecId: model.codecId,
    inputShape: model.inputShape.slice(), latentDim: model.latentDim, psnrDb: model.psnrDb,
    bytesPerImage: model.bytesPerImage, dataset: model.dataset, domain: domainOf(model),
    checksDomain: model.domain !== null,
  };
}

class Kae {
  constructor(base, specs, order) {
    this.base = base;
    this.specs = specs;          // name -> model object (modelFromJson)
    this.order = order;          // the export's model names, in models.json's order
    this.loaded = new Map();     // name -> Promise of {encoder, decoder} sessions
    this.current = null;
    // The last encode's out-of-domain checks, one per image: a DomainCheck, or null where the model's card has
    // no calibration (not checked). Set also when encode refuses (the error carries them too).
    this.domainChecks = [];
  }

  get models() {
    return this.order.map((name) => describe(this.specs.get(name)));
  }

  get model() {
    return describe(this.specs.get(this.current));
  }

  /** Make `name` the model encode uses (its files checked and its sessions created now). */
  async use(name) {
    if (!this.specs.has(name)) {
      throw new KaeError(`${name}: not a model of this export (it has ${this.order.join(', ')})`);
    }
    await this.sessions(name);
    this.current = name;
  }

  sessions(name) {
    if (!this.loaded.has(name)) {
      const promise = this.createSessions(this.specs.get(name));
      promise.catch(() => this.loaded.delete(name));  // a failed load may be tried again
      this.loaded.set(name, promise);
    }
    return this.loaded.get(name);
  }

  async createSessions(model) {
    const dir = `models/${model.name}`;
    const [ort, weights, encoderGraph, decoderGraph] = await Promise.all([
      loadOrt(), checkedFile(this.base, dir, model.weights), checkedFile(this.base, dir, model.encoder),
      checkedFile(this.base, dir, model.decoder)]);
    const options = { externalData: [{ path: model.weights.file, data: weights }], graphOptimizationLevel: 'all' };
    const create = async (graph, part) => {
      try {
        return await ort.InferenceSession.create(graph, options);
      } catch (e) {
        throw new KaeError(`${dir}/${model[part].file}: onnxruntime-web cannot load the graph (${String(e.message || e).split('\n')[0]})`);
      }
    };
    // one after the other: onnxruntime-web's wasm backend initialises once
    const encoder = await create(encoderGraph, 'encoder');
    const decoder = await create(decoderGraph, 'decoder');
    return { ort, encoder, decoder };
  }

  // The network `part` over `input` (count x per values), BATCH_TILES rows per run, as the Python Codec.
  async run(model, part, input, count, inShape, outPer) {
    const { ort, [part]: session } = await this.sessions(model.name);
    const spec = model[part];
    const per = inShape.reduce((a, b) => a * b, 1);
    const out = new Float32Array(count * outPer);
    for (let start = 0; start < count; start += BATCH_TILES) {
      const n = Math.min(BATCH_TILES, count - start);
      const tensor = new ort.Tensor('float32', input.subarray(start * per, (start + n) * per), [n, ...inShape]);
      const result = await session.run({ [spec.input]: tensor });
      const data = result[spec.output].data;
      if (data.length !== n * outPer) {
        throw new KaeError(`${model.name}: the ${part} gave ${data.length} values for ${n} tiles; expected ${n * outPer}`);
      }
      out.set(data, start * outPer);
      for (const t of Object.values(result)) t.dispose?.();
    }
    return out;
  }

  // The export's model that made a file, from its header: codec id, else the weights' hash prefix.
  modelOf(header, where) {
    const names = this.order;
    let found;
    if (header.codecId !== null && header.codecId !== undefined) {
      found = names.find((n) => this.specs.get(n).codecId === header.codecId);
    } else {
      found = names.find((n) => this.specs.get(n).weightsSha256.startsWith(header.hashPrefix));
    }
    if (!found) {
      const made = header.codecId !== null && header.codecId !== undefined ? `codec id ${header.codecId}` : `id ${header.hashPrefix}`;
      throw new KaeError(`${where}: made with a model that is not in this export (${made}); it has ${names.join(', ')}`);
    }
    return this.specs.get(found);
  }

  /** One .kae file -> {width, height, mode, pixels, model, version, integers, latents, fit}: `latents`
   * (Float32Array) are what the decoder network took, `integers` the coded ones (version 2; null for 1). */
  async decode(bytes, options = {}) {
    return (await this.decodeMany([bytes], { ...options, names: options.name ? [options.name] : undefined }))[0];
  }

  /** Many .kae files, their tiles run through each model's decoder together. `names` name them in errors. */
  async decodeMany(files, { names, maxPixels = MAX_PIXELS } = {}) {
    const where = (i) => (names && names[i]) || (files.length > 1 ? `.kae file ${i + 1}` : '.kae file');
    // every file is read (header, checksum, entropy decoding) before any network runs
    const read = files.map((bytes, i) => {
      const data = asBytes(bytes, where(i));
      const model = this.modelOf(peekKae(data, { where: where(i) }), where(i));
      return { model, file: readKae(data, model, { maxPixels, where: where(i) }) };
    });
    const out = new Array(files.length);
    for (const name of new Set(read.map((r) => r.model.name))) {
      const model = this.specs.get(name);
      const mine = read.map((r, i) => i).filter((i) => read[i].model.name === name);
      const [th, tw] = model.tile;
      const D = model.latentDim;
      const counts = mine.map((i) => read[i].file.latents.length / D);
      const total = counts.reduce((a, b) => a + b, 0);
      const latents = new Float32Array(total * D);
      let at = 0;
      for (const i of mine) {
        latents.set(read[i].file.latents, at);
        at += read[i].file.latents.length;
      }
      const per = model.channels * th * tw;
      const tiles = await this.run(model, 'decoder', latents, total, [D], per);
      at = 0;
      mine.forEach((i, k) => {
        const f = read[i].file;
        const image = images.fromTiles(tiles.subarray(at * per, (at + counts[k]) * per), [f.planes, f.tilesY, f.tilesX],
          model.channels, th, tw, f.width, f.height, f.mode, f.fit);
        at += counts[k];
        out[i] = { ...image, model: name, version: f.version, integers: f.integers ?? null, latents: f.latents, fit: f.fit };
      });
    }
    return out;
  }

  /** One image -> the .kae file kaec encode --backend onnx writes for it with the current model. Options:
   * fit, quant, force (encode an image outside the model's domain instead of refusing it), name (in errors). */
  async encode(pixels, width, height, mode, options = {}) {
    const { quant, force, name, ...rest } = options;
    return (await this.encodeMany([{ pixels, width, height, mode, ...rest }], { quant, force, names: name ? [name] : undefined }))[0];
  }

  /** Many images {pixels, width, height, mode, fit}, their tiles run through the encoder together. Each is
   * checked against the model's domain as `kaec encode` checks it (this.domainChecks); one outside it is
   * refused with a KaeError (error.domainChecks) before any file is made, unless `force`. */
  async encodeMany(items, { quant = 'uint8', names, force = false } = {}) {
    const model = this.specs.get(this.current);
    this.domainChecks = [];
    const [th, tw] = model.tile;
    const where = (i) => (names && names[i]) || (items.length > 1 ? `image ${i + 1}` : 'image');
    if (!QUANTS.includes(quant)) throw new KaeError(`quant: expected ${QUANTS.join(' or ')}, got '${quant}'`);
    const prepared = items.map((item, i) => {
      const fit = item.fit ?? 'tile';
      if (!FITS.includes(fit)) throw new KaeError(`fit: expected ${FITS.join(' or ')}, got '${fit}'`);
      const image = { width: item.width, height: item.height, mode: item.mode, pixels: item.pixels };
      images.checkImage(image, where(i));
      if (fit === 'tile') checkTiles(Math.ceil(image.height / th), Math.ceil(image.width / tw), model.tile, where(i));
      const { planes, mode, h, w } = images.toPlanes(image, model.channels, th, tw, fit);
      const { tiles, grid } = images.toTiles(planes, model.channels, h, w, th, tw);
      return { tiles, grid, mode, fit, width: image.width, height: image.height };
    });
    const per = model.channels * th * tw;
    const total = prepared.reduce((s, p) => s + p.tiles.length / per, 0);
    const input = new Float32Array(total * per);
    let at = 0;
    for (const p of prepared) {
      input.set(p.tiles, at);
      at += p.tiles.length;
    }
    const D = model.latentDim;
    const latents = await this.run(model, 'encoder', input, total, [model.channels, th, tw], D);
    const integers = model.tables ? toIntegers(latents, model) : null;
    // the domain check, on the tiles and latents just made (no decoding), before any file is written
    let checks = prepared.map(() => null);
    if (model.domain) {
      const scores = tileScores(model, input, total, { latents, integers });
      at = 0;
      checks = prepared.map((p) => {
        const n = p.grid[0] * p.grid[1] * p.grid[2];
        at += n;
        return imageCheck(model, scores, at - n, n);
      });
    }
    this.domainChecks = checks;
    const refused = force ? null : refusalError(items.map((_, i) => where(i)), checks, model, '{force: true} encodes anyway');
    if (refused) throw refused;
    at = 0;
    return prepared.map((p) => {
      const n = p.grid[0] * p.grid[1] * p.grid[2];
      const range = [at * D, (at + n) * D];
      at += n;
      const layout = { mode: p.mode, fit: p.fit, width: p.width, height: p.height, planes: p.grid[0], tilesY: p.grid[1], tilesX: p.grid[2] };
      if (model.tables) return writeKae({ ...layout, integers: integers.subarray(...range) }, model);
      return writeKae({ ...layout, latents: latents.subarray(...range) }, model, { quant });
    });
  }
}

/** Open a web export: `base` is its folder (a URL in the browser; a path or file: URL in Node). Reads
 * models.json and every model.json, checks the chosen model's files against their sha256 and creates its
 * onnxruntime-web sessions; other models load when a file or `use` needs them. */
export async function open(base, { model } = {}) {
  const index = await fetchJson(base, 'models.json');
  // A model's name is a folder under models/: a plain name, never a path out of the export.
  const names = index?.models;
  if (!Array.isArray(names) || !names.length || !names.every(isPlainName) || new Set(names).size !== names.length) {
    throw new KaeError('models.json: expected {"models": [plain names, each once], "default": name}');
  }
  const specs = new Map();
  await Promise.all(index.models.map(async (name) => {
    const json = await fetchJson(base, `models/${name}/model.json`);
    let spec;
    try {
      spec = modelFromJson(json);
    } catch (e) {
      throw e instanceof KaeError ? new KaeError(`models/${name}/${e.message}`) : e;  // "model.json: field: ..."
    }
    if (spec.name !== name) throw new KaeError(`models/${name}/model.json: names the model ${spec.name}`);
    specs.set(name, spec);
  }));
  const kae = new Kae(base, specs, index.models.slice());
  await kae.use(model ?? index.default ?? index.models[0]);
  return kae;
}
