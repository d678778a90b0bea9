"""Pixel-level accuracy measures: pure functions plus DDP-correct torchmetrics accumulators.

Conventions used throughout this module
---------------------------------------
Thresholding
    A pixel is predicted particle when ``prob >= t``. Because probabilities live in [0, 1],
    ``t = 0.0`` predicts every pixel and ``t = 1.0`` predicts only pixels whose probability is
    exactly 1.0. The comparison is carried out in the working precision of ``prob`` (float64 for
    float64 input, float32 otherwise, half types are upcast to float32) with the threshold rounded
    to that precision, identically for NumPy and torch input, so a probability stored as exactly
    ``t`` counts as predicted at ``t``.

Empty cases in :func:`prf`
    A ratio whose denominator is zero is 1.0 when there was nothing to get wrong (no error of the
    other kind) and 0.0 otherwise:

    * no truth and no prediction (tp = fp = fn = 0): precision = recall = f1 = iou = 1.0;
    * prediction but no truth (tp = fn = 0 < fp): precision = recall = f1 = iou = 0.0;
    * truth but no prediction (tp = fp = 0 < fn): precision = recall = f1 = iou = 0.0.

    With this rule ``f1 == 2 P R / (P + R)`` wherever ``P + R > 0`` and ``iou == f1 / (2 - f1)``
    everywhere.

Spread across images
    Per-image means and standard deviations are population statistics (ddof = 0) over images.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torchmetrics import Metric

# one definition of the activation spread, shared with the training module
from .activation import activation_spread

__all__ = [
    "THRESHOLDS",
    "OTSU_BINS",
    "binarize",
    "confusion_by_threshold",
    "prf",
    "otsu_threshold",
    "otsu_thresholds",
    "PixelThresholdMetrics",
    "curves_dataframe",
    "scalar_items",
    "activation_spread",
]

#: Softmax thresholds scanned for the precision / recall / F1 curves: 0.00, 0.05, ..., 1.00.
THRESHOLDS: np.ndarray = np.round(np.linspace(0.0, 1.0, 21), 2)
THRESHOLDS.setflags(write=False)

#: Number of histogram bins used by the Otsu threshold.
OTSU_BINS = 256

ArrayLike = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------
# thresholding and confusion counts
# --------------------------------------------------------------------------------------------


def _as_tensor(x: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(
        f"metrics: {name} must be a numpy array or torch tensor, got {type(x).__name__}"
    )


def _work_dtype(prob: torch.Tensor) -> torch.dtype:
    # One rule for both paths: float64 stays float64, everything else is compared in float32.
    return torch.float64 if prob.dtype == torch.float64 else torch.float32


def _check_prob(prob: torch.Tensor, name: str = "prob") -> None:
    if not torch.is_floating_point(prob):
        raise TypeError(f"metrics: {name} must be floating point, got {prob.dtype}")
    if prob.numel() == 0:
        return
    lo, hi = torch.aminmax(prob.detach())
    # NaN makes both comparisons false, so it is rejected here as well.
    if not (bool(lo >= 0) and bool(hi <= 1)):
        raise ValueError(
            f"metrics: {name} must lie in [0, 1] without NaN, got range [{float(lo)}, {float(hi)}]"
        )


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"metrics: {what} shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")


def binarize(prob: ArrayLike, threshold: float | ArrayLike) -> ArrayLike:
    """Predicted-particle mask ``prob >= threshold`` (same type as ``prob``; see module notes)."""
    if isinstance(prob, np.ndarray):
        dt = np.float64 if prob.dtype == np.float64 else np.float32
        return prob.astype(dt, copy=False) >= np.asarray(threshold).astype(dt)
    p = _as_tensor(prob, "prob")
    dt = _work_dtype(p)
    t = torch.as_tensor(threshold, dtype=torch.float64).to(device=p.device, dtype=dt)
    return p.to(dt) >= t


def _batched_confusion(
    prob: torch.Tensor, target: torch.Tensor, thresholds: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image tp, fp, fn, tn, each (B, K) int64, for prob/target (B, N) and ascending thresholds."""
    b, _ = prob.shape
    k = thresholds.numel()
    dt = _work_dtype(prob)
    # bucket j = number of thresholds <= p, so the pixel is predicted at threshold index i < j;
    # one pass over the pixels then serves all thresholds.
    bucket = torch.bucketize(prob.to(dt), thresholds.to(device=prob.device, dtype=dt), right=True)
    img = torch.arange(b, device=prob.device).unsqueeze(1)
    code = bucket + (k + 1) * (2 * img + target.to(torch.int64))
    hist = torch.bincount(code.reshape(-1), minlength=b * 2 * (k + 1)).reshape(b, 2, k + 1)
    # predicted at threshold i <=> bucket > i: suffix sums over buckets i+1..k
    above = torch.flip(torch.cumsum(torch.flip(hist, dims=[2]), dim=2), dims=[2])[:, :, 1:]
    neg_total = hist[:, 0].sum(dim=1, keepdim=True)
    pos_total = hist[:, 1].sum(dim=1, keepdim=True)
    fp = above[:, 0]
    tp = above[:, 1]
    return tp, fp, pos_total - tp, neg_total - fp


