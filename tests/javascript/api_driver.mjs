// Test driver of tests/javascript/test_web_api.py: runs kae.mjs of a web export under Node on a job read as JSON
// from stdin, writes what it produced under job.out and prints one JSON line of results.
//
//   {"cmd": "decode", "export": DIR, "files": [paths], "out": DIR, "many": bool}
//       -> out/N.pixels (raw 8-bit, interleaved), out/N.integers (int32 little-endian, v2 files),
//          out/N.latents (float32, what the decoder took);
//          [{width, height, mode, model, version, error}] and the seconds taken
//   {"cmd": "encode", "export": DIR, "model": NAME, "out": DIR, "many": bool, "quant": "uint8", "force": bool,
//    "inputs": [{"file": raw path, "width", "height", "mode", "fit"}]}
//       -> out/N.kae; [{bytes, error}] and the seconds taken (force: images outside the model's domain too)
//   {"cmd": "stack", "export": DIR, "model": NAME, "file": raw uint8 (count x h x w), "count", "width",
//    "height", "out": FILE, "repeat": R}
//       -> out: the .kae files of the stack's images one after the other; their lengths; encodeMany and
//          decodeMany of all of them timed (best of R) with the decoded pixels checked against decode()
//   {"cmd": "png", "export": DIR, "files": [paths], "out": DIR} -> out/N.raw; [{width, height, mode, error}]
//   {"cmd": "resize", "export": DIR, "cases": [[w, h, ow, oh], ...], "file": float32 inputs, "out": FILE}
//       -> out: images.resizeBilinear of each input, one after the other
//   {"cmd": "to8bit", "export": DIR, "file": float32 values, "out": FILE} -> out: images.to8bit of each
//   {"cmd": "sha256", "export": DIR, "files": [paths]} -> the plain-JS sha256 (no crypto.subtle) of each

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const job = JSON.parse(fs.readFileSync(0, 'utf8'));
const load = (rel) => import(pathToFileURL(path.join(job.export ?? job.web, rel)).href);
const raw = (a) => Buffer.from(a.buffer, a.byteOffset, a.byteLength);
const now = () => performance.now() / 1000;

