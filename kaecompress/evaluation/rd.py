"""Rate–distortion: our models against JPEG, WebP, AVIF and PNG, in bytes of the files a user would store.

For every codec setting and every model, each test image becomes a real file (Pillow at a careful user's
strongest settings; `.kae` through the model), is decoded back to 8-bit pixels, and is scored: bytes of the
whole file, bytes of its payload (the coded image without container headers), per-image PSNR and SSIM, and
encode / decode time per image. Models that share a `family` on their card form one curve, ordered by
`quality`; any other model is a curve of one point. Each model curve is then compared with each lossy codec:
BD-rate and BD-PSNR where the curves have enough points (kaecompress.evaluation.bdrate), else the codec's bytes at the
model's PSNR. Nothing here is random: the same images give the same files and scores every time.
"""

from __future__ import annotations

import io
import math
import statistics
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kaecompress.evaluation import bdrate
from kaecompress.errors import KaecError


@dataclass(frozen=True)
class ClassicalCodec:
    name: str                 # as printed: JPEG, WebP, AVIF, PNG
    pillow_format: str
    params: dict              # fixed encoder settings, the strongest a careful user would pick
    qualities: tuple          # the sweep; (None,) for a lossless format


CODECS = {
    "jpeg": ClassicalCodec("JPEG", "JPEG", {"optimize": True},
                           (1, 2, 3, 5, 7, 10, 15, 20, 30, 40, 50, 60, 75, 85, 95)),
    "webp": ClassicalCodec("WebP", "WEBP", {"method": 6},
                           (0, 1, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 100)),
    # one encoder thread: a 28x28 image has nothing to share out, and no file can depend on the core count
    "avif": ClassicalCodec("AVIF", "AVIF", {"speed": 0, "max_threads": 1}, (0, 10, 20, 30, 50, 75)),
    "png": ClassicalCodec("PNG", "PNG", {"optimize": True}, (None,)),
}
DEFAULT_CODECS = ("jpeg", "webp", "avif", "png")


@dataclass
class Point:
    """One setting of one codec, or one model, over the image set (means over images)."""

    setting: int | str | None     # the codec's quality, or the model's name
    bytes: float                  # whole file
    payload_bytes: float          # the coded image without container overhead
    bpp: float                    # whole file, bits per pixel
    psnr: float                   # mean per-image PSNR (dB); inf when every image decodes exactly
    ssim: float
    encoding_time: float          # seconds per image
    decoding_time: float
    exact_images: int             # images decoded without any error (their PSNR counts as PSNR_CAP_DB)
    quality: int | None = None    # a model's quality level within its family (card key `quality`)

    @property
    def lossless(self) -> bool:
        return math.isinf(self.psnr)


@dataclass
class Curve:
    name: str
    kind: str                     # "codec" or "model"
    description: str
    images: int
    points: list[Point] = field(default_factory=list)
    settings: dict = field(default_factory=dict)
    comparisons: list[dict] = field(default_factory=list)   # models: BD figures / bytes at the same PSNR

    @property
    def lossless(self) -> bool:
        return bool(self.points) and all(p.lossless for p in self.points)


@dataclass
class RDResult:
    dataset: str
    images: int
    curves: list[Curve]
    method: str = bdrate.METHOD

    def codec_curves(self) -> list[Curve]:
        return [c for c in self.curves if c.kind == "codec" and not c.lossless]

    def model_curves(self) -> list[Curve]:
        return [c for c in self.curves if c.kind == "model"]


# ---- images -----------------------------------------------------------------------------------------

def load_dataset(dataset: str, count: int | None = None, data_root=None) -> list[np.ndarray]:
    """The first `count` test images as 8-bit arrays: (28, 28) for mnist / fashion-mnist; every image file
    under a folder:PATH (sorted by path), at its own size, (H, W) if grey else (H, W, 3)."""
    from kaecompress.experiments.data import check_dataset_name, list_images, load_images

    check_dataset_name(dataset, "--dataset")
    if count is not None and count < 1:
        raise KaecError(f"--images: expected at least 1, got {count}")
    if not dataset.startswith("folder:"):
        x = load_images(dataset, False, data_root)[:count]
        return list(np.rint(x[:, 0].numpy() * 255.0).astype(np.uint8))
    from kaecompress.codec.images import _as_array, open_image, working_mode

    folder = Path(dataset[len("folder:"):]).expanduser()
    if not folder.is_dir():
        raise KaecError(f"--dataset {dataset}: no such folder")
    files = list_images(folder)[:count]
    if not files:
        raise KaecError(f"--dataset {dataset}: no image files in {folder}")
    out = []
    for path in files:
        im = open_image(path)
        mode = "L" if working_mode(im) in ("L", "LA", "1") else "RGB"  # alpha is left out: JPEG has none
        arr = np.rint(_as_array(im, mode) * 255.0).astype(np.uint8)
        out.append(arr[0] if mode == "L" else arr.transpose(1, 2, 0).copy())
    return out


