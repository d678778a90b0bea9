"""Network builders: one configurable UNet plus the paper's shallow CNNs, behind a registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .shallow import OneFilterCNN, ShallowWideCNN
from .unet import ChannelPlan, UNet, paper_plan

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": UNet,
    "hourglass": lambda **kw: UNet(skips=False, **kw),
    "one_filter": OneFilterCNN,
    "shallow_wide": ShallowWideCNN,
}

# Which keyword arguments each architecture understands; the rest of a config is ignored so that
# one config schema (``cfg.net``) can describe every architecture.
_ARGS = {
    "unet": {"encoder_channels", "decoder_channels", "head_channels", "in_channels", "num_classes",
             "kernel_size", "norm", "activation", "extra_conv", "output_activation"},
    "one_filter": {"kernel_size", "in_channels", "num_classes"},
    "shallow_wide": {"kernel_size", "width", "activation", "output_activation", "in_channels",
                     "num_classes"},
}
_ARGS["hourglass"] = _ARGS["unet"]


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build the network ``arch`` (``unet``, ``hourglass``, ``one_filter``, ``shallow_wide``).

    Keyword arguments that ``arch`` does not take are ignored, so a full ``net`` config can be
    passed for any architecture.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    used = {k: v for k, v in kwargs.items() if k in _ARGS[arch]}
    for key in ("encoder_channels", "decoder_channels"):
        if key in used:
            used[key] = tuple(used[key])
    return ARCHITECTURES[arch](**used)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters that take part in the forward pass (all of ours do)."""
    return sum(p.numel() for p in model.parameters())


def pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reflect-pad (B, C, H, W) ``x`` at the bottom/right to multiples of ``multiple``.

    Returns the padded tensor and the original (H, W) to crop the prediction back to.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


__all__ = [
    "ARCHITECTURES", "ChannelPlan", "OneFilterCNN", "ShallowWideCNN", "UNet", "build_model",
    "count_parameters", "pad_to_multiple", "paper_plan",
]
