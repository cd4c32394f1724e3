// The page of a web export (index.html): decode dropped .kae files, and encode a drawing or a PNG live.
// Everything runs here, through kae.mjs; the page only moves pixels between canvases and the codec.

import { open, psnr, KaeError } from './kae.mjs';
import { isPng, readPng } from './lib/png.mjs';
import { outsideLine, refusal } from './lib/domain.mjs';

const $ = (id) => document.getElementById(id);
const SHOWN_BYTES = 64;   // the .kae bytes listed in hex; a digit's file is about 8 bytes
const BRUSH = 2.6;        // stroke width in image pixels: about an MNIST digit's pen

const page = {
  kae: null,
  source: null,      // what is encoded: {pixels, width, height, mode, name}; null: the drawing canvas
  canvasName: 'drawing',  // the canvas's name for its .kae: a PNG's name once one is put on it
  encoded: null,     // the last result: {source, bytes, decoded, psnr, model}
  encodes: 0,        // how many encodes have finished (tests wait on it)
  busy: false,       // an encode is running
  again: false,      // the source changed while it ran: encode once more when it ends
  waiting: [],       // resolvers of idle()
  opened: 0,         // how many drops or picks of .kae files have been handled (tests wait on it)
  downloadUrl: null,
  force: false,      // "Encode anyway": encode the source even outside the model's domain
};

// --- messages: one line each -------------------------------------------------------------------------------

function showError(error, where = '') {
  const message = String(error && error.message ? error.message : error).split('\n')[0];
  const line = where ? `${where}: ${message}` : message;
  $('error').textContent = line;
  $('error').hidden = false;
  return line;
}

function clearError() {
  $('error').hidden = true;
  $('error').textContent = '';
}

// The out-of-domain check of the last encode: a refusal offers "Encode anyway"; a forced encode of an image
// outside the domain says so; anything else hides both.
function showDomain(refused, check, name) {
  const outside = !refused && check && check.outside;
  $('domain').hidden = !(refused || page.force);
  $('force').checked = page.force;
  $('domain-note').textContent = outside ? `${outsideLine(name, check, page.kae.model)}; it will decode poorly` : '';
}

// A new source: "Encode anyway" applies to the one it was given for.
function resetForce() {
  page.force = false;
  $('force').checked = false;
  $('domain').hidden = true;
}

$('force').addEventListener('change', (event) => {
  page.force = event.target.checked;
  changed();
});

function status(text) {
  $('status').textContent = text;
}

// --- pixels ------------------------------------------------------------------------------------------------

const CHANNELS = { '1': 1, L: 1, 'I;16': 1, LA: 2, RGB: 3, RGBA: 4 };

// 8-bit values of a 16-bit gray PNG (mode I;16), for showing it and for its PSNR.
function eightBit(pixels) {
  return pixels instanceof Uint16Array ? Uint8Array.from(pixels, (v) => Math.round(v / 257)) : pixels;
}

// kae.mjs's pixels (1 to 4 interleaved channels) as the RGBA a canvas holds.
function toImageData(pixels, width, height, mode) {
  const channels = CHANNELS[mode];
  pixels = eightBit(pixels);
  const rgba = new Uint8ClampedArray(width * height * 4);
  for (let i = 0, j = 0; i < width * height; i++, j += channels) {
    const k = 4 * i;
    if (channels <= 2) {
      rgba[k] = rgba[k + 1] = rgba[k + 2] = pixels[j];
      rgba[k + 3] = channels === 2 ? pixels[j + 1] : 255;
    } else {
      rgba[k] = pixels[j];
      rgba[k + 1] = pixels[j + 1];
      rgba[k + 2] = pixels[j + 2];
      rgba[k + 3] = channels === 4 ? pixels[j + 3] : 255;
    }
  }
  return new ImageData(rgba, width, height);
}

function paint(canvas, pixels, width, height, mode) {
  canvas.width = width;
  canvas.height = height;
  canvas.getContext('2d').putImageData(toImageData(pixels, width, height, mode), 0, 0);
}

// A PNG data URL of the pixels, for an <img> that keeps its alt text and can be saved.
function dataUrl(pixels, width, height, mode) {
  const canvas = document.createElement('canvas');
  paint(canvas, pixels, width, height, mode);
  return canvas.toDataURL('image/png');
}

