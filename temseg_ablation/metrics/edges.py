"""Calibration-independent edge measures: probability profiles across true particle edges.

Why: counting band pixels with 0.1 < p < 0.9 (``edge_uncertainty``) mostly counts background
once the output batch norm keeps background probabilities off 0. The profile measures below
normalise each particle's probability profile between its own far-outside and far-inside
levels, so a constant offset or scale of the probabilities does not change them.

Profile of one true particle
    Every pixel is given a signed distance ``s`` to the true mask's edge (:func:`signed_distance`:
    negative inside, positive outside, +-0.5 px on the two pixels next to a straight edge, so
    ``s = 0`` is the true boundary) and an owner, the true particle whose nearest pixel is
    closest. A particle's pixels with ``|s| <= radius_px`` are binned by ``s`` (``bin_px`` wide);
    each bin gives its mean ``s`` and mean probability. The far-inside level is the mean
    probability of the innermost ``far_px`` of the profile, the far-outside level that of the
    outermost ``far_px``; the profile is normalised to 1 inside, 0 outside, and made monotone
    (mean of the running minimum from the inside and the running maximum from the outside;
    a monotone profile is unchanged) and interpolated with a monotone cubic (PCHIP). Particles whose inside level does not exceed the outside
    one by ``min_contrast`` (a missed particle) have no profile and are left out.

``ramp_width_px``
    distance between the 90 % and the 10 % crossings of the normalised profile; a sharp step
    gives ~0.7 px (its two samples sit at -0.5 and +0.5), a Gaussian-blurred straight edge
    2.563 sigma within ~1 % for sigma >= 1 px. On a digitised disc the distance transform makes
    distances beyond the first pixel ~0.25 px short, so blurred discs read ~4-6 % low (a bias
    shared by every arm of a paired comparison).
``edge_offset_px``
    position of the 50 % crossing; negative = the predicted edge lies inside the true particle.

Boundary hits at several tolerances use one distance transform per boundary
(:func:`boundary_hits`); they equal :func:`temseg_ablation.metrics.particle.boundary_f1`'s
counts at each tolerance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from .matching import compact_labels

__all__ = [
    "boundary_pixels",
    "boundary_hits",
    "signed_distance",
    "edge_profiles",
    "ramp_and_offset",
    "EdgeProfileMetrics",
]

_NEIGHBOURS8 = np.ones((3, 3), dtype=bool)
_FINE_PX = 0.05  # grid step on which crossings of the interpolated profile are read


def boundary_pixels(mask: np.ndarray) -> np.ndarray:
    """Bool (H, W): mask pixels with a non-mask 8-neighbour; the image frame is not an edge."""
    # border_value=1 so that the image frame is not mistaken for a particle edge
    return mask & ~ndimage.binary_erosion(mask, structure=_NEIGHBOURS8, border_value=1)


def boundary_hits(
    pred_mask: np.ndarray, true_mask: np.ndarray, tolerances_px: Sequence[int] = (1, 2, 3)
) -> dict[int, dict[str, int]]:
    """Boundary pixel counts and hits within each Euclidean tolerance (px).

    Returns ``{tol: {"pred_boundary", "pred_hit", "true_boundary", "true_hit"}}`` (ints), the
    summable counts behind boundary precision / recall / F1.
    """
    pred = np.asarray(pred_mask).astype(bool, copy=False)
    true = np.asarray(true_mask).astype(bool, copy=False)
    if pred.shape != true.shape or pred.ndim != 2:
        raise ValueError(f"metrics: boundary_hits needs equal 2-D shapes, got {pred.shape}, {true.shape}")
    pb, tb = boundary_pixels(pred), boundary_pixels(true)
    # distance of every pixel to the other mask's nearest boundary pixel (inf without one)
    to_true = ndimage.distance_transform_edt(~tb) if tb.any() else np.full(tb.shape, np.inf)
    to_pred = ndimage.distance_transform_edt(~pb) if pb.any() else np.full(pb.shape, np.inf)
    dp, dt = to_true[pb], to_pred[tb]
    out = {}
    for tol in tolerances_px:
        if tol < 0 or int(tol) != tol:
            raise ValueError(f"metrics: tolerances must be integers >= 0, got {tol}")
        out[int(tol)] = {"pred_boundary": int(pb.sum()), "pred_hit": int((dp <= tol).sum()),
                         "true_boundary": int(tb.sum()), "true_hit": int((dt <= tol).sum())}
    return out


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed distance (px, float64 (H, W)) of pixel centres to the mask's edge.

    Negative inside, positive outside: ``-(d_in - 0.5)`` inside and ``d_out - 0.5`` outside,
    where ``d_in`` / ``d_out`` are Euclidean distances to the nearest pixel of the other class,
    so the boundary is ``s = 0``. The frame is not an edge. A mask without both classes gives
    all +inf (nothing inside) or all -inf (nothing outside).
    """
    m = np.asarray(mask).astype(bool, copy=False)
    if not m.any():
        return np.full(m.shape, np.inf)
    if m.all():
        return np.full(m.shape, -np.inf)
    d_out = ndimage.distance_transform_edt(~m)
    d_in = ndimage.distance_transform_edt(m)
    return np.where(m, 0.5 - d_in, d_out - 0.5)


