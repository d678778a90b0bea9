"""Figures of a segmentation run: size distribution and coarsening curves (no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .outdir import atomic_write

__all__ = ["plot_coarsening", "plot_size_distribution"]


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight"))
    return path


def plot_size_distribution(diameters: np.ndarray, path: str | Path, unit: str = "nm",
                           title: str = "") -> Path:
    """Histogram of equivalent diameters (in ``unit``) written to ``path`` (PNG)."""
    d = np.asarray(diameters, dtype=np.float64)
    d = d[np.isfinite(d)]
    fig = Figure(figsize=(5.5, 3.8))
    ax = fig.add_subplot()
    if d.size:
        bins = min(60, max(10, int(np.sqrt(d.size)) * 2))
        ax.hist(d, bins=bins, color="#4c72b0", edgecolor="white", linewidth=0.5)
        ax.axvline(float(np.median(d)), color="#c44e52", lw=1.2,
                   label=f"median {np.median(d):.3g} {unit}")
        ax.legend(frameon=False)
    else:
        ax.text(0.5, 0.5, "no particles", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"equivalent diameter ({unit})")
    ax.set_ylabel("particles")
    ax.set_title(title or f"size distribution ({d.size} particles)", fontsize=10)
    return _save(fig, Path(path))


def plot_coarsening(curves: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Number density (um^-2) and mean diameter (nm) against time, one line per ``sequence``."""
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    groups = curves.groupby("sequence", sort=False) if "sequence" in curves else [("", curves)]
    for name, g in groups:
        label = Path(str(name)).name if name != "" else None
        ax1.plot(g["time_s"], g["number_density_per_um2"], marker=".", label=label)
        ax2.plot(g["time_s"], g["mean_diameter_nm"], marker=".", label=label)
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("number density (particles / µm$^2$)")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("mean equivalent diameter (nm)")
    if "sequence" in curves and curves["sequence"].nunique() > 1:
        ax2.legend(frameon=False, fontsize=7)
    fig.suptitle(title or "coarsening", fontsize=10)
    return _save(fig, Path(path))
