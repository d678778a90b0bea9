"""Learned first-layer kernels: similarity, centre-surround contrast, what training changed,
and a signed-colour figure (the interpretability finding, Fig. 6a, Supplementary Figs. 7-8)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .markdown import NAN, save_figure


def kernel_correlation(a: np.ndarray, b: np.ndarray, how: str = "crop") -> float:
    """Pearson correlation of two kernels (k, k); a larger one is centre-cropped (``how='crop'``,
    same pixel scale) or resized (``'resize'``, same relative scale) to the smaller one's size."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"kernel_correlation: need 2-D kernels, got {a.shape} and {b.shape}")
    if a.shape != b.shape:
        small, big = (a, b) if a.size < b.size else (b, a)
        if how == "crop":
            r0 = (big.shape[0] - small.shape[0]) // 2
            c0 = (big.shape[1] - small.shape[1]) // 2
            big = big[r0:r0 + small.shape[0], c0:c0 + small.shape[1]]
        elif how == "resize":
            from skimage.transform import resize

            big = resize(big, small.shape, order=1, anti_aliasing=True, preserve_range=True)
        else:
            raise ValueError(f"kernel_correlation: how must be 'crop' or 'resize', got {how!r}")
        a, b = small, big
    a, b = a - a.mean(), b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else NAN


#: The eight symmetries of a square kernel (rotations by 90 degrees, with and without a flip).
DIHEDRAL = {
    "identity": lambda k: k, "rot90": lambda k: np.rot90(k, 1), "rot180": lambda k: np.rot90(k, 2),
    "rot270": lambda k: np.rot90(k, 3), "flip": lambda k: k[:, ::-1],
    "flip+rot90": lambda k: np.rot90(k[:, ::-1], 1), "flip+rot180": lambda k: np.rot90(k[:, ::-1], 2),
    "flip+rot270": lambda k: np.rot90(k[:, ::-1], 3),
}


def best_dihedral_correlation(a: np.ndarray, b: np.ndarray, how: str = "crop") -> tuple[float, str]:
    """Highest :func:`kernel_correlation` of ``a`` with any of the eight symmetries of ``b``."""
    best = max(((kernel_correlation(a, f(np.asarray(b)), how), name) for name, f in DIHEDRAL.items()),
               key=lambda x: -np.inf if not np.isfinite(x[0]) else x[0])
    return best


def centre_surround(kernel: np.ndarray) -> float:
    """(mean of the central 3 x 3 - mean of the outermost ring) / s.d. of the kernel (k, k).

    Negative: the filter answers dark blobs (the particles are dark in bright field); a
    Laplacian-of-Gaussian-like blob detector gives a large magnitude.
    """
    k = np.asarray(kernel, dtype=float)
    if k.ndim != 2 or min(k.shape) < 5:
        raise ValueError(f"centre_surround: need a 2-D kernel of at least 5 x 5, got {k.shape}")
    c0, c1 = k.shape[0] // 2, k.shape[1] // 2
    centre = k[c0 - 1:c0 + 2, c1 - 1:c1 + 2].mean()
    ring = np.concatenate([k[0], k[-1], k[1:-1, 0], k[1:-1, -1]]).mean()
    sd = k.std()
    return float((centre - ring) / sd) if sd > 0 else NAN


def initial_kernels(net_config: Mapping[str, Any], seed: int) -> np.ndarray:
    """First-layer kernels (n, k, k) a job started from: the app seeds torch with the run's seed
    right before ``build_model``, so the same two steps rebuild them exactly (this process's
    random state is left as it was)."""
    import torch

    from ...models import build_model

    cfg = dict(net_config)
    arch = cfg.pop("arch")
    with torch.random.fork_rng():
        torch.manual_seed(int(seed))
        net = build_model(arch, **cfg)
    if not callable(getattr(net, "kernels", None)):
        raise ValueError(f"initial_kernels: a {arch!r} network has no kernels() to show")
    return net.kernels().numpy()


def kernel_stats(learned: np.ndarray, initial: np.ndarray | None = None) -> dict[str, float]:
    """Summary of one kernel (k, k): centre-surround contrast, weight sum and, given the
    ``initial`` kernel, how much training changed it: correlation with the start, relative
    change ||k - k0|| / ||k0||, and how uniform the update is (|mean| / rms of k - k0; 1 means
    training only shifted every weight by the same amount, i.e. added a box filter)."""
    k = np.asarray(learned, dtype=float)
    out = {"centre - surround (sd)": centre_surround(k), "sum of weights": float(k.sum())}
    if initial is not None:
        k0 = np.asarray(initial, dtype=float)
        d = k - k0
        rms = float(np.sqrt((d * d).mean()))
        out.update({"corr. with initial": kernel_correlation(k, k0),
                    "relative change": float(np.linalg.norm(d) / (np.linalg.norm(k0) or np.nan)),
                    "uniform part of update": abs(float(d.mean())) / rms if rms > 0 else NAN})
    return out


def kernels_figure(kernels: Mapping[str, np.ndarray], path: str | Path | None = None,
                   ncols: int | None = None, title: str = "") -> Figure:
    """Kernels (k, k) in a grid (``ncols`` per row) on diverging scales centred at zero, so that
    the sign of each weight (dark-particle detector: negative centre) can be read off."""
    ncols = ncols or len(kernels)
    nrows = int(np.ceil(len(kernels) / ncols))
    fig = Figure(figsize=(3.0 * ncols, 2.9 * nrows + 0.3), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in axes[len(kernels):]:
        ax.set_axis_off()
    if title:
        fig.suptitle(title, fontsize=10)
    for ax, (name, k) in zip(axes, kernels.items(), strict=False):
        k = np.asarray(k, dtype=float)
        lim = float(np.abs(k).max()) or 1.0
        im = ax.imshow(k, cmap="RdBu_r", vmin=-lim, vmax=lim)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    return save_figure(fig, path)
