"""Batched affine warps on tensors (any device): the interpolating augmentation, off the loader.

At the paper's 1024 x 1024 crops the affine map of :func:`.transforms.augment_pair` costs about
two thirds of a training crop in a loader worker (scipy, two maps per crop), enough that the data
loader, not the GPU, sets the training rate. :func:`affine_warp_batch` applies the same maps to a
whole batch with ``grid_sample`` where the batch already is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["affine_warp_batch"]


def _sources(params: torch.Tensor, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Source (row, col) pixel coordinates, each (B, H, W) float64: ``matrix @ o + offset`` for output o."""
    p = params.to(torch.float64)
    rows = torch.arange(h, dtype=torch.float64, device=p.device)
    cols = torch.arange(w, dtype=torch.float64, device=p.device)
    r, c = torch.meshgrid(rows, cols, indexing="ij")
    src_r = p[:, 0, None, None] * r + p[:, 1, None, None] * c + p[:, 4, None, None]
    src_c = p[:, 2, None, None] * r + p[:, 3, None, None] * c + p[:, 5, None, None]
    return src_r, src_c


def _reflect(x: torch.Tensor, n: int) -> torch.Tensor:
    """Half-sample symmetric reflection of pixel coordinates into [-0.5, n - 0.5]."""
    period = 2 * n
    y = torch.remainder(x + 0.5, period)
    return torch.where(y >= n, period - y, y) - 0.5


def affine_warp_batch(image: torch.Tensor, labels: torch.Tensor,
                      params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a batch by per-sample affine maps, as ``scipy.ndimage.affine_transform`` would.

    Parameters
    ----------
    image : (B, C, H, W) float tensor, interpolated bilinearly (scipy ``order=1``).
    labels : (B, H, W) integer instance ids, nearest neighbour (scipy ``order=0``), so ids survive.
    params : (B, 6) row-major 2 x 2 matrix and offset (px, (row, col)) per sample, from
        :func:`.transforms.augment_pair_deferred`; output pixel o samples ``matrix @ o + offset``.

    Returns
    -------
    The warped image (same dtype) and labels (same dtype). Borders are reflected (scipy
    ``mode="reflect"``). Interior pixels agree with scipy to float32 rounding (tested); a label
    pixel whose source lies exactly halfway between two pixels may take the other neighbour.
    """
    if image.ndim != 4 or labels.ndim != 3 or params.shape != (image.shape[0], 6):
        raise ValueError(f"affine_warp_batch: image (B, C, H, W), labels (B, H, W), params (B, 6); "
                         f"got {tuple(image.shape)}, {tuple(labels.shape)}, {tuple(params.shape)}")
    b, _, h, w = image.shape
    src_r, src_c = _sources(params, h, w)
    # align_corners=False: pixel i spans [i - 0.5, i + 0.5] -> normalised (2 i + 1) / n - 1, and
    # "reflection" then mirrors about the outer pixel edges, scipy's mode="reflect"
    grid = torch.stack([(2 * src_c + 1) / w - 1, (2 * src_r + 1) / h - 1], dim=-1)
    warped = F.grid_sample(image.to(torch.float32), grid.to(torch.float32), mode="bilinear",
                           padding_mode="reflection", align_corners=False).to(image.dtype)
    # labels: index the nearest source pixel directly (exact for any id, no float round trip)
    rr = torch.round(_reflect(src_r, h)).clamp_(0, h - 1).long()
    cc = torch.round(_reflect(src_c, w)).clamp_(0, w - 1).long()
    flat = labels.reshape(b, h * w)
    out = torch.gather(flat, 1, (rr * w + cc).reshape(b, -1)).reshape(b, h, w)
    return warped, out
