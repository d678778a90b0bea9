"""``findings generalisation``: every variant of a sweep on the held-out experiment (other
magnification and dose) beside its validation scores, and the gap."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from .context import Context, sweep_runs
from .markdown import cell, fmt_pm, md_table, mean_sd, need_rows, ranked_groups

#: Scores compared between validation and the held-out experiment: calibration-free edge
#: measures (ramp width, boundary F1) rather than ``edge_uncertainty``, which counts background
#: under an output batch norm, and small-particle recall by true size without frame-cut particles.
GEN_NAMES = ("f1_otsu", "f1_at_0.4", "ramp_width_px", "boundary_f1_2px", "particle_det_f1",
             "particle_recall_small")


def generalisation_table(runs: pd.DataFrame, names: Sequence[str] = GEN_NAMES,
                         by: str = "variant") -> pd.DataFrame:
    """Per variant: validation, held-out and gap (val - held-out) of each score in ``names``.

    Columns ``variant``, ``n``, then ``<split>/<name> mean`` / ``sd`` for split in val, heldout,
    gap (mean and s.d. over seeds; the gap per run from ``final/gap/<name>``, or val - held-out
    where that was not logged). Scores with neither split in ``runs`` are left out; ordered by
    validation ``names[0]``, best first.
    """
    need_rows(runs, by, "generalisation_table")
    present = [n for n in names if f"final/val/{n}" in runs.columns
               and f"final/heldout/{n}" in runs.columns]
    if not present:
        raise ValueError(f"generalisation_table: the runs have no val and held-out pair of "
                         f"{list(names)} (were they trained with data.heldout=true?)")
    rows = []
    for name in ranked_groups(runs, by, f"final/val/{present[0]}"):
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
            f"{cell(v)} -> {cell(h)} ({fmt_pm(g, gs, sign=True)})" for v, h, g, gs in
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


def cmd_generalisation(ctx: Context, sweep: str = "latest", metric: str = "f1_otsu") -> str:
    """Validation, held-out and gap per variant for the runs of a sweep, with the gap plot."""
    from ..compare_plots import generalisation_gap

    runs, about = sweep_runs(ctx, sweep)
    names = (metric, *[n for n in GEN_NAMES if n != metric])
    table = generalisation_table(runs, names)
    ctx.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(ctx.out / "generalisation.csv", index=False)
    generalisation_gap(runs, name=metric, path=ctx.out / "generalisation.png",
                       title=f"generalisation to the held-out experiment ({metric})")
    md = generalisation_markdown(table, note=f"Source: {about}, store `{ctx.tracking_uri}`.")
    (ctx.out / "generalisation.md").write_text(md)
    return md
