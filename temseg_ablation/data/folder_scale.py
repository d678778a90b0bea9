"""The scale a user's file is trained at: its calibration, the user's, or one estimated from it.

``data=folder`` frames are used at their own pixels unless ``data.frame_pixel_size_nm`` says
otherwise: a number (nm/px, the user's calibration of every file) or ``auto`` (each file's
particle scale is estimated from its first frame with
:func:`temseg_ablation.data.scale.estimate_particle_diameter_px`, assuming the typical particle is
``particle_diameter_nm`` across). Either way the frames are then resized to the training pixel
size ``data.pixel_size_nm``, so a network sees particles at one size whatever the files'
magnifications, and the segment command brings new frames to the same scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .preprocess import MAX_RESCALED_PIXELS
from .scale import estimate_particle_diameter_px
from .transforms import resize_image, resize_labels

__all__ = ["FolderScale", "folder_scale", "rescale_frames", "rescale_labels"]

#: Typical particle diameter (nm) an estimated scale assumes: the synthetic generator's median.
DEFAULT_PARTICLE_DIAMETER_NM = 5.0


@dataclass(frozen=True)
class FolderScale:
    """How one file's frames are scaled for training.

    ``source``: ``file`` / ``user`` / ``estimate`` / ``none``; ``pixel_size_nm``: the frames'
    own pixel size (nm/px) that source gives (NaN for ``none``); ``zoom``: factor the frames are
    resized by (1.0 when they stay as they are); ``confidence`` and ``diameter_px`` (native px)
    come with an estimate.
    """

    source: str
    pixel_size_nm: float
    zoom: float = 1.0
    confidence: str = ""
    diameter_px: float = float("nan")


def folder_scale(first_frame: np.ndarray, file_pixel_size_nm: float | None,
                 requested: float | str | None, target_pixel_size_nm: float, *,
                 particles: str = "dark",
                 particle_diameter_nm: float = DEFAULT_PARTICLE_DIAMETER_NM) -> FolderScale:
    """Scale of one file: ``requested`` is None (the file's own pixels), ``'auto'`` or nm/px.

    Raises ValueError (one line) when ``auto`` finds no particle-like blob, or when the resize
    would exceed ``MAX_RESCALED_PIXELS`` (a wrong pixel size, or a scale estimate gone astray).
    """
    own = float(file_pixel_size_nm) if file_pixel_size_nm else float("nan")
    if requested is None or requested == "":
        return FolderScale("file" if np.isfinite(own) else "none", own)
    if not target_pixel_size_nm > 0:
        raise ValueError(f"data.pixel_size_nm must be > 0, got {target_pixel_size_nm!r}")
    if isinstance(requested, str):
        if requested != "auto":
            raise ValueError(f"data.frame_pixel_size_nm must be null, 'auto' or nm/px, "
                             f"got {requested!r}")
        try:
            est = estimate_particle_diameter_px(first_frame, particles)
        except ValueError as err:
            raise ValueError(f"scale estimate failed: {err}; give "
                             "data.frame_pixel_size_nm in nm/px") from None
        pixel = float(particle_diameter_nm) / est.diameter_px
        out = FolderScale("estimate", pixel, pixel / target_pixel_size_nm, est.confidence,
                          est.diameter_px)
    else:
        pixel = float(requested)
        if not (math.isfinite(pixel) and pixel > 0):
            raise ValueError(f"data.frame_pixel_size_nm must be > 0 nm/px, got {requested!r}")
        out = FolderScale("user", pixel, pixel / target_pixel_size_nm)
    h, w = np.shape(first_frame)[-2:]
    size = max(1, round(h * out.zoom)) * max(1, round(w * out.zoom))
    if size > MAX_RESCALED_PIXELS:
        raise ValueError(f"bringing {h} x {w} px at {out.pixel_size_nm:.3g} nm/px "
                         f"({out.source}) to {target_pixel_size_nm:g} nm/px would make "
                         f"{size / 1e6:.0f} MP (over {MAX_RESCALED_PIXELS // 1_000_000} MP); "
                         "check the pixel size")
    return out


def _shape(shape: tuple[int, ...], zoom: float) -> tuple[int, int]:
    return max(1, round(shape[-2] * zoom)), max(1, round(shape[-1] * zoom))


def rescale_frames(frames: np.ndarray, zoom: float) -> np.ndarray:
    """Frames (N, H, W) resized by ``zoom`` (anti-aliased; the same array when zoom is 1)."""
    if zoom == 1.0:
        return frames
    shape = _shape(frames.shape, zoom)
    return np.stack([resize_image(f, shape) for f in frames])


def rescale_labels(labels: np.ndarray, zoom: float) -> np.ndarray:
    """Instance labels (N, H, W) resized by ``zoom`` (nearest neighbour: ids survive)."""
    if zoom == 1.0:
        return labels
    shape = _shape(labels.shape, zoom)
    return np.stack([resize_labels(lab, shape) for lab in labels])
