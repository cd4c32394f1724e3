"""What a model gives on a set of images: its reconstruction error, and for a rate-trained model the
whole-file bytes and 8-bit PSNR of the files it writes."""

from __future__ import annotations

import math

import numpy as np
import torch

@torch.no_grad()
def reconstruction_metrics(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> dict:
    """`mse`: mean over every pixel; `psnr_db`: mean of the per-image PSNRs; `psnr_of_mse_db`: PSNR of
    the mean MSE. Reconstructions are clamped to [0, 1], as a decoded image is."""
    model.eval()
    per_image = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        y = model(x).clamp(0, 1)
        per_image.append(((y - x) ** 2).flatten(1).mean(1).double())
    errors = torch.cat(per_image)
    mse = errors.mean().item()
    return {"mse": mse, "psnr_db": sum(_psnr(e) for e in errors.tolist()) / len(errors),
            "psnr_of_mse_db": _psnr(mse)}


def _psnr(mse: float) -> float:
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


# The shipped-model header case: a codec model named by its one-byte id (see docs/kae-format.md).
SHIPPED_ID = 1


def psnr_8bit(decoded: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 images (n, ...) against their uint8 references."""
    err = (decoded.astype(np.float64) - reference.astype(np.float64)) ** 2
    mse = err.reshape(len(err), -1).mean(axis=1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0 ** 2 / mse)


def to_pixels(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """[0, 1] floats -> the uint8 pixels a decoded image holds."""
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


@torch.no_grad()
def measure(model, images: torch.Tensor, batch_size: int = 1000) -> dict:
    """Code every image (one model-sized tile each) into the `.kae` file a shipped codec model writes;
    return the mean whole-file and payload (coded latents alone) bytes, the ideal information content and
    the mean PSNR of the decoded 8-bit pixels. `model.prior` must have its integer tables (`freeze()`), and
    codes through its context model where it has one."""
    from kaecompress.codec import bitstream, rangecoder
    from kaecompress.nn.models import weights_sha256

    model.eval()
    tables = model.prior.tables()
    context = model.prior.context()
    sha = weights_sha256(model)
    _, height, width = model.shape
    sizes, ideal, psnrs = [], 0.0, []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size]
        q = torch.round(model.encoder(x))
        decoded = to_pixels(model.decoder(q).clamp(0, 1))
        psnrs.append(psnr_8bit(decoded, to_pixels(x)))
        symbols = q.to(torch.int64).numpy()
        if context is not None:
            symbols = context.residuals(symbols)
        ideal += rangecoder.ideal_bits(symbols, tables)
        files = bitstream.write_tiles(symbols, tables=tables, weights_sha256=sha, codec_id=SHIPPED_ID,
                                      tile=(height, width))
        sizes.extend(map(len, files))
    n = len(images)
    mean_bytes = float(np.mean(sizes))
    return {
        "bytes_per_image": mean_bytes,
        "payload_bytes_per_image": mean_bytes - 1 - bitstream.CHECK_BYTES,  # the compact header is 1 byte
        "ideal_bytes_per_image": ideal / 8 / n,
        "psnr": float(np.concatenate(psnrs).mean()),
        "codec_images": n,
    }