def _pil(arr: np.ndarray):
    from PIL import Image

    return Image.fromarray(arr, "L" if arr.ndim == 2 else "RGB")


def _pixels(im, like: np.ndarray) -> np.ndarray:
    return np.asarray(im.convert("L" if like.ndim == 2 else "RGB"))


# ---- files ------------------------------------------------------------------------------------------

def codec_files(codec: ClassicalCodec, quality: int | None, images: Sequence[np.ndarray],
                clock: dict | None = None) -> tuple[list[bytes], list[np.ndarray]]:
    """Each image saved by Pillow with the codec's settings, one file per image, and decoded back."""
    from PIL import Image

    params = dict(codec.params, **({} if quality is None else {"quality": quality}))
    pil = [_pil(a) for a in images]
    t0 = time.perf_counter()
    files = []
    for im in pil:
        buf = io.BytesIO()
        im.save(buf, format=codec.pillow_format, **params)
        files.append(buf.getvalue())
    t1 = time.perf_counter()
    decoded = []
    for data, ref in zip(files, images):
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            decoded.append(_pixels(im, ref))
    if clock is not None:
        clock.update(encode_s=t1 - t0, decode_s=time.perf_counter() - t1)
    return files, decoded


def model_files(loaded, images: Sequence[np.ndarray], clock: dict | None = None,
                rdo_sweeps: int = 0) -> tuple[list[bytes], list[np.ndarray]]:
    """The exact bytes a user would store with model `loaded` for each image (`kaec encode`'s .kae file,
    with `--rdo rdo_sweeps`), and each file decoded back to 8-bit pixels the way `kaec decode` does."""
    from kaecompress.codec.images import Codec
    from kaecompress.codec.containers import from_kae, to_kae

    codec = Codec(loaded, rdo_sweeps=rdo_sweeps)
    pil = [_pil(a) for a in images]
    t0 = time.perf_counter()
    if codec.rate_model:  # a codec model: entropy-coded .kae version 2
        files = codec.to_kae_many(codec.compress_many(pil))
        t1 = time.perf_counter()
        back = codec.decompress_many(codec.from_kae_many(files, [loaded.name] * len(files)))
    else:
        files = [to_kae(enc) for enc in codec.compress_many(pil)]
        t1 = time.perf_counter()
        back = codec.decompress_many([from_kae(data, loaded.name)[0] for data in files])
    decoded = [_pixels(im, ref) for im, ref in zip(back, images)]
    if clock is not None:
        clock.update(encode_s=t1 - t0, decode_s=time.perf_counter() - t1)
    return files, decoded


def payload_bytes(fmt: str, data: bytes) -> int:
    """Bytes of the coded image inside a file, without its container: JPEG's entropy-coded scans (no
    markers, tables or JFIF header), WebP's VP8/VP8L/ALPH chunk data (no RIFF), AVIF's mdat box (the AV1
    bitstream, no ISOBMFF boxes), PNG's IDAT data (no signature, chunk headers or CRCs), .kae's latent codes
    (version 1: no header, scale or CRC; version 2: no header or check bytes)."""
    fmt = fmt.upper()
    if fmt == "JPEG":
        return _jpeg_scans(data)
    if fmt == "WEBP":
        return sum(len(body) for kind, body in _chunks(data, 12, "<I") if kind in (b"VP8 ", b"VP8L", b"ALPH"))
    if fmt == "PNG":
        return sum(len(body) for kind, body in _chunks(data, 8, ">I", crc=True) if kind == b"IDAT")
    if fmt == "AVIF":
        return sum(len(body) for kind, body in _boxes(data) if kind == b"mdat")
    if fmt == "KAE":
        from kaecompress.codec.containers import MAGIC, from_kae

        if data[:4] != MAGIC:  # version 2: header, coded latents, check bytes
            from kaecompress.codec import bitstream

            return len(data) - bitstream.parse_header(data).size - bitstream.CHECK_BYTES
        enc, quant = from_kae(data, "payload")
        return enc.latents.size * (1 if quant == "uint8" else 2)
    raise KaecError(f"payload of {fmt!r}: expected JPEG, WEBP, PNG, AVIF or KAE")


