"""Table 1 of Horwath et al. (2020) as a measured table: paired effects over seeds.

Each row compares a *treated* arm with a *base* arm that differ only in the row's modification
(arms are the configs in ``conf/table1/``). Both arms are trained per seed with the same data and
seed, so per-seed differences treated - base are paired observations. For every row x measure
the table gives the mean difference, a paired t-interval clipped to the measure's feasible range,
an exact sign-flip (paired permutation) p-value and, for the one *primary* measure of each row, a
Holm-adjusted p-value over the table's judged directional primary measures. Only primary
measures drive verdicts (rule: :func:`row_verdict`); secondary measures are reported, not
judged. Nothing is tuned by hand.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

# --- metric keys: the only place they are spelled; MLflow keys are ``final/<split>/<key>`` -------
F1_OTSU = "f1_otsu"                              #: pixel F1 at the Otsu threshold, in [0, 1]
EDGE_OFFSET = "edge_offset_px"                   #: signed edge offset, px; negative = inward
PARTICLE_RECALL_SMALL = "particle_recall_small"  #: detection recall of small particles, [0, 1]
PARTICLE_AUROC = "particle_auroc"                #: particle logit separates classes, [0, 1]
ACT_SPREAD = "act_spread_prenorm_log10"          #: log10 activation spread before each norm
RAMP_WIDTH = "ramp_width_px"                     #: 10-90 % probability ramp along normals, px
BOUNDARY_F1 = {t: f"boundary_f1_{t}px" for t in (1, 2, 3)}  #: boundary F1 at t px, [0, 1]
PARTICLE_DET_F1 = "particle_det_f1"              #: particle detection F1, [0, 1]
PARTICLE_DET_RECALL = "particle_det_recall"      #: particle detection recall, [0, 1]
PARTICLE_DET_PRECISION = "particle_det_precision"  #: particle detection precision, [0, 1]
#: Every key the table reads (the metrics code must log exactly these).
METRIC_KEYS: tuple[str, ...] = (F1_OTSU, EDGE_OFFSET, PARTICLE_RECALL_SMALL, PARTICLE_AUROC,
                                ACT_SPREAD, RAMP_WIDTH, *BOUNDARY_F1.values(), PARTICLE_DET_F1,
                                PARTICLE_DET_RECALL, PARTICLE_DET_PRECISION)
#: Split the table is measured on (``final/test/<key>``).
SPLIT = "test"
#: Profiles too short to judge anything: the table is shown but gives no verdicts.
PREVIEW_PROFILES = ("preview",)
PREVIEW_VERDICT = "preview: no verdict"
SECONDARY_VERDICT = "secondary"
ALPHA = 0.05
#: Largest n whose 2^n sign patterns are enumerated exactly; above it, Monte Carlo.
EXACT_MAX_N = 20
#: Pre-registered "no real difference" half-width for the findings module (pixel F1 units).
EQUIVALENCE_MARGIN = 0.02
#: A row is judged only on seeds where both arms converged, and needs at least this many such
#: pairs (the protocol's minimum seed count); fewer gives ``not converged``.
MIN_CONVERGED_PAIRS = 8
#: Columns of ``table1.csv``, in order.
COLUMNS = ("row", "measure", "primary", "n_seeds", "base", "treated", "diff", "ci_low", "ci_high",
           "p_value", "p_adjusted", "converged", "verdict")


@dataclass(frozen=True)
class Measure:
    """A metric key and the change the paper leads one to expect.

    ``expect`` is +1 (treated higher), -1 (treated lower) or 0 (no change: equivalence within
    ``margin``, in the measure's units). ``lo`` / ``hi`` bound the raw measure (e.g. 0 and 1 for a
    fraction); the difference then lies in ``[lo - hi, hi - lo]``.
    """

    key: str
    label: str
    expect: int
    primary: bool = False
    margin: float | None = None
    lo: float | None = None
    hi: float | None = None

    def __post_init__(self) -> None:
        if self.expect not in (-1, 0, 1):
            raise ValueError(f"{self.key}: expect must be -1, 0 or +1")
        if self.expect == 0 and not (self.margin and self.margin > 0):
            raise ValueError(f"{self.key}: a 'no change' measure needs a positive margin")

    @property
    def diff_range(self) -> tuple[float, float]:
        """Feasible range of a difference of two values of this measure."""
        if self.lo is None or self.hi is None:
            return -np.inf, np.inf
        return self.lo - self.hi, self.hi - self.lo


@dataclass(frozen=True)
class Row:
    """One comparison: a Table 1 row or a finding from the paper's text (one primary measure)."""

    id: str
    problem: str
    modification: str
    base: str
    treated: str
    paper: str
    measures: tuple[Measure, ...]

    def __post_init__(self) -> None:
        if sum(m.primary for m in self.measures) != 1:
            raise ValueError(f"row {self.id}: exactly one primary measure is required")


