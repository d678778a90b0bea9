"""Has a training run converged? A plateau rule on its validation learning curve.

A run counts as converged when the tail of its learning curve is flat: over the last quarter of
the evaluations (never fewer than ``min_points``), the least-squares drift (slope times the
window's step span) and the spread (max - min) of the metric both stay below fixed tolerances.
The same rule drives :func:`should_stop`, a pure early-stopping decision a training callback can
call with the curve recorded so far. Only NumPy; no framework imports (metrics layer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Default tolerances, in the metric's own units (e.g. pixel F1): drift across the tail window
#: and max - min inside it.
SLOPE_TOL = 0.01
SPREAD_TOL = 0.03
#: The tail window never has fewer evaluations than this: a slope through 2-3 points says little.
MIN_POINTS = 4


@dataclass(frozen=True)
class Plateau:
    """Outcome of the plateau rule on one learning curve.

    ``slope_per_1k_steps`` and ``spread`` are in the metric's units (NaN when not computable);
    ``n_points`` is the size of the tail window that was judged (0 when none was).
    """

    converged: bool
    slope_per_1k_steps: float
    spread: float
    n_points: int
    reason: str


@dataclass(frozen=True)
class StopDecision:
    """Whether to stop training now, why, and the plateau judgement it rests on."""

    stop: bool
    reason: str
    plateau: Plateau


def _as_curve(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    steps = np.asarray(steps, dtype=float).ravel()
    values = np.asarray(values, dtype=float).ravel()
    if steps.shape != values.shape:
        raise ValueError(f"steps {steps.shape} and values {values.shape} differ in length")
    if steps.size > 1 and np.any(np.diff(steps) <= 0):
        raise ValueError("steps must be strictly increasing")
    return steps, values


def plateau(steps: np.ndarray, values: np.ndarray, slope_tol: float = SLOPE_TOL,
            spread_tol: float = SPREAD_TOL, min_points: int = MIN_POINTS) -> Plateau:
    """Judge whether a learning curve has reached a plateau.

    Parameters
    ----------
    steps : array, shape (n,)
        Optimiser step of each evaluation, strictly increasing.
    values : array, shape (n,)
        Validation metric at each evaluation (e.g. pixel F1 in [0, 1]).
    slope_tol : float
        Largest allowed ``|slope| * (steps[-1] - steps[0])`` over the tail window, in metric
        units: the drift a straight-line fit says the metric made across the window.
    spread_tol : float
        Largest allowed ``max - min`` of the metric over the tail window, in metric units.
    min_points : int
        The tail window is the last ``max(min_points, ceil(n / 4))`` evaluations; curves with
        fewer than ``min_points`` evaluations are never converged.

    Returns
    -------
    Plateau
        ``converged`` and the measured slope (per 1000 steps), spread and window size.
    """
    steps, values = _as_curve(steps, values)
    n = steps.size
    if n < min_points:
        return Plateau(False, math.nan, math.nan, n,
                       f"too few evaluations: {n} < {min_points}")
    w = max(min_points, math.ceil(n / 4))
    s, v = steps[-w:], values[-w:]
    if not np.all(np.isfinite(v)):
        return Plateau(False, math.nan, math.nan, w, "non-finite metric in the tail window")
    # least-squares slope of metric against step (centred, so large step numbers stay exact)
    sc = s - s.mean()
    slope = float(np.dot(sc, v - v.mean()) / np.dot(sc, sc))
    drift = abs(slope) * float(s[-1] - s[0])
    spread = float(v.max() - v.min())
    problems = []
    if drift >= slope_tol:
        problems.append(f"drift {drift:.4f} >= slope_tol {slope_tol}")
    if spread >= spread_tol:
        problems.append(f"spread {spread:.4f} >= spread_tol {spread_tol}")
    reason = "; ".join(problems) if problems else (
        f"flat over the last {w} evaluations (drift {drift:.4f}, spread {spread:.4f})")
    return Plateau(not problems, slope * 1000.0, spread, w, reason)


def should_stop(steps: np.ndarray, values: np.ndarray, min_evals: int = 2 * MIN_POINTS,
                slope_tol: float = SLOPE_TOL, spread_tol: float = SPREAD_TOL,
                min_points: int = MIN_POINTS) -> StopDecision:
    """Decide, from the learning curve so far, whether training should stop now.

    Stops when the latest value is non-finite (the run diverged; more steps will not help) or
    when the curve has at least ``min_evals`` evaluations and :func:`plateau` calls it
    converged. ``min_evals`` (>= ``min_points``) keeps a flat start of training (e.g. the first
    few evaluations before the loss moves) from being mistaken for the final plateau.

    Parameters
    ----------
    steps, values : array, shape (n,)
        The curve recorded so far, as for :func:`plateau`.
    min_evals : int
        Fewest evaluations before a plateau may stop training.
    slope_tol, spread_tol, min_points
        Passed to :func:`plateau`.
    """
    steps, values = _as_curve(steps, values)
    judged = plateau(steps, values, slope_tol, spread_tol, min_points)
    if values.size and not np.isfinite(values[-1]):
        return StopDecision(True, "diverged: latest metric is not finite", judged)
    if values.size < max(min_evals, min_points):
        return StopDecision(False, f"only {values.size} of {max(min_evals, min_points)} "
                            "evaluations needed before stopping", judged)
    if judged.converged:
        return StopDecision(True, "plateau: " + judged.reason, judged)
    return StopDecision(False, "still changing: " + judged.reason, judged)
