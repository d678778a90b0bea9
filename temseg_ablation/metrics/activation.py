"""Spread of activations through the layers, and the output norm's learned affine.

One definition serves the training module, the tests and any ad-hoc check:

* a layer's spread is the population standard deviation (ddof = 0) of *all* its output
  elements (batch, channels and pixels pooled), accumulated as float64 moments (of float32 plane
  sums, see `moments`) so that any split over batches or DDP ranks gives the same answer;
* the spread *ratio* is max / min of the per-layer standard deviations (1.0 when every layer is
  constant, inf when some layer is constant and another is not); its log10 is the Table 1
  measure.

Two sets of probe points exist. ``prenorm=False`` takes each ``ConvUnit``'s output, i.e. after
its batch norm, which makes the ratio ~1 for batch-norm nets by construction. ``prenorm=True``
takes each unit's *conv* output, before activation and normalisation, which is what the
paper's "large variation in raw activation values" refers to.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torchmetrics import Metric

__all__ = [
    "probed_layers",
    "moments",
    "stds_from_moments",
    "spread_ratio",
    "activation_spread",
    "ActivationMoments",
    "output_norm_params",
]


def probed_layers(net: nn.Module, prenorm: bool = False) -> list[nn.Module]:
    """Modules whose outputs make up the activation spread, in forward-definition order.

    ``prenorm=False``: every ``ConvUnit`` (output after its norm). ``prenorm=True``: the
    ``conv`` of every ``ConvUnit`` (output before activation and norm). Nets without
    ``ConvUnit`` (the plain encoder-decoder) fall back to their conv layers in both cases; they
    have no normalisation, so both views coincide.
    """
    from ..models.layers import ConvUnit

    units = [m for m in net.modules() if isinstance(m, ConvUnit)]
    if units:
        return [u.conv for u in units] if prenorm else units
    return [m for m in net.modules() if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)]


def moments(activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(sum, sum of squares, count) of a tensor of any shape, sums as float64 0-d tensors.

    Each plane (the last two dimensions, one per sample and channel; the last one of a 2-D
    tensor) is summed in float32, the plane sums in float64: a float64 copy of every activation cost about 4x more, and a float32
    plane sum is off by ~1e-7 relative, far below anything the spread ratio resolves.
    """
    a = activation.detach()
    if a.numel() == 0:
        zero = torch.zeros((), dtype=torch.float64, device=a.device)
        return zero, zero.clone(), 0
    if a.dtype not in (torch.float32, torch.float64):
        a = a.float()  # half / bfloat16 sums would lose the digits the ratio needs
    # rows never span the batch dimension, so a batch split into pieces sums the same rows
    if a.dim() >= 3:
        planes = a.reshape(-1, a.shape[-2] * a.shape[-1])
    else:
        planes = a.reshape(-1, a.shape[-1]) if a.dim() == 2 else a.reshape(1, -1)
    total = planes.sum(1).to(torch.float64).sum()
    total_sq = (planes * planes).sum(1).to(torch.float64).sum()
    return total, total_sq, a.numel()


def stds_from_moments(total: torch.Tensor, total_sq: torch.Tensor,
                      count: torch.Tensor) -> torch.Tensor:
    """Population standard deviations from per-layer moments (each (L,)); float64 (L,)."""
    n = count.to(torch.float64).clamp(min=1)
    mean = total / n
    return (total_sq / n - mean * mean).clamp(min=0).sqrt()


def spread_ratio(stds: Sequence[float] | np.ndarray | torch.Tensor) -> float:
    """max / min of per-layer standard deviations (1.0 if all are 0, inf if only some are)."""
    s = np.asarray(torch.as_tensor(stds, dtype=torch.float64).cpu(), dtype=np.float64)
    if s.size == 0:
        raise ValueError("metrics: spread_ratio needs at least one layer")
    lo, hi = float(s.min()), float(s.max())
    if lo > 0:
        return hi / lo
    return 1.0 if hi == 0 else float("inf")


def activation_spread(activations: Sequence[np.ndarray | torch.Tensor]) -> dict[str, object]:
    """Per-layer activation statistics and their spread ratio (the module's definition).

    Parameters
    ----------
    activations : one tensor per layer (any shape, e.g. collected with forward hooks).

    Returns
    -------
    dict with ``std`` and ``abs_max`` (float64 NumPy arrays, one entry per layer), ``ratio``
    (:func:`spread_ratio`) and ``log10`` (log10 of the ratio; inf stays inf).
    """
    if len(activations) == 0:
        raise ValueError("metrics: activation_spread needs at least one activation tensor")
    tot, sq, cnt, maxes = [], [], [], []
    for i, a in enumerate(activations):
        x = torch.as_tensor(a) if not isinstance(a, torch.Tensor) else a
        if x.numel() == 0:
            raise ValueError(f"metrics: activations[{i}] is empty")
        s, s2, n = moments(x)
        tot.append(s)
        sq.append(s2)
        cnt.append(n)
        maxes.append(float(x.detach().abs().max()))
    std = stds_from_moments(torch.stack(tot), torch.stack(sq), torch.tensor(cnt)).numpy()
    ratio = spread_ratio(std)
    return {"std": std, "abs_max": np.asarray(maxes), "ratio": ratio,
            "log10": float(np.log10(ratio)) if ratio > 0 else float("-inf")}


class ActivationMoments(Metric):
    """Per-layer activation moments as DDP-summable float64 states; ``compute`` gives the stds."""

    full_state_update = False

    def __init__(self, n_layers: int, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in ("total", "total_sq", "count"):
            self.add_state(name, torch.zeros(n_layers, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, layer: int, activation: torch.Tensor) -> None:
        """Add one layer's activation tensor (any shape)."""
        s, s2, n = moments(activation)
        self.total[layer] += s
        self.total_sq[layer] += s2
        self.count[layer] += n

    def compute(self) -> torch.Tensor:
        """Per-layer population standard deviations, float64 (n_layers,)."""
        return stds_from_moments(self.total, self.total_sq, self.count)


def output_norm_params(net: nn.Module) -> dict[str, float]:
    """Learned scale and shift of the net's output norm, per class.

    Returns ``{"out_norm_weight_<c>": ..., "out_norm_bias_<c>": ...}`` for every class ``c``
    when ``net`` (or the module it wraps, e.g. ``torch.compile``'s ``_orig_mod``, DDP's
    ``module``) has an affine ``out_norm`` layer, else ``{}``. With batch norm after the output
    conv, the bias is the logit a dead (all-zero) class channel still produces, so these two
    numbers show how the output norm keeps probabilities off 0 and 1.
    """
    for attr in ("_orig_mod", "module"):
        inner = getattr(net, attr, None)
        if isinstance(inner, nn.Module) and not hasattr(net, "out_norm"):
            net = inner
    norm = getattr(net, "out_norm", None)
    weight = getattr(norm, "weight", None)
    bias = getattr(norm, "bias", None)
    if not isinstance(weight, torch.Tensor) or not isinstance(bias, torch.Tensor):
        return {}
    out: dict[str, float] = {}
    for c, (w, b) in enumerate(zip(weight.detach().cpu().tolist(), bias.detach().cpu().tolist(),
                                   strict=True)):
        out[f"out_norm_weight_{c}"] = float(w)
        out[f"out_norm_bias_{c}"] = float(b)
    return out
