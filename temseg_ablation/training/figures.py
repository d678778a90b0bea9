"""Figures logged with every run: threshold curves, prediction overlays, learned kernels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

# Figure objects, not pyplot: no global backend is chosen or changed by importing this module
from matplotlib.figure import Figure


def threshold_curves(curves: pd.DataFrame, path: str | Path, title: str = "",
                     otsu: float | None = None) -> Path:
    """Precision / recall / F1 (per-image mean, +-1 s.d. band for F1) versus softmax threshold."""
    fig = Figure(figsize=(5.5, 4), dpi=110)
    ax = fig.subplots()
    t = curves["threshold"]
    ax.plot(t, curves["precision_mean"], label="precision", color="tab:blue")
    ax.plot(t, curves["recall_mean"], label="recall", color="tab:orange")
    ax.plot(t, curves["f1_mean"], label="F1", color="tab:green", lw=2)
    ax.fill_between(t, curves["f1_mean"] - curves["f1_std"], curves["f1_mean"] + curves["f1_std"],
                    color="tab:green", alpha=0.2, lw=0)
    for x, style in ((0.4, ":"), (0.7, "--")):
        ax.axvline(x, color="grey", ls=style, lw=0.8)
    if otsu is not None and np.isfinite(otsu):
        ax.axvline(otsu, color="black", lw=0.8, label=f"mean Otsu {otsu:.2f}")
    ax.set(xlabel="particle softmax threshold", ylabel="score (mean over images)",
           ylim=(0, 1.02), xlim=(0, 1), title=title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def prediction_overlay(image: np.ndarray, prob: np.ndarray, truth: np.ndarray,
                       path: str | Path, threshold: float, title: str = "") -> Path:
    """Frame with true (cyan) and predicted (red, at ``threshold``) contours, and the probability map."""
    fig = Figure(figsize=(10, 5), dpi=110)
    axes = fig.subplots(1, 2)
    axes[0].imshow(image, cmap="gray")
    axes[0].contour(truth.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    axes[0].contour((prob >= threshold).astype(float), levels=[0.5], colors="red", linewidths=0.8)
    axes[0].set_title(f"truth (cyan) vs prediction at {threshold:.2f} (red)", fontsize=9)
    im = axes[1].imshow(prob, cmap="magma", vmin=0, vmax=1)
    axes[1].set_title("particle probability", fontsize=9)
    fig.colorbar(im, ax=axes[1], fraction=0.046)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)


def kernel_images(kernels: np.ndarray, path: str | Path, title: str = "") -> Path:
    """Learned first-layer filters (n, k, k) as images, plus their mean (the paper's Fig. 6a / S8)."""
    kernels = np.asarray(kernels)
    n = len(kernels)
    cols = min(8, n) + (1 if n > 1 else 0)
    rows = int(np.ceil(n / min(8, n)))
    fig = Figure(figsize=(1.4 * cols, 1.4 * rows + 0.4), dpi=110)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, k in enumerate(kernels):
        ax = axes[i // min(8, n), i % min(8, n)]
        ax.imshow(k, cmap="gray")
    if n > 1:
        axes[0, -1].imshow(kernels.mean(0), cmap="gray")
        axes[0, -1].set_title("mean", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)
