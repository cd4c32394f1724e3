"""The web export's page (web/index.html, web/page.mjs) in a real browser: headless Chromium, driven through
selenium, on the export folder served from 127.0.0.1 (kaecompress.exporters.web.serve).

- every golden .kae (tests/data/golden/onnx and shipped) decoded by the page's kae.mjs: the same latent
  integers as the Python library, pixels within one level of `kaec decode --backend onnx`; files of models the
  export does not hold are refused, naming why;
- .kae files opened through the page's file picker and dropped on it: listed with their size, model and
  dimensions, the images shown within one level of Python's; a damaged file shows an error line, not an image;
- the canvas: a golden digit's PNG encodes to its committed .kae bytes, and a digit drawn with the mouse gives
  the bytes Python writes for the same pixels, a reconstruction within one level of Python's and its PSNR;
- the out-of-domain check: drawn digits pass it; a PNG unlike the digits shows `kaec encode`'s refusal and
  "Encode anyway" encodes it to Python's bytes;
- a screenshot of the page, saved under the test's tmp path and into $KAEC_ARTEFACTS when that is set.

    python tests/javascript/test_web_browser.py --screenshot docs/images/web-page.png   # the docs' screenshot
"""

from __future__ import annotations

import base64
import functools
import io
import itertools
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from kaecompress.exporters.web import serve

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "data" / "golden"
GOLDEN_FILES = sorted([*(GOLDEN / "onnx").glob("*.kae"), *(GOLDEN / "shipped").glob("*.kae")])
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
READY_S = 60     # from navigation to the page's data-state="ready" (wasm and model loads take ~1 s)
SCRIPT_S = 120   # one execute_async_script


# --- the browser ---------------------------------------------------------------------------------------------

def browser_missing() -> str | None:
    """Why headless Chromium cannot be driven here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.is_file():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


def chromium(width: int = 1100, height: int = 1000):
    """Debian's Chromium, headless, through its own chromedriver (selenium downloads nothing)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_script_timeout(SCRIPT_S)
    return driver


def open_page(driver, url: str) -> float:
    """Load the page and wait for it to be ready; returns its start-up time in ms (navigation to ready)."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "index.html")
    state = WebDriverWait(driver, READY_S, poll_frequency=0.05).until(
        lambda d: d.execute_script("const s = document.body && document.body.dataset.state;"
                                   "return s && s !== 'loading' ? s : null;"))
    if state != "ready":
        raise AssertionError(f"the page did not start: {driver.find_element('id', 'error').text}")
    return driver.execute_script("return kaePage.readyMs")


def settle(driver) -> None:
    """Wait until the page's live encode has caught up with the canvas."""
    driver.execute_async_script("kaePage.idle().then(arguments[arguments.length - 1])")


# Helpers the page's scripts below share: base64 both ways (selenium passes strings and lists).
JS_HELPERS = """
const fromB64 = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
const toB64 = (u8) => { let s = ''; for (let i = 0; i < u8.length; i += 0x8000)
  s += String.fromCharCode(...u8.subarray(i, i + 0x8000)); return btoa(s); };
const canvasRgba = (canvas) => canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
const imgRgba = (img) => { const c = document.createElement('canvas'); c.width = img.naturalWidth;
  c.height = img.naturalHeight; c.getContext('2d').drawImage(img, 0, 0); return canvasRgba(c); };
const done = arguments[arguments.length - 1];
"""

DECODE_IN_PAGE = JS_HELPERS + """
const files = arguments[0];
(async () => {
  const out = {};
  for (const [name, data] of Object.entries(files)) {
    try {
      const r = await kaePage.kae.decode(fromB64(data));
      out[name] = {width: r.width, height: r.height, mode: r.mode, model: r.model, version: r.version,
                   pixels: toB64(r.pixels), integers: r.integers ? Array.from(r.integers) : null};
    } catch (e) {
      out[name] = {error: String(e && e.message), kaeError: e instanceof kaePage.KaeError};
    }
  }
  return out;
})().then(done, (e) => done({fatal: String(e && e.stack || e)}));
"""

