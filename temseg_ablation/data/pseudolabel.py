"""Classical automated training-set generation ("pseudo-labelling") of TEM particle frames.

Pipeline (paper's parameters as defaults): polarity so particles are dark -> normalise to
[0, 1] -> Gaussian (sigma 2 px) -> normalise -> border reconstruction by dilation (r, removes
bright domes) -> border reconstruction by erosion of r (r1, fills dark basins, i.e. estimates
the background) -> d = |r - r1| -> normalise(d + sobel(d)) -> opening (disk r = 5) ->
normalise -> Otsu threshold.

`pseudo_label` is the fast path (exact linear-time reconstructions and a run-based disk
opening from `_morph`); `pseudo_label_reference` is the plain scikit-image version used as
the yardstick. Both give identical masks. Parameters and their nm -> px scaling live in
`pseudolabel_params` (re-exported here); batch labelling of files in `label_folder`.
With ``split_touching`` the mask has touching particles cut apart and
`pseudo_label_instances` returns their labels (see `instances`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .components import label_components
from .pseudolabel_params import (  # re-exported: the pseudo-labelling API in one import
    ESTIMATE_SCALE_MODES,
    PIPELINE_VERSION,
    PseudoLabelParams,
    ScaleUsed,
    params_for_scale,
    resolve_params,
)

__all__ = [
    "PIPELINE_VERSION",
    "PseudoLabelParams",
    "ScaleUsed",
    "ESTIMATE_SCALE_MODES",
    "resolve_params",
    "params_for_scale",
    "pseudo_label",
    "pseudo_label_instances",
    "pseudo_label_reference",
    "pseudo_label_stages",
    "score_against_truth",
]


# ---------------------------------------------------------------------------------------------
# shared small steps (identical in both paths so only the heavy steps differ)


def _validated(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"pseudo_label needs a 2-D image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError("pseudo_label got an empty image")
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)
            or image.dtype == bool):
        raise ValueError(f"pseudo_label needs a real-valued image, got dtype {image.dtype}")
    x = np.array(image, dtype=np.float64)  # always a private float64 copy
    if not np.all(np.isfinite(x)):
        raise ValueError(f"image has {int(np.count_nonzero(~np.isfinite(x)))} non-finite values")
    if x.max() == x.min():
        raise ValueError(f"image is constant (all pixels = {x.flat[0]!r}); nothing to label")
    return x


def _normalise(x: np.ndarray) -> np.ndarray | None:
    """(x - min) / (max - min), or None when x is constant."""
    lo = x.min()
    hi = x.max()
    if not hi > lo:
        return None
    return (x - lo) / (hi - lo)


def _prepared(x: np.ndarray, params: PseudoLabelParams) -> np.ndarray:
    """Polarity, normalise, Gaussian, normalise, on an image that passed `_validated`."""
    from skimage.filters import gaussian

    if params.particles == "bright":
        x = -x
    x = _normalise(x)
    if params.sigma > 0:
        x = gaussian(x, sigma=params.sigma)
    g = _normalise(x)
    if g is None:
        raise ValueError("image is constant after Gaussian smoothing; nothing to label")
    return g


def _edge_enhanced(d: np.ndarray, params: PseudoLabelParams) -> np.ndarray | None:
    from skimage.filters import sobel

    if params.sobel_weight > 0:
        d = d + params.sobel_weight * sobel(d)
    return _normalise(d)


def _thresholded(
    o: np.ndarray | None, params: PseudoLabelParams
) -> tuple[np.ndarray | None, float]:
    from skimage.filters import threshold_otsu

    if o is None:  # no signal at all: nothing is a particle
        return None, float("nan")
    thr = float(threshold_otsu(o)) if params.threshold == "otsu" else float(params.threshold)
    return o > thr, thr


def _remove_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1 or not mask.any():
        return mask
    return label_components(mask, min_size, connectivity=2)[0] > 0


# ---------------------------------------------------------------------------------------------
# public pipeline


def _split(
    mask: np.ndarray, params: PseudoLabelParams, depth: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(instance labels, mask with the contacts between instances cut) for pixel parameters; depth: the basin depth (background-corrected intensity, particles high)."""
    from .instances import separate_instances, split_touching

    labels = split_touching(
        mask, params.split_min_distance, intensity=depth if params.split_by == "intensity" else None
    )
    cut = separate_instances(labels)
    return np.where(cut, labels, 0).astype(np.int32), cut


def pseudo_label_stages(
    image: np.ndarray,
    params: PseudoLabelParams = PseudoLabelParams(),
    pixel_size_nm: float | None = None,
    *,
    estimate_scale: str = "never",
) -> dict[str, Any]:
    """Fast pipeline keeping intermediates: dict of 'smoothed', 'r', 'd', 'edge', 'opened' (float64 HxW or None), 'threshold' (float), 'mask' (bool HxW), 'params' (the pixel parameters used), 'scale' (`ScaleUsed`) and, with split_touching, 'labels' (int32 HxW).

    nm lengths are converted with ``pixel_size_nm`` (nm/px) or, per ``estimate_scale``, from the
    typical particle diameter read off the image (see `resolve_params`).
    """
    from temseg_ablation.data import _morph

    x = _validated(image)
    px, used = resolve_params(x, params, pixel_size_nm, estimate_scale)
    g = _prepared(x, px)
    r, d = _morph.basin_depth(g)
    e = _edge_enhanced(d, px) if d.max() > d.min() else None
    o = None
    if e is not None:
        o = _normalise(_morph.disk_opening(e, int(px.opening_radius)))
    mask, thr = _thresholded(o, px)
    if mask is None:
        mask = np.zeros(g.shape, bool)
    mask = _remove_small(mask, px.min_area_px())
    out = {"smoothed": g, "r": r, "d": d, "edge": e, "opened": o, "threshold": thr}
    if px.split_touching:
        out["labels"], mask = _split(mask, px, d)
    out.update(mask=mask, params=px, scale=used)
    return out