// Integer scale for showing a small image large: about `target` pixels on its longer side.
function scaled(img, width, height, target) {
  const scale = Math.max(1, Math.floor(target / Math.max(width, height)));
  img.width = width * scale;
  img.height = height * scale;
}

// --- the drawing canvas ------------------------------------------------------------------------------------

const draw = $('draw');
const pen = draw.getContext('2d', { willReadFrequently: true });

function clearCanvas() {
  pen.fillStyle = '#000';
  pen.fillRect(0, 0, draw.width, draw.height);
}

// The drawing as 8-bit gray (the strokes are gray, so the red channel is the value).
function canvasPixels() {
  const { data, width, height } = pen.getImageData(0, 0, draw.width, draw.height);
  const gray = new Uint8Array(width * height);
  for (let i = 0; i < gray.length; i++) gray[i] = data[4 * i];
  return { pixels: gray, width, height, mode: 'L', name: page.canvasName };
}

function canvasPoint(event) {
  const box = draw.getBoundingClientRect();
  return [(event.clientX - box.left) * draw.width / box.width, (event.clientY - box.top) * draw.height / box.height];
}

let last = null;  // the pen's last point while a pointer is down

function strokeTo(point) {
  pen.strokeStyle = '#fff';
  pen.lineWidth = BRUSH;
  pen.lineCap = 'round';
  pen.lineJoin = 'round';
  pen.beginPath();
  pen.moveTo(...(last || point));
  pen.lineTo(...point);
  pen.stroke();
  last = point;
}

// Pointer events cover the mouse, pens and touch alike; touch-action: none keeps a finger from scrolling.
draw.addEventListener('pointerdown', (event) => {
  event.preventDefault();
  draw.setPointerCapture(event.pointerId);
  if (page.source) useDrawing(false);
  last = null;
  strokeTo(canvasPoint(event));
  changed();
});
draw.addEventListener('pointermove', (event) => {
  if (last === null) return;
  const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [event];
  for (const e of events.length ? events : [event]) strokeTo(canvasPoint(e));
  changed();
});
for (const type of ['pointerup', 'pointercancel']) {
  draw.addEventListener(type, () => { last = null; });
}

// Back to the drawing canvas as the source (cleared, or as it is).
function useDrawing(clear) {
  page.source = null;
  draw.hidden = false;
  $('source-view').hidden = true;
  $('source-info').textContent = `Your drawing, ${draw.width} × ${draw.height}`;
  if (clear) {
    clearCanvas();
    page.canvasName = 'drawing';
  }
}

$('clear').addEventListener('click', () => {
  resetForce();
  useDrawing(true);
  changed();
});

// --- encoding, live ----------------------------------------------------------------------------------------

// The source changed: encode it now, or once the encode under way ends (only the latest state counts).
function changed() {
  if (!page.kae) return;
  if (page.busy) {
    page.again = true;
    return;
  }
  encodeLoop();
}

async function encodeLoop() {
  page.busy = true;
  try {
    do {
      page.again = false;
      await encodeOnce();
    } while (page.again);
  } finally {
    page.busy = false;
    for (const resolve of page.waiting.splice(0)) resolve();
  }
}

async function encodeOnce() {
  const source = page.source || canvasPixels();
  try {
    // checked against the model's domain as kaec encode checks it: refused unless "Encode anyway"
    const bytes = await page.kae.encode(source.pixels, source.width, source.height, source.mode,
      { force: page.force, name: source.name });
    const check = page.kae.domainChecks[0];
    const decoded = await page.kae.decode(bytes);
    const db = psnr(eightBit(source.pixels), decoded.pixels);
    page.encoded = { source, bytes, decoded, psnr: db, model: decoded.model, check };
    showEncoded(page.encoded);
    showDomain(false, check, source.name);
    clearError();
  } catch (error) {
    if (error && error.domainChecks) {  // outside the domain: kaec's refusal, nothing encoded or shown for it
      showError(refusal([source.name], error.domainChecks, page.kae.model, 'tick "Encode anyway" to encode it'));
      page.encoded = null;
      clearEncoded();
      showDomain(true, error.domainChecks[0], source.name);
    } else {
      const message = String(error && error.message ? error.message : error);
      showError(error, message.startsWith(`${source.name}: `) ? '' : source.name);
    }
  }
  page.encodes += 1;
  document.body.dataset.encodes = String(page.encodes);
}

