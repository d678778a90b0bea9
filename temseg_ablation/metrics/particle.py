"""Particle-level accuracy measures: instance matching, size-binned detection, boundary F1, size distributions.

Conventions
-----------
* Predicted particles are the 8-connected components of the predicted mask (diagonal
  neighbours join), after dropping components smaller than ``min_size_px`` (speck filter).
* True particles are the nonzero labels of ``true_labels``; a label is one particle even if its
  pixels are not connected. A bool mask is accepted instead and labelled with 8-connectivity.
* A predicted and a true particle match when their IoU >= ``iou_threshold``. Matching is
  one-to-one, greedy by descending IoU (ties broken by lower predicted then lower true index);
  for thresholds above 0.5 every candidate pair is already unique.
* Equivalent diameter is ``sqrt(4 * area / pi)``; in nm when a pixel size is given.
* Size bins are half-open ``[lo, hi)`` in nm. True particles are binned by their true diameter
  (for recall), predicted particles by their predicted diameter (for precision).
* Empty cases follow :func:`temseg_ablation.metrics.pixel.prf`: a ratio with a zero
  denominator is 1.0 when there was nothing to get wrong and 0.0 otherwise.
* Boundary pixels are mask pixels with a non-mask pixel among their 8 neighbours; the image
  border is not a boundary. A boundary pixel is hit when the other mask's boundary lies within
  Euclidean distance ``tolerance_px``.
* Small-particle recall (``recall_small``) counts only true particles whose equivalent diameter
  is below ``small_diameter_nm`` *and* that do not touch the frame (no pixel on the image
  edge): a clipped particle's visible area understates its true size, so the frame would
  otherwise move large particles into the small bin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.stats import ks_2samp, wasserstein_distance
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .edges import boundary_hits, boundary_pixels
from .matching import (  # MatchResult, label_instances re-exported
    MatchResult,
    _float_vector,
    _to_numpy,
    label_instances,
    match_particles,
)
from .pixel import prf

__all__ = [
    "SIZE_BINS_NM",
    "size_bin_names",
    "MatchResult",
    "label_instances",
    "match_particles",
    "binned_detection_counts",
    "binned_scores",
    "boundary_f1",
    "touches_frame",
    "small_recall_counts",
    "size_distribution_distance",
    "ParticleMetrics",
]

#: Diameter bin edges in nm; the first bin (below 2.5 nm) holds the faint 1-2 nm particles.
SIZE_BINS_NM: tuple[float, ...] = (0.0, 2.5, 4.0, 7.0, math.inf)



def size_bin_names(bins_nm: Sequence[float] = SIZE_BINS_NM) -> tuple[str, ...]:
    """Metric-name-safe bin names, e.g. ``0to2p5nm``, ``7toinfnm`` (one per bin)."""
    edges = _check_bins(bins_nm)

    def fmt(v: float) -> str:
        return "inf" if math.isinf(v) else f"{v:g}".replace(".", "p")

    return tuple(f"{fmt(lo)}to{fmt(hi)}nm" for lo, hi in zip(edges[:-1], edges[1:], strict=True))


def _check_bins(bins_nm: Sequence[float]) -> np.ndarray:
    edges = np.asarray(bins_nm, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or edges[0] < 0:
        raise ValueError(
            f"particle_metrics: size bins must be >= 2 increasing edges >= 0, got {bins_nm}"
        )
    return edges




def _bin_index(diam_nm: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each diameter, -1 when outside [edges[0], edges[-1])."""
    idx = np.searchsorted(edges, diam_nm, side="right") - 1
    idx[(idx < 0) | (idx >= edges.size - 1)] = -1
    return idx


