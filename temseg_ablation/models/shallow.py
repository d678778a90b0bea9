"""The paper's shallow, interpretable CNNs: one learnable filter, and one wide layer of 32."""

from __future__ import annotations

import torch
from torch import nn

from .layers import make_activation


class OneFilterCNN(nn.Module):
    """A single learnable ``kernel_size`` filter whose output is the particle logit.

    The background logit is fixed at zero, so the softmax over the two classes is a logistic
    function of the filter response and the learned kernel can be read as an image
    (the paper's Fig. 6).
    """

    input_multiple = 1

    def __init__(self, kernel_size: int = 9, *, in_channels: int = 1, num_classes: int = 2) -> None:
        super().__init__()
        if num_classes != 2:
            raise ValueError("OneFilterCNN is a two-class model")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, 1, kernel_size, padding=kernel_size // 2)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (batch, channel, H, W)."""
        if x.ndim != 4:
            raise ValueError(f"expected a (batch, channel, H, W) tensor, got shape {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        particle = self.conv(x)
        return torch.cat((torch.zeros_like(particle), particle), dim=1)

    def kernels(self) -> torch.Tensor:
        """Learned filters as images, shape (n_filters, k, k)."""
        return self.conv.weight.detach()[:, 0].cpu()


class ShallowWideCNN(nn.Module):
    """One ``kernel_size`` conv with ``width`` filters, activation, then a 1 x 1 conv to classes.

    With the defaults (9 x 9, 32 filters) it has the paper's 2,690 parameters (its Fig. 7).
    """

    input_multiple = 1

    def __init__(
        self,
        kernel_size: int = 9,
        width: int = 32,
        *,
        activation: str = "relu",
        output_activation: bool = False,
        in_channels: int = 1,
        num_classes: int = 2,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.conv = nn.Conv2d(in_channels, width, kernel_size, padding=kernel_size // 2)
        self.act = make_activation(activation)
        self.out_conv = nn.Conv2d(width, num_classes, 1)
        self.out_act = make_activation(activation if output_activation else "identity")

    check_input = OneFilterCNN.check_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        return self.out_act(self.out_conv(self.act(self.conv(x))))

    def kernels(self) -> torch.Tensor:
        """Learned first-layer filters as images, shape (width, k, k)."""
        return self.conv.weight.detach()[:, 0].cpu()