# What the page shows after an encode: the source canvas, the reconstruction, the PSNR line, the bytes as
# listed and as the download link holds them.
SHOWN = JS_HELPERS + """
(async () => {
  await kaePage.idle();
  const draw = document.getElementById('draw'), recon = document.getElementById('recon');
  const link = document.getElementById('download');
  const bytes = new Uint8Array(await (await fetch(link.href)).arrayBuffer());
  const r = canvasRgba(recon), s = canvasRgba(draw);
  return {kae: toB64(bytes), download: link.download, hex: document.getElementById('bytes').textContent,
          size: document.getElementById('kae-size').textContent, psnr: document.getElementById('psnr').textContent,
          model: document.getElementById('kae-model').textContent,
          recon: toB64(new Uint8Array(r.data.buffer)), reconSize: [r.width, r.height],
          source: toB64(new Uint8Array(s.data.buffer)), sourceSize: [s.width, s.height],
          error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
          encodes: kaePage.encodes};
})().then(done, (e) => done({fatal: String(e && e.stack || e)}));
"""

LISTED = JS_HELPERS + """
const items = [...document.querySelectorAll('#decoded li')];
done(items.map((li) => { const img = li.querySelector('img'); const d = imgRgba(img);
  return {...li.dataset, alt: img.alt, caption: li.querySelector('figcaption').textContent,
          rgba: toB64(new Uint8Array(d.data.buffer)), size: [d.width, d.height]}; }));
"""

# A drop of files on the page, as a user's drag and drop delivers them.
DROP = JS_HELPERS + """
const [files] = arguments;
const transfer = new DataTransfer();
for (const [name, data] of Object.entries(files)) transfer.items.add(new File([fromB64(data)], name));
const before = document.body.dataset.opened;
document.getElementById('drop-kae').dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true,
                                                                         cancelable: true}));
// data-opened counts the drops and picks of .kae files the page has finished with
const wait = () => (document.body.dataset.opened !== before ? done(true) : setTimeout(wait, 20));
wait();
"""


# --- Python's side -------------------------------------------------------------------------------------------

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), np.uint8)


@functools.cache
def codec(model: str):
    """The Python library's runtime for `model`: Codec on the onnx backend, as `kaec ... --backend onnx`."""
    from kaecompress.api import open_model
    from kaecompress.codec.images import Codec

    return Codec(open_model(model, "onnx"), "onnx")


def model_of(data: bytes) -> str | None:
    """The shipped model a .kae names (codec id or weights id), as `kaec decode` finds it."""
    from kaecompress.codec import bitstream
    from kaecompress.codec.containers import from_kae
    from kaecompress.zoo import by_codec_id, find_by_hash

    if data[0] & 0x80:
        header = bitstream.parse_header(data)
        return by_codec_id(header.codec_id) if header.codec_id is not None else find_by_hash(header.model_id)
    return find_by_hash(from_kae(data, ".kae")[0].weights_sha256)


def codec_id(data: bytes) -> int | None:
    from kaecompress.codec import bitstream

    return bitstream.parse_header(data).codec_id


def python_decode(data: bytes, model: str) -> tuple[np.ndarray | None, np.ndarray, str]:
    """(latent integers of a version-2 file or None, pixels (H, W[, C]) uint8, mode) as kaec decodes it."""
    from kaecompress.codec.containers import from_kae

    c = codec(model)
    if data[0] & 0x80:
        enc = c.from_kae(data, model)
        integers = enc.latents.astype(np.int64).reshape(-1)
    else:
        enc, integers = from_kae(data, model)[0], None
    image = c.decompress(enc)
    pixels = np.asarray(image)
    return integers, (pixels.astype(np.uint8) * 255 if image.mode == "1" else pixels), image.mode