def binned_detection_counts(
    result: MatchResult, bins_nm: Sequence[float] = SIZE_BINS_NM
) -> dict[str, np.ndarray]:
    """Per-bin counts, int64 (n_bins,): ``true_total, true_matched`` (by true diameter), ``pred_total, pred_matched`` (by predicted diameter)."""
    if result.true_diameter_nm is None or result.pred_diameter_nm is None:
        raise ValueError("particle_metrics: size bins need match_particles(..., pixel_size_nm=...)")
    edges = _check_bins(bins_nm)
    nb = edges.size - 1

    def count(idx: np.ndarray, flags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ok = idx >= 0
        total = np.bincount(idx[ok], minlength=nb)
        hit = np.bincount(idx[ok & flags], minlength=nb)
        return total.astype(np.int64), hit.astype(np.int64)

    t_tot, t_hit = count(_bin_index(result.true_diameter_nm, edges), result.true_matched)
    p_tot, p_hit = count(_bin_index(result.pred_diameter_nm, edges), result.pred_matched)
    return {"true_total": t_tot, "true_matched": t_hit, "pred_total": p_tot, "pred_matched": p_hit}


def _ratio(num: np.ndarray, den: np.ndarray, ok: np.ndarray) -> np.ndarray:
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(ok, 1.0, 0.0))


