"""Network builders: one configurable UNet, the paper's encoder-decoder and shallow CNNs, behind a registry."""

from __future__ import annotations

import difflib
import logging
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .encoder_decoder import EncoderDecoderCNN
from .shallow import OneFilterCNN, ShallowWideCNN
from .unet import ChannelPlan, UNet, level_widths, paper_512_plan, paper_plan

_log = logging.getLogger(__name__)


def _unet(*, skips: bool = True, depth: int | None = None, **kwargs: Any) -> UNet:
    """A UNet; channel widths not given explicitly come from ``paper_plan(depth)``."""
    if depth is not None:
        plan = paper_plan(int(depth))
        encoder = tuple(kwargs.setdefault("encoder_channels", plan.encoder))
        kwargs.setdefault("decoder_channels", plan.decoder)
        kwargs.setdefault("head_channels", plan.head)
        if len(encoder) != int(depth):
            # A lone ``net.depth=5`` override must not silently build the 4-level net.
            raise ValueError(
                f"depth={depth} contradicts encoder_channels={list(encoder)} ({len(encoder)} "
                "levels); choose the depth config group (e.g. depth=5), which sets depth and "
                "widths together, or give only one of them"
            )
    return UNet(skips=skips, **kwargs)


def _hourglass(**kwargs: Any) -> UNet:
    """Deprecated alias of ``unet_noskip`` (kept so old configs and checkpoints still load)."""
    msg = ("arch 'hourglass' is deprecated: it builds the skip-less UNet, now called "
           "'unet_noskip'; the paper's hourglass encoder-decoder is arch 'encoder_decoder'")
    warnings.warn(msg, FutureWarning, stacklevel=3)
    _log.warning(msg)
    return _unet(skips=False, **kwargs)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "unet": _unet,
    "unet_noskip": lambda **kw: _unet(skips=False, **kw),
    "hourglass": _hourglass,
    "encoder_decoder": EncoderDecoderCNN,
    "one_filter": OneFilterCNN,
    "shallow_wide": ShallowWideCNN,
}

# Which keyword arguments each architecture understands.
_ARGS: dict[str, frozenset[str]] = {
    "unet": frozenset({"encoder_channels", "decoder_channels", "head_channels", "depth",
                       "in_channels", "num_classes", "kernel_size", "norm", "activation",
                       "extra_conv", "output_activation"}),
    "encoder_decoder": frozenset({"in_channels", "num_classes", "activation",
                                  "output_activation"}),
    "one_filter": frozenset({"kernel_size", "in_channels", "num_classes"}),
    "shallow_wide": frozenset({"kernel_size", "width", "activation", "output_activation",
                               "in_channels", "num_classes"}),
}
_ARGS["unet_noskip"] = _ARGS["hourglass"] = _ARGS["unet"]
#: Every key some architecture takes: the schema of ``cfg.net`` (less ``arch``).
KNOWN_ARGS: frozenset[str] = frozenset().union(*_ARGS.values())


def build_model(arch: str, **kwargs: Any) -> nn.Module:
    """Build the network ``arch`` (see ``ARCHITECTURES``) from ``cfg.net``-style keyword arguments.

    One ``net`` config describes every architecture, so a key that *another* architecture takes
    (e.g. ``width`` for a UNet) is ignored. A key that no architecture takes (a typo such as
    ``kernal_size``) raises ``TypeError`` naming it and the keys ``arch`` accepts.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHITECTURES)}")
    unknown = sorted(set(kwargs) - KNOWN_ARGS)
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(
            k, sorted(KNOWN_ARGS), n=1)) else repr(k) for k in unknown]
        raise TypeError(
            f"unknown model argument(s) {', '.join(hints)} for arch {arch!r}; it accepts "
            f"{sorted(_ARGS[arch])}"
        )
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
    "ARCHITECTURES", "KNOWN_ARGS", "ChannelPlan", "EncoderDecoderCNN", "OneFilterCNN",
    "ShallowWideCNN", "UNet", "build_model", "count_parameters", "level_widths",
    "pad_to_multiple", "paper_512_plan", "paper_plan",
]
