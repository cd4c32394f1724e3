"""Images to latents and back.

An image is split into planes and tiles the model can take:
- a 1-channel model encodes every channel of the image as its own grayscale plane (L: 1 plane, LA: 2,
  RGB: 3, RGBA: 4); a 3-channel model takes the RGB image as one plane;
- `fit="tile"` (default) cuts each plane into model-sized tiles, padding the right and bottom edges by
  repeating the last row and column, so decoding crops back to the original size;
- `fit="resize"` resizes the whole image to one tile (bilinear) and decoding resizes it back.
Images in mode 1 are encoded as L and thresholded back to 1; P, CMYK, YCbCr, LAB and HSV become RGB (RGBA
when a palette has transparency), I, I;16 and F become L; those decode in the mode they became.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kaecompress.codec.containers import MAX_PIXELS, Encoded, check_layout, check_pixels, check_tiles
from kaecompress.codec.domain import (DOMAIN_MARGIN_DB, SAMPLE_TILES, DomainCheck, calibration, domain_scores,
                                      image_check, top_scores)
from kaecompress.errors import KaecError

if TYPE_CHECKING:
    from kaecompress.codec.rangecoder import IntegerTables


class CodingModel(Protocol):
    """What a Codec reads of a model: a torch model (experiments.loading.LoadedModel) or a shipped model
    as the torch-free runtime holds it (runtime.shipped.ShippedModel)."""

    name: str
    weights_sha256: str
    card: dict
    config: dict
    dataset: str
    lmbda: float | None
    shape: tuple[int, int, int]
    latent_dim: int
    tables: IntegerTables | None   # a codec model's integer tables
    context: object | None         # and its context model (codec.context.LinearContext), if fitted

    def backend(self, kind: str, device: str, data_root=None):
        """An object with encode(tiles) -> latents and decode(latents) -> tiles, numpy float32."""


_BANDS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"}


def open_image(path: Path, max_pixels: int = MAX_PIXELS):
    """A fully decoded Pillow image; an unreadable or truncated file is a KaecError naming it, and so is one
    whose header claims more than `max_pixels` pixels (checked before its pixels are decoded)."""
    from PIL import Image, UnidentifiedImageError

    pillow_limit = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # our own limit replaces Pillow's warning and its traceback
        with Image.open(path) as im:
            check_pixels(im.width, im.height, str(path), max_pixels)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Pillow's notes on odd chunks or palettes; the pixels are what count
                im.load()  # decodes everything now, so a truncated file fails here
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise KaecError(f"{path}: unreadable image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = pillow_limit


def working_mode(im) -> str:
    if im.mode in _BANDS or im.mode == "1":
        return im.mode
    if im.mode == "P":
        return "RGBA" if "transparency" in im.info else "RGB"
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return "L"
    return "RGB"


def _bands_8bit(im, mode: str) -> np.ndarray | None:
    """(bands, H, W) uint8 of the image in `mode`: what `_as_array` gives, before its scaling to [0, 1]; None
    for the 16-bit and float modes, which `_as_array` scales by their own range."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return None
    if mode == "1":
        im = im.convert("L")
    elif im.mode != mode:
        im = im.convert(mode)
    arr = np.asarray(im)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _as_array(im, mode: str) -> np.ndarray:
    """(bands, H, W) float32 in [0, 1]."""
    if mode == "1":
        im = im.convert("L")
    elif im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if im.mode == "F" and arr.max() <= 1.0:
            peak = 1.0  # float images already in [0, 1]
        else:
            peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        band = np.clip(arr / peak, 0, 1).astype(np.float32)[None]
        return np.repeat(band, 3, axis=0) if mode == "RGB" else band
    elif im.mode != mode:
        im = im.convert(mode)
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


DEVICES = ("cpu", "cuda", "auto")
BACKENDS = ("auto", "torch", "onnx")


def check_backend(backend: str, device: str) -> None:
    """The option values, checked before torch or a model is loaded."""
    if backend not in BACKENDS:
        raise KaecError(f"--backend: expected auto, torch or onnx, got {backend!r}")
    if device not in DEVICES:
        raise KaecError(f"--device: expected {', '.join(DEVICES)}, got {device!r}")