def _jpeg_scans(d: bytes) -> int:
    i, total = 2, 0  # after SOI
    while i + 4 <= len(d):
        if d[i] != 0xFF:
            raise ValueError(f"JPEG: expected a marker at byte {i}")
        marker = d[i + 1]
        if marker == 0xD9:  # EOI
            break
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        i += 2 + int.from_bytes(d[i + 2:i + 4], "big")
        if marker == 0xDA:  # SOS: entropy-coded data runs to the next marker that is not 0xFF00 or RSTn
            j = i
            while True:
                j = d.index(b"\xff", j)
                if d[j + 1] == 0 or 0xD0 <= d[j + 1] <= 0xD7:
                    j += 2
                    continue
                break
            total += j - i
            i = j
    return total


def _chunks(d: bytes, start: int, size_fmt: str, crc: bool = False):
    """RIFF chunks (tag, LE size, body, pad to even) or PNG chunks (BE size, tag, body, CRC)."""
    i = start
    while i + 8 <= len(d):
        if crc:
            (n,), tag = struct.unpack_from(size_fmt, d, i), d[i + 4:i + 8]
        else:
            tag, (n,) = d[i:i + 4], struct.unpack_from(size_fmt, d, i + 4)
        yield tag, d[i + 8:i + 8 + n]
        i += 8 + n + (4 if crc else n % 2)


def _boxes(d: bytes):
    """Top-level ISOBMFF boxes: (type, body)."""
    i = 0
    while i + 8 <= len(d):
        n, kind, head = int.from_bytes(d[i:i + 4], "big"), d[i + 4:i + 8], 8
        if n == 1:
            n, head = int.from_bytes(d[i + 8:i + 16], "big"), 16
        elif n == 0:
            n = len(d) - i
        if n < head:
            raise ValueError(f"ISOBMFF: bad box size at byte {i}")
        yield kind, d[i + head:i + n]
        i += n


# ---- scores -----------------------------------------------------------------------------------------

def score(images: Sequence[np.ndarray], files: Sequence[bytes], decoded: Sequence[np.ndarray], fmt: str,
          clock: dict, setting=None, quality: int | None = None) -> Point:
    """Means over images of file size, payload, bits per pixel, PSNR (exact images count as PSNR_CAP_DB;
    inf when all are exact) and SSIM, with encode / decode seconds per image from `clock`."""
    from kaecompress.evaluation.metrics import psnr_8bit, ssim  # torch: not needed to read or print results

    n = len(images)
    if len({a.shape for a in images}) == 1:
        ref, dec = np.stack(images), np.stack(decoded)
        psnrs, ssims = psnr_8bit(ref, dec), ssim(ref, dec)
    else:
        psnrs = np.concatenate([psnr_8bit(a[None], b[None]) for a, b in zip(images, decoded)])
        ssims = np.concatenate([ssim(a[None], b[None]) for a, b in zip(images, decoded)])
    exact = int(sum(np.array_equal(a, b) for a, b in zip(images, decoded)))
    return Point(
        setting=setting,
        bytes=statistics.fmean(len(f) for f in files),
        payload_bytes=statistics.fmean(payload_bytes(fmt, f) for f in files),
        bpp=statistics.fmean(8 * len(f) / (a.shape[0] * a.shape[1]) for f, a in zip(files, images)),
        psnr=math.inf if exact == n else float(np.mean(psnrs)),
        ssim=float(np.mean(ssims)),
        encoding_time=clock["encode_s"] / n,
        decoding_time=clock["decode_s"] / n,
        exact_images=exact,
        quality=quality,
    )


# ---- models -----------------------------------------------------------------------------------------

def _split(specs: Sequence[str]) -> list[str]:
    """`--model a,b --model c` -> [a, b, c]; a path that exists is taken whole, even with a comma in it."""
    out = []
    for spec in specs:
        out += [spec] if Path(spec).exists() else [s.strip() for s in spec.split(",") if s.strip()]
    return out