def edge_profiles(
    prob: np.ndarray, labels: np.ndarray, radius_px: float = 8.0, bin_px: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-particle binned probability-vs-signed-distance profiles (see module notes).

    Parameters
    ----------
    prob : float (H, W) particle probabilities.
    labels : int (H, W) true instance labels, 0 = background (bool accepted: one particle).
    radius_px, bin_px : profile half-length and bin width in px.

    Returns
    -------
    (s, p, n), each float64 / int64 (K, n_bins) for the K particles in label order: mean
    signed distance, mean probability and pixel count per bin (s and p NaN where n = 0).
    """
    lab = np.asarray(labels)
    pr = np.asarray(prob, dtype=np.float64)
    if lab.shape != pr.shape or lab.ndim != 2:
        raise ValueError(f"metrics: edge_profiles needs equal 2-D shapes, got {pr.shape}, {lab.shape}")
    if radius_px <= 0 or bin_px <= 0:
        raise ValueError("metrics: radius_px and bin_px must be > 0")
    nb = int(np.ceil(2 * radius_px / bin_px))
    inv, k = compact_labels(lab.astype(np.int64, copy=False))
    empty = np.full((k, nb), np.nan), np.full((k, nb), np.nan), np.zeros((k, nb), np.int64)
    inside = inv > 0
    if k == 0 or inside.all():
        return empty
    # owner of every pixel: the particle holding its nearest inside pixel (itself if inside)
    d_out, (ri, ci) = ndimage.distance_transform_edt(~inside, return_indices=True)
    owner = inv[ri, ci]
    d_in = ndimage.distance_transform_edt(inside)
    s = np.where(inside, 0.5 - d_in, d_out - 0.5)
    sel = np.abs(s) <= radius_px
    b = np.minimum(((s[sel] + radius_px) / bin_px).astype(np.int64), nb - 1)
    code = (owner[sel] - 1) * nb + b
    size = k * nb
    cnt = np.bincount(code, minlength=size).reshape(k, nb)
    ps = np.bincount(code, weights=pr[sel], minlength=size).reshape(k, nb)
    ss = np.bincount(code, weights=s[sel], minlength=size).reshape(k, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ss / cnt, ps / cnt, cnt.astype(np.int64)


def ramp_and_offset(
    s: np.ndarray, p: np.ndarray, n: np.ndarray, far_px: float = 1.0, min_contrast: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """Per-particle 10-90 % ramp width and 50 % offset (px) from :func:`edge_profiles` output.

    Returns two float64 (K,) arrays, NaN for particles without a profile (no pixel on one side
    of the edge, or inside level - outside level < ``min_contrast``).
    """
    k = s.shape[0]
    ramp = np.full(k, np.nan)
    offset = np.full(k, np.nan)
    for i in range(k):
        ok = n[i] > 0
        si, pi, ni = s[i][ok], p[i][ok], n[i][ok]
        if si.size < 2 or si[0] >= 0 or si[-1] <= 0:
            continue
        inner = si <= si[0] + far_px
        outer = si >= si[-1] - far_px
        p_in = float(np.average(pi[inner], weights=ni[inner]))
        p_out = float(np.average(pi[outer], weights=ni[outer]))
        if p_in - p_out < min_contrast:
            continue
        q = (pi - p_out) / (p_in - p_out)
        # symmetric monotone envelope: unchanged for a monotone profile
        q = 0.5 * (np.minimum.accumulate(q) + np.maximum.accumulate(q[::-1])[::-1])
        # a monotone cubic through the bin means, read on a 0.05 px grid: linear interpolation
        # between 1 px samples overstates a Gaussian ramp by ~6 % at sigma = 1.5 px
        fine = np.linspace(si[0], si[-1], int((si[-1] - si[0]) / _FINE_PX) + 2)
        qf = PchipInterpolator(si, q)(fine)
        qr, sr = qf[::-1], fine[::-1]  # ascending q for np.interp
        s10, s50, s90 = (float(np.interp(level, qr, sr)) for level in (0.1, 0.5, 0.9))
        ramp[i] = s10 - s90
        offset[i] = s50
    return ramp, offset


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


class EdgeProfileMetrics(Metric):
    """Median ramp width and edge offset over all true particles (see module notes).

    ``update(prob, true_labels)``: probabilities (B, H, W) and true instance labels (B, H, W).
    Per-particle values are float32 ``cat`` states (one number per particle), so DDP gives the
    single-process medians. ``compute()`` returns float64 0-d tensors ``ramp_width_px``,
    ``edge_offset_px`` (NaN without any profiled particle) and ``edge_profiled_fraction``
    (share of true particles that had a profile).
    """

    is_differentiable = False
    full_state_update = False

    def __init__(self, radius_px: float = 8.0, bin_px: float = 0.5, far_px: float = 1.0,
                 min_contrast: float = 0.05, **kwargs) -> None:
        super().__init__(**kwargs)
        self.radius_px, self.bin_px = float(radius_px), float(bin_px)
        self.far_px, self.min_contrast = float(far_px), float(min_contrast)
        self.add_state("ramp", [], dist_reduce_fx="cat")
        self.add_state("offset", [], dist_reduce_fx="cat")
        self.add_state("n_particles", torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, prob: torch.Tensor, true_labels: torch.Tensor) -> None:
        """Accumulate a batch of probabilities (B, H, W) against instance labels (B, H, W)."""
        pr, lab = _to_numpy(prob), _to_numpy(true_labels)
        if pr.ndim == 2:
            pr, lab = pr[None], lab[None]
        if pr.shape != lab.shape or pr.ndim != 3:
            raise ValueError(f"metrics: prob and labels must be equal (B, H, W), got {pr.shape}, {lab.shape}")
        ramps, offsets, total = [], [], 0
        for i in range(pr.shape[0]):
            s, p, n = edge_profiles(pr[i], lab[i], self.radius_px, self.bin_px)
            r, o = ramp_and_offset(s, p, n, self.far_px, self.min_contrast)
            total += r.size
            keep = np.isfinite(r)
            ramps.append(r[keep])
            offsets.append(o[keep])
        dev = self.n_particles.device
        self.n_particles += total
        self.ramp.append(torch.as_tensor(np.concatenate(ramps), dtype=torch.float32, device=dev))
        self.offset.append(torch.as_tensor(np.concatenate(offsets), dtype=torch.float32, device=dev))

    @staticmethod
    def _cat(state) -> np.ndarray:
        if isinstance(state, list):
            if not state:
                return np.zeros(0)
            state = dim_zero_cat(state)
        return state.detach().cpu().to(torch.float64).numpy().ravel()

    def compute(self) -> dict[str, torch.Tensor]:
        """``ramp_width_px``, ``edge_offset_px``, ``edge_profiled_fraction`` (float64 0-d)."""
        ramp, offset = self._cat(self.ramp), self._cat(self.offset)
        n = int(self.n_particles)
        nan = float("nan")
        vals = {
            "ramp_width_px": float(np.median(ramp)) if ramp.size else nan,
            "edge_offset_px": float(np.median(offset)) if offset.size else nan,
            "edge_profiled_fraction": ramp.size / n if n else nan,
        }
        return {k: torch.tensor(v, dtype=torch.float64) for k, v in vals.items()}
