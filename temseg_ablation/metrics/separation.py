"""How well the particle channel's own output separates particle from background pixels.

``particle_auroc`` is the area under the ROC curve of the particle logit (the net's output
channel 1, before the softmax) as a score for true-particle vs background pixels, ties counted
half. It does not depend on any threshold or on calibration: a channel that is constant (dead)
gives exactly 0.5 whatever constant it settles on, a perfectly ordering one gives 1.0. An
exactly-zero particle output (the dying-ReLU signature) is a tie, so a ReLU output that is 0 on
every pixel also gives 0.5.

Accumulation uses a fixed histogram over the float32 bit pattern of the logits: the pattern,
mapped to an order-preserving unsigned key, keeps its top ``AUROC_BITS`` bits (sign, 8 exponent
bits and ``AUROC_BITS - 9`` mantissa bits), so each bin spans a relative width of
``2 ** -(AUROC_BITS - 9)`` (0.2 % at 18 bits) at any scale. Pixel pairs sharing a bin are
counted as ties; the exact AUROC differs from the histogram value by at most
``0.5 * sum_b pos_b * neg_b / (P * N)``, which is reported as ``auroc_bin_error`` (0 when no
bin holds both classes; exact ties such as a dead channel contribute to the bound but are
counted exactly). States are int64 sums, so DDP and any batching give identical results.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from torchmetrics import Metric

__all__ = [
    "AUROC_BITS",
    "auroc",
    "logit_bins",
    "auroc_from_histograms",
    "ParticleSeparation",
]

#: Bits of the order-preserving float32 key kept per histogram bin (2 ** 18 bins).
AUROC_BITS = 18


def auroc(score: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Exact AUROC of ``score`` for truthy ``target`` (Mann-Whitney, ties half; NaN if one class).

    Parameters
    ----------
    score : any shape, real scores (e.g. logits).
    target : same shape, truthy = positive (particle).
    """
    s = np.asarray(torch.as_tensor(score).detach().cpu(), dtype=np.float64).ravel()
    t = np.asarray(torch.as_tensor(target).detach().cpu()).astype(bool).ravel()
    if s.shape != t.shape:
        raise ValueError(f"metrics: score and target sizes differ: {s.size} vs {t.size}")
    n_pos = int(t.sum())
    n_neg = t.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks: a tie counts half
    return float((ranks[t].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def logit_bins(logit: torch.Tensor, bits: int = AUROC_BITS) -> torch.Tensor:
    """Histogram bin (int64, same shape) of each value, monotone in the float32 value.

    -0.0 and +0.0 share a bin; NaN is rejected.
    """
    if not 1 <= bits <= 32:
        raise ValueError(f"metrics: bits must be in 1..32, got {bits}")
    x = logit.detach().to(torch.float32).contiguous()
    if bool(torch.isnan(x).any()):
        raise ValueError("metrics: particle logits contain NaN")
    x = torch.where(x == 0, torch.zeros_like(x), x)  # one bin for both zeros
    u = x.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    # IEEE order: negatives have the sign bit set and grow in magnitude with the pattern
    key = torch.where(u >= 2**31, 0xFFFFFFFF - u, u + 2**31)
    return key >> (32 - bits)


def auroc_from_histograms(pos: torch.Tensor, neg: torch.Tensor) -> tuple[float, float]:
    """(AUROC, bound on its binning error) from per-bin positive / negative counts in score order.

    Pairs in one bin count half. NaN, NaN when a class is empty.
    """
    pos = pos.to(torch.int64).cpu()
    neg = neg.to(torch.int64).cpu()
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan"), float("nan")
    below = torch.cumsum(neg, 0) - neg  # negatives in strictly lower bins
    # int64 products and sums are exact up to about 3e9 pixels of each class
    wins = int((pos * below).sum())
    ties = int((pos * neg).sum())
    denom = n_pos * n_neg
    return (2 * wins + ties) / (2 * denom), ties / (2 * denom)


class ParticleSeparation(Metric):
    """Accumulated particle-logit AUROC and the dead-on-true fraction.

    ``update(particle_logit, target)``: the particle channel's raw output (B, H, W) and the
    true mask (B, H, W). ``compute()`` returns float64 0-d tensors ``auroc``,
    ``auroc_bin_error`` (see module notes) and ``dead_on_true`` (fraction of true-particle
    pixels whose particle output is exactly 0; NaN without particle pixels).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, bits: int = AUROC_BITS, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bits = int(bits)
        nb = 2**self.bits
        self.add_state("hist", torch.zeros(2 * nb, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("dead_true", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("n_true", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, particle_logit: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate a batch: logits and target of one shape (bool/int target, nonzero = particle)."""
        if particle_logit.shape != target.shape:
            raise ValueError(
                f"metrics: logit and target shapes differ: {tuple(particle_logit.shape)} vs "
                f"{tuple(target.shape)}"
            )
        t = target.detach().bool()
        code = logit_bins(particle_logit, self.bits) + (t.to(torch.int64) << self.bits)
        # bincount without weights is deterministic on CUDA
        self.hist += torch.bincount(code.reshape(-1), minlength=2 ** (self.bits + 1))
        self.dead_true += ((particle_logit.detach() == 0) & t).sum()
        self.n_true += t.sum()

    def compute(self) -> dict[str, torch.Tensor]:
        """``auroc``, ``auroc_bin_error``, ``dead_on_true`` as float64 0-d tensors."""
        nb = 2**self.bits
        auc, err = auroc_from_histograms(self.hist[nb:], self.hist[:nb])
        n = int(self.n_true)
        dead = int(self.dead_true) / n if n else float("nan")
        f64 = torch.float64
        return {"auroc": torch.tensor(auc, dtype=f64), "auroc_bin_error": torch.tensor(err, dtype=f64),
                "dead_on_true": torch.tensor(dead, dtype=f64)}
