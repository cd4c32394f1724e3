"""Reconstruction quality, numpy only: PSNR of an MSE of values in [0, 1]; per-image PSNR and SSIM of
8-bit pixels."""

from __future__ import annotations

import math

import numpy as np


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for values in [0, 1]."""
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# Per-image PSNR of an exact reconstruction is infinite; codec tools (libaom, libvpx) report 100 dB instead,
# which keeps a mean finite. Many exact images still lift a mean: callers report how many there were.
PSNR_CAP_DB = 100.0


def psnr_8bit(reference: np.ndarray, decoded: np.ndarray, cap: float | None = PSNR_CAP_DB) -> np.ndarray:
    """PSNR in dB of each image of a batch of 8-bit images (N, H, W) or (N, H, W, C), peak 255.
    An exact image gets `cap` (None: infinity)."""
    ref, dec = _batch(reference, decoded)
    mse = ((ref - dec) ** 2).reshape(len(ref), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        out = 10 * np.log10(255.0 ** 2 / mse)
    return np.where(mse == 0, np.inf if cap is None else cap, out)


SSIM_WINDOW = 7       # 28x28 digits are too small for the usual 11x11 window
SSIM_SIGMA = 1.5
SSIM_K = (0.01, 0.03)
SSIM_DESCRIPTION = (f"SSIM (Wang et al. 2004) on 8-bit pixels, peak 255: {SSIM_WINDOW}x{SSIM_WINDOW} Gaussian window, "
                    f"sigma {SSIM_SIGMA}, K1 {SSIM_K[0]}, K2 {SSIM_K[1]}, population (co)variances, mean over the "
                    "window positions inside the image (no padding), channels averaged; kaecompress.evaluation.metrics.ssim")


def _gaussian(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _filter(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Weighted sums of every k x k window inside (N, H, W, C) images: the separable Gaussian, no padding."""
    k = len(g)
    rows = np.lib.stride_tricks.sliding_window_view(x, k, axis=1) @ g         # (N, H-k+1, W, C)
    return np.lib.stride_tricks.sliding_window_view(rows, k, axis=2) @ g      # (N, H-k+1, W-k+1, C)


def ssim(reference: np.ndarray, decoded: np.ndarray, window: int = SSIM_WINDOW,
         sigma: float = SSIM_SIGMA) -> np.ndarray:
    """SSIM of each image of a batch of 8-bit images (N, H, W) or (N, H, W, C); see SSIM_DESCRIPTION."""
    ref, dec = _batch(reference, decoded)
    if ref.ndim == 3:
        ref, dec = ref[..., None], dec[..., None]
    if min(ref.shape[1:3]) < window:
        raise ValueError(f"SSIM needs images of at least {window}x{window} pixels, got {ref.shape[2]}x{ref.shape[1]}")
    g = _gaussian(window, sigma)
    step = max(1, 2 ** 20 // ref[0].size)  # about 50 MB of temporaries per chunk
    return np.concatenate([_ssim_map_mean(ref[i:i + step], dec[i:i + step], g) for i in range(0, len(ref), step)])


def _ssim_map_mean(ref: np.ndarray, dec: np.ndarray, g: np.ndarray) -> np.ndarray:
    c1, c2 = (SSIM_K[0] * 255) ** 2, (SSIM_K[1] * 255) ** 2
    mu_x, mu_y = _filter(ref, g), _filter(dec, g)
    var_x = _filter(ref * ref, g) - mu_x ** 2
    var_y = _filter(dec * dec, g) - mu_y ** 2
    cov = _filter(ref * dec, g) - mu_x * mu_y
    smap = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return smap.reshape(len(ref), -1).mean(axis=1)


def _batch(reference: np.ndarray, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref, dec = np.asarray(reference, np.float64), np.asarray(decoded, np.float64)
    if ref.shape != dec.shape or ref.ndim not in (3, 4):
        raise ValueError(f"expected two batches of images of one shape (N, H, W[, C]), got {ref.shape} and {dec.shape}")
    return ref, dec
