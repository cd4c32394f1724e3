"""Reconstruction quality: MSE and PSNR of images in [0, 1]."""

from __future__ import annotations

import math

import torch


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for values in [0, 1]."""
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


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
    return {"mse": mse, "psnr_db": sum(psnr(e) for e in errors.tolist()) / len(errors),
            "psnr_of_mse_db": psnr(mse)}