def binned_scores(counts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-bin ``precision, recall, f1`` (float64 arrays) from :func:`binned_detection_counts` (or summed) counts."""
    t_tot, t_hit = np.asarray(counts["true_total"]), np.asarray(counts["true_matched"])
    p_tot, p_hit = np.asarray(counts["pred_total"]), np.asarray(counts["pred_matched"])
    missed = t_tot - t_hit
    spurious = p_tot - p_hit
    precision = _ratio(p_hit, p_tot, missed == 0)
    recall = _ratio(t_hit, t_tot, spurious == 0)
    s = precision + recall
    f1 = np.where(s > 0, 2 * precision * recall / np.where(s > 0, s, 1.0), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1}


def touches_frame(labels: np.ndarray, n: int) -> np.ndarray:
    """Bool (n,): whether compact label 1..n has a pixel on the image edge (first/last row/column)."""
    frame = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).astype(np.int64)
    return np.bincount(frame, minlength=n + 1)[1 : n + 1] > 0


def small_recall_counts(result: MatchResult, small_diameter_nm: float = 2.5) -> tuple[int, int]:
    """(eligible, matched) true particles for ``recall_small``: diameter < limit, off the frame."""
    if result.true_diameter_nm is None or result.true_labels is None:
        raise ValueError("particle_metrics: small recall needs match_particles(..., pixel_size_nm=...)")
    eligible = (result.true_diameter_nm < small_diameter_nm) & ~touches_frame(
        result.true_labels, result.n_true)
    return int(eligible.sum()), int((eligible & result.true_matched).sum())


_boundary = boundary_pixels


def _disk(r: int) -> np.ndarray:
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return x * x + y * y <= r * r


def _near(boundary: np.ndarray, tolerance_px: int) -> np.ndarray:
    if tolerance_px == 0 or not boundary.any():
        return boundary
    # dilation only inside the bounding box (plus margin) of the boundary keeps large, sparse frames cheap
    rows = np.flatnonzero(boundary.any(axis=1))
    cols = np.flatnonzero(boundary.any(axis=0))
    r0, r1 = max(rows[0] - tolerance_px, 0), min(rows[-1] + tolerance_px + 1, boundary.shape[0])
    c0, c1 = max(cols[0] - tolerance_px, 0), min(cols[-1] + tolerance_px + 1, boundary.shape[1])
    out = np.zeros_like(boundary)
    out[r0:r1, c0:c1] = ndimage.binary_dilation(
        boundary[r0:r1, c0:c1], structure=_disk(tolerance_px)
    )
    return out


def boundary_f1(
    pred_mask: np.ndarray, true_mask: np.ndarray, tolerance_px: int = 2
) -> dict[str, float | int]:
    """Boundary precision / recall / F1 with a pixel tolerance, plus the summable counts.

    Parameters
    ----------
    pred_mask, true_mask : bool (H, W) (true instance labels are also accepted; nonzero = particle).
    tolerance_px : Euclidean tolerance in pixels (integer >= 0).

    Returns
    -------
    dict with ``precision, recall, f1`` (floats) and ``pred_boundary, pred_hit, true_boundary,
    true_hit`` (ints): boundary pixel counts and how many lie within tolerance of the other boundary.
    """
    pred = _to_numpy(pred_mask, "pred_mask").astype(bool, copy=False)
    true = _to_numpy(true_mask, "true_mask").astype(bool, copy=False)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(
            f"particle_metrics: boundary_f1 needs equal 2-D shapes, got {pred.shape} and {true.shape}"
        )
    if tolerance_px < 0 or int(tolerance_px) != tolerance_px:
        raise ValueError(
            f"particle_metrics: tolerance_px must be an integer >= 0, got {tolerance_px}"
        )
    tol = int(tolerance_px)
    pb, tb = _boundary(pred), _boundary(true)
    pred_hit = int((pb & _near(tb, tol)).sum())
    true_hit = int((tb & _near(pb, tol)).sum())
    counts = {
        "pred_boundary": int(pb.sum()),
        "pred_hit": pred_hit,
        "true_boundary": int(tb.sum()),
        "true_hit": true_hit,
    }
    return {**_boundary_scores(**counts), **counts}


def _boundary_scores(
    pred_boundary: int, pred_hit: int, true_boundary: int, true_hit: int
) -> dict[str, float]:
    precision = float(_ratio(pred_hit, pred_boundary, true_boundary - true_hit == 0))
    recall = float(_ratio(true_hit, true_boundary, pred_boundary - pred_hit == 0))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def size_distribution_distance(pred_diam: np.ndarray, true_diam: np.ndarray) -> dict[str, float]:
    """1-D Wasserstein distance (units of the input) and two-sample KS statistic between diameter samples.

    Both empty -> 0.0 and 0.0; exactly one empty -> NaN and NaN.
    """
    p = _float_vector(pred_diam)
    t = _float_vector(true_diam)
    if p.size == 0 and t.size == 0:
        return {"wasserstein": 0.0, "ks": 0.0}
    if p.size == 0 or t.size == 0:
        return {"wasserstein": float("nan"), "ks": float("nan")}
    if not (np.all(np.isfinite(p)) and np.all(np.isfinite(t))):
        raise ValueError("particle_metrics: diameters must be finite")
    return {"wasserstein": float(wasserstein_distance(p, t)), "ks": float(ks_2samp(p, t).statistic)}


# Diameter errors (nm) and their squares are summed as int64 fixed point with quantum 2**-24
# (about 6e-8 nm); int64 then holds sums up to about 5e11 nm^2.
_FIXED_SCALE = 2.0**24


def _fixed_sum(x: np.ndarray) -> int:
    return int(np.round(np.asarray(x, dtype=np.float64) * _FIXED_SCALE).astype(np.int64).sum())


class ParticleMetrics(Metric):
    """Accumulated particle-level scores; per-image work runs on CPU with NumPy / scikit-image.

    ``update(pred_mask, true_labels, pixel_size_nm)``: pred_mask (B, H, W) bool, true_labels
    (B, H, W) int instance labels (or bool mask), pixel_size_nm a float or (B,) tensor/array.
    Counts are int64 sum states (diameter errors in fixed point, resolution about 6e-8 nm) and
    the diameter samples are float32 ``cat`` states, so DDP gives the single-process answer. ``compute()`` returns a flat dict of floats: ``det_precision,
    det_recall, det_f1``, ``recall_<bin>, precision_<bin>, f1_<bin>`` (bin names from
    :func:`size_bin_names`), ``diam_mae_nm, diam_bias_nm, diam_rmse_nm`` (matched pairs,
    predicted minus true; NaN without pairs), ``size_wasserstein_nm, size_ks``,
    ``boundary_precision, boundary_recall, boundary_f1`` (at ``boundary_tolerance_px``),
    ``boundary_f1_<t>px`` for each of ``boundary_tolerances_px``, ``recall_small`` (true
    particles below ``small_diameter_nm`` that do not touch the frame; NaN without any) and
    ``n_true_small``, ``n_true, n_pred, n_matched, n_images``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        iou_threshold: float = 0.5,
        min_size_px: int = 0,
        size_bins_nm: Sequence[float] = SIZE_BINS_NM,
        boundary_tolerance_px: int = 2,
        boundary_tolerances_px: Sequence[int] = (1, 2, 3),
        small_diameter_nm: float = 2.5,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if not 0 < iou_threshold <= 1:
            raise ValueError(
                f"ParticleMetrics: iou_threshold must be in (0, 1], got {iou_threshold}"
            )
        if min_size_px < 0 or boundary_tolerance_px < 0:
            raise ValueError("ParticleMetrics: min_size_px and boundary_tolerance_px must be >= 0")
        self.iou_threshold = float(iou_threshold)
        self.min_size_px = int(min_size_px)
        self.size_bins_nm = tuple(float(v) for v in _check_bins(size_bins_nm))
        self.bin_names = size_bin_names(self.size_bins_nm)
        self.boundary_tolerance_px = int(boundary_tolerance_px)
        self.boundary_tolerances_px = tuple(int(t) for t in boundary_tolerances_px)
        if any(t < 0 for t in self.boundary_tolerances_px):
            raise ValueError("ParticleMetrics: boundary tolerances must be >= 0")
        self.small_diameter_nm = float(small_diameter_nm)
        nb = len(self.bin_names)
        for name in ("tp", "fp", "fn", "n_images", "n_pairs"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        for name in ("true_total", "true_matched", "pred_total", "pred_matched"):
            self.add_state(f"bin_{name}", torch.zeros(nb, dtype=torch.int64), dist_reduce_fx="sum")
        for name in ("pred_boundary", "pred_hit", "true_boundary", "true_hit"):
            self.add_state(f"b_{name}", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
            for t in self.boundary_tolerances_px:
                self.add_state(f"b{t}_{name}", torch.zeros((), dtype=torch.int64),
                               dist_reduce_fx="sum")
        for name in ("small_total", "small_matched"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        # fixed-point int64 sums: bit-identical under any split over batches or ranks
        for name in ("err_sum", "abs_err_sum", "sq_err_sum"):
            self.add_state(name, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")
        # float32 matches the empty placeholder torchmetrics gathers from ranks that saw no data
        self.add_state("pred_diam_nm", [], dist_reduce_fx="cat")
        self.add_state("true_diam_nm", [], dist_reduce_fx="cat")

    def update(self, pred_mask, true_labels, pixel_size_nm) -> None:
        """Accumulate a batch (see the class docstring for shapes)."""
        pred = _to_numpy(pred_mask, "pred_mask")
        true = _to_numpy(true_labels, "true_labels")
        if pred.ndim == 2:
            pred, true = pred[None], true[None]
        if pred.shape != true.shape or pred.ndim != 3:
            raise ValueError(
                f"ParticleMetrics: pred_mask and true_labels must be equal (B, H, W), got {pred.shape} and {true.shape}"
            )
        b = pred.shape[0]
        px = _float_vector(pixel_size_nm)
        if px.size == 1:
            px = np.repeat(px, b)
        if px.size != b:
            raise ValueError(f"ParticleMetrics: got {px.size} pixel sizes for {b} images")
        if not np.all(np.isfinite(px) & (px > 0)):
            raise ValueError(f"ParticleMetrics: pixel sizes must be positive, got {px}")

        tp = fp = fn = pairs = 0
        nb = len(self.bin_names)
        binc = {
            k: np.zeros(nb, dtype=np.int64)
            for k in ("true_total", "true_matched", "pred_total", "pred_matched")
        }
        bnames = ("pred_boundary", "pred_hit", "true_boundary", "true_hit")
        tols = sorted({self.boundary_tolerance_px, *self.boundary_tolerances_px})
        bcount = {t: dict.fromkeys(bnames, 0) for t in tols}
        small = [0, 0]
        err = []
        pd_list, td_list = [], []
        for i in range(b):
            r = match_particles(
                pred[i], true[i], self.iou_threshold, self.min_size_px, float(px[i])
            )
            tp, fp, fn, pairs = tp + r.tp, fp + r.fp, fn + r.fn, pairs + r.tp
            for k, v in binned_detection_counts(r, self.size_bins_nm).items():
                binc[k] += v
            # boundary F1 sees the speck-filtered prediction, like the detection scores; one
            # distance transform per boundary serves every tolerance
            hits = boundary_hits(r.pred_labels > 0, true[i] != 0, tols)
            for t in tols:
                for k in bnames:
                    bcount[t][k] += hits[t][k]
            st, sm = small_recall_counts(r, self.small_diameter_nm)
            small[0] += st
            small[1] += sm
            err.append(r.diameter_error)
            pd_list.append(r.pred_diameter_nm)
            td_list.append(r.true_diameter_nm)

        dev = self.tp.device
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.n_pairs += pairs
        self.n_images += b
        for k, v in binc.items():
            getattr(self, f"bin_{k}").add_(torch.as_tensor(v, device=dev))
        for k in bnames:
            getattr(self, f"b_{k}").add_(bcount[self.boundary_tolerance_px][k])
            for t in self.boundary_tolerances_px:
                getattr(self, f"b{t}_{k}").add_(bcount[t][k])
        self.small_total += small[0]
        self.small_matched += small[1]
        e = np.concatenate(err) if err else np.zeros(0)
        self.err_sum += _fixed_sum(e)
        self.abs_err_sum += _fixed_sum(np.abs(e))
        self.sq_err_sum += _fixed_sum(e * e)
        self.pred_diam_nm.append(
            torch.as_tensor(np.concatenate(pd_list), dtype=torch.float32, device=dev)
        )
        self.true_diam_nm.append(
            torch.as_tensor(np.concatenate(td_list), dtype=torch.float32, device=dev)
        )

    @staticmethod
    def _cat(state) -> np.ndarray:
        if isinstance(state, list):
            if len(state) == 0:
                return np.zeros(0)
            state = dim_zero_cat(state)
        return state.detach().cpu().to(torch.float64).numpy().ravel()

    def compute(self) -> dict[str, float]:
        """Flat dict of floats (keys in the class docstring)."""
        det = prf(int(self.tp), int(self.fp), int(self.fn))
        out: dict[str, float] = {
            "det_precision": float(det["precision"]),
            "det_recall": float(det["recall"]),
            "det_f1": float(det["f1"]),
        }
        scores = binned_scores(
            {
                k: getattr(self, f"bin_{k}").cpu().numpy()
                for k in ("true_total", "true_matched", "pred_total", "pred_matched")
            }
        )
        for j, name in enumerate(self.bin_names):
            out[f"recall_{name}"] = float(scores["recall"][j])
            out[f"precision_{name}"] = float(scores["precision"][j])
            out[f"f1_{name}"] = float(scores["f1"][j])
        n = int(self.n_pairs)
        nan = float("nan")
        out["diam_mae_nm"] = int(self.abs_err_sum) / _FIXED_SCALE / n if n else nan
        out["diam_bias_nm"] = int(self.err_sum) / _FIXED_SCALE / n if n else nan
        out["diam_rmse_nm"] = math.sqrt(int(self.sq_err_sum) / _FIXED_SCALE / n) if n else nan
        dist = size_distribution_distance(
            self._cat(self.pred_diam_nm), self._cat(self.true_diam_nm)
        )
        out["size_wasserstein_nm"] = dist["wasserstein"]
        out["size_ks"] = dist["ks"]
        bs = _boundary_scores(
            int(self.b_pred_boundary),
            int(self.b_pred_hit),
            int(self.b_true_boundary),
            int(self.b_true_hit),
        )
        out["boundary_precision"] = bs["precision"]
        out["boundary_recall"] = bs["recall"]
        out["boundary_f1"] = bs["f1"]
        for t in self.boundary_tolerances_px:
            bt = _boundary_scores(*(int(getattr(self, f"b{t}_{k}")) for k in
                                    ("pred_boundary", "pred_hit", "true_boundary", "true_hit")))
            out[f"boundary_f1_{t}px"] = bt["f1"]
        st = int(self.small_total)
        out["recall_small"] = int(self.small_matched) / st if st else nan
        out["n_true_small"] = float(st)
        out["n_true"] = float(int(self.tp) + int(self.fn))
        out["n_pred"] = float(int(self.tp) + int(self.fp))
        out["n_matched"] = float(n)
        out["n_images"] = float(int(self.n_images))
        return out
