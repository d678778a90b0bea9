"""Array transforms shared by training, validation and segmentation: normalise, blur, resize, augment."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def normalise(image: np.ndarray, low_pct: float = 0.1, high_pct: float = 99.9) -> np.ndarray:
    """Scale ``image`` (H, W) to [0, 1] between two percentiles, clipping outliers (hot pixels).

    Returns float32. A constant image maps to zeros.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = np.percentile(image, [low_pct, high_pct])
    if not np.isfinite(lo) or not np.isfinite(hi):
        raise ValueError("image contains NaN or Inf")
    if hi <= lo:
        return np.zeros_like(image)
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian preprocessing blur (the paper's sigma 1 / 2 px); ``sigma <= 0`` is a no-op."""
    if sigma <= 0:
        return image
    return ndimage.gaussian_filter(image, sigma=float(sigma), mode="reflect").astype(image.dtype)


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Anti-aliased resize of a float image (H, W) to ``shape`` (area-weighted for downsampling)."""
    from skimage.transform import resize

    return resize(image, shape, order=1, anti_aliasing=True, preserve_range=True).astype(np.float32)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an integer label image (instance ids survive unchanged)."""
    rows = (np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]
    cols = (np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]
    return labels[rows.astype(int)[:, None], cols.astype(int)[None, :]]


def random_crop_box(
    shape: tuple[int, int], size: int, rng: np.random.Generator
) -> tuple[slice, slice]:
    """A random ``size`` x ``size`` window inside ``shape`` (whole axis when it is smaller)."""
    h, w = shape
    top = int(rng.integers(0, h - size + 1)) if h > size else 0
    left = int(rng.integers(0, w - size + 1)) if w > size else 0
    return slice(top, top + min(size, h)), slice(left, left + min(size, w))


def augment_pair(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    rotate90: bool = True,
    affine: bool = False,
    max_shift_px: float = 8.0,
    max_rotate_deg: float = 15.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply one random flip / 90-degree rotation (and optionally a small affine map) to both.

    Flips and 90-degree rotations only permute pixels, so they are lossless: the noise and the
    blur of a training crop stay those of the frames the model is evaluated on. Integer shifts
    come from the crop box (``random_crop_box``), also lossless. ``affine=True`` adds a random
    sub-pixel shift (up to ``max_shift_px``) and rotation (up to ``max_rotate_deg``): the image
    is then interpolated bilinearly, which averages neighbouring pixels and smooths the noise of
    a crop (pixel-to-pixel difference std ~0.6x on the synthetic frames), and the (instance) labels by nearest
    neighbour, so the mask stays binary and ids survive. Borders are reflected. The random draws
    happen in the same order as before the affine map became optional, so ``affine=True``
    reproduces the former augmentation exactly.
    """
    image, labels, params = augment_pair_deferred(
        image, labels, rng, flip=flip, rotate90=rotate90, affine=affine,
        max_shift_px=max_shift_px, max_rotate_deg=max_rotate_deg)
    if params is not None:
        matrix, offset = params[:4].reshape(2, 2), params[4:]
        image = ndimage.affine_transform(image, matrix, offset, order=1, mode="reflect")
        labels = ndimage.affine_transform(labels, matrix, offset, order=0, mode="reflect")
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def augment_pair_deferred(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    *,
    flip: bool = True,
    rotate90: bool = True,
    affine: bool = False,
    max_shift_px: float = 8.0,
    max_rotate_deg: float = 15.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`augment_pair` with the affine map drawn but not applied.

    Returns the flipped / rotated views and the map's parameters, float64 (6,) = the row-major
    2 x 2 matrix and the offset (px, (row, col)) in :func:`scipy.ndimage.affine_transform`'s
    convention (output pixel o samples the input at ``matrix @ o + offset``), or None without an
    affine map. The draws are those of :func:`augment_pair`, so applying the parameters (e.g.
    batched on the GPU with :func:`.warp.affine_warp_batch`) gives the same augmentation.
    """
    if flip and rng.random() < 0.5:
        image, labels = image[:, ::-1], labels[:, ::-1]
    if rotate90:
        k = int(rng.integers(0, 4))
        image, labels = np.rot90(image, k), np.rot90(labels, k)
    if not (affine and (max_shift_px > 0 or max_rotate_deg > 0)):
        return image, labels, None
    angle = np.deg2rad(rng.uniform(-max_rotate_deg, max_rotate_deg))
    shift = rng.uniform(-max_shift_px, max_shift_px, size=2)
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s], [s, c]])
    centre = (np.array(image.shape) - 1) / 2.0
    offset = centre - matrix @ centre + shift
    return image, labels, np.concatenate([matrix.ravel(), offset])
