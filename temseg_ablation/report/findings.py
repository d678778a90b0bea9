"""``python -m temseg_ablation.report.findings``: the paper's findings beyond Table 1, one command each.

Subcommands; each writes ``<name>.md`` (+ ``.csv``, ``.png``) under ``--out`` and prints the
Markdown:

* ``thresholds``: precision, recall and F1 versus softmax threshold per variant of a sweep, the
  Otsu threshold's position, and the paper's choice of 0.4 over 0.7 (Supplementary Fig. 5, Fig. 7a);
* ``generalisation``: every variant on the held-out experiment (other magnification and dose)
  beside its validation scores, and the gap;
* ``interpretability``: the learned kernels of the one-filter (9 x 9, 7 x 7) and shallow-wide CNNs
  (Fig. 6, Supplementary Figs. 7 and 8) and line profiles across particles (Fig. 5);
* ``resolution``: one model trained on downsampled whole frames versus native-pixel-size crops,
  both scored at the native pixel size (Figs. 1 and 2).

Training goes through the Hydra app in subprocesses, as single runs rather than a sweep so that
"the latest sweep" of the store stays the user's; the app skips configurations that already
finished, so a second call only redoes the analysis.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .table1 import EQUIVALENCE_MARGIN, paired_interval, verdict

SUBCOMMANDS = ("thresholds", "generalisation", "interpretability", "resolution")
#: Per-image-mean threshold curves drawn by ``thresholds`` (the same means as ``*_at_0.4``).
CURVE_VALUES = ("precision_mean", "recall_mean", "f1_mean")
#: Scores compared between validation and the held-out experiment.
GEN_NAMES = ("f1_otsu", "f1_at_0.4", "edge_uncertainty", "particle_det_f1",
             "particle_recall_0to2p5nm")
#: Scores of the resolution comparison, all measured on the native-pixel-size validation frames.
NATIVE_NAMES = ("f1_otsu", "precision_otsu", "recall_otsu", "edge_uncertainty",
                "particle_det_f1", "particle_recall_0to2p5nm")
PROFILES = ("quick", "paper")
#: Names of the pooled rows of :func:`threshold_claim`.
POOLED_ALL, POOLED_BN = "pooled: all runs", "pooled: batch-norm UNets"
_NAN = float("nan")


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------


def mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample s.d. (ddof 1; NaN below two values) and count of the finite ``values``."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    return (float(v.mean()) if n else _NAN, float(v.std(ddof=1)) if n > 1 else _NAN, n)


def fmt_pm(mean: float, sd: float = _NAN, digits: int = 3, sign: bool = False) -> str:
    """``'0.812 ± 0.013'`` (just the mean when the s.d. is undefined, ``'n/a'`` without a mean)."""
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if np.isfinite(sd) else "")


def md_table(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` as it is (strings and numbers, index ignored)."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(_cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return str(v).replace("|", "/")


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``runs`` whose MLflow status is FINISHED (all rows when there is no status column)."""
    if "status" not in runs.columns:
        return runs
    return runs[runs["status"].astype(str) == "FINISHED"].reset_index(drop=True)


def _order(runs: pd.DataFrame, by: str, metric: str) -> list[str]:
    """Groups by mean ``metric``, best first; groups without it after, by name."""
    names = runs[by].astype(str)
    if metric not in runs.columns:
        return sorted(names.unique())
    means = runs[metric].groupby(names).mean()
    ranked = means.dropna().sort_values(ascending=False, kind="stable").index.tolist()
    return ranked + sorted(set(names) - set(ranked))


def _need_rows(runs: pd.DataFrame, by: str, what: str) -> None:
    if by not in runs.columns:
        raise ValueError(f"{what}: the runs frame has no column {by!r}")
    if len(runs) == 0:
        raise ValueError(f"{what}: no finished runs to summarise")


# ---------------------------------------------------------------------------------------------
# thresholds (Supplementary Fig. 5, Fig. 7a)
# ---------------------------------------------------------------------------------------------


def point_column(split: str, metric: str, point: float | str) -> str:
    """MLflow key of ``metric`` (precision / recall / f1) at a fixed threshold or at ``'otsu'``."""
    if point == "otsu":
        return f"final/{split}/{metric}_otsu"
    return f"final/{split}/{metric}_at_{float(point):.1f}"


def threshold_table(runs: pd.DataFrame, split: str = "val", points: Sequence[float] = (0.4, 0.7),
                    by: str = "variant") -> pd.DataFrame:
    """Per variant: runs, mean Otsu threshold, and precision / recall / F1 at ``points`` and at Otsu.

    Columns ``variant``, ``n``, ``otsu_threshold mean`` / ``sd``, then ``<metric>@<point> mean`` /
    ``sd`` for metric in precision, recall, f1 and point in ``points`` + ``otsu`` (mean and sample
    s.d. over seeds; NaN where a run lacks the metric). Ordered by F1 at Otsu, best first.
    """
    _need_rows(runs, by, "threshold_table")
    cols = {"otsu_threshold": f"final/{split}/otsu_threshold"}
    for p in [*points, "otsu"]:
        for m in ("precision", "recall", "f1"):
            label = f"{m}@{p if p == 'otsu' else f'{float(p):.1f}'}"
            cols[label] = point_column(split, m, p)
    if not any(c in runs.columns for c in cols.values()):
        raise ValueError(f"threshold_table: the runs have none of {list(cols.values())[:4]}...; "
                         "were they logged by this version of temseg-ablation?")
    rows = []
    for name in _order(runs, by, point_column(split, "f1", "otsu")):
        sub = runs[runs[by].astype(str) == name]
        row: dict[str, Any] = {by: name, "n": len(sub)}
        for label, col in cols.items():
            m, s, _ = mean_sd(sub[col]) if col in sub.columns else (_NAN, _NAN, 0)
            row[f"{label} mean"], row[f"{label} sd"] = m, s
        rows.append(row)
    return pd.DataFrame(rows)


def threshold_claim(runs: pd.DataFrame, low: float = 0.4, high: float = 0.7, split: str = "val",
                    by: str = "variant", margin: float = EQUIVALENCE_MARGIN) -> pd.DataFrame:
    """Checks "``low`` gives better recall with essentially the same precision as ``high``".

    Per variant, pooled over the batch-normalised UNets (``variant = 'pooled: batch-norm
    UNets'``, when the frame has ``net.arch`` / ``net.norm`` and other runs too) and over all
    runs (last row, ``variant = 'pooled: all runs'``): paired per-run
    differences low - high of recall, precision and F1 (mean, s.d., 95 % t-interval), the verdict
    of each part with Table 1's rule (recall: expected higher; precision: expected within
    +-``margin``) and ``claim``: ``holds`` when both parts support it, ``does not hold`` when one
    contradicts it, else ``inconclusive``.
    """
    _need_rows(runs, by, "threshold_claim")
    need = [point_column(split, m, t) for m in ("precision", "recall") for t in (low, high)]
    missing = [c for c in need if c not in runs.columns]
    if missing:
        raise ValueError(f"threshold_claim: the runs lack {missing}")
    groups = [(name, runs[runs[by].astype(str) == name])
              for name in _order(runs, by, point_column(split, "f1", "otsu"))]
    # pooled rows: every run, and the batch-normalised UNets the paper's statement is about
    if {"net.arch", "net.norm"} <= set(runs.columns):
        bn = runs[(runs["net.arch"].astype(str) == "unet") & (runs["net.norm"].astype(str) == "batch")]
        if 0 < len(bn) < len(runs):
            groups.append((POOLED_BN, bn))
    groups.append((POOLED_ALL, runs))
    rows = []
    for name, sub in groups:
        row: dict[str, Any] = {by: name, "n": len(sub)}
        parts = {}
        for m, expect in (("recall", 1), ("precision", 0), ("f1", None)):
            a_col, b_col = point_column(split, m, low), point_column(split, m, high)
            if a_col not in sub.columns or b_col not in sub.columns:
                continue
            diff = (sub[a_col] - sub[b_col]).to_numpy(float)
            mean, ci_lo, ci_hi = paired_interval(diff)
            row[f"{m}@{low:.1f} mean"] = mean_sd(sub[a_col])[0]
            row[f"{m}@{high:.1f} mean"] = mean_sd(sub[b_col])[0]
            row[f"{m} diff mean"] = mean
            row[f"{m} diff sd"] = mean_sd(diff)[1]
            row[f"{m} diff ci_low"], row[f"{m} diff ci_high"] = ci_lo, ci_hi
            if expect is not None:
                parts[m] = verdict(expect, ci_lo, ci_hi, margin)
                row[f"{m} verdict"] = parts[m]
        if all(v == "supports" for v in parts.values()):
            row["claim"] = "holds"
        elif any(v == "contradicts" for v in parts.values()):
            row["claim"] = "does not hold"
        else:
            row["claim"] = "inconclusive"
        rows.append(row)
    return pd.DataFrame(rows)


