"""Instance matching: predicted components against true particle labels, one-to-one by IoU.

Conventions are those listed in :mod:`temseg_ablation.metrics.particle`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..data.components import label_components

__all__ = ["MatchResult", "compact_labels", "label_instances", "match_particles"]

# beyond this many (pred+1)*(true+1) cells the overlap table is built sparsely with np.unique
_DENSE_OVERLAP_LIMIT = 4_000_000


def _to_numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        return x
    raise TypeError(
        f"particle_metrics: {name} must be a numpy array or torch tensor, got {type(x).__name__}"
    )


def _float_vector(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel nonzero labels to 1..n in increasing order, 0 stays background; (int64 labels, n).

    A lookup table from one ``bincount`` when the largest label is not far above the pixel
    count (no sort: ``np.unique`` costs a full argsort per frame), else ``np.unique``.
    """
    if labels.size == 0:
        return labels.astype(np.int64), 0
    if labels.min() < 0:
        raise ValueError("metrics: instance labels must be >= 0")
    lab = labels.astype(np.int64, copy=False)
    top = int(lab.max())
    if top <= 4 * lab.size + 16:
        present = np.bincount(lab.ravel(), minlength=top + 1) > 0
        present[0] = False
        mapping = np.cumsum(present) * present
        return mapping[lab], int(present.sum())
    uniq, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(lab.shape)
    if uniq[0] != 0:
        inv = inv + 1
    return inv.astype(np.int64), int((uniq != 0).sum())


def label_instances(mask: np.ndarray, min_size_px: int = 0) -> tuple[np.ndarray, int]:
    """8-connected components of a bool (H, W) mask with components below ``min_size_px`` removed.

    Returns (labels int64 (H, W) with 0 = background and 1..n particles, n).
    """
    if mask.ndim != 2:
        raise ValueError(f"particle_metrics: expected a 2-D mask, got shape {mask.shape}")
    lab, n = label_components(mask, min_size_px=min_size_px, connectivity=2)
    return lab.astype(np.int64, copy=False), n


