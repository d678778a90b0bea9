"""Comparison plots across the runs of a sweep (frames from ``report.runs``).

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot so that they work the
same in scripts, tests and notebooks (whatever backend is active) and never pile up in
pyplot's global figure list. Each function returns the figure and saves it when given a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure


def _need(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if len(df) == 0:
        raise ValueError(f"{what}: the frame is empty (no runs to plot)")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; have {list(df.columns)[:12]}...")


def save_figure(fig: Figure, path: str | Path | None) -> Figure:
    """Save ``fig`` to ``path`` (folders created) when a path is given; returns the figure."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


def variant_order(runs: pd.DataFrame, metric: str = "final/val/f1_otsu",
                  by: str = "variant") -> list[str]:
    """Groups sorted by mean ``metric`` over seeds, best first (groups without it last)."""
    _need(runs, [by], "variant_order")
    if metric not in runs.columns:
        return sorted(runs[by].astype(str).unique())
    means = runs.groupby(by)[metric].mean().sort_values(ascending=False, na_position="last")
    return [str(v) for v in means.index]


def variant_colors(variants: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """A fixed colour per variant name (sorted names onto tab10 / tab20) so plots agree."""
    names = sorted(set(map(str, variants)))
    cmap = colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def f1_by_variant(runs: pd.DataFrame, metric: str = "final/val/f1_otsu", by: str = "variant",
                  path: str | Path | None = None, title: str | None = None) -> Figure:
    """Horizontal bars: mean ``metric`` per variant, error bars +-1 s.d. over seeds, one dot per run."""
    _need(runs, [by, metric], "f1_by_variant")
    order = variant_order(runs, metric, by)
    colors = variant_colors(order)
    stats = runs.groupby(by)[metric].agg(["mean", "std", "count"]).reindex(order)
    fig = Figure(figsize=(7, 1.2 + 0.38 * len(order)), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(order))[::-1]  # best at the top
    ax.barh(y, stats["mean"].fillna(0), xerr=stats["std"].fillna(0), color=[colors[v] for v in order],
            alpha=0.75, capsize=3, error_kw={"lw": 1})
    for yi, name in zip(y, order, strict=True):
        vals = runs.loc[runs[by].astype(str) == name, metric].dropna().to_numpy()
        # small deterministic vertical jitter so repeated seeds stay visible
        jitter = np.linspace(-0.15, 0.15, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
        ax.plot(vals, yi + jitter, "o", color="black", ms=3)
        n = int(stats.loc[name, "count"])
        if n:
            ax.text(min(1.0, stats.loc[name, "mean"] + (stats.loc[name, "std"] if n > 1 else 0))
                    + 0.01, yi, f"{stats.loc[name, 'mean']:.3f} (n={n})", va="center", fontsize=7)
    ax.set_yticks(y, order, fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel(metric + "  (bar: mean over seeds, line: +-1 s.d., dots: runs)")
    ax.set_title(title or f"{metric} per {by}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return save_figure(fig, path)


def curves_by_variant(curves: pd.DataFrame, runs: pd.DataFrame, value: str = "f1_mean",
                      by: str = "variant", path: str | Path | None = None,
                      title: str | None = None) -> Figure:
    """``value`` versus softmax threshold, one line per variant (mean over its runs, band +-1 s.d.
    over seeds where there are several)."""
    _need(curves, ["run_id", "threshold", value], "curves_by_variant (curves)")
    _need(runs, ["run_id", by], "curves_by_variant (runs)")
    df = curves.merge(runs[["run_id", by]], on="run_id", how="inner")
    if len(df) == 0:
        raise ValueError("curves_by_variant: no curve belongs to a run of the runs frame")
    metric = "final/val/f1_otsu" if "final/val/f1_otsu" in runs.columns else value
    order = [v for v in variant_order(runs, metric, by) if v in set(df[by].astype(str))]
    colors = variant_colors(variant_order(runs, metric, by))
    fig = Figure(figsize=(7.5, 4.5), dpi=110, layout="constrained")
    ax = fig.add_subplot()
    for name in order:
        sub = df[df[by].astype(str) == name]
        stats = sub.groupby("threshold")[value].agg(["mean", "std", "count"])
        t = stats.index.to_numpy(dtype=float)
        ax.plot(t, stats["mean"], color=colors[name], lw=1.6,
                label=f"{name} (n={sub['run_id'].nunique()})")
        if sub["run_id"].nunique() > 1:
            sd = stats["std"].fillna(0)
            ax.fill_between(t, stats["mean"] - sd, stats["mean"] + sd, color=colors[name],
                            alpha=0.15, lw=0)
    ax.set(xlabel="particle softmax threshold", ylabel=value, xlim=(0, 1), ylim=(0, 1.02),
           title=title or f"{value} versus threshold per {by}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, path)


def generalisation_gap(runs: pd.DataFrame, name: str = "f1_otsu", by: str = "variant",
                       path: str | Path | None = None, title: str | None = None) -> Figure:
    """Validation versus held-out ``name`` per variant (left, y = x dashed) and the gap
    val - held-out (right; positive: worse on unseen experiments), +-1 s.d. over seeds."""
    val, held = f"final/val/{name}", f"final/heldout/{name}"
    _need(runs, [by, val, held], "generalisation_gap")
    df = runs[[by, val, held]].copy()
    df["gap"] = df[val] - df[held]
    order = variant_order(runs, val, by)
    colors = variant_colors(order)
    stats = df.groupby(by).agg(["mean", "std"]).reindex(order)
    fig = Figure(figsize=(11, 1.5 + max(3.5, 0.3 * len(order))), dpi=110, layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[1, 1])
    for v in order:
        s = stats.loc[v]
        ax.errorbar(s[(val, "mean")], s[(held, "mean")], xerr=np.nan_to_num(s[(val, "std")]),
                    yerr=np.nan_to_num(s[(held, "std")]), fmt="o", color=colors[v], capsize=2,
                    ms=5, label=v)
    lo = float(np.nanmin([df[val].min(), df[held].min(), 1.0]))
    lo = max(0.0, lo - 0.05)
    ax.plot([lo, 1], [lo, 1], "--", color="grey", lw=0.8)
    ax.set(xlim=(lo, 1), ylim=(lo, 1), xlabel=f"validation {name}", ylabel=f"held-out {name}",
           title="validation vs held-out (mean over seeds)")
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", frameon=False)
    y = np.arange(len(order))[::-1]
    bx.barh(y, stats[("gap", "mean")].fillna(0), xerr=stats[("gap", "std")].fillna(0),
            color=[colors[v] for v in order], alpha=0.75, capsize=3)
    bx.axvline(0, color="black", lw=0.8)
    bx.set_yticks(y, order, fontsize=8)
    bx.set(xlabel=f"gap: validation - held-out {name}", title="generalisation gap")
    bx.grid(axis="x", alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, path)
