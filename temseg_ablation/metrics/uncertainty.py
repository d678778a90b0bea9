"""Where a network is unsure or silent: edge-band uncertainty and dead-output fractions.

Both come as a pure function on arrays and a DDP-summable torchmetrics accumulator, with the
thresholding conventions of :mod:`temseg_ablation.metrics.pixel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric

from .pixel import ArrayLike, _as_tensor, _check_prob, _check_same_shape, _work_dtype

__all__ = [
    "edge_band",
    "edge_uncertainty_counts",
    "edge_uncertainty",
    "EdgeUncertainty",
    "dead_output_fraction",
    "DeadOutputFraction",
]

# --------------------------------------------------------------------------------------------
# edge uncertainty
# --------------------------------------------------------------------------------------------


def _max_filter(x: torch.Tensor, r: int) -> torch.Tensor:
    """Max over a (2r+1)^2 square window of (B, H, W) float; outside the image never wins."""
    k = 2 * r + 1
    y = x.unsqueeze(1)
    # separable square window: two 1-D passes are far cheaper than one k x k pass
    y = F.max_pool2d(y, kernel_size=(1, k), stride=1, padding=(0, r))
    y = F.max_pool2d(y, kernel_size=(k, 1), stride=1, padding=(r, 0))
    return y.squeeze(1)


def edge_band(target: ArrayLike, band_px: int = 3) -> torch.Tensor:
    """Bool (B, H, W) band of pixels within ``band_px`` (Chebyshev distance) of a particle edge, both sides.

    A background pixel is in the band when a particle pixel lies within its (2r+1)^2 window and
    a particle pixel when a background pixel does; the image border is not an edge.
    """
    t = _as_tensor(target, "target")
    if t.ndim == 2:
        t = t.unsqueeze(0)
    if t.ndim != 3:
        raise ValueError(f"metrics: edge_band expects (H, W) or (B, H, W), got {tuple(t.shape)}")
    if band_px < 0:
        raise ValueError(f"metrics: band_px must be >= 0, got {band_px}")
    tb = t.bool()
    if band_px == 0:
        return torch.zeros_like(tb)
    f = tb.to(torch.float32)
    near_particle = _max_filter(f, band_px) > 0
    near_background = _max_filter(1.0 - f, band_px) > 0
    return (tb & near_background) | (~tb & near_particle)


def edge_uncertainty_counts(
    prob: ArrayLike, target: ArrayLike, band_px: int = 3, lo: float = 0.1, hi: float = 0.9
) -> tuple[int, int]:
    """(uncertain band pixels, band pixels): band as in :func:`edge_band`, uncertain = lo < prob < hi."""
    p = _as_tensor(prob, "prob")
    t = _as_tensor(target, "target")
    _check_same_shape(p, t, "prob and target")
    _check_prob(p)
    if not lo < hi:
        raise ValueError(f"metrics: need lo < hi, got lo={lo}, hi={hi}")
    if p.ndim == 2:
        p, t = p.unsqueeze(0), t.unsqueeze(0)
    band = edge_band(t.detach(), band_px)
    pw = p.detach().to(_work_dtype(p))
    uncertain = (pw > lo) & (pw < hi) & band
    return int(uncertain.sum()), int(band.sum())


def edge_uncertainty(
    prob: ArrayLike, target: ArrayLike, band_px: int = 3, lo: float = 0.1, hi: float = 0.9
) -> float:
    """Fraction of pixels within ``band_px`` of a true particle edge with lo < prob < hi (NaN if no edge)."""
    num, den = edge_uncertainty_counts(prob, target, band_px, lo, hi)
    return num / den if den > 0 else float("nan")


class EdgeUncertainty(Metric):
    """Accumulated :func:`edge_uncertainty`: uncertain band pixels / band pixels over all images (NaN if none)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, band_px: int = 3, lo: float = 0.1, hi: float = 0.9, **kwargs) -> None:
        super().__init__(**kwargs)
        if band_px < 0 or not lo < hi:
            raise ValueError(
                f"EdgeUncertainty: need band_px >= 0 and lo < hi, got {band_px}, {lo}, {hi}"
            )
        self.band_px, self.lo, self.hi = int(band_px), float(lo), float(hi)
        self.add_state("uncertain", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("band", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate prob (B, H, W) in [0, 1] against target (B, H, W) bool/int."""
        num, den = edge_uncertainty_counts(prob, target, self.band_px, self.lo, self.hi)
        self.uncertain += num
        self.band += den

    def compute(self) -> torch.Tensor:
        """Scalar float64 fraction."""
        if int(self.band) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.uncertain.to(torch.float64) / self.band.to(torch.float64)


# --------------------------------------------------------------------------------------------
# dead outputs (the activation spread lives in metrics/activation.py)
# --------------------------------------------------------------------------------------------


def dead_output_fraction(particle_logit: ArrayLike) -> float:
    """Fraction of pixels whose particle-channel output (after the output activation) is exactly 0."""
    x = _as_tensor(particle_logit, "particle_logit")
    if x.numel() == 0:
        raise ValueError("metrics: dead_output_fraction got an empty tensor")
    return float((x.detach() == 0).sum()) / x.numel()


class DeadOutputFraction(Metric):
    """Accumulated :func:`dead_output_fraction` over all pixels seen (dying-ReLU detector)."""

    is_differentiable = False
    higher_is_better = False
    full_state_update = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("zero", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, particle_output: torch.Tensor) -> None:
        """Accumulate particle-channel outputs of any shape."""
        self.zero += (particle_output.detach() == 0).sum()
        self.total += particle_output.numel()

    def compute(self) -> torch.Tensor:
        """Scalar float64 fraction (NaN before any update)."""
        if int(self.total) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.zero.to(torch.float64) / self.total.to(torch.float64)