@dataclass
class MatchResult:
    """Outcome of :func:`match_particles` for one image.

    Arrays indexed by particle are 0-based (particle label minus one). ``diameter_error`` is
    predicted minus true equivalent diameter per matched pair, in ``unit`` ("nm" or "px").
    """

    tp: int
    fp: int
    fn: int
    true_area_px: np.ndarray
    pred_area_px: np.ndarray
    true_diameter_px: np.ndarray
    pred_diameter_px: np.ndarray
    true_matched: np.ndarray
    pred_matched: np.ndarray
    pair_true: np.ndarray
    pair_pred: np.ndarray
    pair_iou: np.ndarray
    diameter_error: np.ndarray
    unit: str
    pixel_size_nm: float | None = None
    true_diameter_nm: np.ndarray | None = None
    pred_diameter_nm: np.ndarray | None = None
    pred_labels: np.ndarray | None = field(default=None, repr=False)
    true_labels: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_true(self) -> int:
        """Number of true particles."""
        return int(self.true_area_px.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted particles (after the speck filter)."""
        return int(self.pred_area_px.size)

    @property
    def true_diameter(self) -> np.ndarray:
        """True diameters in ``unit``."""
        return self.true_diameter_nm if self.unit == "nm" else self.true_diameter_px

    @property
    def pred_diameter(self) -> np.ndarray:
        """Predicted diameters in ``unit``."""
        return self.pred_diameter_nm if self.unit == "nm" else self.pred_diameter_px


def _equivalent_diameter(area: np.ndarray) -> np.ndarray:
    return np.sqrt(4.0 * area.astype(np.float64) / np.pi)


def match_particles(
    pred_mask: np.ndarray,
    true_labels: np.ndarray,
    iou_threshold: float = 0.5,
    min_size_px: int = 0,
    pixel_size_nm: float | None = None,
) -> MatchResult:
    """Match predicted components to true instances one-to-one by IoU (see module notes).

    Parameters
    ----------
    pred_mask : bool (H, W) predicted particle mask.
    true_labels : int (H, W) instance labels, 0 = background (bool mask also accepted).
    iou_threshold : minimum IoU for a match, in (0, 1].
    min_size_px : predicted components with fewer pixels are dropped first.
    pixel_size_nm : nm per pixel; when given, diameters and errors are also in nm.
    """
    pred = _to_numpy(pred_mask, "pred_mask")
    true = _to_numpy(true_labels, "true_labels")
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(
            f"particle_metrics: pred_mask and true_labels must be equal 2-D shapes, got {pred.shape} and {true.shape}"
        )
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"particle_metrics: iou_threshold must be in (0, 1], got {iou_threshold}")
    if pixel_size_nm is not None and not (math.isfinite(pixel_size_nm) and pixel_size_nm > 0):
        raise ValueError(
            f"particle_metrics: pixel_size_nm must be a positive number, got {pixel_size_nm}"
        )

    pl, n_pred = label_instances(pred, min_size_px)
    if true.dtype == bool:
        tl, n_true = label_instances(true)
    else:
        if not np.issubdtype(true.dtype, np.integer):
            raise TypeError(
                f"particle_metrics: true_labels must be integer or bool, got {true.dtype}"
            )
        tl, n_true = compact_labels(true)

    pred_area = np.bincount(pl.ravel(), minlength=n_pred + 1)[1:]
    true_area = np.bincount(tl.ravel(), minlength=n_true + 1)[1:]

    both = (pl > 0) & (tl > 0)
    stride = n_true + 1
    if (n_pred + 1) * stride <= _DENSE_OVERLAP_LIMIT:
        table = np.bincount(pl[both] * stride + tl[both], minlength=(n_pred + 1) * stride)
        codes = np.flatnonzero(table)
        inter = table[codes]
    else:
        codes, inter = np.unique(pl[both] * stride + tl[both], return_counts=True)
    p_idx = codes // stride - 1
    t_idx = codes % stride - 1
    iou = inter / (pred_area[p_idx] + true_area[t_idx] - inter)

    cand = np.flatnonzero(iou >= iou_threshold)
    order = cand[np.lexsort((t_idx[cand], p_idx[cand], -iou[cand]))]
    pred_matched = np.zeros(n_pred, dtype=bool)
    true_matched = np.zeros(n_true, dtype=bool)
    pairs = []
    # the candidate list is short (at most about one pair per particle), so a loop is cheap
    for c in order:
        i, j = p_idx[c], t_idx[c]
        if not pred_matched[i] and not true_matched[j]:
            pred_matched[i] = True
            true_matched[j] = True
            pairs.append(c)
    pairs = np.asarray(pairs, dtype=np.int64)
    pair_pred = p_idx[pairs]
    pair_true = t_idx[pairs]

    true_d = _equivalent_diameter(true_area)
    pred_d = _equivalent_diameter(pred_area)
    if pixel_size_nm is not None:
        true_nm, pred_nm, unit = true_d * pixel_size_nm, pred_d * pixel_size_nm, "nm"
        err = pred_nm[pair_pred] - true_nm[pair_true]
    else:
        true_nm = pred_nm = None
        unit = "px"
        err = pred_d[pair_pred] - true_d[pair_true]
    tp = int(pairs.size)
    return MatchResult(
        tp=tp,
        fp=n_pred - tp,
        fn=n_true - tp,
        true_area_px=true_area,
        pred_area_px=pred_area,
        true_diameter_px=true_d,
        pred_diameter_px=pred_d,
        true_matched=true_matched,
        pred_matched=pred_matched,
        pair_true=pair_true,
        pair_pred=pair_pred,
        pair_iou=iou[pairs].astype(np.float64),
        diameter_error=err,
        unit=unit,
        pixel_size_nm=pixel_size_nm,
        true_diameter_nm=true_nm,
        pred_diameter_nm=pred_nm,
        pred_labels=pl,
        true_labels=tl,
    )
