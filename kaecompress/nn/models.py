"""CNN-KAE autoencoders: an unpadded convolution stack around a KAE (or Linear) bottleneck."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

from kaecompress.nn.activations import check_activation, make_activation
from kaecompress.nn.entropy import FactorizedPrior, round_ste
from kaecompress.errors import KaecError
from kaecompress.nn.layers import KAELayer


class Reshape(nn.Module):
    """Reshape the last dimension to `shape`, keeping any leading batch dimensions."""

    def __init__(self, shape: Sequence[int]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(*x.shape[:-1], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def dense(in_features: int, out_features: int, kae_order: int) -> nn.Module:
    """A KAELayer of `kae_order` > 0, else a plain Linear layer."""
    if kae_order > 0:
        return KAELayer(in_features, out_features, order=kae_order)
    return nn.Linear(in_features, out_features)


def _append(layers: list[nn.Module], activation: str | None) -> None:
    module = make_activation(activation)
    if module is not None:
        layers.append(module)


class CNNKAE(nn.Module):
    """Convolutional autoencoder with a dense bottleneck, KAE polynomial on either side.

    `encoder` maps (N, C, H, W) images in [0, 1] to (N, latent_dim) latents; `decoder` maps them back.
    Both are plain nn.Sequential modules and work on their own.
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        latent_dim: int = 16,
        channels: Sequence[int] = (32,),
        kernel_size: int = 7,
        encoder_kae_order: int = 0,
        decoder_kae_order: int = 0,
        activation: str | None = "relu",
        latent_activation: str | None = None,
        output_activation: str | None = None,
        stride: int = 1,
        prior: str | None = None,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        channels = [int(c) for c in channels]
        if len(shape) != 3 or min(shape) < 1:
            raise KaecError(f"model.shape: expected (channels, height, width), got {shape}")
        if not channels or min(channels) < 1:
            raise KaecError(f"model.channels: expected a non-empty list of positive integers, got {channels}")
        if kernel_size < 1 or latent_dim < 1 or encoder_kae_order < 0 or decoder_kae_order < 0 or stride < 1:
            raise KaecError("model: kernel_size, latent_dim and stride must be >= 1, KAE orders >= 0")
        if prior not in (None, "none", "factorized"):
            raise KaecError(f"model.prior: expected factorized or none, got {prior!r}")
        prior = None if prior == "none" else prior
        if stride == 1:  # the study's layout: unpadded convolutions, each shrinking by kernel_size - 1
            shrink = (kernel_size - 1) * len(channels)
            height, width = shape[1] - shrink, shape[2] - shrink
            fits = height >= 1 and width >= 1
        else:  # 'same' padding: each layer divides the size by the stride, exactly, so decoding restores it
            step = stride ** len(channels)
            height, width = shape[1] // step, shape[2] // step
            fits = shape[1] % step == 0 and shape[2] % step == 0 and kernel_size % 2 == 1
        if not fits:
            raise KaecError(
                f"model: {len(channels)} convolutions of kernel {kernel_size}, stride {stride} "
                f"do not fit a {shape[1]}x{shape[2]} input"
                + ("" if stride == 1 else f" (needs sides divisible by {stride ** len(channels)} and an odd kernel)")
            )
        self.config = {
            "shape": list(shape),
            "latent_dim": int(latent_dim),
            "channels": channels,
            "kernel_size": int(kernel_size),
            "encoder_kae_order": int(encoder_kae_order),
            "decoder_kae_order": int(decoder_kae_order),
            "activation": check_activation(activation, "model.activation"),
            "latent_activation": check_activation(latent_activation, "model.latent_activation"),
            "output_activation": check_activation(output_activation, "model.output_activation"),
        }
        # Only when set, so that the configs (and identities) of earlier models stay as they were.
        if stride != 1:
            self.config["stride"] = int(stride)
        if prior is not None:
            self.config["prior"] = prior
        self.shape = shape
        self.latent_dim = int(latent_dim)
        feature_shape = (channels[-1], height, width)
        flat = channels[-1] * height * width

        pad = 0 if stride == 1 else kernel_size // 2
        enc: list[nn.Module] = []
        for c_in, c_out in zip([shape[0], *channels[:-1]], channels):
            enc.append(nn.Conv2d(c_in, c_out, kernel_size, stride, padding=pad))
            _append(enc, activation)
        enc += [nn.Flatten(start_dim=-3), dense(flat, latent_dim, encoder_kae_order)]
        _append(enc, latent_activation)
        self.encoder = nn.Sequential(*enc)

        dec: list[nn.Module] = [dense(latent_dim, flat, decoder_kae_order), Reshape(feature_shape)]
        outs = [*reversed(channels[:-1]), shape[0]]
        for i, (c_in, c_out) in enumerate(zip(reversed(channels), outs)):
            dec.append(nn.ConvTranspose2d(c_in, c_out, kernel_size, stride, padding=pad, output_padding=stride - 1))
            _append(dec, activation if i < len(outs) - 1 else output_activation)
        self.decoder = nn.Sequential(*dec)
        # A codec model: latents are rounded to integers and coded under this learned density.
        self.prior = FactorizedPrior(latent_dim) if prior == "factorized" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.encoder(x)
        if self.prior is not None:
            z = round_ste(z)
        return self.decoder(z)

    @property
    def compression_ratio(self) -> float:
        """Input values per latent value (784 / 16 = 49 for MNIST with a 16-dim latent)."""
        c, h, w = self.shape
        return c * h * w / self.latent_dim


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def weights_sha256(model: nn.Module) -> str:
    """The identity of a model's weights (names, shapes and float32 values): what cards, exports and `.kae`
    files name a model by."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()