def pseudo_label(
    image: np.ndarray,
    params: PseudoLabelParams = PseudoLabelParams(),
    pixel_size_nm: float | None = None,
    *,
    estimate_scale: str = "never",
) -> np.ndarray:
    """Pseudo-label one 2-D frame: bool (H, W) mask, True on particles (fast exact path); nm lengths need ``pixel_size_nm`` (nm/px) or ``estimate_scale``."""
    return pseudo_label_stages(image, params, pixel_size_nm, estimate_scale=estimate_scale)["mask"]


def pseudo_label_instances(
    image: np.ndarray,
    params: PseudoLabelParams = PseudoLabelParams(),
    pixel_size_nm: float | None = None,
    *,
    estimate_scale: str = "never",
) -> np.ndarray:
    """Particle instances of one 2-D frame: int32 (H, W) labels 1..N (0 background); touching particles are split when ``params.split_touching``, otherwise instances are the mask's 8-connected components."""
    st = pseudo_label_stages(image, params, pixel_size_nm, estimate_scale=estimate_scale)
    if "labels" in st:
        return st["labels"]
    return label_components(st["mask"], 0, connectivity=2)[0]


def pseudo_label_reference(
    image: np.ndarray, params: PseudoLabelParams = PseudoLabelParams(), pixel_size_nm: float | None = None
) -> np.ndarray:
    """Same pipeline as `pseudo_label` written plainly with scikit-image (slow yardstick); bool (H, W); nm lengths need ``pixel_size_nm``."""
    from skimage.filters import gaussian, sobel, threshold_otsu
    from skimage.morphology import disk, opening, reconstruction, remove_small_objects

    x = _validated(image)
    params = params.resolve(pixel_size_nm)
    if params.particles == "bright":
        x = -x
    x = (x - x.min()) / (x.max() - x.min())
    if params.sigma > 0:
        x = gaussian(x, sigma=params.sigma)
    if x.max() == x.min():
        raise ValueError("image is constant after Gaussian smoothing; nothing to label")
    g = (x - x.min()) / (x.max() - x.min())

    seed = g.copy()
    seed[1:-1, 1:-1] = g.min()
    r = reconstruction(seed, g, method="dilation")
    seed = r.copy()
    seed[1:-1, 1:-1] = r.max()
    r1 = reconstruction(seed, r, method="erosion")
    d = d0 = np.abs(r - r1)
    if d.max() == d.min():
        return np.zeros(g.shape, bool)

    if params.sobel_weight > 0:
        d = d + params.sobel_weight * sobel(d)
    e = (d - d.min()) / (d.max() - d.min())
    if params.opening_radius > 0:
        e = opening(e, disk(int(params.opening_radius)))
    if e.max() == e.min():
        return np.zeros(g.shape, bool)
    o = (e - e.min()) / (e.max() - e.min())
    thr = threshold_otsu(o) if params.threshold == "otsu" else float(params.threshold)
    mask = o > thr
    if params.min_area_px() > 1:
        mask = remove_small_objects(mask, max_size=params.min_area_px() - 1, connectivity=2)
    if params.split_touching:
        mask = _split(mask, params, d0)[1]
    return mask


# ---------------------------------------------------------------------------------------------
# scoring


def score_against_truth(
    pred_mask: np.ndarray, true_mask: np.ndarray, true_labels: np.ndarray
) -> dict[str, float]:
    """Pixel precision/recall/F1 of a predicted mask and particle counts (8-connected components of pred vs distinct nonzero true labels)."""
    pred = np.asarray(pred_mask, bool)
    true = np.asarray(true_mask, bool)
    labels = np.asarray(true_labels)
    if pred.shape != true.shape or labels.shape != true.shape:
        raise ValueError(
            f"shape mismatch: pred {pred.shape}, true mask {true.shape}, labels {labels.shape}"
        )
    tp = int(np.count_nonzero(pred & true))
    n_pred = int(np.count_nonzero(pred))
    n_true = int(np.count_nonzero(true))
    precision = tp / n_pred if n_pred else (1.0 if n_true == 0 else 0.0)
    recall = tp / n_true if n_true else (1.0 if n_pred == 0 else 0.0)
    denom = n_pred + n_true
    f1 = 2.0 * tp / denom if denom else 1.0
    _, count_pred = label_components(pred, 0, connectivity=2)
    ids = np.unique(labels)
    count_true = int(np.count_nonzero(ids > 0))
    return {
        "pixel_f1": f1,
        "precision": precision,
        "recall": recall,
        "count_pred": int(count_pred),
        "count_true": count_true,
        "count_error": int(count_pred) - count_true,
        "count_rel_error": (int(count_pred) - count_true) / count_true if count_true else float("nan"),
    }
