"""Particle detectors compared by the real-image benchmark; each returns boxes, centroids and a mask.

All take a raw frame with BRIGHT particles (HAADF) and the frame's scale estimate, and return a
:class:`Detection` on the frame's pixel grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..data.blobs import blob_labels, contrast_blobs
from ..data.components import label_components
from ..data.instances import split_touching
from ..data.pseudolabel import PseudoLabelParams, params_for_scale, pseudo_label_stages
from ..data.scale import ScaleEstimate, estimate_particle_diameter_px
from .realbench_match import boxes_from_labels

__all__ = ["Detection", "estimate_scale", "classical", "classical_split", "paper_pixels", "blob_log_peer",
           "blob_contrast", "network"]


@dataclass
class Detection:
    """Detected particles: boxes (N, 4) ``x0, y0, x1, y1`` px, centroids (N, 2) ``x, y`` px, bool mask (H, W) or None."""

    boxes: np.ndarray
    centroids: np.ndarray
    mask: np.ndarray | None


def _from_mask(mask: np.ndarray) -> Detection:
    labels, _ = label_components(mask, 0, connectivity=2)
    boxes, cent = boxes_from_labels(labels)
    return Detection(boxes, cent, np.asarray(mask, bool))


def estimate_scale(image: np.ndarray) -> ScaleEstimate | None:
    """Typical bright-particle diameter of the frame, or None when no particle-like blob stands out."""
    try:
        return estimate_particle_diameter_px(image, "bright")
    except ValueError:
        return None


def classical(image: np.ndarray, est: ScaleEstimate | None, **options: Any) -> Detection:
    """The classical pipeline with the paper's nm parameters scaled to the estimated particle diameter (as ``estimate_scale='always'``)."""
    base = PseudoLabelParams.from_nm(particles="bright", **options)
    if est is None:  # 'always' would raise; nothing particle-like was found
        return _from_mask(np.zeros(np.shape(image), bool))
    px = params_for_scale(est.diameter_px, base)
    return _from_mask(pseudo_label_stages(image, px)["mask"])


def paper_pixels(image: np.ndarray, est: ScaleEstimate | None) -> Detection:
    """The classical pipeline with the paper's fixed pixel parameters (sigma 2 px, opening radius 5 px)."""
    return _from_mask(pseudo_label_stages(image, PseudoLabelParams(particles="bright"))["mask"])


def blob_log_peer(image: np.ndarray, est: ScaleEstimate | None, threshold_rel: float = 0.1) -> Detection:
    """scikit-image ``blob_log`` on the [0, 1]-normalised frame, sigmas within a factor 1.6 of the estimated scale; a blob of sigma s is a box of side 2 sqrt(2) s."""
    from skimage.feature import blob_log

    if est is None:
        return Detection(np.zeros((0, 4)), np.zeros((0, 2)), None)
    x = np.asarray(image, dtype=np.float64)
    x = (x - x.min()) / max(float(x.max() - x.min()), 1e-12)
    s = est.diameter_px / (2 * math.sqrt(2))  # a flat disc of diameter d peaks at d / 2 sqrt 2
    blobs = blob_log(x, min_sigma=s / 1.6, max_sigma=s * 1.6, num_sigma=7,
                     threshold=None, threshold_rel=threshold_rel, overlap=0.5, exclude_border=False)
    if len(blobs) == 0:
        return Detection(np.zeros((0, 4)), np.zeros((0, 2)), None)
    y, xx, sig = blobs[:, 0] + 0.5, blobs[:, 1] + 0.5, blobs[:, 2]
    r = math.sqrt(2) * sig
    return Detection(np.column_stack([xx - r, y - r, xx + r, y + r]), np.column_stack([xx, y]), None)


def blob_contrast(image: np.ndarray, est: ScaleEstimate | None, **options: Any) -> Detection:
    """LoG blobs kept by Yen's threshold and annulus contrast, each boxed at its refined radius (:func:`data.blobs.contrast_blobs`).

    ``options`` go to ``contrast_blobs`` (``min_contrast``, ``level``, ``nbins``); the mask holds
    one disc per blob.
    """
    shape = np.shape(image)
    if est is None:
        return Detection(np.zeros((0, 4)), np.zeros((0, 2)), np.zeros(shape, bool))
    b = contrast_blobs(image, est.diameter_px, **options)
    y, x, r = b[:, 0] + 0.5, b[:, 1] + 0.5, b[:, 2]
    return Detection(np.column_stack([x - r, y - r, x + r, y + r]), np.column_stack([x, y]),
                     blob_labels(shape, b) > 0)


def classical_split(image: np.ndarray, est: ScaleEstimate | None, **options: Any) -> Detection:
    """:func:`classical` with merged components cut apart (:func:`data.instances.split_touching`, centres at least half the estimated diameter apart)."""
    det = classical(image, est, **options)
    if est is None or det.mask is None or not det.mask.any():
        return det
    boxes, cent = boxes_from_labels(split_touching(det.mask, est.diameter_px / 2))
    return Detection(boxes, cent, det.mask)


def network(image: np.ndarray, est: ScaleEstimate | None, model: Any) -> Detection:
    """A trained network (``segment.loading.load_model``) on the frame, rescaled so the estimated particles match the paper's pixel size."""
    from ..segment.infer import segment_image  # entry-point use only; report never edits segment

    pixel = est.pixel_size_nm() if est is not None else None
    seg = segment_image(model, image, particles="bright", pixel_size_nm=pixel, rescale=pixel is not None)
    return _from_mask(seg.mask)
