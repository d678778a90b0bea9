"""Table 1 of Horwath et al. (2020) as a measured table: paired effects over seeds with 95 % CIs.

Each row compares a *treated* arm with a *base* arm that differ only in the row's modification
(arms are the configs in ``conf/table1/``). For every seed both arms are trained with the same
data and seed, so the per-seed difference is a paired observation; the table reports the mean
difference and a t-based 95 % confidence interval, and turns the interval into a verdict on the
paper's stated conclusion. Nothing here is tuned by hand: verdicts follow from the rule in
:func:`verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats


@dataclass(frozen=True)
class Measure:
    """A metric (``final/val/<key>`` in MLflow) and the change the paper leads one to expect.

    ``expect`` is +1 (treated higher), -1 (treated lower) or 0 (no real difference).
    """

    key: str
    label: str
    expect: int


@dataclass(frozen=True)
class Row:
    """One comparison: a Table 1 row or a finding from the paper's text."""

    id: str
    problem: str
    modification: str
    base: str
    treated: str
    paper: str
    measures: tuple[Measure, ...]


ROWS: tuple[Row, ...] = (
    Row("1", "Particle features not recognised", "extra conv at each up-sampling step",
        "norm", "twoconv_norm",
        "extra convs (without blur) give virtually indistinguishable segmentations",
        (Measure("particle_det_recall", "particle recall", 0),
         Measure("particle_det_f1", "particle F1", 0),
         Measure("f1_otsu", "pixel F1 (Otsu)", 0))),
    Row("2a", "Unclear boundaries at particle edges", "Gaussian blur sigma 1", "norm", "norm_blur1",
        "blur was meant to sharpen edges, but moves edges inward and loses small, faint particles",
        (Measure("particle_recall_0to2p5nm", "recall, particles < 2.5 nm", -1),
         Measure("edge_uncertainty", "edge uncertainty", -1),
         Measure("particle_boundary_f1", "boundary F1 (2 px)", -1))),
    Row("2b", "Unclear boundaries at particle edges", "Gaussian blur sigma 2", "norm", "norm_blur2",
        "as sigma 1, more so; stable over a smaller range of thresholds",
        (Measure("particle_recall_0to2p5nm", "recall, particles < 2.5 nm", -1),
         Measure("edge_uncertainty", "edge uncertainty", -1),
         Measure("particle_boundary_f1", "boundary F1 (2 px)", -1))),
    Row("3", "No activation in particle output layer", "leaky ReLU instead of ReLU (no norm)",
        "plain_relu", "plain_leaky",
        "leaky ReLU solves the dead particle output (dying ReLU)",
        (Measure("dead_output_fraction", "dead-output fraction", -1),
         Measure("f1_otsu", "pixel F1 (Otsu)", +1))),
    Row("4", "Large variation in raw activation values", "batch norm after every conv",
        "plain_leaky", "norm",
        "batch normalisation is the most important factor for 1024 x 1024 frames",
        (Measure("act_spread_log10", "log10 activation-spread ratio", -1),
         Measure("f1_otsu", "pixel F1 (Otsu)", +1))),
    Row("5", "(text) receptive field", "7 x 7 kernels instead of 3 x 3", "norm", "norm_k7",
        "the only other significant improvement", (Measure("f1_otsu", "pixel F1 (Otsu)", +1),)),
    Row("6", "(text) network depth", "3 levels instead of 4", "norm", "norm_depth3",
        "more depth does not improve performance", (Measure("f1_otsu", "pixel F1 (Otsu)", 0),)),
    Row("7", "(text) learning rate", "lr 1e-3 instead of 1e-4", "norm", "norm_lr1e-3",
        "the slow rate (1e-4) gives the best, most stable models",
        (Measure("f1_otsu", "pixel F1 (Otsu)", -1),)),
    Row("8", "(text, Fig. 7) shallow-wide CNN", "one 9 x 9 x 32 layer + 1 x 1 instead of the UNet",
        "norm", "shallow_wide", "comparable F1, somewhat lower from false positives",
        (Measure("f1_otsu", "pixel F1 (Otsu)", -1),
         Measure("particle_det_precision", "particle precision", -1))),
)

#: Differences smaller than this (in the measure's units) count as "no real difference" when the
#: paper claims none; only used for ``expect == 0``.
EQUIVALENCE_MARGIN = 0.02


def arms() -> list[str]:
    """Every arm the table needs (the ``conf/table1/*.yaml`` names)."""
    return sorted({a for r in ROWS for a in (r.base, r.treated)})


