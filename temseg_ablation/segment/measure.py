"""Particle tables and per-frame summaries from masks or instance labels.

The particle table is scikit-image's ``regionprops_table`` plus Feret diameters (:mod:`.shape`)
and a border flag. Conventions: centroids in pixel-index coordinates (row y, column x) of the
particle's pixels; equivalent diameter sqrt(4 A / pi); major / minor axis lengths 4 sqrt(largest
/ smallest eigenvalue of the pixel covariance), as scikit-image defines them; the perimeter is
scikit-image's Crofton estimate (``perimeter_crofton``; its 4-connected ``perimeter`` reads about
5 % long on digital discs), circularity 4 pi A / P^2; Feret diameters are measured on the pixel
outline (pixel centres +- 0.5, as ``feret_diameter_max``); intensities are of the raw frame
(integrated = sum over the particle's pixels). A particle touches the border when one of its
pixels lies in the first or last row or column. nm columns are NaN when the pixel size is unknown.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..data.components import label_components
from .shape import hull_measures

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

#: Particle-table columns; ``_px`` / ``_nm`` lengths, ``area_px`` in px^2, ``area_nm2`` in nm^2.
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
    "minor_axis_length_px",
    "minor_axis_length_nm",
    "feret_min_px",
    "feret_min_nm",
    "feret_max_px",
    "feret_max_nm",
    "perimeter_px",
    "perimeter_nm",
    "aspect_ratio",
    "eccentricity",
    "circularity",
    "solidity",
    "mean_intensity",
    "integrated_intensity",
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


def measure_labels(labels: np.ndarray, pixel_size_nm: float | None = None,
                   intensity_image: np.ndarray | None = None) -> pd.DataFrame:
    """One row per instance of int labels (H, W) (0 = background), columns ``PARTICLE_COLUMNS``.

    ``particle_id`` is the label value, rows are sorted by it. Built with scikit-image's
    ``regionprops_table`` (``spacing=(p, p)`` when the pixel size ``p`` (nm/px) is known, so nm
    values come from scikit-image and px values are those divided by ``p``); Feret diameters
    come from :mod:`.shape`. ``intensity_image`` (H, W), the raw frame, gives the intensity
    columns (NaN without it).
    """
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected 2-D labels, got shape {labels.shape}")
    if intensity_image is not None:
        intensity_image = np.asarray(intensity_image, dtype=np.float64)
        if intensity_image.shape != labels.shape:
            raise ValueError(f"intensity image shape {intensity_image.shape} differs from the "
                             f"labels' {labels.shape}")
    if not labels.any():
        return pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in PARTICLE_COLUMNS})
    p = float(pixel_size_nm) if pixel_size_nm else float("nan")
    unit = p if pixel_size_nm else 1.0   # regionprops lengths are in nm (calibrated) or px

    props = ["label", "num_pixels", "centroid", "equivalent_diameter_area", "axis_major_length",
             "axis_minor_length", "eccentricity", "perimeter_crofton"]
    if intensity_image is not None:
        props.append("intensity_mean")
    t = regionprops_table(labels, intensity_image=intensity_image, properties=props,
                          spacing=(unit, unit), extra_properties=(hull_measures,))
    ids = np.asarray(t["label"], dtype=np.int64)
    count = np.asarray(t["num_pixels"], dtype=np.int64)
    px = {  # lengths in px
        "centroid_y": t["centroid-0"] / unit,
        "centroid_x": t["centroid-1"] / unit,
        "equivalent_diameter": t["equivalent_diameter_area"] / unit,
        "major_axis_length": t["axis_major_length"] / unit,
        "minor_axis_length": t["axis_minor_length"] / unit,
        "feret_min": np.asarray(t["hull_measures-1"], dtype=np.float64),
        "feret_max": np.asarray(t["hull_measures-2"], dtype=np.float64),
        "perimeter": t["perimeter_crofton"] / unit,
    }
    nm = {k: np.asarray(t[src], np.float64) if pixel_size_nm else np.full(len(ids), np.nan)
          for k, src in (("centroid_y", "centroid-0"), ("centroid_x", "centroid-1"),
                         ("equivalent_diameter", "equivalent_diameter_area"),
                         ("major_axis_length", "axis_major_length"),
                         ("minor_axis_length", "axis_minor_length"),
                         ("perimeter", "perimeter_crofton"))}
    nm["feret_min"], nm["feret_max"] = px["feret_min"] * p, px["feret_max"] * p
    with np.errstate(divide="ignore", invalid="ignore"):
        aspect = np.where(px["minor_axis_length"] > 0,
                          px["major_axis_length"] / px["minor_axis_length"], np.nan)
        circularity = np.where(px["perimeter"] > 0,
                               4 * np.pi * count / px["perimeter"] ** 2, np.nan)
    if intensity_image is not None:
        mean = np.asarray(t["intensity_mean"], dtype=np.float64)
    else:
        mean = np.full(len(ids), np.nan)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    columns = {"particle_id": ids, "area_px": count,
               "area_nm2": count * p * p,
               "aspect_ratio": aspect,
               "eccentricity": np.asarray(t["eccentricity"], dtype=np.float64),
               "circularity": circularity,
               "solidity": np.asarray(t["hull_measures-0"], dtype=np.float64),
               "mean_intensity": mean,
               "integrated_intensity": mean * count,
               "touches_border": np.isin(ids, np.unique(edge[edge != 0]))}
    for k in px:
        columns[f"{k}_px"], columns[f"{k}_nm"] = px[k], nm[k]
    return pd.DataFrame(columns, columns=PARTICLE_COLUMNS)


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
    intensity_image: np.ndarray | None = None,
) -> pd.DataFrame:
    """Particle table (``PARTICLE_COLUMNS``) of a bool mask (H, W) or of int instance labels.

    A bool mask is split into ``connectivity``-connected components (ids 1..n in raster order);
    integer labels (0 = background) are taken as the instances and keep their ids. Particles
    smaller than ``min_size_px`` pixels are dropped (false-positive specks). ``intensity_image``
    (the raw frame, same shape) gives the intensity columns.
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
    return measure_labels(labels, pixel_size_nm, intensity_image)


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
