"""The measured Table 1 for people: a Markdown table and a forest plot of the paired effects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .table1 import (
    ALPHA,
    MIN_CONVERGED_PAIRS,
    PREVIEW_VERDICT,
    SECONDARY_VERDICT,
    Measure,
    find_measure,
)

__all__ = ["to_markdown", "effects_figure"]


def _fmt(x: float, digits: int = 3, sign: bool = True) -> str:
    if not np.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _expected(m: Measure) -> str:
    return {1: "higher", -1: "lower"}.get(m.expect, f"within +-{m.margin}")


def to_markdown(table: pd.DataFrame, profile: str, n_seeds: int, note: str = "") -> str:
    """The measured Table 1 as Markdown: one line per row x measure, primary measures in bold."""
    lines = [
        f"# Table 1, measured (profile `{profile}`, {n_seeds} seeds per arm, paired differences "
        "treated - base)",
        "",
        "| # | modification (treated vs base) | measure | base | treated | difference [95 % CI] "
        "| n | p (sign-flip) | p (Holm) | paper's conclusion | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for _, r in table.iterrows():
        row, m = find_measure(r["row"], r["measure"])
        name = f"{m.label} (expected {_expected(m)})"
        name = f"**{name}**" if r["primary"] else name
        ci = f"{_fmt(r['diff'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"
        lines.append(
            f"| {row.id} | {row.modification} (`{row.treated}` vs `{row.base}`) | {name} | "
            f"{_fmt(r['base'], sign=False)} | {_fmt(r['treated'], sign=False)} | {ci} | "
            f"{int(r['n_seeds'])} | {_fmt(r['p_value'], sign=False)} | "
            f"{_fmt(r['p_adjusted'], sign=False)} | "
            f"{row.paper} | **{r['verdict']}** |")
    lines += ["", "Each row has one primary measure (bold); only it is judged. Intervals are "
              "paired t-intervals clipped to the measure's feasible range; p is an exact "
              "two-sided sign-flip test (smallest possible p = 2/2^n: "
              f"{2 / 2**max(n_seeds, 1):.4f} with all {n_seeds} seeds paired), "
              "Holm-adjusted over the directional primary measures of the judged (converged) rows. "
              "Directional rows: supports / "
              f"contradicts need Holm p < {ALPHA} and the interval on the expected / opposite "
              "side. 'No change' rows: the interval inside +-margin supports, entirely outside "
              "contradicts. A row is judged on the seeds where both arms converged (n); fewer than "
              f"{MIN_CONVERGED_PAIRS} such pairs: not converged (shown over all paired seeds)."]
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


_COLOURS = {"supports": "tab:green", "contradicts": "tab:red", "inconclusive": "tab:grey",
            "not converged": "tab:orange", SECONDARY_VERDICT: "lightgrey",
            PREVIEW_VERDICT: "tab:blue"}


def effects_figure(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Forest plot of every paired effect with its interval, coloured by verdict.

    Measures in different units share one axis, so each line is labelled with its key.
    """
    from matplotlib.figure import Figure

    n = len(table)
    fig = Figure(figsize=(8, 0.38 * n + 1.2), dpi=110)
    ax = fig.subplots()
    y = np.arange(n)[::-1]
    labels = []
    for yi, (_, r) in zip(y, table.iterrows(), strict=True):
        row, m = find_measure(r["row"], r["measure"])
        c = _COLOURS.get(r["verdict"], "black")
        if np.isfinite(r["ci_low"]) and np.isfinite(r["ci_high"]):
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=c, lw=2 if r["primary"] else 1)
        ax.plot(r["diff"], yi, "o" if r["primary"] else ".", color=c)
        labels.append(f"{row.id}: {row.treated} vs {row.base} - {m.key}"
                      + (" (primary)" if r["primary"] else ""))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("paired difference, treated - base (95 % CI, measure's units)")
    for name in dict.fromkeys(table["verdict"]):
        ax.plot([], [], "o-", color=_COLOURS.get(name, "black"), label=name)
    # outside the axes: inside, it hid the interval of whichever row sat in its corner
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return Path(path)

