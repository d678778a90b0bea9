"""Shared helpers of the findings reports: mean ± s.d., pipe tables, run filters, saving figures."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from ..compare_plots import save_figure  # noqa: F401 - the findings' figure saver

NAN = float("nan")


def mean_sd(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample s.d. (ddof 1; NaN below two values) and count of the finite ``values``."""
    v = np.asarray(list(values), dtype=float)
    v = v[np.isfinite(v)]
    n = int(v.size)
    return (float(v.mean()) if n else NAN, float(v.std(ddof=1)) if n > 1 else NAN, n)


def fmt_pm(mean: float, sd: float = NAN, digits: int = 3, sign: bool = False) -> str:
    """``'0.812 ± 0.013'`` (just the mean when the s.d. is undefined, ``'n/a'`` without a mean)."""
    if not np.isfinite(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" if sign else f"{mean:.{digits}f}"
    return text + (f" ± {sd:.{digits}f}" if np.isfinite(sd) else "")


def md_table(df: pd.DataFrame) -> str:
    """A pipe table of ``df`` as it is (strings and numbers, index ignored)."""
    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "| " + " | ".join("---" for _ in df.columns) + " |"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def cell(v: Any) -> str:
    """One table cell: floats to three decimals (``n/a`` when not finite), pipes escaped."""
    if isinstance(v, float):
        return "n/a" if not np.isfinite(v) else f"{v:.3f}"
    return str(v).replace("|", "/")


def finished_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Rows of ``runs`` whose MLflow status is FINISHED (all rows when there is no status column)."""
    if "status" not in runs.columns:
        return runs
    return runs[runs["status"].astype(str) == "FINISHED"].reset_index(drop=True)


def ranked_groups(runs: pd.DataFrame, by: str, metric: str) -> list[str]:
    """Groups by mean ``metric``, best first; groups without it after, by name."""
    names = runs[by].astype(str)
    if metric not in runs.columns:
        return sorted(names.unique())
    means = runs[metric].groupby(names).mean()
    ranked = means.dropna().sort_values(ascending=False, kind="stable").index.tolist()
    return ranked + sorted(set(names) - set(ranked))


def need_rows(runs: pd.DataFrame, by: str, what: str) -> None:
    """Raise ``ValueError`` naming ``what`` when ``runs`` lacks column ``by`` or has no rows."""
    if by not in runs.columns:
        raise ValueError(f"{what}: the runs frame has no column {by!r}")
    if len(runs) == 0:
        raise ValueError(f"{what}: no finished runs to summarise")
