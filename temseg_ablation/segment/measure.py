"""Particle tables and per-frame summaries from masks or instance labels (vectorised, no loops).

Conventions: centroids in pixel-index coordinates (row y, column x) of the particle's pixels;
equivalent diameter sqrt(4 A / pi); major axis length 4 sqrt(largest eigenvalue of the pixel
covariance), as scikit-image defines it; a particle touches the border when one of its pixels
lies in the first or last row or column. nm columns are NaN when the pixel size is unknown.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..data.components import label_components

__all__ = [
    "FRAME_COLUMNS",
    "PARTICLE_COLUMNS",
    "frame_summary",
    "label_particles",
    "measure_labels",
    "measure_particles",
    "min_area_px",
    "remove_small",
]

PARTICLE_COLUMNS = [
    "particle_id",
    "centroid_y_px",
    "centroid_x_px",
    "centroid_y_nm",
    "centroid_x_nm",
    "area_px",
    "area_nm2",
    "equivalent_diameter_px",
    "equivalent_diameter_nm",
    "major_axis_length_px",
    "major_axis_length_nm",
    "touches_border",
]

FRAME_COLUMNS = [
    "count",
    "count_interior",
    "coverage",
    "mean_diameter_nm",
    "median_diameter_nm",
    "mean_diameter_px",
    "median_diameter_px",
]


def min_area_px(min_size_px: int = 0, min_diameter_nm: float | None = None,
                pixel_size_nm: float | None = None) -> int:
    """Smallest particle area (px) to keep: ``min_size_px``, or the area of a disk of ``min_diameter_nm``."""
    if min_diameter_nm is None:
        return int(min_size_px)
    if not pixel_size_nm:
        raise ValueError("a minimum size in nm needs the pixel size (from the file or --pixel-size-nm)")
    return max(int(min_size_px), math.ceil(math.pi / 4 * (min_diameter_nm / pixel_size_nm) ** 2))


def label_particles(mask: np.ndarray, min_size_px: int = 0, connectivity: int = 2) -> np.ndarray:
    """Instance labels int32 (H, W) of a bool mask: ``connectivity`` 1 (4-) or 2 (8-connected).

    Components smaller than ``min_size_px`` are dropped and the rest numbered 1..n in raster
    order (``data.components.label_components``, the one shared implementation).
    """
    labels, _ = label_components(mask, int(min_size_px), connectivity)
    return labels


def remove_small(labels: np.ndarray, min_size_px: int) -> np.ndarray:
    """``labels`` with instances of fewer than ``min_size_px`` pixels set to background (0)."""
    if min_size_px <= 1 or not labels.any():
        return labels
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    ids, inv, counts = np.unique(flat[fg], return_inverse=True, return_counts=True)
    small = counts[inv] < min_size_px
    if not small.any():
        return labels
    out = labels.copy()
    out.ravel()[fg[small]] = 0
    return out


def measure_labels(labels: np.ndarray, pixel_size_nm: float | None = None) -> pd.DataFrame:
    """One row per instance of int labels (H, W) (0 = background), columns ``PARTICLE_COLUMNS``.

    ``particle_id`` is the label value, rows are sorted by it.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected 2-D labels, got shape {labels.shape}")
    h, w = labels.shape
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    if fg.size == 0:
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in PARTICLE_COLUMNS})
    ids, inv = np.unique(flat[fg], return_inverse=True)
    n = ids.size
    y, x = np.divmod(fg, w)
    area = np.bincount(inv, minlength=n).astype(np.float64)
    cy = np.bincount(inv, weights=y, minlength=n) / area
    cx = np.bincount(inv, weights=x, minlength=n) / area
    # central moments from offsets to each particle's centroid (no large-number cancellation)
    dy, dx = y - cy[inv], x - cx[inv]
    vyy = np.bincount(inv, weights=dy * dy, minlength=n) / area
    vxx = np.bincount(inv, weights=dx * dx, minlength=n) / area
    vxy = np.bincount(inv, weights=dy * dx, minlength=n) / area
    big = 0.5 * (vyy + vxx) + np.sqrt(np.maximum(0.25 * (vyy - vxx) ** 2 + vxy**2, 0.0))
    major = 4.0 * np.sqrt(np.maximum(big, 0.0))
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    touches = np.isin(ids, np.unique(edge[edge != 0]))
    diam = np.sqrt(4.0 * area / np.pi)
    p = float(pixel_size_nm) if pixel_size_nm else float("nan")
    return pd.DataFrame({
        "particle_id": ids.astype(np.int64),
        "centroid_y_px": cy,
        "centroid_x_px": cx,
        "centroid_y_nm": cy * p,
        "centroid_x_nm": cx * p,
        "area_px": area.astype(np.int64),
        "area_nm2": area * p * p,
        "equivalent_diameter_px": diam,
        "equivalent_diameter_nm": diam * p,
        "major_axis_length_px": major,
        "major_axis_length_nm": major * p,
        "touches_border": touches,
    }, columns=PARTICLE_COLUMNS)


def _dtype(column: str) -> str:
    if column == "touches_border":
        return "bool"
    return "int64" if column in ("particle_id", "area_px") else "float64"


def measure_particles(
    mask: np.ndarray,
    pixel_size_nm: float | None = None,
    min_size_px: int = 0,
    *,
    connectivity: int = 2,
) -> pd.DataFrame:
    """Particle table (``PARTICLE_COLUMNS``) of a bool mask (H, W) or of int instance labels.

    A bool mask is split into ``connectivity``-connected components (ids 1..n in raster order);
    integer labels (0 = background) are taken as the instances and keep their ids. Particles
    smaller than ``min_size_px`` pixels are dropped (false-positive specks).
    """
    mask = np.asarray(mask)
    if mask.dtype == bool:
        labels = label_particles(mask, min_size_px, connectivity)
    elif np.issubdtype(mask.dtype, np.integer):
        if mask.size and mask.min() < 0:
            raise ValueError("instance labels must be >= 0")
        labels = remove_small(mask, min_size_px)
    else:
        raise ValueError(f"expected a bool mask or integer labels, got dtype {mask.dtype}")
    return measure_labels(labels, pixel_size_nm)


def frame_summary(table: pd.DataFrame, mask: np.ndarray) -> dict[str, float | int]:
    """Per-frame numbers (``FRAME_COLUMNS``) from one frame's particle table and its final mask.

    ``count`` includes particles touching the border, ``count_interior`` leaves them out; mean
    and median diameters use the interior particles only, since border particles are truncated.
    """
    interior = table.loc[~table["touches_border"].astype(bool)]
    mask = np.asarray(mask)

    def stat(col: str, fn) -> float:
        values = interior[col].to_numpy(dtype=np.float64)
        values = values[np.isfinite(values)]
        return float(fn(values)) if values.size else float("nan")

    return {
        "count": int(len(table)),
        "count_interior": int(len(interior)),
        "coverage": float(np.count_nonzero(mask)) / float(mask.size) if mask.size else float("nan"),
        "mean_diameter_nm": stat("equivalent_diameter_nm", np.mean),
        "median_diameter_nm": stat("equivalent_diameter_nm", np.median),
        "mean_diameter_px": stat("equivalent_diameter_px", np.mean),
        "median_diameter_px": stat("equivalent_diameter_px", np.median),
    }