def _flatten_batch(prob: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    _check_same_shape(prob, target, "prob and target")
    if prob.ndim == 2:
        prob, target = prob.unsqueeze(0), target.unsqueeze(0)
    if prob.ndim != 3:
        raise ValueError(
            f"metrics: expected (H, W) or (B, H, W) input, got shape {tuple(prob.shape)}"
        )
    return prob.reshape(prob.shape[0], -1), target.reshape(target.shape[0], -1).bool()


def confusion_by_threshold(
    prob: ArrayLike, target: ArrayLike, thresholds: Sequence[float] | np.ndarray = THRESHOLDS
) -> dict[str, np.ndarray]:
    """Pooled confusion counts per threshold.

    Parameters
    ----------
    prob : (H, W) or (B, H, W) particle probabilities in [0, 1].
    target : same shape, truthy = particle.
    thresholds : ascending thresholds, (K,).

    Returns
    -------
    dict with int64 arrays ``tp, fp, fn, tn`` of shape (K,), summed over images.
    """
    p = _as_tensor(prob, "prob")
    t = _as_tensor(target, "target")
    _check_prob(p)
    p, t = _flatten_batch(p, t)
    thr = torch.tensor(np.asarray(thresholds, dtype=np.float64))
    if thr.ndim != 1 or bool((thr[1:] < thr[:-1]).any()):
        raise ValueError("metrics: thresholds must be a 1-D ascending sequence")
    tp, fp, fn, tn = _batched_confusion(p, t, thr)
    return {
        name: v.sum(dim=0).cpu().numpy()
        for name, v in (("tp", tp), ("fp", fp), ("fn", fn), ("tn", tn))
    }


# --------------------------------------------------------------------------------------------
# precision / recall / F1 / IoU
# --------------------------------------------------------------------------------------------


def _ratio(num, den, ok):
    """num/den where den > 0, else 1.0 where ``ok`` and 0.0 elsewhere (works for np and torch)."""
    if isinstance(num, torch.Tensor):
        num, den = num.to(torch.float64), den.to(torch.float64)
        safe = torch.where(den > 0, den, torch.ones_like(den))
        fallback = torch.where(ok, torch.ones_like(num), torch.zeros_like(num))
        return torch.where(den > 0, num / safe, fallback)
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, np.where(ok, 1.0, 0.0))