def _frac(key: str, label: str, expect: int, primary: bool = False,
          margin: float | None = None) -> Measure:
    return Measure(key, label, expect, primary, margin, 0.0, 1.0)


F1_MARGIN, DET_MARGIN = 0.02, 0.05  # detection scores count particles: coarser than pixels
_BLUR_PAPER = "blurred images detect edges further toward the interior; only models without " \
              "blur label small, low-contrast particles"
_BLUR_MEASURES = (
    Measure(EDGE_OFFSET, "edge offset, px (- = inward)", -1, primary=True),
    _frac(PARTICLE_RECALL_SMALL, "recall, small particles", -1),
    Measure(RAMP_WIDTH, "10-90 % ramp width, px (blur's intent: sharper)", -1, lo=0.0),
    *(_frac(BOUNDARY_F1[t], f"boundary F1 ({t} px)", -1) for t in (1, 2, 3)),
)
ROWS: tuple[Row, ...] = (
    Row("1", "Particle features not recognised", "extra conv at each up-sampling step",
        "norm", "twoconv_norm",
        "extra convs (without blur) give virtually indistinguishable segmentations",
        (_frac(F1_OTSU, "pixel F1 (Otsu)", 0, True, F1_MARGIN),
         _frac(PARTICLE_DET_F1, "particle F1", 0, margin=DET_MARGIN),
         _frac(PARTICLE_DET_RECALL, "particle recall", 0, margin=DET_MARGIN))),
    Row("2a", "Unclear boundaries at particle edges", "Gaussian blur sigma 1 (train + eval)",
        "norm", "norm_blur1", _BLUR_PAPER, _BLUR_MEASURES),
    Row("2b", "Unclear boundaries at particle edges", "Gaussian blur sigma 2 (train + eval)",
        "norm", "norm_blur2", _BLUR_PAPER + "; stable over fewer thresholds", _BLUR_MEASURES),
    Row("2p", "Unclear boundaries at particle edges",
        "Gaussian blur sigma 1, paper protocol (train blurred, evaluate unblurred)",
        "norm", "norm_blur1_paper", _BLUR_PAPER, _BLUR_MEASURES),
    Row("3", "No activation in particle output layer", "leaky ReLU instead of ReLU (no norm)",
        "plain_relu", "plain_leaky", "leaky ReLU solves the dead particle output (dying ReLU)",
        (_frac(PARTICLE_AUROC, "particle-logit AUROC (pre-softmax)", +1, primary=True),
         _frac(F1_OTSU, "pixel F1 (Otsu)", +1))),
    Row("4", "Large variation in raw activation values", "batch norm after every conv",
        "plain_leaky", "norm",
        "batch normalisation is the most important factor for 1024 x 1024 frames",
        (Measure(ACT_SPREAD, "log10 activation spread (pre-norm)", -1, primary=True),
         _frac(F1_OTSU, "pixel F1 (Otsu)", +1))),
    Row("5", "(text) receptive field", "7 x 7 kernels instead of 3 x 3", "norm", "norm_k7",
        "the only other significant improvement",
        (_frac(F1_OTSU, "pixel F1 (Otsu)", +1, primary=True),
         _frac(BOUNDARY_F1[2], "boundary F1 (2 px)", +1))),
    Row("6", "(text) network depth", "3 levels instead of 4", "norm", "norm_depth3",
        "more depth does not improve performance",
        (_frac(F1_OTSU, "pixel F1 (Otsu)", 0, True, F1_MARGIN),)),
    Row("7", "(text) learning rate", "lr 1e-3 instead of 1e-4", "norm", "norm_lr1e-3",
        "the slow rate (1e-4) gives the best, most stable models",
        (_frac(F1_OTSU, "pixel F1 (Otsu)", -1, primary=True),)),
    Row("8", "(text, Fig. 7) shallow-wide CNN", "one 9 x 9 x 32 layer + 1 x 1 instead of the UNet",
        "norm", "shallow_wide", "comparable F1, somewhat lower from false positives",
        (_frac(F1_OTSU, "pixel F1 (Otsu)", 0, True, F1_MARGIN),
         _frac(PARTICLE_DET_PRECISION, "particle precision", -1))),
)