function hex(bytes) {
  const shown = Array.from(bytes.subarray(0, SHOWN_BYTES), (b) => b.toString(16).padStart(2, '0')).join(' ');
  return bytes.length > SHOWN_BYTES ? `${shown} …` : shown;
}

function showEncoded({ source, bytes, decoded, psnr: db }) {
  paint($('recon'), decoded.pixels, decoded.width, decoded.height, decoded.mode);
  $('kae-size').textContent = `${bytes.length.toLocaleString('en')} bytes`;
  $('psnr').textContent = db === Infinity ? '∞ dB (lossless)' : `${db.toFixed(2)} dB`;
  $('kae-model').textContent = `${decoded.model}, .kae version ${decoded.version}`;
  $('bytes').textContent = hex(bytes);
  const link = $('download');
  if (page.downloadUrl) URL.revokeObjectURL(page.downloadUrl);
  page.downloadUrl = URL.createObjectURL(new Blob([bytes], { type: 'application/octet-stream' }));
  link.href = page.downloadUrl;
  link.download = `${source.name.replace(/\.png$/i, '')}.kae`;
  link.textContent = `Download ${link.download} (${bytes.length} bytes)`;
  link.setAttribute('aria-disabled', 'false');
}

function clearEncoded() {
  const recon = $('recon');
  recon.getContext('2d').clearRect(0, 0, recon.width, recon.height);
  for (const id of ['kae-size', 'psnr', 'kae-model', 'bytes']) $(id).textContent = '–';
  const link = $('download');
  if (page.downloadUrl) URL.revokeObjectURL(page.downloadUrl);
  page.downloadUrl = null;
  link.setAttribute('href', '#');
  link.textContent = 'Download .kae';
  link.setAttribute('aria-disabled', 'true');
}

// --- PNG files as the source ------------------------------------------------------------------------------

// A PNG file as the source, in its own mode: lib/png.mjs reads it exactly as Pillow (and so kaec) does.
async function usePng(file) {
  let image;
  try {
    image = { ...(await readPng(new Uint8Array(await file.arrayBuffer()), file.name)), name: file.name };
  } catch (error) {
    showError(error, file.name);
    return;
  }
  resetForce();
  const [height, width] = page.kae.model.inputShape.slice(1);
  if (image.mode === 'L' && image.width === width && image.height === height) {
    // A digit-sized gray image goes onto the canvas, where it can be drawn on.
    useDrawing(false);
    paint(draw, image.pixels, width, height, 'L');
    page.canvasName = file.name;
    $('source-info').textContent = `${file.name} on the canvas, ${width} × ${height}`;
  } else {
    page.source = image;
    const view = $('source-view');
    view.src = dataUrl(image.pixels, image.width, image.height, image.mode);
    view.alt = `${file.name}, ${image.width} × ${image.height} ${image.mode}`;
    view.hidden = false;
    draw.hidden = true;
    $('source-info').textContent = `${file.name}, ${image.width} × ${image.height} ${image.mode} (Clear to draw again)`;
  }
  changed();
}

$('png-file').addEventListener('change', (event) => {
  const [file] = event.target.files;
  if (file && page.kae) usePng(file);
  event.target.value = '';
});

// --- .kae files: decode and list --------------------------------------------------------------------------

async function decodeFiles(files) {
  const failed = [];
  for (const file of files) {
    const bytes = new Uint8Array(await file.arrayBuffer());
    try {
      const image = await page.kae.decode(bytes, { name: file.name });  // errors name the file
      listDecoded(file.name, bytes.length, image);
    } catch (error) {
      failed.push([file.name, error]);
    }
  }
  if (failed.length) {
    const [name, error] = failed[0];
    const message = String(error && error.message ? error.message : error).split('\n')[0];
    const more = failed.length > 1 ? ` (and ${failed.length - 1} more files refused)` : '';
    showError(`${message}${more}`, message.startsWith(name) ? '' : name);
  } else {
    clearError();
  }
  page.opened += 1;
  document.body.dataset.decoded = String($('decoded').children.length);
  document.body.dataset.opened = String(page.opened);
}

