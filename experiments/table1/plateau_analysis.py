"""Offline check of plateau rules on the stored Table 1 learning curves (no training).

For every run of ``experiments/table1/learning_curves.csv`` it prints the tail window's drift,
spread and residual s.d. about the fitted line, and where an equivalence rule (the tail's drift
within +-0.01 F1 at ~95 % confidence: |drift| + 1.645 SE < 0.01) would have stopped it, with the
gap between the level there and the curve's end. Curves stop where the run's own rule stopped
them, so a rule that would stop later cannot be judged from them::

    python experiments/table1/plateau_analysis.py
"""

from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
lc = pd.read_csv(HERE / "learning_curves.csv")
runs = pd.read_csv(HERE / "runs.csv")[["arm", "seed", "run_id", "converged", "final/test/f1_otsu"]]

def tail(s: np.ndarray, v: np.ndarray) -> tuple[int, float, float, float, float]:
    """Tail window size, drift, spread, residual s.d. and the drift's standard error."""
    w = max(6, len(v) // 4)
    s, v = s[-w:], v[-w:]
    A = np.vstack([s - s.mean(), np.ones_like(s)]).T
    coef, *_ = np.linalg.lstsq(A, v, rcond=None)
    resid = v - A @ coef
    sd = resid.std(ddof=2) if w > 2 else np.nan
    span = s[-1] - s[0]
    se_slope = sd / np.sqrt(((s - s.mean()) ** 2).sum())
    return w, coef[0] * span, v.max() - v.min(), sd, se_slope * span

def rule_equiv(s: np.ndarray, v: np.ndarray, margin: float = 0.01, z: float = 1.645,
               min_evals: int = 12) -> int | None:
    """Evaluations after which the tail's drift is within +-margin at ~95 % confidence (None: never)."""
    for n in range(min_evals, len(v) + 1):
        w, drift, spread, sd, se = tail(s[:n], v[:n])
        if abs(drift) + z * se < margin:
            return n
    return None

rows = []
for rid, g in lc.groupby("run_id"):
    g = g.sort_values("step")
    s, v = g["step"].to_numpy(float), g["value"].to_numpy(float)
    w, drift, spread, sd, se = tail(s, v)
    n_eq = rule_equiv(s, v)
    end_mean = v[-max(6, len(v)//4):].mean()
    rows.append({"run_id": rid, "steps": int(s[-1]), "n": len(v), "drift": drift, "spread": spread,
                 "resid_sd": sd, "eq_stop_step": None if n_eq is None else int(s[n_eq - 1]),
                 "eq_stop_gap": None if n_eq is None else end_mean - v[:n_eq][-max(6, n_eq//4):].mean()})
df = runs.merge(pd.DataFrame(rows), on="run_id")
pd.set_option("display.width", 200)
unc = df[~df["converged"]]
print("unconverged runs:", len(unc))
print(unc[["arm", "seed", "steps", "drift", "spread", "resid_sd", "eq_stop_step", "eq_stop_gap"]].round(4).to_string(index=False))
con = df[df["converged"]]
q50, q25, q75 = np.nanpercentile(con["resid_sd"], [50, 25, 75])
print(f"converged runs: residual s.d. median {q50:.4f} (IQR {q25:.4f}-{q75:.4f}); "
      f"unconverged: median {np.nanmedian(unc['resid_sd']):.4f}")
gap = np.abs(con["eq_stop_gap"])
print(f"equivalence rule: converged on {unc['eq_stop_step'].notna().sum()} of {len(unc)} "
      f"unconverged runs; on {con['eq_stop_step'].notna().sum()} converged runs it stops with "
      f"|gap to the end| median {np.nanmedian(gap):.4f}, max {np.nanmax(gap):.4f}")
