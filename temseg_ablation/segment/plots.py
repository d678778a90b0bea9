"""Figures of a segmentation run: size distribution and coarsening curves (no pyplot state)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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


def _plot_coalescence(ax: Axes, groups: list[tuple[object, pd.DataFrame]]) -> None:
    """Cumulative coalescence (merge) events against time, or why there are none to show."""
    detected = False
    for name, g in groups:
        n = g["coalescence_events"].to_numpy(np.float64) if "coalescence_events" in g else None
        if n is None or not np.isfinite(n).any():
            continue  # NaN: this tracker does not detect merges
        detected = True
        label = Path(str(name)).name if name != "" else None
        ax.step(g["time_s"], np.cumsum(np.nan_to_num(n)), where="post", label=label)
    if not detected:
        ax.text(0.5, 0.5, "merges are detected\nwith --tracker laptrack", ha="center",
                va="center", transform=ax.transAxes, fontsize=8)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # a count of events
    ax.set_xlabel("time (s)")
    ax.set_ylabel("coalescence events (cumulative)")


def plot_coarsening(curves: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Number density (um^-2), mean diameter (nm) and cumulative coalescence events against
    time, one line per ``sequence``."""
    fig = Figure(figsize=(13, 3.6))
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, k) for k in (1, 2, 3))
    fig.subplots_adjust(wspace=0.35)  # room for each panel's y label
    groups = (list(curves.groupby("sequence", sort=False)) if "sequence" in curves
              else [("", curves)])
    for name, g in groups:
        label = Path(str(name)).name if name != "" else None
        ax1.plot(g["time_s"], g["number_density_per_um2"], marker=".", label=label)
        ax2.plot(g["time_s"], g["mean_diameter_nm"], marker=".", label=label)
    _plot_coalescence(ax3, groups)
    ax1.set_xlabel("time (s)")
    ax1.set_ylabel("number density (particles / µm$^2$)")
    ax2.set_xlabel("time (s)")
    ax2.set_ylabel("mean equivalent diameter (nm)")
    if "sequence" in curves and curves["sequence"].nunique() > 1:
        ax2.legend(frameon=False, fontsize=7)
    fig.suptitle(title or "coarsening", fontsize=10)
    return _save(fig, Path(path))