function listDecoded(name, size, image) {
  const { width, height, mode, pixels, model, version } = image;
  const item = document.createElement('li');
  Object.assign(item.dataset, { name, bytes: size, model, width, height, mode, version });
  const figure = document.createElement('figure');
  const img = document.createElement('img');
  img.className = 'decoded';
  img.src = dataUrl(pixels, width, height, mode);
  img.alt = `${name} decoded: ${width} × ${height} ${mode}`;
  scaled(img, width, height, 168);
  const caption = document.createElement('figcaption');
  const title = document.createElement('strong');
  title.textContent = name;
  caption.append(title, document.createElement('br'),
    `${size.toLocaleString('en')} bytes · ${model} · ${width} × ${height} ${mode} · .kae v${version}`);
  figure.append(img, caption);
  item.append(figure);
  $('decoded').prepend(item);
}

$('kae-files').addEventListener('change', (event) => {
  if (page.kae) decodeFiles([...event.target.files]);
  event.target.value = '';
});

// Drops anywhere: PNG files (by their signature) become the source, everything else is read as .kae.
async function startsAsPng(file) {
  return isPng(new Uint8Array(await file.slice(0, 8).arrayBuffer()));
}

document.addEventListener('dragover', (event) => {
  event.preventDefault();
  document.body.classList.add('dragging');
});
document.addEventListener('dragleave', (event) => {
  if (!event.relatedTarget) document.body.classList.remove('dragging');
});
document.addEventListener('drop', async (event) => {
  event.preventDefault();
  document.body.classList.remove('dragging');
  if (!page.kae) return;
  const files = [...(event.dataTransfer?.files || [])];
  const pngs = [];
  const kaes = [];
  for (const file of files) ((await startsAsPng(file)) ? pngs : kaes).push(file);
  if (kaes.length) await decodeFiles(kaes);
  if (pngs.length) await usePng(pngs[0]);
});

// --- the model picker --------------------------------------------------------------------------------------

function describe(model) {
  const parts = [];
  if (model.family) parts.push(`${model.family} q${model.quality}`);
  parts.push(`${model.inputShape.slice(1).join(' × ')} tiles, ${model.latentDim} latents`);
  if (model.bytesPerImage != null) parts.push(`${model.bytesPerImage.toFixed(2)} bytes/image`);
  if (model.psnrDb != null) parts.push(`${model.psnrDb.toFixed(2)} dB on its test set`);
  return parts.join(', ');
}

function fillPicker(kae) {
  const select = $('model');
  select.replaceChildren(...kae.models.map((m) => new Option(m.name, m.name, false, m.name === kae.model.name)));
  select.disabled = kae.models.length < 2;
  $('model-info').textContent = describe(kae.model);
}

$('model').addEventListener('change', async (event) => {
  const name = event.target.value;
  const select = event.target;
  select.disabled = true;
  status(`Loading ${name}…`);
  try {
    await page.kae.use(name);
    $('model-info').textContent = describe(page.kae.model);
    status(`Encoding with ${name}.`);
    clearError();
  } catch (error) {
    showError(error, name);
    select.value = page.kae.model.name;
  }
  select.disabled = false;
  changed();
});

// --- start -------------------------------------------------------------------------------------------------

async function start() {
  clearCanvas();
  try {
    const kae = await open(new URL('.', import.meta.url));
    page.kae = kae;
    fillPicker(kae);
    const readyMs = performance.now();  // from navigation start: wasm, model files, sessions
    status(`Ready: ${kae.model.name}, started in ${Math.round(readyMs)} ms. Draw a digit, or drop .kae files.`);
    // For scripts and tests: the runtime itself, and a way to wait for the live encoding to settle.
    window.kaePage = {
      kae, psnr, KaeError, readyMs,
      get encoded() { return page.encoded; },
      get encodes() { return page.encodes; },
      get busy() { return page.busy; },
      idle: () => (page.busy ? new Promise((resolve) => page.waiting.push(resolve)) : Promise.resolve()),
    };
    document.body.dataset.state = 'ready';
    changed();  // the empty canvas: shows what a blank digit costs
  } catch (error) {
    showError(error);
    status('The runtime did not start.');
    document.body.dataset.state = 'error';
  }
}

start();