def resolve_models(specs: Sequence[str] | None, dataset: str) -> list:
    """Loaded models for shipped names, family names (all models of the family, by quality), run folders or
    checkpoints. None: the shipped models trained on `dataset` (the default model for a folder);
    ["none"]: no model."""
    from kaecompress.zoo import DEFAULT_MODEL, cards
    from kaecompress.experiments.loading import load_model

    found = cards()
    if specs is None:
        names = [n for n, c in found.items() if c.get("dataset") == dataset] or [DEFAULT_MODEL]
        return [load_model(n) for n in _by_family(names, found)]
    tokens = _split(specs)
    if tokens == ["none"]:
        return []
    families = {}
    for name, card in found.items():
        if card.get("family"):
            families.setdefault(card["family"], []).append(name)
    names: list[str] = []
    for token in tokens:
        if token in found:
            names.append(token)
        elif token in families:
            names += _by_family(families[token], found)
        elif Path(token).exists():
            names.append(token)
        else:
            raise KaecError(f"--model {token}: no such trained model, model family, run folder or checkpoint "
                            f"(trained models: {', '.join(found) or 'none'}"
                            f"{'; families: ' + ', '.join(sorted(families)) if families else ''})")
    unique = list(dict.fromkeys(names))
    return [load_model(n) for n in unique]


def _by_family(names: list[str], found: dict) -> list[str]:
    return sorted(names, key=lambda n: (found[n].get("family") or "", found[n].get("quality") or 0, n))


def group_models(models: Sequence) -> list[tuple[str, list]]:
    """Curves of models: one per card `family` (ordered by `quality`), one per model without a family."""
    groups: dict[str, list] = {}
    for m in models:
        family = m.card.get("family") if m.card else None
        key = f"family:{family}" if family else f"model:{m.name}"
        groups.setdefault(key, []).append(m)
    out = []
    for key, members in groups.items():
        members.sort(key=lambda m: (m.card.get("quality") or 0) if m.card else 0)
        out.append((key.split(":", 1)[1], members))
    return out


# ---- the measurement --------------------------------------------------------------------------------

def run_rd(dataset: str = "mnist", models: Sequence[str] | None = None, codecs: Sequence[str] = DEFAULT_CODECS,
           images: int | None = None, *, codec_images: dict[str, int] | None = None,
           qualities: dict[str, Sequence[int]] | None = None, data_root=None, method: str = bdrate.METHOD,
           progress: Callable[[str], None] | None = None, rdo_sweeps: int = 0) -> RDResult:
    """Measure every codec setting and every model on the first `images` test images of `dataset`
    (`codec_images`: fewer for a slow codec, e.g. {"avif": 2000}) and compare each model curve with each
    lossy codec. `qualities` replaces a codec's sweep. With `rdo_sweeps`, the codec models are measured a
    second time, encoded with that many passes of rate–distortion optimised rounding (`kaecompress.codec.rdo`)."""
    from kaecompress.experiments.data import check_dataset_name

    check_dataset_name(dataset, "--dataset")
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        raise KaecError(f"--codecs: unknown codec {unknown[0]!r} (expected some of {', '.join(CODECS)})")
    if method not in bdrate.METHODS:
        raise KaecError(f"--bd-method: expected one of {', '.join(bdrate.METHODS)}, got {method!r}")
    for name, n in (codec_images or {}).items():
        if name not in CODECS or n < 1:
            raise KaecError(f"images for codec {name!r}: expected a codec of {', '.join(CODECS)} and at least 1")
    import PIL
    from PIL import features

    for name in codecs:
        module = {"jpeg": "jpg", "webp": "webp", "avif": "avif", "png": "zlib"}[name]
        if not features.check(module):
            raise KaecError(f"--codecs {name}: this Pillow ({PIL.__version__}) was built without {CODECS[name].name} "
                            "support (install pillow>=12, whose wheels include it)")
    loaded = resolve_models(models, dataset)
    pixels = load_dataset(dataset, images, data_root)
    say = progress or (lambda message: None)
    curves: list[Curve] = []
    for name in codecs:
        codec = CODECS[name]
        subset = pixels[:(codec_images or {}).get(name, len(pixels))]
        sweep = tuple(qualities[name]) if qualities and name in qualities else codec.qualities
        settings = ", ".join(f"{k}={v}" for k, v in codec.params.items())
        curve = Curve(codec.name, "codec", f"Pillow {PIL.__version__} {codec.name} ({settings})"
                      + ("" if sweep == (None,) else f", quality {', '.join(map(str, sweep))}")
                      + ("" if len(subset) == len(pixels) else f"; the first {len(subset):,} of the {len(pixels):,} "
                         "images"),
                      len(subset), settings=dict(codec.params))
        for q in sweep:
            say(f"{codec.name}{'' if q is None else f' quality {q}'} on {len(subset):,} images")
            clock: dict = {}
            files, decoded = codec_files(codec, q, subset, clock)
            curve.points.append(score(subset, files, decoded, codec.pillow_format, clock, q))
        curves.append(curve)
    groups = [(label, members, 0) for label, members in group_models(loaded)]
    if rdo_sweeps:
        groups += [(label, codec_models, rdo_sweeps) for label, members, _ in groups
                   if (codec_models := [m for m in members if getattr(m.model, "prior", None) is not None])]
    for label, members, sweeps in groups:
        option = f" --rdo {sweeps}" if sweeps else ""
        family = bool(members[0].card.get("family")) if members[0].card else False
        curve = Curve(label + option, "model", ("model family " if family else "model ") + label
                      + f": .kae files as `kaec encode{option}` writes them", len(pixels),
                      settings={"rdo_sweeps": sweeps} if sweeps else {})
        for m in members:
            say(f"{m.name}{option} on {len(pixels):,} images")
            model_files(m, pixels[:1])  # first calls into torch are slow: keep them out of the timing
            clock = {}
            files, decoded = model_files(m, pixels, clock, sweeps)
            curve.points.append(score(pixels, files, decoded, "KAE", clock, m.name,
                                      m.card.get("quality") if m.card else None))
        curves.append(curve)
    result = RDResult(dataset, len(pixels), curves, method)
    compare(result)
    return result


