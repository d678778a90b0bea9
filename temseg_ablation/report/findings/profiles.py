"""Line profiles across particles (the paper's Fig. 5): picking particles, sampling intensity
and probability along a line through each, summarising and drawing them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .markdown import save_figure


def pick_particles(table: pd.DataFrame, labels: np.ndarray, n: int = 3,
                   min_diameter_px: float = 6.0, quantiles: Sequence[float] = (0.1, 0.5, 0.95),
                   pad_px: int = 6) -> pd.DataFrame:
    """Up to ``n`` particles of different sizes for line profiles, smallest first.

    ``table``: a synthetic frame's truth table (id, y_px, x_px, diameter_px, n_lobes,
    touches_border), ``labels`` (H, W) its instance labels. Eligible: one-lobe particles off the
    border, at least ``min_diameter_px`` across, whose horizontal line through the centre crosses
    no other particle within ``diameter + pad_px`` of the centre. Picks the eligible particle
    nearest each diameter quantile. Adds ``row``, ``x0``, ``x1`` (the line's [x0, x1) window).
    """
    labels = np.asarray(labels)
    h, w = labels.shape
    rows = []
    for rec in table.to_dict("records"):
        if rec.get("touches_border") or int(rec.get("n_lobes", 1)) != 1:
            continue
        d = float(rec["diameter_px"])
        if d < min_diameter_px:
            continue
        r, x = int(round(rec["y_px"])), int(round(rec["x_px"]))
        half = int(np.ceil(d)) + pad_px
        x0, x1 = x - half, x + half + 1
        if not (0 <= r < h and x0 >= 0 and x1 <= w):
            continue
        seen = set(np.unique(labels[r, x0:x1]).tolist()) - {0}
        if seen != {int(rec["id"])}:
            continue
        rows.append({**rec, "row": r, "x0": x0, "x1": x1})
    if not rows:
        return pd.DataFrame(columns=[*table.columns, "row", "x0", "x1"])
    cand = pd.DataFrame(rows).sort_values("diameter_px", kind="stable").reset_index(drop=True)
    targets = np.quantile(cand["diameter_px"], list(quantiles)[:n]) if n else []
    chosen: list[int] = []
    for q in targets:
        free = cand.index.difference(chosen)
        if len(free) == 0:
            break
        chosen.append(int((cand.loc[free, "diameter_px"] - q).abs().idxmin()))
    return cand.loc[sorted(set(chosen))].reset_index(drop=True)


def line_profiles(image: np.ndarray, probs: Mapping[str, np.ndarray], labels: np.ndarray,
                  picks: pd.DataFrame) -> pd.DataFrame:
    """Values along each picked particle's line: long frame with ``id``, ``x_px``,
    ``offset_px`` (from the particle centre), ``intensity``, ``inside`` (true mask) and one
    probability column per model in ``probs`` (all arrays (H, W) on the same grid)."""
    frames = []
    for rec in picks.to_dict("records"):
        r, x0, x1 = int(rec["row"]), int(rec["x0"]), int(rec["x1"])
        xs = np.arange(x0, x1)
        df = pd.DataFrame({"id": int(rec["id"]), "x_px": xs, "offset_px": xs - float(rec["x_px"]),
                           "intensity": np.asarray(image)[r, x0:x1],
                           "inside": np.asarray(labels)[r, x0:x1] == int(rec["id"])})
        for name, p in probs.items():
            df[name] = np.asarray(p)[r, x0:x1]
        frames.append(df)
    if not frames:
        return pd.DataFrame(columns=["id", "x_px", "offset_px", "intensity", "inside", *probs])
    return pd.concat(frames, ignore_index=True)


def profile_summary(profiles: pd.DataFrame, models: Sequence[str], threshold: float = 0.5,
                    lo: float = 0.1, hi: float = 0.9) -> pd.DataFrame:
    """Per particle and model: true extent along the line (px), predicted extent (prob >=
    ``threshold``), pixels on the line that are wrong at that threshold, and uncertain pixels
    (``lo`` < prob < ``hi``: the width of the edge ramp the paper's Fig. 5 shows)."""
    rows = []
    for pid, sub in profiles.groupby("id", sort=False):
        inside = sub["inside"].to_numpy(bool)
        for m in models:
            p = sub[m].to_numpy(float)
            pred = p >= threshold
            rows.append({"id": int(pid), "model": m, "true_px": int(inside.sum()),
                         "pred_px": int(pred.sum()), "wrong_px": int((pred != inside).sum()),
                         "uncertain_px": int(((p > lo) & (p < hi)).sum())})
    return pd.DataFrame(rows)


def profiles_figure(profiles: pd.DataFrame, picks: pd.DataFrame, models: Sequence[str],
                    image: np.ndarray | None = None, pixel_size_nm: float | None = None,
                    path: str | Path | None = None, title: str = "") -> Figure:
    """The paper's Fig. 5: per particle, raw intensity (solid) and each model's particle
    probability (dotted, dashed, ...) along the line, true mask extent shaded; the frame with
    the lines drawn on it first when ``image`` is given."""
    ids = list(picks["id"].astype(int))
    n = len(ids) + (image is not None)
    fig = Figure(figsize=(3.6 * n, 3.4), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    k = 0
    if image is not None:
        ax = axes[0]
        ax.imshow(image, cmap="gray")
        for rec in picks.to_dict("records"):
            ax.plot([rec["x0"], rec["x1"] - 1], [rec["row"], rec["row"]], color="yellow", lw=1.2)
            ax.text(rec["x1"] + 1, rec["row"], str(int(rec["id"])), color="yellow", fontsize=7,
                    va="center")
        ax.set_axis_off()
        ax.set_title("frame and line positions", fontsize=9)
        k = 1
    styles = [":", "--", "-.", (0, (1, 3))]
    scale = float(pixel_size_nm) if pixel_size_nm else 1.0
    unit = "nm" if pixel_size_nm else "px"
    for ax, pid in zip(axes[k:], ids, strict=True):
        sub = profiles[profiles["id"] == pid]
        rec = picks[picks["id"] == pid].iloc[0]
        x = sub["offset_px"].to_numpy(float) * scale
        inside = sub["inside"].to_numpy(bool)
        if inside.any():
            ax.axvspan(x[inside].min() - 0.5 * scale, x[inside].max() + 0.5 * scale,
                       color="tab:cyan", alpha=0.18, lw=0, label="true mask")
        ax.plot(x, sub["intensity"], color="black", lw=1.4, label="intensity (normalised)")
        for m, ls in zip(models, styles, strict=False):
            ax.plot(x, sub[m], ls=ls, lw=1.6, label=f"{m} probability")
        ax.set(ylim=(-0.02, 1.02), xlabel=f"distance from centre ({unit})",
               title=f"particle {pid}: {rec['diameter_nm']:.1f} nm" if "diameter_nm" in rec
               else f"particle {pid}")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    if len(axes) > k:
        axes[k].legend(fontsize=6, loc="lower left", frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)