def curve_stats(curves: pd.DataFrame, runs: pd.DataFrame, values: Sequence[str] = CURVE_VALUES,
                by: str = "variant") -> pd.DataFrame:
    """Mean and s.d. over a variant's runs of each curve in ``values`` at every threshold.

    ``curves``: ``report.runs.load_curves`` output (run_id, threshold, values...). Returns a long
    frame: ``variant``, ``threshold``, ``n`` (runs) and ``<value> mean`` / ``<value> sd``.
    """
    for col in ("run_id", "threshold", *values):
        if col not in curves.columns:
            raise ValueError(f"curve_stats: the curves frame has no column {col!r}")
    df = curves.merge(runs[["run_id", by]], on="run_id", how="inner")
    if len(df) == 0:
        raise ValueError("curve_stats: no threshold curve belongs to a run of the runs frame")
    df[by] = df[by].astype(str)
    g = df.groupby([by, "threshold"], sort=True)
    out = g["run_id"].nunique().rename("n").to_frame()
    for v in values:
        out[f"{v} mean"] = g[v].mean()
        out[f"{v} sd"] = g[v].std(ddof=1)
    return out.reset_index()


def thresholds_figure(stats: pd.DataFrame, table: pd.DataFrame, path: str | Path | None = None,
                      by: str = "variant", points: Sequence[float] = (0.4, 0.7),
                      title: str = "") -> Figure:
    """One panel per variant: precision, recall, F1 versus threshold (+-1 s.d. bands over seeds),
    the mean Otsu threshold (solid black) and the fixed ``points`` (grey)."""
    names = [n for n in table[by].astype(str) if n in set(stats[by])]
    if not names:
        raise ValueError("thresholds_figure: no variant has curves")
    cols = min(4, len(names))
    rows = int(np.ceil(len(names) / cols))
    fig = Figure(figsize=(3.2 * cols, 2.6 * rows + 0.6), dpi=110, layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    otsu = table.set_index(by)["otsu_threshold mean"]
    for ax, name in zip(axes, names, strict=False):
        sub = stats[stats[by] == name].sort_values("threshold")
        t = sub["threshold"].to_numpy(float)
        for value, color, label in (("precision_mean", "tab:blue", "precision"),
                                    ("recall_mean", "tab:orange", "recall"),
                                    ("f1_mean", "tab:green", "F1")):
            if f"{value} mean" not in sub:
                continue
            m = sub[f"{value} mean"].to_numpy(float)
            s = np.nan_to_num(sub[f"{value} sd"].to_numpy(float))
            ax.plot(t, m, color=color, lw=1.5 if value != "f1_mean" else 2.0, label=label)
            ax.fill_between(t, m - s, m + s, color=color, alpha=0.18, lw=0)
        for p, style in zip(points, (":", "--", "-."), strict=False):
            ax.axvline(p, color="grey", ls=style, lw=0.8)
        ot = float(otsu.get(name, _NAN))
        if np.isfinite(ot):
            ax.axvline(ot, color="black", lw=1.0, label=f"Otsu {ot:.2f}")
        n = int(sub["n"].max()) if len(sub) else 0
        ax.set(xlim=(0, 1), ylim=(0, 1.02), title=f"{name} (n={n})")
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left", frameon=False)
    for ax in axes[len(names):]:
        ax.set_axis_off()
    fig.supxlabel("particle softmax threshold (grey: " +
                  ", ".join(f"{p:.1f}" for p in points) + ")", fontsize=9)
    fig.supylabel("per-image mean (band: ±1 s.d. over seeds)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    return fig


def thresholds_markdown(table: pd.DataFrame, claim: pd.DataFrame, *, low: float = 0.4,
                        high: float = 0.7, margin: float = EQUIVALENCE_MARGIN, note: str = "",
                        by: str = "variant") -> str:
    """The ``thresholds`` report: scores at the fixed thresholds and at Otsu, then the claim check."""
    pts = [f"{low:.1f}", f"{high:.1f}", "otsu"]
    t = pd.DataFrame({by: table[by], "n": table["n"],
                      "mean Otsu t": [fmt_pm(m, s, 2) for m, s in
                                      zip(table["otsu_threshold mean"], table["otsu_threshold sd"],
                                          strict=True)]})
    for p in pts:
        for m, short in (("precision", "P"), ("recall", "R"), ("f1", "F1")):
            t[f"{short}@{p}"] = [fmt_pm(a, b) for a, b in
                                 zip(table[f"{m}@{p} mean"], table[f"{m}@{p} sd"], strict=True)]
    c = pd.DataFrame({by: claim[by], "n": claim["n"]})
    for m in ("recall", "precision", "f1"):
        if f"{m} diff mean" in claim:
            c[f"{m} {low:.1f} - {high:.1f}"] = [
                fmt_pm(a, s, sign=True) + (f" [{lo:+.3f}, {hi:+.3f}]" if np.isfinite(lo) else "")
                for a, s, lo, hi in zip(claim[f"{m} diff mean"], claim[f"{m} diff sd"],
                                        claim[f"{m} diff ci_low"], claim[f"{m} diff ci_high"],
                                        strict=True)]
    c["claim"] = [f"**{v}**" for v in claim["claim"]]
    per_variant = claim[~claim[by].isin([POOLED_ALL, POOLED_BN])]
    counts = per_variant["claim"].value_counts()

    def _pooled(label: str) -> str:
        rows = claim[claim[by] == label]
        if rows.empty:
            return ""
        r = rows.iloc[0]
        part = {m: fmt_pm(r.get(f"{m} diff mean", _NAN), r.get(f"{m} diff sd", _NAN), sign=True)
                for m in ("recall", "precision")}
        return (f" Pooled over {label.split(': ', 1)[1]} ({int(r['n'])} runs): recall "
                f"{part['recall']}, precision {part['precision']} ({low:.1f} minus {high:.1f}): "
                f"**{r['claim']}**.")
    lines = [
        "# Softmax threshold: precision, recall and F1 versus threshold, Otsu, and 0.4 vs 0.7",
        "",
        "Paper (Supplementary Fig. 5, Fig. 7a): the batch-normalised models are stable for "
        f"thresholds below 0.7, and \"{low:.1f} gives better recall with essentially the same "
        f"precision as {high:.1f}\". Scores are per-image means over the validation frames "
        "(`final/val/*`), then mean ± s.d. over seeds.",
        "",
        "## Scores at the fixed thresholds and at each image's Otsu threshold",
        "",
        md_table(t),
        "",
        f"## The claim: recall and precision at {low:.1f} minus at {high:.1f}",
        "",
        "Paired per run (same model, two thresholds): mean ± s.d. over runs [95 % t-interval]. "
        f"Recall must be higher at {low:.1f} (interval above 0) and precision the same within "
        f"±{margin} (interval inside) for **holds**; an interval on the wrong side is **does "
        "not hold**; anything else (e.g. a single seed) is **inconclusive**.",
        "",
        md_table(c),
        "",
        f"Per variant: {int(counts.get('holds', 0))} hold, "
        f"{int(counts.get('does not hold', 0))} do not hold, "
        f"{int(counts.get('inconclusive', 0))} inconclusive out of {len(per_variant)}."
        + _pooled(POOLED_BN) + _pooled(POOLED_ALL),
        "",
        "Figures: `thresholds.png` (per variant: precision, recall, F1 versus threshold, ±1 s.d. "
        "band over seeds, black line at the mean Otsu threshold), `thresholds_f1.png` (F1 of all "
        "variants on one axis, as Fig. 7a).",
    ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# generalisation (held-out experiment)
# ---------------------------------------------------------------------------------------------


def generalisation_table(runs: pd.DataFrame, names: Sequence[str] = GEN_NAMES,
                         by: str = "variant") -> pd.DataFrame:
    """Per variant: validation, held-out and gap (val - held-out) of each score in ``names``.

    Columns ``variant``, ``n``, then ``<split>/<name> mean`` / ``sd`` for split in val, heldout,
    gap (mean and s.d. over seeds; the gap per run from ``final/gap/<name>``, or val - held-out
    where that was not logged). Scores with neither split in ``runs`` are left out; ordered by
    validation ``names[0]``, best first.
    """
    _need_rows(runs, by, "generalisation_table")
    present = [n for n in names if f"final/val/{n}" in runs.columns
               and f"final/heldout/{n}" in runs.columns]
    if not present:
        raise ValueError(f"generalisation_table: the runs have no val and held-out pair of "
                         f"{list(names)} (were they trained with data.heldout=true?)")
    rows = []
    for name in _order(runs, by, f"final/val/{present[0]}"):
        sub = runs[runs[by].astype(str) == name]
        row: dict[str, Any] = {by: name, "n": len(sub)}
        for n in present:
            val, held = sub[f"final/val/{n}"], sub[f"final/heldout/{n}"]
            gap = sub[f"final/gap/{n}"] if f"final/gap/{n}" in sub.columns else val - held
            gap = gap.where(gap.notna(), val - held)
            for split, series in (("val", val), ("heldout", held), ("gap", gap)):
                m, s, _ = mean_sd(series)
                row[f"{split}/{n} mean"], row[f"{split}/{n} sd"] = m, s
        rows.append(row)
    return pd.DataFrame(rows)


def generalisation_markdown(table: pd.DataFrame, note: str = "", by: str = "variant") -> str:
    """The ``generalisation`` report: the headline score's val / held-out / gap per variant, the
    other scores as val -> held-out, then the variants with the smallest and largest gaps."""
    names = [c[len("val/"):-len(" mean")] for c in table.columns
             if c.startswith("val/") and c.endswith(" mean")]
    first = names[0]
    t = pd.DataFrame({by: table[by], "n": table["n"]})
    for split in ("val", "heldout", "gap"):
        t[f"{first} {split}"] = [fmt_pm(m, s, sign=split == "gap") for m, s in
                                 zip(table[f"{split}/{first} mean"], table[f"{split}/{first} sd"],
                                     strict=True)]
    rest = pd.DataFrame({by: table[by]})
    for n in names[1:]:
        rest[f"{n}: val -> held-out (gap)"] = [
            f"{_cell(v)} -> {_cell(h)} ({fmt_pm(g, gs, sign=True)})" for v, h, g, gs in
            zip(table[f"val/{n} mean"], table[f"heldout/{n} mean"], table[f"gap/{n} mean"],
                table[f"gap/{n} sd"], strict=True)]
    lines = [
        "# Generalisation to a held-out experiment",
        "",
        "Every variant scored on the validation frames of its own experiments (`final/val/*`) and "
        "on a held-out experiment at another magnification (0.25 instead of about 0.18 nm/px) and "
        "half the dose (`final/heldout/*`), without rescaling; gap = validation - held-out "
        "(positive: worse on the unseen experiment). Mean ± s.d. over seeds.",
        "",
        f"## {first}",
        "",
        md_table(t),
    ]
    gaps = table[[by, f"gap/{first} mean"]].dropna()
    if len(gaps):
        lo = gaps.loc[gaps[f"gap/{first} mean"].idxmin()]
        hi = gaps.loc[gaps[f"gap/{first} mean"].idxmax()]
        lines += ["", f"Smallest {first} gap (generalises best): `{lo[by]}` "
                  f"({lo[f'gap/{first} mean']:+.3f}); largest: `{hi[by]}` "
                  f"({hi[f'gap/{first} mean']:+.3f})."]
    if len(names) > 1:
        lines += ["", "## Other scores (means over seeds; gap mean ± s.d.)", "", md_table(rest)]
    lines += ["", "Figure: `generalisation.png` (left: validation versus held-out per variant, "
              "y = x dashed; right: the gap, ±1 s.d. over seeds). All numbers: "
              "`generalisation.csv`."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# interpretability (Fig. 6, Supplementary Figs. 7-8, Fig. 5)
# ---------------------------------------------------------------------------------------------


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
    return float((a * b).sum() / den) if den > 0 else _NAN


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
    return float((centre - ring) / sd) if sd > 0 else _NAN


def initial_kernels(net_config: Mapping[str, Any], seed: int) -> np.ndarray:
    """First-layer kernels (n, k, k) a job started from: the app seeds torch with the run's seed
    right before ``build_model``, so the same two steps rebuild them exactly (this process's
    random state is left as it was)."""
    import torch

    from ..models import build_model

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
                    "uniform part of update": abs(float(d.mean())) / rms if rms > 0 else _NAN})
    return out


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
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# resolution (Figs. 1 and 2)
# ---------------------------------------------------------------------------------------------


def native_scores(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                  pixel_sizes_nm: Sequence[float], band_px: int = 3, min_particle_px: int = 10,
                  iou_threshold: float = 0.5) -> dict[str, float]:
    """Scores of probability maps against truth on one pixel grid, as the training evaluation
    computes them: F1 / precision / recall at each image's Otsu threshold (mean over images),
    edge uncertainty (pooled band pixels), particle detection F1 and 0-2.5 nm recall."""
    from ..training.metrics import (
        confusion_by_threshold,
        edge_uncertainty_counts,
        otsu_threshold,
        prf,
    )
    from ..training.particle_metrics import ParticleMetrics

    if not len(probs) == len(labels) == len(pixel_sizes_nm) or not len(probs):
        raise ValueError(f"native_scores: need as many probability maps ({len(probs)}) as label "
                         f"images ({len(labels)}) and pixel sizes ({len(pixel_sizes_nm)}), >= 1")
    f1, prec, rec = [], [], []
    unc = band = 0
    part = ParticleMetrics(iou_threshold=iou_threshold, min_size_px=min_particle_px)
    for p, lab, px in zip(probs, labels, pixel_sizes_nm, strict=True):
        p = np.asarray(p, dtype=np.float32)
        lab = np.asarray(lab)
        if p.shape != lab.shape:
            raise ValueError(f"native_scores: probability {p.shape} and labels {lab.shape} differ")
        truth = lab > 0
        t = otsu_threshold(p)
        counts = confusion_by_threshold(p, truth, [t])
        s = prf(counts["tp"], counts["fp"], counts["fn"])
        f1.append(float(s["f1"][0]))
        prec.append(float(s["precision"][0]))
        rec.append(float(s["recall"][0]))
        u, b = edge_uncertainty_counts(p, truth, band_px)
        unc, band = unc + u, band + b
        part.update(p >= np.float32(t), lab, float(px))
    pm = part.compute()
    return {"f1_otsu": float(np.mean(f1)), "precision_otsu": float(np.mean(prec)),
            "recall_otsu": float(np.mean(rec)),
            "edge_uncertainty": unc / band if band else _NAN,
            "particle_det_f1": float(pm["det_f1"]),
            "particle_recall_0to2p5nm": float(pm.get("recall_0to2p5nm", _NAN)),
            "n_images": float(len(probs))}


def resolution_summary(per_run: pd.DataFrame, names: Sequence[str] = NATIVE_NAMES,
                       base: str = "crop", treated: str = "downsample") -> pd.DataFrame:
    """Per mode mean ± s.d. over seeds of ``native/<name>`` (and ``own/<name>`` where present),
    plus a ``treated - base`` row of seed-paired differences with its 95 % t-interval.

    ``per_run``: one row per run with ``mode``, ``seed`` and the score columns. Returns rows
    (``row`` = base, treated, difference) x columns ``<col> mean`` / ``sd`` / ``n`` (and
    ``<col> ci_low`` / ``ci_high`` on the difference row).
    """
    for col in ("mode", "seed"):
        if col not in per_run.columns:
            raise ValueError(f"resolution_summary: per-run frame has no column {col!r}")
    cols = [c for n in names for c in (f"native/{n}", f"own/{n}") if c in per_run.columns]
    if not cols:
        raise ValueError(f"resolution_summary: per-run frame has none of native/{list(names)}")
    out = []
    for mode in (base, treated):
        sub = per_run[per_run["mode"] == mode]
        row: dict[str, Any] = {"row": mode, "n": len(sub)}
        for c in cols:
            row[f"{c} mean"], row[f"{c} sd"], _ = mean_sd(sub[c])
        out.append(row)
    a = per_run[per_run["mode"] == base].drop_duplicates("seed").set_index("seed")
    b = per_run[per_run["mode"] == treated].drop_duplicates("seed").set_index("seed")
    seeds = sorted(set(a.index) & set(b.index))
    row = {"row": f"{treated} - {base}", "n": len(seeds)}
    for c in cols:
        diff = (b.loc[seeds, c].to_numpy(float) - a.loc[seeds, c].to_numpy(float)) if seeds \
            else np.array([])
        mean, lo, hi = paired_interval(diff)
        row[f"{c} mean"], row[f"{c} sd"] = mean, mean_sd(diff)[1]
        row[f"{c} ci_low"], row[f"{c} ci_high"] = lo, hi
    out.append(row)
    return pd.DataFrame(out)


def resolution_markdown(summary: pd.DataFrame, per_run: pd.DataFrame, *, factor: float,
                        frame_px: int, downsample_px: int, note: str = "") -> str:
    """The ``resolution`` report: both modes at the native pixel size, the paired difference,
    and each model's own validation scores at the pixel size it was trained on."""
    native = [c[:-len(" mean")] for c in summary.columns
              if c.startswith("native/") and c.endswith(" mean")]
    own = [c[:-len(" mean")] for c in summary.columns
           if c.startswith("own/") and c.endswith(" mean")]

    def block(cols: list[str]) -> pd.DataFrame:
        t = pd.DataFrame({"": summary["row"], "n": summary["n"]})
        for c in cols:
            diff = summary["row"].str.contains(" - ")
            t[c.split("/", 1)[1]] = [
                fmt_pm(m, s, sign=bool(d)) + (f" [{lo:+.3f}, {hi:+.3f}]"
                                              if d and np.isfinite(lo) else "")
                for m, s, d, lo, hi in zip(summary[f"{c} mean"], summary[f"{c} sd"], diff,
                                           summary.get(f"{c} ci_low", pd.Series([_NAN] * len(summary))),
                                           summary.get(f"{c} ci_high", pd.Series([_NAN] * len(summary))),
                                           strict=True)]
        return t

    lines = [
        "# Resolution: downsampled whole frames versus native-pixel-size crops",
        "",
        f"The same model (`model=norm`) trained on whole frames downsampled {frame_px} -> "
        f"{downsample_px} px (factor {factor:g}; the paper's 1792 x 1920 -> 512 is about 3.6) "
        "and on crops at the native pixel size (`data.resolution=crop`). Both are run on the "
        "native-resolution validation frames with training-matched inference "
        "(`segment.infer.segment_image`: the downsample model sees the frame shrunk by the "
        "training factor and its probability is mapped back to the native grid) and scored "
        "against the native truth. Mean ± s.d. over seeds; the difference row pairs the two "
        "modes by seed [95 % t-interval].",
        "",
        "## At the native pixel size",
        "",
        md_table(block(native)),
    ]
    if own:
        lines += ["", "## Each model's own validation (`final/val/*`, at its training pixel size)",
                  "", md_table(block(own))]
    show = ["mode", "seed", "run_id", "job", *[c for c in per_run.columns if c.startswith("native/")]]
    lines += ["", "## Per run", "", md_table(per_run[[c for c in show if c in per_run.columns]])]
    lines += ["", "Figure: `resolution.png` (scores per seed at the native pixel size, and a "
              "validation frame with both models' probabilities)."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# running the app, finding runs and checkpoints
# ---------------------------------------------------------------------------------------------


def default_tracking_uri() -> str:
    """``sqlite:///<root>/mlruns/mlflow.db`` with root ``$TEMSEG_ROOT`` or the current folder,
    the store the app writes to when started here."""
    root = Path(os.environ.get("TEMSEG_ROOT") or ".").resolve()
    return f"sqlite:///{root / 'mlruns' / 'mlflow.db'}"


@dataclass(frozen=True)
class AppJob:
    """One training job run through the Hydra app: its name, overrides and run folder."""

    name: str
    overrides: tuple[str, ...]
    job_dir: Path


@dataclass(frozen=True)
class JobOutcome:
    """What a finished app job reported in its ``job_status.json``."""

    name: str
    run_id: str
    status: str        # finished (trained now) or skipped (identical config had finished)
    seconds: float
    job_dir: Path


def _quote(value: str) -> str:
    # Hydra's override grammar keeps a single-quoted value verbatim (colons, slashes, spaces)
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def app_command(job: AppJob, tracking_uri: str, threads: int | None = None) -> list[str]:
    """The ``python -m temseg_ablation`` command line of one single-run job."""
    cmd = [sys.executable, "-m", "temseg_ablation", *job.overrides,
           f"logger.tracking_uri={_quote(tracking_uri)}", f"hydra.run.dir={_quote(str(job.job_dir))}"]
    if threads:
        cmd.append(f"trainer.num_threads={int(threads)}")
    return cmd


def _run_one(job: AppJob, tracking_uri: str, threads: int | None) -> JobOutcome:
    job.job_dir.mkdir(parents=True, exist_ok=True)
    status_file = job.job_dir / "job_status.json"
    status_file.unlink(missing_ok=True)  # never read an earlier call's outcome
    log = job.job_dir / "findings_job.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:
        proc = subprocess.run(app_command(job, tracking_uri, threads), stdout=handle,
                              stderr=subprocess.STDOUT, env=env, check=False)
    rec = json.loads(status_file.read_text()) if status_file.is_file() else {}
    if proc.returncode != 0 or rec.get("status") not in ("finished", "skipped"):
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"{log}: app job {job.name!r} failed (exit {proc.returncode}, status "
                           f"{rec.get('status')!r}): {tail[0][:300]}")
    return JobOutcome(job.name, str(rec["run_id"]), str(rec["status"]),
                      float(rec.get("seconds", _NAN)), job.job_dir)


def finished_run_id(tracking_uri: str, overrides: Sequence[str]) -> str | None:
    """Id of a FINISHED job run with the config hash the app computes for ``overrides``, the
    run the app would skip to; None when there is none (or no store yet, or ``rerun=true``)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).is_file():
        return None
    from mlflow.tracking import MlflowClient

    from ..build import config_hash
    from ..tracking.mlflow_store import TAG_HASH, TAG_KIND

    cfg = _composed(overrides)
    if cfg.get("rerun", False):
        return None
    client = MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(str(cfg.logger.experiment_name))
    if exp is None:
        return None
    query = (f"tags.`{TAG_HASH}` = '{config_hash(cfg)}' and tags.`{TAG_KIND}` = 'job' "
             "and attributes.status = 'FINISHED'")
    runs = client.search_runs([exp.experiment_id], query, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


def run_app_jobs(jobs: Sequence[AppJob], tracking_uri: str, parallel: int = 1) -> list[JobOutcome]:
    """Run the jobs through the app, ``parallel`` at a time (one CPU thread each when > 1).

    A job whose exact configuration already finished in the store is not started at all (the
    app would only skip it, after seconds of start-up). The first job runs alone when the
    sqlite store does not exist yet, so that two processes never create one database at once.
    """
    parallel = max(1, int(parallel))
    threads = max(1, (os.cpu_count() or 1) // parallel) if parallel > 1 else None
    out: dict[str, JobOutcome] = {}
    todo = []
    for job in jobs:
        try:
            found = finished_run_id(tracking_uri, job.overrides)
        except Exception:  # noqa: BLE001 - any doubt: let the app decide
            found = None
        if found is None:
            todo.append(job)
        else:
            out[job.name] = JobOutcome(job.name, found, "skipped", 0.0, job.job_dir)
            print(f"  {job.name}: already finished as run {found}", flush=True)
    if todo and tracking_uri.startswith("sqlite:///") and \
            not Path(tracking_uri[len("sqlite:///"):]).is_file():
        first = todo.pop(0)
        print(f"  training {first.name} ...", flush=True)
        out[first.name] = _run_one(first, tracking_uri, None)
        _report_job(out[first.name])
    with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
        futures = {}
        for job in todo:
            print(f"  training {job.name} ...", flush=True)
            futures[pool.submit(_run_one, job, tracking_uri, threads)] = job
        for fut in concurrent.futures.as_completed(futures):
            res = fut.result()
            out[res.name] = res
            _report_job(res)
    return [out[j.name] for j in jobs]


def _report_job(res: JobOutcome) -> None:
    print(f"  {res.name}: {res.status} run {res.run_id} ({res.seconds:.0f} s)", flush=True)


def run_checkpoint(tracking_uri: str, run_id: str, dest: Path) -> Path:
    """The run's best checkpoint: ``best.ckpt`` in its ``temseg.checkpoint_dir`` tag folder, or
    the ``checkpoints/best.ckpt`` artifact downloaded into ``dest``."""
    from mlflow.tracking import MlflowClient

    from ..tracking.mlflow_store import TAG_CHECKPOINT
    from .runs import _no_progress_bar

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    folder = run.data.tags.get(TAG_CHECKPOINT)
    if folder and (Path(folder) / "best.ckpt").is_file():
        return Path(folder) / "best.ckpt"
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with _no_progress_bar():
            return Path(client.download_artifacts(run_id, "checkpoints/best.ckpt", str(dest)))
    except Exception as err:  # noqa: BLE001 - MlflowException / OSError: report one line
        raise FileNotFoundError(f"run {run_id}: no best.ckpt in {folder or '(no checkpoint tag)'} "
                                f"nor as artifact checkpoints/best.ckpt ({str(err)[:160]})") from None


def _parse(value: str | None) -> Any:
    if value is None or value in ("None", "null"):
        return None
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def native_validation_frames(params: Mapping[str, str]) -> tuple[list[np.ndarray], list[np.ndarray],
                                                                  list[float]]:
    """Validation frames of a synthetic-data run at the native pixel size, from its MLflow params.

    Rebuilds (or reopens, it is cached by its parameters) the source store the run was trained
    from, before any downsampling or blur, and takes the run's validation split. Returns the
    normalised images, the instance labels and the frames' pixel sizes (nm).
    """
    from ..data.datamodule import split_indices
    from ..data.sources import synthetic_store

    p = {k[len("data."):]: _parse(v) for k, v in params.items() if k.startswith("data.")}
    if p.get("source") != "synthetic":
        raise ValueError(f"native_validation_frames: only synthetic-data runs are supported "
                         f"(this run used data.source={p.get('source')!r})")
    pseudo = {k[len("pseudo."):]: v for k, v in p.items() if k.startswith("pseudo.")}
    store = synthetic_store(Path(str(p["cache_dir"])), n_experiments=int(p["n_experiments"]),
                            frames_per_experiment=int(p["frames_per_experiment"]),
                            height=int(p["frame_height"]), width=int(p["frame_width"]),
                            pixel_size_nm=float(p["pixel_size_nm"]), seed=int(p["seed"]),
                            labels=str(p.get("labels", "truth")), pseudo=pseudo,
                            dose_scale=float(p.get("dose_scale", 1.0)), progress=False)
    _, val_idx = split_indices(store.meta, str(p.get("split", "random")),
                               float(p.get("val_fraction", 0.3)), int(p["seed"]))
    images, labels, sizes = [], [], []
    for i in val_idx:
        img, lab, px = store.frame(i)
        images.append(img)
        labels.append(np.asarray(lab))
        sizes.append(px)
    return images, labels, sizes


def _composed(overrides: Sequence[str]) -> Any:
    """The app's config for ``overrides`` (to learn e.g. the frame size a profile uses)."""
    from hydra import compose, initialize_config_dir

    from ..app import CONFIG_DIR, quote_numeric_groups

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=quote_numeric_groups(list(overrides)))


def _run_metrics(tracking_uri: str, run_id: str) -> tuple[dict[str, float], dict[str, str]]:
    from mlflow.tracking import MlflowClient

    run = MlflowClient(tracking_uri).get_run(run_id)
    return dict(run.data.metrics), dict(run.data.params)


# ---------------------------------------------------------------------------------------------
# the subcommands
# ---------------------------------------------------------------------------------------------


@dataclass
class Context:
    """Options shared by the subcommands."""

    out: Path
    tracking_uri: str
    experiment: str = "temseg-ablation"


def sweep_parent_id(sweep: str) -> str:
    """A ``--sweep`` value as a parent run id: a sweep folder is read for the id it recorded.

    'latest' and run ids pass through unchanged.
    """
    from ..sweep import PARENT_FILE, parent_run_id

    folder = Path(sweep)
    if sweep == "latest" or not folder.is_dir():
        return sweep
    run_id = parent_run_id(folder)
    if run_id is None:
        raise FileNotFoundError(f"{folder}: not a sweep folder (no {PARENT_FILE}); pass a sweep "
                                "folder, a sweep's parent run id or 'latest'")
    return run_id


def _sweep_runs(ctx: Context, sweep: str) -> tuple[pd.DataFrame, str]:
    db = Path(ctx.tracking_uri[len("sqlite:///"):])
    if ctx.tracking_uri.startswith("sqlite:///") and not db.is_file():
        # checked before importing MLflow, which would create an empty database there
        raise FileNotFoundError(f"{db}: no MLflow tracking database here; run a sweep first "
                                "or pass --tracking-uri")
    from mlflow.tracking import MlflowClient

    from .runs import latest_sweep_run_id, load_sweep_runs, open_client

    sweep_id = sweep_parent_id(sweep)
    if sweep == "latest":
        client = open_client(ctx.tracking_uri)
        exp = client.get_experiment_by_name(ctx.experiment)
        sweep_id = latest_sweep_run_id(client, exp.experiment_id) if exp else None
        if sweep_id is None:
            raise ValueError(f"{ctx.tracking_uri}: no sweep in experiment {ctx.experiment!r}; "
                             "run one first (e.g. `make sweep` or `make reproduce-table1`)")
    runs = load_sweep_runs(ctx.tracking_uri, ctx.experiment, sweep_run_id=sweep_id)
    done = finished_runs(runs)
    if len(done) == 0:
        raise ValueError(f"sweep {sweep_id}: none of its {len(runs)} runs has finished yet")
    name = MlflowClient(ctx.tracking_uri).get_run(sweep_id).info.run_name
    return done, f"sweep `{name}` (parent run {sweep_id}; {len(done)} finished of {len(runs)} runs)"


def cmd_thresholds(ctx: Context, sweep: str = "latest", low: float = 0.4, high: float = 0.7,
                   margin: float = EQUIVALENCE_MARGIN) -> str:
    """Threshold curves, Otsu positions and the 0.4-versus-0.7 check for the runs of a sweep."""
    from .compare_plots import curves_by_variant
    from .runs import load_curves

    runs, about = _sweep_runs(ctx, sweep)
    table = threshold_table(runs, points=(low, high))
    claim = threshold_claim(runs, low, high, margin=margin)
    curves = load_curves(ctx.tracking_uri, runs["run_id"], "val", names=(*CURVE_VALUES, "f1_std"))
    ctx.out.mkdir(parents=True, exist_ok=True)
    files = ["thresholds.md", "thresholds.csv", "thresholds_claim.csv"]
    if len(curves):
        stats = curve_stats(curves, runs)
        stats.to_csv(ctx.out / "thresholds_curves.csv", index=False)
        thresholds_figure(stats, table, ctx.out / "thresholds.png", points=(low, high),
                          title="precision / recall / F1 versus threshold (validation)")
        curves_by_variant(curves, runs, value="f1_mean", path=ctx.out / "thresholds_f1.png",
                          title="per-image mean F1 versus threshold (Fig. 7a)")
        files += ["thresholds_curves.csv", "thresholds.png", "thresholds_f1.png"]
    table.to_csv(ctx.out / "thresholds.csv", index=False)
    claim.to_csv(ctx.out / "thresholds_claim.csv", index=False)
    note = f"Source: {about}, store `{ctx.tracking_uri}`."
    if not len(curves):
        note += " The runs have no logged threshold curves, so no figures were drawn."
    md = thresholds_markdown(table, claim, low=low, high=high, margin=margin, note=note)
    (ctx.out / "thresholds.md").write_text(md)
    return md


def cmd_generalisation(ctx: Context, sweep: str = "latest", metric: str = "f1_otsu") -> str:
    """Validation, held-out and gap per variant for the runs of a sweep, with the gap plot."""
    from .compare_plots import generalisation_gap

    runs, about = _sweep_runs(ctx, sweep)
    names = (metric, *[n for n in GEN_NAMES if n != metric])
    table = generalisation_table(runs, names)
    ctx.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(ctx.out / "generalisation.csv", index=False)
    generalisation_gap(runs, name=metric, path=ctx.out / "generalisation.png",
                       title=f"generalisation to the held-out experiment ({metric})")
    md = generalisation_markdown(table, note=f"Source: {about}, store `{ctx.tracking_uri}`.")
    (ctx.out / "generalisation.md").write_text(md)
    return md


#: The models ``interpretability`` trains: name -> app overrides.
INTERPRETABILITY_JOBS = {
    "one_filter_9x9": ("arch=one_filter",),
    "one_filter_7x7": ("arch=one_filter", "kernel=7"),
    "shallow_wide": ("arch=shallow_wide",),
    "norm": ("model=norm",),
    "twoconv_norm": ("model=twoconv_norm",),
}


def cmd_interpretability(ctx: Context, jobs_dir: Path, profile: str = "quick",
                         overrides: Sequence[str] = (), parallel: int = 1, frame_seed: int = 20_200,
                         frame_size: int = 256, seed: int = 0,
                         shallow_overrides: Sequence[str] = ()) -> str:
    """Train the shallow CNNs and two UNets, draw their kernels and particle line profiles.

    ``overrides`` go to every job, ``shallow_overrides`` only to the one-filter and
    shallow-wide CNNs (e.g. a higher learning rate)."""
    from ..data.synthetic import SyntheticConfig, generate_frame
    from ..data.transforms import normalise
    from ..models import count_parameters
    from ..models.io import load_checkpoint
    from ..segment.infer import segment_image
    from .figures import kernel_images

    shallow = ("one_filter_9x9", "one_filter_7x7", "shallow_wide")
    jobs = [AppJob(name, (*ov, f"experiment={profile}", f"seed={seed}",
                          f"logger.experiment_name={_quote(ctx.experiment)}", *overrides,
                          *(shallow_overrides if name in shallow else ())),
                   jobs_dir / "interpretability" / name)
            for name, ov in INTERPRETABILITY_JOBS.items()]
    done = {r.name: r for r in run_app_jobs(jobs, ctx.tracking_uri, parallel)}
    done_seed = {name: int(_run_metrics(ctx.tracking_uri, r.run_id)[1].get("seed", seed))
                 for name, r in done.items()}
    with tempfile.TemporaryDirectory(prefix="findings_ckpt_") as tmp:  # downloads, if any
        models = {name: load_checkpoint(run_checkpoint(ctx.tracking_uri, r.run_id,
                                                       Path(tmp) / name))
                  for name, r in done.items()}
    ctx.out.mkdir(parents=True, exist_ok=True)

    k9 = models["one_filter_9x9"].net.kernels().numpy()
    k7 = models["one_filter_7x7"].net.kernels().numpy()
    kw = models["shallow_wide"].net.kernels().numpy()
    # short titles: kernel_images makes a one-kernel figure only 1.4 inches wide
    kernel_images(k9, ctx.out / "interpretability_kernel_9x9.png", title="9 x 9 kernel")
    kernel_images(k7, ctx.out / "interpretability_kernel_7x7.png", title="7 x 7 kernel")
    kernel_images(kw, ctx.out / "interpretability_shallow_wide.png",
                  title=f"shallow-wide CNN: {len(kw)} learned 9 x 9 filters and their mean")
    np.savez(ctx.out / "interpretability_kernels.npz", one_filter_9x9=k9, one_filter_7x7=k7,
             shallow_wide=kw)
    mean_w = kw.mean(0)
    # the kernels each job started from, to tell what training added from the random start
    start = {name: initial_kernels(models[name].net_config, done_seed[name])
             for name in ("one_filter_9x9", "one_filter_7x7", "shallow_wide")}
    d9, d7 = k9[0] - start["one_filter_9x9"][0], k7[0] - start["one_filter_7x7"][0]
    dw = mean_w - start["shallow_wide"].mean(0)
    kernels_figure({"one-filter 9 x 9": k9[0], "one-filter 7 x 7": k7[0],
                    f"shallow-wide: mean of {len(kw)}": mean_w,
                    "9 x 9: learned - initial": d9, "7 x 7: learned - initial": d7,
                    "mean: learned - initial": dw},
                   ctx.out / "interpretability_kernels.png", ncols=3,
                   title="learned kernels (top) and what training changed (bottom)")
    kstats = pd.DataFrame([
        {"kernel": "one-filter 9 x 9", **kernel_stats(k9[0], start["one_filter_9x9"][0])},
        {"kernel": "one-filter 7 x 7", **kernel_stats(k7[0], start["one_filter_7x7"][0])},
        {"kernel": f"shallow-wide mean of {len(kw)}",
         **kernel_stats(mean_w, start["shallow_wide"].mean(0))},
        *[{"kernel": f"shallow-wide filter {i}", **kernel_stats(kw[i], start["shallow_wide"][i])}
          for i in range(min(3, len(kw)))],
    ])
    best, how = best_dihedral_correlation(k9[0], mean_w)
    sims = pd.DataFrame([
        {"pair": "7 x 7 vs centre 7 x 7 of 9 x 9",
         "learned": kernel_correlation(k7[0], k9[0], "crop"),
         "update (learned - initial)": kernel_correlation(d7, d9, "crop")},
        {"pair": "7 x 7 vs 9 x 9 resized to 7 x 7",
         "learned": kernel_correlation(k7[0], k9[0], "resize"),
         "update (learned - initial)": kernel_correlation(d7, d9, "resize")},
        {"pair": "shallow-wide mean vs 9 x 9", "learned": kernel_correlation(mean_w, k9[0]),
         "update (learned - initial)": kernel_correlation(dw, d9)},
        {"pair": f"shallow-wide mean ({how}) vs 9 x 9, best of 8 symmetries", "learned": best,
         "update (learned - initial)": best_dihedral_correlation(d9, dw)[0]},
    ])

    # Fig. 5 and Fig. 6b on a frame none of the models trained on
    frame = generate_frame(SyntheticConfig(height=frame_size, width=frame_size), frame_seed)
    image = normalise(frame.image)
    probs = {name: segment_image(m, frame.image, pixel_size_nm=frame.pixel_size_nm).prob
             for name, m in models.items()}
    picks = pick_particles(frame.particles, frame.labels)
    if picks.empty:
        raise ValueError(f"synthetic frame seed {frame_seed} ({frame_size} px) has no particle "
                         "suited to a line profile; try another --frame-seed or a larger --frame-size")
    prof_models = ["norm", "twoconv_norm"]
    profiles = line_profiles(image, {m: probs[m] for m in prof_models}, frame.labels, picks)
    profiles.to_csv(ctx.out / "interpretability_profiles.csv", index=False)
    psum = profile_summary(profiles, prof_models)
    profiles_figure(profiles, picks, prof_models, image=image, pixel_size_nm=frame.pixel_size_nm,
                    path=ctx.out / "interpretability_profiles.png",
                    title=f"line profiles across particles (synthetic frame, seed {frame_seed})")
    seg_scores = {name: native_scores([p], [frame.labels], [frame.pixel_size_nm])
                  for name, p in probs.items()}
    _segmentation_figure(image, frame.labels > 0, probs, ctx.out / "interpretability_segmentation.png")

    rows = []
    for name, r in done.items():
        metrics, _ = _run_metrics(ctx.tracking_uri, r.run_id)
        rows.append({"model": name, "run": r.run_id[:12], "job": r.status,
                     "parameters": count_parameters(models[name].net),
                     "val F1 (Otsu)": metrics.get("final/val/f1_otsu", _NAN),
                     "held-out F1 (Otsu)": metrics.get("final/heldout/f1_otsu", _NAN),
                     "F1 (Otsu) on profile frame": seg_scores[name]["f1_otsu"],
                     "edge uncertainty on profile frame": seg_scores[name]["edge_uncertainty"]})
    summary = pd.DataFrame(rows)
    summary.to_csv(ctx.out / "interpretability.csv", index=False)
    pick_show = picks[["id", "diameter_nm", "diameter_px", "row", "x0", "x1"]].copy()
    psum = psum.merge(pick_show[["id", "diameter_nm"]], on="id")
    md = "\n".join([
        "# Interpretability: learned kernels and line profiles",
        "",
        f"Models trained through the app (`experiment={profile}`, seed {seed}"
        + (f", extra overrides `{' '.join(overrides)}`" if overrides else "")
        + (f", for the shallow CNNs also `{' '.join(shallow_overrides)}`"
           if shallow_overrides else "") + "):",
        "",
        md_table(summary),
        "",
        "## Learned kernels (Fig. 6a, Supplementary Figs. 7 and 8)",
        "",
        "`interpretability_kernel_9x9.png` and `interpretability_kernel_7x7.png`: the single filter "
        "of the one-filter CNN (its response is the particle logit, so a dark particle on a "
        "brighter support needs negative weights at the centre); "
        "`interpretability_shallow_wide.png`: the 32 first-layer filters of the shallow-wide CNN "
        "and their mean; `interpretability_kernels.png`: the two single filters and the mean on "
        "a signed colour scale (red positive, blue negative), above what training changed "
        "(learned minus the seeded initial weights, which the job's seed rebuilds exactly). "
        "Weights: `interpretability_kernels.npz`.",
        "",
        md_table(kstats),
        "",
        "A correlation with the initial weights near 1 and an update that is mostly uniform mean "
        "that training added little more than a constant to the random start (a box filter: "
        "darker means particle); the spatial pattern is then the initialisation, not a learned "
        "feature. Longer or faster training of the shallow models (`--shallow-override "
        "optim.lr=1e-2`, more epochs) lets a pattern form.",
        "",
        "Similarity (Pearson correlation of the weights; the paper: the 7 x 7 filter is similar "
        "to the 9 x 9 one, and the mean of the 32 filters resembles it with a slight rotation):",
        "",
        md_table(sims),
        "",
        "## Line profiles across particles (Fig. 5)",
        "",
        f"Synthetic frame (seed {frame_seed}, {frame_size} x {frame_size} px at "
        f"{frame.pixel_size_nm} nm/px, not a training frame), normalised like training; "
        "horizontal lines through the centres of three particles of different sizes. "
        "`interpretability_profiles.png`: intensity (solid), `norm` (dotted) and `twoconv_norm` "
        "(dashed) particle probability, true mask extent shaded; values in "
        "`interpretability_profiles.csv`. Along each line (px): true extent, predicted extent "
        "at 0.5, wrongly classified pixels, and uncertain pixels (0.1 < p < 0.9, the edge ramp):",
        "",
        md_table(psum[["id", "diameter_nm", "model", "true_px", "pred_px", "wrong_px",
                       "uncertain_px"]]),
        "",
        "`interpretability_segmentation.png` (Fig. 6b): the frame with the true (cyan) and Otsu "
        "(red) contours of each model.",
    ]) + "\n"
    (ctx.out / "interpretability.md").write_text(md)
    return md


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
    return _save(fig, path)


def _segmentation_figure(image: np.ndarray, truth: np.ndarray, probs: Mapping[str, np.ndarray],
                         path: Path) -> Figure:
    from ..training.metrics import otsu_threshold

    n = len(probs) + 1
    # modest size: Otsu contours of noisy probability maps make large PNGs
    fig = Figure(figsize=(2.8 * n, 3.0), dpi=80, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n))
    axes[0].imshow(image, cmap="gray")
    axes[0].contour(truth.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
    axes[0].set_title("frame, true contours", fontsize=9)
    for ax, (name, p) in zip(axes[1:], probs.items(), strict=True):
        t = otsu_threshold(p)
        ax.imshow(p, cmap="magma", vmin=0, vmax=1)
        ax.contour(truth.astype(float), levels=[0.5], colors="cyan", linewidths=0.5)
        ax.contour((p >= t).astype(float), levels=[0.5], colors="red", linewidths=0.5)
        ax.set_title(f"{name} (Otsu {t:.2f})", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    return _save(fig, path)


def cmd_resolution(ctx: Context, jobs_dir: Path, profile: str = "quick",
                   overrides: Sequence[str] = (), parallel: int = 1, seeds: int = 2,
                   factor: float = 2.0) -> str:
    """Train ``norm`` on downsampled frames and on native crops, score both at the native size."""
    from ..models.io import load_checkpoint
    from ..segment.infer import model_pixel_size_nm, segment_image

    if factor <= 1:
        raise ValueError(f"--factor must be > 1 (downsampling), got {factor}")
    base = ["model=norm", f"experiment={profile}", f"logger.experiment_name={_quote(ctx.experiment)}"]
    cfg = _composed([*base, *overrides])
    h, w = int(cfg.data.frame_height), int(cfg.data.frame_width)
    size = max(16, int(round(min(h, w) / factor)))
    jobs = []
    for s in range(seeds):
        for mode, extra in (("crop", ("data.resolution=crop",)),
                            ("downsample", ("data.resolution=downsample",
                                            f"data.downsample_size={size}"))):
            jobs.append(AppJob(f"{mode}_seed{s}", (*base, *extra, f"seed={s}", *overrides),
                               jobs_dir / "resolution" / f"{mode}_seed{s}"))
    outcomes = run_app_jobs(jobs, ctx.tracking_uri, parallel)
    rows, example = [], {}
    for res in outcomes:
        mode, seed = res.name.rsplit("_seed", 1)
        metrics, params = _run_metrics(ctx.tracking_uri, res.run_id)
        with tempfile.TemporaryDirectory(prefix="findings_ckpt_") as tmp:  # downloads, if any
            model = load_checkpoint(run_checkpoint(ctx.tracking_uri, res.run_id, Path(tmp)))
        images, labels, _sizes = native_validation_frames(params)
        # the frames as training saw them: at the model's recorded native pixel size, so the
        # crop model runs unscaled and the downsample model at exactly its training factor
        native_px = float(model.preprocess.get("pixel_size_nm") or 0) or None
        probs = [segment_image(model, img, pixel_size_nm=native_px).prob for img in images]
        scores = native_scores(probs, labels, _sizes)
        row = {"mode": mode, "seed": int(seed), "run_id": res.run_id, "job": res.status,
               "model_px_nm": model_pixel_size_nm(model.preprocess),
               **{f"native/{k}": v for k, v in scores.items() if k != "n_images"},
               "n_val_frames": int(scores["n_images"])}
        for n in NATIVE_NAMES:
            if f"final/val/{n}" in metrics:
                row[f"own/{n}"] = metrics[f"final/val/{n}"]
        rows.append(row)
        if int(seed) == 0:
            example[mode] = (images[0], labels[0], probs[0])
    per_run = pd.DataFrame(rows).sort_values(["mode", "seed"]).reset_index(drop=True)
    summary = resolution_summary(per_run)
    ctx.out.mkdir(parents=True, exist_ok=True)
    per_run.to_csv(ctx.out / "resolution_runs.csv", index=False)
    summary.to_csv(ctx.out / "resolution.csv", index=False)
    _resolution_figure(per_run, example, ctx.out / "resolution.png", h, size)
    md = resolution_markdown(summary, per_run, factor=min(h, w) / size, frame_px=min(h, w),
                             downsample_px=size,
                             note=f"Profile `{profile}`, {seeds} seeds"
                                  + (f", extra overrides `{' '.join(overrides)}`" if overrides else "")
                                  + f"; store `{ctx.tracking_uri}`.")
    (ctx.out / "resolution.md").write_text(md)
    return md


def _resolution_figure(per_run: pd.DataFrame, example: Mapping[str, tuple], path: Path,
                       frame_px: int, ds_px: int) -> Figure:
    fig = Figure(figsize=(13, 6.6), dpi=110, layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.15])
    axes = top.subplots(1, 3)
    modes = ["crop", "downsample"]
    for ax, col, label in zip(axes, ("native/f1_otsu", "native/edge_uncertainty",
                                     "native/particle_det_f1"),
                              ("pixel F1 at Otsu", "edge uncertainty (lower is sharper)",
                               "particle detection F1"), strict=True):
        for i, mode in enumerate(modes):
            v = per_run.loc[per_run["mode"] == mode, col].to_numpy(float)
            if len(v):
                ax.bar(i, np.nanmean(v), color=("tab:blue", "tab:orange")[i], alpha=0.6)
                ax.plot(np.full(len(v), i) + np.linspace(-0.1, 0.1, len(v)), v, "ko", ms=3)
        ax.set_xticks([0, 1], [f"crop (native {frame_px} px)", f"downsample ({ds_px} px)"],
                      fontsize=8)
        ax.set_title(label + ", native pixel size", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    if example:
        img, lab, _ = next(iter(example.values()))
        # a central window at most 128 px wide, so that edges stay visible at print size
        win = tuple(slice(max(0, (n - 128) // 2), max(0, (n - 128) // 2) + min(n, 128))
                    for n in img.shape)
        truth = (lab[win] > 0).astype(float)
        bx = np.atleast_1d(bottom.subplots(1, 1 + len(example)))
        bx[0].imshow(img[win], cmap="gray")
        bx[0].contour(truth, levels=[0.5], colors="cyan", linewidths=0.5)
        bx[0].set_title("native validation frame (seed 0, centre), truth", fontsize=9)
        for ax, mode in zip(bx[1:], [m for m in modes if m in example], strict=True):
            ax.imshow(example[mode][2][win], cmap="magma", vmin=0, vmax=1)
            ax.contour(truth, levels=[0.5], colors="cyan", linewidths=0.5)
            ax.set_title(f"{mode} model: particle probability", fontsize=9)
        for ax in bx:
            ax.set_axis_off()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``findings`` command line (one subcommand per finding)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", type=Path, default=Path("experiments/findings"),
                        help="report folder (default: experiments/findings)")
    common.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: sqlite:///<$TEMSEG_ROOT or cwd>/mlruns/mlflow.db)")
    common.add_argument("--experiment-name", default="temseg-ablation")
    swept = argparse.ArgumentParser(add_help=False)
    swept.add_argument("--sweep", default="latest",
                       help="'latest' (newest sweep in the store), a sweep folder or a sweep's "
                            "parent run id")
    swept.add_argument("--profile", default=None, help=argparse.SUPPRESS)  # accepted, unused
    trains = argparse.ArgumentParser(add_help=False)
    trains.add_argument("--profile", default=os.environ.get("PROFILE", "quick"), choices=PROFILES)
    trains.add_argument("--jobs", type=int, default=1,
                        help="app jobs at a time (each gets cpu_count / jobs threads)")
    trains.add_argument("--jobs-dir", type=Path, default=None,
                        help="run folders of the training jobs (default: <root>/outputs/findings)")
    trains.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job")

    parser = argparse.ArgumentParser(prog="python -m temseg_ablation.report.findings",
                                     description="The paper's findings beyond Table 1, one "
                                                 "command (and report) each.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("thresholds", parents=[common, swept],
                       help="P/R/F1 versus threshold, Otsu, 0.4 vs 0.7")
    p.add_argument("--low", type=float, default=0.4)
    p.add_argument("--high", type=float, default=0.7)
    p.add_argument("--margin", type=float, default=EQUIVALENCE_MARGIN,
                   help="precision differences within +-margin count as 'the same'")
    p = sub.add_parser("generalisation", parents=[common, swept],
                       help="validation versus held-out experiment")
    p.add_argument("--metric", default="f1_otsu")
    p = sub.add_parser("interpretability", parents=[common, trains],
                       help="learned kernels and particle line profiles")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--frame-seed", type=int, default=20_200)
    p.add_argument("--frame-size", type=int, default=256)
    p.add_argument("--shallow-override", action="append", default=[], metavar="OVERRIDE",
                   help="Hydra override for the one-filter and shallow-wide jobs only "
                        "(repeatable), e.g. optim.lr=1e-2")
    p = sub.add_parser("resolution", parents=[common, trains],
                       help="downsampled frames versus native crops, at the native pixel size")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--factor", type=float, default=2.0,
                   help="downsampling factor of whole frames (the paper's is about 3.6)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand, write its report and print the Markdown."""
    args = build_parser().parse_args(argv)
    from ..build import absolute_uri

    uri = absolute_uri(args.tracking_uri) if args.tracking_uri else default_tracking_uri()
    ctx = Context(out=args.out, tracking_uri=uri, experiment=args.experiment_name)
    t0, c0 = time.perf_counter(), os.times()
    try:
        if args.command == "thresholds":
            md = cmd_thresholds(ctx, args.sweep, args.low, args.high, args.margin)
        elif args.command == "generalisation":
            md = cmd_generalisation(ctx, args.sweep, args.metric)
        else:
            root = Path(os.environ.get("TEMSEG_ROOT") or ".").resolve()
            jobs_dir = (args.jobs_dir or root / "outputs" / "findings").resolve()
            common = dict(jobs_dir=jobs_dir, profile=args.profile, overrides=args.overrides,
                          parallel=args.jobs)
            if args.command == "interpretability":
                md = cmd_interpretability(ctx, **common, frame_seed=args.frame_seed,
                                          frame_size=args.frame_size, seed=args.seed,
                                          shallow_overrides=args.shallow_override)
            else:
                md = cmd_resolution(ctx, **common, seeds=args.seeds, factor=args.factor)
    except (ValueError, FileNotFoundError, RuntimeError) as err:
        print(f"findings {args.command}: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    c1 = os.times()
    cpu = (c1.user + c1.system + c1.children_user + c1.children_system
           - c0.user - c0.system - c0.children_user - c0.children_system)
    timing = (f"\n_Generated by `python -m temseg_ablation.report.findings {args.command}` in "
              f"{wall:.0f} s wall and {cpu:.0f} s CPU after Python start-up (this process and its "
              "training jobs)._\n")
    path = ctx.out / f"{args.command}.md"
    path.write_text(path.read_text() + timing)
    print(md + timing)
    print(f"wrote {path} (+ .csv, .png) in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