def prf(tp, fp, fn) -> dict:
    """Precision, recall, F1 and IoU from counts, elementwise (NumPy or torch; empty rule in module notes).

    Parameters
    ----------
    tp, fp, fn : scalars or arrays of the same shape (counts, any numeric dtype).

    Returns
    -------
    dict with float64 ``precision, recall, f1, iou`` of the broadcast shape (NumPy scalars become
    0-d arrays; torch input gives float64 tensors).
    """
    if isinstance(tp, torch.Tensor) or isinstance(fp, torch.Tensor) or isinstance(fn, torch.Tensor):
        tp, fp, fn = (torch.as_tensor(v) for v in (tp, fp, fn))
    else:
        tp, fp, fn = (np.asarray(v) for v in (tp, fp, fn))
    precision = _ratio(tp, tp + fp, fn == 0)
    recall = _ratio(tp, tp + fn, fp == 0)
    # count forms avoid 0/0 when tp = 0 and agree with 2PR/(P+R) wherever that is defined
    f1 = _ratio(2 * tp, 2 * tp + fp + fn, (fp == 0) & (fn == 0))
    iou = _ratio(tp, tp + fp + fn, (fp == 0) & (fn == 0))
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


# --------------------------------------------------------------------------------------------
# Otsu threshold
# --------------------------------------------------------------------------------------------


def otsu_thresholds(prob: torch.Tensor, nbins: int = OTSU_BINS) -> torch.Tensor:
    """Per-image Otsu thresholds, (B,) float64, for probabilities (B, H, W) or (B, N) (constant image -> 0.5).

    The histogram spans each image's own [min, max] in ``nbins`` bins; the returned threshold is
    the lower edge of the first bin of the upper class at the maximum of the between-class
    variance (the middle of the gap when empty bins make the maximum a plateau), so
    ``binarize(prob, t)`` reproduces the Otsu split. Runs on ``prob``'s device.
    """
    if prob.ndim < 2:
        raise ValueError(
            f"metrics: otsu_thresholds expects (B, ...) input, got shape {tuple(prob.shape)}"
        )
    b = prob.shape[0]
    p = prob.detach().reshape(b, -1).to(torch.float64)
    if p.shape[1] == 0:
        raise ValueError("metrics: otsu_thresholds got empty images")
    mn = p.min(dim=1, keepdim=True).values
    mx = p.max(dim=1, keepdim=True).values
    width = (mx - mn) / nbins
    constant = (mx - mn) <= 1e-12
    safe_w = torch.where(constant, torch.ones_like(width), width)
    idx = ((p - mn) / safe_w).floor().clamp_(0, nbins - 1).to(torch.int64)
    idx = idx + nbins * torch.arange(b, device=p.device).unsqueeze(1)
    # bincount without weights stays deterministic on CUDA
    hist = torch.bincount(idx.reshape(-1), minlength=b * nbins).reshape(b, nbins).to(torch.float64)
    centres = torch.arange(nbins, device=p.device, dtype=torch.float64) + 0.5
    w0 = torch.cumsum(hist, dim=1)[:, :-1]
    m0 = torch.cumsum(hist * centres, dim=1)[:, :-1]
    n = hist.sum(dim=1, keepdim=True)
    mt = (hist * centres).sum(dim=1, keepdim=True)
    w1 = n - w0
    valid = (w0 > 0) & (w1 > 0)
    denom = torch.where(valid, w0 * w1, torch.ones_like(w0))
    # between-class variance up to a positive factor: (mt*w0 - n*m0)^2 / (w0*w1)
    between = torch.where(valid, (mt * w0 - n * m0) ** 2 / denom, torch.full_like(w0, -1.0))
    k_first = torch.argmax(between, dim=1, keepdim=True)
    # empty bins between two modes give bit-identical variances; every split in that plateau
    # yields the same mask, so report the middle of the gap rather than its lower end
    k_last = (nbins - 2) - torch.argmax(torch.flip(between, dims=[1]), dim=1, keepdim=True)
    same_split = torch.gather(w0, 1, k_first) == torch.gather(w0, 1, k_last)
    edge = torch.where(
        same_split, (k_first + k_last).to(torch.float64) / 2, k_first.to(torch.float64)
    )
    thr = mn + (edge + 1) * width
    thr = torch.where(constant, torch.full_like(thr, 0.5), thr)
    return thr.squeeze(1)