def arms() -> list[str]:
    """Every arm the table needs (the ``conf/table1/*.yaml`` names)."""
    return sorted({a for r in ROWS for a in (r.base, r.treated)})


def find_measure(row_id: str, key: str) -> tuple[Row, Measure]:
    """The row and measure definitions behind one line of the measured table."""
    row = next(r for r in ROWS if r.id == str(row_id))
    return row, next(m for m in row.measures if m.key == key)


# --- statistics ---------------------------------------------------------------------------------


def sign_flip_pvalue(diffs: np.ndarray, n_resamples: int = 100_000, seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip) p-value of ``mean(diffs) == 0``.

    Under the null each paired difference is equally likely to have either sign. The p-value is
    the fraction of the 2^n sign patterns (including the observed one) whose ``|sum|`` is at
    least the observed ``|sum|``: exact enumeration for n <= ``EXACT_MAX_N``, above that a Monte
    Carlo estimate ``(1 + hits) / (1 + n_resamples)`` with a fixed ``seed``. Because the observed
    pattern and its mirror image always count, the smallest attainable two-sided p is 2 / 2^n:
    0.0625 at n = 5, 0.0078 at n = 8, 0.0020 at n = 10 -- with 5 seeds nothing reaches 0.05.

    Parameters
    ----------
    diffs : array, shape (n,)
        Paired differences treated - base; non-finite entries are dropped.

    Returns
    -------
    float
        p in (0, 1]; NaN when no finite difference is left.
    """
    signed = np.asarray(diffs, dtype=float)
    signed = signed[np.isfinite(signed)]
    if signed.size == 0:
        return float("nan")
    d, observed = np.abs(signed), abs(float(signed.sum()))
    tol = 1e-12 * max(1.0, float(d.sum()))  # equal sums must tie despite rounding
    if d.size <= EXACT_MAX_N:
        sums = np.zeros(1)
        for x in d:  # all 2^k signed sums of the first k, built by doubling
            sums = np.concatenate([sums + x, sums - x])
        return float(np.mean(np.abs(sums) >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 10_000):
        signs = rng.choice([-1.0, 1.0], size=(min(10_000, n_resamples - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (1 + hits) / (1 + n_resamples)


def paired_interval(diffs: np.ndarray, level: float = 0.95, lo: float = -np.inf,
                    hi: float = np.inf) -> tuple[float, float, float]:
    """Mean of paired differences and its t-interval, clipped to ``[lo, hi]``.

    Parameters
    ----------
    diffs : array, shape (n,)
        Paired differences; non-finite entries are dropped.
    level : float
        Two-sided coverage of the interval.
    lo, hi : float
        Feasible range of a difference (e.g. -1, 1 for fractions): the t-interval is symmetric
        and can leave it, which a difference cannot.

    Returns
    -------
    (mean, low, high)
        NaN where undefined (no data; fewer than two pairs for the interval).
    """
    diffs = np.asarray(diffs, dtype=float)
    diffs = diffs[np.isfinite(diffs)]
    n = len(diffs)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(diffs.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * diffs.std(ddof=1) / np.sqrt(n))
    return mean, float(max(mean - half, lo)), float(min(mean + half, hi))


def holm(pvalues: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values; NaN entries stay NaN and are not in the family.

    The k-th smallest of m p-values becomes ``max_{j <= k} min(1, (m - j + 1) p_(j))``.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out


def verdict(expect: int, low: float, high: float, margin: float = EQUIVALENCE_MARGIN) -> str:
    """Interval-only verdict (no p-value, no convergence), as used by ``findings``.

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


def row_verdict(m: Measure, low: float, high: float, p_adjusted: float, converged: bool,
                preview: bool = False) -> str:
    """Table 1 verdict of one row x measure.

    Order: a preview profile gives none; a secondary measure is not judged; ``converged``
    False (too few seed pairs where both arms converged) gives ``not converged``. A
    directional (primary) measure supports the paper when the Holm-adjusted p < ``ALPHA`` and the interval lies entirely on the expected side,
    contradicts it when p < ``ALPHA`` and the interval lies entirely on the other side. A
    'no change' measure (TOST-style) supports when the interval lies inside +-margin and
    contradicts when it lies entirely outside it. Anything else is ``inconclusive``.
    """
    if preview:
        return PREVIEW_VERDICT
    if not m.primary:
        return SECONDARY_VERDICT
    if not converged:
        return "not converged"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "inconclusive"
    if m.expect == 0:
        if -m.margin <= low and high <= m.margin:
            return "supports"
        if low > m.margin or high < -m.margin:
            return "contradicts"
        return "inconclusive"
    if not (np.isfinite(p_adjusted) and p_adjusted < ALPHA):
        return "inconclusive"
    if (m.expect > 0 and low > 0) or (m.expect < 0 and high < 0):
        return "supports"
    if (m.expect > 0 and high < 0) or (m.expect < 0 and low > 0):
        return "contradicts"
    return "inconclusive"


