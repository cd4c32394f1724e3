#!/usr/bin/env node
// kae-node.mjs: decode and encode .kae files from the command line with this web export's models, in Node
// (onnxruntime-web's wasm build; no Python). Conventions as kaec's: every input is read and checked before
// anything is written, outputs land all together or not at all, and a refusal is one line on stderr with
// exit status 2.

import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { open } from './kae.mjs';
import { FITS, KaeError, QUANTS } from './lib/bitstream.mjs';
import { outsideLine, refusal } from './lib/domain.mjs';
import { readPng, writePng } from './lib/png.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROG = 'kae-node';

const HELP = `Usage:
  node kae-node.mjs decode IN.kae [IN2.kae ...] -o OUT.png|OUTDIR
  node kae-node.mjs encode IN.png [IN2.png ...] -o OUT.kae|OUTDIR [--model NAME] [--fit tile|resize]
                                                [--quant uint8|float16] [--force]

decode  .kae files (version 1 or 2, or folders of them) to PNG images at their original size and mode; each
        file is decoded with the export's model that made it.
encode  PNG images (or folders of them) to .kae files with the export's default model or --model: the
        bytes kaec encode --backend onnx writes. The models are for 28x28 grey digits or clothing, not
        photographs: as in kaec encode, every image is checked against the model's own test images while
        encoding, and one outside its domain is refused unless --force.

Options:
  -o, --output PATH   OUT.png / OUT.kae for one input; a folder for several (or a name without suffix).
  -m, --model NAME    encode: the model (default: the export's default; see models.json).
  --fit tile|resize   encode: tile cuts the image into model-sized tiles (edges padded) and decodes at the
                      original size; resize makes the whole image one tile. Default: tile.
  --quant uint8|float16
                      encode, models without probability tables (.kae version 1): how latents are stored.
  --force             encode: encode images outside the model's domain anyway (with a warning) instead
                      of refusing them.
  --debug             show the stack trace of an error.
  -h, --help          show this help.

Unlike kaec, encode reads only PNG files, and a model whose card has no domain calibration is not checked
(kaec warns from a sampled PSNR).
Exit status: 0 done; 2 refused (one line on stderr: the file and why).`;

class UsageError extends Error {}

// The options that take a value: option -> [argument, its choices or null, the command it belongs to or null].
const TAKES = {
  '-o': ['output', null, null], '--output': ['output', null, null], '-m': ['model', null, 'encode'],
  '--model': ['model', null, 'encode'], '--fit': ['fit', FITS, 'encode'], '--quant': ['quant', QUANTS, 'encode'],
};

function parse(argv) {
  const args = { inputs: [], output: null, model: null, fit: 'tile', quant: 'uint8', force: false, debug: false, help: false };
  const given = [];
  for (let i = 0; i < argv.length; i++) {
    let a = argv[i];
    let value = null;
    if (a.startsWith('--') && a.includes('=')) [a, value] = [a.slice(0, a.indexOf('=')), a.slice(a.indexOf('=') + 1)];
    if (a === '-h' || a === '--help') args.help = true;
    else if (a === '--debug') args.debug = true;
    else if (a === '--force') {
      args.force = true;
      given.push(a);
    }
    else if (Object.hasOwn(TAKES, a)) {
      if (value === null) {
        if (i + 1 >= argv.length) throw new UsageError(`option ${a} requires a value`);
        value = argv[++i];
      }
      const [name, choices] = TAKES[a];
      if (choices && !choices.includes(value)) {
        throw new UsageError(`${a}: expected ${choices.join(' or ')}, got '${value}'`);
      }
      args[name] = value;
      given.push(a);
    } else if (a.startsWith('-') && a !== '-') throw new UsageError(`no such option: ${a}`);
    else if (args.command === undefined) args.command = a;
    else args.inputs.push(a);
  }
  for (const a of given) {
    const only = a === '--force' ? 'encode' : TAKES[a][2];
    if (only && args.command !== only) throw new UsageError(`${a} applies to ${only} only`);
  }
  return args;
}

// The input files: files as given, folders' files with `suffix` (sorted), as kaec's _inputs.
function inputs(paths, suffix) {
  const found = [];
  for (const p of paths) {
    let stat;
    try {
      stat = fs.statSync(p);
    } catch {
      throw new Refusal(`${p}: no such file or folder`);
    }
    if (stat.isDirectory()) {
      found.push(...fs.readdirSync(p).sort().map((f) => path.join(p, f))
        .filter((f) => f.toLowerCase().endsWith(suffix) && fs.statSync(f).isFile()));
    } else if (stat.isFile()) found.push(p);
    else throw new Refusal(`${p}: not a regular file or folder`);
  }
  if (!found.length) throw new Refusal(`${paths.join(', ')}: no input files (expected ${suffix})`);
  return found;
}

class Refusal extends Error {}

// The largest input read, as kaec's bound: 4 planes of one float32 a pixel at the pixel limit, and 1 MiB.
const MAX_INPUT_BYTES = 16 * 40_000_000 + (1 << 20);

function readInput(file) {
  let size;
  try {
    size = fs.statSync(file).size;
    if (size > MAX_INPUT_BYTES) throw new Refusal(`${file}: ${size.toLocaleString('en-US')} bytes, more than any input this reads (${MAX_INPUT_BYTES.toLocaleString('en-US')})`);
    return new Uint8Array(fs.readFileSync(file));
  } catch (e) {
    if (e instanceof Refusal) throw e;
    throw new Refusal(`${file}: cannot read (${e.code ?? e.message})`);
  }
}