def compare(result: RDResult) -> None:
    """Fill each model curve's `comparisons`: BD-rate / BD-PSNR against every lossy codec (anchor: the
    codec; negative BD-rate = the model needs fewer bytes), and for curves too short for BD, the codec's
    bytes at each model point's PSNR."""
    for model in result.model_curves():
        model.comparisons = []
        lossy = [p for p in model.points if not p.lossless]
        rates, psnrs = [p.bytes for p in lossy], [p.psnr for p in lossy]
        for codec in result.codec_curves():
            c_pts = [p for p in codec.points if not p.lossless]
            c_rates, c_psnrs = [p.bytes for p in c_pts], [p.psnr for p in c_pts]
            row = {"anchor": codec.name, "anchor_images": codec.images,
                   **bdrate.bd(c_rates, c_psnrs, rates, psnrs, result.method)}
            if len(bdrate.pareto(rates, psnrs)[0]) < bdrate.MIN_POINTS:
                row["at_same_psnr"] = []
                for p in lossy:
                    at = bdrate.rate_at_psnr(c_rates, c_psnrs, p.psnr)
                    row["at_same_psnr"].append({
                        "model": p.setting, "psnr": p.psnr, "bytes": p.bytes, "anchor_bytes": at["rate"],
                        "ratio": at["rate"] / p.bytes if at["rate"] else None, "anchor_nearest": at["nearest"]})
            model.comparisons.append(row)


# ---- output -----------------------------------------------------------------------------------------

def metric_descriptions() -> dict[str, str]:
    """What each key of a curve's `results` means (written into every `--json` curve)."""
    from kaecompress.evaluation.metrics import PSNR_CAP_DB, SSIM_DESCRIPTION

    return {
        "bytes": "mean size of the whole file a user would store, headers included",
        "payload_bytes": "mean size of the coded image without container overhead "
                         "(kaecompress.evaluation.rd.payload_bytes)",
        "bpp": "mean bits per pixel of the whole file",
        "psnr": f"mean of per-image PSNR (dB) on the decoded 8-bit pixels, peak 255; an image decoded exactly "
                f"counts as {PSNR_CAP_DB:g} dB (as libaom and libvpx report it); null for a lossless point",
        "ssim": SSIM_DESCRIPTION,
        "encoding_time": "seconds per image; classical codecs one image at a time, models in batches of 256 "
                         "tiles",
        "decoding_time": "seconds per image, as encoding_time",
    }