def otsu_threshold(prob: ArrayLike, nbins: int = OTSU_BINS) -> float:
    """Otsu threshold of one image's particle probabilities (H, W) in [0, 1]; constant image -> 0.5."""
    p = _as_tensor(prob, "prob")
    if not torch.is_floating_point(p):
        p = p.to(torch.float64)
    return float(otsu_thresholds(p.reshape(1, -1), nbins=nbins)[0])


# --------------------------------------------------------------------------------------------
# accumulated pixel metrics
# --------------------------------------------------------------------------------------------


# Per-image scores in [0, 1] are summed as int64 fixed point (quantum 2**-40, about 1e-12) so
# that any split of the images over batches or DDP ranks gives bit-identical sums; float sums
# would depend on the addition order. int64 holds 2**23 (about 8 million) images per state.
_FIXED_SCALE = 2.0**40


def _fixed(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x.to(torch.float64) * _FIXED_SCALE).to(torch.int64)


def _unfixed(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64) / _FIXED_SCALE


class PixelThresholdMetrics(Metric):
    """Pixel precision/recall/F1/IoU at fixed thresholds and at each image's Otsu threshold.

    ``update(prob, target)`` takes particle probabilities (B, H, W) in [0, 1] and a target
    (B, H, W) (bool or int, nonzero = particle). Every state is an int64 sum (per-image scores in
    fixed point, resolution about 1e-12), so a DDP all-reduce, ``merge_state`` or any batching
    gives bit-identical results to a single process.

    ``compute()`` returns a dict of tensors (float64; counts int64). Per-threshold entries, (K,):
    ``threshold, precision, recall, f1, iou`` (pooled over all pixels), ``tp, fp, fn, tn``,
    ``precision_mean, recall_mean, iou_mean, f1_mean, f1_std`` (over images). Scalars:
    ``otsu_precision, otsu_recall, otsu_f1, otsu_iou`` (pooled at each image's own Otsu
    threshold), ``otsu_precision_mean, otsu_recall_mean, otsu_iou_mean, otsu_f1_mean,
    otsu_f1_std`` (over images), ``mean_otsu_threshold``, ``n_images``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, thresholds: Sequence[float] | np.ndarray = THRESHOLDS, **kwargs) -> None:
        super().__init__(**kwargs)
        thr = np.asarray(thresholds, dtype=np.float64)
        if thr.ndim != 1 or thr.size == 0 or np.any(np.diff(thr) < 0):
            raise ValueError(
                "PixelThresholdMetrics: thresholds must be a non-empty ascending 1-D sequence"
            )
        if thr[0] < 0 or thr[-1] > 1:
            raise ValueError("PixelThresholdMetrics: thresholds must lie in [0, 1]")
        self.thresholds = torch.from_numpy(thr.copy())
        k = thr.size
        for name in ("tp", "fp", "fn", "tn"):
            self.add_state(name, torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(f"otsu_{name}", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        for name in ("precision", "recall", "iou", "f1"):
            self.add_state(f"{name}_sum", torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")
            self.add_state(
                f"otsu_{name}_sum", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum"
            )
        self.add_state("f1_sqsum", torch.zeros(k, dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state("otsu_f1_sqsum", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        self.add_state(
            "otsu_threshold_sum", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum"
        )
        self.add_state("n_images", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        """Accumulate a batch: prob (B, H, W) float in [0, 1], target (B, H, W) bool/int."""
        _check_prob(prob)
        p, t = _flatten_batch(prob.detach(), target.detach())
        if p.shape[0] == 0 or p.shape[1] == 0:
            return
        tp, fp, fn, tn = _batched_confusion(p, t, self.thresholds)
        self.tp += tp.sum(0)
        self.fp += fp.sum(0)
        self.fn += fn.sum(0)
        self.tn += tn.sum(0)
        per = prf(tp, fp, fn)
        for name in ("precision", "recall", "iou", "f1"):
            getattr(self, f"{name}_sum").add_(_fixed(per[name]).sum(0))
        self.f1_sqsum += _fixed(per["f1"] ** 2).sum(0)

        ot = otsu_thresholds(p)
        pred = binarize(p, ot.unsqueeze(1))
        otp = (pred & t).sum(1)
        ofp = pred.sum(1) - otp
        ofn = (tp[:, 0] + fn[:, 0]) - otp  # threshold 0 sees every positive
        otn = p.shape[1] - otp - ofp - ofn
        self.otsu_tp += otp.sum()
        self.otsu_fp += ofp.sum()
        self.otsu_fn += ofn.sum()
        self.otsu_tn += otn.sum()
        oper = prf(otp, ofp, ofn)
        for name in ("precision", "recall", "iou", "f1"):
            getattr(self, f"otsu_{name}_sum").add_(_fixed(oper[name]).sum())
        self.otsu_f1_sqsum += _fixed(oper["f1"] ** 2).sum()
        self.otsu_threshold_sum += _fixed(ot).sum()
        self.n_images += p.shape[0]

    def compute(self) -> dict[str, torch.Tensor]:
        """Pooled and per-image-mean scores; see the class docstring for the keys."""
        n = self.n_images.to(torch.float64)
        safe_n = torch.clamp(n, min=1.0)
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=n.device)

        def mean(s: torch.Tensor) -> torch.Tensor:
            return torch.where(n > 0, _unfixed(s) / safe_n, nan)

        def std(s: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
            var = torch.clamp(_unfixed(sq) / safe_n - (_unfixed(s) / safe_n) ** 2, min=0.0)
            return torch.where(n > 0, torch.sqrt(var), nan)

        out: dict[str, torch.Tensor] = {"threshold": self.thresholds.to(n.device)}
        out.update(prf(self.tp, self.fp, self.fn))
        for name in ("tp", "fp", "fn", "tn"):
            out[name] = getattr(self, name)
        for name in ("precision", "recall", "iou", "f1"):
            out[f"{name}_mean"] = mean(getattr(self, f"{name}_sum"))
        out["f1_std"] = std(self.f1_sum, self.f1_sqsum)
        for key, val in prf(self.otsu_tp, self.otsu_fp, self.otsu_fn).items():
            out[f"otsu_{key}"] = val
        for name in ("precision", "recall", "iou", "f1"):
            out[f"otsu_{name}_mean"] = mean(getattr(self, f"otsu_{name}_sum"))
        out["otsu_f1_std"] = std(self.otsu_f1_sum, self.otsu_f1_sqsum)
        out["mean_otsu_threshold"] = mean(self.otsu_threshold_sum)
        out["n_images"] = n
        return out


_CURVE_COLUMNS = (
    "threshold",
    "precision",
    "recall",
    "f1",
    "iou",
    "precision_mean",
    "recall_mean",
    "iou_mean",
    "f1_mean",
    "f1_std",
    "tp",
    "fp",
    "fn",
    "tn",
)


def curves_dataframe(result: dict[str, torch.Tensor]) -> pd.DataFrame:
    """One row per threshold from ``PixelThresholdMetrics.compute()`` output (columns as in compute)."""
    missing = [c for c in _CURVE_COLUMNS if c not in result]
    if missing:
        raise KeyError(f"metrics: curves_dataframe input lacks {missing}")
    cols = {}
    for c in _CURVE_COLUMNS:
        v = result[c]
        cols[c] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
    return pd.DataFrame(cols)


def scalar_items(result: dict[str, torch.Tensor]) -> dict[str, float]:
    """The 0-d entries of a metrics result as Python floats (ready for ``log_dict``)."""
    out = {}
    for key, v in result.items():
        if isinstance(v, torch.Tensor) and v.ndim == 0:
            out[key] = float(v)
        elif isinstance(v, int | float | np.floating | np.integer):
            out[key] = float(v)
    return out