def python_encode(pixels: np.ndarray, model: str) -> bytes:
    """The .kae `kaec encode --backend onnx` writes for an 8-bit gray image (H, W)."""
    from PIL import Image

    from kaecompress.codec.containers import to_kae

    c = codec(model)
    enc = c.compress(Image.fromarray(pixels, "L"))
    return c.to_kae(enc) if c.rate_model else to_kae(enc)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def as_image(flat: np.ndarray, width: int, height: int, mode: str) -> np.ndarray:
    channels = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    return flat.reshape(height, width) if channels == 1 else flat.reshape(height, width, channels)


def rgba_as(rgba: np.ndarray, shape: tuple, mode: str) -> np.ndarray:
    """A canvas's RGBA pixels as the decoded image of `mode` they show."""
    rgba = rgba.reshape(*shape, 4)
    return {"1": rgba[..., 0], "L": rgba[..., 0], "LA": rgba[..., [0, 3]], "RGB": rgba[..., :3], "RGBA": rgba}[mode]


def worst(a: np.ndarray, b: np.ndarray) -> int:
    assert a.shape == b.shape, (a.shape, b.shape)
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def shown_psnr(text: str) -> float:
    if text.startswith("∞"):
        return math.inf
    found = re.fullmatch(r"(-?\d+\.\d\d) dB", text)
    assert found, f"PSNR shown as {text!r}"
    return float(found.group(1))


# --- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(web_export: Path):
    log: list = []
    with serve(web_export, log) as url:
        yield url, log


@pytest.fixture(scope="module")
def exported(web_export: Path) -> list[str]:
    return json.loads((web_export / "models.json").read_text())["models"]


@pytest.fixture(scope="module")
def driver():
    missing = browser_missing()
    if missing:
        pytest.skip(missing)
    d = chromium()
    yield d
    d.quit()


@pytest.fixture
def page(driver, site):
    """The page, freshly loaded and ready."""
    open_page(driver, site[0])
    return driver


# --- tests ---------------------------------------------------------------------------------------------------

def test_the_page_starts_from_the_served_folder_alone(page, site, exported):
    """Every file it fetched was served (no 404, nothing from elsewhere), among them the wasm build and the
    default model's three files; the model picker lists the export's models."""
    url, log = site
    fetched = {path.split("?")[0]: code for path, code, _ in log}
    assert all(code in (200, 304) for code in fetched.values()), fetched
    model = exported[0]
    for rel in ("index.html", "page.mjs", "kae.mjs", "models.json", "ort/ort-wasm-simd-threaded.wasm",
                f"models/{model}/model.json"):
        assert f"/{rel}" in fetched, rel
    assert sum(p.startswith(f"/models/{model}/") for p in fetched) >= 4  # model.json, two graphs, weights
    names = page.execute_script("return [...document.querySelectorAll('#model option')].map(o => o.value)")
    assert names == exported
    resources = page.execute_script("return performance.getEntriesByType('resource').map(r => r.name)")
    assert resources and all(r.startswith(url) for r in resources), resources
    assert page.find_element("id", "error").get_attribute("hidden") is not None