// One output per input: `output` itself, or files named after the inputs inside the folder `output`.
function targets(given, files, output, suffix) {
  const ext = path.extname(output);
  const isDir = fs.existsSync(output) && fs.statSync(output).isDirectory();
  const toFolder = files.length > 1 || given.some((p) => fs.statSync(p).isDirectory()) || isDir || !ext;
  if (!toFolder) {
    if (ext.toLowerCase() !== suffix) {
      throw new Refusal(`${output}: ${suffix === '.png' ? 'decode writes PNG files (use a .png name or a folder)' : 'unknown output type (expected .kae, or a folder)'}`);
    }
    const parent = path.dirname(output);
    if (!fs.existsSync(parent) || !fs.statSync(parent).isDirectory()) throw new Refusal(`${output}: folder ${parent} does not exist`);
    return { folder: null, paths: [output] };
  }
  const parent = path.dirname(path.resolve(output));
  if (!isDir && (!fs.existsSync(parent) || ext || fs.existsSync(output))) {
    throw new Refusal(`${output}: for several inputs or a name without suffix, -o is a folder (an existing one, or a new one in an existing folder)`);
  }
  const paths = files.map((f) => path.join(output, path.basename(f, path.extname(f)) + suffix));
  const seen = new Set();
  for (const t of paths) {
    if (seen.has(t)) throw new Refusal(`${t}: several inputs would write this file; rename one`);
    seen.add(t);
  }
  return { folder: isDir ? null : output, paths };
}

// All outputs land or none: each is written to a temporary file beside its target, then all are renamed.
function writeAll(folder, outputs) {
  let made = false;
  if (folder) {
    fs.mkdirSync(folder);
    made = true;
  }
  const temps = [];
  try {
    for (const [target, bytes] of outputs) {
      const temp = path.join(path.dirname(target), `.${path.basename(target)}.${process.pid}.tmp`);
      temps.push(temp);
      fs.writeFileSync(temp, bytes, { flag: 'wx' });
    }
    outputs.forEach(([target], i) => fs.renameSync(temps[i], target));
  } catch (e) {
    for (const t of temps) fs.rmSync(t, { force: true });
    if (made) fs.rmSync(folder, { recursive: true, force: true });
    throw new Refusal(`${e.path ?? outputs[0][0]}: cannot write (${e.code ?? e.message})`);
  }
}

async function decode(args, kae) {
  const files = inputs(args.inputs, '.kae');
  const out = targets(args.inputs, files, args.output, '.png');
  const datas = files.map(readInput);
  const images = await kae.decodeMany(datas, { names: files });
  const blobs = [];
  for (const im of images) blobs.push(await writePng(im));
  writeAll(out.folder, out.paths.map((p, i) => [p, blobs[i]]));
  images.forEach((im, i) => console.log(`${files[i]} -> ${out.paths[i]} (${im.width}x${im.height} ${im.mode}, ${im.model})`));
}

async function encode(args, kae) {
  const files = inputs(args.inputs, '.png');
  const out = targets(args.inputs, files, args.output, '.kae');
  const items = [];
  for (const f of files) items.push({ ...(await readPng(readInput(f), f)), fit: args.fit });
  // checked as kaec checks them; refused (with --force named) before anything is written
  const blobs = await kae.encodeMany(items, { quant: args.quant, names: files, force: true });
  const checks = kae.domainChecks;
  const model = kae.model;  // its name and dataset name the domain
  const refused = args.force ? null : refusal(files, checks, model, '--force encodes anyway');
  if (refused) throw new Refusal(refused);
  writeAll(out.folder, out.paths.map((p, i) => [p, blobs[i]]));
  blobs.forEach((b, i) => console.log(`${files[i]} -> ${out.paths[i]} (${b.length} bytes, ${kae.model.name})`));
  // as kaec: one line on stderr per image --force let through (at most 5, then a count)
  const outside = files.map((f, i) => [f, checks[i]]).filter(([, c]) => c && c.outside);
  for (const [f, check] of outside.slice(0, 5)) console.error(`warning: ${outsideLine(f, check, model)}; it will decode poorly`);
  if (outside.length > 5) console.error(`warning: ${outside.length - 5} more images outside ${model.name}'s domain`);
  if (!model.checksDomain) {
    console.error(`note: ${model.name}'s card has no "domain" calibration: the images were not checked against its domain`);
  }
}

async function main(argv) {
  let args;
  try {
    args = parse(argv);
  } catch (e) {
    return fail(e, false);
  }
  if (args.help || argv.length === 0) {
    console.log(HELP);
    return 0;
  }
  try {
    if (!['decode', 'encode'].includes(args.command)) throw new UsageError(`expected a command, decode or encode, got '${args.command ?? ''}'`);
    if (!args.inputs.length) throw new UsageError(`${args.command}: name at least one input file`);
    if (args.output === null) throw new UsageError(`${args.command}: -o OUTPUT is required`);
    const kae = await open(HERE, args.command === 'encode' && args.model ? { model: args.model } : {});
    await (args.command === 'decode' ? decode(args, kae) : encode(args, kae));
    return 0;
  } catch (e) {
    return fail(e, args.debug);
  }
}

function fail(e, debug) {
  const known = e instanceof Refusal || e instanceof UsageError || e instanceof KaeError;
  if (debug || !known) console.error(e?.stack ?? String(e));
  const line = String(e?.message ?? e).split('\n')[0];
  console.error(`${PROG}: error: ${line}${e instanceof UsageError ? ` (${PROG} --help shows the usage)` : ''}`);
  return known ? 2 : 1;  // anything else is a bug of ours, shown with its stack
}

process.exitCode = await main(process.argv.slice(2));