@dataclass(frozen=True)
class Layout:
    """What reading a file needs to know of its model: from a loaded model, or from a shipped model's card
    before torch is loaded (so a bad file is refused without it)."""

    name: str
    weights_sha256: str
    codec_id: int | None
    channels: int
    tile: tuple[int, int]  # height, width
    latent_dim: int
    rate_model: bool       # has a probability model: reads .kae version 2

    @classmethod
    def of_card(cls, name: str, card: dict) -> Layout:
        model, codec = card["config"]["model"], card["config"].get("codec") or {}
        channels, height, width = (int(v) for v in model.get("shape", (1, 28, 28)))
        return cls(name, card["weights_sha256"], card.get("codec_id"), channels, (height, width),
                   int(model["latent_dim"]), codec.get("prior") == "factorized")

    def check_model(self, enc: Encoded, where: str) -> None:
        """A version-1 .kae or .npz must name this model (or none)."""
        ours = self.weights_sha256
        if enc.weights_sha256 and not ours.startswith(enc.weights_sha256):
            from kaecompress.zoo import find_by_hash

            match = find_by_hash(enc.weights_sha256)
            hint = (f"; it matches the trained model {match} (--model {match})" if match
                    else "; pass --model with the run folder or checkpoint that encoded it")
            raise KaecError(f"{where}: encoded with another model (id {enc.weights_sha256[:16]}) than "
                            f"{self.name} (id {ours[:16]}){hint}")

    def kae_header(self, data: bytes, where: str, max_pixels: int = MAX_PIXELS, checksum: bool = False):
        """A version-2 file's header as read and, with the sizes filled in, as decoded, once it is shown to
        be this model's, one image (mode, planes, grid, size and fit agreeing) and within the pixel limit;
        with `checksum`, the file's CRC is checked too (reading the payload checks it anyway)."""
        from kaecompress.codec import bitstream
        from kaecompress.zoo import by_codec_id

        header = bitstream.parse_header(data, where)
        if not self.rate_model or (header.codec_id is not None and header.codec_id != self.codec_id):
            made_by = by_codec_id(header.codec_id) if header.codec_id is not None else None
            raise KaecError(f"{where}: encoded with {made_by or 'another model'}"
                            f"{f' (codec id {header.codec_id})' if header.codec_id is not None else ''}, not with "
                            f"{self.name}" + (f"; use --model {made_by}" if made_by else ""))
        full = header.with_tile(self.tile)
        check_layout(where, mode=full.mode, fit=full.fit, width=full.width, height=full.height, grid=full.grid,
                     patch=self.tile, channels=self.channels)
        check_pixels(full.width, full.height, where, max_pixels)
        check_tiles(full.grid, self.tile, where, max_pixels)
        if checksum:
            bitstream.check_sum(data, header, self.weights_sha256, where)
        return header, full


