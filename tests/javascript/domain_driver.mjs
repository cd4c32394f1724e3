// Test driver of tests/javascript/test_web_domain.py: kae.mjs's out-of-domain check under Node, on a job read as
// JSON from stdin; prints one JSON line of results.
//
//   {"export": DIR, "model": NAME, "out": DIR or null,
//    "inputs": [{"file": raw 8-bit interleaved pixels, "width", "height", "mode", "fit"}]
//    or "stack": {"file": raw uint8 (count x height x width), "count", "width", "height"}}
//   -> {"many": {"refused": the KaeError's message or null, "checks": [check per image], "same": bool},
//       "each": [{"refused": message or null, "check": check}], "model": kae.model}
//      many: encodeMany of all the images (its refusal, then its checks); with force, the same checks and files
//      (out/N.kae); each: encode() of one image at a time. A check is DomainCheck.toJSON() plus describe(), or
//      null (the model is not calibrated: not checked).

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const job = JSON.parse(fs.readFileSync(0, 'utf8'));
const { open, KaeError } = await import(pathToFileURL(path.join(job.export, 'kae.mjs')).href);

const asJson = (check) => (check ? { ...check.toJSON(), describe: check.describe() } : null);

function items() {
  if (job.stack) {
    const { file, count, width, height } = job.stack;
    const all = new Uint8Array(fs.readFileSync(file));
    const n = width * height;
    return Array.from({ length: count }, (_, i) => ({
      pixels: all.subarray(i * n, (i + 1) * n), width, height, mode: 'L', fit: 'tile',
    }));
  }
  return job.inputs.map((x) => ({ pixels: new Uint8Array(fs.readFileSync(x.file)), width: x.width, height: x.height,
    mode: x.mode, fit: x.fit ?? 'tile' }));
}

async function main() {
  const kae = await open(job.export, { model: job.model });
  const images = items();
  const names = images.map((_, i) => `image-${i}`);
  const out = { model: kae.model };
  let refused = null;
  try {
    await kae.encodeMany(images, { names });
  } catch (e) {
    if (!(e instanceof KaeError) || !e.domainChecks) throw e;
    refused = e.message;
  }
  const checks = kae.domainChecks.map(asJson);
  const files = await kae.encodeMany(images, { names, force: true });
  const same = JSON.stringify(kae.domainChecks.map(asJson)) === JSON.stringify(checks);
  if (job.out) files.forEach((f, i) => fs.writeFileSync(path.join(job.out, `${i}.kae`), f));
  out.many = { refused, checks, same };
  if (job.each) {
    out.each = [];
    for (const [i, im] of images.entries()) {
      let message = null;
      let check;
      try {
        await kae.encode(im.pixels, im.width, im.height, im.mode, { fit: im.fit, name: names[i] });
        check = kae.domainChecks[0];
      } catch (e) {
        if (!(e instanceof KaeError) || !e.domainChecks) throw e;
        message = e.message;
        check = e.domainChecks[0];
      }
      out.each.push({ refused: message, check: asJson(check) });
    }
  }
  return out;
}

main().then((r) => console.log(JSON.stringify(r)), (e) => {
  console.log(JSON.stringify({ fatal: `${e.name}: ${e.message}`, stack: e.stack }));
  process.exitCode = 1;
});