def to_json(result: RDResult) -> list[dict]:
    """One object per curve in CompressAI's results layout ({name, description, results: {key: [values]}}),
    with our keys beside theirs, and for models the comparisons against each codec."""
    out = []
    for c in result.curves:
        results = {
            "psnr": [None if p.lossless else p.psnr for p in c.points],
            "ssim": [p.ssim for p in c.points],
            "bpp": [p.bpp for p in c.points],
            "bytes": [p.bytes for p in c.points],
            "payload_bytes": [p.payload_bytes for p in c.points],
            "encoding_time": [p.encoding_time for p in c.points],
            "decoding_time": [p.decoding_time for p in c.points],
            "exact_images": [p.exact_images for p in c.points],
        }
        if c.kind == "codec":
            results["quality"] = [p.setting for p in c.points]
        else:
            results["model"] = [p.setting for p in c.points]
            results["quality"] = [p.quality for p in c.points]
        obj = {"name": c.name, "description": c.description, "kind": c.kind, "dataset": result.dataset,
               "images": c.images, "lossless": c.lossless, "settings": c.settings, "metrics": metric_descriptions(),
               "results": results}
        if c.kind == "model":
            obj["bd_method"] = bdrate.DESCRIPTION[result.method]
            obj["comparisons"] = c.comparisons
        out.append(obj)
    return out


MAX_JSON_BYTES = 16 << 20  # a `--json` file of every shipped family with --rdo is about 40 KB


def _number(value, key: str, minimum: float = -math.inf, allow_none: bool = False):
    if value is None and allow_none:
        return None
    try:  # a JSON integer of hundreds of digits does not fit a float
        number = None if isinstance(value, bool) or not isinstance(value, (int, float)) else float(value)
    except OverflowError:
        number = None
    if number is None or not math.isfinite(number) or number < minimum:
        wanted = f"finite numbers >= {minimum:g}" if minimum > -math.inf else "finite numbers"
        raise KaecError(f"results.{key}: expected {wanted}{' or null' if allow_none else ''}, got {value!r:.40}")
    return value