def test_every_golden_file_decodes_in_the_page_as_in_python(page, exported):
    assert len(GOLDEN_FILES) >= 30
    files = {f"{p.parent.name}/{p.name}": p.read_bytes() for p in GOLDEN_FILES}
    start = time.monotonic()
    results = page.execute_async_script(DECODE_IN_PAGE, {name: b64(data) for name, data in files.items()})
    elapsed = time.monotonic() - start
    assert "fatal" not in results, results.get("fatal")
    decoded = refused = 0
    for name, data in files.items():
        r, model = results[name], model_of(data)
        if model not in exported:  # another model's file: refused with a KaeError that says whose
            assert r.get("kaeError") and "\n" not in r["error"], (name, r)
            named = [model] + ([f"codec id {codec_id(data)}"] if data[0] & 0x80 else [])
            assert any(n in r["error"] for n in named), (name, r["error"])
            refused += 1
            continue
        assert "error" not in r, (name, r)
        integers, pixels, mode = python_decode(data, model)
        assert (r["model"], r["version"], r["mode"]) == (model, 2 if data[0] & 0x80 else 1, mode), name
        assert (r["height"], r["width"]) == pixels.shape[:2], name
        if integers is None:
            assert r["integers"] is None, name
        else:  # bit-exact: the range coder, the context model's restore, the tiling order
            assert np.array_equal(np.asarray(r["integers"], np.int64), integers), name
        assert worst(as_image(unb64(r["pixels"]), r["width"], r["height"], r["mode"]), pixels) <= 1, name
        decoded += 1
    assert decoded >= 26 and decoded + refused == len(files)
    print(f"\n{decoded} golden files decoded in Chromium as in Python, {refused} refused (model not exported), "
          f"{elapsed:.2f} s")


def test_opened_files_are_listed_with_their_images(page, exported):
    """The file picker's path: each file listed with its size, model and dimensions, and the image shown is
    Python's decode within one level."""
    chosen = [GOLDEN / "shipped" / "mnist-q2-0.kae", GOLDEN / "onnx" / "mnist-q6-row.kae",
              GOLDEN / "onnx" / "fashion-q9-rgb-resize.kae", GOLDEN / "onnx" / "mnist-kae-dec3-rgb.kae"]
    chosen = [p for p in chosen if model_of(p.read_bytes()) in exported]
    page.find_element("id", "kae-files").send_keys("\n".join(str(p) for p in chosen))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page, 30, 0.05).until(lambda d: d.execute_script(
        "return document.body.dataset.decoded") == str(len(chosen)))
    listed = {item["name"]: item for item in page.execute_async_script(LISTED)}
    assert sorted(listed) == sorted(p.name for p in chosen)
    for path in chosen:
        data = path.read_bytes()
        item, model = listed[path.name], model_of(data)
        _, pixels, mode = python_decode(data, model)
        height, width = pixels.shape[:2]
        assert (item["model"], int(item["bytes"]), item["mode"]) == (model, len(data), mode)
        assert (int(item["width"]), int(item["height"])) == (width, height) == tuple(item["size"])
        assert f"{len(data)} bytes" in item["caption"] and model in item["caption"]
        assert f"{width} × {height}" in item["caption"] and path.name in item["alt"]
        assert worst(rgba_as(unb64(item["rgba"]), (height, width), mode), pixels) <= 1, path.name
    assert page.find_element("id", "error").get_attribute("hidden") is not None


def test_a_damaged_file_shows_an_error_not_an_image(page):
    good = (GOLDEN / "shipped" / "mnist-q2-row.kae").read_bytes()
    damaged = bytearray(good)
    damaged[-1] ^= 0x10  # the payload's last byte: the CRC no longer matches
    truncated = good[:5]
    from kaecompress.errors import KaecError

    for data in (damaged, truncated):  # Python refuses both
        with pytest.raises(KaecError):
            python_decode(bytes(data), "mnist-q2")
    page.execute_async_script(DROP, {"damaged.kae": b64(bytes(damaged)), "good.kae": b64(good),
                                     "truncated.kae": b64(truncated)})
    names = page.execute_script("return [...document.querySelectorAll('#decoded li')].map(li => li.dataset.name)")
    assert names == ["good.kae"]  # the sound file only
    error = page.find_element("id", "error")
    assert error.is_displayed()
    text = error.text
    assert text.startswith("damaged.kae: ") and "(and 1 more files refused)" in text and "\n" not in text, text


