"""Activation functions by name. Importing this module does not import torch."""

from __future__ import annotations

from kaecompress.errors import KaecError

# name -> torch.nn class name; "none" means no activation module at all.
ACTIVATIONS: dict[str, str | None] = {
    "none": None,
    "relu": "ReLU",
    "sigmoid": "Sigmoid",
    "tanh": "Tanh",
    "gelu": "GELU",
    "silu": "SiLU",
    "elu": "ELU",
    "selu": "SELU",
    "leaky_relu": "LeakyReLU",
    "softplus": "Softplus",
    "mish": "Mish",
    "hardtanh": "Hardtanh",
    "relu6": "ReLU6",
}


def check_activation(name: str | None, where: str = "activation") -> str:
    """Return the canonical (lower-case) name, or raise KaecError listing the valid names."""
    key = "none" if name is None else str(name).strip().lower().replace("-", "_")
    if key not in ACTIVATIONS:
        valid = ", ".join(ACTIVATIONS)
        raise KaecError(f"{where}: unknown activation {name!r} (expected one of: {valid})")
    return key


def make_activation(name: str | None):
    """An nn.Module for `name`, or None for "none"."""
    cls_name = ACTIVATIONS[check_activation(name)]
    if cls_name is None:
        return None
    from torch import nn

    return getattr(nn, cls_name)()