async function main() {
  if (job.cmd === 'png') {
    const { readPng } = await load('lib/png.mjs');
    const rows = [];
    for (const [i, f] of job.files.entries()) {
      try {
        const im = await readPng(fs.readFileSync(f), f);
        fs.writeFileSync(path.join(job.out, `${i}.raw`), raw(im.pixels));
        rows.push({ width: im.width, height: im.height, mode: im.mode });
      } catch (e) {
        rows.push({ error: e.message, name: e.name });
      }
    }
    return { rows };
  }
  if (job.cmd === 'resize') {
    const { resizeBilinear } = await load('lib/images.mjs');
    const b = fs.readFileSync(job.file);
    const all = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
    const outs = [];
    let at = 0;
    for (const [w, h, ow, oh] of job.cases) {
      outs.push(raw(resizeBilinear(all.subarray(at, at + w * h), w, h, ow, oh)));
      at += w * h;
    }
    fs.writeFileSync(job.out, Buffer.concat(outs));
    return { count: outs.length };
  }
  if (job.cmd === 'to8bit') {
    const { to8bit } = await load('lib/images.mjs');
    const b = fs.readFileSync(job.file);
    const values = new Float32Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length));
    fs.writeFileSync(job.out, Uint8Array.from(values, to8bit));
    return { count: values.length };
  }
  if (job.cmd === 'sha256') {
    const { sha256 } = await load('lib/sha256.mjs');
    return { digests: job.files.map((f) => Buffer.from(sha256(new Uint8Array(fs.readFileSync(f)))).toString('hex')) };
  }
  const { open } = await load('kae.mjs');
  const t0 = now();
  const kae = await open(job.export, job.model ? { model: job.model } : {});
  const opened = now() - t0;
  if (job.cmd === 'decode') {
    const rows = [];
    const t = now();
    const datas = job.files.map((f) => new Uint8Array(fs.readFileSync(f)));
    let results;
    if (job.many) {
      results = await kae.decodeMany(datas, { names: job.files });
    } else {
      results = [];
      for (const [i, d] of datas.entries()) {
        try {
          results.push(await kae.decode(d, { name: job.files[i] }));
        } catch (e) {
          results.push({ error: e.message, name: e.name });
        }
      }
    }
    const seconds = now() - t;
    for (const [i, r] of results.entries()) {
      if (r.error) {
        rows.push(r);
        continue;
      }
      fs.writeFileSync(path.join(job.out, `${i}.pixels`), raw(r.pixels));
      if (r.integers) fs.writeFileSync(path.join(job.out, `${i}.integers`), raw(Int32Array.from(r.integers)));
      fs.writeFileSync(path.join(job.out, `${i}.latents`), raw(r.latents));
      rows.push({ width: r.width, height: r.height, mode: r.mode, model: r.model, version: r.version, fit: r.fit });
    }
    return { rows, seconds, opened };
  }
  if (job.cmd === 'encode') {
    const items = job.inputs.map((x) => {
      const b = fs.readFileSync(x.file);
      const pixels = x.mode === 'I;16' ? new Uint16Array(b.buffer.slice(b.byteOffset, b.byteOffset + b.length)) : new Uint8Array(b);
      return { pixels, width: x.width, height: x.height, mode: x.mode, fit: x.fit ?? 'tile' };
    });
    const rows = [];
    const t = now();
    if (job.many) {
      const files = await kae.encodeMany(items, { quant: job.quant ?? 'uint8', force: job.force ?? false });
      files.forEach((f, i) => {
        fs.writeFileSync(path.join(job.out, `${i}.kae`), f);
        rows.push({ bytes: f.length });
      });
    } else {
      for (const [i, it] of items.entries()) {
        try {
          const f = await kae.encode(it.pixels, it.width, it.height, it.mode, { fit: it.fit, quant: job.quant ?? 'uint8', force: job.force ?? false });
          fs.writeFileSync(path.join(job.out, `${i}.kae`), f);
          rows.push({ bytes: f.length });
        } catch (e) {
          rows.push({ error: e.message, name: e.name });
        }
      }
    }
    return { rows, seconds: now() - t, opened };
  }
  if (job.cmd === 'stack') {
    const all = new Uint8Array(fs.readFileSync(job.file));
    const n = job.width * job.height;
    const items = Array.from({ length: job.count }, (_, i) => ({
      pixels: all.subarray(i * n, (i + 1) * n), width: job.width, height: job.height, mode: 'L', fit: 'tile',
    }));
    let files, decoded, encodeBest = Infinity, decodeBest = Infinity;
    for (let r = 0; r < (job.repeat ?? 1); r++) {
      let t = now();
      files = await kae.encodeMany(items);
      encodeBest = Math.min(encodeBest, now() - t);
      t = now();
      decoded = await kae.decodeMany(files);
      decodeBest = Math.min(decodeBest, now() - t);
    }
    // one at a time, for the single-image figures and to check the batched path against it
    let t = now();
    const single = Math.min(job.count, 50);
    let sameAsBatch = true;
    for (let i = 0; i < single; i++) {
      const one = await kae.encode(items[i].pixels, job.width, job.height, 'L');
      if (Buffer.compare(Buffer.from(one), Buffer.from(files[i])) !== 0) sameAsBatch = false;
    }
    const encodeOne = (now() - t) / single;
    t = now();
    for (let i = 0; i < single; i++) {
      const d = await kae.decode(files[i]);
      if (Buffer.compare(Buffer.from(d.pixels), Buffer.from(decoded[i].pixels)) !== 0) sameAsBatch = false;
    }
    const decodeOne = (now() - t) / single;
    const total = files.reduce((s, f) => s + f.length, 0);
    const out = new Uint8Array(total);
    let at = 0;
    for (const f of files) {
      out.set(f, at);
      at += f.length;
    }
    fs.writeFileSync(job.out, out);
    const pixels = new Uint8Array(job.count * n);
    decoded.forEach((d, i) => pixels.set(d.pixels, i * n));
    fs.writeFileSync(`${job.out}.pixels`, pixels);
    return { lengths: files.map((f) => f.length), encodeSeconds: encodeBest, decodeSeconds: decodeBest,
      encodeOne, decodeOne, sameAsBatch, opened };
  }
  throw new Error(`unknown cmd ${job.cmd}`);
}

main().then((r) => console.log(JSON.stringify(r)), (e) => {
  console.log(JSON.stringify({ fatal: `${e.name}: ${e.message}`, stack: e.stack }));
  process.exitCode = 1;
});