def test_another_models_file_is_refused_naming_it(driver, tmp_path):
    """A page exporting mnist-q2 alone, given fashion-q3's file: one error line naming the file's codec id."""
    from kaecompress.exporters.web import write_web_export

    write_web_export(["mnist-q2"], tmp_path / "one")
    data = (GOLDEN / "shipped" / "fashion-q3-0.kae").read_bytes()
    with serve(tmp_path / "one") as url:
        open_page(driver, url)
        driver.execute_async_script(DROP, {"fashion-q3-0.kae": b64(data)})
        text = driver.find_element("id", "error").text
        assert driver.execute_script("return document.querySelectorAll('#decoded li').length") == 0
    assert text.startswith("fashion-q3-0.kae: ") and f"codec id {codec_id(data)}" in text and "\n" not in text, text


def test_a_golden_digit_png_encodes_to_its_committed_bytes(page):
    """The PNG picker's path onto the canvas: the .kae shown is byte for byte the committed golden file that
    `kaec encode` wrote for that PNG, and its reconstruction is the golden decode within one level."""
    for name in ("mnist-q2-0", "mnist-q2-1"):
        before = page.execute_script("return kaePage.encodes")
        page.find_element("id", "png-file").send_keys(str(GOLDEN / "shipped" / f"{name}.png"))
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(page, 30, 0.05).until(lambda d, before=before: d.execute_script("return kaePage.encodes") > before)
        shown = page.execute_async_script(SHOWN)
        assert "fatal" not in shown and shown["error"] is None, shown
        kae = base64.b64decode(shown["kae"])
        assert kae == (GOLDEN / "shipped" / f"{name}.kae").read_bytes(), name
        assert shown["download"] == f"{name}.kae" and shown["size"] == f"{len(kae)} bytes"
        source = rgba_as(unb64(shown["source"]), (28, 28), "L")
        from PIL import Image

        assert np.array_equal(source, np.asarray(Image.open(GOLDEN / "shipped" / f"{name}.png").convert("L")))
        _, pixels, _ = python_decode(kae, "mnist-q2")
        assert worst(rgba_as(unb64(shown["recon"]), (28, 28), "L"), pixels) <= 1


# Digits as mouse strokes: offsets in screen pixels from the canvas's centre (280 px on screen for 28 pixels).
DRAWN = {
    "7": [[(-65, -75), (60, -80), (70, -70), (-5, 90)]],
    "1": [[(0, -90), (0, 90)]],
    "0": [[(0, -90), (50, -60), (60, 0), (45, 70), (0, 90), (-45, 70), (-60, 0), (-50, -60), (0, -90)]],
    "4": [[(30, -90), (-60, 30), (65, 30)], [(30, -90), (30, 95)]],
    "8": [[(0, 0), (45, -45), (0, -90), (-45, -45), (0, 0), (55, 45), (0, 90), (-55, 45), (0, 0)]],
    "2": [[(-55, -55), (0, -90), (55, -55), (-60, 90), (65, 90)]],
    "7, wide": [[(-100, -100), (100, -100), (-20, 110)]],
}


