"""``findings thresholds``: precision, recall and F1 versus softmax threshold per variant of a
sweep, the Otsu threshold's position, and the paper's choice of 0.4 over 0.7 (Supplementary
Fig. 5, Fig. 7a)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..table1 import EQUIVALENCE_MARGIN, paired_interval, verdict
from .context import Context, sweep_runs
from .markdown import NAN, fmt_pm, md_table, mean_sd, need_rows, ranked_groups, save_figure

#: Per-image-mean threshold curves drawn by ``thresholds`` (the same means as ``*_at_0.4``).
CURVE_VALUES = ("precision_mean", "recall_mean", "f1_mean")
#: Names of the pooled rows of :func:`threshold_claim`.
POOLED_ALL, POOLED_BN = "pooled: all runs", "pooled: batch-norm UNets"


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
    need_rows(runs, by, "threshold_table")
    cols = {"otsu_threshold": f"final/{split}/otsu_threshold"}
    for p in [*points, "otsu"]:
        for m in ("precision", "recall", "f1"):
            label = f"{m}@{p if p == 'otsu' else f'{float(p):.1f}'}"
            cols[label] = point_column(split, m, p)
    if not any(c in runs.columns for c in cols.values()):
        raise ValueError(f"threshold_table: the runs have none of {list(cols.values())[:4]}...; "
                         "were they logged by this version of temseg-ablation?")
    rows = []
    for name in ranked_groups(runs, by, point_column(split, "f1", "otsu")):
        sub = runs[runs[by].astype(str) == name]
        row: dict[str, Any] = {by: name, "n": len(sub)}
        for label, col in cols.items():
            m, s, _ = mean_sd(sub[col]) if col in sub.columns else (NAN, NAN, 0)
            row[f"{label} mean"], row[f"{label} sd"] = m, s
        rows.append(row)
    return pd.DataFrame(rows)


#: Learned affine parameters of the output batch norm, per class (``metrics.activation``).
OUT_NORM_KEYS = ("out_norm_weight_0", "out_norm_bias_0", "out_norm_weight_1", "out_norm_bias_1")


def output_norm_table(runs: pd.DataFrame, split: str = "val", by: str = "variant") -> pd.DataFrame:
    """Per variant with an output batch norm: its learned scale and shift per class, and
    ``p_neutral``, the particle probability of a pixel whose two logits sit at their batch means.

    With batch norm after the output convolution the softmax input is ``w_c * z_c + b_c`` with
    ``z_c`` standardised over the batch, so a pixel at ``z = 0`` gets
    ``p_neutral = sigmoid(b_1 - b_0)``: the probability that a typical-looking pixel starts from,
    which moves the useful thresholds. Columns ``variant``, ``n`` and ``<key> mean`` / ``sd``
    (mean and sample s.d. over seeds) for each of :data:`OUT_NORM_KEYS` and ``p_neutral``.
    Variants without the logged parameters (no output norm) are left out; empty if none has them.
    """
    need_rows(runs, by, "output_norm_table")
    cols = [f"final/{split}/{k}" for k in OUT_NORM_KEYS]
    if not set(cols) <= set(runs.columns):
        return pd.DataFrame(columns=[by, "n"])
    rows = []
    for name in ranked_groups(runs, by, point_column(split, "f1", "otsu")):
        sub = runs[runs[by].astype(str) == name]
        vals = sub[cols].to_numpy(float)
        keep = np.isfinite(vals).all(axis=1)
        if not keep.any():
            continue
        vals = vals[keep]
        row: dict[str, Any] = {by: name, "n": int(keep.sum())}
        for k, v in zip(OUT_NORM_KEYS, vals.T, strict=True):
            row[f"{k} mean"], row[f"{k} sd"], _ = mean_sd(v)
        neutral = 1.0 / (1.0 + np.exp(-(vals[:, 3] - vals[:, 1])))
        row["p_neutral mean"], row["p_neutral sd"], _ = mean_sd(neutral)
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
    need_rows(runs, by, "threshold_claim")
    need = [point_column(split, m, t) for m in ("precision", "recall") for t in (low, high)]
    missing = [c for c in need if c not in runs.columns]
    if missing:
        raise ValueError(f"threshold_claim: the runs lack {missing}")
    groups = [(name, runs[runs[by].astype(str) == name])
              for name in ranked_groups(runs, by, point_column(split, "f1", "otsu"))]
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
        ot = float(otsu.get(name, NAN))
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
    return save_figure(fig, path)


def thresholds_markdown(table: pd.DataFrame, claim: pd.DataFrame, *, low: float = 0.4,
                        high: float = 0.7, margin: float = EQUIVALENCE_MARGIN, note: str = "",
                        by: str = "variant", out_norm: pd.DataFrame | None = None) -> str:
    """The ``thresholds`` report: scores at the fixed thresholds and at Otsu, the claim check, and
    (when ``out_norm`` has rows, :func:`output_norm_table`) the output batch norm's parameters."""
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
        part = {m: fmt_pm(r.get(f"{m} diff mean", NAN), r.get(f"{m} diff sd", NAN), sign=True)
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
    ]
    if out_norm is not None and len(out_norm):
        o = pd.DataFrame({by: out_norm[by], "n": out_norm["n"]})
        for k, label in zip((*OUT_NORM_KEYS, "p_neutral"),
                            ("scale, background", "shift, background", "scale, particle",
                             "shift, particle", "p at mean logits"), strict=True):
            o[label] = [fmt_pm(m, s_, sign=k.startswith("out_norm_bias"))
                        for m, s_ in zip(out_norm[f"{k} mean"], out_norm[f"{k} sd"], strict=True)]
        lines += [
            "",
            "## The output batch norm's learned scale and shift",
            "",
            "Batch norm after the output convolution standardises each class's logit over the "
            "batch and then applies a learned scale and shift (initialised to 1 and 0). A pixel "
            "whose logits sit at their batch means gets particle probability "
            "sigmoid(shift_particle - shift_background) (`p at mean logits`): the further the "
            "shifts have moved from 0, the further typical background starts below 0.5, and the "
            "more room a low threshold has before it admits background.",
            "",
            md_table(o),
        ]
    lines += [
        "",
        "Figures: `thresholds.png` (per variant: precision, recall, F1 versus threshold, ±1 s.d. "
        "band over seeds, black line at the mean Otsu threshold), `thresholds_f1.png` (F1 of all "
        "variants on one axis, as Fig. 7a).",
    ]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def cmd_thresholds(ctx: Context, sweep: str = "latest", low: float = 0.4, high: float = 0.7,
                   margin: float = EQUIVALENCE_MARGIN) -> str:
    """Threshold curves, Otsu positions and the 0.4-versus-0.7 check for the runs of a sweep."""
    from ..compare_plots import curves_by_variant
    from ..runs import load_curves

    runs, about = sweep_runs(ctx, sweep)
    table = threshold_table(runs, points=(low, high))
    claim = threshold_claim(runs, low, high, margin=margin)
    out_norm = output_norm_table(runs)
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
    if len(out_norm):
        out_norm.to_csv(ctx.out / "thresholds_out_norm.csv", index=False)
        files.append("thresholds_out_norm.csv")
    note = f"Source: {about}, store `{ctx.tracking_uri}`."
    if not len(curves):
        note += " The runs have no logged threshold curves, so no figures were drawn."
    md = thresholds_markdown(table, claim, low=low, high=high, margin=margin, note=note,
                             out_norm=out_norm)
    (ctx.out / "thresholds.md").write_text(md)
    return md
