"""Tiled, training-matched inference of a trained network (or the classical pipeline) on frames.

Preprocessing is the one shared with training (:class:`temseg_ablation.data.preprocess.Preprocess`,
rebuilt from the checkpoint): particles made dark, percentile normalisation to [0, 1] at the
native pixel size, resizing to the model's pixel size, then the model's Gaussian blur. The probability map is mapped back to the frame's own grid before it is
thresholded, so masks and measurements always refer to the pixels of the input file.

Tiles start at multiples of the network's ``input_multiple`` on the padded frame and each tile
keeps only the part of its output that lies at least ``overlap`` pixels from its inner edges.
With ``overlap`` at least the receptive-field radius (:func:`receptive_field_px`) the stitched
map equals whole-frame inference up to floating-point summation order (BatchNorm in eval mode
is a per-channel affine map, so it does not couple tiles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.preprocess import MAX_RESCALED_PIXELS, Preprocess
from ..data.transforms import resize_image
from ..models import pad_to_multiple
from ..models.io import TrainedModel

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE",
    "MAX_RESCALED_PIXELS",
    "FrameSegmentation",
    "blob_segmentation",
    "classical_mask",
    "input_multiple",
    "model_pixel_size_nm",
    "predict_proba",
    "prepare_image",
    "receptive_field_px",
    "rescale_factor",
    "segment_frames",
    "segment_image",
    "threshold_prob",
    "tile_layout",
]

DEFAULT_TILE = 1024
DEFAULT_OVERLAP = 64


@dataclass
class FrameSegmentation:
    """One segmented frame: ``prob`` (H, W) float32 or None (classical), bool ``mask`` (H, W)."""

    prob: np.ndarray | None
    mask: np.ndarray
    threshold: float
    scale: float


def input_multiple(net: nn.Module) -> int:
    """Height/width multiple the network needs (1 for networks without pooling)."""
    return int(getattr(net, "input_multiple", 1) or 1)


def model_pixel_size_nm(preprocess: dict[str, Any]) -> float | None:
    """Pixel size (nm) of the frames the network saw in training (None if unrecorded).

    Thin wrapper of ``Preprocess.from_dict(preprocess).network_pixel_size_nm``.
    """
    return Preprocess.from_dict(preprocess).network_pixel_size_nm


def rescale_factor(frame_pixel_size_nm: float | None, model_pixel_size: float | None) -> float:
    """Resize factor that brings a frame to the model's pixel size (1.0 when either is unknown)."""
    if not frame_pixel_size_nm or not model_pixel_size:
        return 1.0
    return float(frame_pixel_size_nm) / float(model_pixel_size)


def prepare_image(
    image: np.ndarray, *, particles: str = "dark", blur_sigma: float = 0.0, scale: float = 1.0
) -> np.ndarray:
    """Training-matched network input: dark particles, percentile-normalised, resized, blurred.

    ``image`` (H, W) raw intensities; returns float32 (round(H * scale), round(W * scale)).
    Thin wrapper of ``Preprocess(blur_sigma=blur_sigma).apply``.
    """
    return Preprocess(blur_sigma=float(blur_sigma)).apply(image, particles=particles, scale=scale)


