"""Plateau rule and early-stopping decision on hand-made learning curves."""

from __future__ import annotations

import numpy as np
import pytest

from temseg_ablation.metrics import convergence as cv


def _steps(n: int, every: int = 100) -> np.ndarray:
    return np.arange(1, n + 1) * every


def test_rising_line_is_not_converged_and_slope_is_exact():
    steps = _steps(20)
    f1 = 0.5 + 2e-4 * steps  # +0.2 F1 per 1000 steps
    res = cv.plateau(steps, f1)
    assert not res.converged
    assert res.n_points == 5  # ceil(20 / 4)
    assert res.slope_per_1k_steps == pytest.approx(0.2)
    assert res.spread == pytest.approx(2e-4 * 400)
    assert "drift" in res.reason


def test_noisy_plateau_is_converged():
    rng = np.random.default_rng(0)
    steps = _steps(40)
    # rise, then a flat tail with small evaluation noise
    f1 = 0.8 - 0.4 * np.exp(-steps / 500) + rng.normal(0, 0.003, steps.size)
    res = cv.plateau(steps, f1)
    assert res.converged, res.reason
    assert res.n_points == 10
    assert res.spread < cv.SPREAD_TOL and abs(res.slope_per_1k_steps) < 0.01


def test_too_few_points():
    res = cv.plateau(_steps(3), np.array([0.8, 0.8, 0.8]))
    assert not res.converged and res.n_points == 3
    assert "too few" in res.reason


def test_short_curve_window_is_at_least_min_points():
    res = cv.plateau(_steps(6), np.full(6, 0.7))
    assert res.converged and res.n_points == 4 and res.spread == 0.0


def test_plateau_then_collapse_is_not_converged():
    steps = _steps(40)
    f1 = np.full(40, 0.8)
    f1[-3:] = [0.6, 0.45, 0.4]
    res = cv.plateau(steps, f1)
    assert not res.converged
    assert res.spread == pytest.approx(0.4)
    assert "spread" in res.reason


def test_flat_but_spread_too_large_is_not_converged():
    # zig-zag without trend: the slope test alone would pass, the spread test must not
    f1 = np.tile([0.7, 0.76], 10)
    res = cv.plateau(_steps(20), f1, slope_tol=0.05)
    assert not res.converged and "spread" in res.reason and "drift" not in res.reason


def test_non_finite_tail_is_not_converged():
    f1 = np.full(12, 0.8)
    f1[-1] = np.nan
    res = cv.plateau(_steps(12), f1)
    assert not res.converged and "non-finite" in res.reason


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="increasing"):
        cv.plateau(np.array([1, 3, 2, 4]), np.zeros(4))
    with pytest.raises(ValueError, match="differ"):
        cv.plateau(np.arange(4), np.zeros(5))


def test_should_stop():
    flat = np.full(12, 0.8)
    # a flat start is not enough before min_evals evaluations
    early = cv.should_stop(_steps(5), flat[:5])
    assert not early.stop and early.plateau.converged
    done = cv.should_stop(_steps(12), flat)
    assert done.stop and done.reason.startswith("plateau")
    rising = cv.should_stop(_steps(12), np.linspace(0.3, 0.8, 12))
    assert not rising.stop and rising.reason.startswith("still changing")
    diverged = np.append(np.linspace(0.3, 0.5, 5), np.nan)
    assert cv.should_stop(_steps(6), diverged).stop
