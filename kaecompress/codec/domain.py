"""Whether an image is of the kind a model was made for: 28x28 grey digits, clothing, or the images of a
folder dataset. A card's "domain" entry calibrates it (benchmarks/domain_check.py --write-cards); the
Codec scores tiles while it encodes them and refuses or warns through the CLI."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from kaecompress.errors import KaecError

# Out-of-domain check. A card with a "domain" entry (benchmarks/domain_check.py --write-cards; figures in
# docs/results/domain_check.json) is calibrated: every tile is scored while encoding, with no decoding, on
# several statistics, and an image is outside when, on any of them, the mean of its TOP_TILES highest tile
# scores exceeds the card's threshold (the highest of the model's 10,000 test images plus a margin):
# - bits: what a codec model's tables charge a tile (context residuals included): odd tiles land in thin
#   tails or escape. z2 (plain models, no tables): the latents' mean squared z-score against the model's own
#   test latents. The encoder squashes many odd inputs into ordinary latents, so this alone misses some;
# - pixels: border (the mean of the tile's outer 2-pixel frame), grey (its share of pixels strictly between
#   0.1 and 0.9), corner (the mean of its darkest 4x4 corner) and fill (its share of pixels of 0.02 or more).
#   Both datasets are centred objects on a black background; photographs, noise, flat and gradient images
#   and text on white are not (fill is what catches 28x28 photograph crops under the Fashion-MNIST models).
# PSNR cannot separate them (fashion-q9 gives a photograph 20.4 dB and some of its own test images 18.9 dB)
# and costs decoding. A card without the entry gets the old sampled-PSNR check, as a warning only (on its
# 10,000 test digits mnist-kae-dec3's worst digit is 7.2 dB below the card's mean).
DOMAIN_MARGIN_DB = 7.5
SAMPLE_TILES = 8  # PSNR check: per image; per call at least 16, or 1 in 64 of all tiles
TOP_TILES = 8     # calibrated check: an image's value on a statistic is the mean of its highest tile scores
DOMAINS = {"mnist": "28x28 handwritten digits (MNIST)", "fashion-mnist": "28x28 clothing images (Fashion-MNIST)"}
STATISTICS = {"bits": "bits per tile", "z2": "latent z-score^2 per tile", "border": "mean edge brightness",
              "grey": "share of grey pixels", "corner": "darkest corner's brightness",
              "fill": "share of non-black pixels", "psnr_db": "dB sampled PSNR"}


@dataclass
class DomainCheck:
    """How one image compares with the model's own test images, on the statistic furthest from them."""

    statistic: str    # a key of STATISTICS; psnr_db (the uncalibrated fallback): lower is further out
    value: float      # the image's measure
    threshold: float  # the card's threshold (psnr_db: the card's mean PSNR less DOMAIN_MARGIN_DB)
    tiles: int        # tiles the value is the mean of

    @property
    def calibrated(self) -> bool:
        """Calibrated checks refuse; the PSNR fallback only warns."""
        return self.statistic != "psnr_db"

    @property
    def outside(self) -> bool:
        return self.value < self.threshold if self.statistic == "psnr_db" else self.value > self.threshold

    def describe(self) -> str:
        if self.statistic == "psnr_db":
            return f"{self.value:.1f} dB on {self.tiles} sampled tile{'s' if self.tiles > 1 else ''} (warns below " \
                   f"{self.threshold:.1f} dB)"
        digits = 1 if self.statistic in ("bits", "z2") else 3
        return f"{STATISTICS[self.statistic]} {self.value:,.{digits}f} over its top {self.tiles} tile" \
               f"{'s' if self.tiles > 1 else ''} (limit {self.threshold:,.{digits}f})"


def domain_scores(tiles: np.ndarray, latents: np.ndarray, calibration: dict, tables, context) -> dict:
    """Each tile's score (float64 (N,)) on each statistic of a card's "domain" entry."""
    out = {}
    flat = tiles.reshape(len(tiles), -1)
    for name in calibration["statistics"]:
        if name == "bits":
            from kaecompress.codec import rangecoder

            symbols = np.rint(latents).astype(np.int64)
            if context is not None:
                symbols = context.residuals(symbols)
            out[name] = rangecoder.symbol_bits(symbols, tables).sum(axis=1)
        elif name == "z2":
            mean, std = (np.asarray(calibration[k], np.float64) for k in ("mean", "std"))
            out[name] = (((latents.astype(np.float64) - mean) / std) ** 2).mean(axis=1)
        elif name == "border":
            frame = np.ones(tiles.shape[-2:], bool)
            frame[2:-2, 2:-2] = False
            out[name] = tiles[..., frame].reshape(len(tiles), -1).mean(axis=1, dtype=np.float64)
        elif name == "grey":
            out[name] = ((flat > 0.1) & (flat < 0.9)).mean(axis=1, dtype=np.float64)
        elif name == "corner":
            corners = [tiles[..., rows, cols] for rows in (slice(0, 4), slice(-4, None))
                       for cols in (slice(0, 4), slice(-4, None))]
            out[name] = np.stack([c.reshape(len(tiles), -1).mean(axis=1, dtype=np.float64) for c in corners]).min(0)
        else:  # fill
            out[name] = (flat >= 0.02).mean(axis=1, dtype=np.float64)
    return out


def top_scores(scores: dict, top: dict | None = None) -> dict:
    """The TOP_TILES highest scores per statistic, of `scores` and of what `top` already holds."""
    return {k: np.sort(np.concatenate([top[k], v]) if top else v)[::-1][:TOP_TILES] for k, v in scores.items()}


def image_check(top: dict, calibration: dict) -> DomainCheck:
    """An image's check from its top tile scores: the statistic furthest over (or nearest to) its limit."""
    checks = []
    for name, values in top.items():
        threshold = float(calibration["statistics"][name]["threshold"])
        value = float(np.sort(values)[::-1].mean())  # one summing order, however the tiles came
        checks.append((value / max(threshold, 1e-9), DomainCheck(name, value, threshold, len(values))))
    return max(checks, key=lambda c: c[0])[1]


def domain_of(loaded) -> str:
    dataset = loaded.dataset
    return DOMAINS.get(dataset, f"images like those of {dataset.removeprefix('folder:')}")


def calibration(entry, name: str, latent_dim: int, tables) -> dict | None:
    """A card's "domain" entry, checked (a bad one is refused, not skipped: it is what refuses images)."""
    if entry is None:
        return None
    stats = entry.get("statistics") if isinstance(entry, dict) else None
    ok = isinstance(stats, dict) and bool(stats) and all(
        k in STATISTICS and k != "psnr_db" and isinstance(v, dict) and isinstance(v.get("threshold"), (int, float))
        and math.isfinite(v["threshold"]) for k, v in stats.items())
    if ok and "bits" in stats:
        ok = tables is not None
    if ok and "z2" in stats:
        mean, std = (np.asarray(entry.get(k, ()), np.float64) for k in ("mean", "std"))
        ok = mean.shape == std.shape == (latent_dim,) and np.isfinite(mean).all() and (std > 0).all()
    if not ok:
        raise KaecError(f"{name}: its card's \"domain\" entry is malformed")
    return entry
