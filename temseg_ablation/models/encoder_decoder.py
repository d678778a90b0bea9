"""The paper's first network: a plain encoder-decoder ("hourglass") with 20 x 20 and 10 x 10 kernels.

Layout (the authors' Original_CNN notebook; 35,848 parameters with one input channel and two
classes)::

    level   layer                         weights + biases
    enc 1   conv 20 x 20, 1 -> 8,  pool        3,200 + 8
    enc 2   conv 10 x 10, 8 -> 16, pool       12,800 + 16
    enc 3   conv 3 x 3, 16 -> 32,  pool        4,608 + 32
    dec 1   conv 3 x 3, 32 -> 32,  upsample    9,216 + 32
    dec 2   conv 3 x 3, 32 -> 16,  upsample    4,608 + 16
    dec 3   conv 3 x 3, 16 -> 8,   upsample    1,152 + 8
    out     conv 3 x 3, 8 -> 2, then 1 x 1, 2 -> 2   144 + 2 + 4 + 2

ReLU follows every encoder and decoder conv; the two output convs are linear; there is no
normalisation and no skip connection. Pooling is 2 x 2 max-pooling, upsampling is nearest-
neighbour x 2, so height and width must be multiples of 8.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import check_input_multiple, make_activation


class SamePadConv2d(nn.Module):
    """Stride-1 conv whose output has the input's size, for odd *and* even kernels.

    An even kernel ``k`` needs ``k - 1`` padding rows, which cannot be split evenly; the extra
    row goes on the top/left (``k // 2`` before, ``k // 2 - 1`` after). That matches the
    paper's code, which padded ``k // 2`` on both sides and let the following 2 x 2 floor-mode
    pooling drop the one surplus row and column, so on even-sized inputs both give the same
    pooled maps.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"kernel_size must be positive, got {kernel_size}")
        before, after = kernel_size // 2, (kernel_size - 1) // 2
        # ZeroPad2d takes (left, right, top, bottom).
        self.pad = nn.ZeroPad2d((before, after, before, after))
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        return self.conv(self.pad(x))


class EncoderDecoderCNN(nn.Module):
    """The paper's hourglass encoder-decoder (Supplementary Fig. 1): no skips, 35,848 parameters.

    Parameters
    ----------
    in_channels, num_classes
        Input channels and output classes (1 and 2 give the paper's 35,848 parameters).
    activation
        Nonlinearity after every encoder/decoder conv (the paper: ``"relu"``).
    output_activation
        Pass the class logits through ``activation`` too. The paper's output convs are linear,
        so the default is off.
    """

    #: Encoder (kernel, width) per level and decoder widths, top to bottom / bottom to top.
    ENCODER: tuple[tuple[int, int], ...] = ((20, 8), (10, 16), (3, 32))
    DECODER: tuple[int, ...] = (32, 16, 8)
    input_multiple = 2 ** len(ENCODER)

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        activation: str = "relu",
        output_activation: bool = False,
    ) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        prev = in_channels
        for kernel, width in self.ENCODER:
            self.encoder.append(SamePadConv2d(prev, width, kernel))
            prev = width
        self.decoder = nn.ModuleList()
        for width in self.DECODER:
            self.decoder.append(SamePadConv2d(prev, width, 3))
            prev = width
        self.act = make_activation(activation)
        self.pool = nn.MaxPool2d(2, 2)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.out_conv = SamePadConv2d(prev, num_classes, 3)
        self.out_mix = nn.Conv2d(num_classes, num_classes, 1)
        self.out_act = make_activation(activation if output_activation else "identity")

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` unless ``x`` is (batch, channel, H, W) with H, W multiples of 8."""
        check_input_multiple(x, self.input_multiple, "the encoder-decoder")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, num_classes, H, W) for images (B, in_channels, H, W)."""
        self.check_input(x)
        for conv in self.encoder:
            x = self.pool(self.act(conv(x)))
        for conv in self.decoder:
            x = self.up(self.act(conv(x)))
        return self.out_act(self.out_mix(self.out_conv(x)))

    def kernels(self) -> torch.Tensor:
        """Learned first-layer (20 x 20) filters as images, shape (8, 20, 20) for one input channel."""
        return self.encoder[0].conv.weight.detach()[:, 0].cpu()