def draw_digit(driver, strokes=DRAWN["7"]) -> None:
    """A digit (a 7 unless `strokes` says otherwise), drawn with the mouse on the canvas."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "draw")
    for stroke in strokes:
        actions = ActionChains(driver, duration=10)
        actions.move_to_element_with_offset(canvas, *stroke[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            for t in np.linspace(0, 1, 12)[1:]:
                actions.move_to_element_with_offset(canvas, round(x0 + t * (x1 - x0)), round(y0 + t * (y1 - y0)))
        actions.release().perform()


def test_a_drawn_digit_encodes_live_as_python_encodes_it(page):
    """Mouse strokes on the canvas: each changes the .kae shown; the final .kae is the one Python writes for
    the canvas's pixels, it decodes in Python to the reconstruction shown (within one level), and the PSNR
    shown is Python's."""
    blank = page.execute_async_script(SHOWN)
    draw_digit(page)
    shown = page.execute_async_script(SHOWN)
    assert "fatal" not in shown and shown["error"] is None, shown
    assert shown["encodes"] > blank["encodes"] + 2  # live: an encode per stroke segment, at least
    source = rgba_as(unb64(shown["source"]), (28, 28), "L")
    assert (source > 128).sum() >= 40 and (source[:, :4] == 0).all()  # a digit was drawn, inside the canvas
    kae = base64.b64decode(shown["kae"])
    assert kae != base64.b64decode(blank["kae"])
    assert shown["hex"] == " ".join(f"{b:02x}" for b in kae)
    assert kae == python_encode(source, "mnist-q2"), "the page's .kae differs from kaec encode's for its pixels"
    _, pixels, _ = python_decode(kae, "mnist-q2")
    recon = rgba_as(unb64(shown["recon"]), (28, 28), "L")
    assert worst(recon, pixels) <= 1
    assert abs(shown_psnr(shown["psnr"]) - psnr(source, pixels)) <= 0.05
    assert shown_psnr(shown["psnr"]) == round(psnr(source, recon), 2)
    assert shown["model"].startswith("mnist-q2,")
    # Clear: back to the blank digit's file
    page.find_element("id", "clear").click()
    settle(page)
    assert page.execute_async_script(SHOWN)["kae"] == blank["kae"]


DOMAIN_STATE = """
return {error: document.getElementById('error').hidden ? null : document.getElementById('error').textContent,
        control: !document.getElementById('domain').hidden, forced: document.getElementById('force').checked,
        note: document.getElementById('domain-note').textContent, size: document.getElementById('kae-size').textContent,
        check: kaePage.kae.domainChecks[0] ? kaePage.kae.domainChecks[0].toJSON() : null};
"""


def test_a_non_digit_png_is_refused_and_encoded_anyway(page, tmp_path):
    """Digits drawn on the canvas pass the out-of-domain check (no refusal, no control shown). PNGs unlike the
    digits (28x28 noise, which goes onto the canvas, and a colour field) show `kaec encode`'s refusal line in
    the error element, nothing encoded, and an "Encode anyway" control; ticking it encodes the image to the
    bytes Python writes and says it is outside; Clear goes back to the drawing, unforced."""
    from kaecompress.cli.coding import _refuse_outside
    from PIL import Image
    from selenium.webdriver.support.ui import WebDriverWait

    from kaecompress.codec.domain import domain_of
    from kaecompress.errors import KaecError

    worst = 0.0
    for name, strokes in DRAWN.items():
        page.find_element("id", "clear").click()
        settle(page)
        draw_digit(page, strokes)
        settle(page)
        state = page.execute_script(DOMAIN_STATE)
        assert state["error"] is None and not state["control"] and not state["check"]["outside"], (name, state)
        worst = max(worst, state["check"]["value"] / state["check"]["threshold"])
    rng = np.random.default_rng(7)
    pngs = {"noise.png": Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)),
            "field.png": Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((80, 60))}
    c = codec("mnist-q2")
    for name, im in pngs.items():
        im.save(tmp_path / name)
        im = Image.open(tmp_path / name)
        c.compress_many([im], check_domain=True)
        check = c.domain_checks[0]
        with pytest.raises(KaecError) as refused:
            _refuse_outside(c, [Path(name)], False)
        line = str(refused.value).replace("--force encodes anyway", 'tick "Encode anyway" to encode it')
        before = page.execute_script("return kaePage.encodes")
        page.find_element("id", "png-file").send_keys(str(tmp_path / name))
        WebDriverWait(page, 30, 0.05).until(lambda d, before=before: d.execute_script("return kaePage.encodes") > before)
        settle(page)
        state = page.execute_script(DOMAIN_STATE)
        assert state["error"] == line, (state["error"], line)
        assert state["control"] and not state["forced"] and state["size"] == "–", state
        page.find_element("id", "force").click()
        WebDriverWait(page, 30, 0.05).until(lambda d: d.execute_script(
            "return !kaePage.busy && document.getElementById('error').hidden"))
        shown = page.execute_async_script(SHOWN)
        state = page.execute_script(DOMAIN_STATE)
        assert shown["error"] is None and state["forced"], state
        assert base64.b64decode(shown["kae"]) == c.to_kae(c.compress(im)), name
        assert state["note"] == f"{name}: outside mnist-q2's domain, {domain_of(c.loaded)}: {check.describe()}; it " \
                                "will decode poorly"
    page.find_element("id", "clear").click()
    settle(page)
    state = page.execute_script(DOMAIN_STATE)
    assert state["error"] is None and not state["control"] and not state["forced"] and state["note"] == ""
    print(f"\n{len(DRAWN)} drawn digits inside mnist-q2's domain (at most {100 * worst:.0f}% of a limit); "
          f"{len(pngs)} PNGs refused with kaec's line, then encoded anyway to Python's bytes")


