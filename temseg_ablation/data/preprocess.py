"""The one frame preprocessing shared by training data, inference and the findings.

A checkpoint records it as parameters (``Preprocess.to_dict``), so inference can repeat exactly
what training did: polarity, percentile normalisation, pixel size (resize) and blur.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .readers import to_dark_particles
from .transforms import gaussian_blur, normalise, resize_image

#: Largest network input a rescale may produce (pixels); beyond it a pixel size is surely wrong.
MAX_RESCALED_PIXELS = 64_000_000


@dataclass(frozen=True)
class Preprocess:
    """How frames were prepared for a network.

    Attributes
    ----------
    pixel_size_nm : float or None
        Native pixel size of the training frames (nm/px).
    blur_sigma : float
        Gaussian preprocessing blur (px at the network's pixel size); 0 = none.
    resolution : str
        ``crop`` (native pixel size) or ``downsample`` (whole frames resized).
    downsample_size : int
        Side (px) of downsampled frames.
    frame_shape : tuple of int or None
        (H, W) of the native training frames (px).
    particles : str
        Polarity of the training frames' particles: ``dark`` or ``bright``.
    low_pct, high_pct : float
        Percentiles mapped to 0 and 1 by the normalisation.
    """

    pixel_size_nm: float | None = None
    blur_sigma: float = 0.0
    resolution: str = "crop"
    downsample_size: int = 512
    frame_shape: tuple[int, int] | None = None
    particles: str = "dark"
    low_pct: float = 0.1
    high_pct: float = 99.9

    def to_dict(self) -> dict[str, Any]:
        """Plain, JSON- and checkpoint-safe parameters."""
        d = asdict(self)
        d["frame_shape"] = list(self.frame_shape) if self.frame_shape else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Preprocess:
        """Parameters from a checkpoint; unknown keys (e.g. ``variant``) are ignored and the
        older prose ``normalise`` entry means the default percentiles."""
        d = dict(d or {})
        shape = d.get("frame_shape")
        size = d.get("pixel_size_nm")
        return cls(pixel_size_nm=float(size) if size else None,
                   blur_sigma=float(d.get("blur_sigma") or 0.0),
                   resolution=str(d.get("resolution") or "crop"),
                   downsample_size=int(d.get("downsample_size") or 512),
                   frame_shape=(int(shape[0]), int(shape[1])) if shape and len(shape) == 2 else None,
                   particles=str(d.get("particles") or "dark"),
                   low_pct=float(d.get("low_pct", 0.1)), high_pct=float(d.get("high_pct", 99.9)))

    @property
    def network_pixel_size_nm(self) -> float | None:
        """Pixel size (nm) of the frames the network saw: downsampling enlarges the native one
        by the mean of the two axis factors."""
        if not self.pixel_size_nm:
            return None
        size = float(self.pixel_size_nm)
        if self.resolution == "downsample" and self.frame_shape:
            h, w = self.frame_shape
            size *= 0.5 * (h / self.downsample_size + w / self.downsample_size)
        return size

    def normalise(self, image: np.ndarray) -> np.ndarray:
        """Percentile normalisation to [0, 1] (float32)."""
        return normalise(image, self.low_pct, self.high_pct)

    def apply(self, image: np.ndarray, *, particles: str | None = None,
              scale: float = 1.0) -> np.ndarray:
        """Network input from a raw frame: dark particles, normalised, resized, blurred.

        Parameters
        ----------
        image : ndarray, shape (H, W)
            Raw intensities.
        particles : str, optional
            Polarity of this frame (default: the training polarity); bright frames are inverted.
        scale : float
            Resize factor (frame pixel size / network pixel size).

        Returns
        -------
        ndarray, float32, shape (round(H * scale), round(W * scale))
        """
        img = to_dark_particles(np.asarray(image, dtype=np.float32), particles or "dark")
        img = self.normalise(img)
        if scale != 1.0:
            shape = (max(1, round(img.shape[0] * scale)), max(1, round(img.shape[1] * scale)))
            if shape[0] * shape[1] > MAX_RESCALED_PIXELS:
                raise ValueError(
                    f"rescaling {img.shape[0]} x {img.shape[1]} by {scale:.3g} gives {shape[0]} x "
                    f"{shape[1]} px (over {MAX_RESCALED_PIXELS // 1_000_000} MP); the pixel size "
                    "is probably wrong: check it, or use --no-rescale")
            if shape != img.shape:
                img = resize_image(img, shape)
        return gaussian_blur(img, float(self.blur_sigma)).astype(np.float32, copy=False)