class Codec:
    """compress: Pillow images -> Encoded latents; decompress: Encoded -> Pillow images.
    Tiles of many images go through the network together, `batch_size` at a time."""

    def __init__(self, loaded: CodingModel, backend="auto", batch_size: int = 256, data_root=None,
                 device: str = "cpu", rdo_sweeps: int = 0) -> None:
        """`backend`: auto, torch or onnx (what `loaded.backend` makes of it), or a backend object."""
        self.loaded = loaded
        self.rdo_sweeps = rdo_sweeps  # passes of rdo.refine over a codec model's latents (0: plain rounding)
        self.rdo_progress = None      # called (done, total) while it searches
        self.channels, self.height, self.width = loaded.shape
        self.latent_dim = loaded.latent_dim
        if isinstance(backend, str):
            check_backend(backend, device)
            backend = loaded.backend(backend, device, data_root)
        self.backend = backend
        self.batch_size = batch_size
        self.tables = loaded.tables    # a codec model's integer tables
        self.context = loaded.context  # and its context model, if fitted
        self.layout = Layout(loaded.name, loaded.weights_sha256, loaded.card.get("codec_id"), self.channels,
                             (self.height, self.width), self.latent_dim, self.tables is not None)
        self.domain = calibration(loaded.card.get("domain"), loaded.name, self.latent_dim, self.tables)
        self.domain_checks: list = []

    @property
    def rate_model(self) -> bool:
        """A codec model: its latents are integers, entropy-coded into .kae version 2 files."""
        return self.tables is not None

    # -- compress --
    def _planes(self, im, fit: str) -> tuple[np.ndarray, str]:
        """(planes, model channels, H, W) float32 and the mode decoding restores."""
        mode = "RGB" if self.channels == 3 else working_mode(im)
        arr = _as_array(im, mode)
        if fit == "resize":
            arr = np.stack([_resize(band, self.width, self.height) for band in arr])
        return (arr[None] if self.channels == 3 else arr[:, None]), mode

    def _tiles(self, planes: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int]]:
        p, c, h, w = planes.shape
        ty, tx = math.ceil(h / self.height), math.ceil(w / self.width)
        padded = np.pad(planes, ((0, 0), (0, 0), (0, ty * self.height - h), (0, tx * self.width - w)), mode="edge")
        tiles = padded.reshape(p, c, ty, self.height, tx, self.width).transpose(0, 2, 4, 1, 3, 5)
        return np.ascontiguousarray(tiles.reshape(-1, c, self.height, self.width)), (p, ty, tx)

    def _run(self, fn, batch: np.ndarray) -> np.ndarray:
        if len(batch) == 0:
            return batch
        return np.concatenate([fn(batch[i:i + self.batch_size]) for i in range(0, len(batch), self.batch_size)])

    def compress_many(self, images: Sequence, fit: str = "tile", check_domain: bool = False) -> list[Encoded]:
        """With `check_domain`, `self.domain_checks` holds a DomainCheck per image: with a calibrated card every
        tile of every image is scored; without, a sample of tiles is decoded again and compared with the card's
        PSNR (None for an image left out of the sample or a model without a card figure).
        Small images go through the network together; an image of more than STRIP_TILES tiles' pixels is
        encoded alone, a strip at a time, so it costs about its own 8-bit size (containers.PEAK_MB)."""
        if fit not in ("tile", "resize"):
            raise KaecError(f"--fit: expected tile or resize, got {fit!r}")
        if images and self.channels not in (1, 3):
            raise KaecError(f"{self.loaded.name}: images need a 1- or 3-channel model")
        large = {i for i, im in enumerate(images) if im.width * im.height > STRIP_TILES * self.height * self.width}
        small = [i for i in range(len(images)) if i not in large]
        out, checks = [None] * len(images), [None] * len(images)
        if small:
            encoded, small_checks = self._compress_together([images[i] for i in small], fit, check_domain)
            for i, enc, check in zip(small, encoded, small_checks or [None] * len(small)):
                out[i], checks[i] = enc, check
        for i in sorted(large):
            out[i], checks[i] = self._compress_in_strips(images[i], fit, check_domain)
        self.domain_checks = checks if check_domain else []
        return out

    def _compress_together(self, images: Sequence, fit: str, check_domain: bool) -> tuple[list[Encoded], list]:
        tiles, grids, info = [], [], []
        for im in images:
            planes, mode = self._planes(im, fit)
            t, grid = self._tiles(planes)
            tiles.append(t)
            grids.append(grid)
            info.append((im.width, im.height, mode))
        all_tiles = np.concatenate(tiles).astype(np.float32)
        latents = self._encode_tiles(all_tiles)
        checks = self._check_domain(all_tiles, latents, [len(t) for t in tiles]) if check_domain else []
        out, start = [], 0
        for (width, height, mode), grid in zip(info, grids):
            count = int(np.prod(grid))
            z = latents[start:start + count].reshape(*grid, self.latent_dim).astype(np.float32)
            start += count
            out.append(Encoded(z, width, height, mode, fit, self.loaded.name, self.loaded.weights_sha256))
        return out, checks

    def _compress_in_strips(self, im, fit: str, check_domain: bool) -> tuple[Encoded, DomainCheck | None]:
        """One large image: the same latents as `_compress_together` gives it, built STRIP_TILES tiles at a
        time from its 8-bit pixels; the domain check samples the same highest-contrast tiles."""
        mode = "RGB" if self.channels == 3 else working_mode(im)
        source = _bands_8bit(im, mode)
        if source is None:  # 16-bit and float images: scaled as a whole (one band)
            source = _as_array(im, mode)
        c, h, w, dim = self.channels, self.height, self.width, self.latent_dim
        planes = [slice(0, 3)] if c == 3 else [slice(b, b + 1) for b in range(len(source))]

        def floats(bands: slice, rows: slice, cols: slice) -> np.ndarray:
            x = source[bands, rows, cols]
            if x.dtype != np.uint8:
                return x.astype(np.float32)
            x = x.astype(np.float32)
            x /= 255.0  # in place: one float copy of a whole band (resize), not two
            return x

        if fit == "resize":
            bands = [_resize(floats(slice(b, b + 1), slice(None), slice(None))[0], w, h) for b in range(len(source))]
            tiles = np.ascontiguousarray(np.stack(bands)[None] if c == 3 else np.stack(bands)[:, None])
            grid = (len(tiles), 1, 1)
            latents = self._encode_tiles(tiles)
            check = self._check_domain(tiles, latents, [len(tiles)])[0] if check_domain else None
            z = latents.reshape(*grid, dim).astype(np.float32)
            return Encoded(z, im.width, im.height, mode, fit, self.loaded.name, self.loaded.weights_sha256), check
        ty, tx = math.ceil(im.height / h), math.ceil(im.width / w)
        z = np.empty((len(planes), ty, tx, dim), np.float32)
        sample = None  # the image's highest-contrast tiles so far: (contrast, index, tiles, latents)
        top = None  # calibrated check: the image's highest tile scores so far
        for p, bands in enumerate(planes):
            for r, nr, q, nc in _blocks(ty, tx):
                block = floats(bands, slice(r * h, (r + nr) * h), slice(q * w, (q + nc) * w))
                block = np.pad(block, ((0, 0), (0, nr * h - block.shape[1]), (0, nc * w - block.shape[2])),
                               mode="edge")  # as the whole image is padded: its last row and column repeated
                tiles = np.ascontiguousarray(block.reshape(c, nr, h, nc, w).transpose(1, 3, 0, 2, 4)
                                             .reshape(nr * nc, c, h, w))
                latents = self._encode_tiles(tiles)
                z[p, r:r + nr, q:q + nc] = latents.reshape(nr, nc, dim)
                if check_domain and self.domain is not None:
                    top = top_scores(domain_scores(tiles, latents, self.domain, self.tables, self.context), top)
                elif check_domain:
                    index = (p * ty * tx + (r + np.arange(nr))[:, None] * tx + q + np.arange(nc)[None]).reshape(-1)
                    found = (tiles.reshape(len(tiles), -1).var(1), index, tiles, latents)
                    if sample is not None:
                        found = tuple(np.concatenate([a, b]) for a, b in zip(sample, found))
                    keep = np.lexsort((found[1], -found[0]))[:SAMPLE_TILES]
                    sample = tuple(a[np.sort(keep)] for a in found)
        check = None
        if check_domain and self.domain is not None:
            check = image_check(top, self.domain)
        elif check_domain:  # sorted by index: `_check_domain` picks these same tiles among them
            order = np.argsort(sample[1])
            check = self._check_domain(sample[2][order], sample[3][order], [len(order)])[0]
        return Encoded(z, im.width, im.height, mode, fit, self.loaded.name, self.loaded.weights_sha256), check

    def _encode_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """The latents of `tiles`: integers for a codec model, which stores and decodes them."""
        latents = self._run(self.backend.encode, tiles)
        return self._integers(latents, tiles) if self.rate_model else latents

    def _integers(self, latents: np.ndarray, tiles: np.ndarray) -> np.ndarray:
        if not self.rdo_sweeps:
            return np.rint(latents)
        from kaecompress.codec import rdo

        return rdo.refine(latents, tiles, lambda z: self._run(self.backend.decode, z), self.tables, self.context,
                          float(self.loaded.lmbda or 0), self.rdo_sweeps, self.rdo_progress).astype(np.float32)

    def _check_domain(self, tiles: np.ndarray, latents: np.ndarray, counts: list[int]) -> list:
        """A DomainCheck per image (`counts`: its tiles, in order): calibrated, or the PSNR fallback."""
        if self.domain is None:
            return self._check_psnr(tiles, latents, counts)
        scores = domain_scores(tiles, latents, self.domain, self.tables, self.context)
        ends = np.cumsum(counts)
        starts = ends - np.asarray(counts)
        checks = [None] * len(counts)
        single = np.flatnonzero(np.asarray(counts) == 1)  # one-tile images (a folder of digits): at once
        if len(single):
            names = list(scores)
            limits = np.array([float(self.domain["statistics"][k]["threshold"]) for k in names])
            values = np.stack([scores[k][starts[single]] for k in names], axis=1)
            pick = (values / np.maximum(limits, 1e-9)).argmax(axis=1)  # as image_check: the first furthest
            for i, j, v in zip(single, pick, values[np.arange(len(single)), pick]):
                checks[i] = DomainCheck(names[j], float(v), float(limits[j]), 1)
        for i, (start, end) in enumerate(zip(starts, ends)):
            if checks[i] is None:
                checks[i] = image_check(top_scores({k: v[start:end] for k, v in scores.items()}), self.domain)
        return checks

    def _check_psnr(self, tiles: np.ndarray, latents: np.ndarray, counts: list[int]) -> list:
        """Decode each image's highest-contrast tiles (SAMPLE_TILES per image at most; per call 16 or 1 in 64
        of all tiles, whichever is more) and compare their PSNR with the model card's."""
        reference = self.loaded.card.get("metrics", {}).get("psnr_db")
        if not isinstance(reference, (int, float)) or not counts:
            return [None] * len(counts)
        budget = max(2 * SAMPLE_TILES, sum(counts) // 64)
        per_image = [min(n, SAMPLE_TILES) for n in counts]
        chosen = list(range(len(counts)))
        if sum(per_image) > budget:  # many images: the largest first, then evenly spaced ones
            step = max(1, math.ceil(len(counts) / budget))
            keep, used = [], 0
            for i in sorted(chosen, key=lambda i: (-per_image[i], i % step, i)):
                if used + per_image[i] <= budget:
                    keep.append(i)
                    used += per_image[i]
            chosen = sorted(keep)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        picks = {}
        for i in chosen:
            contrast = tiles[starts[i]:starts[i] + counts[i]].reshape(counts[i], -1).var(1)
            picks[i] = starts[i] + np.sort(np.argsort(-contrast, kind="stable")[:per_image[i]])
        if not picks:
            return [None] * len(counts)
        index = np.concatenate(list(picks.values()))
        recon = np.clip(self._run(self.backend.decode, np.ascontiguousarray(latents[index])), 0.0, 1.0)
        errors = ((recon - tiles[index]) ** 2).reshape(len(index), -1).mean(1)
        checks, at = [None] * len(counts), 0
        for i, rows in picks.items():
            mse = float(errors[at:at + len(rows)].mean())
            at += len(rows)
            checks[i] = DomainCheck("psnr_db", 10 * math.log10(1 / max(mse, 1e-10)),
                                    float(reference) - DOMAIN_MARGIN_DB, len(rows))
        return checks

    def compress(self, image, fit: str = "tile") -> Encoded:
        return self.compress_many([image], fit)[0]

    def to_kae(self, enc: Encoded) -> bytes:
        """A codec model's .kae (version 2) file for one image: the latent integers, entropy-coded."""
        return self.to_kae_many([enc])[0]

    def to_kae_many(self, encoded: Sequence[Encoded]) -> list[bytes]:
        """The .kae (version 2) file of each image; a context model's residuals are computed for all their
        tiles at once."""
        from kaecompress.codec import bitstream

        symbols = [enc.latents.astype(np.int64) for enc in encoded]
        if self.context is not None and symbols:  # what is coded is each latent's residual
            symbols = self._all_at_once(self.context.residuals, symbols)
        sha, codec_id, tile = self.loaded.weights_sha256, self.loaded.card.get("codec_id"), (self.height, self.width)
        files = [None] * len(encoded)
        tiles = [i for i, enc in enumerate(encoded) if bitstream.one_tile(enc.grid, width=enc.width, height=enc.height,
                                                                          mode=enc.mode, fit=enc.fit, tile=tile)]
        if tiles:  # the batch API: the same bytes, a fraction of the cost per file
            rows = np.stack([symbols[i].reshape(-1) for i in tiles])
            for i, data in zip(tiles, bitstream.write_tiles(rows, tables=self.tables, weights_sha256=sha,
                                                            codec_id=codec_id, tile=tile)):
                files[i] = data
        for i, (s, enc) in enumerate(zip(symbols, encoded)):
            if files[i] is None:
                files[i] = bitstream.write(s, width=enc.width, height=enc.height, mode=enc.mode, fit=enc.fit,
                                           tables=self.tables, weights_sha256=sha, codec_id=codec_id, tile=tile)
        return files

    # -- decompress --
    def from_kae(self, data: bytes, where: str, max_pixels: int = MAX_PIXELS) -> Encoded:
        """A .kae version 2 file back to latents, once its header, size and checksum are shown sound."""
        return self.from_kae_many([data], [where], max_pixels)[0]

    def from_kae_many(self, files: Sequence[bytes], names: Sequence[str],
                      max_pixels: int = MAX_PIXELS) -> list[Encoded]:
        """Many .kae version 2 files back to latents, as `from_kae` reads each; a context model restores the
        latents of all their tiles at once (far cheaper than file by file)."""
        from kaecompress.codec import bitstream

        headers = [self.layout.kae_header(data, where, max_pixels) for data, where in zip(files, names)]
        symbols = [None] * len(files)
        compact = [i for i, (header, _) in enumerate(headers) if header.compact]  # one tile each
        if compact:  # the batch API, as read_payload checks each
            rows = bitstream.read_tiles([files[i] for i in compact], tables=self.tables,
                                        weights_sha256=self.loaded.weights_sha256, tile=(self.height, self.width),
                                        names=[names[i] for i in compact])[1]
            for i, row in zip(compact, rows):
                symbols[i] = row.reshape(1, 1, 1, -1)
        for i, (data, where) in enumerate(zip(files, names)):
            if symbols[i] is None:
                symbols[i] = bitstream.read_payload(data, headers[i][0], self.tables, self.loaded.weights_sha256,
                                                    (self.height, self.width), where)
        if self.context is not None and symbols:
            try:
                symbols = self._all_at_once(self.context.restore, symbols)
            except KaecError:  # a crafted file: find it, to name it
                for s, where in zip(symbols, names):
                    self.context.restore(s.reshape(-1, self.latent_dim), where)
                raise
        return [Encoded(s.astype(np.float32), full.width, full.height, full.mode, full.fit, self.loaded.name,
                        self.loaded.weights_sha256) for s, (_, full) in zip(symbols, headers)]

    def _all_at_once(self, fn, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """`fn` (latent vectors (N, D) -> (N, D)) applied to the vectors of all `arrays` in one call, the
        result cut back into their shapes."""
        flat = fn(np.concatenate([a.reshape(-1, self.latent_dim) for a in arrays]))
        starts = np.cumsum([0] + [a.size // self.latent_dim for a in arrays])
        return [flat[a:b].reshape(x.shape) for x, a, b in zip(arrays, starts[:-1], starts[1:])]

    def check_model(self, enc: Encoded, where: str) -> None:
        self.layout.check_model(enc, where)

    def decompress_many(self, encoded: Sequence[Encoded]) -> list:
        """Pillow images from latents. The tiles of small images go through the network together (up to
        STRIP_TILES at a time); a larger image is decoded a strip at a time straight into 8-bit planes, so
        it costs about its own 8-bit size rather than several float copies (containers.PEAK_MB)."""
        for enc in encoded:  # what the pixels become must agree with the mode, whoever made `enc`
            check_layout("latents", mode=enc.mode, fit=enc.fit, width=enc.width, height=enc.height, grid=enc.grid,
                         patch=(self.height, self.width), channels=self.channels)
        images: list = [None] * len(encoded)
        group: list[int] = []
        group_tiles = 0
        for i in range(len(encoded) + 1):
            tiles = encoded[i].latents.size // self.latent_dim if i < len(encoded) else 0
            if group and (i == len(encoded) or group_tiles + tiles > STRIP_TILES):
                self._decode_together(encoded, group, images)
                group, group_tiles = [], 0
            if i == len(encoded):
                break
            if tiles > STRIP_TILES:
                images[i] = self._image(encoded[i], self._strip_decoder(encoded[i]))
            else:
                group.append(i)
                group_tiles += tiles
        return images

    def decompress(self, enc: Encoded):
        return self.decompress_many([enc])[0]

    def _decode_together(self, encoded: Sequence[Encoded], group: list[int], images: list) -> None:
        latents = [encoded[i].latents.reshape(-1, self.latent_dim) for i in group]
        tiles = self._run(self.backend.decode, np.concatenate(latents).astype(np.float32))
        start = 0
        for i, z in zip(group, latents):
            p, ty, tx = encoded[i].grid
            mine = tiles[start:start + len(z)].reshape(p, ty, tx, *tiles.shape[1:])
            images[i] = self._image(encoded[i], lambda plane, rows, cols, mine=mine: mine[plane, rows, cols])
            start += len(z)

    def _strip_decoder(self, enc: Encoded):
        def tiles_of(plane: int, rows: slice, cols: slice) -> np.ndarray:
            z = np.ascontiguousarray(enc.latents[plane, rows, cols], dtype=np.float32)
            out = self._run(self.backend.decode, z.reshape(-1, self.latent_dim))
            return out.reshape(*z.shape[:2], *out.shape[1:])
        return tiles_of

    def _image(self, enc: Encoded, tiles_of):
        """One image from `tiles_of(plane, rows, cols)`, the decoded tiles (rows, cols, channels, H, W) of a
        block of its grid, fetched STRIP_TILES at most at a time."""
        from PIL import Image

        p, ty, tx = enc.grid
        c, h, w = self.channels, self.height, self.width
        pixels = np.empty((enc.height, enc.width, p * c), np.uint8)  # interleaved, as Pillow holds them
        for plane in range(p):
            out = pixels[:, :, plane * c:(plane + 1) * c].transpose(2, 0, 1)
            if enc.fit == "resize":
                tile = tiles_of(plane, slice(0, 1), slice(0, 1))[0, 0]
                for j in range(c):  # read back from Pillow a strip at a time: one float copy of the band
                    band = _resized(tile[j], enc.width, enc.height)
                    for y in range(0, enc.height, STRIP_ROWS):
                        strip = band.crop((0, y, enc.width, min(y + STRIP_ROWS, enc.height)))
                        _to_8bit(np.asarray(strip), out[j, y:y + STRIP_ROWS])
                    del band
                continue
            for r, nr, q, nc in _blocks(ty, tx):
                block = tiles_of(plane, slice(r, r + nr), slice(q, q + nc))
                strip = block.transpose(2, 0, 3, 1, 4).reshape(c, nr * h, nc * w)
                y0, x0 = r * h, q * w
                y1, x1 = min(y0 + nr * h, enc.height), min(x0 + nc * w, enc.width)
                _to_8bit(strip[:, :y1 - y0, :x1 - x0], out[:, y0:y1, x0:x1])
        im = Image.fromarray(pixels[:, :, 0] if p * c == 1 else pixels)  # L, LA, RGB or RGBA by its bands
        return im.convert("1", dither=Image.Dither.NONE) if enc.mode == "1" else im


STRIP_TILES = 4096  # tiles decoded at once: about 13 MB of float pixels a channel
STRIP_ROWS = 256    # rows of a resized float band turned into 8 bits at once


def _blocks(ty: int, tx: int):
    """(row, rows, column, columns) of the blocks of a ty x tx tile grid, each at most STRIP_TILES tiles: whole
    rows of tiles where a row fits, else pieces of one row."""
    rows_per, cols_per = max(1, STRIP_TILES // tx), min(tx, STRIP_TILES)
    for r in range(0, ty, rows_per):
        for q in range(0, tx, cols_per):
            yield r, min(rows_per, ty - r), q, min(cols_per, tx - q)


def _to_8bit(values: np.ndarray, out: np.ndarray) -> None:
    with np.errstate(over="ignore", invalid="ignore"):  # a decoder fed extreme latents may give inf or NaN
        scaled = np.rint(values * 255.0)
    out[...] = np.clip(np.nan_to_num(scaled, nan=0.0, copy=False), 0, 255)


def _resize(band: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear resize of one float plane, without a round trip through 8 bits."""
    return np.asarray(_resized(band, width, height))


def _resized(band: np.ndarray, width: int, height: int):
    """The same as a Pillow image (mode F)."""
    from PIL import Image

    band = Image.fromarray(np.ascontiguousarray(band, np.float32), "F")
    return band.resize((width, height), Image.Resampling.BILINEAR)