def paired_interval(diffs: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of paired differences and its t-based confidence interval (NaN with < 2 pairs)."""
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    n = len(diffs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(diffs.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def verdict(expect: int, low: float, high: float, margin: float = EQUIVALENCE_MARGIN) -> str:
    """``supports`` / ``contradicts`` / ``inconclusive`` from a confidence interval.

    With an expected direction, an interval entirely on that side supports the paper and one
    entirely on the other side contradicts it. When the paper claims no difference, an interval
    inside +-``margin`` supports it and one excluding zero contradicts it.
    """
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if expect == 0:
        if -margin <= low and high <= margin:
            return "supports"
        if low > 0 or high < 0:
            return "contradicts"
        return "inconclusive"
    if (expect > 0 and low > 0) or (expect < 0 and high < 0):
        return "supports"
    if (expect > 0 and high < 0) or (expect < 0 and low > 0):
        return "contradicts"
    return "inconclusive"


def measure_table(runs: pd.DataFrame, split: str = "val") -> pd.DataFrame:
    """Long table of every row x measure: paired mean difference, 95 % CI, verdict.

    ``runs`` has one row per finished job with columns ``arm``, ``seed`` and
    ``final/<split>/<metric>``.
    """
    out = []
    for row in ROWS:
        base = runs[runs["arm"] == row.base].set_index("seed")
        treated = runs[runs["arm"] == row.treated].set_index("seed")
        seeds = sorted(set(base.index) & set(treated.index))
        for m in row.measures:
            col = f"final/{split}/{m.key}"
            if col in base.columns and col in treated.columns and seeds:
                b = base.loc[seeds, col].to_numpy(float)
                t = treated.loc[seeds, col].to_numpy(float)
            else:
                b = t = np.array([])
            mean, low, high = paired_interval(t - b)
            out.append({
                "row": row.id, "problem": row.problem, "modification": row.modification,
                "base": row.base, "treated": row.treated, "measure": m.label, "metric": m.key,
                "expected": {1: "higher", -1: "lower", 0: "no change"}[m.expect],
                "base_mean": float(np.nanmean(b)) if len(b) else float("nan"),
                "treated_mean": float(np.nanmean(t)) if len(t) else float("nan"),
                "diff": mean, "ci_low": low, "ci_high": high, "n_seeds": int(np.isfinite(t - b).sum()),
                "verdict": verdict(m.expect, low, high), "paper": row.paper,
            })
    return pd.DataFrame(out)


def _fmt(x: float, digits: int = 3) -> str:
    return "n/a" if not np.isfinite(x) else f"{x:+.{digits}f}"


def to_markdown(table: pd.DataFrame, profile: str, n_seeds: int, note: str = "") -> str:
    """The measured Table 1 as Markdown: one line per row x measure."""
    lines = [
        f"# Table 1, measured (profile `{profile}`, {n_seeds} seeds per arm, paired differences "
        "treated - base, 95 % t-interval)",
        "",
        "| # | problem | modification (treated vs base) | measure | base | treated | difference "
        "[95 % CI] | paper's conclusion | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in table.iterrows():
        ci = f"{_fmt(r['diff'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        lines.append(
            f"| {r['row']} | {r['problem']} | {r['modification']} (`{r['treated']}` vs "
            f"`{r['base']}`) | {r['measure']} (expected {r['expected']}) | "
            f"{r['base_mean']:.3f} | {r['treated_mean']:.3f} | {ci} | {r['paper']} | "
            f"**{r['verdict']}** |"
        )
    lines += ["", "Verdict rule: an interval entirely on the expected side supports the paper, "
              "entirely on the other side contradicts it, otherwise inconclusive at this scale; "
              f"for 'no change' claims, an interval inside +-{EQUIVALENCE_MARGIN} supports and "
              "one excluding zero contradicts."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def effects_figure(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Forest plot of every paired effect with its 95 % interval, coloured by verdict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"supports": "tab:green", "contradicts": "tab:red", "inconclusive": "tab:grey"}
    n = len(table)
    fig, ax = plt.subplots(figsize=(8, 0.38 * n + 1.2), dpi=110)
    y = np.arange(n)[::-1]
    for yi, (_, r) in zip(y, table.iterrows(), strict=True):
        c = colours[r["verdict"]]
        if np.isfinite(r["ci_low"]):
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=c, lw=2)
        ax.plot(r["diff"], yi, "o", color=c)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels([f"{r['row']}: {r['treated']} vs {r['base']} - {r['measure']}"
                        for _, r in table.iterrows()], fontsize=7)
    ax.set_xlabel("paired difference, treated - base (95 % CI)")
    for name, c in colours.items():
        ax.plot([], [], "o-", color=c, label=name)
    # outside the axes: inside, it hid the interval of whichever row sat in its corner
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
