"""Connected components of a binary mask, with the small ones dropped (one shared implementation)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["label_components"]


def label_components(
    mask: np.ndarray, min_size_px: int = 0, connectivity: int = 2
) -> tuple[np.ndarray, int]:
    """Label the connected components of a 2-D mask and drop those of fewer than ``min_size_px`` pixels.

    Parameters
    ----------
    mask : array_like, shape (H, W)
        Foreground where truthy.
    min_size_px : int
        Least component area (px) kept; 0 or 1 keeps every component.
    connectivity : int
        1 (4-connected) or 2 (8-connected).

    Returns
    -------
    labels : ndarray of int32, shape (H, W)
        0 on background, the kept components numbered 1..n consecutively in raster order of
        their first pixel.
    n : int
        Number of kept components.
    """
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got shape {m.shape}")
    if connectivity not in (1, 2):
        raise ValueError(f"connectivity must be 1 or 2, got {connectivity!r}")
    if int(min_size_px) != min_size_px or min_size_px < 0:
        raise ValueError(f"min_size_px must be an integer >= 0, got {min_size_px!r}")
    structure = ndi.generate_binary_structure(2, connectivity)
    labels, n = ndi.label(m.astype(bool, copy=False), structure=structure, output=np.int32)
    if min_size_px <= 1 or n == 0:
        return labels, int(n)
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= min_size_px
    keep[0] = False
    # consecutive renumbering keeps "n" equal to labels.max()
    mapping = (np.cumsum(keep) * keep).astype(np.int32)
    return mapping[labels], int(keep.sum())