def _converged(runs: pd.DataFrame) -> pd.Series:
    """Per-run convergence flag; a run without one counts as not converged."""
    def flag(v: object) -> bool:
        if isinstance(v, str):  # read back from a CSV
            return v.strip().lower() in ("true", "1", "1.0")
        return bool(pd.notna(v) and v)

    for col in ("converged", "final/converged"):
        if col in runs.columns:
            return runs[col].map(flag).astype(bool)
    return pd.Series(False, index=runs.index)


def measure_table(runs: pd.DataFrame, split: str = SPLIT, profile: str | None = None,
                  min_pairs: int = MIN_CONVERGED_PAIRS) -> pd.DataFrame:
    """Table of every row x measure, with exactly the columns :data:`COLUMNS`.

    ``runs`` has one row per finished job with columns ``arm``, ``seed``,
    ``final/<split>/<key>`` and ``converged`` (bool; or the metric ``final/converged``; runs
    without it count as not converged). A row is judged on the seeds where both of its runs
    converged when there are at least ``min_pairs`` of them (``converged`` True,
    ``n_seeds`` = those pairs); otherwise it is shown over every paired seed and not judged.
    ``base`` / ``treated`` are the arms' means over the seeds used, ``diff`` and the interval
    are of treated - base.
    """
    runs = runs.assign(_conv=_converged(runs))
    preview = profile in PREVIEW_PROFILES
    out = []
    for row in ROWS:
        base = runs[runs["arm"] == row.base].drop_duplicates("seed").set_index("seed")
        treated = runs[runs["arm"] == row.treated].drop_duplicates("seed").set_index("seed")
        paired = sorted(set(base.index) & set(treated.index))
        both = [s for s in paired if base.at[s, "_conv"] and treated.at[s, "_conv"]]
        # judged on the seeds where both arms converged, and only with enough of them; otherwise
        # every paired seed is shown, unjudged
        conv = len(both) >= max(1, min_pairs)
        seeds = both if conv else paired
        for m in row.measures:
            col = f"final/{split}/{m.key}"
            if col in base.columns and col in treated.columns and seeds:
                b = base.loc[seeds, col].to_numpy(float)
                t = treated.loc[seeds, col].to_numpy(float)
            else:
                b = t = np.array([])
            d = t - b
            ok = np.isfinite(d)
            mean, low, high = paired_interval(d, lo=m.diff_range[0], hi=m.diff_range[1])
            out.append({
                "row": row.id, "measure": m.key, "primary": m.primary, "n_seeds": int(ok.sum()),
                "base": float(b[ok].mean()) if ok.any() else float("nan"),
                "treated": float(t[ok].mean()) if ok.any() else float("nan"),
                "diff": mean, "ci_low": low, "ci_high": high,
                "p_value": sign_flip_pvalue(d), "converged": conv,
            })
    table = pd.DataFrame(out, columns=[c for c in COLUMNS if c not in ("p_adjusted", "verdict")])
    table["p_adjusted"] = np.nan
    # Holm's family: the primary measures whose verdict rests on a p-value, i.e. directional
    # rows that are judged; 'no change' rows are judged on their interval, unconverged rows not
    # at all, so neither spends any of the family's alpha
    defs = [find_measure(r, k)[1] for r, k in zip(table["row"], table["measure"], strict=True)]
    directional = np.array([m.expect != 0 for m in defs], dtype=bool)
    family = table["primary"].to_numpy(bool) & table["converged"].to_numpy(bool) & directional
    table.loc[family, "p_adjusted"] = holm(table.loc[family, "p_value"].to_numpy(float))
    table["verdict"] = [
        row_verdict(m, r["ci_low"], r["ci_high"], r["p_adjusted"], r["converged"], preview)
        for m, (_, r) in zip(defs, table.iterrows(), strict=True)]
    return table[list(COLUMNS)]
