"""String -> layer maps for the ablation switches (activation, normalisation)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=False),
    # PyTorch's default slope (0.01), which is what F.leaky_relu gives without arguments.
    "leaky_relu": lambda: nn.LeakyReLU(negative_slope=0.01),
    "identity": nn.Identity,
}

NORMS: dict[str, Callable[[int], nn.Module]] = {
    "none": lambda channels: nn.Identity(),
    "batch": nn.BatchNorm2d,
}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` (``relu``, ``leaky_relu``, ``identity``)."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


def make_norm(name: str, channels: int) -> nn.Module:
    """Return a normalisation layer for ``channels`` feature maps (``none`` or ``batch``)."""
    try:
        return NORMS[name](channels)
    except KeyError:
        raise ValueError(f"unknown norm {name!r}; choose one of {sorted(NORMS)}") from None


class ConvUnit(nn.Module):
    """Convolution, then activation, then normalisation: the order of the paper's code.

    The paper's networks apply the activation *before* batch norm (``bn(act(conv(x)))``);
    that order is kept so parameter counts and behaviour match the variants it reports.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        *,
        activation: str,
        norm: str,
        transposed: bool = False,
        stride: int = 1,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        if transposed:
            self.conv: nn.Module = nn.ConvTranspose2d(
                in_channels, out_channels, kernel_size, stride=stride, padding=padding
            )
        else:
            self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding)
        self.act = make_activation(activation)
        self.norm = make_norm(norm, out_channels)
        self.transposed = transposed

    def forward(self, x, output_size=None):  # noqa: D102 - nn.Module protocol
        if self.transposed:
            x = self.conv(x, output_size=output_size)
        else:
            x = self.conv(x)
        return self.norm(self.act(x))


def check_input_multiple(x: torch.Tensor, multiple: int, net: str, hint: str = "") -> None:
    """Raise ``ValueError`` unless ``x`` is (batch, channel, H, W) with H, W multiples of ``multiple``.

    ``net`` names the network in the message ("a depth-4 UNet"); ``hint`` is added before the fix.
    """
    if x.ndim != 4:
        raise ValueError(f"expected a (batch, channel, H, W) tensor, got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"input {h} x {w} does not fit {net}: height and width must be multiples of "
            f"{multiple}{hint}; crop, or pad with temseg_ablation.models.pad_to_multiple"
        )
