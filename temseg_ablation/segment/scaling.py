"""Which scale each frame is segmented at: its calibration, the user's, or one estimated from it.

Sources: ``file`` (the frame's own calibration), ``user`` (``--pixel-size-nm``), ``estimate``
(``--pixel-size-nm auto`` on a frame without calibration: the typical particle diameter is read
off the image with :func:`temseg_ablation.data.scale.estimate_particle_diameter_px`) and
``none`` (no calibration, no estimate: the frame is used as it is).

An estimate brings the frame to the model's training scale:

- network: the model's typical particle diameter in px at its network pixel size is
  ``particle_diameter_nm / network_pixel_size_nm``; the frame is resized by that over the
  estimated diameter. ``particle_diameter_nm`` is, in this order, the user's value
  (``--model-particle-diameter-nm``), the checkpoint's ``preprocess['particle_diameter_nm']``
  when recorded, or the synthetic generator's default median diameter
  (``SyntheticConfig.median_diameter_nm``, 5 nm; the default training data are synthetic).
- classical: the pipeline's lengths are taken as tuned at the paper's 28 px particles and are
  scaled to the estimate (``pseudolabel.params_for_scale``); the frame is not resized.

An estimated scale is an assumption (the particles are as large as the model's), so it never
becomes a calibration: nm columns of such frames stay NaN, and ``implied_pixel_size_nm``
records the pixel size the assumption implies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "MAX_PIXEL_SIZE_NM",
    "MIN_PIXEL_SIZE_NM",
    "FrameScale",
    "check_pixel_size",
    "check_rescaled_size",
    "model_particle_diameter",
]

#: Plausible pixel sizes (nm/px) of a TEM frame; a value outside is surely a unit mistake.
MIN_PIXEL_SIZE_NM = 1e-3
MAX_PIXEL_SIZE_NM = 100.0


@dataclass(frozen=True)
class FrameScale:
    """How one frame is scaled.

    pixel_size_nm: calibration used for nm measurements (None for 'estimate' and 'none');
    source: 'file', 'user', 'estimate' or 'none'; resize: factor the frame is resized by for
    the network (1.0 in classical mode); param_scale: factor the classical lengths are scaled
    by; confidence / diameter_px / notes: the estimate's; implied_pixel_size_nm: pixel size
    implied by the estimate.
    """

    pixel_size_nm: float | None
    source: str
    resize: float = 1.0
    param_scale: float = 1.0
    confidence: str = ""
    diameter_px: float = float("nan")
    implied_pixel_size_nm: float = float("nan")
    notes: tuple[str, ...] = ()


def check_pixel_size(value: float, what: str = "--pixel-size-nm") -> float:
    """``value`` (nm/px) when it is plausible; ValueError (one line) otherwise."""
    v = float(value)
    if not (math.isfinite(v) and MIN_PIXEL_SIZE_NM <= v <= MAX_PIXEL_SIZE_NM):
        raise ValueError(f"{what} {value:g} nm/px is outside the plausible range "
                         f"{MIN_PIXEL_SIZE_NM:g}-{MAX_PIXEL_SIZE_NM:g} nm/px (a unit mistake?)")
    return v


def check_rescaled_size(shape: tuple[int, int], factor: float, source: str) -> None:
    """Refuse a resize that would exceed ``data.preprocess.MAX_RESCALED_PIXELS`` (one line)."""
    from ..data.preprocess import MAX_RESCALED_PIXELS

    h, w = (max(1, round(n * factor)) for n in shape)
    if h * w > MAX_RESCALED_PIXELS:
        raise ValueError(f"resizing {shape[0]} x {shape[1]} px by {factor:.3g} (scale from {source}) "
                         f"gives {h} x {w} px, over the limit of {MAX_RESCALED_PIXELS:,} px "
                         "(data.preprocess.MAX_RESCALED_PIXELS); check the pixel size or use "
                         "--no-rescale")


def model_particle_diameter(preprocess: dict[str, Any], user_nm: float | None = None
                            ) -> tuple[float, str]:
    """Typical particle diameter (nm) of a network's training frames and where it comes from."""
    if user_nm:
        return float(user_nm), "user (--model-particle-diameter-nm)"
    recorded = preprocess.get("particle_diameter_nm")
    if recorded:
        return float(recorded), "checkpoint preprocess['particle_diameter_nm']"
    from ..data.synthetic import SyntheticConfig

    return (float(SyntheticConfig().median_diameter_nm),
            "synthetic generator default (SyntheticConfig.median_diameter_nm)")


def frame_scale(
    image: np.ndarray,
    file_pixel_size_nm: float | None,
    *,
    user: float | str | None,
    particles: str,
    network_pixel_size_nm: float | None,
    model_diameter_nm: float | None,
    rescale: bool,
) -> FrameScale:
    """The scale of one frame (see the module docstring); ``network_pixel_size_nm`` None means classical.

    Raises ValueError when an estimate is needed but no particle-like blob stands out.
    """
    from ..data.scale import PAPER_DIAMETER_PX

    network = model_diameter_nm is not None
    if isinstance(user, int | float) and not isinstance(user, bool):
        px, source = float(user), "user"
    elif file_pixel_size_nm:
        px, source = float(file_pixel_size_nm), "file"
    else:
        px, source = None, "none"
    if px is not None:
        resize = px / network_pixel_size_nm if (network and rescale and network_pixel_size_nm) else 1.0
        return FrameScale(px, source, resize=resize)
    if user != "auto":
        return FrameScale(None, "none")
    from ..data.scale import estimate_particle_diameter_px

    try:
        est = estimate_particle_diameter_px(np.asarray(image), particles)
    except ValueError as err:
        raise ValueError(f"--pixel-size-nm auto: {err}") from None
    if network:
        model_px = float(model_diameter_nm) / float(network_pixel_size_nm)
        resize = model_px / est.diameter_px if rescale else 1.0
        implied = float(model_diameter_nm) / est.diameter_px
        return FrameScale(None, "estimate", resize=resize, confidence=est.confidence,
                          diameter_px=est.diameter_px, implied_pixel_size_nm=implied,
                          notes=est.notes)
    return FrameScale(None, "estimate", param_scale=est.diameter_px / PAPER_DIAMETER_PX,
                      confidence=est.confidence, diameter_px=est.diameter_px,
                      implied_pixel_size_nm=est.pixel_size_nm(), notes=est.notes)