def test_another_model_from_the_picker_encodes_the_drawing(page, exported):
    from selenium.webdriver.support.select import Select

    other = next(m for m in exported[1:] if m.startswith("fashion-q"))
    page.find_element("id", "png-file").send_keys(str(GOLDEN / "shipped" / "mnist-q2-0.png"))
    settle(page)
    Select(page.find_element("id", "model")).select_by_value(other)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(page, 60, 0.05).until(lambda d: d.execute_script(
        "return !kaePage.busy && document.getElementById('kae-model').textContent.startsWith(arguments[0] + ',')",
        other))
    shown = page.execute_async_script(SHOWN)
    source = rgba_as(unb64(shown["source"]), (28, 28), "L")
    kae = base64.b64decode(shown["kae"])
    assert kae == python_encode(source, other)


def test_screenshot(driver, site, tmp_path):
    """The page with a drawn digit and a few decoded files: saved as a test artefact."""
    path = tmp_path / "web-page.png"
    screenshot(driver, site[0], path)
    assert path.stat().st_size > 10_000
    if os.environ.get("KAEC_ARTEFACTS"):
        folder = Path(os.environ["KAEC_ARTEFACTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / "web-page.png")


def screenshot(driver, url: str, path: Path) -> None:
    """The page in use: a digit drawn, some golden files decoded; the window's PNG, made small (palette)."""
    from PIL import Image

    open_page(driver, url)
    draw_digit(driver)
    files = [GOLDEN / "shipped" / n for n in ("mnist-q6-1.kae", "fashion-q3-1.kae", "mnist-q2-row.kae")]
    driver.find_element("id", "kae-files").send_keys("\n".join(str(p) for p in files))
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 30, 0.05).until(lambda d: d.execute_script("return document.body.dataset.decoded")
                                          == str(len(files)))
    settle(driver)
    # the whole page in one viewport of 1000 px wide (the window's own size includes the browser's frame)
    metrics = {"width": 1000, "height": 800, "deviceScaleFactor": 1, "mobile": False}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": min(height, 1600)})
    time.sleep(0.2)
    try:
        image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    """`--screenshot PATH`: export the tests' models, serve them, and save the page's screenshot."""
    import argparse
    import tempfile

    ap = argparse.ArgumentParser(description="The web page's screenshot for the docs.")
    ap.add_argument("--screenshot", type=Path, required=True, help="The PNG to write (docs/images/web-page.png).")
    args = ap.parse_args()
    missing = browser_missing()
    if missing:
        sys.exit(missing)
    from kaecompress.exporters.web import write_web_export

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "export"
        write_web_export(["mnist-q2", "mnist-q3", "mnist-q6", "fashion-q3", "fashion-q9"], folder)
        driver = chromium()
        try:
            with serve(folder) as url:
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                screenshot(driver, url, args.screenshot)
        finally:
            driver.quit()
    print(f"{args.screenshot}: {args.screenshot.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
