"""One configurable UNet covering the paper's fifteen variants (and, without skips, a UNet-shaped hourglass).

Channel plans follow the paper's code (its Supplementary Fig. 2):

* depth 4 (1024 x 1024 model): encoder 8-16-32-64, transposed-conv decoder 32-32-16-16, a
  3 x 3 head conv to 8 channels and a 1 x 1 conv to the classes (:func:`paper_plan`);
* the 512 x 512 model: encoder 8-16-32, decoder 16-8-8 and a 3 x 3 conv straight to the
  classes (no hidden head) -- it changes widths and head as well as depth
  (:func:`paper_512_plan`).

Every conv is ``norm(act(conv(x)))``; the output layer gets the same treatment when
``output_activation`` is on, which is what makes the paper's dying-ReLU output possible.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .layers import ConvUnit, check_input_multiple, make_activation, make_norm


@dataclass(frozen=True)
class ChannelPlan:
    """Feature-map widths of a UNet: encoder levels, decoder (transposed) convs, head."""

    encoder: tuple[int, ...]
    decoder: tuple[int, ...]
    head: int | None

    def __post_init__(self) -> None:
        if len(self.encoder) != len(self.decoder):
            raise ValueError(
                f"channel plan needs one decoder width per encoder level, got encoder "
                f"{self.encoder} and decoder {self.decoder}"
            )
        if not self.encoder:
            raise ValueError("channel plan needs at least one level")


def level_widths(level: int) -> tuple[int, int]:
    """(encoder width, decoder width) of UNet level ``level`` (0 = full resolution).

    The paper's 4-level model has encoder 8-16-32-64 and, level by level from the top, decoder
    16-16-32-32: the encoder doubles every level, the decoder every second level. Fixing the
    width *per level* (not per position from the bottom) is what lets depth vary alone.
    """
    if level < 0:
        raise ValueError(f"level must be >= 0, got {level}")
    return 8 * 2**level, 16 * 2 ** (level // 2)


def paper_plan(depth: int = 4) -> ChannelPlan:
    """The paper's 4-level channel plan, with levels added or removed at the bottom.

    Each level keeps the widths it has in the paper's depth-4 model (:func:`level_widths`) and
    the head stays a 3 x 3 conv to 8 channels, so only the number of levels changes:

    * depth 3: encoder 8-16-32, decoder (bottom to top) 32-16-16, head 8;
    * depth 4: encoder 8-16-32-64, decoder 32-32-16-16, head 8 (the paper's own);
    * depth 5: encoder 8-16-32-64-128, decoder 64-32-32-16-16, head 8.

    For the paper's 512 x 512 model, which also narrows the decoder and drops the head, use
    :func:`paper_512_plan`.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    widths = [level_widths(i) for i in range(depth)]
    encoder = tuple(enc for enc, _ in widths)
    decoder = tuple(dec for _, dec in reversed(widths))  # the decoder runs bottom to top
    return ChannelPlan(encoder, decoder, 8)


def paper_512_plan() -> ChannelPlan:
    """The paper's 512 x 512 model: encoder 8-16-32, decoder 16-8-8, no hidden head conv."""
    return ChannelPlan((8, 16, 32), (16, 8, 8), None)


class UNet(nn.Module):
    """Configurable UNet (or, with ``skips=False``, a skip-less UNet) for two-class segmentation.

    Parameters
    ----------
    encoder_channels, decoder_channels, head_channels
        Channel plan; see :func:`paper_plan`. ``head_channels=None`` maps the last
        concatenation straight to the classes with a ``kernel_size`` conv.
    kernel_size
        Odd kernel size of every spatial conv (3, 5 or 7 in the ablation).
    norm
        ``"none"`` or ``"batch"`` (after every conv, the output layer included).
    activation
        ``"relu"`` or ``"leaky_relu"``, after every conv.
    extra_conv
        Add a C -> C conv after each skip concatenation and a head -> head conv after the head
        conv (the paper's "TwoConv").
    output_activation
        Pass the class logits through activation (and norm) like every other layer, as the
        paper did. Off gives a plain linear output layer.
    skips
        Concatenate encoder maps into the decoder (UNet); off gives the ``unet_noskip``
        network (not the paper's hourglass, which is ``EncoderDecoderCNN``).
    """

    def __init__(
        self,
        encoder_channels: Sequence[int] = (8, 16, 32, 64),
        decoder_channels: Sequence[int] = (32, 32, 16, 16),
        head_channels: int | None = 8,
        *,
        in_channels: int = 1,
        num_classes: int = 2,
        kernel_size: int = 3,
        norm: str = "none",
        activation: str = "leaky_relu",
        extra_conv: bool = False,
        output_activation: bool = True,
        skips: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        plan = ChannelPlan(tuple(encoder_channels), tuple(decoder_channels), head_channels)
        self.plan = plan
        self.depth = len(plan.encoder)
        self.skips = skips
        unit = dict(activation=activation, norm=norm)

        self.encoder = nn.ModuleList()
        prev = in_channels
        for width in plan.encoder:
            self.encoder.append(ConvUnit(prev, width, kernel_size, **unit))
            prev = width
        self.pool = nn.MaxPool2d(2, 2)

        self.decoder = nn.ModuleList()
        self.extra = nn.ModuleList()
        for j, width in enumerate(plan.decoder):
            self.decoder.append(
                ConvUnit(prev, width, kernel_size, transposed=True, stride=2, **unit)
            )
            prev = width + (plan.encoder[self.depth - 1 - j] if skips else 0)
            self.extra.append(
                ConvUnit(prev, prev, kernel_size, **unit) if extra_conv else nn.Identity()
            )

        if plan.head is not None:
            self.head = ConvUnit(prev, plan.head, kernel_size, **unit)
            self.head_extra = (
                ConvUnit(plan.head, plan.head, kernel_size, **unit) if extra_conv else nn.Identity()
            )
            prev, out_kernel = plan.head, 1
        else:
            self.head = nn.Identity()
            self.head_extra = nn.Identity()
            out_kernel = kernel_size
        self.out_conv = nn.Conv2d(prev, num_classes, out_kernel, padding=out_kernel // 2)
        self.out_act = make_activation(activation if output_activation else "identity")
        self.out_norm = make_norm(norm if output_activation else "none", num_classes)

    @property
    def input_multiple(self) -> int:
        """Height and width must be multiples of this (one factor of 2 per pooling)."""
        return 2**self.depth

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``ValueError`` with a clear message when ``x`` cannot pass through the net."""
        m = self.input_multiple
        h, w = x.shape[-2:] if x.ndim >= 2 else (m, m)
        check_input_multiple(x, m, f"a depth-{self.depth} UNet",
                             f" (nearest: {max(m, h // m * m)} x {max(m, w // m * m)})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        self.check_input(x)
        saved = []
        for unit in self.encoder:
            x = unit(x)
            saved.append(x)
            x = self.pool(x)
        for j, (up, extra) in enumerate(zip(self.decoder, self.extra, strict=True)):
            skip = saved[self.depth - 1 - j]
            x = up(x, output_size=skip.shape[-2:])
            if self.skips:
                x = torch.cat((x, skip), dim=1)
            x = extra(x)
        x = self.head_extra(self.head(x))
        return self.out_norm(self.out_act(self.out_conv(x)))