def _integer(value, key: str, minimum: int = 0, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value < 2**53:
        raise KaecError(f"{key}: expected integers from {minimum} to 2**53{' or null' if allow_none else ''}, "
                        f"got {value!r:.40}")
    return value


def _curve(o) -> Curve:
    """One curve of a `--json` file, every value checked for the type `to_json` writes (so printing,
    plotting and comparing it cannot fail half-way)."""
    if not isinstance(o, dict):
        raise KaecError(f"expected an object per curve, got {type(o).__name__}")
    kind = o.get("kind")
    if kind not in ("codec", "model"):
        raise KaecError(f"kind: expected codec or model, got {kind!r:.40}")
    for key in ("name", "description"):
        if not isinstance(o.get(key), str):
            raise KaecError(f"{key}: expected a string")
    images = _integer(o.get("images"), "images", 1)
    r = o.get("results")
    keys = ("psnr", "ssim", "bpp", "bytes", "payload_bytes", "encoding_time", "decoding_time", "exact_images",
            "quality") + (("model",) if kind == "model" else ())
    if not isinstance(r, dict) or not all(isinstance(r.get(k), list) for k in keys):
        raise KaecError(f"results: expected lists {', '.join(keys)}")
    if len({len(r[k]) for k in keys}) != 1 or not r["bytes"]:
        raise KaecError("results: expected lists of one and the same length, at least one value each")
    settings, extra = o.get("settings", {}), o.get("comparisons", [])
    if not isinstance(settings, dict) or not isinstance(extra, list):
        raise KaecError("settings, comparisons: expected an object and a list")
    points = []
    for i in range(len(r["bytes"])):
        if kind == "codec":
            setting, quality = _integer(r["quality"][i], "results.quality", allow_none=True), None
        else:
            setting, quality = r["model"][i], _integer(r["quality"][i], "results.quality", allow_none=True)
            if not isinstance(setting, str):
                raise KaecError(f"results.model: expected names, got {setting!r:.40}")
        psnr = _number(r["psnr"][i], "psnr", allow_none=True)
        points.append(Point(setting, _number(r["bytes"][i], "bytes", 0),
                            _number(r["payload_bytes"][i], "payload_bytes", 0), _number(r["bpp"][i], "bpp", 0),
                            math.inf if psnr is None else psnr,
                            _number(r["ssim"][i], "ssim"), _number(r["encoding_time"][i], "encoding_time", 0),
                            _number(r["decoding_time"][i], "decoding_time", 0),
                            _integer(r["exact_images"][i], "results.exact_images"), quality))
        if points[-1].bytes == 0:
            raise KaecError("results.bytes: expected sizes above 0 (a file holds bytes)")
    return Curve(o["name"], kind, o["description"], images, points, settings, extra)


def from_json(objs: list) -> RDResult:
    """The result that `to_json` wrote, e.g. to plot it again without measuring again. Its comparisons are
    computed again from its points: a file edited by hand cannot show figures its points do not give."""
    if not isinstance(objs, list) or not objs:
        raise KaecError("not a `kaec rd --json-file` file (expected a list of curves)")
    curves = []
    for i, o in enumerate(objs):
        try:
            curves.append(_curve(o))
        except KaecError as e:
            raise KaecError(f"not a `kaec rd --json-file` file (curve {i + 1}: {e})") from None
    if not isinstance(objs[0].get("dataset"), str):
        raise KaecError("not a `kaec rd --json-file` file (curve 1: dataset: expected a string)")
    method = next((m for o in objs for m, text in bdrate.DESCRIPTION.items() if o.get("bd_method") == text),
                  bdrate.METHOD)
    result = RDResult(objs[0]["dataset"], max(c.images for c in curves), curves, method)
    compare(result)
    return result


def load_json(path: Path) -> RDResult:
    from kaecompress.fileio import parse_json, read_regular

    data = read_regular(path, MAX_JSON_BYTES, "a `kaec rd --json-file` file")
    objs = parse_json(data, str(path))
    try:
        return from_json(objs)
    except KaecError as e:
        raise KaecError(f"{path}: {e}") from None


def write_json(result: RDResult, path: Path) -> None:
    from kaecompress.experiments.runs import atomic_write_json

    atomic_write_json(Path(path), to_json(result))


def write_json_dir(result: RDResult, folder: Path) -> list[Path]:
    """One file per curve, as CompressAI's own results folders hold them: NAME.json."""
    import re

    from kaecompress.experiments.runs import atomic_write_json

    folder = Path(folder)
    folder.mkdir(exist_ok=True)
    paths = []
    for obj in to_json(result):
        path = folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", Path(obj["name"]).name).strip("._") + ".json")
        atomic_write_json(path, obj)
        paths.append(path)
    return paths


def plot(result: RDResult, out: Path) -> Path:
    """PSNR and SSIM against bytes per image (log x): one curve per codec and model family, a marker per
    single model, PNG as a vertical line (lossless: no PSNR)."""
    from kaecompress.experiments.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in ((axes[0], "psnr", "mean PSNR (dB)"), (axes[1], "ssim", "mean SSIM (7x7 Gaussian)")):
        for c in result.curves:
            if c.lossless:
                for p in c.points:
                    ax.axvline(p.bytes, color="grey", ls=":", lw=1.2)
                    ax.annotate(f"{c.name} lossless {p.bytes:,.0f} B", (p.bytes, 0.02), rotation=90, fontsize=8,
                                xycoords=("data", "axes fraction"), xytext=(-6, 0), textcoords="offset points",
                                color="grey", ha="right", va="bottom")
                continue
            pts = [p for p in c.points if not p.lossless]
            xs, ys = [p.bytes for p in pts], [getattr(p, key) for p in pts]
            name = c.name + (f" (first {c.images:,} images)" if c.images != result.images else "")
            if c.kind == "model" and len(pts) == 1:
                ax.plot(xs, ys, marker="*", ms=14, ls="none", label=name)
            else:
                ax.plot(xs, ys, marker="o" if c.kind == "codec" else "s", ms=4, lw=1.5, label=name)
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        ticks = [t for t in (2, 3, 5, 10, 20, 30, 40, 60, 100, 150, 200, 300, 400, 600, 1000, 1500, 2000, 3000,
                             5000, 10000) if lo <= t <= hi]
        if len(ticks) >= 3:
            from matplotlib.ticker import NullFormatter

            ax.set_xticks(ticks, [f"{t:,}" for t in ticks])
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bytes per image (whole file)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{result.dataset}: {result.images:,} test images")
    try:
        return _save(fig, Path(out))
    finally:
        plt.close(fig)