def receptive_field_px(net: nn.Module, max_size: int = 4096) -> int:
    """Receptive-field radius (px) of ``net``: how far one input pixel can change the output.

    Measured by letting a NaN block of one ``input_multiple`` cell spread through the network in
    eval mode (every layer we use propagates NaN to all outputs it touches), so it is an upper
    bound that holds for any weights.
    """
    m = input_multiple(net)
    size = max(256, 8 * m)
    param = next(net.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = net.training
    net.eval()
    try:
        while True:
            size = math.ceil(size / m) * m
            c = (size // 2) // m * m
            x = torch.zeros(1, 1, size, size, device=device)
            x[..., c:c + m, c:c + m] = float("nan")
            with torch.inference_mode():
                bad = torch.isnan(net(x)).any(dim=1)[0]
            ys, xs = torch.nonzero(bad, as_tuple=True)
            if ys.numel() == 0:
                return 0
            lo = min(int(ys.min()), int(xs.min()))
            hi = max(int(ys.max()), int(xs.max()))
            if (lo > 0 and hi < size - 1) or size >= max_size:
                return max(c - lo, hi - (c + m - 1), 0)
            size *= 2
    finally:
        net.train(was_training)


def tile_layout(length: int, tile: int, stride: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Tile starts along one axis of ``length`` px and the [a, b) output span each tile keeps.

    Starts step by ``stride`` and the last tile ends at ``length``; each seam lies in the middle
    of the overlap of two neighbouring tiles, so every kept pixel is at least
    ``(tile - stride) // 2`` px from the inner edges of its tile.
    """
    if length <= tile:
        return [0], [(0, length)]
    starts = list(range(0, length - tile, stride)) + [length - tile]
    cuts = [0] + [(starts[i - 1] + tile + starts[i]) // 2 for i in range(1, len(starts))] + [length]
    return starts, [(cuts[i], cuts[i + 1]) for i in range(len(starts))]


def _probabilities(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = net(x)
    if logits.shape[1] != 2:
        raise ValueError(f"expected a two-class network, it outputs {logits.shape[1]} channels")
    return F.softmax(logits.float(), dim=1)[:, 1]


def predict_proba(
    net: nn.Module,
    image: np.ndarray,
    *,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    channels_last: bool = True,
) -> np.ndarray:
    """Particle probability (H, W) float32 of a prepared image (H, W), by seamless tiled inference.

    ``tile`` (px, a multiple of the network's ``input_multiple``) bounds the size of one forward
    pass; a frame that fits in one tile is run whole. ``overlap`` px of context are kept on each
    inner tile edge (the tile stride is rounded down to a multiple of ``input_multiple`` so the
    pooling grid of every tile lines up with that of the whole frame).
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"predict_proba needs a 2-D image, got shape {img.shape}")
    m = input_multiple(net)
    if tile < m or tile % m:
        raise ValueError(f"tile {tile} must be a positive multiple of {m} (the network's input multiple)")
    if overlap < 0:
        raise ValueError(f"overlap must be >= 0, got {overlap}")
    stride = (tile - 2 * overlap) // m * m
    if stride < m:
        raise ValueError(f"overlap {overlap} leaves no stride in a {tile} px tile; use a larger "
                         f"tile or an overlap <= {(tile - m) // 2}")
    if device is None:
        param = next(net.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    net.to(device=device, memory_format=memory_format).eval()

    x = torch.from_numpy(np.ascontiguousarray(img))[None, None]
    x, (h, w) = pad_to_multiple(x, m)
    hp, wp = x.shape[-2:]
    th, tw = min(tile, hp), min(tile, wp)
    ys, ycuts = tile_layout(hp, th, stride)
    xs, xcuts = tile_layout(wp, tw, stride)
    jobs = [(y0, ya, x0, xa) for y0, ya in zip(ys, ycuts, strict=True)
            for x0, xa in zip(xs, xcuts, strict=True)]
    out = np.empty((hp, wp), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(jobs), max(1, batch_size)):
            batch = jobs[start:start + max(1, batch_size)]
            xb = torch.cat([x[..., y0:y0 + th, x0:x0 + tw] for y0, _, x0, _ in batch])
            xb = xb.to(device).contiguous(memory_format=memory_format)
            pb = _probabilities(net, xb).cpu().numpy()
            for k, (y0, (ya, yb), x0, (xa, xb_)) in enumerate(batch):
                out[ya:yb, xa:xb_] = pb[k, ya - y0:yb - y0, xa - x0:xb_ - x0]
    return out[:h, :w]


def threshold_prob(prob: np.ndarray, threshold: str | float = "otsu") -> tuple[np.ndarray, float]:
    """Bool mask ``prob >= t`` and ``t``: the frame's Otsu threshold (``'otsu'``) or a fixed value."""
    from ..metrics.pixel import binarize, otsu_threshold

    t = otsu_threshold(prob) if threshold == "otsu" else float(threshold)
    return np.asarray(binarize(prob, t)), float(t)


def classical_mask(
    image: np.ndarray,
    *,
    particles: str = "dark",
    threshold: str | float = "otsu",
    sigma_px: float = 2.0,
    opening_radius_px: int = 5,
) -> FrameSegmentation:
    """Segment one raw frame (H, W) with the classical pseudo-labelling pipeline (no network)."""
    from ..data.pseudolabel import PseudoLabelParams, pseudo_label_stages

    params = PseudoLabelParams(sigma=float(sigma_px), opening_radius=int(opening_radius_px),
                               particles=particles, threshold=threshold)
    stages = pseudo_label_stages(np.asarray(image), params)
    return FrameSegmentation(None, stages["mask"], float(stages["threshold"]), 1.0)


def blob_segmentation(image: np.ndarray, diameter_px: float, *,
                      particles: str = "dark") -> tuple[FrameSegmentation, np.ndarray]:
    """Segment one raw frame (H, W) with the contrast-filtered LoG detector (:mod:`data.blobs`).

    Returns the segmentation (mask = the union of the blobs' discs, threshold NaN) and int32
    instance labels, one disc per blob, so touching particles stay apart. ``diameter_px`` is
    the typical particle diameter on the frame (its scale estimate).
    """
    from ..data.blobs import blob_labels, contrast_blobs

    x = np.asarray(image, dtype=np.float64)
    blobs = contrast_blobs(x if particles == "bright" else -x, float(diameter_px))
    labels = blob_labels(x.shape, blobs)
    return FrameSegmentation(None, labels > 0, float("nan"), 1.0), labels


def segment_image(
    model: TrainedModel,
    image: np.ndarray,
    *,
    particles: str = "dark",
    pixel_size_nm: float | None = None,
    rescale: bool = True,
    threshold: str | float = "otsu",
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 4,
    device: str | torch.device | None = None,
    scale: float | None = None,
) -> FrameSegmentation:
    """Segment one raw frame (H, W): probability and mask on the frame's own pixel grid.

    The frame is resized by ``scale`` when given (e.g. from a particle-scale estimate), else by
    ``pixel_size_nm`` over the model's network pixel size (1.0 without ``rescale``).
    """
    image = np.asarray(image)
    pre = Preprocess.from_dict(model.preprocess)
    if scale is None:
        scale = rescale_factor(pixel_size_nm, pre.network_pixel_size_nm) if rescale else 1.0
    x = pre.apply(image, particles=particles, scale=float(scale))
    prob = predict_proba(model.net, x, tile=tile, overlap=overlap, batch_size=batch_size,
                         device=device)
    if prob.shape != image.shape:
        prob = np.clip(resize_image(prob, image.shape), 0.0, 1.0)
    mask, t = threshold_prob(prob, threshold)
    return FrameSegmentation(prob, mask, t, float(scale))


def segment_frames(
    model: TrainedModel, images: np.ndarray, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Segment raw frames (N, H, W): float32 probabilities and bool masks, both (N, H, W).

    Keyword arguments are those of :func:`segment_image` (polarity, pixel size, threshold, tiling).
    """
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"segment_frames needs (N, H, W) frames, got shape {images.shape}")
    prob = np.empty(images.shape, dtype=np.float32)
    masks = np.empty(images.shape, dtype=bool)
    for i, image in enumerate(images):
        seg = segment_image(model, image, **kwargs)
        prob[i], masks[i] = seg.prob, seg.mask
    return prob, masks
